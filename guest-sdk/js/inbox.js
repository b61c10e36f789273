// Messages to a long-lived agent, and its replies (`drover:agent/inbox`).

import * as inbox from 'drover:agent/inbox@0.2.0';
import { hostCall } from './errors.js';

/**
 * Waits up to `timeoutMs` for the next message to this agent: `{ id, body }`, or `undefined`
 * when none came (or a stop was requested).
 */
export function receive(timeoutMs) {
  const message = inbox.receive(BigInt(Math.max(0, Math.floor(timeoutMs))));
  return message === undefined ? undefined : { id: message.id, body: JSON.parse(message.body) };
}

/** Answers message `id` with `body`. */
export function reply(id, body) {
  hostCall(() => inbox.reply(id, JSON.stringify(body)));
}
