//! `drover-host run`: wires the queue, the run store, the agent directory, the sandboxes, the
//! worker pool and the HTTP API together, and shuts them down gracefully on SIGINT or SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::future::BoxFuture;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::api::RunApi;
use crate::api::auth::Auth;
use crate::api::http::{self, HttpConfig, HttpState};
use crate::api::metrics::Metrics;
use crate::children::Children;
use crate::config::HostConfig;
use crate::db::{Db, DbOptions, SyncMode};
use crate::inbox::Inbox;
use crate::model::ModelGateway;
use crate::outbound::Outbound;
use crate::pool::{DEFAULT_MAX_WAITING_RUNS, PoolConfig, PoolDeps, WorkerPool};
use crate::queue::{Queue, QueueOptions};
use crate::registry::dir::LoadProblem;
use crate::registry::{AgentCode, AgentSpec, DirRegistry, Registry, ToolRegistry};
use crate::sandbox::caps::Capabilities;
use crate::sandbox::wasm::{EngineConfig, WasmRuntime, WasmSandbox};
use crate::sandbox::{NoneSandbox, RunContext, RunOutcome, Sandbox, SandboxFor};
use crate::secrets::Secrets;
use crate::store::RunStore;

/// Options of `drover-host run`. Every option has an environment variable too.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Directory of agents (`*.wasm`, with optional `<name>.toml` manifests); followed for
    /// changes.
    #[arg(long, env = "DROVER_AGENTS_DIR", default_value = "agents")]
    pub agents: PathBuf,
    /// Address of the HTTP API and run viewer.
    #[arg(long, env = "DROVER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Run-to-completion jobs run at once.
    #[arg(long, env = "DROVER_CONCURRENCY", default_value_t = 16,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: usize,
    /// Long-lived agents run at once (they keep their slot until stopped).
    #[arg(long, env = "DROVER_MAX_AGENTS", default_value_t = 256,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_agents: usize,
    /// Jobs that may wait on I/O (model and tool calls) at once without holding one of the
    /// `concurrency` slots; 0: a waiting job keeps its slot.
    #[arg(long, env = "DROVER_MAX_WAITING_RUNS", default_value_t = DEFAULT_MAX_WAITING_RUNS)]
    pub max_waiting_runs: usize,
    /// Lease duration in milliseconds.
    #[arg(long, env = "DROVER_LEASE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub lease_ms: u64,
    /// How often expired leases of crashed hosts are reclaimed, in milliseconds.
    #[arg(long, env = "DROVER_RECLAIM_INTERVAL_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub reclaim_interval_ms: u64,
    /// While runs are short, jobs are claimed ahead of free slots; this is the longest (ms) a job
    /// claimed ahead should wait for its slot. 0: never claim ahead.
    #[arg(long, env = "DROVER_PREFETCH_HORIZON_MS", default_value_t = 20)]
    pub prefetch_horizon_ms: u64,
    /// How long in-flight jobs may finish at shutdown, in milliseconds.
    #[arg(long, env = "DROVER_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,
    /// The host configuration file (`drover.toml`: model aliases, API tokens); none: no model
    /// aliases, no API tokens. SIGHUP reloads its API tokens.
    #[arg(long, env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The databases.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Where per-run scratch directories (and, by default, the compiled-component cache) live;
    /// not the databases, which `--queue-url` and `--storage-url` place.
    #[arg(long, env = "DROVER_DATA_DIR", default_value = "var")]
    pub data_dir: PathBuf,
    /// Where compiled components are cached (default: `<data-dir>/cache`).
    #[arg(long, env = "DROVER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Agents that run in the none sandbox (trusted: no limits, the network, the variables of
    /// `--trusted-env`), each pinned to its component's digest: `id@sha256:<hex>` (`drover-host
    /// agents` lists digests). A component with that id but other contents runs sandboxed.
    #[arg(long, env = "DROVER_TRUSTED_AGENTS", value_delimiter = ',')]
    pub trusted: Vec<String>,
    /// Host environment variables that trusted agents see (their manifest's `[env]` aside);
    /// nothing else of the host's environment reaches them.
    #[arg(long, env = "DROVER_TRUSTED_ENV", value_delimiter = ',')]
    pub trusted_env: Vec<String>,
    /// This host's worker id (default: host name, process id and a random suffix).
    #[arg(long, env = "DROVER_WORKER_ID")]
    pub worker_id: Option<String>,
    /// A long-lived agent silent for this long (ms) is shown as stale.
    #[arg(long, env = "DROVER_STALE_AFTER_MS", default_value_t = 90_000)]
    pub stale_after_ms: u64,
    /// An admin token of every tenant; with it (or with `[[api-tokens]]` in the configuration
    /// file) every API request but `/healthz` needs a bearer token (the viewer asks for it).
    #[arg(long, env = "DROVER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Serve the API on a non-loopback address without a token (anyone who can reach the
    /// address can enqueue jobs and read every run).
    #[arg(long, env = "DROVER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Host names the host answers to in `Host` (and `Origin`), comma-separated: `name` (any
    /// port) or `name:port`. IP addresses and `localhost` with the listen port always work.
    #[arg(long, env = "DROVER_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// HTTP connections open at once; more wait to be accepted until one closes.
    #[arg(long, env = "DROVER_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// HTTP requests handled at once; more are answered `503` with `Retry-After`.
    #[arg(long, env = "DROVER_MAX_IN_FLIGHT", default_value_t = 512,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_in_flight: usize,
    /// `wait` requests open at once; more are answered `503` with `Retry-After`.
    #[arg(long, env = "DROVER_MAX_WAITERS", default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_waiters: usize,
    /// How long an HTTP request (other than `wait`) may take before it is answered `503`, in
    /// milliseconds.
    #[arg(long, env = "DROVER_REQUEST_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Run only the worker pool (no HTTP API).
    #[arg(long, conflicts_with = "api_only")]
    pub worker_only: bool,
    /// Run only the HTTP API (no worker pool): producers and viewers on one machine, pools on
    /// others.
    #[arg(long)]
    pub api_only: bool,
    /// How long finished jobs, runs and events are kept (`30d`, `12h`, … or `off`); older ones
    /// are deleted in the background, in small batches.
    #[arg(long, env = "DROVER_RETENTION", default_value = "30d",
          value_parser = super::prune::parse_retention)]
    pub retention: super::prune::Retention,
    /// Logging.
    #[command(flatten)]
    pub log: super::LogArgs,
}

