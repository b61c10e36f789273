//! Per-agent resource limits, enforced by the wasm sandbox.
//!
//! | limit | job default | long-lived default | exceeding it |
//! |---|---|---|---|
//! | `fuel` | 10 000 000 000 | unlimited | status `quota`, tag `OutOfFuel` |
//! | `memory_bytes` | 64 MiB | 64 MiB | tag `MemoryLimit` |
//! | `timeout` | 60 s | none | status `timeout`, tag `Timeout` |
//! | `max_output_bytes` | 1 MiB | 1 MiB | tag `OutputTooLarge` |
//! | `max_events` | 10 000 per run | unlimited | tag `EventLimit` |
//! | `max_event_bytes` | 64 KiB per event | 64 KiB per event | tag `EventLimit` |
//! | `max_event_total_bytes` | 16 MiB per run | unlimited | tag `EventLimit` |
//! | `event_rate` | none | 100 per second, bursts of 1 000 | tag `EventLimit` |
//! | `event_byte_rate` | none | 64 KiB per second, bursts of 4 MiB | tag `EventLimit` |
//! | `max_log_bytes` | 64 KiB per run | 1 MiB per run | the rest of the log is dropped |
//! | `scratch_bytes` | 256 MiB | 256 MiB | tag `DiskLimit` |
//! | `scratch_files` | 10 000 | 10 000 | tag `DiskLimit` |
//!
//! A job is bounded by its event count. A long-lived agent runs for as long as it is not
//! stopped, so a count would only decide when it dies; it is held to a rate instead (a token
//! bucket: `burst` events at once, refilled at `per_second`), which bounds what it can write per
//! unit of time however long it lives. The bytes of a run's events are bounded the same way: a
//! job by a total, a long-lived agent by a byte rate. Every event is charged at least
//! [`MIN_EVENT_CHARGE`] bytes (what a row costs besides its payload), and `log` events count too,
//! so many tiny events cannot outgrow the budget. Every limit can be set in the agent's manifest.

use std::time::Duration;

use serde::Serialize;

use crate::outbound::HttpLimits;
use crate::queue::Lifecycle;

/// What one run of an agent may use. The wasm sandbox enforces every limit; the none sandbox
/// (trusted code) enforces none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Fuel (roughly, WebAssembly instructions) per run; exhausting it ends the run with status
    /// `quota`. `None`: unlimited.
    pub fuel: Option<u64>,
    /// Linear memory, in bytes, across all of the component's memories. At most the engine's
    /// `max_memory_bytes` (an agent asking for more is not loaded).
    pub memory_bytes: u64,
    /// Wall-clock time per run. `None`: unlimited (the default for long-lived agents).
    #[serde(serialize_with = "serialize_opt_ms")]
    pub timeout: Option<Duration>,
    /// Largest output accepted, in bytes of JSON.
    pub max_output_bytes: u64,
    /// Most events one run may emit. `None`: unlimited (the default for long-lived agents,
    /// which are held to `event_rate` instead).
    pub max_events: Option<u64>,
    /// Largest payload of one event, in bytes of JSON.
    pub max_event_bytes: u64,
    /// How fast a run may emit events. `None`: as fast as it likes (the default for jobs, which
    /// are held to `max_events` instead).
    pub event_rate: Option<EventRate>,
    /// Most bytes of events one run may write: agent events and `log` events, each charged its
    /// payload's size but at least [`MIN_EVENT_CHARGE`]. `None`: unlimited (the default for
    /// long-lived agents, which are held to `event_byte_rate` instead).
    pub max_event_total_bytes: Option<u64>,
    /// How fast a run may write event bytes (charged as for `max_event_total_bytes`). `None`:
    /// as fast as it likes (the default for jobs).
    pub event_byte_rate: Option<ByteRate>,
    /// Most bytes of log output kept per run: stdout, stderr and the agent's `log` calls share
    /// this budget (as `log` events); the rest is dropped, with one notice that it was.
    pub max_log_bytes: u64,
    /// Bytes the run's scratch directory may hold (files' sizes, or the disk space they take
    /// if more); going past it fails the run with `DiskLimit`.
    pub scratch_bytes: u64,
    /// Files and directories the run's scratch directory may hold; going past it fails the run
    /// with `DiskLimit`.
    pub scratch_files: u64,
    /// Lower limits than the host's `[outbound]` ones on the run's HTTP requests.
    pub http: HttpLimits,
}

