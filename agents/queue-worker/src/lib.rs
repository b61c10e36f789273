//! The long-lived queue worker of the "loop until stopped" scenario.
//!
//! It starts, then stays up: every `POLL_INTERVAL_MS` (from its manifest's `env`, default
//! 30 000) it heartbeats, takes the batch of work items that arrived, processes each one and
//! emits `item_processed`, and sleeps again. When the host asks it to stop it finishes the item
//! at hand, emits `worker_stopping` and returns, so the run is recorded as completed.
//!
//! With `API_A_URL` in its environment it processes an item as the seed's worker does: it
//! `POST`s `{"item": …}` to `API_A_URL/work` with `Authorization: Bearer` and the placeholder
//! of the secret `sample-api-a` (the host puts the token in, for that API's host only) and
//! `X-Tenant-ID` (its job's tenant, `default` without one), and emits `item_processed {item,
//! status, ok}` (or `{item, ok: false, error}` when the request got no answer). Without it, an
//! item is processed locally (`{item, digest, ok: true}`).

use std::time::Duration;

use drover_sdk::http::{self, Request};
use drover_sdk::{
    Agent, Error, Lifecycle, Value, emit, heartbeat, json, now_ms, secret, sleep, stop_requested,
};
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
        let api = std::env::var("API_A_URL").ok().map(|url| Api {
            url: format!("{}/work", url.trim_end_matches('/')),
            tenant: std::env::var("DROVER_TENANT_ID").unwrap_or_else(|_| "default".into()),
            authorization: format!("Bearer {}", secret("sample-api-a")),
        });
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
                let outcome = match &api {
                    Some(api) => api.post(&item),
                    None => json!({ "item": item, "digest": process(&item), "ok": true }),
                };
                processed += 1;
                emit("item_processed", &outcome)?;
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

/// The protected API items go to.
struct Api {
    url: String,
    tenant: String,
    authorization: String,
}

impl Api {
    /// Posts `item`; what the API answered (or why it did not), as `item_processed` says it.
    fn post(&self, item: &str) -> Value {
        let request = Request::new("POST", self.url.as_str())
            .header("Authorization", self.authorization.as_str())
            .header("X-Tenant-ID", self.tenant.as_str())
            .header("Content-Type", "application/json")
            .body(json!({ "item": item }).to_string());
        match http::send(&request) {
            Ok(response) => json!({
                "item": item,
                "status": response.status,
                "ok": (200..300).contains(&response.status),
            }),
            Err(e) => json!({ "item": item, "ok": false, "error": e.to_string() }),
        }
    }
}

/// The local per-item work: a stand-in for the call the real worker makes (FNV-1a of the item).
fn process(item: &str) -> String {
    let hash = item.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

drover_sdk::export_agent!(QueueWorker);
