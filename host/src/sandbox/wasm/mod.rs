//! The wasm sandbox: every run gets a fresh instance of the agent's component in a fresh store,
//! deny-by-default, held to the agent's limits.
//!
//! * **Compile once.** A component is compiled when it is loaded (or deserialized from the
//!   on-disk cache, keyed by its content hash and the engine's settings), linked once into an
//!   `InstancePre`, and instantiated per run from the pooling allocator.
//! * **Limits.** Fuel (exhaustion: status `quota`), linear memory (a `ResourceLimiter`; the
//!   engine's per-instance cap is reported the same way), wall clock (the engine-wide epoch,
//!   which also slices time between guests), output size, event count, event payload size and
//!   event rate, and log bytes. What the guest makes the host do is bounded too (handles held,
//!   bytes passed in, random bytes, and a fuel charge for every host call: see `budget`), and so
//!   is what a component may ask of the engine's pool (core instances, memories and tables) and
//!   what it may say about itself in `describe`; a component over those is refused at load.
//!   Failure tags and messages are cut to size before they are recorded.
//! * **Isolation.** No inherited environment (only the manifest's `env`, and the placeholders
//!   of the agent's secrets, never their values), no sockets (TCP, UDP
//!   and name lookups are all refused), no filesystem except an optional per-run scratch
//!   directory, removed afterwards (and, after a crash, by the next host to start on the same
//!   scratch root); stdout, stderr and `log` calls become `log` events within one byte budget.
//! * **Containment.** Any trap — panic, stack overflow, out-of-bounds access, a limit — fails only
//!   that run, with an error that carries the trap's own message and the innermost frames of
//!   its backtrace; the host and other runs carry on.

