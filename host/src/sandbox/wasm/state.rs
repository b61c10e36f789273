//! What one store holds: the guest's WASI context, its resource accounting, and the host
//! functions of the `drover:agent/host` interface.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::drover::agent::{host, types};
use super::budget::HostWork;
use super::http::HttpState;
use super::human_bytes;
use super::scratch::ScratchQuota;
use super::stdio::Capture;
use crate::children::RunChildren;
use crate::inbox::RunInbox;
use crate::queue::ErrorInfo;
use crate::registry::{EventRate, Limits};
use crate::sandbox::caps::RunCapabilities;
use crate::sandbox::{Control, RunContext};
use crate::time::now_ms;

/// Longest single `sleep` a guest may ask for (it can loop).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Most elements a table may grow to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The data of one store.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    /// The run this store serves (none while the host asks the agent to describe itself).
    pub(crate) ctx: Option<RunContext>,
    pub(crate) memory: MemoryMeter,
    /// The size and rate limits on the guest's events.
    pub(crate) events: EventGate,
    /// The run's log output (stdout, stderr and `log` calls), within its byte budget.
    pub(crate) logs: Capture,
    /// Wall-clock limit of the run.
    pub(crate) deadline: Option<Instant>,
    /// Set when the epoch callback ended the run for passing `deadline`.
    pub(crate) timed_out: bool,
    /// Why a host function ended the run (event limit, invalid payload, …).
    pub(crate) host_error: Option<ErrorInfo>,
    /// Work the host did for the guest, charged to its fuel when each host call returns.
    pub(crate) work: HostWork,
    /// The budgets of the run's scratch directory, if it has one and is held to them.
    pub(crate) scratch_quota: Option<ScratchQuota>,
    /// Set while the store serves one tool call: the calling run's control, whose abort ends
    /// the call. A tool has no run of its own: its `emit`, `log` and `heartbeat` calls are
    /// accepted and dropped (charged to its fuel like any host call), `sleep` returns early
    /// when the calling run is aborted, and a stop is never requested of it.
    pub(crate) tool_control: Option<Arc<Control>>,
    /// The run's model and tool calls (none while a component describes itself, or in a tool).
    pub(crate) caps: Option<RunCapabilities>,
    /// Its outbound HTTP requests (`wasi:http/outgoing-handler`).
    pub(crate) http: HttpState,
    /// The children it spawns (`drover:agent/agents`; none while a component describes itself,
    /// in a tool, or on a host without children).
    pub(crate) children: Option<RunChildren>,
    /// Its job's messages (`drover:agent/inbox`; none while describing, in a tool, or on a
    /// host without inboxes).
    pub(crate) inbox: Option<RunInbox>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Linear memory accounting: enforces the agent's limit, remembers the peak, and notes why a
/// growth was refused (by the agent's limit, or by the engine: an instance slot's cap).
#[derive(Debug, Default)]
pub(crate) struct MemoryMeter {
    /// Bytes the guest may hold (none: only the engine's own cap).
    pub(crate) limit: Option<u64>,
    pub(crate) used: u64,
    pub(crate) peak: u64,
    /// Set when a growth was refused.
    pub(crate) denied: Option<MemoryDenial>,
    /// `used` and `peak` before the last growth this meter allowed, restored if the engine then
    /// fails that growth.
    before_last_growth: Option<(u64, u64)>,
}

impl MemoryMeter {
    /// A meter holding the guest to `limit` bytes (none: only the engine's cap).
    pub(crate) fn with_limit(limit: Option<u64>) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// What a refused growth says, if one was refused: `who` ("the agent", a tool's name)
    /// passed its `limit`, or the engine's cap of `engine_max` bytes an instance refused it.
    pub(crate) fn denial(&self, who: &str, limit: u64, engine_max: u64) -> Option<String> {
        self.denied.as_ref().map(|denial| match denial {
            MemoryDenial::Limit { desired } => format!(
                "{who} exceeded its memory limit of {} (it asked for {} in all)",
                human_bytes(limit),
                human_bytes(*desired)
            ),
            MemoryDenial::Engine { reason } => format!(
                "{who} ran out of memory at {}: this host grants an instance at most {} \
                 ({reason})",
                human_bytes(self.used),
                human_bytes(engine_max)
            ),
        })
    }
}

/// Why a memory growth was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemoryDenial {
    /// It would have taken the guest past its limit, to `desired` bytes.
    Limit {
        /// Bytes the guest would have held.
        desired: u64,
    },
    /// The engine could not grant it (the pool slot's cap, or the memory type's maximum).
    Engine {
        /// What wasmtime said.
        reason: String,
    },
}