/// How often the background pruner runs (and once at start-up).
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// How long open HTTP requests may go on once the host is shutting down and its pool stopped.
const SERVER_GRACE: Duration = Duration::from_secs(2);

/// Runs the host until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Listened for from here on: during start-up a signal ends the process at once (nothing is
    // running that a stop would wait for); once started, the first one stops the host gracefully
    // and a second one ends it at once.
    let shutdown = ShutdownSignals::listen().watch();
    let config = match &args.config {
        Some(path) => HostConfig::load(path)?,
        None => HostConfig::default(),
    };
    if !args.worker_only
        && !args.listen.ip().is_loopback()
        && args.api_token.is_none()
        && config.api_tokens.is_empty()
        && !args.insecure_no_auth
    {
        anyhow::bail!(
            "refusing to serve the API on {} without a token: anyone who can reach that address \
             could run agents and read every run. Set DROVER_API_TOKEN (or --api-token), list \
             [[api-tokens]] in the configuration file, listen on a loopback address, or pass \
             --insecure-no-auth to accept the risk",
            args.listen
        );
    }
    // The address first: a port in use stops the host before it claims any work.
    let listener = match args.worker_only {
        true => None,
        false => Some(bind(args.listen).await?),
    };
    // Reads the aliases' API keys now: a missing one stops the host here.
    let models = ModelGateway::new(&config.models).context("cannot start the model gateway")?;
    if !models.aliases().is_empty() {
        tracing::info!(aliases = %models.aliases().join(", "), "model gateway ready");
    }
    // Reads the secrets' values now: a missing one stops the host here.
    let secrets =
        Secrets::new(&config.secrets, secrets_client()?).context("cannot load the secrets")?;
    if secrets.names().next().is_some() {
        tracing::info!(secrets = %secrets.names().collect::<Vec<_>>().join(", "), "secrets loaded");
    }
    let (queue, store) = open_databases(&args, &config).await?;
    let inbox = Inbox::open(&queue, config.inbox.clone())
        .await
        .context("cannot prepare the inboxes of long-lived agents")?;

    let runtime = WasmRuntime::new(
        &EngineConfig {
            // A waiting run keeps its instance.
            max_instances: u32::try_from(
                args.concurrency
                    .saturating_add(args.max_agents)
                    .saturating_add(args.max_waiting_runs)
                    .saturating_add(16),
            )
            .unwrap_or(u32::MAX),
            cache_dir: Some(
                args.cache_dir
                    .clone()
                    .unwrap_or_else(|| args.data_dir.join("cache")),
            ),
            ..EngineConfig::default()
        },
        args.data_dir.join("scratch"),
    )
    .context("cannot start the WebAssembly engine")?;
    let agents_existed = args.agents.is_dir();
    let registry = DirRegistry::open(&args.agents, Arc::clone(&runtime))
        .await
        .with_context(|| format!("cannot open the agent directory {}", args.agents.display()))?;
    let _watch = registry.watch();
    let ids: Vec<String> = registry.list().iter().map(|s| s.id.clone()).collect();
    let agents_dir = std::path::absolute(&args.agents).unwrap_or_else(|_| args.agents.clone());
    tracing::info!(
        dir = %agents_dir.display(),
        agents = %ids.join(", "),
        "loaded {} agent(s)",
        ids.len()
    );
    if ids.is_empty() && registry.problems().is_empty() {
        tracing::warn!(
            dir = %agents_dir.display(),
            "{} holds no agents{}: put components (.wasm) there (they load as they appear), or \
             pass --agents (DROVER_AGENTS_DIR) if the host was started from the wrong directory",
            agents_dir.display(),
            if agents_existed { "" } else { " (it did not exist, so it was created)" }
        );
    }
    for problem in registry.problems() {
        tracing::warn!(path = %problem.path.display(), "skipped: {}", problem.error);
    }
    let tools: Arc<dyn ToolRegistry> = registry.clone();
    let outbound = Outbound::new(&config.outbound).map_err(anyhow::Error::msg)?;
    let caps = Capabilities::with_outbound(
        Arc::new(models.clone()),
        Some((tools, Arc::clone(&runtime))),
        outbound,
        secrets.clone(),
    );
    for problem in capability_problems(&registry, &caps, &secrets) {
        tracing::warn!(path = %problem.path.display(), "{}", problem.error);
    }

    let trusted = trust_pins(&args.trusted, &registry)?;
    let trusted_env = trusted_env(&args.trusted_env);

    let registry_dyn: Arc<dyn Registry> = registry.clone();
    // Agents spawn their children into the same queue.
    caps.enable_children(
        Children::open(queue.clone(), store.clone(), Arc::clone(&registry_dyn))
            .await
            .context("opening the ledger of tree budgets")?,
    );
    let pool = (!args.api_only).then(|| {
        WorkerPool::new(
            PoolDeps {
                queue: queue.clone(),
                store: store.clone(),
                registry: Arc::clone(&registry_dyn),
                sandbox_for: sandbox_for(
                    &runtime,
                    &caps,
                    &inbox,
                    trusted.clone(),
                    trusted_env.clone(),
                ),
            },
            PoolConfig {
                concurrency: args.concurrency,
                max_waiting_runs: args.max_waiting_runs,
                max_agents: args.max_agents,
                lease_duration: Duration::from_millis(args.lease_ms),
                reclaim_interval: Duration::from_millis(args.reclaim_interval_ms),
                shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
                prefetch_horizon: Duration::from_millis(args.prefetch_horizon_ms),
                worker_id: args.worker_id.clone(),
                ..PoolConfig::default()
            },
        )
        .start()
    });

    let stop_pruning = CancellationToken::new();
    let pruner = args.retention.0.map(|older_than| {
        tracing::info!(
            "finished work is kept for {}",
            humantime::format_duration(older_than)
        );
        tokio::spawn(super::prune::prune_in_background(
            queue.clone(),
            store.clone(),
            inbox.clone(),
            older_than,
            PRUNE_INTERVAL,
            stop_pruning.clone(),
        ))
    });

    shutdown.started();
    let stop_serving = CancellationToken::new();
    let mut reloads = None;
    let server = if let Some(listener) = listener {
        let api = RunApi::new(queue.clone(), store.clone(), Arc::clone(&registry_dyn))
            .with_inbox(inbox.clone());
        let auth = Auth::open(
            args.api_token.as_deref(),
            &config.api_tokens,
            queue.db().clone(),
        )
        .await
        .context("cannot set up the API tokens")?;
        if !config.api_tokens.is_empty() {
            tracing::info!(tokens = config.api_tokens.len(), "API tokens loaded");
        }
        if let Some(path) = &args.config {
            reloads = Some(tokio::spawn(reload_on_hangup(
                path.clone(),
                auth.clone(),
                api.clone(),
            )));
        }
        let problems_of = Arc::clone(&registry);
        let caps_of = Arc::clone(&caps);
        let secrets_of = secrets.clone();
        let metrics = Metrics::new(pool.as_ref().map(|p| p.stats().as_ref()));
        metrics.register_models(models.clone());
        metrics.register_tools(Arc::clone(&caps));
        let state = HttpState {
            api,
            problems: Arc::new(move || {
                let mut problems = problems_of.problems();
                problems.extend(capability_problems(&problems_of, &caps_of, &secrets_of));
                problems
            }),
            metrics: Arc::new(metrics),
            auth,
            stale_after: Duration::from_millis(args.stale_after_ms),
        };
        let address = listener.local_addr().unwrap_or(args.listen);
        tracing::info!("listening on http://{address}");
        let config = HttpConfig {
            listen: Some(address),
            allowed_hosts: args.allowed_hosts.clone(),
            max_in_flight: args.max_in_flight,
            max_waiters: args.max_waiters,
            request_timeout: Duration::from_millis(args.request_timeout_ms),
        };
        let app = http::protect(crate::viewer::router(), &config)
            .merge(http::router_with(state, &config))
            .fallback(http::not_found);
        let stop = stop_serving.clone();
        let max_connections = args.max_connections;
        Some(tokio::spawn(async move {
            axum::serve(http::ConnectionLimit::new(listener, max_connections), app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }))
    } else {
        None
    };

    shutdown.requested().await;
    stop_serving.cancel();
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    // Every delete stands on its own, so a prune may stop anywhere.
    stop_pruning.cancel();
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    if let Some(pool) = pool {
        pool.shutdown().await;
    }
    if let Some(mut server) = server {
        // Requests still open (a long `wait`, say) get a moment to finish, not their full time.
        match tokio::time::timeout(SERVER_GRACE, &mut server).await {
            Ok(served) => served
                .context("the HTTP server task failed")?
                .context("the HTTP server failed")?,
            Err(_) => {
                tracing::info!("closing the requests still open");
                server.abort();
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds the API's address, or says which one is taken and how to pick another.
async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "another process (another drover-host?) is using it; pick another address with \
                 --listen or DROVER_LISTEN, e.g. --listen 127.0.0.1:8081"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "no interface of this machine has that address; pick another with --listen or \
                 DROVER_LISTEN"
            }
            _ => "pick another address with --listen or DROVER_LISTEN",
        };
        anyhow::anyhow!("cannot listen on {address}: {e}; {hint}")
    })
}

