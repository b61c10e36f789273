//! libsql databases: opening them from URLs, per-connection settings, versioned migrations and
//! typed access to result rows.
//!
//! Three kinds of URL are understood:
//!
//! * `file:./var/queue.db` (or a bare path): an embedded database file, opened in WAL mode with a
//!   busy timeout so that several processes can share it, and synced at every commit unless
//!   [`DbOptions::sync`] says otherwise;
//! * `:memory:`: a private in-memory database (one connection, shared by every user of the [`Db`]);
//! * `libsql://…`, `http://…`, `https://…`: a remote libsql server (sqld, Turso), with an optional
//!   auth token.
//!
//! Everything above this module is written as single statements (rows in one JSON parameter,
//! `UPDATE … RETURNING`), never as interactive transactions, so the remote mode costs one round trip
//! per statement; statements that belong together (a claim and the promotion before it, the
//! statements of a bulk write) go to a remote server as one transaction in one round trip
//! ([`transaction_batch`]).

use std::collections::HashMap;
use std::future::Future;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libsql::{Connection, Statement, Value};

mod bulk;

pub use bulk::{Bulk, Rows, inline_params, transaction_batch};
use bulk::{bulk_multi_row, bulk_prepared};

/// How long a local connection waits for another writer before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL could not be understood.
    #[error("invalid database url {url:?}: {reason}")]
    InvalidUrl {
        /// The offending URL.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The database could not be opened or created.
    #[error("cannot open database {url}: {message}")]
    Open {
        /// The database URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Sql(#[from] libsql::Error),
    /// A row did not have the shape the code expected (a schema mismatch).
    #[error("unexpected database value: {0}")]
    Decode(String),
    /// The database's schema is newer than this build knows: it was migrated by a later
    /// version of the host.
    #[error(
        "the {component} schema of this database is at version {found}, newer than this build \
         knows (version {known}): run a build at least as new as the one that migrated it"
    )]
    SchemaTooNew {
        /// Which schema (`queue`, `store`).
        component: &'static str,
        /// The version recorded in the database.
        found: i64,
        /// The latest version this build has.
        known: i64,
    },
    /// A migration failed.
    #[error("migration {component}/{version} failed: {message}")]
    Migration {
        /// Which schema (`queue`, `store`).
        component: &'static str,
        /// The migration version.
        version: i64,
        /// What went wrong.
        message: String,
    },
    /// An operation panicked on the database's writer thread (a bug); the thread carries on
    /// with the next operation.
    #[error("a database operation panicked: {0}")]
    Panicked(String),
    /// The database's writer is too far behind to take more work now; try again shortly.
    #[error("the database is overloaded: {pending} writes are waiting")]
    Overloaded {
        /// Writes waiting for the writer.
        pending: usize,
    },
    /// The database's writer thread is gone; nothing more can be written.
    #[error("the database's writer thread stopped")]
    WriterStopped,
    /// A remote server did not answer in time (the network lost the request or the response,
    /// or the server hangs). A write that timed out may or may not have applied.
    #[error("the database server did not answer within {}s", .after.as_secs())]
    TimedOut {
        /// How long the operation waited.
        after: Duration,
    },
}

/// What a failed database operation says about trying it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A passing condition (a held lock, a full disk, an I/O error, an unreachable server): the
    /// same operation can succeed later.
    Transient,
    /// The operation itself is at fault (a constraint, a value too big, a bug): trying it again
    /// unchanged would fail the same way.
    Permanent,
}

/// SQLite's primary result codes of passing conditions.
const TRANSIENT_CODES: &[i32] = &[
    5,  // SQLITE_BUSY
    6,  // SQLITE_LOCKED
    7,  // SQLITE_NOMEM
    9,  // SQLITE_INTERRUPT
    10, // SQLITE_IOERR
    13, // SQLITE_FULL
    14, // SQLITE_CANTOPEN
    15, // SQLITE_PROTOCOL
];

/// Error names a remote server puts in its messages for conditions that pass.
const TRANSIENT_NAMES: &[&str] = &[
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_NOMEM",
    "SQLITE_INTERRUPT",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_PROTOCOL",
    "STREAM_EXPIRED",
];

impl DbError {
    /// Whether trying the operation again could succeed.
    pub fn retry(&self) -> Retry {
        match self {
            DbError::Open { .. }
            | DbError::Overloaded { .. }
            | DbError::WriterStopped
            | DbError::TimedOut { .. } => Retry::Transient,
            DbError::Sql(e) => classify_libsql(e),
            DbError::InvalidUrl { .. }
            | DbError::Decode(_)
            | DbError::Migration { .. }
            | DbError::SchemaTooNew { .. }
            | DbError::Panicked(_) => Retry::Permanent,
        }
    }

