// Tools, each run by the host in a sandbox of its own (`drover:agent/tools`).

import * as tools from 'drover:agent/tools@0.2.0';
import { fromFailure, hostCall } from './errors.js';

/** The tools this agent may call, as `{ name, description, inputSchema, outputSchema }`. */
export function listTools() {
  return tools.list().map((t) => ({
    name: t.name,
    description: t.description,
    inputSchema: t.inputSchema === undefined ? undefined : JSON.parse(t.inputSchema),
    outputSchema: t.outputSchema === undefined ? undefined : JSON.parse(t.outputSchema),
  }));
}

/** Calls tool `name` with `input`; returns its output or throws its AgentError. */
export function callTool(name, input) {
  return JSON.parse(hostCall(() => tools.call(name, JSON.stringify(input))));
}

/**
 * Calls several tools at once (the host runs them concurrently). Returns, in order, `{ ok:
 * output }` or `{ error: AgentError }` for each `{ name, input }`.
 */
export function callTools(calls) {
  const results = tools.callMany(calls.map((c) => ({ name: c.name, input: JSON.stringify(c.input) })));
  return results.map((r) => (r.tag === 'ok' ? { ok: JSON.parse(r.val) } : { error: fromFailure(r.val) }));
}
