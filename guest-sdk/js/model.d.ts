// Types of drover-sdk/model: language models, called by the host for the agent.

type Wit = typeof import('drover:agent/model@0.2.0');
export type Role = import('drover:agent/model@0.2.0').Role;
export type ToolCall = import('drover:agent/model@0.2.0').ToolCall;

export interface Message {
  role: Role;
  content?: string;
  toolCalls?: ToolCall[];
  toolCallId?: string;
}

export interface Request {
  /** A model alias the host's configuration and the agent's manifest allow. */
  model: string;
  messages: Message[];
  tools?: Array<{ name: string; description?: string; parameters: object | string }>;
  maxOutputTokens?: number;
  temperature?: number;
  jsonOutput?: boolean;
}

export interface Response extends Omit<import('drover:agent/model@0.2.0').Response, 'usage'> {
  usage: { inputTokens: number; outputTokens: number };
}

/** Model aliases this agent may call. */
export function aliases(): ReturnType<Wit['aliases']>;
/** Calls a model through the host; throws an AgentError (e.g. `ModelRateLimited`) on failure. */
export function complete(request: Request): Response;
