//! The OpenAI-compatible Chat Completions wire format (`POST {base-url}/chat/completions`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::MaxTokensField;
use super::{ChatRequest, Decoded, FinishReason, Message, Role, TokenUsage, ToolCall};

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat>,
}

#[derive(Serialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    /// `null` for an assistant message that only calls tools.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionOut<'a>,
}

#[derive(Serialize)]
struct WireFunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireToolFunction<'a>,
}

#[derive(Serialize)]
struct WireToolFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

fn role(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// The request body for `request` sent to provider model `model`.
pub(super) fn request_body(
    model: &str,
    request: &ChatRequest,
    max_tokens: u32,
    field: MaxTokensField,
) -> Result<Vec<u8>, serde_json::Error> {
    let messages = request
        .messages
        .iter()
        .map(|m| WireMessage {
            role: role(m.role),
            content: (!(m.role == Role::Assistant
                && m.content.is_empty()
                && !m.tool_calls.is_empty()))
            .then_some(m.content.as_str()),
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| WireCallOut {
                    id: &c.id,
                    kind: "function",
                    function: WireFunctionOut {
                        name: &c.name,
                        arguments: &c.arguments,
                    },
                })
                .collect(),
            tool_call_id: m.tool_call_id.as_deref(),
        })
        .collect();
    let tools = request
        .tools
        .iter()
        .map(|t| WireTool {
            kind: "function",
            function: WireToolFunction {
                name: &t.name,
                description: &t.description,
                parameters: &t.parameters,
            },
        })
        .collect();
    let (max_tokens, max_completion_tokens) = match field {
        MaxTokensField::MaxTokens => (Some(max_tokens), None),
        MaxTokensField::MaxCompletionTokens => (None, Some(max_tokens)),
    };
    serde_json::to_vec(&Request {
        model,
        messages,
        tools,
        max_tokens,
        max_completion_tokens,
        temperature: request.temperature,
        response_format: request.json_output.then_some(ResponseFormat {
            kind: "json_object",
        }),
    })
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ResponseMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireCallIn>>,
}

#[derive(Deserialize)]
struct WireCallIn {
    id: String,
    function: WireFunctionIn,
}

#[derive(Deserialize)]
struct WireFunctionIn {
    name: String,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Reads a successful response body.
pub(super) fn parse_response(body: &[u8]) -> Result<Decoded, String> {
    let response: Response = serde_json::from_slice(body)
        .map_err(|e| format!("not a Chat Completions response: {e}"))?;
    let choice = response
        .choices
        .into_iter()
        .next()
        .ok_or("the response has no choices")?;
    let tool_calls: Vec<ToolCall> = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| ToolCall {
            id: c.id,
            name: c.function.name,
            arguments: c.function.arguments.unwrap_or_default(),
        })
        .collect();
    let finish_reason = match choice.finish_reason.as_deref() {
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        // Some servers say "stop", or nothing, when they ask for tools.
        _ if !tool_calls.is_empty() => FinishReason::ToolCalls,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("stop") | None => FinishReason::Stop,
        Some(_) => FinishReason::Other,
    };
    let usage = response
        .usage
        .map_or_else(TokenUsage::default, |u| TokenUsage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        });
    Ok(Decoded {
        message: Message {
            tool_calls,
            ..Message::assistant(choice.message.content.unwrap_or_default())
        },
        finish_reason,
        usage,
        model: response.model,
    })
}