mod budget;
mod calls;
mod children;
mod compat;
mod engine;
mod http;
mod inbox;
mod scratch;
mod state;
mod stdio;
mod toolbox;
mod trap;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use wasmtime::component::{
    Component, HasSelf, InstancePre, Linker, ResourceTable, ResourceTableError,
};
use wasmtime::{CallHook, Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::caps::{Capabilities, RunCapabilities};
use super::{AbortReason, Failure, RunContext, RunOutcome, Sandbox, bounded_error};
use crate::inbox::Inbox;
use crate::queue::Lifecycle;
pub(crate) use crate::registry::human_bytes;
use crate::registry::{
    AgentCode, AgentSpec, CompiledAgent, CompiledToolbox, Compiling, ComponentCompiler, Limits,
};
pub use crate::registry::{Description, ToolDescription};
use crate::secrets;
use crate::store::RunStatus;

use budget::{HostWork, MAX_HANDLES, MAX_RANDOM_BYTES};
pub use engine::{EngineConfig, Metering};
use scratch::{ScratchArea, ScratchDir, ScratchQuota};
use state::{EventGate, HostState, MemoryMeter};
use stdio::Capture;
pub use toolbox::{ToolFailure, ToolNetwork, ToolOutcome, WasmToolbox};

/// Bindings for the `drover:agent@0.2.0` world (from `wit/`).
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agent",
        imports: {
            "drover:agent/host.emit": async | trappable,
            "drover:agent/host.heartbeat": async | trappable,
            "drover:agent/host.log": async | trappable,
            "drover:agent/host.sleep": async | trappable,
            "drover:agent/model.complete": async | trappable,
            "drover:agent/tools.call": async | trappable,
            "drover:agent/tools.call-many": async | trappable,
            "drover:agent/agents.spawn": async | trappable,
            "drover:agent/agents.wait": async | trappable,
            "drover:agent/agents.stop": async | trappable,
            "drover:agent/agents.list-children": async | trappable,
            "drover:agent/inbox.receive": async | trappable,
            "drover:agent/inbox.reply": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

/// Bindings for the imports of `drover:agent@0.1.0` (from `wit/archive/`), which the host keeps
/// serving to agents built against it. Its exports have the same shape as the current ones.
pub(crate) mod bindings_v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/archive/agent@0.1.0.wit",
        world: "agent",
        imports: {
            "drover:agent/host.emit": async | trappable,
            "drover:agent/host.heartbeat": async | trappable,
            "drover:agent/host.log": async | trappable,
            "drover:agent/host.sleep": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

/// Errors while loading a component.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The bytes are not a valid component for this engine.
    #[error("not a valid WebAssembly component for this host: {0}")]
    Compile(String),
    /// The component imports something the host does not provide, or lacks an export.
    #[error("the component does not fit the drover:agent world: {0}")]
    Link(String),
    /// The component trapped or misbehaved while describing itself.
    #[error("the agent failed to describe itself: {0}")]
    Describe(String),
    /// The engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The scratch root could not be set up.
    #[error("scratch directory {path}: {message}")]
    Scratch {
        /// The scratch root.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// A loaded, linked component, ready to be instantiated per run.
pub struct WasmAgent {
    pre: bindings::AgentPre<HostState>,
    digest: String,
    description: Description,
}

impl CompiledAgent for WasmAgent {
    fn digest(&self) -> &str {
        &self.digest
    }

    fn description(&self) -> &Description {
        &self.description
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl ComponentCompiler for WasmRuntime {
    fn max_memory_bytes(&self) -> u64 {
        self.max_memory_bytes
    }

    fn compile_agent<'a>(&'a self, path: &'a Path) -> Compiling<'a, Arc<dyn CompiledAgent>> {
        Box::pin(async move {
            let agent = self.load_file(path).await.map_err(|e| e.to_string())?;
            Ok(Arc::new(agent) as Arc<dyn CompiledAgent>)
        })
    }

    fn compile_toolbox<'a>(&'a self, path: &'a Path) -> Compiling<'a, Arc<dyn CompiledToolbox>> {
        Box::pin(async move {
            let toolbox = self
                .load_toolbox_file(path)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(toolbox) as Arc<dyn CompiledToolbox>)
        })
    }
}

/// The wasm code behind a compiled agent, or why it cannot run here (it was compiled by
/// another kind of runtime).
fn wasm_code(agent: &dyn CompiledAgent) -> Result<&WasmAgent, Failure> {
    agent.as_any().downcast_ref().ok_or_else(|| {
        Failure::permanent(
            "SandboxMismatch",
            "the agent's component was not compiled by this host's WebAssembly runtime",
        )
    })
}

/// Whether a run is isolated and limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// The wasm sandbox: deny-by-default, every limit enforced.
    Sandboxed,
    /// The none sandbox: the host's environment and network, no limits.
    Trusted,
}

/// The engine, the linker and the scratch area shared by every wasm run of a host.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    scratch: ScratchArea,
    metering: Metering,
    max_memory_bytes: u64,
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("scratch", &self.scratch.path())
            .finish()
    }
}

/// Fuel and time an agent gets to describe itself.
const DESCRIBE_FUEL: u64 = 1_000_000_000;
const DESCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Linear memory an agent gets to describe itself.
const DESCRIBE_MEMORY: u64 = 256 << 20;
/// Most bytes the host copies out of what `describe` returns: room for every field at its bound
/// (see `check_sizes`), so that a description far over them is refused before it is copied.
const DESCRIBE_RESULT_BYTES: usize = 1 << 20;

impl WasmRuntime {
    /// Builds the engine (and its epoch ticker). Per-run scratch directories are created in a
    /// directory of this runtime's own under `scratch_root` (created if missing), which other
    /// host processes may share; directories left there by hosts that are gone (killed, say)
    /// are removed now.
    pub fn new(
        config: &EngineConfig,
        scratch_root: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, WasmError> {
        let scratch_root = scratch_root.into();
        let scratch = ScratchArea::open(&scratch_root).map_err(|e| WasmError::Scratch {
            path: scratch_root.clone(),
            message: e.to_string(),
        })?;
        let engine = engine::build(config).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        if config.metering.epochs {
            engine::start_ticker(&engine, config.epoch_tick);
        }
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let linked = [
            bindings::drover::agent::host::add_to_linker::<HostState, HasSelf<HostState>>(
                &mut linker,
                |state| state,
            ),
            bindings::drover::agent::model::add_to_linker::<HostState, HasSelf<HostState>>(
                &mut linker,
                |state| state,
            ),
            bindings::drover::agent::tools::add_to_linker::<HostState, HasSelf<HostState>>(
                &mut linker,
                |state| state,
            ),
            bindings::drover::agent::agents::add_to_linker::<HostState, HasSelf<HostState>>(
                &mut linker,
                |state| state,
            ),
            bindings::drover::agent::inbox::add_to_linker::<HostState, HasSelf<HostState>>(
                &mut linker,
                |state| state,
            ),
            bindings_v0_1::drover::agent::host::add_to_linker::<HostState, HasSelf<HostState>>(
                &mut linker,
                |state| state,
            ),
        ];
        for result in linked {
            result.map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        }
        Ok(Arc::new(Self {
            engine,
            linker,
            scratch,
            metering: config.metering,
            max_memory_bytes: config.max_memory_bytes,
        }))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The most linear memory this engine grants one instance, in bytes (an agent's memory
    /// limit may not be higher).
    pub fn max_memory_bytes(&self) -> u64 {
        self.max_memory_bytes
    }

    /// This runtime's own directory in the scratch root; runs' scratch directories are made in
    /// it. Removed when the runtime is dropped.
    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Loads a component file: compile (or take it from the cache), link, and ask the agent to
    /// describe itself.
    pub async fn load_file(&self, path: &Path) -> Result<WasmAgent, WasmError> {
        self.load_bytes(read_component(path).await?).await
    }

    /// Loads a component from its bytes.
    pub async fn load_bytes(&self, bytes: Vec<u8>) -> Result<WasmAgent, WasmError> {
        let (digest, component, pre) = self.compile_and_link(bytes).await?;
        let pre = bindings::AgentPre::new(pre).map_err(|e| WasmError::Link(format!("{e:#}")))?;
        let imports = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let mut description = self.describe(&pre).await?;
        description.imports = imports;
        Ok(WasmAgent {
            pre,
            digest,
            description,
        })
    }

    /// Compiles a component (or takes it from the cache) off the async workers and links it:
    /// its digest (SHA-256 of its bytes, hex), the component, and its pre-linked instance.
    async fn compile_and_link(
        &self,
        bytes: Vec<u8>,
    ) -> Result<(String, Component, InstancePre<HostState>), WasmError> {
        if let Some(reason) = not_a_component(&bytes) {
            return Err(WasmError::Compile(reason));
        }
        let digest = hex(&Sha256::digest(&bytes));
        let engine = self.engine.clone();
        // Compiling is CPU-bound: keep it off the async workers.
        let component =
            tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes))
                .await
                .map_err(|e| WasmError::Compile(e.to_string()))?
                .map_err(|e| WasmError::Compile(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| WasmError::Link(format!("{e:#}")))?;
        Ok((digest, component, pre))
    }

    async fn describe(
        &self,
        pre: &bindings::AgentPre<HostState>,
    ) -> Result<Description, WasmError> {
        let describe_err = |e: wasmtime::Error| {
            let causes = trap::causes(&e);
            if causes.contains("fuel allocated for hostcalls has been exhausted") {
                WasmError::Describe(format!(
                    "it returned more than {}, and a description may hold at most {} of id, \
                     version and description and {} per schema ({causes})",
                    human_bytes(DESCRIBE_RESULT_BYTES as u64),
                    human_bytes((2 * MAX_DESCRIBED_NAME + MAX_DESCRIBED_TEXT) as u64),
                    human_bytes(MAX_DESCRIBED_SCHEMA as u64),
                ))
            } else {
                WasmError::Describe(format!("{e:#}"))
            }
        };
        let work = HostWork::default();
        let state = HostState {
            wasi: bounded_wasi(&work).build(),
            table: bounded_table(),
            ctx: None,
            memory: MemoryMeter::with_limit(Some(DESCRIBE_MEMORY)),
            events: EventGate::open(),
            logs: Capture::new(None, 0),
            deadline: Some(Instant::now() + DESCRIBE_TIMEOUT),
            timed_out: false,
            host_error: None,
            work,
            scratch_quota: None,
            tool_control: None,
            caps: None,
            children: None,
            http: http::HttpState::none(),
            inbox: None,
        };
        let mut store = self
            .store(state, Some(DESCRIBE_FUEL), DESCRIBE_RESULT_BYTES)
            .map_err(describe_err)?;
        let call = async {
            let agent = pre.instantiate_async(&mut store).await?;
            agent.call_describe(&mut store).await
        };
        let info = tokio::time::timeout(DESCRIBE_TIMEOUT, call)
            .await
            .map_err(|_| WasmError::Describe("timed out".into()))?
            .map_err(describe_err)?;
        check_sizes(&info)?;
        let schema = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        Ok(Description {
            id: info.id,
            version: info.version,
            description: info.description,
            lifecycle: match info.lifecycle {
                bindings::drover::agent::types::Lifecycle::Job => Lifecycle::Job,
                bindings::drover::agent::types::Lifecycle::LongLived => Lifecycle::LongLived,
            },
            input_schema: schema(info.input_schema),
            output_schema: schema(info.output_schema),
            imports: Vec::new(),
        })
    }

    /// A store with fuel (none: as good as unlimited), host calls charged to it, at most
    /// `hostcall_bytes` copied into the host by one call (or by a result), and the epoch policy
    /// installed.
    fn store(
        &self,
        state: HostState,
        fuel: Option<u64>,
        hostcall_bytes: usize,
    ) -> wasmtime::Result<Store<HostState>> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.set_hostcall_fuel(hostcall_bytes);
        let metered = self.metering.fuel;
        if metered {
            store.set_fuel(fuel.unwrap_or(u64::MAX))?;
        }
        if metered || store.data().scratch_quota.is_some() {
            store.call_hook(move |mut cx, hook| {
                if !matches!(hook, CallHook::ReturningFromHost) {
                    return Ok(());
                }
                if metered {
                    budget::charge(&mut cx, |state: &mut HostState| &mut state.work)?;
                }
                cx.data_mut().check_scratch(false)
            });
        }
        if !self.metering.epochs {
            return Ok(store);
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            let control = state
                .ctx
                .as_ref()
                .map(RunContext::control)
                .or(state.tool_control.as_ref());
            if control.is_some_and(|control| control.aborted().is_some()) {
                return Ok(UpdateDeadline::Interrupt);
            }
            if state.deadline.is_some_and(|d| Instant::now() >= d) {
                state.timed_out = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            // Let other tasks run between slices of a long computation.
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }

    /// Runs `agent` on `input` for one job.
    // One argument per thing a run is given; a struct of them would only rename the list.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        agent: &dyn CompiledAgent,
        spec: &AgentSpec,
        input: &RawValue,
        ctx: RunContext,
        isolation: Isolation,
        caps: &Arc<Capabilities>,
        inbox: Option<&Inbox>,
    ) -> RunOutcome {
        let agent = match wasm_code(agent) {
            Ok(agent) => agent,
            Err(failure) => return RunOutcome::from_result(Err(failure)),
        };
        let limits = match isolation {
            Isolation::Sandboxed => spec.limits.clone(),
            Isolation::Trusted => Limits::unlimited(spec.limits.max_log_bytes),
        };
        let capture = Capture::new(Some(ctx.clone()), limits.max_log_bytes);
        let scratch = match spec.scratch_dir {
            true => match self.scratch.create_run(ctx.run_id()) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    return RunOutcome::from_result(Err(Failure::error(
                        "Scratch",
                        format!("cannot create the run's scratch directory: {e}"),
                    )));
                }
            },
            false => None,
        };
        let work = HostWork::default();
        let wasi = match build_wasi(spec, &ctx, &capture, scratch.as_ref(), isolation, &work) {
            Ok(wasi) => wasi,
            Err(e) => {
                return RunOutcome::from_result(Err(Failure::error(
                    "Sandbox",
                    format!("cannot set up the sandbox: {e:#}"),
                )));
            }
        };
        let deadline = limits.timeout.map(|t| Instant::now() + t);
        let state = HostState {
            wasi,
            table: match isolation {
                Isolation::Sandboxed => bounded_table(),
                Isolation::Trusted => ResourceTable::new(),
            },
            ctx: Some(ctx.clone()),
            memory: MemoryMeter::with_limit(Some(limits.memory_bytes).filter(|m| *m != u64::MAX)),
            events: EventGate::new(&limits),
            logs: capture.clone(),
            deadline,
            timed_out: false,
            host_error: None,
            work,
            scratch_quota: scratch
                .as_ref()
                .filter(|_| isolation == Isolation::Sandboxed)
                .map(|dir| {
                    ScratchQuota::new(&dir.path, limits.scratch_bytes, limits.scratch_files)
                }),
            tool_control: None,
            caps: Some(caps.for_run(spec, ctx.clone())),
            children: caps.children_for_run(spec, &ctx),
            http: http::HttpState::new(
                Some(caps.outbound().for_run(spec.outbound.clone(), &limits.http)),
                Some(ctx.clone()),
                Some(Arc::clone(ctx.control())),
            )
            .with_secrets(caps.secrets().clone(), &spec.secrets),
            inbox: inbox.map(|inbox| inbox.for_run(ctx.job_id(), ctx.run_id())),
        };
        let mut store = match self.store(
            state,
            limits.fuel,
            budget::hostcall_fuel(limits.memory_bytes),
        ) {
            Ok(store) => store,
            Err(e) => {
                return RunOutcome::from_result(Err(Failure::error("Sandbox", format!("{e:#}"))));
            }
        };

        let input = input.get().to_string();
        let call = async {
            let instance = agent.pre.instantiate_async(&mut store).await?;
            instance.call_run(&mut store, &input).await
        };
        // Epochs interrupt a guest that computes past its deadline; this catches one that waits.
        let result = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), call)
                .await
                .unwrap_or_else(|_| {
                    store.data_mut().timed_out = true;
                    Err(wasmtime::format_err!(
                        "the run exceeded its wall-clock limit"
                    ))
                }),
            None => call.await,
        };
        // What the guest wrote just before it returned counts too.
        let result = result.and_then(|value| store.data_mut().check_scratch(true).map(|()| value));

        let fuel_used = store.get_fuel().ok().map(|left| {
            limits
                .fuel
                .unwrap_or(u64::MAX)
                .saturating_sub(left)
                .saturating_add(store.data().work.charged())
        });
        let state = store.data();
        let outcome = match result {
            Ok(Ok(output)) => accept_output(output, &limits),
            // A language runtime (JavaScript's, Python's) turns a refused allocation into an
            // error of its own and returns it: the limit is still what ended the run.
            Ok(Err(failure)) => {
                match state
                    .memory
                    .denial("the agent", limits.memory_bytes, self.max_memory_bytes)
                {
                    Some(what) => Err(Failure::permanent(
                        "MemoryLimit",
                        format!(
                            "{what}; the agent then failed with {}: {}",
                            failure.tag, failure.message
                        ),
                    )),
                    None => Err(Failure {
                        status: RunStatus::Error,
                        error: bounded_error(failure.tag, failure.message),
                        retry: failure.retryable,
                    }),
                }
            }
            Err(error) => Err(classify(
                &error,
                state,
                &limits,
                self.max_memory_bytes,
                &capture,
                &ctx,
            )),
        };
        let peak_memory = state.memory.peak;
        let usage = state.caps.as_ref().and_then(RunCapabilities::usage);
        capture.finish();
        // The store holds the guest's open files: close them before removing their directory.
        drop(store);
        if let Some(scratch) = scratch {
            scratch.remove().await;
        }
        RunOutcome {
            result: outcome,
            fuel_used,
            peak_memory: Some(peak_memory),
            usage,
        }
    }
}

