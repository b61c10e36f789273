//! Native agents: trusted Rust code that runs in-process, in the none sandbox.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::queue::ErrorInfo;
use crate::registry::{AgentSpec, NativeCode};
use crate::sandbox::RunContext;

/// An agent written in Rust and linked into the host.
pub trait NativeAgent: Send + Sync + 'static {
    /// Runs the agent on `input`. `ctx` emits events, heartbeats, and tells a long-lived agent
    /// when to stop.
    fn run(&self, input: Value, ctx: RunContext) -> BoxFuture<'static, Result<Value, ErrorInfo>>;
}

/// A native agent from an async closure.
///
/// ```
/// use drover_host::registry::AgentSpec;
/// use drover_host::sandbox::native_agent;
/// use serde_json::json;
///
/// let echo = AgentSpec::native(
///     "echo",
///     native_agent(|input, _ctx| async move {
///         Ok(json!({ "received": input["n"], "ok": true }))
///     }),
/// );
/// assert_eq!(echo.id, "echo");
/// ```
pub fn native_agent<F, Fut>(f: F) -> impl NativeAgent
where
    F: Fn(Value, RunContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, ErrorInfo>> + Send + 'static,
{
    FnAgent(f)
}

struct FnAgent<F>(F);

impl<F, Fut> NativeAgent for FnAgent<F>
where
    F: Fn(Value, RunContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, ErrorInfo>> + Send + 'static,
{
    fn run(&self, input: Value, ctx: RunContext) -> BoxFuture<'static, Result<Value, ErrorInfo>> {
        Box::pin((self.0)(input, ctx))
    }
}

/// A native agent as the registry holds it.
struct Native(Arc<dyn NativeAgent>);

impl NativeCode for Native {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl AgentSpec {
    /// A spec for a native agent, with default limits for a job.
    pub fn native(id: impl Into<String>, agent: impl NativeAgent) -> Self {
        Self::from_native(id, Arc::new(Native(Arc::new(agent))))
    }
}

/// The Rust agent behind native code, if this kind of sandbox made it.
pub(super) fn agent_of(code: &dyn NativeCode) -> Option<&Arc<dyn NativeAgent>> {
    code.as_any()
        .downcast_ref::<Native>()
        .map(|native| &native.0)
}