    /// Whether trying the operation again could succeed (see [`DbError::retry`]).
    pub fn is_transient(&self) -> bool {
        self.retry() == Retry::Transient
    }
}

fn classify_libsql(error: &libsql::Error) -> Retry {
    let code = |code: i32| {
        if TRANSIENT_CODES.contains(&(code & 0xff)) {
            Retry::Transient
        } else {
            Retry::Permanent
        }
    };
    match error {
        libsql::Error::SqliteFailure(c, _) => code(*c),
        libsql::Error::RemoteSqliteFailure(c, extended, _) => {
            if code(*c) == Retry::Transient || code(*extended) == Retry::Transient {
                Retry::Transient
            } else {
                Retry::Permanent
            }
        }
        // Connection and protocol errors of a remote server: the network, a restart, an
        // expired stream, a 5xx. A statement the server refused names its SQLite error.
        libsql::Error::ConnectionFailed(_)
        | libsql::Error::Hrana(_)
        | libsql::Error::WriteDelegation(_)
        | libsql::Error::Replication(_)
        | libsql::Error::Sync(_) => {
            let message = error.to_string();
            if message.contains("SQLITE_") && !TRANSIENT_NAMES.iter().any(|n| message.contains(n)) {
                Retry::Permanent
            } else {
                Retry::Transient
            }
        }
        _ => Retry::Permanent,
    }
}

/// When an embedded database file is synced to disk (SQLite's `synchronous` setting, in WAL
/// mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Every commit is synced before it returns (`synchronous=FULL`): once a write is
    /// acknowledged (an enqueue answered, an outcome recorded), a power cut or kernel crash does
    /// not take it back. The default.
    #[default]
    Full,
    /// The log is synced only at checkpoints (`synchronous=NORMAL`): faster commits, but a
    /// power cut or kernel crash (not a crash of the process) can lose the last acknowledged
    /// commits, never consistency.
    Normal,
}

impl SyncMode {
    /// The `PRAGMA synchronous` value.
    fn pragma(self) -> &'static str {
        match self {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        }
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(SyncMode::Full),
            "normal" => Ok(SyncMode::Normal),
            other => Err(format!("unknown sync mode {other:?} (use full or normal)")),
        }
    }
}

/// How a database is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbOptions {
    /// When an embedded database file is synced (no effect on other kinds).
    pub sync: SyncMode,
}

/// Where a database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbLocation {
    /// An embedded database file.
    File(PathBuf),
    /// A private in-memory database.
    Memory,
    /// A remote libsql server.
    Remote {
        /// The server URL (`libsql://`, `http://` or `https://`).
        url: String,
    },
}

impl DbLocation {
    /// Parses a database URL.
    pub fn parse(url: &str) -> Result<Self, DbError> {
        let invalid = |reason: &str| DbError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(invalid("empty"));
        }
        if trimmed == ":memory:" || trimmed == "file::memory:" {
            return Ok(Self::Memory);
        }
        for scheme in ["libsql://", "http://", "https://"] {
            if let Some(rest) = trimmed.strip_prefix(scheme) {
                if rest.is_empty() {
                    return Err(invalid("missing host"));
                }
                return Ok(Self::Remote {
                    url: trimmed.to_string(),
                });
            }
        }
        let path = trimmed.strip_prefix("file:").unwrap_or(trimmed);
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(invalid("missing file path"));
        }
        if path.contains("://") {
            return Err(invalid(
                "unknown scheme (expected file:, :memory:, libsql://, http:// or https://)",
            ));
        }
        Ok(Self::File(PathBuf::from(path)))
    }

    /// Whether statements travel over the network.
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Remote { .. })
    }
}

/// An open database. Reads run through [`Db::run`], which lends the operation a pooled
/// connection; for embedded databases (whose libsql calls block the calling thread) it does so on
/// tokio's blocking pool, so database work never stalls the threads that run guests. Writes run
/// through [`Db::write`]: an embedded database has one writer thread with a connection of its
/// own, which takes the writes of every task of the process one after the other. SQLite admits
/// one writer at a time anyway; queued in the process, writers neither collide on its lock (and
/// sleep in its busy handler) nor pay for a trip through the blocking pool each.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
    /// Whether [`Db::bulk`] sends multi-row statements (always, for a remote database).
    multi_row: bool,
}

/// An operation for the writer thread.
type WriteOp = Box<dyn FnOnce(&Conn) + Send>;

struct DbInner {
    location: DbLocation,
    url: String,
    database: Arc<libsql::Database>,
    /// The writer thread of an embedded database file, and its queue.
    writer: Option<tokio::sync::mpsc::Sender<WriteOp>>,
    /// Bounds the connections (and blocking-pool threads) that reads hold at once.
    readers: tokio::sync::Semaphore,
    /// Idle connections, reused by later operations.
    idle: Mutex<Vec<Conn>>,
    /// In-memory databases are private to a connection, so one connection serves every caller,
    /// one operation at a time.
    shared: Option<Mutex<Conn>>,
    /// When a database file is synced.
    sync: SyncMode,
    /// The lane a remote database's writes take (see [`WriteLane`]).
    lane: Option<Arc<WriteLane>>,
}