impl ResourceLimiter for MemoryMeter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self
            .used
            .saturating_sub(current as u64)
            .saturating_add(desired as u64);
        if self.limit.is_some_and(|limit| next > limit) {
            self.denied = Some(MemoryDenial::Limit { desired: next });
            return Ok(false);
        }
        self.before_last_growth = Some((self.used, self.peak));
        self.used = next;
        self.peak = self.peak.max(next);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        if let Some(before) = self.before_last_growth.take() {
            (self.used, self.peak) = before;
        }
        self.denied = Some(MemoryDenial::Engine {
            reason: error.to_string(),
        });
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Checks each event a guest emits against the payload size limit and the event rate.
#[derive(Debug)]
pub(crate) struct EventGate {
    max_bytes: u64,
    bucket: Option<TokenBucket>,
}

#[derive(Debug)]
struct TokenBucket {
    rate: EventRate,
    tokens: f64,
    refilled: Instant,
}

impl EventGate {
    /// The gate for a run held to `limits`.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            max_bytes: limits.max_event_bytes,
            bucket: limits.event_rate.map(|rate| TokenBucket {
                rate,
                tokens: rate.burst as f64,
                refilled: Instant::now(),
            }),
        }
    }

    /// A gate that lets everything through.
    pub(crate) fn open() -> Self {
        Self {
            max_bytes: u64::MAX,
            bucket: None,
        }
    }

    /// Lets one event with a `payload_len`-byte payload through, or says which limit it breaks.
    pub(crate) fn admit(&mut self, payload_len: usize) -> Result<(), ErrorInfo> {
        let len = payload_len as u64;
        if len > self.max_bytes {
            return Err(ErrorInfo::new(
                "EventLimit",
                format!(
                    "an event payload of {len} bytes is larger than the agent's limit of {} per \
                     event (max-event-bytes)",
                    human_bytes(self.max_bytes)
                ),
            ));
        }
        if let Some(bucket) = &mut self.bucket {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
            bucket.refilled = now;
            bucket.tokens = (bucket.tokens + elapsed * bucket.rate.per_second as f64)
                .min(bucket.rate.burst as f64);
            if bucket.tokens < 1.0 {
                return Err(ErrorInfo::new(
                    "EventLimit",
                    format!(
                        "the agent emitted events faster than its limit of {} per second (bursts \
                         of {}; max-events-per-second, event-burst)",
                        bucket.rate.per_second, bucket.rate.burst
                    ),
                ));
            }
            bucket.tokens -= 1.0;
        }
        Ok(())
    }
}

impl HostState {
    pub(crate) fn run_ctx(&self) -> wasmtime::Result<&RunContext> {
        self.ctx.as_ref().ok_or_else(|| {
            wasmtime::format_err!(
                "host functions are not available while the agent describes itself"
            )
        })
    }

    /// Ends the run with `error` (the guest traps; the error is what gets recorded).
    pub(crate) fn fail(&mut self, error: ErrorInfo) -> wasmtime::Error {
        let message = error.to_string();
        self.host_error = Some(error);
        wasmtime::format_err!(message)
    }

    /// Measures the scratch directory (if it was not measured just now, or `now`) and ends the
    /// run with `DiskLimit` if it is over budget.
    pub(crate) fn check_scratch(&mut self, now: bool) -> wasmtime::Result<()> {
        let Some(quota) = &mut self.scratch_quota else {
            return Ok(());
        };
        match quota.check(now) {
            Ok(()) => Ok(()),
            Err(message) => Err(self.fail(ErrorInfo::new("DiskLimit", message))),
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn emit(&mut self, kind: String, payload: String) -> wasmtime::Result<()> {
        self.work.add(kind.len() + payload.len());
        if self.tool_control.is_some() {
            return Ok(());
        }
        let ctx = self.run_ctx()?.clone();
        if let Err(error) = self.events.admit(payload.len()) {
            return Err(self.fail(error));
        }
        match ctx.emit_raw(&kind, payload).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.fail(error)),
        }
    }

    async fn heartbeat(&mut self) -> wasmtime::Result<()> {
        if self.tool_control.is_some() {
            return Ok(());
        }
        self.run_ctx()?.clone().heartbeat().await;
        Ok(())
    }

    async fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            types::Level::Trace => "trace",
            types::Level::Debug => "debug",
            types::Level::Info => "info",
            types::Level::Warn => "warn",
            types::Level::Error => "error",
        };
        self.work.add(message.len());
        if self.tool_control.is_some() {
            return Ok(());
        }
        self.run_ctx()?;
        // Charged to the same budget as stdout and stderr; past it, dropped.
        self.logs.log(level, &message).await;
        Ok(())
    }

    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(now_ms()).unwrap_or(0))
    }

    fn stop_requested(&mut self) -> wasmtime::Result<bool> {
        Ok(self.ctx.as_ref().is_some_and(RunContext::stop_requested))
    }

    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<bool> {
        if let Some(control) = self.tool_control.clone() {
            let nap = Duration::from_millis(ms).min(MAX_SLEEP);
            return Ok(tokio::select! {
                () = tokio::time::sleep(nap) => false,
                _ = control.abort_requested() => true,
            });
        }
        let ctx = self.run_ctx()?.clone();
        Ok(ctx.sleep(Duration::from_millis(ms).min(MAX_SLEEP)).await)
    }
}