/// Opens the queue and the run store, and says where they are.
async fn open_databases(args: &RunArgs, config: &HostConfig) -> anyhow::Result<(Queue, RunStore)> {
    let options = QueueOptions {
        fair_share: config.fair_share.clone(),
        ..QueueOptions::default()
    };
    let (queue, store) = args.db.open_with(options).await?;
    if let Some(fair) = &config.fair_share {
        tracing::info!(
            key = %fair.key,
            max_running = ?fair.max_running,
            overrides = fair.max_running_for.len(),
            "fair shares on"
        );
    }
    tracing::info!(
        queue = %absolute_url(&args.db.queue_url),
        storage = %absolute_url(&args.db.storage_url),
        sync = ?args.db.db_sync,
        "databases ready"
    );
    Ok((queue, store))
}

/// A `file:` URL with its path made absolute, so the log says which file; other URLs as they
/// are, without a query (which may hold credentials).
fn absolute_url(url: &str) -> String {
    match url.strip_prefix("file:") {
        Some(path) => {
            let (path, query) = path.split_once('?').map_or((path, ""), |(p, q)| (p, q));
            let absolute = std::path::absolute(path)
                .map_or_else(|_| path.to_string(), |p| p.display().to_string());
            if query.is_empty() {
                format!("file:{absolute}")
            } else {
                format!("file:{absolute}?{query}")
            }
        }
        None => url.split('?').next().unwrap_or(url).to_string(),
    }
}