/// A remote server's writes from this process, one at a time: a server takes one writer at a
/// time, and writes of one process racing each other over several streams would only fail each
/// other with `SQLITE_BUSY`. Every [`Db`] opened on the same server URL (the queue, the run store,
/// each capability's tables) shares one lane.
#[derive(Debug)]
struct WriteLane {
    /// One permit: the write on the wire.
    permit: tokio::sync::Semaphore,
    /// Writes waiting for the permit.
    waiting: std::sync::atomic::AtomicUsize,
}

impl WriteLane {
    /// The lane of the server at `url`, shared with every other [`Db`] of this process on it.
    fn for_url(url: &str) -> Arc<Self> {
        static LANES: Mutex<Option<HashMap<String, std::sync::Weak<WriteLane>>>> = Mutex::new(None);
        let mut lanes = LANES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let lanes = lanes.get_or_insert_with(HashMap::new);
        lanes.retain(|_, lane| lane.strong_count() > 0);
        if let Some(lane) = lanes.get(url).and_then(std::sync::Weak::upgrade) {
            return lane;
        }
        let lane = Arc::new(WriteLane {
            permit: tokio::sync::Semaphore::new(1),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        });
        lanes.insert(url.to_string(), Arc::downgrade(&lane));
        lane
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("url", &self.inner.url).finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database at `url` with the default [`DbOptions`].
    /// `auth_token` is used by remote servers.
    pub async fn open(url: &str, auth_token: Option<&str>) -> Result<Self, DbError> {
        Self::open_with(url, auth_token, DbOptions::default()).await
    }

    /// Opens (creating if needed) the database at `url` with `options`.
    pub async fn open_with(
        url: &str,
        auth_token: Option<&str>,
        options: DbOptions,
    ) -> Result<Self, DbError> {
        let location = DbLocation::parse(url)?;
        let open_err = |message: String| DbError::Open {
            url: url.to_string(),
            message,
        };
        let database = match &location {
            DbLocation::File(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        open_err(format!("cannot create directory {}: {e}", parent.display()))
                    })?;
                }
                libsql::Builder::new_local(path).build().await
            }
            DbLocation::Memory => libsql::Builder::new_local(":memory:").build().await,
            DbLocation::Remote { url } => {
                libsql::Builder::new_remote(url.clone(), auth_token.unwrap_or_default().to_string())
                    .build()
                    .await
            }
        }
        .map_err(|e| open_err(e.to_string()))?;
        let database = Arc::new(database);

        let shared = match location {
            DbLocation::Memory => Some(Mutex::new(Conn::new(
                database.connect().map_err(|e| open_err(e.to_string()))?,
            ))),
            _ => None,
        };
        let writer = match location {
            DbLocation::File(_) => {
                let file = Arc::clone(&database);
                let conn =
                    tokio::task::spawn_blocking(move || file_connection(&file, options.sync))
                        .await
                        .map_err(|e| open_err(e.to_string()))?
                        .map_err(|e| open_err(e.to_string()))?;
                Some(
                    spawn_writer(conn)
                        .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?,
                )
            }
            _ => None,
        };
        let lane = match &location {
            DbLocation::Remote { url } => Some(WriteLane::for_url(url)),
            _ => None,
        };
        let db = Self {
            multi_row: location.is_remote(),
            inner: Arc::new(DbInner {
                location,
                url: url.to_string(),
                database,
                writer,
                readers: tokio::sync::Semaphore::new(MAX_READERS),
                idle: Mutex::new(Vec::new()),
                shared,
                sync: options.sync,
                lane,
            }),
        };
        // Touch the database now so that a bad path or an unreachable server fails at start-up.
        db.run(|conn| async move {
            let mut rows = conn.query("SELECT 1", ()).await?;
            while rows.next().await?.is_some() {}
            Ok(())
        })
        .await
        .map_err(|e| open_err(e.to_string()))?;
        Ok(db)
    }

    /// Makes [`Db::bulk`] send multi-row statements without a transaction around them, as it
    /// does for a remote database, here too. An embedded database then runs exactly the SQL a
    /// remote one gets, which is how that SQL is tested without a server.
    pub fn with_multi_row_statements(mut self) -> Self {
        self.multi_row = true;
        self
    }

    /// Whether [`Db::bulk`] sends multi-row statements without a transaction around them (a
    /// remote database, or one made to behave like it): no statement may rely on another's
    /// transaction then.
    pub fn sends_multi_row_statements(&self) -> bool {
        self.multi_row
    }

    /// The URL this database was opened from.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Where the database lives.
    pub fn location(&self) -> &DbLocation {
        &self.inner.location
    }

    /// Runs `op` with a connection of its own. Embedded databases run it on the blocking pool
    /// (libsql's local calls never yield); remote ones run it here, since it waits on the network.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send,
        T: Send + 'static,
    {
        let _permit = self
            .inner
            .readers
            .acquire()
            .await
            .map_err(|_| DbError::WriterStopped)?;
        if self.inner.location.is_remote() {
            // On a task of its own: the caller may be a guest's host call, running on a fiber
            // whose small stack the network client's deep futures would overflow.
            let inner = Arc::clone(&self.inner);
            return tokio::spawn(async move {
                let conn = inner.checkout()?;
                // The network client has no deadline of its own: a request lost on the way
                // (a dead link, a black-holed route) would be waited for forever.
                let result = tokio::time::timeout(REMOTE_OP_TIMEOUT, op(conn.clone()))
                    .await
                    .unwrap_or(Err(DbError::TimedOut {
                        after: REMOTE_OP_TIMEOUT,
                    }));
                // A remote connection that failed for a passing reason (its stream expired,
                // the server restarted, the network dropped) is not used again: the next
                // operation gets a new one rather than the same failure.
                if !matches!(&result, Err(e) if e.is_transient()) {
                    inner.checkin(conn);
                }
                result
            })
            .await
            .map_err(|e| DbError::Panicked(e.to_string()))?;
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.run_blocking(op))
            .await
            .map_err(|e| DbError::Open {
                url: String::new(),
                message: format!("database task failed: {e}"),
            })?
    }

    /// Runs `op`, which writes, with the database's writer connection (see [`Db`]); elsewhere
    /// as [`Db::run`] does. Waits while the writer's queue is full.
    pub async fn write<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send,
        T: Send + 'static,
    {
        self.write_with(op, Mode::Wait).await
    }

    /// Like [`Db::write`], for writes that need not survive a power cut on their own: claims,
    /// lease renewals, reclaims (a lost one is made again; a job whose claim is lost is simply
    /// claimed again). On a file synced at every commit ([`SyncMode::Full`]) they commit without
    /// a sync of their own; the next durable commit syncs the log, theirs with it. Nothing a
    /// producer was told is stored, nor any outcome, is ever written this way.
    pub async fn write_relaxed<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send,
        T: Send + 'static,
    {
        self.write_with(op, Mode::Relaxed).await
    }

    /// Like [`Db::write`], but fails at once with [`DbError::Overloaded`] instead of waiting
    /// when the writer is behind: for work from outside (an enqueue over HTTP) that is better
    /// refused than left to pile up in memory.
    pub async fn write_or_shed<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send,
        T: Send + 'static,
    {
        self.write_with(op, Mode::Shed).await
    }

    /// Like [`Db::write`] for an operation that is idempotent (applied twice, it leaves what
    /// applying it once does): on a remote database, a passing failure (the server busy, a query
    /// interrupted, a stream expired, the connection lost) is tried again with a doubling backoff
    /// for up to [`REMOTE_RETRY_FOR`], so that the caller rarely hears of it. An operation whose
    /// response was lost may have applied, so only one that can be applied again goes here.
    pub async fn write_idempotent<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: Fn(Conn) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send,
        T: Send + 'static,
    {
        self.retrying(op, Mode::Wait).await
    }

    /// [`Db::write_idempotent`] that sheds load as [`Db::write_or_shed`] does: for idempotent
    /// writes from outside (an enqueue with its id).
    pub async fn write_or_shed_idempotent<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: Fn(Conn) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send,
        T: Send + 'static,
    {
        self.retrying(op, Mode::Shed).await
    }

    async fn retrying<T, F, Fut>(&self, op: F, mode: Mode) -> Result<T, DbError>
    where
        F: Fn(Conn) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send,
        T: Send + 'static,
    {
        self.again_while_passing(|| self.write_with(op.clone(), mode))
            .await
    }

    /// Runs `attempt` until it succeeds, fails for good, or (on a remote database) has gone on
    /// failing for passing reasons for [`REMOTE_RETRY_FOR`] since its first failure; an
    /// embedded database is tried once (its own busy handling waits for locks). A write shed
    /// for overload is not tried again, nor one that timed out (it waited longer than the window
    /// already). The window opens at the first failure, not at the call: time spent waiting for
    /// the write lane behind this process's other writes is not failure.
    async fn again_while_passing<T, A, Fut>(&self, mut attempt: A) -> Result<T, DbError>
    where
        A: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        let mut deadline = None;
        let mut delay = Duration::from_millis(5);
        loop {
            match attempt().await {
                Err(e)
                    if self.inner.location.is_remote()
                        && e.is_transient()
                        && !matches!(e, DbError::Overloaded { .. } | DbError::TimedOut { .. }) =>
                {
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + REMOTE_RETRY_FOR);
                    if Instant::now() + delay >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "a remote operation failed for now; trying it again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }

    /// Runs `op`, which only reads, as [`Db::run`] does; on a remote database a passing failure
    /// (a query interrupted, a stream expired, the connection lost) is tried again as
    /// [`Db::write_idempotent`] does, since reading twice is harmless.
    pub async fn read<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: Fn(Conn) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send,
        T: Send + 'static,
    {
        self.again_while_passing(|| self.run(op.clone())).await
    }

    /// The rows `sql` selects with `params`, each decoded by `decode`: [`query_all`] as a
    /// [`Db::read`].
    pub async fn query<T, P, D>(
        &self,
        sql: impl Into<Arc<str>>,
        params: P,
        decode: D,
    ) -> Result<Vec<T>, DbError>
    where
        P: libsql::params::IntoParams + Clone + Send + 'static,
        D: Fn(&libsql::Row) -> Result<T, DbError> + Clone + Send + 'static,
        T: Send + 'static,
    {
        let sql: Arc<str> = sql.into();
        self.read(move |conn| {
            let (sql, params, decode) = (Arc::clone(&sql), params.clone(), decode.clone());
            async move { query_all(&conn, &sql, params, decode).await }
        })
        .await
    }

    async fn write_with<T, F, Fut>(&self, op: F, mode: Mode) -> Result<T, DbError>
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send,
        T: Send + 'static,
    {
        let Some(writer) = &self.inner.writer else {
            let Some(lane) = &self.inner.lane else {
                return self.run(op).await;
            };
            use std::sync::atomic::Ordering;
            let waiting = &lane.waiting;
            // A write from outside waits its turn in the lane (each is one round trip), unless
            // many are waiting already.
            if mode == Mode::Shed && waiting.load(Ordering::Relaxed) >= MAX_REMOTE_WRITES_WAITING {
                return Err(DbError::Overloaded {
                    pending: waiting.load(Ordering::Relaxed),
                });
            }
            waiting.fetch_add(1, Ordering::Relaxed);
            let permit = lane.permit.acquire().await;
            waiting.fetch_sub(1, Ordering::Relaxed);
            let _permit = permit.map_err(|_| DbError::WriterStopped)?;
            return self.run(op).await;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Commits of relaxed writes skip their own sync; only a file synced at every commit
        // has one to skip.
        let sync = match (mode, self.inner.sync) {
            (Mode::Relaxed, SyncMode::Full) => SyncMode::Normal,
            (_, configured) => configured,
        };
        let job: WriteOp = Box::new(move |conn| {
            if let Err(e) = conn.set_sync(sync) {
                let _ = tx.send(Err(e));
                return;
            }
            // A panic is a bug in the operation; it fails that operation alone, and the
            // writer goes on with the next one.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                futures::executor::block_on(op(conn.clone()))
            }))
            .unwrap_or_else(|panic| Err(DbError::Panicked(panic_message(panic.as_ref()))));
            let _ = tx.send(result);
        });
        if mode == Mode::Shed {
            writer.try_send(job).map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => DbError::Overloaded {
                    pending: writer.max_capacity(),
                },
                tokio::sync::mpsc::error::TrySendError::Closed(_) => DbError::WriterStopped,
            })?;
        } else {
            writer.send(job).await.map_err(|_| DbError::WriterStopped)?;
        }
        rx.await.map_err(|_| DbError::WriterStopped)?
    }

    /// Writes one row to a table of its own, proving that the database takes writes now (its
    /// writer is alive, its lock can be had, its disk has room). For readiness checks.
    pub async fn probe_write(&self) -> Result<(), DbError> {
        self.write(|conn| async move {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS drover_health (id INTEGER PRIMARY KEY, at INTEGER NOT NULL)",
                (),
            )
            .await?;
            conn.execute(
                "INSERT INTO drover_health (id, at) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                [crate::time::now_ms()],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Applies statements to many rows each, in order, returning the rows each statement
    /// returned (for `RETURNING`). An embedded database does it all in one transaction, with each
    /// statement prepared once and stepped per row; a remote one gets each statement once with
    /// all its rows in one JSON parameter (a few thousand rows, or a few MiB, per round trip:
    /// see [`Rows::Json`]) and no interactive transaction, so every statement stands on its own
    /// there.
    pub async fn bulk(&self, statements: Vec<Bulk>) -> Result<Vec<Vec<Vec<Value>>>, DbError> {
        self.bulk_with(statements, Mode::Wait).await
    }

    /// [`Db::bulk`] as a relaxed write (see [`Db::write_relaxed`]).
    pub async fn bulk_relaxed(
        &self,
        statements: Vec<Bulk>,
    ) -> Result<Vec<Vec<Vec<Value>>>, DbError> {
        self.bulk_with(statements, Mode::Relaxed).await
    }

    async fn bulk_with(
        &self,
        statements: Vec<Bulk>,
        mode: Mode,
    ) -> Result<Vec<Vec<Vec<Value>>>, DbError> {
        if self.multi_row {
            return self
                .write_with(|conn| bulk_multi_row(conn, statements), mode)
                .await;
        }
        self.write_with(|conn| bulk_prepared(conn, statements), mode)
            .await
    }

    /// Applies `migrations` (ordered by version) for `component` that are not applied yet, and
    /// refuses a database whose schema is newer than the last of them ([`DbError::SchemaTooNew`]).
    /// Each migration runs as one transactional batch that starts with its bookkeeping row, so a
    /// crash cannot leave it half-applied; and when two processes start at once, the one that
    /// loses the race fails on that row (its primary key) before any of the migration's
    /// statements run, and takes the migration as applied. Migrations need not be idempotent:
    /// that makes applying them so, and on a remote server (where hosts starting together
    /// contend for its lock) a passing failure is tried again.
    pub async fn migrate(
        &self,
        component: &'static str,
        migrations: &'static [Migration],
    ) -> Result<(), DbError> {
        self.write_idempotent(move |conn| async move {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS drover_migrations (
                    component TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    name TEXT NOT NULL,
                    applied_at INTEGER NOT NULL,
                    PRIMARY KEY (component, version)
                )",
                (),
            )
            .await?;
            let current = query_all(
                &conn,
                "SELECT coalesce(max(version), 0) FROM drover_migrations WHERE component = ?1",
                [component],
                |row| row.int(0),
            )
            .await?
            .first()
            .copied()
            .unwrap_or(0);
            let known = migrations.last().map_or(0, |m| m.version);
            if current > known {
                return Err(DbError::SchemaTooNew {
                    component,
                    found: current,
                    known,
                });
            }
            for migration in migrations.iter().filter(|m| m.version > current) {
                apply_migration(&conn, component, migration).await?;
            }
            Ok(())
        })
        .await
    }

    /// Applies one migration of `component` as [`Db::migrate`] does, whatever version is
    /// recorded: returns `false`, having changed nothing, if it is already applied.
    pub async fn apply_migration(
        &self,
        component: &'static str,
        migration: &'static Migration,
    ) -> Result<bool, DbError> {
        self.write_idempotent(move |conn| async move {
            apply_migration(&conn, component, migration).await
        })
        .await
    }
}

/// Runs `migration` with its bookkeeping row first, in one transactional batch; `false` if the
/// row was there already (another process applied it).
async fn apply_migration(
    conn: &Conn,
    component: &'static str,
    migration: &Migration,
) -> Result<bool, DbError> {
    let sql = format!(
        "INSERT INTO drover_migrations (component, version, name, applied_at) \
         VALUES ('{component}', {}, '{}', {});\n{}",
        migration.version,
        migration.name.replace('\'', "''"),
        crate::time::now_ms(),
        migration.sql,
    );
    match conn.execute_transactional_batch(&sql).await {
        Ok(_) => {
            tracing::debug!(
                component,
                version = migration.version,
                name = migration.name,
                "applied migration"
            );
            Ok(true)
        }
        Err(e)
            if e.to_string()
                .contains("constraint failed: drover_migrations") =>
        {
            tracing::debug!(
                component,
                version = migration.version,
                "migration already applied by another process"
            );
            Ok(false)
        }
        Err(e) => Err(DbError::Migration {
            component,
            version: migration.version,
            message: e.to_string(),
        }),
    }
}

impl DbInner {
    /// Runs a local operation to completion on this (blocking-pool) thread.
    fn run_blocking<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        if let Some(shared) = &self.shared {
            let conn = shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            return futures::executor::block_on(op(conn.clone()));
        }
        let conn = self.checkout()?;
        let result = futures::executor::block_on(op(conn.clone()));
        self.checkin(conn);
        result
    }

    /// An idle connection, or a new one with the per-connection settings applied. For a file
    /// database this blocks, so it is only called on the blocking pool.
    fn checkout(&self) -> Result<Conn, DbError> {
        let remote = self.location.is_remote();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(conn) = idle.pop() {
                // A server expires a stream left idle (sqld after 10 s): renew it before that.
                if remote && conn.idle_for() >= REMOTE_IDLE_MAX {
                    continue;
                }
                return Ok(conn);
            }
        }
        if let DbLocation::File(_) = self.location {
            return file_connection(&self.database, self.sync);
        }
        Ok(Conn::new(self.database.connect()?))
    }

    fn checkin(&self, conn: Conn) {
        // A connection left inside a transaction would hold the write lock for whoever gets it
        // next: drop it instead.
        if !conn.is_autocommit() {
            return;
        }
        conn.touch();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(conn);
        }
    }
}

