//! Per-agent resource limits, enforced by the wasm sandbox.

use std::time::Duration;

use serde::Serialize;

use crate::queue::Lifecycle;

/// What one run of an agent may use. The wasm sandbox enforces every limit; the none sandbox
/// (trusted code) enforces none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Fuel (roughly, WebAssembly instructions) per run; exhausting it ends the run with status
    /// `quota`. `None`: unlimited.
    pub fuel: Option<u64>,
    /// Linear memory, in bytes, across all of the component's memories.
    pub memory_bytes: u64,
    /// Wall-clock time per run. `None`: unlimited (the default for long-lived agents).
    #[serde(serialize_with = "serialize_opt_ms")]
    pub timeout: Option<Duration>,
    /// Largest output accepted, in bytes of JSON.
    pub max_output_bytes: u64,
    /// Most events one run may emit. `None`: unlimited.
    pub max_events: Option<u64>,
    /// Most bytes of stdout and stderr kept (as `log` events) per run; the rest is dropped.
    pub max_log_bytes: u64,
}

fn serialize_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}

impl Limits {
    /// Defaults for an agent of this lifecycle: jobs get a fuel budget and a timeout, long-lived
    /// agents neither (they idle between batches and live until stopped).
    pub fn for_lifecycle(lifecycle: Lifecycle) -> Self {
        match lifecycle {
            Lifecycle::Job => Self {
                fuel: Some(10_000_000_000),
                memory_bytes: 64 << 20,
                timeout: Some(Duration::from_secs(60)),
                max_output_bytes: 1 << 20,
                max_events: Some(10_000),
                max_log_bytes: 64 << 10,
            },
            Lifecycle::LongLived => Self {
                fuel: None,
                memory_bytes: 64 << 20,
                timeout: None,
                max_output_bytes: 1 << 20,
                max_events: None,
                max_log_bytes: 1 << 20,
            },
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::for_lifecycle(Lifecycle::Job)
    }
}
