//! Test support: the agents of `agents/`, compiled for `wasm32-wasip2` by this crate's build
//! script, and agent directories made from them; a scripted model server ([`model_server`]);
//! and an OAuth2 token endpoint ([`oauth_server`]).

pub mod http;
pub mod model_server;
pub mod oauth_server;
pub mod proxy;
pub mod sample_api;
pub mod sqld;

use std::path::{Path, PathBuf};

/// The `echo` component.
pub const ECHO: &str = env!("DROVER_AGENT_ECHO");
/// The `echo` agent built against `drover:agent@0.1.0` (imports only the 0.1.0 interfaces).
pub const ECHO_V0_1: &str = env!("DROVER_AGENT_ECHO_V0_1");
/// The `math` agent: a model-backed agent that calls the `calc` tool through the SDK's loop.
pub const MATH: &str = env!("DROVER_AGENT_MATH");
/// The `queue-worker` component.
pub const QUEUE_WORKER: &str = env!("DROVER_AGENT_QUEUE_WORKER");
/// The `chaos` component (misbehaves on request).
pub const CHAOS: &str = env!("DROVER_AGENT_CHAOS");
/// The `fetch` component (sends the HTTP requests its input describes).
pub const FETCH: &str = env!("DROVER_AGENT_FETCH");
/// The `chain-worker` component (long-lived; spawns one child of its own type).
pub const CHAIN_WORKER: &str = env!("DROVER_AGENT_CHAIN_WORKER");
/// The `spawner` component (spawns, waits for, stops and lists the children its input says).
pub const SPAWNER: &str = env!("DROVER_AGENT_SPAWNER");
/// The `chat` component (a long-lived agent that answers the messages posted to it).
pub const CHAT: &str = env!("DROVER_AGENT_CHAT");

/// The `calc` tool component (`agents/tools/calc`).
pub const TOOL_CALC: &str = env!("DROVER_TOOL_CALC");
/// The `json-query` tool component (`agents/tools/json-query`).
pub const TOOL_JSON_QUERY: &str = env!("DROVER_TOOL_JSON_QUERY");
/// The `bad-tool` tool component (misbehaves on request).
pub const TOOL_BAD: &str = env!("DROVER_TOOL_BAD_TOOL");
/// The `http-get` tool component (fetches a URL).
pub const TOOL_HTTP_GET: &str = env!("DROVER_TOOL_HTTP_GET");

/// The TypeScript `echo` agent (`agents/echo-js`), built with the JavaScript SDK's
/// `build.mjs`; empty when it could not be built (see [`other_languages`]).
pub const ECHO_JS: &str = env!("DROVER_AGENT_ECHO_JS");
/// The JavaScript long-lived queue worker (`agents/queue-worker-js`).
pub const QUEUE_WORKER_JS: &str = env!("DROVER_AGENT_QUEUE_WORKER_JS");
/// The misbehaving JavaScript agent (`agents/chaos-js`).
pub const CHAOS_JS: &str = env!("DROVER_AGENT_CHAOS_JS");
/// The Python `echo` agent (`agents/echo-py`), built with the Python SDK's `drover_sdk.build`.
pub const ECHO_PY: &str = env!("DROVER_AGENT_ECHO_PY");
/// The misbehaving Python agent (`agents/chaos-py`).
pub const CHAOS_PY: &str = env!("DROVER_AGENT_CHAOS_PY");
/// The Python `text` toolbox (`agents/tools/text-py`: `words`, `upper`).
pub const TOOL_TEXT_PY: &str = env!("DROVER_TOOL_TEXT_PY");

/// The JavaScript SDK's `build.mjs`, beside its installed tools (run it with `node`).
pub const JS_BUILD: &str = env!("DROVER_TEST_JS_BUILD");
/// A Python with the Python SDK's build tool installed (run `-m drover_sdk.build` with
/// `PYTHONPATH=guest-sdk/python`).
pub const PYTHON: &str = env!("DROVER_TEST_PYTHON");

