//! What a run may ask of the host beyond its own sandbox: model calls (through the model
//! gateway) and tool calls (each in a fresh sandbox of the tool's own).
//!
//! [`Capabilities`] is the host's part (the gateway, the tools, and where tools run); a
//! [`RunCapabilities`] is one run's: what its manifest allows (its model aliases, its tools, its
//! `[quota]`), what it has used so far, and the events it records. Every model and tool call of
//! a run — from a guest's `drover:agent/model` and `drover:agent/tools` imports, or from the
//! built-in loop of a declarative agent — goes through one `RunCapabilities`, so the same
//! policy, the same budgets and the same events apply to both, and each call is one recorded
//! request and answer.
//!
//! Budgets are the host's: a call past `max-turns`, `max-tool-calls`, `max-tokens` or
//! `max-cost-usd` ends the run with status `quota` (tag `MaxTurns`, `MaxToolCalls`, `MaxTokens`,
//! `MaxCost`), whatever the agent's code does about it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::wasm::{ToolNetwork, ToolOutcome, WasmRuntime};
use super::{Failure, RunContext};
use crate::children::{Caller, Children, RunChildren, TreeBudget, TreeBudgetError};
use crate::model::{ChatRequest, ChatResponse, Message, ModelGateway};
use crate::outbound::Outbound;
use crate::registry::{AgentSpec, Quota, ToolRegistry, ToolSpec};
use crate::secrets::Secrets;
use crate::store::{RunStatus, Usage};

/// Longest text of one message, argument list or tool result kept in an event, in bytes.
pub const MAX_EVENT_TEXT_BYTES: usize = 8 << 10;

/// The host's capabilities: its model gateway, its tools, and the runtime tool calls run on.
pub struct Capabilities {
    models: Arc<ModelGateway>,
    tools: Option<Arc<dyn ToolRegistry>>,
    tool_runtime: Option<Arc<WasmRuntime>>,
    /// Tool calls and failures so far, by agent and tool.
    tool_counts: Mutex<BTreeMap<(String, String), (u64, u64)>>,
    /// Outbound HTTP of agents and tools.
    outbound: Outbound,
    /// The secrets their requests may carry.
    secrets: Secrets,
    /// Where agents' children go (none: agents cannot spawn).
    children: std::sync::OnceLock<Children>,
}

/// Tool calls of one agent to one tool, since the host started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolMetrics {
    /// The calling agent.
    pub agent_id: String,
    /// The tool.
    pub tool: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed (the tool's failure, a limit, a refusal).
    pub failures: u64,
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capabilities")
            .field("models", &self.models.aliases())
            .field("tools", &self.tools.is_some())
            .finish()
    }
}

