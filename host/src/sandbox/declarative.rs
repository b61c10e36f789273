//! Declarative agents: an `agents/<id>.toml` with a system prompt, a model alias, tools, schemas
//! and budgets, and no code. The host runs them with the same agent loop the Rust SDK gives
//! guests (`drover-agent-loop`), over the same [`RunCapabilities`], so their model and tool calls
//! obey the same policy and budgets and record the same events as a guest's.
//!
//! The loop itself is light: a run of a declarative agent spends nearly all its time waiting on
//! its model, and while it waits it holds no CPU slot (see `RunContext::waiting`). Its tools run
//! in fresh sandboxes of their own.

use std::sync::Arc;

use drover_agent_loop::{AgentLoop, LoopConfig, ModelRequest, Reply, Step, ToolResult};
use serde_json::value::RawValue;

use super::caps::{CallError, Capabilities, RunCapabilities};
use super::{AbortReason, Failure, RunContext, RunOutcome};
use crate::model::{ChatRequest, ToolDefinition};
use crate::registry::{AgentSpec, DeclarativeAgent};

/// Runs declarative `agent` (of `spec`) on `input`, to an answer, a failure or a budget.
pub(crate) async fn run(
    agent: &DeclarativeAgent,
    spec: &AgentSpec,
    input: &RawValue,
    ctx: RunContext,
    caps: &Arc<Capabilities>,
) -> RunOutcome {
    let calls = caps.for_run(spec, ctx.clone());
    let control = Arc::clone(ctx.control());
    let conversation = converse(agent, spec, input, &calls);
    let result = match spec.limits.timeout {
        Some(limit) => tokio::select! {
            result = tokio::time::timeout(limit, conversation) => {
                result.unwrap_or_else(|_| Err(AbortReason::Timeout.failure()))
            }
            reason = control.abort_requested() => Err(reason.failure()),
        },
        None => tokio::select! {
            result = conversation => result,
            reason = control.abort_requested() => Err(reason.failure()),
        },
    };
    RunOutcome {
        result,
        fuel_used: None,
        peak_memory: None,
        usage: calls.usage(),
    }
}

/// The loop: ask, call tools, answer (checked against the output schema, with one repair turn).
async fn converse(
    agent: &DeclarativeAgent,
    spec: &AgentSpec,
    input: &RawValue,
    calls: &RunCapabilities,
) -> Result<Arc<RawValue>, Failure> {
    let tools = calls
        .tools()
        .into_iter()
        .map(|tool| ToolDefinition {
            name: tool.name,
            description: tool.description,
            parameters: tool
                .input_schema
                .unwrap_or_else(|| serde_json::json!({ "type": "object" })),
        })
        .collect();
    let config = LoopConfig {
        model: agent.model.clone(),
        system_prompt: agent.system_prompt.clone(),
        tools,
        max_output_tokens: agent.max_output_tokens,
        temperature: agent.temperature,
    };
    let mut conversation = AgentLoop::new(config, input.get());
    let mut step = Step::Ask;
    loop {
        step = match step {
            Step::Ask => {
                let response = calls
                    .complete(chat_request(conversation.request()))
                    .await
                    .map_err(failure)?;
                conversation.on_reply(Reply {
                    message: response.message,
                    finish_reason: response.finish_reason,
                    usage: response.usage,
                })
            }
            Step::CallTools(requested) => {
                let batch: Vec<(Option<String>, String, String)> = requested
                    .iter()
                    .map(|c| (Some(c.id.clone()), c.name.clone(), c.arguments.clone()))
                    .collect();
                let results = calls.call_tools(&batch).await.map_err(failure)?;
                let mut fed_back = Vec::with_capacity(results.len());
                for (call, result) in requested.into_iter().zip(results) {
                    let result = match result {
                        Ok(output) => Ok(output),
                        Err(CallError::Failed { tag, message, .. }) => {
                            Err(format!("{tag}: {message}"))
                        }
                        Err(end @ CallError::End(_)) => return Err(failure(end)),
                    };
                    fed_back.push(ToolResult {
                        id: call.id,
                        result,
                    });
                }
                conversation.on_tool_results(fed_back);
                Step::Ask
            }
            Step::Answer(value) => match spec.output_schema.as_ref().map(|s| s.validate(&value)) {
                Some(Err(reason)) => conversation.reject(&reason),
                _ => {
                    return serde_json::value::to_raw_value(&value)
                        .map(Arc::from)
                        .map_err(|e| Failure::permanent("InvalidOutput", e.to_string()));
                }
            },
            Step::Failed(e) => return Err(Failure::permanent(e.tag, e.message)),
        };
    }
}

fn chat_request(request: ModelRequest) -> ChatRequest {
    ChatRequest {
        model: request.model,
        messages: request.messages,
        tools: request.tools,
        max_output_tokens: request.max_output_tokens,
        temperature: request.temperature,
        json_output: request.json_output,
    }
}

/// A call that did not answer, as the run's failure.
fn failure(error: CallError) -> Failure {
    match error {
        CallError::Failed {
            tag,
            message,
            retryable,
        } => {
            let failure = Failure::error(tag, message);
            Failure {
                retry: retryable,
                ..failure
            }
        }
        CallError::End(failure) => failure,
    }
}
