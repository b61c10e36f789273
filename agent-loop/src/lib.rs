//! The drover agent loop, as a state machine with no I/O of its own.
//!
//! An agent loop asks a model, runs the tools the model asks for, feeds their results back, and
//! repeats until the model gives a final answer, which must be JSON the agent accepts (one repair
//! turn is allowed for an answer that is not). The same loop runs inside guests (the Rust SDK's
//! `agent_loop`, over the `drover:agent/model` and `drover:agent/tools` imports) and inside the
//! host (declarative agents, over the model gateway and the tool sandboxes), so it is written
//! once, here, without doing any I/O: the caller performs each [`Step`] and reports back.
//!
//! ```
//! use drover_agent_loop::{AgentLoop, LoopConfig, Message, FinishReason, Reply, Step, TokenUsage};
//!
//! let mut agent = AgentLoop::new(LoopConfig::new("cheap", "Reply with {ok: true} as JSON."), "{}");
//! let request = agent.request();
//! assert_eq!(request.messages.len(), 2);
//! // … send `request` to the model, then:
//! let reply = Reply {
//!     message: Message::assistant(r#"{"ok": true}"#),
//!     finish_reason: FinishReason::Stop,
//!     usage: TokenUsage::default(),
//! };
//! match agent.on_reply(reply) {
//!     Step::Answer(value) => assert_eq!(value["ok"], true),
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! Budgets (turns, tokens, cost, tool calls) are not the loop's business: the host enforces them
//! at the boundary, whatever the loop or the agent's own code asks for.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The user, or the job's input.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// A tool call the model asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCall {
    /// The provider's id of the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as the model wrote them (meant to be JSON).
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Who says it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// The tool calls an assistant message asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// A tool message answering call `id`.
    pub fn tool(id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(id.into()),
            ..Self::new(Role::Tool, content)
        }
    }
}

/// A tool the model may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolDefinition {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: Value,
}

/// Why a model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A complete answer.
    Stop,
    /// The output token limit cut it short.
    Length,
    /// It asks for tool calls.
    ToolCalls,
    /// The provider filtered the content.
    ContentFilter,
    /// Anything else.
    Other,
}

/// Tokens one model call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    /// Tokens read.
    pub input_tokens: u64,
    /// Tokens written.
    pub output_tokens: u64,
}

/// How the loop asks its model.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    /// The model alias.
    pub model: String,
    /// The system prompt.
    pub system_prompt: String,
    /// The tools the model may ask for.
    pub tools: Vec<ToolDefinition>,
    /// Most output tokens per call (none: the alias's default).
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
}

impl LoopConfig {
    /// A loop on model alias `model` with `system_prompt`, no tools, and the alias's defaults.
    pub fn new(model: impl Into<String>, system_prompt: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            system_prompt: system_prompt.into(),
            tools: Vec::new(),
            max_output_tokens: None,
            temperature: None,
        }
    }

    /// Gives the model these tools.
    pub fn tools(mut self, tools: Vec<ToolDefinition>) -> Self {
        self.tools = tools;
        self
    }
}

/// One request of the loop to its model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    /// The model alias.
    pub model: String,
    /// The whole conversation so far.
    pub messages: Vec<Message>,
    /// The tools offered.
    pub tools: Vec<ToolDefinition>,
    /// Most output tokens.
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Whether a JSON object is asked for (always, when no tools are offered).
    pub json_output: bool,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Its message.
    pub message: Message,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Tokens used.
    pub usage: TokenUsage,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Run these tool calls (all of them; concurrently if it can), then report their results
    /// with [`AgentLoop::on_tool_results`].
    CallTools(Vec<ToolCall>),
    /// Ask the model again: [`AgentLoop::request`] (a repair turn after an answer that was not
    /// JSON, or an answer cut short).
    Ask,
    /// The final answer. Check it (e.g. against an output schema) and either take it, or hand it
    /// back with [`AgentLoop::reject`].
    Answer(Value),
    /// The model gave no usable answer, even after its repair turn.
    Failed(LoopError),
}

