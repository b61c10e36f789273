// The seed's long-lived queue worker, in JavaScript.
//
// It starts, then stays up: every `intervalMs` (from its input, default 2000) it heartbeats,
// takes the batch of work items that arrived (`itemsPerBatch`, default 1), processes each one
// and emits `item_processed`, and sleeps again. When the host asks it to stop it finishes the
// item at hand, emits `worker_stopping` and returns, so the run is recorded as completed.

import { defineAgent, emit, heartbeat, now, sleep, stopRequested } from 'drover-sdk';

// The local per-item work: FNV-1a of the item, as the Rust queue worker computes it.
function digest(item) {
  let hash = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(item)) {
    hash = BigInt.asUintN(64, (hash ^ BigInt(byte)) * 0x100000001b3n);
  }
  return hash.toString(16).padStart(16, '0');
}

export const { describe, run } = defineAgent({
  id: 'queue-worker-js',
  version: '0.1.0',
  description: 'Long-lived agent that drains a queue on a loop (JavaScript)',
  lifecycle: 'long-lived',
  run(input) {
    const intervalMs = input?.intervalMs ?? 2000;
    const perBatch = input?.itemsPerBatch ?? 1;
    emit('worker_started', { agentId: 'queue-worker-js', intervalMs });
    let batches = 0;
    let itemsProcessed = 0;
    while (!stopRequested()) {
      heartbeat();
      emit('heartbeat', { status: 'running', timestamp: now() });
      batches += 1;
      for (let i = 0; i < perBatch && !stopRequested(); i++) {
        const item = `item-${batches}-${i}`;
        itemsProcessed += 1;
        emit('item_processed', { item, digest: digest(item), ok: true });
      }
      if (sleep(intervalMs)) {
        break;
      }
    }
    emit('worker_stopping', { reason: 'stop requested' });
    return { batches, itemsProcessed };
  },
});
