//! The chat agent: a long-lived agent that answers every message posted to it (`POST
//! /v1/agents/{id}/messages`) with an echo of the message and how many messages it has
//! answered in this run, and stops cleanly when asked.
//!
//! Input (optional): `{"replyDelayMs": N}` makes it think for N ms before each answer (so that
//! a conversation can be caught mid-way); a stop request cuts the thinking short.
//!
//! With `{"model": "<alias>"}` (an alias its manifest lists) it is model-backed: it keeps the
//! conversation of its run (a `systemPrompt` of the input first, then every message and
//! answer) and answers each message with the model's reply to it, `{reply, count}`. A model
//! call that fails is answered with `{error: {tag, message}, count}` and the conversation goes
//! on; one past the agent's `[quota]` ends the run, as the host decides.

use std::time::Duration;

use drover_sdk::model::{self, Message, Request};
use drover_sdk::{Agent, Error, Lifecycle, Value, emit, inbox, json, sleep};
use serde::{Deserialize, Serialize};

/// The job's input (all optional).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Input {
    /// How long to think before each answer, in ms.
    reply_delay_ms: u64,
    /// The model alias that answers (none: echo).
    model: Option<String>,
    /// The model's instructions.
    system_prompt: Option<String>,
}

/// The system prompt of a model-backed chat whose input gives none.
const SYSTEM_PROMPT: &str = "You are a helpful assistant. Answer briefly.";

/// A model-backed conversation: everything said in this run so far.
struct Conversation {
    model: String,
    messages: Vec<Message>,
}

impl Conversation {
    /// The model's answer to `body` (a JSON string is its text; anything else, its JSON).
    fn answer(&mut self, body: &Value, count: u64) -> Value {
        let text = match body {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        self.messages.push(Message::user(text));
        let request = Request {
            model: self.model.clone(),
            messages: self.messages.clone(),
            tools: Vec::new(),
            max_output_tokens: None,
            temperature: None,
            json_output: false,
        };
        match model::complete(&request) {
            Ok(response) => {
                let reply = response.message.content.clone();
                self.messages.push(response.message);
                json!({ "reply": reply, "count": count })
            }
            Err(e) => {
                // The message stays unanswered in the conversation: the next one follows it.
                json!({ "error": { "tag": e.tag, "message": e.message }, "count": count })
            }
        }
    }
}

/// What the agent reports when it stops.
#[derive(Serialize)]
struct Output {
    handled: u64,
}

/// How long it waits for a message before it heartbeats and looks again.
const POLL: Duration = Duration::from_secs(5);

struct Chat;

impl Agent for Chat {
    type Input = Option<Input>;
    type Output = Output;

    const LIFECYCLE: Lifecycle = Lifecycle::LongLived;

    fn run(input: Option<Input>) -> Result<Output, Error> {
        let input = input.unwrap_or_default();
        let delay = Duration::from_millis(input.reply_delay_ms);
        let mut conversation = input.model.map(|model| Conversation {
            model,
            messages: vec![Message::system(
                input.system_prompt.as_deref().unwrap_or(SYSTEM_PROMPT),
            )],
        });
        let mut count = 0u64;
        let handled = inbox::serve(POLL, |message| {
            if !delay.is_zero() {
                sleep(delay);
            }
            count += 1;
            Ok(match &mut conversation {
                Some(conversation) => conversation.answer(&message.body, count),
                // The message, as posted, and the messages answered so far, this one included.
                None => json!({ "echo": message.body, "count": count }),
            })
        })?;
        emit("chat_stopping", &json!({ "handled": handled }))?;
        Ok(Output { handled })
    }
}

drover_sdk::export_agent!(Chat);
