//! Messages to long-lived agents: each agent's job has a durable inbox in the queue database,
//! which producers post to (`POST /v1/agents/{id}/messages`) and the agent reads with the
//! `drover:agent/inbox` interface, replying to each message.
//!
//! Like Spin's factors, the capability has three parts here and its linker glue in
//! `sandbox/wasm/inbox.rs`:
//!
//! * the operator's config ([`InboxConfig`], `[inbox]` in `drover.toml`): the largest message
//!   (and reply), and how many unhandled messages one agent may have waiting;
//! * the queue operations ([`Inbox`]): post, deliver, acknowledge, reply, list, wait for a
//!   reply, on a table of the queue database with its own migrations (component `inbox`);
//! * the per-run state ([`RunInbox`]): the job and the run a guest's calls speak for.
//!
//! # Delivery
//!
//! Every message is delivered **at least once** and in the order it was posted:
//!
//! * `receive` delivers the oldest message of the job that is not acknowledged and not
//!   delivered to the calling run already, and records which run got it and when;
//! * a message is **acknowledged** when the agent replies to it, or when the run that got it
//!   asks for the next message (`receive` again): either means the agent has handled it. Ending
//!   a run acknowledges nothing;
//! * a message delivered but not acknowledged when its run ends — the run failed, was stopped,
//!   or its host died — is delivered again to the job's next run (a long-lived agent restarted
//!   on this host or another). Nothing is lost; a message may be handled twice.
//!
//! A message is acknowledged at most once and replied to at most once; its reply is kept with
//! it. Waiters (a `POST … ?waitMs=` for the reply, a run blocked in `receive`) are woken at once
//! by the queue's in-process notifications when the other side is in the same process, and find
//! it by polling the database (within [`POLL_MAX`]) when it is in another host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libsql::Value;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::db::{Db, DbError, Migration, RowExt, query_all};
use crate::queue::{Hub, Queue};
use crate::time::now_ms;

/// Errors of inbox operations.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A message or reply is larger than the host allows.
    #[error("the {what} is {len} bytes; this host takes at most {max} bytes (max-message-bytes)")]
    TooLarge {
        /// `message` or `reply`.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The agent already has as many unhandled messages as the host allows.
    #[error(
        "agent {job_id} already has {max} messages waiting to be handled (max-queued-messages); \
         try again once it has caught up"
    )]
    Full {
        /// The agent's job.
        job_id: String,
        /// The limit.
        max: u32,
    },
    /// A reply names a message the run cannot reply to.
    #[error("{0}")]
    Reply(ReplyRefusal),
    /// A reply is not JSON.
    #[error("the reply is not JSON: {0}")]
    InvalidReply(String),
    /// The operator's settings are not valid.
    #[error("{0}")]
    Config(String),
}

/// Why a run may not reply to a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyRefusal {
    /// No message with that id was sent to this agent.
    #[error("no message {0} was sent to this agent")]
    Unknown(String),
    /// The message was not delivered to this run (it is another run's, or not received yet).
    #[error("message {0} was not delivered to this run")]
    NotDelivered(String),
    /// The message has a reply already.
    #[error("message {0} has been replied to already")]
    AlreadyReplied(String),
}

impl ReplyRefusal {
    /// The failure tag a guest sees.
    pub fn tag(&self) -> &'static str {
        match self {
            ReplyRefusal::Unknown(_) => "UnknownMessage",
            ReplyRefusal::NotDelivered(_) => "NotDelivered",
            ReplyRefusal::AlreadyReplied(_) => "AlreadyReplied",
        }
    }
}

/// The operator's settings (`[inbox]` in `drover.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct InboxConfig {
    /// The largest message, and the largest reply, in bytes of JSON text.
    pub max_message_bytes: usize,
    /// Most messages one agent may have posted and not yet acknowledged; a post past it is
    /// refused (`429 InboxFull`).
    pub max_queued_messages: u32,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 10,
            max_queued_messages: 1000,
        }
    }
}

/// The largest `max-message-bytes` accepted (a message travels in one request body).
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 1 << 20;

impl InboxConfig {
    /// Says what is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=MAX_MESSAGE_BYTES_LIMIT).contains(&self.max_message_bytes) {
            return Err(format!(
                "inbox: max-message-bytes must be between 2 and {MAX_MESSAGE_BYTES_LIMIT}, got {}",
                self.max_message_bytes
            ));
        }
        if self.max_queued_messages == 0 {
            return Err("inbox: max-queued-messages must be at least 1".into());
        }
        Ok(())
    }
}

