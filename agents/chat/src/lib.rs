//! The chat agent: a long-lived agent that answers every message posted to it (`POST
//! /v1/agents/{id}/messages`) with an echo of the message and how many messages it has
//! answered in this run, and stops cleanly when asked.
//!
//! Input (optional): `{"replyDelayMs": N}` makes it think for N ms before each answer (so that
//! a conversation can be caught mid-way); a stop request cuts the thinking short.

use std::time::Duration;

use drover_sdk::{Agent, Error, Lifecycle, Value, emit, inbox, json, sleep};
use serde::{Deserialize, Serialize};

/// The job's input (all optional).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Input {
    /// How long to think before each answer, in ms.
    reply_delay_ms: u64,
}

/// One answer.
#[derive(Serialize)]
struct Answer {
    /// The message, as posted.
    echo: Value,
    /// Messages answered so far in this run, this one included.
    count: u64,
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
        let delay = Duration::from_millis(input.unwrap_or_default().reply_delay_ms);
        let mut count = 0u64;
        let handled = inbox::serve(POLL, |message| {
            if !delay.is_zero() {
                sleep(delay);
            }
            count += 1;
            Ok(Answer {
                echo: message.body.clone(),
                count,
            })
        })?;
        emit("chat_stopping", &json!({ "handled": handled }))?;
        Ok(Output { handled })
    }
}

drover_sdk::export_agent!(Chat);