/// Connections kept open between operations.
const MAX_IDLE_CONNECTIONS: usize = 8;
/// How long an idempotent remote write (or a read) is tried again after its first passing
/// failure.
pub const REMOTE_RETRY_FOR: Duration = Duration::from_secs(5);
/// Longest a remote operation waits for the server before it fails with
/// [`DbError::TimedOut`] (and its connection is dropped): far above any statement's time on a
/// healthy server, short enough that a host behind a dead link notices within a lease.
pub const REMOTE_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most writes from outside that wait for a remote database's lane before more are shed.
const MAX_REMOTE_WRITES_WAITING: usize = 4096;
/// Longest a remote connection is kept idle: under the time a server keeps an idle stream
/// (sqld's HTTP streams expire after 10 s unused), so that a connection taken from the idle
/// list has a live stream.
const REMOTE_IDLE_MAX: Duration = Duration::from_secs(5);

/// A new connection to a database file, with the settings every connection gets: WAL (readers
/// never wait for the writer), a busy timeout (for writers of other processes), and `sync` (see
/// [`SyncMode`]). Blocks.
fn file_connection(database: &libsql::Database, sync: SyncMode) -> Result<Conn, DbError> {
    let conn = database.connect()?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    futures::executor::block_on(conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={}; PRAGMA temp_store=MEMORY;",
        sync.pragma()
    )))?;
    let conn = Conn::new(conn);
    *conn.inner.sync.lock().unwrap_or_else(|p| p.into_inner()) = Some(sync);
    Ok(conn)
}

