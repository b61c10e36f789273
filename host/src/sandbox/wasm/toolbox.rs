//! Tools: components of the `toolbox` world. A toolbox is compiled and linked once, asked which
//! tools it offers, and instantiated afresh for every call, in a store of the call's own held to
//! the tool's limits (fuel, memory, wall clock, output size).
//!
//! A call never fails the caller: whatever goes wrong — input that does not match the tool's
//! schema, a trap, a limit, a tool's own failure, output that is not JSON or does not match the
//! tool's output schema, the calling run being aborted — comes back as a [`ToolFailure`] with a
//! tag ([`tags`]) and a bounded message.
//!
//! A tool runs for a run but not as one: it has no timeline. Its stdout, stderr, `log` and
//! `emit` calls are accepted and dropped (the calling run records the call and its result), the
//! last lines of its stderr go into the message of a trap, and `stop-requested` is `false`.
//! Its HTTP requests are the exception: each is an `http_request` event of the calling run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Trap;

use super::budget::{self, HostWork};
use super::http::HttpState;
use super::state::{EventGate, HostState, MemoryMeter};
use super::stdio::Capture;
use super::{
    DESCRIBE_FUEL, DESCRIBE_MEMORY, DESCRIBE_TIMEOUT, WasmError, WasmRuntime, bounded_table,
    bounded_wasi, human_bytes, trap, with_stderr,
};
use crate::outbound::Outbound;
use crate::registry::{CompiledToolbox, ToolDescription, ToolSpec};
use crate::sandbox::{Control, RunContext, bounded_error};
use crate::secrets::Secrets;

/// How a tool call's HTTP requests leave the host.
pub struct ToolNetwork<'a> {
    /// The host's outbound HTTP (the operator's list and limits).
    pub outbound: &'a Outbound,
    /// The host's secrets.
    pub secrets: &'a Secrets,
    /// The secrets this call's requests may carry: those the tool's manifest lists that the
    /// calling agent may use too.
    pub granted: Vec<String>,
    /// Where its requests are recorded: the calling run, if any.
    pub events: Option<&'a RunContext>,
}

/// Bindings for the `toolbox` world of `drover:agent@0.2.0`. It imports the same `host`
/// interface as agents, so the runtime's one linker serves both.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "toolbox",
        with: {
            "drover:agent/types": super::super::bindings::drover::agent::types,
            "drover:agent/host": super::super::bindings::drover::agent::host,
        },
        exports: { default: async },
    });
}

/// The failure tags the host gives tool calls (besides the tool's own).
pub mod tags {
    /// The tool trapped: a panic, an abort, an out-of-bounds access, a stack overflow.
    pub const TRAPPED: &str = "ToolTrapped";
    /// The tool went past its fuel, its memory, or its output size.
    pub const QUOTA: &str = "ToolQuota";
    /// The tool went past its wall-clock limit.
    pub const TIMEOUT: &str = "ToolTimeout";
    /// The input is not JSON, is too large, or does not match the tool's input schema.
    pub const INVALID_INPUT: &str = "InvalidInput";
    /// The output is not JSON or does not match the tool's output schema.
    pub const INVALID_OUTPUT: &str = "InvalidOutput";
    /// The calling run was aborted during the call.
    pub const CANCELLED: &str = "Cancelled";
    /// The host could not run the tool now (no free instance slot, say).
    pub const UNAVAILABLE: &str = "ToolUnavailable";
}

/// Largest input the host passes to a tool, in bytes.
pub const MAX_TOOL_INPUT_BYTES: usize = 1 << 20;
/// Most tools one component may offer.
pub const MAX_TOOLS_PER_COMPONENT: usize = 64;
/// Longest tool description, in bytes.
const MAX_TOOL_DESCRIPTION: usize = 4 << 10;
/// Longest input or output schema of a tool, in bytes.
const MAX_TOOL_SCHEMA: usize = 64 << 10;
/// Longest tool name, in bytes (names are checked further by the registry).
const MAX_TOOL_NAME: usize = 64;
/// Log budget of a call: its output is dropped, but stderr lines are kept for trap messages.
const TOOL_LOG_BYTES: u64 = 64 << 10;

/// A loaded, linked toolbox component, ready to be instantiated per call.
pub struct WasmToolbox {
    pre: bindings::ToolboxPre<HostState>,
    digest: String,
    tools: Vec<ToolDescription>,
}

