// A misbehaving JavaScript agent, for the containment tests: `{mode}` picks what it tries.

import { AgentError, defineAgent } from 'drover-sdk';

const modes = {
  // Loops forever without calling the host.
  spin() {
    let n = 0;
    for (;;) {
      n = (n + 1) | 0;
    }
  },
  // Holds on to memory until there is none.
  hoard() {
    const held = [];
    for (;;) {
      held.push(new Uint8Array(1 << 20).fill(1));
    }
  },
  // Throws an ordinary error.
  throw() {
    throw new Error('chaos agent threw on purpose');
  },
  // Fails with a tag of its own, not worth retrying.
  fail() {
    throw new AgentError('ChaosFailure', 'chaos agent failed on purpose').permanent();
  },
  // What a JavaScript agent can find out about its surroundings: no process, no environment,
  // no file system.
  escape() {
    return {
      process: typeof globalThis.process,
      require: typeof globalThis.require,
      deno: typeof globalThis.Deno,
    };
  },
  // Tries the network: `fetch` goes through the host's allow-list.
  async fetch(input) {
    try {
      const response = await fetch(input.url ?? 'http://example.com/');
      return { status: response.status };
    } catch (e) {
      return { error: String(e?.message ?? e) };
    }
  },
  ok() {
    return { ok: true };
  },
};

export const { describe, run } = defineAgent({
  id: 'chaos-js',
  description: 'Misbehaves on purpose (JavaScript)',
  run(input) {
    const mode = modes[input?.mode];
    if (!mode) {
      throw new AgentError('UnknownMode', `no mode ${input?.mode}`).permanent();
    }
    return mode(input);
  },
});