/// Reads a component file.
/// Why `bytes` cannot be a component, said for people (what it is instead, and how to make a
/// component), or `None` if they may be one.
fn not_a_component(bytes: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: &[u8] = &[1, 0, 0, 0];
    if bytes.is_empty() {
        return Some("the file is empty (a copy still being written?)".into());
    }
    if !bytes.starts_with(MAGIC) {
        return Some(
            "the file is not WebAssembly: it does not start with the bytes \\0asm (a text file, \
             or a half-written copy?)"
                .into(),
        );
    }
    if bytes.get(4..8) == Some(CORE_VERSION) {
        return Some(
            "it is a core WebAssembly module, and agents are components: build it for the \
             wasm32-wasip2 target (`cargo build --target wasm32-wasip2`, or `drover-host build`), \
             or wrap a WASI module with `wasm-tools component new`"
                .into(),
        );
    }
    None
}

async fn read_component(path: &Path) -> Result<Vec<u8>, WasmError> {
    tokio::fs::read(path).await.map_err(|e| WasmError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A resource table holding at most [`MAX_HANDLES`] entries.
fn bounded_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HANDLES);
    table
}

/// A WASI context whose random bytes are bounded per call and charged to `work`.
fn bounded_wasi(work: &HostWork) -> WasiCtxBuilder {
    let mut wasi = WasiCtxBuilder::new();
    wasi.max_random_size(MAX_RANDOM_BYTES)
        .secure_random(work.rng())
        .insecure_random(work.rng());
    wasi
}