/// Whether the JavaScript and Python components were built (the build script needs `node`,
/// `npm` and `python3`); without them, `false` after saying why — and a failed test under
/// `CI`, where the build must have made them.
pub fn other_languages(what: &str) -> bool {
    let problem = env!("DROVER_TEST_LANGUAGES_PROBLEM");
    if problem.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the JavaScript and Python agents are required under CI ({what}): {problem}"
    );
    eprintln!("skipping {what}: {problem}");
    false
}

/// The `drover-host run` arguments of a host with the agents in `agents`, its databases
/// `queue.db` and `runs.db` in `dir`, its data directory `dir/<data>`, the shared compile
/// cache, and `config` as its `drover.toml` (if given). Callers add what else they need.
pub fn host_args(agents: &Path, dir: &Path, data: &str, config: Option<&Path>) -> Vec<String> {
    let mut args = host_args_on(
        agents,
        &dir.join(data),
        &format!("file:{}", dir.join("queue.db").display()),
        &format!("file:{}", dir.join("runs.db").display()),
    );
    if let Some(config) = config {
        args.extend(["--config".to_string(), config.display().to_string()]);
    }
    args
}

/// The `drover-host run` arguments of a host with the agents in `agents`, its data directory
/// `data`, the shared compile cache, and its queue and runs at the URLs `queue` and `storage`
/// (files or a server). Callers add what else they need.
pub fn host_args_on(agents: &Path, data: &Path, queue: &str, storage: &str) -> Vec<String> {
    vec![
        "--agents".to_string(),
        agents.display().to_string(),
        "--data-dir".to_string(),
        data.display().to_string(),
        "--cache-dir".to_string(),
        cache_dir().display().to_string(),
        "--queue-url".to_string(),
        queue.to_string(),
        "--storage-url".to_string(),
        storage.to_string(),
    ]
}

/// A compiled-component cache shared by every test, so each component compiles once.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("DROVER_TEST_CACHE_DIR"))
}

/// A temporary agent directory.
pub struct AgentDir {
    dir: tempfile::TempDir,
}

impl AgentDir {
    /// An empty agent directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Installs `component` as `<name>.wasm`, with `manifest` as `<name>.toml` if given. The
    /// file is copied under a hidden name and renamed into place, as a user should.
    pub fn add(&self, name: &str, component: &str, manifest: Option<&str>) -> &Self {
        if let Some(manifest) = manifest {
            std::fs::write(self.path().join(format!("{name}.toml")), manifest).expect("manifest");
        }
        let staging = self.path().join(format!(".{name}.wasm.tmp"));
        std::fs::copy(component, &staging).expect("copy component");
        std::fs::rename(&staging, self.path().join(format!("{name}.wasm"))).expect("rename");
        self
    }

    /// Installs tool component `component` as `tools/<name>.wasm`, with `manifest` as
    /// `tools/<name>.toml` if given, copied and renamed into place like [`AgentDir::add`].
    pub fn add_tool(&self, name: &str, component: &str, manifest: Option<&str>) -> &Self {
        let tools = self.path().join("tools");
        std::fs::create_dir_all(&tools).expect("tools dir");
        if let Some(manifest) = manifest {
            std::fs::write(tools.join(format!("{name}.toml")), manifest).expect("manifest");
        }
        let staging = tools.join(format!(".{name}.wasm.tmp"));
        std::fs::copy(component, &staging).expect("copy component");
        std::fs::rename(&staging, tools.join(format!("{name}.wasm"))).expect("rename");
        self
    }

    /// Writes arbitrary bytes as `<name>.wasm` (e.g. a corrupt component).
    pub fn add_bytes(&self, name: &str, bytes: &[u8]) -> &Self {
        std::fs::write(self.path().join(format!("{name}.wasm")), bytes).expect("write");
        self
    }
}

