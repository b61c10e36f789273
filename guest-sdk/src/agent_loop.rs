//! Models, tools, and the agent loop.
//!
//! The host calls models on the agent's behalf ([`model::complete`]; the agent names an alias its
//! manifest lists, and never sees a key) and runs the agent's tools in sandboxes of their own
//! ([`tools::call`]). [`run_loop`] drives both to an answer: it asks the model, runs the tool
//! calls the model asks for (several at once when it asks for several), feeds the results back,
//! and decodes the final answer into the agent's output type, with one repair turn for an answer
//! that does not decode:
//!
//! ```no_run
//! use drover_sdk::{Agent, Error, LoopOptions, export_agent, run_loop};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Question { text: String }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Answer { value: f64 }
//!
//! struct Mathematician;
//!
//! impl Agent for Mathematician {
//!     type Input = Question;
//!     type Output = Answer;
//!
//!     fn run(input: Question) -> Result<Answer, Error> {
//!         run_loop(
//!             &LoopOptions::new("cheap", "Answer with {\"value\": <number>}. Use the calc tool."),
//!             &input,
//!         )
//!     }
//! }
//!
//! export_agent!(Mathematician);
//! ```
//!
//! Budgets (`max-turns`, `max-tokens`, `max-cost-usd`, `max-tool-calls` in the manifest's
//! `[quota]`) are enforced by the host: a call past one ends the run with status `quota`, and
//! does not return.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use drover_agent_loop::{
    AgentLoop, LoopConfig, ModelRequest, Reply, Step, ToolDefinition, ToolResult,
};

use crate::__private::drover::agent::{model as wit_model, tools as wit_tools, types};
use crate::Error;

fn error(failure: types::Failure) -> Error {
    Error {
        tag: failure.tag,
        message: failure.message,
        retryable: failure.retryable,
    }
}

/// Calling models through the host.
pub mod model {
    use super::*;

    pub use drover_agent_loop::{
        FinishReason, Message, ModelRequest as Request, Role, TokenUsage, ToolCall, ToolDefinition,
    };

    /// A model's answer.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Response {
        /// The reply: text, tool calls, or both.
        pub message: Message,
        /// Why it stopped.
        pub finish_reason: FinishReason,
        /// Tokens used by this call.
        pub usage: TokenUsage,
        /// Its cost in US dollars.
        pub cost_usd: f64,
        /// The provider's name of the model that answered.
        pub model: String,
    }

    /// The model aliases this agent may use.
    pub fn aliases() -> Vec<String> {
        wit_model::aliases()
    }

    /// Sends `request` to the model behind its alias (see `drover:agent/model.complete`).
    pub fn complete(request: &ModelRequest) -> Result<Response, Error> {
        let request = wit_model::Request {
            model: request.model.clone(),
            messages: request.messages.iter().map(to_wit).collect(),
            tools: request
                .tools
                .iter()
                .map(|t| wit_model::ToolDefinition {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    parameters: t.parameters.to_string(),
                })
                .collect(),
            max_output_tokens: request.max_output_tokens,
            temperature: request.temperature,
            json_output: request.json_output,
        };
        let response = wit_model::complete(&request).map_err(error)?;
        Ok(Response {
            message: from_wit(response.message),
            finish_reason: match response.finish_reason {
                wit_model::FinishReason::Stop => FinishReason::Stop,
                wit_model::FinishReason::Length => FinishReason::Length,
                wit_model::FinishReason::ToolCalls => FinishReason::ToolCalls,
                wit_model::FinishReason::ContentFilter => FinishReason::ContentFilter,
                wit_model::FinishReason::Other => FinishReason::Other,
            },
            usage: TokenUsage {
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
            },
            cost_usd: response.cost_usd,
            model: response.model,
        })
    }

    fn to_wit(message: &Message) -> wit_model::Message {
        wit_model::Message {
            role: match message.role {
                Role::System => wit_model::Role::System,
                Role::User => wit_model::Role::User,
                Role::Assistant => wit_model::Role::Assistant,
                Role::Tool => wit_model::Role::Tool,
            },
            content: message.content.clone(),
            tool_calls: message
                .tool_calls
                .iter()
                .map(|c| wit_model::ToolCall {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                })
                .collect(),
            tool_call_id: message.tool_call_id.clone(),
        }
    }

    fn from_wit(message: wit_model::Message) -> Message {
        Message {
            role: match message.role {
                wit_model::Role::System => Role::System,
                wit_model::Role::User => Role::User,
                wit_model::Role::Assistant => Role::Assistant,
                wit_model::Role::Tool => Role::Tool,
            },
            content: message.content,
            tool_calls: message
                .tool_calls
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id,
                    name: c.name,
                    arguments: c.arguments,
                })
                .collect(),
            tool_call_id: message.tool_call_id,
        }
    }
}

