// Types of drover-sdk/agents: child agents.

import type { AgentError } from './index.js';

export type ChildStatus = 'scheduled' | 'queued' | 'running' | 'done' | 'failed' | 'cancelled';

/** Spawns a child agent with `input`; returns its id. */
export function spawn(
  agentId: string,
  input: unknown,
  options?: { priority?: number; maxAttempts?: number; lifecycle?: 'job' | 'long-lived' },
): string;
/** Waits up to `timeoutMs` for child `id` to finish. */
export function waitFor<O = any>(
  id: string,
  timeoutMs: number,
): { status: ChildStatus; output?: O; error?: AgentError };
/** Asks child `id` to stop. */
export function stopChild(id: string): void;
/** This run's children. */
export function listChildren(): Array<{ id: string; agentId: string; status: ChildStatus }>;
