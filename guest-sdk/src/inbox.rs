//! Messages to a long-lived agent: producers post JSON to its inbox (`POST
//! /v1/agents/{id}/messages`); the agent takes them one at a time with [`receive`] and answers
//! each with [`reply`], or lets [`serve`] do both until it is asked to stop:
//!
//! ```no_run
//! use drover_sdk::{Agent, Error, Lifecycle, Value, inbox, json};
//!
//! struct Chat;
//!
//! impl Agent for Chat {
//!     type Input = Value;
//!     type Output = Value;
//!     const LIFECYCLE: Lifecycle = Lifecycle::LongLived;
//!
//!     fn run(_input: Value) -> Result<Value, Error> {
//!         let handled = inbox::serve(inbox::DEFAULT_POLL, |message| {
//!             Ok(json!({ "echo": message.body }))
//!         })?;
//!         Ok(json!({ "handled": handled }))
//!     }
//! }
//! ```
//!
//! Every message is delivered at least once, in order. It is acknowledged when the agent
//! replies, or when it asks for the next message; one the agent got but had not acknowledged
//! when its run ended (a crash, its host killed) comes again to its next run.

use std::time::Duration;

use serde::Serialize;

use crate::__private::drover::agent::inbox as wit;
use crate::{Error, Value, heartbeat, stop_requested};

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its id: [`reply`] names it.
    pub id: String,
    /// What the producer posted.
    pub body: Value,
}

/// How long [`serve`] waits for a message before it heartbeats and looks again.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);

/// Acknowledges the message received last (if any), then waits up to `timeout` for the next
/// one. `None`: none came in time, or a stop was requested (check [`stop_requested`]).
pub fn receive(timeout: Duration) -> Result<Option<Message>, Error> {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let Some(message) = wit::receive(timeout_ms) else {
        return Ok(None);
    };
    let body = serde_json::from_str(&message.body)?;
    Ok(Some(Message {
        id: message.id,
        body,
    }))
}

/// Replies to message `id` (one this run received) with `body`, which acknowledges it.
pub fn reply(id: &str, body: &impl Serialize) -> Result<(), Error> {
    let body = serde_json::to_string(body)?;
    wit::reply(id, &body).map_err(|f| Error {
        tag: f.tag,
        message: f.message,
        retryable: f.retryable,
    })
}

/// The message loop of a chat-like agent: until a stop is requested, heartbeats, waits up to
/// `poll` for a message, and replies to each with what `handle` returns. Returns how many
/// messages it handled. An error of `handle` (or of a reply) ends the loop with that error;
/// the message it was handling is then delivered again to the agent's next run.
pub fn serve<R: Serialize>(
    poll: Duration,
    mut handle: impl FnMut(&Message) -> Result<R, Error>,
) -> Result<u64, Error> {
    let mut handled = 0;
    while !stop_requested() {
        heartbeat();
        let Some(message) = receive(poll)? else {
            continue;
        };
        let answer = handle(&message)?;
        reply(&message.id, &answer)?;
        handled += 1;
    }
    Ok(handled)
}