/// Why the loop gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopError {
    /// A machine-readable tag (`InvalidOutput`).
    pub tag: &'static str,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for LoopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.tag, self.message)
    }
}

impl std::error::Error for LoopError {}

/// A tool call's result, as the loop feeds it back to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The id of the call.
    pub id: String,
    /// Its JSON output, or why it failed (the model is told, and may try something else).
    pub result: Result<String, String>,
}

/// Most characters of an invalid answer quoted back to the model in its repair turn.
const QUOTED_ANSWER_CHARS: usize = 2_000;

/// The loop's state: the conversation so far, and whether its repair turn is used.
#[derive(Debug, Clone)]
pub struct AgentLoop {
    config: LoopConfig,
    messages: Vec<Message>,
    repaired: bool,
}

impl AgentLoop {
    /// A loop with `config`, starting from the system prompt and `input` (the job's input, as
    /// JSON text) as the user message.
    pub fn new(config: LoopConfig, input: &str) -> Self {
        let mut messages = Vec::with_capacity(4);
        if !config.system_prompt.is_empty() {
            messages.push(Message::system(config.system_prompt.clone()));
        }
        messages.push(Message::user(input));
        Self {
            config,
            messages,
            repaired: false,
        }
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The next request to the model.
    pub fn request(&self) -> ModelRequest {
        ModelRequest {
            model: self.config.model.clone(),
            messages: self.messages.clone(),
            tools: self.config.tools.clone(),
            max_output_tokens: self.config.max_output_tokens,
            temperature: self.config.temperature,
            json_output: self.config.tools.is_empty(),
        }
    }

    /// Takes the model's reply and says what to do next.
    pub fn on_reply(&mut self, reply: Reply) -> Step {
        let Reply {
            mut message,
            finish_reason,
            ..
        } = reply;
        message.role = Role::Assistant;
        if !message.tool_calls.is_empty() {
            let calls = message.tool_calls.clone();
            self.messages.push(message);
            return Step::CallTools(calls);
        }
        let text = message.content.clone();
        self.messages.push(message);
        match parse_answer(&text) {
            Some(value) => Step::Answer(value),
            None => {
                let why = if finish_reason == FinishReason::Length {
                    "Your answer was cut off by the output token limit; it is not complete JSON."
                } else {
                    "Your answer is not valid JSON."
                };
                self.repair(format!(
                    "{why} Reply again with only the JSON answer, and nothing else."
                ))
            }
        }
    }

    /// Feeds the results of the tool calls of the last [`Step::CallTools`] back, in any order.
    /// Then ask the model again ([`AgentLoop::request`]).
    pub fn on_tool_results(&mut self, results: Vec<ToolResult>) {
        for ToolResult { id, result } in results {
            let content = match result {
                Ok(output) => output,
                Err(error) => serde_json::json!({ "error": error }).to_string(),
            };
            self.messages.push(Message::tool(id, content));
        }
    }

    /// Hands back an answer the agent cannot take (it does not match the output schema, say):
    /// the model gets one repair turn ([`Step::Ask`]), after which the loop fails.
    pub fn reject(&mut self, reason: &str) -> Step {
        self.repair(format!(
            "Your answer does not fit the required output: {reason}. Reply again with only the \
             corrected JSON answer."
        ))
    }

    fn repair(&mut self, instruction: String) -> Step {
        if self.repaired {
            let answer = self
                .messages
                .last()
                .map(|m| quote(&m.content))
                .unwrap_or_default();
            return Step::Failed(LoopError {
                tag: "InvalidOutput",
                message: format!(
                    "the model's answer was not usable after a repair turn ({instruction}); its \
                     last answer: {answer}"
                ),
            });
        }
        self.repaired = true;
        self.messages.push(Message::user(instruction));
        Step::Ask
    }
}

/// The JSON value in a model's final answer: the whole text, or the text inside a Markdown code
/// fence, which models often add.
pub fn parse_answer(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(value) = serde_json::from_str(trimmed) {
        return Some(value);
    }
    let inner = trimmed.strip_prefix("```")?.strip_suffix("```")?;
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    serde_json::from_str(inner.trim()).ok()
}

fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED_ANSWER_CHARS) {
        Some((at, _)) => format!("{:?}…", &text[..at]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(message: Message) -> Reply {
        Reply {
            message,
            finish_reason: FinishReason::Stop,
            usage: TokenUsage::default(),
        }
    }

    fn calc() -> ToolDefinition {
        ToolDefinition {
            name: "calc".into(),
            description: "arithmetic".into(),
            parameters: serde_json::json!({"type": "object"}),
        }
    }

    #[test]
    fn a_tool_round_trip_then_an_answer() {
        let mut agent =
            AgentLoop::new(LoopConfig::new("m", "sys").tools(vec![calc()]), "{\"n\":1}");
        let first = agent.request();
        assert_eq!(first.messages[0], Message::system("sys"));
        assert_eq!(first.messages[1], Message::user("{\"n\":1}"));
        assert!(!first.json_output, "tools are offered: no JSON mode");

        let mut asks = Message::assistant("");
        asks.tool_calls = vec![
            ToolCall {
                id: "a".into(),
                name: "calc".into(),
                arguments: "{}".into(),
            },
            ToolCall {
                id: "b".into(),
                name: "calc".into(),
                arguments: "{}".into(),
            },
        ];
        let Step::CallTools(calls) = agent.on_reply(reply(asks)) else {
            panic!("expected tool calls")
        };
        assert_eq!(calls.len(), 2);
        agent.on_tool_results(vec![
            ToolResult {
                id: "b".into(),
                result: Err("boom".into()),
            },
            ToolResult {
                id: "a".into(),
                result: Ok("3".into()),
            },
        ]);
        let second = agent.request();
        assert_eq!(second.messages.len(), 5);
        assert_eq!(second.messages[3].tool_call_id.as_deref(), Some("b"));
        assert_eq!(second.messages[3].content, r#"{"error":"boom"}"#);
        assert_eq!(second.messages[4], Message::tool("a", "3"));

        assert_eq!(
            agent.on_reply(reply(Message::assistant("```json\n{\"x\": 3}\n```"))),
            Step::Answer(serde_json::json!({"x": 3}))
        );
    }

    #[test]
    fn one_repair_turn_then_failure() {
        let mut agent = AgentLoop::new(LoopConfig::new("m", ""), "1");
        assert_eq!(agent.request().messages.len(), 1, "no empty system message");
        assert!(agent.request().json_output);
        assert_eq!(
            agent.on_reply(reply(Message::assistant("sure!"))),
            Step::Ask
        );
        let repair = agent.request();
        assert_eq!(repair.messages.len(), 3);
        assert_eq!(repair.messages[2].role, Role::User);
        assert!(repair.messages[2].content.contains("not valid JSON"));
        match agent.on_reply(reply(Message::assistant("still no"))) {
            Step::Failed(error) => {
                assert_eq!(error.tag, "InvalidOutput");
                assert!(error.message.contains("still no"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rejected_answer_gets_the_repair_turn() {
        let mut agent = AgentLoop::new(LoopConfig::new("m", "s"), "1");
        assert_eq!(
            agent.on_reply(reply(Message::assistant("{\"ok\": 1}"))),
            Step::Answer(serde_json::json!({"ok": 1}))
        );
        assert_eq!(agent.reject("ok must be a boolean"), Step::Ask);
        assert!(
            agent.request().messages[3]
                .content
                .contains("ok must be a boolean")
        );
        assert_eq!(
            agent.on_reply(reply(Message::assistant("{\"ok\": true}"))),
            Step::Answer(serde_json::json!({"ok": true}))
        );
        assert!(matches!(agent.reject("still wrong"), Step::Failed(_)));
    }

    #[test]
    fn messages_serialize_in_camel_case_without_empty_fields() {
        let text = serde_json::to_string(&Message::tool("c1", "{}")).unwrap_or_default();
        assert_eq!(text, r#"{"role":"tool","content":"{}","toolCallId":"c1"}"#);
        let text = serde_json::to_string(&Message::user("hi")).unwrap_or_default();
        assert_eq!(text, r#"{"role":"user","content":"hi"}"#);
    }
}