/// How a write goes to the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waits while the writer's queue is full; synced as the database is configured.
    Wait,
    /// Refused while the writer's queue is full.
    Shed,
    /// Waits; commits without a sync of its own.
    Relaxed,
}

/// Writes that may wait for the writer thread at once; past this, [`Db::write`] waits and
/// [`Db::write_or_shed`] refuses.
const WRITER_QUEUE: usize = 1024;

/// Reads that may hold a connection at once (more wait for one to free up).
const MAX_READERS: usize = 16;

/// Starts the writer thread of a database file: it runs the operations sent to it, one at a
/// time, with `conn`, until the database is dropped.
fn spawn_writer(conn: Conn) -> std::io::Result<tokio::sync::mpsc::Sender<WriteOp>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<WriteOp>(WRITER_QUEUE);
    std::thread::Builder::new()
        .name("drover-db-writer".into())
        .spawn(move || {
            while let Some(op) = rx.blocking_recv() {
                // Operations catch their own panics (see `Db::write_with`); this is the last
                // line of defence, so that the thread outlives any of them.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&conn))).is_err() {
                    tracing::error!("a database write panicked");
                }
                // Every operation ends its transactions; one that did not (a failed commit, a
                // panic) must not hold the write lock for the next.
                if !conn.is_autocommit()
                    && let Err(e) = futures::executor::block_on(conn.execute("ROLLBACK", ()))
                {
                    tracing::warn!(error = %e, "rolling back an unfinished transaction failed");
                }
            }
        })?;
    Ok(tx)
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Prepared statements a connection keeps for reuse.
const MAX_PREPARED: usize = 64;