/// Longest pause between two looks at the database while waiting (for a message, or for a
/// reply) on something another host does.
pub const POLL_MAX: Duration = Duration::from_millis(500);
/// Most messages one list returns.
pub const MAX_LIST: u32 = 500;

/// One message and what became of it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Its id.
    pub id: String,
    /// The agent (its job) it was sent to.
    pub job_id: String,
    /// Its JSON body.
    pub body: Arc<RawValue>,
    /// When it was posted (epoch ms).
    pub created_at: i64,
    /// The run it was delivered to last, if any.
    pub delivered_run_id: Option<String>,
    /// When it was delivered last.
    pub delivered_at: Option<i64>,
    /// How many times it was delivered (more than once if a run ended before handling it).
    pub deliveries: i64,
    /// When it was acknowledged (replied to, or its run asked for the next message).
    pub acked_at: Option<i64>,
    /// The agent's reply.
    pub reply: Option<Arc<RawValue>>,
    /// When the reply was written.
    pub replied_at: Option<i64>,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "inbox messages",
    sql: r#"
CREATE TABLE IF NOT EXISTS inbox_messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    delivered_run_id TEXT,
    delivered_at INTEGER,
    deliveries INTEGER NOT NULL DEFAULT 0,
    acked_at INTEGER,
    reply TEXT,
    replied_at INTEGER
);
-- A job's messages in order (lists, counts).
CREATE INDEX IF NOT EXISTS inbox_job ON inbox_messages (job_id, seq);
-- What is left to hand out: only messages not acknowledged are in it.
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox_messages (job_id, seq) WHERE acked_at IS NULL;
"#,
}];

const COLUMNS: &str = "id, job_id, body, created_at, delivered_run_id, delivered_at, deliveries, \
                       acked_at, reply, replied_at";

/// The inboxes of every agent on a queue database. Cheap to clone; clones, and every inbox
/// opened on the same [`Queue`], share in-process notifications.
#[derive(Clone)]
pub struct Inbox {
    db: Db,
    hub: Arc<Hub>,
    config: Arc<InboxConfig>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("config", &self.config)
            .finish()
    }
}

/// The in-process notification key of "a message was posted to `job_id`". Keys share the
/// queue's job watchers; a job id never holds a control character, so these never name a job.
fn posted_key(job_id: &str) -> String {
    format!("\u{1}inbox-posted:{job_id}")
}

/// The notification key of "message `id` has a reply".
fn replied_key(id: &str) -> String {
    format!("\u{1}inbox-replied:{id}")
}

impl Inbox {
    /// The inboxes on `queue`'s database, creating and migrating their table as needed.
    pub async fn open(queue: &Queue, config: InboxConfig) -> Result<Self, InboxError> {
        config.validate().map_err(InboxError::Config)?;
        let db = queue.db().clone();
        db.migrate("inbox", MIGRATIONS).await?;
        Ok(Self {
            db,
            hub: Arc::clone(queue.hub()),
            config: Arc::new(config),
        })
    }

    /// The operator's settings.
    pub fn config(&self) -> &InboxConfig {
        &self.config
    }

    /// The state of one run of `job_id`.
    pub fn for_run(&self, job_id: &str, run_id: &str) -> RunInbox {
        RunInbox {
            inbox: self.clone(),
            job_id: job_id.to_string(),
            run_id: run_id.to_string(),
        }
    }