/// Default size of a run's scratch directory.
pub const DEFAULT_SCRATCH_BYTES: u64 = 256 << 20;
/// Default number of entries in a run's scratch directory.
pub const DEFAULT_SCRATCH_FILES: u64 = 10_000;

/// A token bucket for events: up to `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRate {
    /// Events per second, sustained.
    pub per_second: u64,
    /// Events that may be emitted at once (the bucket's size; a run starts with it full).
    pub burst: u64,
}

/// A token bucket for event bytes: up to `burst` bytes at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ByteRate {
    /// Bytes per second, sustained.
    pub per_second: u64,
    /// Bytes that may be written at once (the bucket's size; a run starts with it full).
    pub burst: u64,
}

/// The least an event is charged against the byte limits, however small its payload: about
/// what its row costs besides the payload (run id, sequence, time, kind, index entry).
pub const MIN_EVENT_CHARGE: u64 = 128;
/// Default byte budget of a job's events.
pub const DEFAULT_MAX_EVENT_TOTAL_BYTES: u64 = 16 << 20;
/// Default event byte rate of long-lived agents.
pub const DEFAULT_LONG_LIVED_EVENT_BYTE_RATE: ByteRate = ByteRate {
    per_second: 64 << 10,
    burst: 4 << 20,
};

/// Default largest event payload.
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 64 << 10;
/// Default event rate of long-lived agents.
pub const DEFAULT_LONG_LIVED_EVENT_RATE: EventRate = EventRate {
    per_second: 100,
    burst: 1000,
};

fn serialize_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}

impl Limits {
    /// Defaults for an agent of this lifecycle: jobs get a fuel budget, a timeout, an event
    /// count and an event byte budget; long-lived agents get none of those (they idle between
    /// batches and live until stopped) but an event rate and an event byte rate.
    pub fn for_lifecycle(lifecycle: Lifecycle) -> Self {
        match lifecycle {
            Lifecycle::Job => Self {
                fuel: Some(10_000_000_000),
                memory_bytes: 64 << 20,
                timeout: Some(Duration::from_secs(60)),
                max_output_bytes: 1 << 20,
                max_events: Some(10_000),
                max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
                event_rate: None,
                max_event_total_bytes: Some(DEFAULT_MAX_EVENT_TOTAL_BYTES),
                event_byte_rate: None,
                max_log_bytes: 64 << 10,
                scratch_bytes: DEFAULT_SCRATCH_BYTES,
                scratch_files: DEFAULT_SCRATCH_FILES,
                http: HttpLimits::default(),
            },
            Lifecycle::LongLived => Self {
                fuel: None,
                memory_bytes: 64 << 20,
                timeout: None,
                max_output_bytes: 1 << 20,
                max_events: None,
                max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
                event_rate: Some(DEFAULT_LONG_LIVED_EVENT_RATE),
                max_event_total_bytes: None,
                event_byte_rate: Some(DEFAULT_LONG_LIVED_EVENT_BYTE_RATE),
                max_log_bytes: 1 << 20,
                scratch_bytes: DEFAULT_SCRATCH_BYTES,
                scratch_files: DEFAULT_SCRATCH_FILES,
                http: HttpLimits::default(),
            },
        }
    }

    /// No limits at all (what the none sandbox applies), keeping `max_log_bytes`.
    pub fn unlimited(max_log_bytes: u64) -> Self {
        Self {
            fuel: None,
            memory_bytes: u64::MAX,
            timeout: None,
            max_output_bytes: u64::MAX,
            max_events: None,
            max_event_bytes: u64::MAX,
            event_rate: None,
            max_event_total_bytes: None,
            event_byte_rate: None,
            max_log_bytes,
            scratch_bytes: u64::MAX,
            scratch_files: u64::MAX,
            http: HttpLimits::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::for_lifecycle(Lifecycle::Job)
    }
}