/// Longest `id` and `version` an agent may describe itself with, in bytes.
const MAX_DESCRIBED_NAME: usize = 256;
/// Longest `description`, in bytes.
const MAX_DESCRIBED_TEXT: usize = 4 << 10;
/// Longest input or output schema, in bytes.
const MAX_DESCRIBED_SCHEMA: usize = 64 << 10;

/// Refuses a description with a field longer than its bound: what `describe` returns is kept
/// and served (on `/v1/templates`, say) for as long as the agent is loaded.
fn check_sizes(info: &bindings::drover::agent::types::AgentInfo) -> Result<(), WasmError> {
    let fields = [
        ("id", info.id.len(), MAX_DESCRIBED_NAME),
        ("version", info.version.len(), MAX_DESCRIBED_NAME),
        ("description", info.description.len(), MAX_DESCRIBED_TEXT),
        (
            "input schema",
            info.input_schema.as_ref().map_or(0, String::len),
            MAX_DESCRIBED_SCHEMA,
        ),
        (
            "output schema",
            info.output_schema.as_ref().map_or(0, String::len),
            MAX_DESCRIBED_SCHEMA,
        ),
    ];
    for (field, len, max) in fields {
        if len > max {
            return Err(WasmError::Describe(format!(
                "its {field} is {len} bytes; at most {} is accepted",
                human_bytes(max as u64)
            )));
        }
    }
    Ok(())
}