/// Where the queue and the run store are, as `run` and `prune` take them.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// The queue database: `file:PATH`, `:memory:`, or `libsql://…` / `https://…`.
    #[arg(long, env = "DROVER_QUEUE_URL", default_value = "file:./var/queue.db")]
    pub queue_url: String,
    /// Auth token for a remote queue database.
    #[arg(long, env = "DROVER_QUEUE_AUTH_TOKEN", hide_env_values = true)]
    pub queue_auth_token: Option<String>,
    /// The run store database (may be the same as the queue's).
    #[arg(long, env = "DROVER_STORAGE_URL", default_value = "file:./var/runs.db")]
    pub storage_url: String,
    /// Auth token for a remote run store database.
    #[arg(long, env = "DROVER_STORAGE_AUTH_TOKEN", hide_env_values = true)]
    pub storage_auth_token: Option<String>,
    /// When database files are synced to disk: `full` (every commit; nothing acknowledged is
    /// lost to a power cut) or `normal` (at checkpoints; faster, but a power cut can lose the
    /// last acknowledged writes).
    #[arg(long, env = "DROVER_DB_SYNC", default_value = "full", value_parser = parse_sync)]
    pub db_sync: SyncMode,
}

impl DatabaseArgs {
    /// Opens the queue and the run store; one database when both URLs are the same.
    pub async fn open(&self) -> anyhow::Result<(Queue, RunStore)> {
        self.open_with(QueueOptions::default()).await
    }

