//! `drover:agent/inbox` for agents: `receive` and `reply` on the run's [`RunInbox`] (see
//! [`crate::inbox`] for when a message is delivered and acknowledged), each recorded on the
//! run's timeline as `message_received {messageId}` and `message_replied {messageId}`.
//!
//! A run blocked in `receive` waits inside [`RunContext::waiting`](crate::sandbox::RunContext),
//! so it holds no CPU slot while it waits (a long-lived agent's slot is not one anyway), and a
//! stop request ends the wait at once, with nothing delivered.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::bindings::drover::agent::inbox;
use super::bindings::drover::agent::types::Failure;
use super::state::HostState;
use crate::inbox::InboxError;
use crate::queue::ErrorInfo;
use crate::sandbox::RunContext;

/// Longest single `receive` wait a guest may ask for (it can loop).
const MAX_RECEIVE: Duration = Duration::from_secs(3600);
/// Longest message id a `reply` is looked up by (ids the host gives out are far shorter).
const MAX_ID_BYTES: usize = 256;

impl HostState {
    /// The run's inbox, or the error that ends a run on a host without inboxes.
    fn run_inbox(&mut self) -> wasmtime::Result<crate::inbox::RunInbox> {
        match &self.inbox {
            Some(inbox) => Ok(inbox.clone()),
            None => Err(self.fail(ErrorInfo::new(
                "InboxUnavailable",
                "this host gives its runs no inbox (drover:agent/inbox)",
            ))),
        }
    }
}

async fn record(ctx: &RunContext, kind: &str, id: &str) {
    match serde_json::value::to_raw_value(&json!({ "messageId": id })) {
        Ok(raw) => ctx.record_event(kind, Arc::from(raw)).await,
        Err(e) => tracing::warn!(error = %e, "cannot encode an inbox event"),
    }
}

fn failure(tag: &str, message: String, retryable: bool) -> Failure {
    Failure {
        tag: tag.to_string(),
        message,
        retryable,
    }
}

impl inbox::Host for HostState {
    async fn receive(&mut self, timeout_ms: u64) -> wasmtime::Result<Option<inbox::Message>> {
        let ctx = self.run_ctx()?.clone();
        let run_inbox = self.run_inbox()?;
        if ctx.stop_requested() {
            return Ok(None);
        }
        let timeout = Duration::from_millis(timeout_ms).min(MAX_RECEIVE);
        let control = Arc::clone(ctx.control());
        let received = ctx
            .waiting(run_inbox.receive(timeout, async move { control.stopped().await }))
            .await;
        match received {
            Ok(Some(message)) => {
                self.work.add(message.id.len() + message.body.get().len());
                record(&ctx, "message_received", &message.id).await;
                Ok(Some(inbox::Message {
                    id: message.id,
                    body: message.body.get().to_string(),
                }))
            }
            Ok(None) => Ok(None),
            // The agent asks again; a database that is down for long fails its lease anyway.
            Err(e) => {
                tracing::warn!(run_id = %ctx.run_id(), error = %e, "cannot read the run's inbox");
                Ok(None)
            }
        }
    }

    async fn reply(
        &mut self,
        message_id: String,
        body: String,
    ) -> wasmtime::Result<Result<(), Failure>> {
        self.work.add(message_id.len() + body.len());
        let ctx = self.run_ctx()?.clone();
        let run_inbox = self.run_inbox()?;
        if message_id.len() > MAX_ID_BYTES {
            return Ok(Err(failure(
                "UnknownMessage",
                "no message with so long an id was sent to this agent".into(),
                false,
            )));
        }
        match run_inbox.reply(&message_id, body).await {
            Ok(_) => {
                record(&ctx, "message_replied", &message_id).await;
                Ok(Ok(()))
            }
            Err(InboxError::Reply(refusal)) => {
                Ok(Err(failure(refusal.tag(), refusal.to_string(), false)))
            }
            Err(e @ InboxError::TooLarge { .. }) => {
                Ok(Err(failure("ReplyTooLarge", e.to_string(), false)))
            }
            Err(e @ InboxError::InvalidReply(_)) => {
                Ok(Err(failure("InvalidReply", e.to_string(), false)))
            }
            Err(e) => {
                tracing::warn!(run_id = %ctx.run_id(), error = %e, "cannot write a reply");
                Ok(Err(failure(
                    "InboxUnavailable",
                    "the host cannot write the reply now; try again".into(),
                    true,
                )))
            }
        }
    }
}