/// The environment variable a run finds its job's tenant in.
pub const TENANT_ENV: &str = "DROVER_TENANT_ID";
/// The environment variable a run finds its job's user in.
pub const USER_ENV: &str = "DROVER_USER_ID";

/// Builds the guest's WASI context: the spec's environment only (with the job's tenant and user,
/// and the placeholders of its secrets), captured stdio, no network,
/// random bytes bounded and charged to `work`, and the scratch directory if there is one.
/// Trusted runs also get the network (TCP, UDP and name lookups, which wasmtime-wasi leaves off
/// unless asked), but not the host's environment: whatever of it they may see is put in their
/// spec by whoever trusts them.
fn build_wasi(
    spec: &AgentSpec,
    ctx: &RunContext,
    capture: &Capture,
    scratch: Option<&ScratchDir>,
    isolation: Isolation,
    work: &HostWork,
) -> wasmtime::Result<wasmtime_wasi::WasiCtx> {
    let mut wasi = match isolation {
        Isolation::Sandboxed => bounded_wasi(work),
        Isolation::Trusted => WasiCtxBuilder::new(),
    };
    if isolation == Isolation::Trusted {
        wasi.inherit_network()
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(true);
    }
    for (key, value) in &spec.env {
        wasi.env(key, value);
    }
    // Who the run is for: the job's tenant and user, when it has them.
    if let Some(tenant) = ctx.tenant_id() {
        wasi.env(TENANT_ENV, tenant);
    }
    if let Some(user) = ctx.user_id() {
        wasi.env(USER_ENV, user);
    }
    // The agent's secrets, as placeholders the host replaces in its outgoing requests.
    for name in &spec.secrets {
        wasi.env(secrets::env_var(name), secrets::placeholder(name));
    }
    wasi.stdout(capture.stdout()).stderr(capture.stderr());
    if let Some(scratch) = scratch {
        wasi.preopened_dir(&scratch.path, "/scratch", FsPerms::ReadWrite)?;
        wasi.initial_cwd("/scratch");
    }
    Ok(wasi.build())
}

