// Types of drover-sdk/tools: tools, each run by the host in a sandbox of its own.

import type { AgentError } from './index.js';

export interface ToolInfo {
  name: string;
  description: string;
  inputSchema?: object;
  outputSchema?: object;
}

/** The tools this agent may call. */
export function listTools(): ToolInfo[];
/** Calls tool `name` with `input`; returns its output or throws its AgentError. */
export function callTool<O = any>(name: string, input: unknown): O;
/** Calls several tools at once; in order, `{ ok }` or `{ error }` for each. */
export function callTools(
  calls: Array<{ name: string; input: unknown }>,
): Array<{ ok: any; error?: undefined } | { ok?: undefined; error: AgentError }>;
