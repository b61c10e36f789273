// drover-sdk for JavaScript and TypeScript: agents and tools as WASI 0.2 components.
//
// An agent module exports what `defineAgent` returns (`describe` and `run`); a tool module
// exports what `defineTools` returns (`toolProvider`). JSON crosses the boundary as text; this
// module parses and serialises it, so agents take and return plain values. Each function wraps
// one function of `wit/agent.wit` (the contract with the host), named in camelCase. Models,
// tools, children and the inbox are in `drover-sdk/model`, `/tools`, `/agents` and `/inbox`:
// a module imports from the host only the interfaces it uses.

import * as host from 'drover:agent/host@0.2.0';
import { AgentError, fail } from './errors.js';

export { AgentError } from './errors.js';

function schemaText(schema) {
  return schema === undefined || schema === null ? undefined : JSON.stringify(schema);
}

function parseInput(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new AgentError('InvalidInput', `input is not JSON: ${e.message}`).permanent();
  }
}

function outputText(value) {
  const text = JSON.stringify(value === undefined ? null : value);
  if (text === undefined) {
    throw new AgentError('InvalidOutput', 'the output cannot be written as JSON').permanent();
  }
  return text;
}

/**
 * Defines an agent. Export the result's `describe` and `run` from the module:
 * `export const { describe, run } = defineAgent({ ... })`.
 */
export function defineAgent(agent) {
  if (!agent || typeof agent.run !== 'function') {
    throw new TypeError('defineAgent needs an object with a run(input) function');
  }
  const info = {
    id: agent.id ?? 'agent',
    version: agent.version ?? '0.1.0',
    description: agent.description ?? '',
    lifecycle: agent.lifecycle ?? 'job',
    inputSchema: schemaText(agent.inputSchema),
    outputSchema: schemaText(agent.outputSchema),
  };
  return {
    describe() {
      return info;
    },
    run(input) {
      try {
        const output = agent.run(parseInput(input));
        // An async run: componentize-js runs the event loop until the promise settles.
        if (output && typeof output.then === 'function') {
          return output.then(outputText).catch(fail);
        }
        return outputText(output);
      } catch (e) {
        return fail(e);
      }
    },
  };
}

/**
 * Defines a toolbox: an object of tools, each `{ description, inputSchema, outputSchema,
 * call(input) }`, by name. Export the result: `export const toolProvider = defineTools({ ... })`.
 */
export function defineTools(toolset) {
  const entries = Object.entries(toolset ?? {});
  if (entries.length === 0) {
    throw new TypeError('defineTools needs at least one tool');
  }
  const infos = entries.map(([name, tool]) => ({
    name,
    description: tool.description ?? '',
    inputSchema: schemaText(tool.inputSchema),
    outputSchema: schemaText(tool.outputSchema),
  }));
  return {
    describe() {
      return infos;
    },
    call(name, input) {
      try {
        const tool = toolset[name];
        if (!tool || typeof tool.call !== 'function') {
          throw new AgentError('NotFound', `no tool named ${name}`).permanent();
        }
        return outputText(tool.call(parseInput(input)));
      } catch (e) {
        return fail(e);
      }
    },
  };
}

/** Appends an event `kind` with a JSON `payload` to the run's timeline. */
export function emit(kind, payload = {}) {
  host.emit(kind, JSON.stringify(payload));
}

/** Marks the run as alive. Long-lived agents call this every loop. */
export function heartbeat() {
  host.heartbeat();
}

/** Writes a log line (`trace`, `debug`, `info`, `warn` or `error`) to the run's timeline. */
export function log(level, message) {
  host.log(level, String(message));
}

/** Wall-clock time in milliseconds since the Unix epoch. */
export function now() {
  return Number(host.now());
}

/** Whether the host has asked this agent to stop. */
export function stopRequested() {
  return host.stopRequested();
}

/** Sleeps up to `ms` milliseconds; `true` when it woke early because a stop was requested. */
export function sleep(ms) {
  return host.sleep(BigInt(Math.max(0, Math.floor(Number(ms) || 0))));
}