impl Default for AgentDir {
    fn default() -> Self {
        Self::new()
    }
}

use std::time::{Duration, Instant};

use drover_host::db::Db;
use drover_host::queue::{JobStatus, Queue, QueueOptions};
use drover_host::store::{Run, RunStatus, RunStore};

/// How long a host may take to start: it compiles its agents first, and a JavaScript or Python
/// agent that is not in the compile cache yet takes a while on a busy machine.
pub const START_WAIT: Duration = Duration::from_secs(180);

/// How long the helpers wait for something before failing the test.
pub const WAIT: Duration = Duration::from_secs(30);

/// A queue and a run store on fresh databases (files, or a fresh `sqld` when the suites run
/// on one: see [`db_mode`]), with retries backing off by milliseconds.
pub struct TestDb {
    /// A directory of the test's own (holding the files, in the file modes).
    pub dir: tempfile::TempDir,
    /// The queue (`queue.db`).
    pub queue: Queue,
    /// The run store (`runs.db`).
    pub store: RunStore,
    sqld: Option<sqld::Sqld>,
}

/// Names the databases the suites of a test process run on (see [`DbMode`]); set in the child
/// processes [`rerun_on_other_databases`] starts.
pub const DB_MODE_ENV: &str = "DROVER_TEST_DB";

/// The databases the suites of a test process run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbMode {
    /// Files, with the statements the host sends to files.
    File,
    /// Files, with the multi-row statements the host sends to remote servers.
    MultiRow,
    /// A real libsql server (`sqld`), one per test.
    Sqld,
}

impl DbMode {
    fn name(self) -> &'static str {
        match self {
            DbMode::File => "file",
            DbMode::MultiRow => "multi-row",
            DbMode::Sqld => "sqld",
        }
    }
}

/// This process's [`DbMode`].
pub fn db_mode() -> DbMode {
    match std::env::var(DB_MODE_ENV).as_deref() {
        Ok("multi-row") => DbMode::MultiRow,
        Ok("sqld") => DbMode::Sqld,
        _ => DbMode::File,
    }
}

/// The URL of database `file` of a test: that file in `dir`, or `sqld` if the test has one.
fn db_url(dir: &Path, sqld: Option<&sqld::Sqld>, file: &str) -> String {
    match sqld {
        Some(server) => server.url(),
        None => format!("file:{}", dir.join(file).display()),
    }
}

/// A place for a test's databases: a directory, and in [`DbMode::Sqld`] a server of its own.
pub struct DbDir {
    dir: tempfile::TempDir,
    sqld: Option<sqld::Sqld>,
}

impl DbDir {
    /// A fresh one.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            sqld: (db_mode() == DbMode::Sqld).then(sqld::Sqld::start),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The URL of database `file`: that file in the directory, or the test's server (where
    /// every name is the one database, as when a host is given one URL for both).
    pub fn url(&self, file: &str) -> String {
        db_url(self.dir.path(), self.sqld.as_ref(), file)
    }

    /// The test's server, in [`DbMode::Sqld`].
    pub fn sqld(&self) -> Option<&sqld::Sqld> {
        self.sqld.as_ref()
    }
}

impl Default for DbDir {
    fn default() -> Self {
        Self::new()
    }
}

/// Opens a database for a test, sending multi-row statements in [`DbMode::MultiRow`] (a remote
/// server's get them anyway).
pub async fn open_db(url: &str) -> Db {
    let db = Db::open(url, None).await.expect("open database");
    if db_mode() == DbMode::MultiRow {
        db.with_multi_row_statements()
    } else {
        db
    }
}