/// A connection lent to one operation at a time, with the statements it has prepared: the hot
/// statements (claims, outcomes, run writes) are parsed and planned once per connection, not once
/// per call.
#[derive(Clone)]
pub struct Conn {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    conn: Connection,
    prepared: Mutex<HashMap<Box<str>, Statement>>,
    /// The connection's `synchronous` setting, on a database file.
    sync: Mutex<Option<SyncMode>>,
    /// When it was last handed back.
    used: Mutex<Instant>,
}

impl Conn {
    fn new(conn: Connection) -> Self {
        Self {
            inner: Arc::new(ConnInner {
                conn,
                prepared: Mutex::new(HashMap::new()),
                sync: Mutex::new(None),
                used: Mutex::new(Instant::now()),
            }),
        }
    }

    /// Notes that it was just used.
    fn touch(&self) {
        *self.inner.used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long since it was last used.
    fn idle_for(&self) -> Duration {
        self.inner
            .used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Switches a database file's connection to `sync` for its next commits (nothing to do
    /// when it already is, or when it is not a file's). Blocks: for the writer thread.
    fn set_sync(&self, sync: SyncMode) -> Result<(), DbError> {
        let mut current = self.inner.sync.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none_or(|now| now == sync) {
            return Ok(());
        }
        futures::executor::block_on(
            self.inner
                .conn
                .execute_batch(&format!("PRAGMA synchronous={}", sync.pragma())),
        )?;
        *current = Some(sync);
        Ok(())
    }

    /// The prepared form of `sql`: this connection's own, taken out of its cache (hand it back
    /// with [`Conn::keep`]), or a new one.
    pub async fn prepare_cached(&self, sql: &str) -> Result<Statement, DbError> {
        let cached = self
            .inner
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sql);
        match cached {
            Some(statement) => Ok(statement),
            None => Ok(self.inner.conn.prepare(sql).await?),
        }
    }

    /// Returns a statement that ran to completion to the cache, for the next use of `sql`. It is
    /// reset here (libsql does not reset a statement between uses), which also ends its read.
    pub fn keep(&self, sql: &str, statement: Statement) {
        statement.reset();
        let mut prepared = self
            .inner
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if prepared.len() < MAX_PREPARED {
            prepared.insert(sql.into(), statement);
        }
    }
}

impl Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.inner.conn
    }
}