impl Capabilities {
    /// No model aliases and no tools.
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            models: Arc::new(ModelGateway::empty()),
            tools: None,
            tool_runtime: None,
            tool_counts: Mutex::default(),
            outbound: Outbound::default(),
            secrets: Secrets::empty(),
            children: std::sync::OnceLock::new(),
        })
    }

    /// Models from `models`; tools from `tools`, run on `runtime`.
    /// Outbound HTTP has the default `[outbound]` settings: see [`Capabilities::with_outbound`].
    pub fn new(
        models: Arc<ModelGateway>,
        tools: Option<(Arc<dyn ToolRegistry>, Arc<WasmRuntime>)>,
    ) -> Arc<Self> {
        Self::with_outbound(models, tools, Outbound::default(), Secrets::empty())
    }

    /// [`Capabilities::new`], with agents' and tools' HTTP requests sent by `outbound`, carrying
    /// the `secrets` their manifests grant them.
    pub fn with_outbound(
        models: Arc<ModelGateway>,
        tools: Option<(Arc<dyn ToolRegistry>, Arc<WasmRuntime>)>,
        outbound: Outbound,
        secrets: Secrets,
    ) -> Arc<Self> {
        let (tools, tool_runtime) = tools.unzip();
        Arc::new(Self {
            models,
            tools,
            tool_runtime,
            tool_counts: Mutex::default(),
            outbound,
            secrets,
            children: std::sync::OnceLock::new(),
        })
    }

    /// Lets agents spawn children through `children` (the first call counts; later ones are
    /// ignored). Without it, every `drover:agent/agents` call fails with `ChildrenUnavailable`.
    pub fn enable_children(&self, children: Children) {
        let _ = self.children.set(children);
    }

    /// One run's children, for a run of `spec`, if this host lets agents spawn.
    pub fn children_for_run(&self, spec: &AgentSpec, ctx: &RunContext) -> Option<RunChildren> {
        self.children
            .get()
            .map(|children| children.for_run(spec.children.clone(), spec.quota, caller(spec, ctx)))
    }

    /// The host's outbound HTTP.
    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// The host's secrets.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Tool calls so far, by agent and tool.
    pub fn tool_metrics(&self) -> Vec<ToolMetrics> {
        self.tool_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((agent_id, tool), (calls, failures))| ToolMetrics {
                agent_id: agent_id.clone(),
                tool: tool.clone(),
                calls: *calls,
                failures: *failures,
            })
            .collect()
    }

    fn count_tool_call(&self, agent_id: &str, tool: &str, failed: bool) {
        let mut counts = self
            .tool_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = counts
            .entry((agent_id.to_string(), tool.to_string()))
            .or_default();
        entry.0 += 1;
        entry.1 += u64::from(failed);
    }

    /// The model gateway.
    pub fn models(&self) -> &Arc<ModelGateway> {
        &self.models
    }

    /// The problems with what `spec` asks for: model aliases this host does not configure, and
    /// tools it does not have.
    pub fn problems_of(&self, spec: &AgentSpec) -> Vec<String> {
        let aliases = self.models.aliases();
        let tools: Vec<String> = self
            .tools
            .as_ref()
            .map(|t| t.list_tools().iter().map(|t| t.name.clone()).collect())
            .unwrap_or_default();
        spec.check_capabilities(&aliases, &tools)
    }

    /// One run's capabilities, for a run of `spec`.
    pub fn for_run(self: &Arc<Self>, spec: &AgentSpec, ctx: RunContext) -> RunCapabilities {
        RunCapabilities {
            caps: Arc::clone(self),
            agent_id: spec.id.clone(),
            models: spec.models.clone(),
            tools: spec.tools.clone(),
            secrets: spec.secrets.clone(),
            quota: spec.quota,
            tree: self.children.get().and_then(|children| {
                children.tree_budget(
                    &spec.children,
                    spec.quota,
                    &caller(spec, &ctx),
                    ctx.root_job_id(),
                )
            }),
            ctx,
            state: Mutex::new(RunState::default()),
        }
    }
}

fn caller(spec: &AgentSpec, ctx: &RunContext) -> Caller {
    Caller {
        agent_id: spec.id.clone(),
        job_id: ctx.job_id().to_string(),
        run_id: ctx.run_id().to_string(),
    }
}

/// Why a model or tool call did not return an answer.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The call failed; the agent hears why and carries on (the model is told of a failed tool
    /// call, say).
    Failed {
        /// Machine-readable class.
        tag: String,
        /// What happened.
        message: String,
        /// Whether trying again could succeed.
        retryable: bool,
    },
    /// The run ends: a budget is spent, or the run was cut short.
    End(Failure),
}

impl CallError {
    fn failed(tag: &str, message: impl Into<String>) -> Self {
        CallError::Failed {
            tag: tag.to_string(),
            message: message.into(),
            retryable: false,
        }
    }
}

/// What a run has used, and what its events have shown of its conversation.
#[derive(Debug, Default)]
struct RunState {
    usage: Usage,
    /// Whether the run made any model or tool call.
    used: bool,
    /// Messages of the conversation already recorded in a `model_request` event.
    recorded_messages: usize,
    /// Why a call ended the run, once one has.
    ended: Option<Failure>,
}

/// One run's model and tool calls: its policy, its budgets, its usage and its events.
pub struct RunCapabilities {
    caps: Arc<Capabilities>,
    agent_id: String,
    models: Vec<String>,
    tools: Vec<String>,
    /// The host secrets the agent may use (a tool's requests carry only those of them its own
    /// manifest lists).
    secrets: Vec<String>,
    quota: Quota,
    /// The account of the tree the run is in, if its root keeps one: its calls count there as
    /// well as against `quota`.
    tree: Option<TreeBudget>,
    ctx: RunContext,
    state: Mutex<RunState>,
}

impl std::fmt::Debug for RunCapabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCapabilities")
            .field("agent_id", &self.agent_id)
            .field("models", &self.models)
            .field("tools", &self.tools)
            .finish()
    }
}

/// One tool as an agent sees it.
#[derive(Debug, Clone)]
pub struct ToolView {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema of its output.
    pub output_schema: Option<serde_json::Value>,
}

fn quota_end(tag: &str, message: String) -> CallError {
    CallError::End(Failure::permanent(tag, message).with_status(RunStatus::Quota))
}