    /// Appends `body` to the inbox of `job_id` (whose existence, lifecycle and tenant the
    /// caller has checked). Fails with [`InboxError::TooLarge`] or [`InboxError::Full`].
    pub async fn post(&self, job_id: &str, body: &RawValue) -> Result<Message, InboxError> {
        let len = body.get().len();
        if len > self.config.max_message_bytes {
            return Err(InboxError::TooLarge {
                what: "message",
                len,
                max: self.config.max_message_bytes,
            });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let max = self.config.max_queued_messages;
        let params = vec![
            Value::Text(id),
            Value::Text(job_id.to_string()),
            Value::Text(body.get().to_string()),
            Value::Integer(now_ms()),
            Value::Integer(i64::from(max)),
        ];
        let sql = format!(
            "INSERT INTO inbox_messages (id, job_id, body, created_at)
             SELECT ?1, ?2, ?3, ?4
             WHERE (SELECT count(*) FROM inbox_messages WHERE job_id = ?2 AND acked_at IS NULL) < ?5
             RETURNING {COLUMNS}"
        );
        let mut rows = self
            .db
            .write_or_shed(move |conn| async move { query_all(&conn, &sql, params, decode).await })
            .await?;
        let message = rows.pop().ok_or_else(|| InboxError::Full {
            job_id: job_id.to_string(),
            max,
        })?;
        self.hub.notify_terminal([posted_key(job_id).as_str()]);
        Ok(message)
    }

    /// One message by id.
    pub async fn get(&self, id: &str) -> Result<Option<Message>, InboxError> {
        let id = id.to_string();
        let sql = format!("SELECT {COLUMNS} FROM inbox_messages WHERE id = ?1");
        let mut rows = self.db.query(sql, [id], decode).await?;
        Ok(rows.pop())
    }

    /// The latest `limit` (at most [`MAX_LIST`]) messages of `job_id`, oldest first.
    pub async fn list(&self, job_id: &str, limit: u32) -> Result<Vec<Message>, InboxError> {
        let params = vec![
            Value::Text(job_id.to_string()),
            Value::Integer(i64::from(limit.clamp(1, MAX_LIST))),
        ];
        let sql = format!(
            "SELECT {COLUMNS} FROM (SELECT * FROM inbox_messages WHERE job_id = ?1
                                    ORDER BY seq DESC LIMIT ?2) ORDER BY seq"
        );
        Ok(self.db.query(sql, params, decode).await?)
    }