    /// Like [`DatabaseArgs::open`], with the queue's tunables.
    pub async fn open_with(
        &self,
        queue_options: QueueOptions,
    ) -> anyhow::Result<(Queue, RunStore)> {
        let options = DbOptions { sync: self.db_sync };
        let queue_db = Db::open_with(&self.queue_url, self.queue_auth_token.as_deref(), options)
            .await
            .context("cannot open the queue database")?;
        let store_db = if self.storage_url == self.queue_url {
            queue_db.clone()
        } else {
            Db::open_with(
                &self.storage_url,
                self.storage_auth_token.as_deref(),
                options,
            )
            .await
            .context("cannot open the run store database")?
        };
        let queue = Queue::with_db(queue_db, queue_options)
            .await
            .context("cannot prepare the queue")?;
        let store = RunStore::with_db(store_db)
            .await
            .context("cannot prepare the run store")?;
        Ok((queue, store))
    }
}

fn parse_sync(text: &str) -> Result<SyncMode, String> {
    text.parse()
}

/// Trusted agents: ids and the digests their components must have.
type TrustPins = Arc<HashMap<String, String>>;

/// Parses `id@sha256:<hex>` entries. A bare id (trust by name alone) is refused, with the
/// digest of the component now loaded under that id to pin it to, if there is one.
fn trust_pins(entries: &[String], registry: &DirRegistry) -> anyhow::Result<TrustPins> {
    let mut pins = HashMap::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        match entry.split_once("@sha256:") {
            Some((id, hex))
                if !id.is_empty()
                    && hex.len() == 64
                    && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                pins.insert(id.to_string(), hex.to_ascii_lowercase());
            }
            _ => {
                let id = entry.split('@').next().unwrap_or(entry);
                let hint = match registry.get(id).map(|spec| spec.code.clone()) {
                    Some(AgentCode::Wasm(agent)) => {
                        format!(
                            "to trust the component loaded now, use {id}@sha256:{}",
                            agent.digest()
                        )
                    }
                    _ => format!(
                        "`drover-host types` (or GET /v1/types) lists each agent's digest; use {id}@sha256:<digest>"
                    ),
                };
                anyhow::bail!(
                    "DROVER_TRUSTED_AGENTS entry {entry:?} is not pinned to a digest: trust \
                     must name the exact component as id@sha256:<64 hex digits>; {hint}"
                );
            }
        }
    }
    Ok(Arc::new(pins))
}