/// Checks an output against the size limit and that it is JSON.
fn accept_output(output: String, limits: &Limits) -> Result<Arc<RawValue>, Failure> {
    if output.len() as u64 > limits.max_output_bytes {
        return Err(Failure::permanent(
            "OutputTooLarge",
            format!(
                "the output is {} bytes; the agent's limit is {} bytes",
                output.len(),
                limits.max_output_bytes
            ),
        ));
    }
    RawValue::from_string(output)
        .map(Arc::from)
        .map_err(|e| Failure::permanent("InvalidOutput", format!("the output is not JSON: {e}")))
}

/// Turns a trap (or a host-side error) into the run's failure.
fn classify(
    error: &wasmtime::Error,
    state: &HostState,
    limits: &Limits,
    engine_max_memory: u64,
    capture: &Capture,
    ctx: &RunContext,
) -> Failure {
    if let Some(reason) = ctx.control().aborted() {
        return reason.failure();
    }
    if let Some(failure) = state.caps.as_ref().and_then(|caps| caps.ended()) {
        return failure;
    }
    if state.timed_out {
        return AbortReason::Timeout.failure();
    }
    if let Some(host_error) = &state.host_error {
        return Failure::permanent(host_error.tag.clone(), host_error.message.clone());
    }
    let trap = error.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::OutOfFuel) {
        return Failure::permanent(
            "OutOfFuel",
            format!(
                "the run used up its fuel ({} units)",
                limits.fuel.unwrap_or(u64::MAX)
            ),
        )
        .with_status(RunStatus::Quota);
    }
    if let Some(what) = state
        .memory
        .denial("the agent", limits.memory_bytes, engine_max_memory)
    {
        return Failure::permanent(
            "MemoryLimit",
            with_stderr(format!("{what}; then: {}", trap::describe(error)), capture),
        );
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Failure::error(
            "Exit",
            format!("the agent exited with code {} instead of returning", exit.0),
        );
    }
    if error.is::<wasmtime::PoolConcurrencyLimitError>() {
        return Failure::error(
            "Capacity",
            format!(
                "no instance slot is free on this host: {}",
                trap::causes(error)
            ),
        );
    }
    if let Some(failure) = host_refusal(error) {
        return failure;
    }
    let (tag, what) = match trap {
        Some(Trap::StackOverflow) => ("StackOverflow", "the agent overflowed its stack"),
        Some(Trap::UnreachableCodeReached) => ("Trap", "the agent aborted (a panic or an abort)"),
        Some(Trap::MemoryOutOfBounds) => (
            "Trap",
            "the agent accessed memory out of bounds (an overflow of the stack a compiler keeps \
             in linear memory also ends this way)",
        ),
        Some(_) => ("Trap", "the agent trapped"),
        None => ("Trap", "the agent failed"),
    };
    Failure::error(
        tag,
        with_stderr(format!("{what}: {}", trap::describe(error)), capture),
    )
}

