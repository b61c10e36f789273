// Types of drover-sdk/inbox: messages to a long-lived agent, and its replies.

/** Waits up to `timeoutMs` for the next message; `undefined` when none came. */
export function receive<B = any>(timeoutMs: number): { id: string; body: B } | undefined;
/** Answers message `id` with `body`. */
export function reply(id: string, body: unknown): void;
