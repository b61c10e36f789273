/// <reference path="./drover-agent-types.d.ts" />
declare module 'drover:agent/inbox@0.2.0' {
  /**
   * Acknowledges the message this run got last (if any), then waits up to `timeout-ms`
   * milliseconds (at most an hour) for the next one. Returns `none` when none came in time,
   * and returns early, with `none`, as soon as a stop is requested (then nothing is
   * delivered: the agent should finish and return). Records `message_received {messageId}`
   * on the run's timeline.
   */
  export function receive(timeoutMs: bigint): Message | undefined;
  /**
   * Replies to `message-id` (a message this run received) with `body` (JSON), and
   * acknowledges it; whoever waits for the reply gets it at once. Records `message_replied
   * {messageId}`. Fails with `InvalidReply` (not JSON), `ReplyTooLarge` (over the host's
   * `max-message-bytes`), `UnknownMessage`, `NotDelivered` (not received by this run) or
   * `AlreadyReplied`.
   */
  export function reply(messageId: string, body: Json): void;
  export type Json = import('drover:agent/types@0.2.0').Json;
  export type Failure = import('drover:agent/types@0.2.0').Failure;
  /**
   * One message.
   */
  export interface Message {
    /**
     * Its id: `reply` names it.
     */
    id: string,
    /**
     * What the producer posted (JSON).
     */
    body: Json,
  }
}