impl CompiledToolbox for WasmToolbox {
    fn digest(&self) -> &str {
        &self.digest
    }

    fn tools(&self) -> &[ToolDescription] {
        &self.tools
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl std::fmt::Debug for WasmToolbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmToolbox")
            .field("digest", &self.digest)
            .field("tools", &self.tools)
            .finish()
    }
}

/// Why a tool call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolFailure {
    /// Machine-readable class: the tool's own tag, or one of [`tags`].
    pub tag: String,
    /// Human-readable explanation (bounded like a run's error message).
    pub message: String,
    /// Whether calling again could succeed.
    pub retryable: bool,
}

impl ToolFailure {
    /// A failure with a bounded tag and message.
    pub fn new(tag: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        let bounded = bounded_error(tag, message);
        Self {
            tag: bounded.tag,
            message: bounded.message,
            retryable,
        }
    }
}

impl std::fmt::Display for ToolFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.tag, self.message)
    }
}

impl std::error::Error for ToolFailure {}

/// What one tool call came to.
#[derive(Debug, Clone)]
pub struct ToolOutcome {
    /// The tool's JSON output, or why there is none.
    pub result: Result<String, ToolFailure>,
    /// Wall-clock time of the call, checks included.
    pub duration: Duration,
    /// Fuel the call used (none: it did not start, or fuel is not metered).
    pub fuel_used: Option<u64>,
    /// Most linear memory the instance held, in bytes (none: it did not start).
    pub peak_memory: Option<u64>,
}

impl ToolOutcome {
    fn refused(started: Instant, failure: ToolFailure) -> Self {
        Self {
            result: Err(failure),
            duration: started.elapsed(),
            fuel_used: None,
            peak_memory: None,
        }
    }
}

/// How a call ended before the tool returned.
enum Interrupted {
    Cancelled(crate::sandbox::AbortReason),
    TimedOut,
}

impl WasmRuntime {
    /// Loads a toolbox component file: compile (or take it from the cache), link, and ask it
    /// which tools it offers.
    pub async fn load_toolbox_file(&self, path: &Path) -> Result<WasmToolbox, WasmError> {
        self.load_toolbox_bytes(super::read_component(path).await?)
            .await
    }

    /// Loads a toolbox component from its bytes.
    pub async fn load_toolbox_bytes(&self, bytes: Vec<u8>) -> Result<WasmToolbox, WasmError> {
        let (digest, _component, pre) = self.compile_and_link(bytes).await?;
        let pre = bindings::ToolboxPre::new(pre).map_err(|e| {
            WasmError::Link(format!(
                "not a toolbox (no drover:agent/tool-provider): {e:#}"
            ))
        })?;
        let tools = self.describe_toolbox(&pre).await?;
        Ok(WasmToolbox { pre, digest, tools })
    }

    async fn describe_toolbox(
        &self,
        pre: &bindings::ToolboxPre<HostState>,
    ) -> Result<Vec<ToolDescription>, WasmError> {
        let describe_err = |e: wasmtime::Error| {
            let causes = trap::causes(&e);
            if causes.contains("fuel allocated for hostcalls has been exhausted") {
                WasmError::Describe(format!(
                    "the toolbox described itself in more than {} ({causes})",
                    human_bytes(DESCRIBE_RESULT_BYTES as u64)
                ))
            } else {
                WasmError::Describe(format!("{e:#}"))
            }
        };
        let control = Control::new();
        let work = HostWork::default();
        let state = tool_state(
            work,
            Capture::new(None, 0),
            Some(DESCRIBE_MEMORY),
            Some(Instant::now() + DESCRIBE_TIMEOUT),
            control,
            HttpState::none(),
        );
        let mut store = self
            .store(state, Some(DESCRIBE_FUEL), DESCRIBE_RESULT_BYTES)
            .map_err(describe_err)?;
        let call = async {
            let toolbox = pre.instantiate_async(&mut store).await?;
            toolbox
                .drover_agent_tool_provider()
                .call_describe(&mut store)
                .await
        };
        let infos = tokio::time::timeout(DESCRIBE_TIMEOUT, call)
            .await
            .map_err(|_| WasmError::Describe("timed out".into()))?
            .map_err(describe_err)?;
        if infos.is_empty() {
            return Err(WasmError::Describe("the toolbox offers no tools".into()));
        }
        if infos.len() > MAX_TOOLS_PER_COMPONENT {
            return Err(WasmError::Describe(format!(
                "the toolbox offers {} tools; at most {MAX_TOOLS_PER_COMPONENT} are accepted",
                infos.len()
            )));
        }
        let schema = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        let mut tools: Vec<ToolDescription> = Vec::with_capacity(infos.len());
        for info in infos {
            let fields = [
                ("name", info.name.len(), MAX_TOOL_NAME),
                ("description", info.description.len(), MAX_TOOL_DESCRIPTION),
                (
                    "input schema",
                    info.input_schema.as_ref().map_or(0, String::len),
                    MAX_TOOL_SCHEMA,
                ),
                (
                    "output schema",
                    info.output_schema.as_ref().map_or(0, String::len),
                    MAX_TOOL_SCHEMA,
                ),
            ];
            for (field, len, max) in fields {
                if len > max {
                    return Err(WasmError::Describe(format!(
                        "the {field} of a tool is {len} bytes; at most {} is accepted",
                        human_bytes(max as u64)
                    )));
                }
            }
            if tools.iter().any(|t| t.name == info.name) {
                return Err(WasmError::Describe(format!(
                    "the toolbox offers tool {:?} twice",
                    info.name
                )));
            }
            tools.push(ToolDescription {
                name: info.name,
                description: info.description,
                input_schema: schema(info.input_schema),
                output_schema: schema(info.output_schema),
            });
        }
        Ok(tools)
    }

