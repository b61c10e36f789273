//! The none sandbox: trusted code, in-process, no isolation and no limits.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::value::RawValue;

use super::caps::Capabilities;
use super::wasm::WasmRuntime;
use super::{Failure, RunContext, RunOutcome, Sandbox, bounded_error};
use crate::inbox::Inbox;
use crate::registry::{AgentCode, AgentSpec};

/// Runs native agents directly on the host's async runtime, and WebAssembly agents without
/// limits, with the host's environment variables and network.
#[derive(Debug, Clone)]
pub struct NoneSandbox {
    wasm: Option<Arc<WasmRuntime>>,
    caps: Arc<Capabilities>,
    inbox: Option<Inbox>,
}

impl Default for NoneSandbox {
    fn default() -> Self {
        Self {
            wasm: None,
            caps: Capabilities::none(),
            inbox: None,
        }
    }
}

impl NoneSandbox {
    /// The none sandbox for native agents.
    pub fn new() -> Self {
        Self::default()
    }

    /// The none sandbox, able to run WebAssembly agents (trusted) on `runtime` too.
    pub fn with_wasm(runtime: Arc<WasmRuntime>) -> Self {
        Self {
            wasm: Some(runtime),
            ..Self::default()
        }
    }

    /// Gives its runs the host's models and tools (each run: what its manifest allows; tools
    /// still run in sandboxes of their own).
    pub fn with_capabilities(mut self, caps: Arc<Capabilities>) -> Self {
        self.caps = caps;
        self
    }

    /// Gives its WebAssembly agents' runs their job's messages (`drover:agent/inbox`).
    pub fn with_inbox(mut self, inbox: Inbox) -> Self {
        self.inbox = Some(inbox);
        self
    }
}

impl Sandbox for NoneSandbox {
    fn name(&self) -> &'static str {
        "none"
    }

    fn holds_to_limits(&self) -> bool {
        false
    }

    fn run<'a>(
        &'a self,
        spec: &'a AgentSpec,
        input: Arc<RawValue>,
        ctx: RunContext,
    ) -> BoxFuture<'a, RunOutcome> {
        async move {
            let agent = match &spec.code {
                AgentCode::Native(code) => match super::native::agent_of(code.as_ref()) {
                    Some(agent) => agent,
                    None => {
                        return RunOutcome::from_result(Err(Failure::permanent(
                            "SandboxMismatch",
                            "the agent's native code was not made for this host's none sandbox",
                        )));
                    }
                },
                AgentCode::Wasm(agent) => {
                    return match &self.wasm {
                        Some(runtime) => {
                            super::wasm::run_trusted(
                                runtime,
                                agent.as_ref(),
                                spec,
                                &input,
                                ctx,
                                &self.caps,
                                self.inbox.as_ref(),
                            )
                            .await
                        }
                        None => RunOutcome::from_result(Err(Failure::permanent(
                            "SandboxMismatch",
                            "this none sandbox has no WebAssembly runtime",
                        ))),
                    };
                }
                AgentCode::Declarative(agent) => {
                    return super::declarative::run(agent, spec, &input, ctx, &self.caps).await;
                }
            };
            let input = match serde_json::from_str(input.get()) {
                Ok(value) => value,
                Err(e) => {
                    return RunOutcome::from_result(Err(Failure::permanent(
                        "InvalidInput",
                        format!("input is not JSON: {e}"),
                    )));
                }
            };
            // A panic in trusted code fails the run, not the host.
            let result = std::panic::AssertUnwindSafe(agent.run(input, ctx))
                .catch_unwind()
                .await;
            let result = match result {
                Ok(Ok(output)) => serde_json::value::to_raw_value(&output)
                    .map(Arc::from)
                    .map_err(|e| Failure::permanent("InvalidOutput", e.to_string())),
                Ok(Err(error)) => Err(Failure {
                    status: crate::store::RunStatus::Error,
                    error: bounded_error(error.tag, error.message),
                    retry: true,
                }),
                Err(panic) => Err(Failure::error("Panic", panic_message(&panic))),
            };
            RunOutcome::from_result(result)
        }
        .boxed()
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("the agent panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("the agent panicked: {s}")
    } else {
        "the agent panicked".to_string()
    }
}
