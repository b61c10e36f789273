/// <reference path="./drover-agent-types.d.ts" />
declare module 'drover:agent/host@0.2.0' {
  /**
   * Appends an event to the run's timeline. `kind` is 1 to 64 bytes (`item_processed`,
   * `heartbeat`, …); `payload` must be JSON. An invalid payload, or one that breaks the
   * agent's event limits (a count per run, a size per payload, a rate), ends the run with an
   * error.
   */
  export function emit(kind: string, payload: Json): void;
  /**
   * Marks the run as alive (shown as its last heartbeat). Long-lived agents call this every
   * loop so that a stalled agent is visible.
   */
  export function heartbeat(): void;
  /**
   * Writes a log line to the run's timeline (as a `log` event). Log lines share one byte
   * budget per run with the agent's stdout and stderr; past it they are dropped.
   */
  export function log(level: Level, message: string): void;
  /**
   * Wall-clock time, in milliseconds since the Unix epoch.
   */
  export function now(): bigint;
  /**
   * Whether the host has asked this agent to stop. A long-lived agent checks this between
   * items, finishes the item at hand, and returns.
   */
  export function stopRequested(): boolean;
  /**
   * Sleeps for up to `ms` milliseconds. Returns early, with `true`, as soon as a stop is
   * requested; returns `false` after a full sleep.
   */
  export function sleep(ms: bigint): boolean;
  export type Json = import('drover:agent/types@0.2.0').Json;
  export type Level = import('drover:agent/types@0.2.0').Level;
}