/// Calling the agent's tools through the host.
pub mod tools {
    use super::*;

    /// One tool the agent may call.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ToolInfo {
        /// Its name.
        pub name: String,
        /// What it does.
        pub description: String,
        /// JSON Schema of its input.
        pub input_schema: Option<Value>,
        /// JSON Schema of its output.
        pub output_schema: Option<Value>,
    }

    impl ToolInfo {
        /// The tool as a model is told about it.
        pub fn definition(&self) -> ToolDefinition {
            ToolDefinition {
                name: self.name.clone(),
                description: self.description.clone(),
                parameters: self
                    .input_schema
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({ "type": "object" })),
            }
        }
    }

    /// The tools this agent may call (its manifest's `tools`).
    pub fn list() -> Vec<ToolInfo> {
        let schema = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        wit_tools::list()
            .into_iter()
            .map(|t| ToolInfo {
                name: t.name,
                description: t.description,
                input_schema: schema(t.input_schema),
                output_schema: schema(t.output_schema),
            })
            .collect()
    }

    /// Calls tool `name` with `input` and decodes its output.
    pub fn call<O: DeserializeOwned>(name: &str, input: &impl Serialize) -> Result<O, Error> {
        let input = serde_json::to_string(input)?;
        let output = wit_tools::call(name, &input).map_err(error)?;
        Ok(serde_json::from_str(&output)?)
    }

    /// Calls several tools at once; each pair is a tool's name and its JSON input. The results
    /// (JSON output, or why the call failed) come back in order.
    pub fn call_many(calls: &[(String, String)]) -> Vec<Result<String, Error>> {
        let calls: Vec<wit_tools::ToolRequest> = calls
            .iter()
            .map(|(name, input)| wit_tools::ToolRequest {
                name: name.clone(),
                input: input.clone(),
            })
            .collect();
        wit_tools::call_many(&calls)
            .into_iter()
            .map(|r| r.map_err(error))
            .collect()
    }
}

/// How [`run_loop`] asks its model.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopOptions {
    /// The model alias.
    pub model: String,
    /// The system prompt.
    pub system_prompt: String,
    /// The tools to offer the model, by name (none: every tool of the agent).
    pub tools: Option<Vec<String>>,
    /// Most output tokens per model call (none: the alias's default).
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
}

impl LoopOptions {
    /// A loop on alias `model` with `system_prompt`, offering every tool of the agent.
    pub fn new(model: impl Into<String>, system_prompt: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            system_prompt: system_prompt.into(),
            tools: None,
            max_output_tokens: None,
            temperature: None,
        }
    }
}

/// Runs the agent loop on `input` (sent to the model as JSON) to an answer of type `O`.
///
/// Fails with the model's failure (`ModelUnavailable`, …), or with `InvalidOutput` when the
/// answer still does not decode into `O` after one repair turn. A tool call that fails is not a
/// failure of the loop: the model is told, and carries on.
pub fn run_loop<O: DeserializeOwned>(
    options: &LoopOptions,
    input: &impl Serialize,
) -> Result<O, Error> {
    let tools = tools::list()
        .iter()
        .filter(|t| {
            options
                .tools
                .as_ref()
                .is_none_or(|names| names.contains(&t.name))
        })
        .map(tools::ToolInfo::definition)
        .collect();
    let config = LoopConfig {
        model: options.model.clone(),
        system_prompt: options.system_prompt.clone(),
        tools,
        max_output_tokens: options.max_output_tokens,
        temperature: options.temperature,
    };
    let input = serde_json::to_string(input)?;
    let mut agent = AgentLoop::new(config, &input);
    let mut step = Step::Ask;
    loop {
        step = match step {
            Step::Ask => {
                let response = model::complete(&agent.request())?;
                agent.on_reply(Reply {
                    message: response.message,
                    finish_reason: response.finish_reason,
                    usage: response.usage,
                })
            }
            Step::CallTools(calls) => {
                let requests: Vec<(String, String)> = calls
                    .iter()
                    .map(|c| (c.name.clone(), c.arguments.clone()))
                    .collect();
                let results = tools::call_many(&requests)
                    .into_iter()
                    .zip(calls)
                    .map(|(result, call)| ToolResult {
                        id: call.id,
                        result: result.map_err(|e| e.to_string()),
                    })
                    .collect();
                agent.on_tool_results(results);
                Step::Ask
            }
            Step::Answer(value) => match serde_json::from_value::<O>(value) {
                Ok(output) => return Ok(output),
                Err(e) => agent.reject(&e.to_string()),
            },
            Step::Failed(e) => return Err(Error::new(e.tag, e.message).permanent()),
        };
    }
}
