/// <reference path="./drover-agent-types.d.ts" />
declare module 'drover:agent/agents@0.2.0' {
  /**
   * Enqueues a job of agent `agent-id` with JSON `input` as a child of this run's job, and
   * returns its job id. Fails with `ChildNotAllowed` (not in the manifest's
   * `[children] allowed`), `MaxDepth` (the child would be deeper below the root than
   * `max-depth`), `MaxFanOut` (this job has `max-fan-out` unfinished children already),
   * `MaxTotal` (the tree has `max-total` jobs below its root already), `UnknownAgent`, or
   * `InvalidInput` (not JSON, not matching the agent's input schema, bad options). A refused
   * spawn enqueues nothing and is recorded as a `child_refused` event; a spawn is recorded
   * as `child_spawned {childJobId, agentId}`. Both count against the run's event limits.
   */
  export function spawn(agentId: string, input: Json, options: SpawnOptions): string;
  /**
   * Waits up to `timeout-ms` milliseconds for child `child-id` to finish and returns how it
   * is then; returns early, with the child unfinished, when a stop is requested of this run.
   * While it waits the run holds none of its host's CPU slots, so a child can always run.
   * Fails with `NotFound` for a job that is not a child of this run.
   */
  export function wait(childId: string, timeoutMs: bigint): ChildOutcome;
  /**
   * Asks child `child-id` (and its tree below) to stop gracefully; one that never started is
   * cancelled. Stopping a finished child does nothing. Fails with `NotFound` for a job that
   * is not a child of this run.
   */
  export function stop(childId: string): void;
  /**
   * The children this run has spawned, oldest first.
   */
  export function listChildren(): Array<ChildInfo>;
  export type Json = import('drover:agent/types@0.2.0').Json;
  export type Failure = import('drover:agent/types@0.2.0').Failure;
  export type Lifecycle = import('drover:agent/types@0.2.0').Lifecycle;
  /**
   * How to enqueue a child.
   */
  export interface SpawnOptions {
    /**
     * Higher is claimed first (default 0).
     */
    priority?: number,
    /**
     * Attempts the child gets (default 1; 1 to 1000).
     */
    maxAttempts?: number,
    /**
     * The lifecycle the caller expects of the agent; a spawn of an agent with another is
     * refused (`InvalidInput`). Default: whatever the agent is.
     */
    lifecycle?: Lifecycle,
  }
  /**
   * Where a child is.
   * # Variants
   * 
   * ## `"scheduled"`
   * 
   * Waiting for its due time (a retry backing off, or a restart).
   * ## `"queued"`
   * 
   * Waiting to be claimed.
   * ## `"running"`
   * 
   * Running.
   * ## `"done"`
   * 
   * Finished successfully (a long-lived child that stopped when asked, too).
   * ## `"failed"`
   * 
   * Finished unsuccessfully.
   * ## `"cancelled"`
   * 
   * Cancelled, or stopped, before it started.
   */
  export type ChildStatus = 'scheduled' | 'queued' | 'running' | 'done' | 'failed' | 'cancelled';
  /**
   * A child as `wait` finds it.
   */
  export interface ChildOutcome {
    /**
     * Its status: `scheduled`, `queued` or `running` when `wait` returned before it
     * finished (the timeout passed, or this run was asked to stop).
     */
    status: ChildStatus,
    /**
     * Its output, once done.
     */
    output?: Json,
    /**
     * Why it failed or was cancelled.
     */
    error?: Failure,
  }
  /**
   * One child of this run.
   */
  export interface ChildInfo {
    /**
     * Its job id.
     */
    id: string,
    /**
     * The agent it runs.
     */
    agentId: string,
    /**
     * Its status now.
     */
    status: ChildStatus,
  }
}
