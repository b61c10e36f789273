// The seed's first agent, in TypeScript: `{n}` in, `{received: n, ok: true}` out.

import { defineAgent } from 'drover-sdk';

interface Input {
  n: number;
}

interface Output {
  received: number;
  ok: boolean;
}

export const { describe, run } = defineAgent({
  id: 'echo-js',
  version: '0.1.0',
  description: 'Echoes the number it is given (TypeScript)',
  inputSchema: {
    type: 'object',
    properties: { n: { type: 'integer' } },
    required: ['n'],
  },
  outputSchema: {
    type: 'object',
    properties: { received: { type: 'integer' }, ok: { type: 'boolean' } },
    required: ['received', 'ok'],
  },
  run(input: Input): Output {
    return { received: input.n, ok: true };
  },
});