/// The allow-listed host variables (and their values now) that trusted agents see.
fn trusted_env(names: &[String]) -> Arc<Vec<(String, String)>> {
    Arc::new(
        names
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .filter_map(|n| Some((n.to_string(), std::env::var(n).ok()?)))
            .collect(),
    )
}

/// What the loaded agents ask for that this host lacks: model aliases it does not configure,
/// tools it has not loaded, secrets it does not have. Such an agent loads (its runs fail those
/// calls with `ModelUnavailable` or `ToolUnavailable`; a request carrying a missing secret's
/// placeholder is refused), and the problem is shown beside the load problems.
fn capability_problems(
    registry: &DirRegistry,
    caps: &Capabilities,
    secrets: &Secrets,
) -> Vec<LoadProblem> {
    let known: Vec<&str> = secrets.names().collect();
    let specs = registry.list();
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let agents = specs.iter().flat_map(|spec| {
        let path = spec
            .source
            .clone()
            .unwrap_or_else(|| registry.dir().join(format!("{}.toml", spec.id)));
        let errors = caps
            .problems_of(spec)
            .into_iter()
            .chain(spec.check_secrets(&known))
            .chain(spec.check_children(&ids));
        errors.map(move |error| LoadProblem {
            path: path.clone(),
            error,
        })
    });
    let tools = registry.list_tools().into_iter().flat_map(|spec| {
        let path = spec
            .source
            .clone()
            .unwrap_or_else(|| registry.dir().join("tools"));
        spec.check_secrets(&known)
            .into_iter()
            .map(move |error| LoadProblem {
                path: path.clone(),
                error,
            })
    });
    agents.chain(tools).collect()
}

/// The HTTP client OAuth2 tokens are fetched with: it follows no redirect (a token endpoint
/// that redirects is a misconfiguration, and following it could send the client's credentials
/// elsewhere).
fn secrets_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client for OAuth2 tokens")
}

/// The wasm sandbox for every agent, except trusted ones whose component has the pinned digest,
/// which run in the none sandbox.
fn sandbox_for(
    runtime: &Arc<WasmRuntime>,
    caps: &Arc<Capabilities>,
    inbox: &Inbox,
    trusted: TrustPins,
    env: Arc<Vec<(String, String)>>,
) -> SandboxFor {
    let wasm: Arc<dyn Sandbox> = Arc::new(
        WasmSandbox::new(Arc::clone(runtime))
            .with_capabilities(Arc::clone(caps))
            .with_inbox(inbox.clone()),
    );
    let none: Arc<dyn Sandbox> = Arc::new(TrustedSandbox {
        inner: NoneSandbox::with_wasm(Arc::clone(runtime))
            .with_capabilities(Arc::clone(caps))
            .with_inbox(inbox.clone()),
        env,
    });
    Arc::new(move |_job, spec| {
        let pinned = match &spec.code {
            AgentCode::Wasm(agent) => trusted
                .get(&spec.id)
                .is_some_and(|digest| digest.eq_ignore_ascii_case(agent.digest())),
            AgentCode::Native(_) | AgentCode::Declarative(_) => false,
        };
        if pinned {
            Arc::clone(&none)
        } else {
            Arc::clone(&wasm)
        }
    })
}