    /// One call of `tool` with JSON `input`, in a fresh instance of the tool's component, held
    /// to `tool.limits` (fuel, memory, timeout, output size). The input is checked (JSON, at
    /// most [`MAX_TOOL_INPUT_BYTES`], the tool's input schema) before anything is instantiated;
    /// the output is checked after (its size, JSON, the tool's output schema). Ends early, with
    /// tag `Cancelled`, if `control` is aborted. Never fails otherwise than with a
    /// [`ToolFailure`] in the outcome.
    ///
    /// The tool gets no network: see [`WasmRuntime::call_tool_under`].
    pub async fn call_tool(
        &self,
        tool: &ToolSpec,
        input: &str,
        control: &Arc<Control>,
    ) -> ToolOutcome {
        self.call_tool_inner(tool, input, control, None).await
    }

    /// [`WasmRuntime::call_tool`], with the tool's HTTP requests sent as `network` says: under
    /// the tool's own `allowed-outbound-hosts`, carrying the secrets it is granted, each
    /// recorded as an `http_request` event of the calling run.
    pub async fn call_tool_under(
        &self,
        tool: &ToolSpec,
        input: &str,
        control: &Arc<Control>,
        network: ToolNetwork<'_>,
    ) -> ToolOutcome {
        self.call_tool_inner(tool, input, control, Some(network))
            .await
    }

