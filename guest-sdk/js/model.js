// Language models, called by the host for the agent (`drover:agent/model`).

import * as model from 'drover:agent/model@0.2.0';
import { hostCall } from './errors.js';

/** Model aliases this agent may call. */
export function aliases() {
  return model.aliases();
}

/**
 * Calls a model through the host: `{ model, messages, tools?, maxOutputTokens?, temperature?,
 * jsonOutput? }`. Messages are `{ role, content, toolCalls?, toolCallId? }`; tools are
 * `{ name, description, parameters }` with `parameters` a JSON Schema object.
 */
export function complete(request) {
  const messages = (request.messages ?? []).map((m) => ({
    role: m.role,
    content: m.content ?? '',
    toolCalls: m.toolCalls ?? [],
    toolCallId: m.toolCallId ?? undefined,
  }));
  const definitions = (request.tools ?? []).map((t) => ({
    name: t.name,
    description: t.description ?? '',
    parameters: typeof t.parameters === 'string' ? t.parameters : JSON.stringify(t.parameters ?? {}),
  }));
  const response = hostCall(() =>
    model.complete({
      model: request.model,
      messages,
      tools: definitions,
      maxOutputTokens: request.maxOutputTokens ?? undefined,
      temperature: request.temperature ?? undefined,
      jsonOutput: request.jsonOutput ?? false,
    }),
  );
  return {
    ...response,
    usage: {
      inputTokens: Number(response.usage.inputTokens),
      outputTokens: Number(response.usage.outputTokens),
    },
  };
}
