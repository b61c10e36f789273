//! The `drover:agent/model` and `drover:agent/tools` imports: a guest's model and tool calls,
//! handed to the run's [`RunCapabilities`] (policy, budgets, events) and converted between the
//! WIT records and the host's types.

use super::bindings::drover::agent::{model, tools, types};
use super::state::HostState;
use crate::model::{
    ChatRequest, ChatResponse, FinishReason, Message, Role, ToolCall, ToolDefinition,
};
use crate::sandbox::caps::{CallError, RunCapabilities};

impl HostState {
    fn calls(&self) -> wasmtime::Result<&RunCapabilities> {
        self.caps
            .as_ref()
            .ok_or_else(|| wasmtime::format_err!("model and tool calls are not available here"))
    }

    /// What the guest hears of a failed call; a call that ends the run traps instead.
    fn answer<T>(
        &mut self,
        result: Result<T, CallError>,
    ) -> wasmtime::Result<Result<T, types::Failure>> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(CallError::Failed {
                tag,
                message,
                retryable,
            }) => Ok(Err(types::Failure {
                tag,
                message,
                retryable,
            })),
            Err(CallError::End(failure)) => {
                let message = failure.error.to_string();
                if let Some(caps) = &self.caps {
                    caps.end(failure);
                }
                Err(wasmtime::format_err!(message))
            }
        }
    }
}

fn role(role: model::Role) -> Role {
    match role {
        model::Role::System => Role::System,
        model::Role::User => Role::User,
        model::Role::Assistant => Role::Assistant,
        model::Role::Tool => Role::Tool,
    }
}

fn message(m: model::Message) -> Message {
    Message {
        role: role(m.role),
        content: m.content,
        tool_calls: m
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        tool_call_id: m.tool_call_id,
    }
}

fn wit_message(m: Message) -> model::Message {
    model::Message {
        role: match m.role {
            Role::System => model::Role::System,
            Role::User => model::Role::User,
            Role::Assistant => model::Role::Assistant,
            Role::Tool => model::Role::Tool,
        },
        content: m.content,
        tool_calls: m
            .tool_calls
            .into_iter()
            .map(|c| model::ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        tool_call_id: m.tool_call_id,
    }
}

fn request(r: model::Request) -> Result<ChatRequest, CallError> {
    let tools = r
        .tools
        .into_iter()
        .map(|t| {
            let parameters =
                serde_json::from_str(&t.parameters).map_err(|e| CallError::Failed {
                    tag: "InvalidInput".into(),
                    message: format!("the parameters of tool {:?} are not JSON: {e}", t.name),
                    retryable: false,
                })?;
            Ok(ToolDefinition {
                name: t.name,
                description: t.description,
                parameters,
            })
        })
        .collect::<Result<Vec<_>, CallError>>()?;
    Ok(ChatRequest {
        model: r.model,
        messages: r.messages.into_iter().map(message).collect(),
        tools,
        max_output_tokens: r.max_output_tokens,
        temperature: r.temperature,
        json_output: r.json_output,
    })
}

fn response(r: ChatResponse) -> model::Response {
    model::Response {
        message: wit_message(r.message),
        finish_reason: match r.finish_reason {
            FinishReason::Stop => model::FinishReason::Stop,
            FinishReason::Length => model::FinishReason::Length,
            FinishReason::ToolCalls => model::FinishReason::ToolCalls,
            FinishReason::ContentFilter => model::FinishReason::ContentFilter,
            FinishReason::Other => model::FinishReason::Other,
        },
        usage: model::Usage {
            input_tokens: r.usage.input_tokens,
            output_tokens: r.usage.output_tokens,
        },
        cost_usd: r.cost_usd,
        model: r.model,
    }
}

impl model::Host for HostState {
    fn aliases(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.calls()?.aliases())
    }

    async fn complete(
        &mut self,
        wit_request: model::Request,
    ) -> wasmtime::Result<Result<model::Response, types::Failure>> {
        let result = match request(wit_request) {
            Ok(request) => self.calls()?.complete(request).await.map(response),
            Err(e) => Err(e),
        };
        self.answer(result)
    }
}

impl tools::Host for HostState {
    fn list(&mut self) -> wasmtime::Result<Vec<types::ToolInfo>> {
        let text = |v: Option<serde_json::Value>| v.map(|v| v.to_string());
        Ok(self
            .calls()?
            .tools()
            .into_iter()
            .map(|t| types::ToolInfo {
                name: t.name,
                description: t.description,
                input_schema: text(t.input_schema),
                output_schema: text(t.output_schema),
            })
            .collect())
    }

    async fn call(
        &mut self,
        name: String,
        input: String,
    ) -> wasmtime::Result<Result<String, types::Failure>> {
        let result = self.calls()?.call_tool(None, &name, &input).await;
        self.answer(result)
    }

    async fn call_many(
        &mut self,
        calls: Vec<tools::ToolRequest>,
    ) -> wasmtime::Result<Vec<Result<String, types::Failure>>> {
        let calls: Vec<(Option<String>, String, String)> =
            calls.into_iter().map(|c| (None, c.name, c.input)).collect();
        let results = self.calls()?.call_tools(&calls).await;
        match results {
            Ok(results) => results.into_iter().map(|r| self.answer(r)).collect(),
            Err(e) => self.answer::<Vec<_>>(Err(e)).map(|r| match r {
                Ok(v) => v,
                Err(failure) => vec![Err(failure); calls.len()],
            }),
        }
    }
}
