/// <reference path="./drover-agent-types.d.ts" />
declare module 'drover:agent/tools@0.2.0' {
  /**
   * The tools this agent may call.
   */
  export function list(): Array<ToolInfo>;
  /**
   * Calls tool `name` with JSON `input`, in a fresh sandbox of the tool's own, and returns its
   * JSON output. Fails with `ToolNotAllowed` (not one of this agent's tools), `InvalidInput`
   * (not JSON, or not matching the tool's input schema), or whatever the tool failed with —
   * including a trap or a limit of the tool's (`ToolTrapped`, `ToolQuota`, `ToolTimeout`),
   * which never ends the agent's run.
   * 
   * A call the run's `max-tool-calls` budget does not allow ends the run with status `quota`;
   * it does not return.
   */
  export function call(name: string, input: Json): Json;
  /**
   * Calls several tools at once, each as `call` would, concurrently; the results come back
   * in the order of `calls`. Every call counts against `max-tool-calls`.
   */
  export function callMany(calls: Array<ToolRequest>): Array<Result<Json, Failure>>;
  export type Json = import('drover:agent/types@0.2.0').Json;
  export type Failure = import('drover:agent/types@0.2.0').Failure;
  export type ToolInfo = import('drover:agent/types@0.2.0').ToolInfo;
  /**
   * One call of `call-many`.
   */
  export interface ToolRequest {
    /**
     * The tool's name.
     */
    name: string,
    /**
     * Its JSON input.
     */
    input: Json,
  }
  export type Result<T, E> = { tag: 'ok', val: T } | { tag: 'err', val: E };
}