/// The none sandbox, with the allow-listed host variables added to each agent's environment
/// (its manifest's values win).
struct TrustedSandbox {
    inner: NoneSandbox,
    env: Arc<Vec<(String, String)>>,
}

impl Sandbox for TrustedSandbox {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn run<'a>(
        &'a self,
        spec: &'a AgentSpec,
        input: Arc<RawValue>,
        ctx: RunContext,
    ) -> BoxFuture<'a, RunOutcome> {
        let mut spec = spec.clone();
        for (name, value) in self.env.iter() {
            spec.env
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
        Box::pin(async move { self.inner.run(&spec, input, ctx).await })
    }
}

/// On every SIGHUP, reads the configuration file again and swaps in its `[[api-tokens]]`: a
/// token no longer listed is refused from then on (and, with `stop-agents-on-revoke`, its
/// tenant's long-lived agents are stopped). A file that cannot be read or parsed changes
/// nothing; the log says why. The other sections take effect at the next start.
async fn reload_on_hangup(path: PathBuf, auth: Auth, api: RunApi) {
    #[cfg(unix)]
    {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; tokens are not reloaded");
                    return;
                }
            };
        while hangups.recv().await.is_some() {
            let path_of = path.clone();
            let loaded = tokio::task::spawn_blocking(move || HostConfig::load(&path_of)).await;
            let config = match loaded {
                Ok(Ok(config)) => config,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: the configuration was not reloaded; the API tokens stay as they were");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: the configuration was not reloaded");
                    continue;
                }
            };
            match auth.reload(&config.api_tokens) {
                Ok(removed) => {
                    tracing::info!(
                        tokens = config.api_tokens.len(),
                        "SIGHUP: API tokens reloaded"
                    );
                    for tenant in removed {
                        match api.stop_tenant_agents(&tenant).await {
                            Ok(stopped) => tracing::info!(
                                tenant = %tenant,
                                agents = stopped.len(),
                                "a removed token's tenant: its long-lived agents are stopping"
                            ),
                            Err(e) => tracing::error!(
                                tenant = %tenant,
                                error = %e,
                                "cannot stop a removed token's agents"
                            ),
                        }
                    }
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: the API tokens were not reloaded; they stay as they were"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, auth, api);
    }
}

/// What the signal handler tells the host: whether start-up is over, and when to stop.
struct Shutdown {
    started: Arc<std::sync::atomic::AtomicBool>,
    requested: CancellationToken,
}

impl Shutdown {
    /// Start-up is over: from now on a signal asks for a graceful stop.
    fn started(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Resolves when a graceful stop was asked for.
    async fn requested(&self) {
        self.requested.cancelled().await;
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the moment this is made: a signal sent as soon
/// as the host says it is listening (or earlier) stops it gracefully rather than killing it.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Installs the handlers now.
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(signal) => Some(signal),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for {name}");
                    None
                }
            };
            Self {
                interrupt: install(SignalKind::interrupt(), "SIGINT"),
                terminate: install(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Handles the signals from now on (see [`Shutdown`]).
    fn watch(mut self) -> Shutdown {
        let shutdown = Shutdown {
            started: Arc::default(),
            requested: CancellationToken::new(),
        };
        let started = Arc::clone(&shutdown.started);
        let requested = shutdown.requested.clone();
        tokio::spawn(async move {
            self.next().await;
            if !started.load(std::sync::atomic::Ordering::Acquire) {
                tracing::warn!("signal during start-up: exiting now");
                std::process::exit(130);
            }
            tracing::info!("shutting down (send the signal again to exit at once)");
            requested.cancel();
            self.next().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
        shutdown
    }

    /// Resolves on the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.interrupt) => {}
                _ = recv(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