    async fn call_tool_inner(
        &self,
        tool: &ToolSpec,
        input: &str,
        control: &Arc<Control>,
        network: Option<ToolNetwork<'_>>,
    ) -> ToolOutcome {
        let started = Instant::now();
        let Some(code) = tool.code.as_any().downcast_ref::<WasmToolbox>() else {
            return ToolOutcome::refused(
                started,
                ToolFailure::new(
                    tags::UNAVAILABLE,
                    "the tool's component was not compiled by this host's WebAssembly runtime",
                    false,
                ),
            );
        };
        if let Some(reason) = control.aborted() {
            return ToolOutcome::refused(started, cancelled(reason));
        }
        if let Err(failure) = check_input(tool, input) {
            return ToolOutcome::refused(started, failure);
        }
        let limits = &tool.limits;
        let capture = Capture::new(None, TOOL_LOG_BYTES);
        let deadline = limits.timeout.map(|t| started + t);
        let state = tool_state(
            HostWork::default(),
            capture.clone(),
            Some(limits.memory_bytes).filter(|m| *m != u64::MAX),
            deadline,
            Arc::clone(control),
            match network {
                None => HttpState::none(),
                Some(network) => HttpState::new(
                    Some(
                        network
                            .outbound
                            .for_run(tool.outbound.clone(), &limits.http),
                    ),
                    network.events.cloned(),
                    Some(Arc::clone(control)),
                )
                .with_secrets(network.secrets.clone(), &network.granted)
                .for_tool(&tool.name),
            },
        );
        // One call may copy at most the output limit (and a little more for the result's
        // framing) into the host: an output over it ends the call before it is copied.
        let hostcall_bytes = budget::hostcall_fuel(limits.memory_bytes).min(
            usize::try_from(limits.max_output_bytes.saturating_add(64 << 10)).unwrap_or(usize::MAX),
        );
        let mut store = match self.store(state, limits.fuel, hostcall_bytes.max(input.len())) {
            Ok(store) => store,
            Err(e) => {
                return ToolOutcome::refused(
                    started,
                    ToolFailure::new(tags::UNAVAILABLE, format!("{e:#}"), true),
                );
            }
        };

        let input = input.to_string();
        let result = {
            let call = async {
                let toolbox = code.pre.instantiate_async(&mut store).await?;
                toolbox
                    .drover_agent_tool_provider()
                    .call_call(&mut store, &tool.name, &input)
                    .await
            };
            // Epochs interrupt a tool that computes past its deadline or its run's abort; this
            // catches one that waits.
            let timed = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline.into(), call)
                        .await
                        .map_err(|_| Interrupted::TimedOut),
                    None => Ok(call.await),
                }
            };
            tokio::select! {
                biased;
                reason = control.abort_requested() => Err(Interrupted::Cancelled(reason)),
                result = timed => result,
            }
        };

        let fuel_used = store.get_fuel().ok().map(|left| {
            limits
                .fuel
                .unwrap_or(u64::MAX)
                .saturating_sub(left)
                .saturating_add(store.data().work.charged())
        });
        let state = store.data();
        let result = match result {
            Err(Interrupted::Cancelled(reason)) => Err(cancelled(reason)),
            Err(Interrupted::TimedOut) => Err(timeout(tool)),
            Ok(Ok(Ok(output))) => check_output(tool, output),
            // A language runtime (JavaScript's, Python's) turns a refused allocation into an
            // error of its own and returns it: the limit is still what ended the call.
            Ok(Ok(Err(failure))) => Err(
                match state
                    .memory
                    .denial(&tool.name, limits.memory_bytes, self.max_memory_bytes)
                {
                    Some(what) => ToolFailure::new(
                        tags::QUOTA,
                        format!(
                            "{what}; the tool then failed with {}: {}",
                            failure.tag, failure.message
                        ),
                        false,
                    ),
                    None => ToolFailure::new(failure.tag, failure.message, failure.retryable),
                },
            ),
            Ok(Err(error)) => Err(classify(
                &error,
                tool,
                state,
                control,
                &capture,
                self.max_memory_bytes,
            )),
        };
        let peak_memory = Some(state.memory.peak);
        ToolOutcome {
            result,
            duration: started.elapsed(),
            fuel_used,
            peak_memory,
        }
    }
}

/// Most bytes the host copies out of what a toolbox's `describe` returns.
const DESCRIBE_RESULT_BYTES: usize = 8 << 20;

/// The store data of one tool call (or a toolbox's `describe`).
fn tool_state(
    work: HostWork,
    capture: Capture,
    memory: Option<u64>,
    deadline: Option<Instant>,
    control: Arc<Control>,
    http: HttpState,
) -> HostState {
    let mut wasi = bounded_wasi(&work);
    wasi.stdout(capture.stdout()).stderr(capture.stderr());
    HostState {
        wasi: wasi.build(),
        table: bounded_table(),
        ctx: None,
        memory: MemoryMeter::with_limit(memory),
        events: EventGate::open(),
        logs: capture,
        deadline,
        timed_out: false,
        host_error: None,
        work,
        scratch_quota: None,
        tool_control: Some(control),
        caps: None,
        children: None,
        http,
        inbox: None,
    }
}

/// Checks a call's input: its size, that it is JSON, and the tool's input schema.
fn check_input(tool: &ToolSpec, input: &str) -> Result<(), ToolFailure> {
    let invalid = |message: String| ToolFailure::new(tags::INVALID_INPUT, message, false);
    if input.len() > MAX_TOOL_INPUT_BYTES {
        return Err(invalid(format!(
            "the input of {} is {} bytes; at most {} is accepted",
            tool.name,
            input.len(),
            human_bytes(MAX_TOOL_INPUT_BYTES as u64)
        )));
    }
    let value: serde_json::Value = serde_json::from_str(input)
        .map_err(|e| invalid(format!("the input of {} is not JSON: {e}", tool.name)))?;
    if let Some(schema) = &tool.input_schema {
        schema.validate(&value).map_err(|problems| {
            invalid(format!(
                "the input does not match the input schema of {}: {problems}",
                tool.name
            ))
        })?;
    }
    Ok(())
}

