// Types of drover-sdk's core module: defining agents and toolboxes, and the `host` interface.

/** A failure the host records with its tag; `retryable` says whether another attempt may help. */
export class AgentError extends Error {
  constructor(tag: string, message: string, options?: { retryable?: boolean });
  readonly tag: string;
  retryable: boolean;
  /** The same failure, marked as not worth retrying. */
  permanent(): this;
}

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** An agent: what it says about itself, and its run. */
export interface AgentDefinition<I = any, O = any> {
  /** The id it suggests for itself (the host names it after its file). */
  id?: string;
  version?: string;
  /** One line on what it does. */
  description?: string;
  /** `job` (runs to completion, the default) or `long-lived` (loops until stopped). */
  lifecycle?: 'job' | 'long-lived';
  /** JSON Schema of the input; the host rejects other input before the run. */
  inputSchema?: object;
  /** JSON Schema of the output. */
  outputSchema?: object;
  /** Runs once per job; may be async. Throw an AgentError to fail with a tag. */
  run(input: I): O | Promise<O>;
}

/** What the module exports: `export const { describe, run } = defineAgent({ ... })`. */
export function defineAgent<I = any, O = any>(
  agent: AgentDefinition<I, O>,
): {
  describe(): import('drover:agent/types@0.2.0').AgentInfo;
  run(input: string): string;
};

/** One tool of a toolbox. */
export interface ToolDefinition<I = any, O = any> {
  description?: string;
  inputSchema?: object;
  outputSchema?: object;
  call(input: I): O;
}

/** What a toolbox module exports: `export const toolProvider = defineTools({ name: {...} })`. */
export function defineTools(tools: Record<string, ToolDefinition>): {
  describe(): Array<import('drover:agent/types@0.2.0').ToolInfo>;
  call(name: string, input: string): string;
};

/** Appends an event `kind` with a JSON `payload` to the run's timeline. */
export function emit(kind: string, payload?: Json | object): void;
/** Marks the run as alive. Long-lived agents call this every loop. */
export function heartbeat(): void;
/** Writes a log line to the run's timeline. */
export function log(level: 'trace' | 'debug' | 'info' | 'warn' | 'error', message: string): void;
/** Wall-clock time in milliseconds since the Unix epoch. */
export function now(): number;
/** Whether the host has asked this agent to stop. */
export function stopRequested(): boolean;
/** Sleeps up to `ms` milliseconds; `true` when it woke early because a stop was requested. */
export function sleep(ms: number): boolean;
