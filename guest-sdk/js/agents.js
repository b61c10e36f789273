// Child agents: spawn, wait for, stop and list them (`drover:agent/agents`).

import * as agents from 'drover:agent/agents@0.2.0';
import { fromFailure, hostCall } from './errors.js';

/**
 * Spawns a child agent (a job, or a long-lived agent) with `input`; returns its id. `options`:
 * `{ priority, maxAttempts, lifecycle }`.
 */
export function spawn(agentId, input, options = {}) {
  return hostCall(() =>
    agents.spawn(agentId, JSON.stringify(input), {
      priority: options.priority ?? undefined,
      maxAttempts: options.maxAttempts ?? undefined,
      lifecycle: options.lifecycle ?? undefined,
    }),
  );
}

/**
 * Waits up to `timeoutMs` for child `id` to finish: `{ status, output?, error? }`, where
 * `status` is `scheduled`, `queued`, `running`, `done`, `failed` or `cancelled`.
 */
export function waitFor(id, timeoutMs) {
  const outcome = hostCall(() => agents.wait(id, BigInt(Math.max(0, Math.floor(timeoutMs)))));
  return {
    status: outcome.status,
    output: outcome.output === undefined ? undefined : JSON.parse(outcome.output),
    error: outcome.error === undefined ? undefined : fromFailure(outcome.error),
  };
}

/** Asks child `id` to stop (a long-lived child stops gracefully; a job is cancelled). */
export function stopChild(id) {
  hostCall(() => agents.stop(id));
}

/** This run's children: `{ id, agentId, status }`. */
export function listChildren() {
  return agents.listChildren();
}