/// Checks a call's output: its size, that it is JSON, and the tool's output schema.
fn check_output(tool: &ToolSpec, output: String) -> Result<String, ToolFailure> {
    if output.len() as u64 > tool.limits.max_output_bytes {
        return Err(output_too_large(tool, Some(output.len())));
    }
    let invalid = |message: String| ToolFailure::new(tags::INVALID_OUTPUT, message, false);
    let value: serde_json::Value = serde_json::from_str(&output)
        .map_err(|e| invalid(format!("the output of {} is not JSON: {e}", tool.name)))?;
    if let Some(schema) = &tool.output_schema {
        schema.validate(&value).map_err(|problems| {
            invalid(format!(
                "the output does not match the output schema of {}: {problems}",
                tool.name
            ))
        })?;
    }
    Ok(output)
}

fn output_too_large(tool: &ToolSpec, len: Option<usize>) -> ToolFailure {
    let limit = human_bytes(tool.limits.max_output_bytes);
    let message = match len {
        Some(len) => format!(
            "the output of {} is {len} bytes; its limit is {limit} (max-output-bytes)",
            tool.name
        ),
        None => format!(
            "{} passed the host more than its output limit of {limit} at once (max-output-bytes)",
            tool.name
        ),
    };
    ToolFailure::new(tags::QUOTA, message, false)
}

fn cancelled(reason: crate::sandbox::AbortReason) -> ToolFailure {
    ToolFailure::new(
        tags::CANCELLED,
        format!(
            "the calling run was aborted ({})",
            reason.failure().error.tag
        ),
        false,
    )
}

fn timeout(tool: &ToolSpec) -> ToolFailure {
    let limit = tool
        .limits
        .timeout
        .map_or_else(|| "none".to_string(), |t| format!("{} ms", t.as_millis()));
    ToolFailure::new(
        tags::TIMEOUT,
        format!(
            "{} ran past its wall-clock limit of {limit} (timeout-ms)",
            tool.name
        ),
        true,
    )
}

/// Turns a trap (or a host-side error) of a tool call into its failure.
fn classify(
    error: &wasmtime::Error,
    tool: &ToolSpec,
    state: &HostState,
    control: &Arc<Control>,
    capture: &Capture,
    engine_max_memory: u64,
) -> ToolFailure {
    if let Some(reason) = control.aborted() {
        return cancelled(reason);
    }
    if state.timed_out {
        return timeout(tool);
    }
    let name = &tool.name;
    let trap = error.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::OutOfFuel) {
        return ToolFailure::new(
            tags::QUOTA,
            format!(
                "{name} used up its fuel ({} units; fuel)",
                tool.limits.fuel.unwrap_or(u64::MAX)
            ),
            false,
        );
    }
    if let Some(what) = state
        .memory
        .denial(name, tool.limits.memory_bytes, engine_max_memory)
    {
        return ToolFailure::new(
            tags::QUOTA,
            with_stderr(format!("{what}; then: {}", trap::describe(error)), capture),
            false,
        );
    }
    let causes = trap::causes(error);
    if causes.contains("fuel allocated for hostcalls has been exhausted") {
        return output_too_large(tool, None);
    }
    if error.is::<wasmtime::PoolConcurrencyLimitError>() {
        return ToolFailure::new(
            tags::UNAVAILABLE,
            format!("no instance slot is free on this host: {causes}"),
            true,
        );
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return ToolFailure::new(
            tags::TRAPPED,
            format!("{name} exited with code {} instead of returning", exit.0),
            false,
        );
    }
    let what = match trap {
        Some(Trap::StackOverflow) => "overflowed its stack",
        Some(Trap::UnreachableCodeReached) => "aborted (a panic or an abort)",
        Some(Trap::MemoryOutOfBounds) => "accessed memory out of bounds",
        Some(_) => "trapped",
        None => "failed",
    };
    ToolFailure::new(
        tags::TRAPPED,
        with_stderr(format!("{name} {what}: {}", trap::describe(error)), capture),
        false,
    )
}
