// Failures across the boundary: AgentError, and the WIT `failure` record it stands for.

/** A failure the host records with its tag; `retryable` says whether another attempt may help. */
export class AgentError extends Error {
  constructor(tag, message, { retryable = true } = {}) {
    super(message);
    this.name = 'AgentError';
    this.tag = tag;
    this.retryable = retryable;
  }

  /** The same failure, marked as not worth retrying. */
  permanent() {
    this.retryable = false;
    return this;
  }

  /** The WIT `failure` record. */
  toFailure() {
    return { tag: this.tag, message: this.message, retryable: this.retryable };
  }
}

// A failure the host returned (an `err` of a WIT `result`), as an AgentError.
export function fromFailure(failure) {
  return new AgentError(failure.tag, failure.message, { retryable: failure.retryable });
}

// Runs `f`, turning the error a WIT import throws for `err` into an AgentError.
export function hostCall(f) {
  try {
    return f();
  } catch (e) {
    if (e && e.payload && typeof e.payload.tag === 'string') {
      throw fromFailure(e.payload);
    }
    throw e;
  }
}

// Any thrown value, as the WIT `failure` record an export returns in `err`. An AgentError
// keeps its tag; anything else is an `Error` the host may retry.
function toFailure(e) {
  if (e instanceof AgentError) {
    return e.toFailure();
  }
  const message = e instanceof Error ? e.message : String(e);
  return { tag: 'Error', message, retryable: true };
}

// Throws the failure so that the component returns it as the `err` of its `result`.
export function fail(e) {
  const error = new Error(toFailure(e).message);
  error.payload = toFailure(e);
  throw error;
}