    /// Waits up to `timeout` for message `id` to have a reply; returns the message as it is
    /// then (with or without its reply), or `None` if there is no such message.
    pub async fn wait_reply(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<Message>, InboxError> {
        let deadline = Instant::now() + timeout;
        let watch = self.hub.watch(&replied_key(id));
        let mut poll = Duration::from_millis(10);
        loop {
            let notified = watch.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let message = self.get(id).await?;
            let now = Instant::now();
            match message {
                Some(message) if message.reply.is_none() && now < deadline => {}
                other => return Ok(other),
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(poll.min(deadline - now)) => {}
            }
            poll = (poll * 2).min(POLL_MAX);
        }
    }

    /// Deletes the messages of jobs that are gone (pruned by retention), at most `batch` per
    /// statement; returns how many went. The messages of a job go with it, never before.
    pub async fn prune_orphans(&self, batch: usize) -> Result<u64, InboxError> {
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let mut removed = 0;
        loop {
            let deleted = self
                .db
                .write(move |conn| async move {
                    Ok(conn
                        .execute(
                            "DELETE FROM inbox_messages WHERE seq IN (
                                 SELECT m.seq FROM inbox_messages m
                                 WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = m.job_id)
                                 ORDER BY m.seq LIMIT ?1)",
                            [batch],
                        )
                        .await?)
                })
                .await?;
            removed += deleted;
            if deleted < batch.unsigned_abs() {
                return Ok(removed);
            }
        }
    }

    /// Acknowledges the messages delivered to `run_id` of `job_id` and not yet acknowledged.
    async fn ack_delivered(&self, job_id: &str, run_id: &str) -> Result<(), InboxError> {
        let params = vec![
            Value::Text(job_id.to_string()),
            Value::Text(run_id.to_string()),
            Value::Integer(now_ms()),
        ];
        self.db
            .write_relaxed(move |conn| async move {
                conn.execute(
                    "UPDATE inbox_messages SET acked_at = ?3
                     WHERE job_id = ?1 AND acked_at IS NULL AND delivered_run_id = ?2",
                    params,
                )
                .await?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Whether `job_id` has a message `run_id` could be given now (a read, for polling).
    async fn has_pending(&self, job_id: &str, run_id: &str) -> Result<bool, InboxError> {
        let params = vec![
            Value::Text(job_id.to_string()),
            Value::Text(run_id.to_string()),
        ];
        let rows = self
            .db
            .query(
                "SELECT 1 FROM inbox_messages WHERE job_id = ?1 AND acked_at IS NULL
                       AND (delivered_run_id IS NULL OR delivered_run_id <> ?2) LIMIT 1",
                params,
                |row| row.int(0),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Delivers the oldest message of `job_id` that is not acknowledged and not delivered to
    /// `run_id` yet, if there is one.
    async fn deliver(&self, job_id: &str, run_id: &str) -> Result<Option<Message>, InboxError> {
        let params = vec![
            Value::Text(job_id.to_string()),
            Value::Text(run_id.to_string()),
            Value::Integer(now_ms()),
        ];
        let sql = format!(
            "UPDATE inbox_messages
                SET delivered_run_id = ?2, delivered_at = ?3, deliveries = deliveries + 1
              WHERE seq = (SELECT seq FROM inbox_messages
                            WHERE job_id = ?1 AND acked_at IS NULL
                              AND (delivered_run_id IS NULL OR delivered_run_id <> ?2)
                            ORDER BY seq LIMIT 1)
              RETURNING {COLUMNS}"
        );
        // A delivery lost to a power cut is made again: the message is still unacknowledged.
        let mut rows = self
            .db
            .write_relaxed(move |conn| async move { query_all(&conn, &sql, params, decode).await })
            .await?;
        Ok(rows.pop())
    }

    /// Records `body` as the reply of `run_id` to message `id` of `job_id`, and acknowledges
    /// the message.
    async fn reply(
        &self,
        job_id: &str,
        run_id: &str,
        id: &str,
        body: String,
    ) -> Result<Message, InboxError> {
        if body.len() > self.config.max_message_bytes {
            return Err(InboxError::TooLarge {
                what: "reply",
                len: body.len(),
                max: self.config.max_message_bytes,
            });
        }
        if let Err(e) = serde_json::from_str::<&RawValue>(&body) {
            return Err(InboxError::InvalidReply(e.to_string()));
        }
        let now = now_ms();
        let params = vec![
            Value::Text(job_id.to_string()),
            Value::Text(run_id.to_string()),
            Value::Text(id.to_string()),
            Value::Text(body),
            Value::Integer(now),
        ];
        let sql = format!(
            "UPDATE inbox_messages SET reply = ?4, replied_at = ?5, acked_at = coalesce(acked_at, ?5)
              WHERE id = ?3 AND job_id = ?1 AND delivered_run_id = ?2 AND reply IS NULL
              RETURNING {COLUMNS}"
        );
        let mut rows = self
            .db
            .write(move |conn| async move { query_all(&conn, &sql, params, decode).await })
            .await?;
        if let Some(message) = rows.pop() {
            self.hub.notify_terminal([replied_key(id).as_str()]);
            return Ok(message);
        }
        let refusal = match self.get(id).await? {
            Some(m) if m.job_id == job_id && m.reply.is_some() => {
                ReplyRefusal::AlreadyReplied(id.to_string())
            }
            Some(m) if m.job_id == job_id => ReplyRefusal::NotDelivered(id.to_string()),
            _ => ReplyRefusal::Unknown(id.to_string()),
        };
        Err(InboxError::Reply(refusal))
    }
}

/// The inbox as one run of a long-lived agent sees it: its job's messages, delivered to it.
#[derive(Debug, Clone)]
pub struct RunInbox {
    inbox: Inbox,
    job_id: String,
    run_id: String,
}

impl RunInbox {
    /// The job whose messages these are.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Acknowledges what this run was given before (it asks for the next message: it has
    /// handled those), then waits up to `timeout` for the next message and delivers it to this
    /// run. Returns `None` when none came in time, or as soon as `stop` resolves (a stop
    /// request) — in which case nothing is delivered.
    pub async fn receive(
        &self,
        timeout: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<Option<Message>, InboxError> {
        let (job, run) = (self.job_id.as_str(), self.run_id.as_str());
        self.inbox.ack_delivered(job, run).await?;
        let deadline = Instant::now() + timeout;
        let watch = self.inbox.hub.watch(&posted_key(job));
        tokio::pin!(stop);
        let mut poll = Duration::from_millis(10);
        let mut look = true;
        loop {
            let notified = watch.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if look && let Some(message) = self.inbox.deliver(job, run).await? {
                return Ok(Some(message));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Woken by a post in this process: deliver at once. After a pause: read first, and
            // write only if there is something to deliver (another host posted).
            look = tokio::select! {
                biased;
                () = &mut stop => return Ok(None),
                () = &mut notified => true,
                () = tokio::time::sleep(poll.min(deadline - now)) => {
                    poll = (poll * 2).min(POLL_MAX);
                    self.inbox.has_pending(job, run).await?
                }
            };
        }
    }

    /// Replies to message `id` (delivered to this run) with `body` (JSON text), which also
    /// acknowledges it; wakes whoever waits for the reply.
    pub async fn reply(&self, id: &str, body: String) -> Result<Message, InboxError> {
        self.inbox.reply(&self.job_id, &self.run_id, id, body).await
    }
}

fn parse_raw(text: String) -> Result<Arc<RawValue>, DbError> {
    RawValue::from_string(text)
        .map(Arc::from)
        .map_err(|e| DbError::Decode(format!("stored JSON is invalid: {e}")))
}

fn decode(row: &libsql::Row) -> Result<Message, DbError> {
    Ok(Message {
        id: row.text(0)?,
        job_id: row.text(1)?,
        body: parse_raw(row.text(2)?)?,
        created_at: row.int(3)?,
        delivered_run_id: row.opt_text(4)?,
        delivered_at: row.opt_int(5)?,
        deliveries: row.int(6)?,
        acked_at: row.opt_int(7)?,
        reply: row.opt_text(8)?.map(parse_raw).transpose()?,
        replied_at: row.opt_int(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).expect("json")
    }

    async fn inbox(config: InboxConfig) -> (tempfile::TempDir, Inbox) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("file:{}", dir.path().join("queue.db").display());
        let queue = Queue::open(&url, None).await.expect("queue");
        let inbox = Inbox::open(&queue, config).await.expect("inbox");
        (dir, inbox)
    }

    const NOW: Duration = Duration::ZERO;

    #[tokio::test]
    async fn a_message_is_delivered_in_order_replied_to_and_acknowledged() {
        let (_dir, inbox) = inbox(InboxConfig::default()).await;
        let first = inbox
            .post("agent-1", &raw(r#"{"n":1}"#))
            .await
            .expect("post");
        let second = inbox
            .post("agent-1", &raw(r#"{"n":2}"#))
            .await
            .expect("post");
        inbox.post("agent-2", &raw("3")).await.expect("other agent");
        let run = inbox.for_run("agent-1", "run-a");
        let got = run
            .receive(NOW, std::future::pending())
            .await
            .expect("receive")
            .expect("a message");
        assert_eq!(got.id, first.id);
        assert_eq!(got.body.get(), r#"{"n":1}"#);
        assert_eq!(got.delivered_run_id.as_deref(), Some("run-a"));
        assert_eq!(got.deliveries, 1);
        let replied = run.reply(&got.id, "\"one\"".into()).await.expect("reply");
        assert_eq!(replied.reply.as_deref().map(RawValue::get), Some("\"one\""));
        assert!(replied.acked_at.is_some());
        // Replying twice, to a message not delivered, to another agent's: each refused.
        let refusal = |e: InboxError| match e {
            InboxError::Reply(r) => r.tag(),
            other => panic!("{other}"),
        };
        assert_eq!(
            refusal(run.reply(&got.id, "1".into()).await.expect_err("twice")),
            "AlreadyReplied"
        );
        assert_eq!(
            refusal(
                run.reply(&second.id, "1".into())
                    .await
                    .expect_err("not yet")
            ),
            "NotDelivered"
        );
        assert_eq!(
            refusal(run.reply("nope", "1".into()).await.expect_err("unknown")),
            "UnknownMessage"
        );
        assert!(matches!(
            run.reply(&got.id, "not json".into()).await,
            Err(InboxError::InvalidReply(_))
        ));
        let next = run
            .receive(NOW, std::future::pending())
            .await
            .expect("receive")
            .expect("the second");
        assert_eq!(next.id, second.id);
        // Asking for the next one acknowledges the second, unreplied.
        assert!(
            run.receive(NOW, std::future::pending())
                .await
                .expect("receive")
                .is_none()
        );
        let listed = inbox.list("agent-1", 10).await.expect("list");
        assert_eq!(listed.len(), 2);
        assert!(listed[1].acked_at.is_some() && listed[1].reply.is_none());
    }

    #[tokio::test]
    async fn a_message_its_run_did_not_handle_goes_to_the_next_run() {
        let (_dir, inbox) = inbox(InboxConfig::default()).await;
        let posted = inbox.post("agent", &raw("\"hi\"")).await.expect("post");
        let dead = inbox.for_run("agent", "run-1");
        let got = dead
            .receive(NOW, std::future::pending())
            .await
            .expect("receive")
            .expect("message");
        assert_eq!(got.id, posted.id);
        // The same run does not get it twice; the next run does.
        assert!(
            dead.receive(NOW, std::future::pending())
                .await
                .expect("receive")
                .is_none(),
        );
        let again = inbox.post("agent", &raw("\"again\"")).await.expect("post");
        let next = inbox.for_run("agent", "run-2");
        let got = next
            .receive(NOW, std::future::pending())
            .await
            .expect("receive")
            .expect("message");
        // run-1's second receive acknowledged the first message: run-2 gets the second.
        assert_eq!(got.id, again.id);

        // A run that dies holding a message: the next run gets it again.
        let crashed = inbox.for_run("agent", "run-3");
        let third = inbox.post("agent", &raw("3")).await.expect("post");
        // run-2 still holds `again`, unacknowledged: run-3 gets it first, then the third.
        let got = crashed
            .receive(NOW, std::future::pending())
            .await
            .expect("receive")
            .expect("message");
        assert_eq!(got.id, again.id);
        assert_eq!(got.deliveries, 2);
        let got = inbox
            .for_run("agent", "run-4")
            .receive(NOW, std::future::pending())
            .await
            .expect("receive")
            .expect("message");
        assert_eq!(got.id, again.id, "still unacknowledged");
        assert_eq!(got.deliveries, 3);
        drop(third);
    }

    #[tokio::test]
    async fn the_messages_of_a_job_that_is_gone_are_pruned_with_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("file:{}", dir.path().join("queue.db").display());
        let queue = Queue::open(&url, None).await.expect("queue");
        let inbox = Inbox::open(&queue, InboxConfig::default())
            .await
            .expect("inbox");
        queue
            .enqueue(crate::queue::NewJob::new("chat", &serde_json::Value::Null).id("alive"))
            .await
            .expect("enqueue");
        for _ in 0..3 {
            inbox.post("alive", &raw("1")).await.expect("post");
            inbox.post("gone", &raw("2")).await.expect("post");
        }
        assert_eq!(inbox.prune_orphans(2).await.expect("prune"), 3);
        assert_eq!(inbox.list("alive", 10).await.expect("list").len(), 3);
        assert!(inbox.list("gone", 10).await.expect("list").is_empty());
        assert_eq!(inbox.prune_orphans(2).await.expect("prune"), 0);
    }

    #[tokio::test]
    async fn limits_are_the_operators() {
        let (_dir, inbox) = inbox(InboxConfig {
            max_message_bytes: 8,
            max_queued_messages: 2,
        })
        .await;
        assert!(matches!(
            inbox.post("a", &raw("\"123456789\"")).await,
            Err(InboxError::TooLarge {
                len: 11,
                max: 8,
                ..
            })
        ));
        inbox.post("a", &raw("1")).await.expect("first");
        inbox.post("a", &raw("2")).await.expect("second");
        assert!(matches!(
            inbox.post("a", &raw("3")).await,
            Err(InboxError::Full { max: 2, .. })
        ));
        inbox
            .post("b", &raw("1"))
            .await
            .expect("another agent's inbox");
        let run = inbox.for_run("a", "r");
        let got = run
            .receive(NOW, std::future::pending())
            .await
            .expect("receive")
            .expect("message");
        assert!(matches!(
            run.reply(&got.id, "\"123456789\"".into()).await,
            Err(InboxError::TooLarge { what: "reply", .. })
        ));
        run.reply(&got.id, "true".into()).await.expect("reply");
        inbox.post("a", &raw("3")).await.expect("room again");
        assert!(
            InboxConfig {
                max_queued_messages: 0,
                ..InboxConfig::default()
            }
            .validate()
            .is_err()
        );
    }

    #[tokio::test]
    async fn a_waiting_receive_is_woken_by_a_post_and_a_stop_ends_it_empty() {
        let (_dir, inbox) = inbox(InboxConfig::default()).await;
        let run = inbox.for_run("agent", "run");
        let waiting = tokio::spawn({
            let run = run.clone();
            async move {
                run.receive(Duration::from_secs(600), std::future::pending())
                    .await
            }
        });
        tokio::task::yield_now().await;
        let posted = inbox.post("agent", &raw("1")).await.expect("post");
        let got = waiting
            .await
            .expect("task")
            .expect("receive")
            .expect("message");
        assert_eq!(got.id, posted.id);
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            let id = got.id.clone();
            async move { inbox.wait_reply(&id, Duration::from_secs(600)).await }
        });
        tokio::task::yield_now().await;
        run.reply(&got.id, "2".into()).await.expect("reply");
        let replied = waiter.await.expect("task").expect("wait").expect("message");
        assert_eq!(replied.reply.as_deref().map(RawValue::get), Some("2"));

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let waiting = tokio::spawn({
            let run = run.clone();
            async move {
                run.receive(Duration::from_secs(600), async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        stop.send(()).expect("send");
        assert!(waiting.await.expect("task").expect("receive").is_none());
    }
}
