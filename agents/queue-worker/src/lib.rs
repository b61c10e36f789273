//! The long-lived queue worker of the "loop until stopped" scenario.
//!
//! It starts, then stays up: every `POLL_INTERVAL_MS` (from its manifest's `env`, default
//! 30 000) it heartbeats, takes the batch of work items that arrived, processes each one and
//! emits `item_processed`, and sleeps again. When the host asks it to stop it finishes the item
//! at hand, emits `worker_stopping` and returns, so the run is recorded as completed.

use std::time::Duration;

use drover_sdk::{Agent, Error, Lifecycle, emit, heartbeat, json, now_ms, sleep, stop_requested};
use serde::{Deserialize, Serialize};

/// The job's input (all optional).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Input {
    /// Work items that arrive per poll (default 1).
    items_per_batch: Option<u32>,
}

/// What the worker reports when it stops.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    batches: u64,
    items_processed: u64,
}

struct QueueWorker;

impl Agent for QueueWorker {
    type Input = Option<Input>;
    type Output = Output;

    const LIFECYCLE: Lifecycle = Lifecycle::LongLived;

    fn run(input: Option<Input>) -> Result<Output, Error> {
        let input = input.unwrap_or_default();
        let interval_ms: u64 = std::env::var("POLL_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000);
        let per_batch = input.items_per_batch.unwrap_or(1);
        emit(
            "worker_started",
            &json!({ "agentId": "queue-worker", "intervalMs": interval_ms }),
        )?;

        let mut batches = 0u64;
        let mut processed = 0u64;
        while !stop_requested() {
            heartbeat();
            emit(
                "heartbeat",
                &json!({ "status": "running", "timestamp": now_ms() }),
            )?;
            batches += 1;
            for i in 0..per_batch {
                if stop_requested() {
                    break;
                }
                let item = format!("item-{batches}-{i}");
                let digest = process(&item);
                processed += 1;
                emit(
                    "item_processed",
                    &json!({ "item": item, "digest": digest, "ok": true }),
                )?;
            }
            if sleep(Duration::from_millis(interval_ms)) {
                break;
            }
        }
        emit("worker_stopping", &json!({ "reason": "stop requested" }))?;
        Ok(Output {
            batches,
            items_processed: processed,
        })
    }
}

/// The per-item work: a stand-in for the call the real worker makes (FNV-1a of the item).
fn process(item: &str) -> String {
    let hash = item.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

drover_sdk::export_agent!(QueueWorker);