/// Runs every test of the calling suite except `this_test` again in child processes on the
/// other databases — files with multi-row statements (the SQL a remote server gets), then a
/// real `sqld` (skipped, saying why, where none is installed; required under `CI`) — and fails
/// if any test does. Does nothing in those children. `suite` is the calling module's path
/// (`module_path!()`): the suites are modules of one test binary, and their tests are named
/// after the module's last part.
pub fn rerun_on_other_databases(suite: &str, this_test: &str) {
    if db_mode() != DbMode::File {
        return;
    }
    let prefix = format!("{}::", suite.rsplit("::").next().unwrap_or(suite));
    for mode in [DbMode::MultiRow, DbMode::Sqld] {
        if mode == DbMode::Sqld && sqld::available(&format!("the {prefix} tests on sqld")).is_none()
        {
            continue;
        }
        let exe = std::env::current_exe().expect("test binary");
        let output = std::process::Command::new(exe)
            .arg(&prefix)
            .args([
                "--skip",
                &format!("{prefix}{this_test}"),
                "--test-threads",
                "2",
            ])
            .env(DB_MODE_ENV, mode.name())
            .output()
            .expect("run the test binary");
        assert!(
            output.status.success(),
            "on {} databases, some tests failed:\n{}\n{}",
            mode.name(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl TestDb {
    /// Fresh databases.
    pub async fn new() -> Self {
        let dbs = DbDir::new();
        let queue = Queue::with_db(
            open_db(&dbs.url("queue.db")).await,
            QueueOptions {
                backoff_base: Duration::from_millis(1),
                backoff_max: Duration::from_millis(5),
                ..QueueOptions::default()
            },
        )
        .await
        .expect("queue");
        let store = RunStore::with_db(open_db(&dbs.url("runs.db")).await)
            .await
            .expect("store");
        Self {
            dir: dbs.dir,
            queue,
            store,
            sqld: dbs.sqld,
        }
    }

    /// The queue database's URL.
    pub fn queue_url(&self) -> String {
        self.url("queue.db")
    }

    /// The run store's URL.
    pub fn store_url(&self) -> String {
        self.url("runs.db")
    }

    fn url(&self, file: &str) -> String {
        db_url(self.dir.path(), self.sqld.as_ref(), file)
    }
}

/// Waits until job `id` has `status`.
pub async fn wait_for_status(queue: &Queue, id: &str, status: JobStatus) {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = queue.get(id).await.expect("get").expect("job exists");
        if job.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never reached {status}; it is {}",
            job.status
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the latest run of job `job_id` has `status`, and returns it.
pub async fn wait_for_run_status(store: &RunStore, job_id: &str, status: RunStatus) -> Run {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(run) = store.latest_run_for_job(job_id).await.expect("run")
            && run.status == status
        {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "no run of {job_id} reached {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` every 25 ms until it yields a value, failing the test after [`WAIT`].
pub async fn wait_for<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "condition never held");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `drover-host run` process on its own databases and agent directory, killed when dropped.
pub struct HostProcess {
    child: std::process::Child,
    /// The base URL of its HTTP API.
    pub url: String,
    /// Everything it logged (JSON lines), collected in the background.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HostProcess {
    /// Starts `exe run` with `args` (plus a free port and JSON logs), with `envs` set, and waits
    /// until it listens (or, with `--worker-only`, until its pool runs).
    pub fn start(exe: &str, args: &[String], envs: &[(&str, &str)]) -> Self {
        use std::io::BufRead;

        let worker_only = args.iter().any(|a| a == "--worker-only");
        let mut command = std::process::Command::new(exe);
        command
            .arg("run")
            .arg("--log-format")
            .arg("json")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if !worker_only {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start drover-host");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let lines = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let address: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    let _ = ready_tx.send(format!("http://{address}"));
                } else if worker_only && line.contains("worker pool started") {
                    let _ = ready_tx.send(String::new());
                }
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let url = match ready_rx.recv_timeout(START_WAIT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let log = log.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                panic!("drover-host did not start:\n{log}");
            }
        };
        Self { child, url, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `"TERM"`, `"KILL"`) and waits for the exit; returns its status.
    pub fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "drover-host did not exit after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