/// A request the host refused for going past one of the bounds on host calls (see `budget`).
fn host_refusal(error: &wasmtime::Error) -> Option<Failure> {
    let table_full = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        )
    });
    if table_full {
        return Some(Failure::permanent(
            "HandleLimit",
            format!(
                "the agent held more than {MAX_HANDLES} handles (open files, streams, pollables) \
                 at once"
            ),
        ));
    }
    // wasmtime and wasmtime-wasi report these two as plain errors: their text is all there is
    // to tell them by.
    let causes = trap::causes(error);
    let what = if causes.contains("fuel allocated for hostcalls has been exhausted") {
        "the agent passed more data to one host call (or in its result) than its memory limit"
            .to_string()
    } else if causes.contains("requested len") && causes.contains("exceeds limit") {
        format!(
            "the agent asked for more than {} of random bytes in one call",
            human_bytes(MAX_RANDOM_BYTES)
        )
    } else {
        return None;
    };
    Some(Failure::permanent(
        "HostLimit",
        format!("{what} ({causes})"),
    ))
}

/// Appends the last lines the guest wrote to stderr (where a panic's message goes).
fn with_stderr(mut message: String, capture: &Capture) -> String {
    let tail = capture.stderr_tail();
    if !tail.is_empty() {
        message.push_str("; stderr: ");
        message.push_str(&tail.join(" | "));
    }
    message
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs WebAssembly agents isolated and limited.
#[derive(Debug, Clone)]
pub struct WasmSandbox {
    runtime: Arc<WasmRuntime>,
    caps: Arc<Capabilities>,
    inbox: Option<Inbox>,
}

impl WasmSandbox {
    /// The wasm sandbox on `runtime`, with no model aliases and no tools.
    pub fn new(runtime: Arc<WasmRuntime>) -> Self {
        Self {
            runtime,
            caps: Capabilities::none(),
            inbox: None,
        }
    }

    /// Gives its runs the host's models and tools (each run: what its manifest allows).
    pub fn with_capabilities(mut self, caps: Arc<Capabilities>) -> Self {
        self.caps = caps;
        self
    }

    /// Gives its runs their job's messages (`drover:agent/inbox`); without, a run that calls
    /// `receive` or `reply` ends with `InboxUnavailable`.
    pub fn with_inbox(mut self, inbox: Inbox) -> Self {
        self.inbox = Some(inbox);
        self
    }
}

impl Sandbox for WasmSandbox {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn run<'a>(
        &'a self,
        spec: &'a AgentSpec,
        input: Arc<RawValue>,
        ctx: RunContext,
    ) -> BoxFuture<'a, RunOutcome> {
        async move {
            match &spec.code {
                AgentCode::Wasm(agent) => {
                    self.runtime
                        .run(
                            agent.as_ref(),
                            spec,
                            &input,
                            ctx,
                            Isolation::Sandboxed,
                            &self.caps,
                            self.inbox.as_ref(),
                        )
                        .await
                }
                AgentCode::Declarative(agent) => {
                    super::declarative::run(agent, spec, &input, ctx, &self.caps).await
                }
                AgentCode::Native(_) => RunOutcome::from_result(Err(Failure::permanent(
                    "SandboxMismatch",
                    format!(
                        "agent {:?} is native Rust code and can only run in the none sandbox",
                        spec.id
                    ),
                ))),
            }
        }
        .boxed()
    }
}

/// Runs a wasm agent without isolation or limits (for the none sandbox).
pub(crate) async fn run_trusted(
    runtime: &WasmRuntime,
    agent: &dyn CompiledAgent,
    spec: &AgentSpec,
    input: &RawValue,
    ctx: RunContext,
    caps: &Arc<Capabilities>,
    inbox: Option<&Inbox>,
) -> RunOutcome {
    runtime
        .run(agent, spec, input, ctx, Isolation::Trusted, caps, inbox)
        .await
}