/// The text in column `idx` of a row returned by [`Db::bulk`].
pub fn text_at(row: &[Value], idx: usize) -> Result<String, DbError> {
    match row.get(idx) {
        Some(Value::Text(text)) => Ok(text.clone()),
        other => Err(DbError::Decode(format!(
            "column {idx}: expected text, found {other:?}"
        ))),
    }
}

pub(crate) fn row_values(row: &libsql::Row) -> Result<Vec<Value>, DbError> {
    (0..row.column_count())
        .map(|i| row.get_value(i).map_err(DbError::from))
        .collect()
}

/// One schema migration. Its SQL runs once per database (see [`Db::migrate`]), so it may be
/// any statements, `ALTER TABLE` included.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version, starting at 1, strictly increasing.
    pub version: i64,
    /// Short description.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Typed, panic-free access to the columns of a result row.
pub trait RowExt {
    /// A non-null integer column.
    fn int(&self, idx: i32) -> Result<i64, DbError>;
    /// A nullable integer column.
    fn opt_int(&self, idx: i32) -> Result<Option<i64>, DbError>;
    /// A non-null text column.
    fn text(&self, idx: i32) -> Result<String, DbError>;
    /// A nullable text column.
    fn opt_text(&self, idx: i32) -> Result<Option<String>, DbError>;
}