/// A tree budget's refusal: the run ends as if its own budget were spent; a database failure
/// is one the run may try again.
fn tree_error(error: TreeBudgetError) -> CallError {
    match &error {
        TreeBudgetError::Exceeded { exceeded, .. } => quota_end(exceeded.tag(), error.to_string()),
        TreeBudgetError::Db(e) => {
            tracing::warn!(error = %e, "a tree budget could not be checked");
            CallError::Failed {
                tag: "Unavailable".into(),
                message: "the host could not check the budget of the run's tree; try again".into(),
                retryable: true,
            }
        }
    }
}

impl RunCapabilities {
    fn state(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that a call ended the run (a sandbox records this as the run's outcome).
    pub fn end(&self, failure: Failure) {
        self.state().ended.get_or_insert(failure);
    }

    /// Why a call ended the run, if one did.
    pub fn ended(&self) -> Option<Failure> {
        self.state().ended.clone()
    }

    /// What the run has used so far (none: no model or tool call).
    pub fn usage(&self) -> Option<Usage> {
        let state = self.state();
        state.used.then_some(state.usage)
    }

    /// The model aliases the run may use that this host configures.
    pub fn aliases(&self) -> Vec<String> {
        self.models
            .iter()
            .filter(|alias| self.caps.models.has(alias))
            .cloned()
            .collect()
    }

    /// The tools the run may call that this host has.
    pub fn tools(&self) -> Vec<ToolView> {
        self.tools
            .iter()
            .filter_map(|name| self.tool(name))
            .map(|tool| ToolView {
                name: tool.name.clone(),
                description: tool.description.clone(),
                input_schema: tool.input_schema_json.clone(),
                output_schema: tool.output_schema.as_ref().map(|s| s.source().clone()),
            })
            .collect()
    }

    fn tool(&self, name: &str) -> Option<Arc<ToolSpec>> {
        self.caps.tools.as_ref()?.get_tool(name)
    }

    /// Sends `request` to the model behind its alias, within the run's budgets, and records
    /// the request and the answer. While it waits, the run gives its CPU slot back.
    pub async fn complete(&self, mut request: ChatRequest) -> Result<ChatResponse, CallError> {
        let alias = request.model.clone();
        if !self.models.contains(&alias) {
            return Err(CallError::failed(
                "ModelNotAllowed",
                format!(
                    "model alias {alias:?} is not one of this agent's (its manifest lists {:?})",
                    self.models
                ),
            ));
        }
        if !self.caps.models.has(&alias) {
            return Err(CallError::Failed {
                tag: "ModelUnavailable".into(),
                message: format!("model alias {alias:?} is not configured on this host"),
                retryable: true,
            });
        }
        if let Some(tree) = &self.tree {
            // The tree's turn is reserved first, atomically; the run's own budget is checked
            // next (a run refused there ends, and the turn it reserved is never needed).
            if let Some(left) = tree.reserve(1, 0).await.map_err(tree_error)? {
                let left = u32::try_from(left).unwrap_or(u32::MAX);
                request.max_output_tokens =
                    Some(request.max_output_tokens.map_or(left, |m| m.min(left)));
            }
        }
        let (turn, new_messages, first_message) = {
            let mut state = self.state();
            let usage = state.usage;
            if let Some(max) = self.quota.max_turns
                && usage.turns >= max
            {
                return Err(quota_end(
                    "MaxTurns",
                    format!("the run used its {max} model calls (max-turns)"),
                ));
            }
            let tokens = usage.input_tokens + usage.output_tokens;
            if let Some(max) = self.quota.max_tokens {
                if tokens >= max {
                    return Err(quota_end(
                        "MaxTokens",
                        format!("the run used {tokens} of its {max} tokens (max-tokens)"),
                    ));
                }
                // Never ask for more output than the budget has left.
                let left = u32::try_from(max - tokens).unwrap_or(u32::MAX);
                request.max_output_tokens =
                    Some(request.max_output_tokens.map_or(left, |m| m.min(left)));
            }
            if let Some(max) = self.quota.max_cost_usd
                && usage.cost_usd >= max
            {
                return Err(quota_end(
                    "MaxCost",
                    format!(
                        "the run spent ${:.6} of its ${max} (max-cost-usd)",
                        usage.cost_usd
                    ),
                ));
            }
            state.used = true;
            state.usage.turns += 1;
            // A conversation shorter than the one recorded is a new one, recorded whole.
            let first = match state.recorded_messages <= request.messages.len() {
                true => state.recorded_messages,
                false => 0,
            };
            state.recorded_messages = request.messages.len();
            (
                state.usage.turns,
                request.messages[first..]
                    .iter()
                    .map(bounded_message)
                    .collect::<Vec<_>>(),
                first,
            )
        };
        self.record(
            "model_request",
            &json!({
                "alias": alias,
                "turn": turn,
                "messages": new_messages,
                "firstMessage": first_message,
                "tools": request.tools.iter().map(|t| &t.name).collect::<Vec<_>>(),
            }),
        )
        .await;

        let started = Instant::now();
        let gateway = Arc::clone(&self.caps.models);
        let answer = self
            .ctx
            .waiting(gateway.complete(&self.agent_id, &request))
            .await;
        let duration_ms = elapsed_ms(started);
        match answer {
            Ok(response) => {
                let usage = {
                    let mut state = self.state();
                    state.usage.input_tokens += response.usage.input_tokens;
                    state.usage.output_tokens += response.usage.output_tokens;
                    state.usage.cost_usd += response.cost_usd;
                    // The answer is now part of the conversation the next request repeats.
                    state.recorded_messages += 1;
                    state.usage
                };
                self.record(
                    "model_response",
                    &json!({
                        "alias": alias,
                        "model": response.model,
                        "turn": turn,
                        "message": bounded_message(&response.message),
                        "finishReason": response.finish_reason,
                        "usage": response.usage,
                        "costUsd": response.cost_usd,
                        "durationMs": duration_ms,
                        "attempts": response.attempts,
                    }),
                )
                .await;
                if let Some(tree) = &self.tree {
                    let tokens = response.usage.input_tokens + response.usage.output_tokens;
                    tree.charge(tokens, response.cost_usd)
                        .await
                        .map_err(tree_error)?;
                }
                let tokens = usage.input_tokens + usage.output_tokens;
                if let Some(max) = self.quota.max_tokens
                    && tokens > max
                {
                    return Err(quota_end(
                        "MaxTokens",
                        format!("the run used {tokens} tokens, more than its {max} (max-tokens)"),
                    ));
                }
                if let Some(max) = self.quota.max_cost_usd
                    && usage.cost_usd > max
                {
                    return Err(quota_end(
                        "MaxCost",
                        format!(
                            "the run spent ${:.6}, more than its ${max} (max-cost-usd)",
                            usage.cost_usd
                        ),
                    ));
                }
                Ok(response)
            }
            Err(error) => {
                let message = error.to_string();
                self.record(
                    "model_error",
                    &json!({
                        "alias": alias,
                        "turn": turn,
                        "tag": error.tag(),
                        "message": message,
                        "durationMs": duration_ms,
                    }),
                )
                .await;
                Err(CallError::Failed {
                    tag: error.tag().to_string(),
                    message,
                    retryable: error.retryable(),
                })
            }
        }
    }

    /// Calls tool `name` with JSON `input` (`id`: the model's id of the call, if it asked for
    /// it), within the run's `max-tool-calls`, and records the call and its result.
    pub async fn call_tool(
        &self,
        id: Option<&str>,
        name: &str,
        input: &str,
    ) -> Result<String, CallError> {
        self.charge_tool_calls(1).await?;
        self.run_tool(id, name, input).await
    }

    /// Calls several tools concurrently; each is `(id, name, input)`. All of them count against
    /// `max-tool-calls` before any runs.
    pub async fn call_tools(
        &self,
        calls: &[(Option<String>, String, String)],
    ) -> Result<Vec<Result<String, CallError>>, CallError> {
        self.charge_tool_calls(calls.len()).await?;
        let runs = calls
            .iter()
            .map(|(id, name, input)| self.run_tool(id.as_deref(), name, input));
        Ok(futures::future::join_all(runs).await)
    }

    async fn charge_tool_calls(&self, calls: usize) -> Result<(), CallError> {
        let calls = u32::try_from(calls).unwrap_or(u32::MAX);
        if let Some(tree) = &self.tree {
            tree.reserve(0, calls).await.map_err(tree_error)?;
        }
        let mut state = self.state();
        if let Some(max) = self.quota.max_tool_calls
            && state.usage.tool_calls.saturating_add(calls) > max
        {
            return Err(quota_end(
                "MaxToolCalls",
                format!(
                    "the run made {} tool calls and asked for {calls} more; it may make {max} \
                     (max-tool-calls)",
                    state.usage.tool_calls
                ),
            ));
        }
        state.used = true;
        state.usage.tool_calls = state.usage.tool_calls.saturating_add(calls);
        Ok(())
    }

    async fn run_tool(
        &self,
        id: Option<&str>,
        name: &str,
        input: &str,
    ) -> Result<String, CallError> {
        self.record(
            "tool_call",
            &json!({ "id": id, "name": name, "arguments": bounded(input) }),
        )
        .await;
        let outcome = match (self.tools.iter().any(|t| t == name), self.tool(name)) {
            (false, _) => Err(CallError::failed(
                "ToolNotAllowed",
                format!(
                    "{name:?} is not one of this agent's tools (its manifest lists {:?})",
                    self.tools
                ),
            )),
            (true, None) => Err(CallError::Failed {
                tag: "ToolUnavailable".into(),
                message: format!("tool {name:?} is not loaded on this host"),
                retryable: true,
            }),
            (true, Some(tool)) => match &self.caps.tool_runtime {
                None => Err(CallError::Failed {
                    tag: "ToolUnavailable".into(),
                    message: "this host runs no tools".into(),
                    retryable: false,
                }),
                Some(runtime) => Ok(runtime
                    .call_tool_under(
                        &tool,
                        input,
                        self.ctx.control(),
                        ToolNetwork {
                            outbound: &self.caps.outbound,
                            secrets: &self.caps.secrets,
                            granted: tool
                                .secrets
                                .iter()
                                .filter(|s| self.secrets.contains(s))
                                .cloned()
                                .collect(),
                            events: Some(&self.ctx),
                        },
                    )
                    .await),
            },
        };
        let (result, payload) = match outcome {
            Ok(ToolOutcome {
                result,
                duration,
                fuel_used,
                ..
            }) => {
                let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
                match result {
                    Ok(output) => {
                        let payload = json!({
                            "id": id, "name": name, "ok": true, "result": bounded(&output),
                            "durationMs": duration_ms, "fuel": fuel_used,
                        });
                        (Ok(output), payload)
                    }
                    Err(failure) => {
                        let payload = json!({
                            "id": id, "name": name, "ok": false,
                            "error": { "tag": failure.tag, "message": bounded(&failure.message) },
                            "durationMs": duration_ms, "fuel": fuel_used,
                        });
                        let error = CallError::Failed {
                            tag: failure.tag,
                            message: failure.message,
                            retryable: failure.retryable,
                        };
                        (Err(error), payload)
                    }
                }
            }
            Err(error) => {
                let (tag, message) = match &error {
                    CallError::Failed { tag, message, .. } => (tag.clone(), message.clone()),
                    CallError::End(failure) => {
                        (failure.error.tag.clone(), failure.error.message.clone())
                    }
                };
                let payload = json!({
                    "id": id, "name": name, "ok": false,
                    "error": { "tag": tag, "message": message },
                    "durationMs": 0, "fuel": null,
                });
                (Err(error), payload)
            }
        };
        self.record("tool_result", &payload).await;
        self.caps
            .count_tool_call(&self.agent_id, name, result.is_err());
        if let Some(reason) = self.ctx.control().aborted() {
            return Err(CallError::End(reason.failure()));
        }
        result
    }

    async fn record(&self, kind: &str, payload: &impl Serialize) {
        let text = serde_json::to_string(payload).unwrap_or_else(|_| "null".into());
        match RawValue::from_string(text) {
            Ok(raw) => self.ctx.record_event(kind, Arc::from(raw)).await,
            Err(e) => tracing::warn!(kind, error = %e, "cannot encode a host event"),
        }
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `text`, cut to [`MAX_EVENT_TEXT_BYTES`] on a character boundary, with a marker saying how long
/// it was.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_EVENT_TEXT_BYTES {
        return text.to_string();
    }
    let mut at = MAX_EVENT_TEXT_BYTES;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{} … [truncated; {} bytes in all]", &text[..at], text.len())
}

/// A message as an event shows it: each text cut to size.
fn bounded_message(message: &Message) -> Message {
    let mut message = message.clone();
    message.content = bounded(&message.content);
    for call in &mut message.tool_calls {
        call.arguments = bounded(&call.arguments);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(MAX_EVENT_TEXT_BYTES);
        let cut = bounded(&long);
        assert!(cut.len() < MAX_EVENT_TEXT_BYTES + 64, "{}", cut.len());
        assert!(cut.ends_with(&format!("[truncated; {} bytes in all]", long.len())));
    }
}
