//! The chain worker: a deterministic long-lived agent (no model) in the shape of the queue
//! worker, which also drives an agent of its own type.
//!
//! It starts by spawning one child of its own type with its own input (the host refuses once
//! the chain reaches its manifest's `[children] max-depth`: it emits `child_spawned` or
//! `no_child {tag, message}` and goes on either way). Then, every `intervalMs` of its input
//! (default 3000), it heartbeats and emits `work_ok {iteration}`. When the host asks it to stop
//! it emits `worker_stopping` and returns, so the run is recorded as completed. Its child is
//! not its business to stop: the host stops a run's children when the run ends.

use std::time::Duration;

use drover_sdk::agents::{self, SpawnOptions};
use drover_sdk::{Agent, Error, Lifecycle, emit, heartbeat, json, sleep, stop_requested};
use serde::{Deserialize, Serialize};

/// The job's input (all optional); children get the same.
#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(default, rename_all = "camelCase")]
struct Input {
    /// Milliseconds between two `work_ok` events (default 3000).
    interval_ms: Option<u64>,
}

/// What the worker reports when it stops.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    iterations: u64,
    child: Option<String>,
}

struct ChainWorker;

impl Agent for ChainWorker {
    type Input = Option<Input>;
    type Output = Output;

    const LIFECYCLE: Lifecycle = Lifecycle::LongLived;

    fn run(input: Option<Input>) -> Result<Output, Error> {
        let input = input.unwrap_or_default();
        let interval = Duration::from_millis(input.interval_ms.unwrap_or(3000).max(1));
        let options = SpawnOptions {
            lifecycle: Some(Lifecycle::LongLived),
            ..SpawnOptions::default()
        };
        let child = match agents::spawn("chain-worker", &input, options) {
            Ok(id) => Some(id),
            Err(e) => {
                emit("no_child", &json!({ "tag": e.tag, "message": e.message }))?;
                None
            }
        };
        let mut iterations = 0u64;
        while !stop_requested() {
            heartbeat();
            iterations += 1;
            emit("work_ok", &json!({ "iteration": iterations }))?;
            if sleep(interval) {
                break;
            }
        }
        emit("worker_stopping", &json!({ "reason": "stop requested" }))?;
        Ok(Output { iterations, child })
    }
}

drover_sdk::export_agent!(ChainWorker);