impl RowExt for libsql::Row {
    fn int(&self, idx: i32) -> Result<i64, DbError> {
        match self.get_value(idx)? {
            Value::Integer(v) => Ok(v),
            other => Err(DbError::Decode(format!(
                "column {idx}: expected an integer, found {other:?}"
            ))),
        }
    }

    fn opt_int(&self, idx: i32) -> Result<Option<i64>, DbError> {
        match self.get_value(idx)? {
            Value::Null => Ok(None),
            Value::Integer(v) => Ok(Some(v)),
            other => Err(DbError::Decode(format!(
                "column {idx}: expected an integer or null, found {other:?}"
            ))),
        }
    }

    fn text(&self, idx: i32) -> Result<String, DbError> {
        match self.get_value(idx)? {
            Value::Text(v) => Ok(v),
            other => Err(DbError::Decode(format!(
                "column {idx}: expected text, found {other:?}"
            ))),
        }
    }

    fn opt_text(&self, idx: i32) -> Result<Option<String>, DbError> {
        match self.get_value(idx)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v)),
            other => Err(DbError::Decode(format!(
                "column {idx}: expected text or null, found {other:?}"
            ))),
        }
    }
}

/// Runs a row-returning statement (prepared once per connection) and decodes every row with
/// `decode`. The rows are drained completely, so a writing statement (`UPDATE … RETURNING`)
/// commits before this returns.
pub async fn query_all<T>(
    conn: &Conn,
    sql: &str,
    params: impl libsql::params::IntoParams,
    mut decode: impl FnMut(&libsql::Row) -> Result<T, DbError>,
) -> Result<Vec<T>, DbError> {
    let statement = conn.prepare_cached(sql).await?;
    let mut rows = statement.query(params).await?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().await? {
        out.push(decode(&row)?);
    }
    drop(rows);
    conn.keep(sql, statement);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(DbLocation::parse(":memory:").ok(), Some(DbLocation::Memory));
        assert_eq!(
            DbLocation::parse("file:./var/queue.db").ok(),
            Some(DbLocation::File("./var/queue.db".into()))
        );
        assert_eq!(
            DbLocation::parse("var/q.db").ok(),
            Some(DbLocation::File("var/q.db".into()))
        );
        assert!(DbLocation::parse("libsql://db.example.turso.io").is_ok_and(|l| l.is_remote()));
        assert!(DbLocation::parse("https://db.example").is_ok_and(|l| l.is_remote()));
        assert!(DbLocation::parse("").is_err());
        assert!(DbLocation::parse("ftp://x").is_err());
        assert!(DbLocation::parse("libsql://").is_err());
    }
}
