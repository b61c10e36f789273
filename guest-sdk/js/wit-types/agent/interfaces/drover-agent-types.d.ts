declare module 'drover:agent/types@0.2.0' {
  /**
   * A JSON document, as text.
   */
  export type Json = string;
  /**
   * How an agent lives.
   * # Variants
   * 
   * ## `"job"`
   * 
   * Runs to completion and returns an output.
   * ## `"long-lived"`
   * 
   * Loops until the host asks it to stop (see `host.stop-requested` and `host.sleep`),
   * then returns. A run that stops when asked is a success.
   */
  export type Lifecycle = 'job' | 'long-lived';
  /**
   * What an agent says about itself. A manifest beside the component (`agents/<name>.toml`)
   * can override the description and the lifecycle.
   */
  export interface AgentInfo {
    /**
     * The id the agent suggests for itself; informational. The host names an agent after
     * its file (`agents/<name>.wasm` is agent `<name>`) or the `id` in its manifest, and
     * producers use that name in `agentId`: 1 to 64 letters, digits, `-`, `_` or `.`,
     * starting with a letter or digit.
     */
    id: string,
    /**
     * The agent's version.
     */
    version: string,
    /**
     * One line on what it does.
     */
    description: string,
    /**
     * Whether it runs to completion or until stopped.
     */
    lifecycle: Lifecycle,
    /**
     * JSON Schema the input must match; the host rejects other input before the run.
     */
    inputSchema?: Json,
    /**
     * JSON Schema the output must match.
     */
    outputSchema?: Json,
  }
  /**
   * Why a run, a model call or a tool call failed.
   */
  export interface Failure {
    /**
     * Machine-readable class, e.g. `NotFound`, `ModelRateLimited`.
     */
    tag: string,
    /**
     * Human-readable explanation.
     */
    message: string,
    /**
     * Whether trying again could succeed (the host retries up to the job's `maxAttempts`).
     */
    retryable: boolean,
  }
  /**
   * Log severity.
   * # Variants
   * 
   * ## `"trace"`
   * 
   * ## `"debug"`
   * 
   * ## `"info"`
   * 
   * ## `"warn"`
   * 
   * ## `"error"`
   */
  export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
  /**
   * One tool, as a toolbox describes it and as an agent sees it.
   */
  export interface ToolInfo {
    /**
     * The tool's name: 1 to 64 letters, digits, `-` or `_`, unique on the host. Models see
     * this name.
     */
    name: string,
    /**
     * What it does, for people and models.
     */
    description: string,
    /**
     * JSON Schema of its input (a JSON object); models are told to call it with input
     * matching this schema, and the host checks the input against it before the call.
     */
    inputSchema?: Json,
    /**
     * JSON Schema of its output.
     */
    outputSchema?: Json,
  }
}
