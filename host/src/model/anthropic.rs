//! Anthropic's Messages wire format (`POST {base-url}/messages`).
//!
//! System messages become the top-level `system`; tool calls are `tool_use` content blocks of
//! the assistant's message and their results `tool_result` blocks of the next user message
//! (consecutive messages of one role are merged, as the API requires roles to alternate). The
//! API has no JSON mode: `json_output` is left to the prompt.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ChatRequest, Decoded, FinishReason, Message, Role, TokenUsage, ToolCall};

/// The API version sent in `anthropic-version`.
pub(super) const VERSION: &str = "2023-06-01";

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    system: String,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<BlockOut<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
    },
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a Value,
}

/// The request body for `request` sent to provider model `model`.
pub(super) fn request_body(
    model: &str,
    request: &ChatRequest,
    max_tokens: u32,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut system = String::new();
    let mut messages: Vec<WireMessage<'_>> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message.role {
            Role::System => {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&message.content);
                continue;
            }
            Role::User => ("user", text_block(message)),
            Role::Assistant => {
                let mut blocks = text_block(message);
                blocks.extend(message.tool_calls.iter().map(|call| BlockOut::ToolUse {
                    id: &call.id,
                    name: &call.name,
                    input: tool_input(&call.arguments),
                }));
                ("assistant", blocks)
            }
            Role::Tool => (
                "user",
                vec![BlockOut::ToolResult {
                    tool_use_id: message.tool_call_id.as_deref().unwrap_or_default(),
                    content: &message.content,
                }],
            ),
        };
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(WireMessage {
                role,
                content: blocks,
            }),
        }
    }
    let tools = request
        .tools
        .iter()
        .map(|t| WireTool {
            name: &t.name,
            description: &t.description,
            input_schema: &t.parameters,
        })
        .collect();
    serde_json::to_vec(&Request {
        model,
        max_tokens,
        system,
        messages,
        tools,
        temperature: request.temperature,
    })
}

fn text_block(message: &Message) -> Vec<BlockOut<'_>> {
    if message.content.is_empty() {
        Vec::new()
    } else {
        vec![BlockOut::Text {
            text: &message.content,
        }]
    }
}

/// A tool call's arguments as the object `tool_use.input` must be (an empty object if the
/// model's arguments were not a JSON object).
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => Value::Object(serde_json::Map::new()),
    }
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    model: Option<String>,
    content: Vec<BlockIn>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockIn {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// Reads a successful response body.
pub(super) fn parse_response(body: &[u8]) -> Result<Decoded, String> {
    let response: Response =
        serde_json::from_slice(body).map_err(|e| format!("not a Messages response: {e}"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in response.content {
        match block {
            BlockIn::Text { text: t } => text.push_str(&t),
            BlockIn::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments: input.to_string(),
            }),
            BlockIn::Other => {}
        }
    }
    let finish_reason = match response.stop_reason.as_deref() {
        Some("end_turn" | "stop_sequence") | None => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        Some(_) => FinishReason::Other,
    };
    let usage = response
        .usage
        .map_or_else(TokenUsage::default, |u| TokenUsage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
        });
    Ok(Decoded {
        message: Message {
            tool_calls,
            ..Message::assistant(text)
        },
        finish_reason,
        usage,
        model: response.model,
    })
}
