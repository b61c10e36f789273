//! The `drover-host` command line: `run` starts a host; the other subcommands are clients of a
//! running host's HTTP API.

mod args;
mod build;
mod client;
mod new;
mod prune;
mod run;
mod tokens;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::{self, LogFormat};

pub use build::BuildArgs;
pub use client::ClientArgs;
pub use new::{Lang, NewArgs, NewLifecycle};
pub use prune::PruneArgs;
pub use run::RunArgs;
pub use tokens::TokensCommand;

/// What the exit codes of every subcommand mean.
const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    the command failed: bad arguments, the host unreachable, or the host refused (an unknown
       agent type, a job or agent that has already finished, ...); the reason is on stderr
  2    a job waited for (`--wait`, `wait`) failed or was cancelled
  3    waiting timed out (the job is still unfinished; `send --wait`: no reply yet)
  130  interrupted (SIGINT or SIGTERM; `run` exits so on a second signal or during start-up)

Client commands talk to the host at --url (DROVER_URL, default http://127.0.0.1:8080).";

/// A WebAssembly plugin host for sandboxed agents.
#[derive(Debug, Parser)]
#[command(name = "drover-host", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Logging options of the commands that log (`run`, `prune`).
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "DROVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `drover_host=debug,warn`, …).
    #[arg(long, env = "DROVER_LOG", default_value = "info")]
    pub log: String,
}

/// How long a client command waits.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// How long to wait (`30s`, `5m`, `500ms`).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = args::parse_duration)]
    pub timeout: Duration,
    /// The same in milliseconds (the older spelling).
    #[arg(long, hide = true, conflicts_with = "timeout")]
    pub timeout_ms: Option<u64>,
}

impl WaitArgs {
    /// The time to wait.
    pub fn duration(&self) -> Duration {
        self.timeout_ms.map_or(self.timeout, Duration::from_millis)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the host: worker pool and HTTP API (with the run viewer) on the agent directory.
    Run(Box<RunArgs>),
    /// Create a ready agent in the agents directory: `drover-host new greeter --lang ts`.
    New(NewArgs),
    /// Build agents into components and install them in the agents directory (a running host
    /// loads them at once): `drover-host build greeter`, or every agent; `--watch` rebuilds on
    /// every change.
    Build(BuildArgs),
    /// Delete finished jobs, runs and events older than an age (default 30 days), once.
    Prune(PruneArgs),
    /// API tokens: make one (`new`), hash one (`hash`), revoke one (`revoke`).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Enqueue a job: `drover-host enqueue echo '{"n": 42}' --wait`; or many from a file of
    /// JSON lines, each a `POST /v1/jobs` body: `drover-host enqueue --batch jobs.jsonl`.
    Enqueue {
        /// Agent type.
        #[arg(required_unless_present = "batch")]
        agent: Option<String>,
        /// Input: JSON, `@FILE` (a file's JSON) or `-` (standard input's).
        #[arg(default_value = "null")]
        input: String,
        /// Job id (default: a new UUID; an existing id returns that job).
        #[arg(long)]
        id: Option<String>,
        /// Higher is claimed first.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// Attempts before the job fails for good.
        #[arg(long)]
        max_attempts: Option<i64>,
        /// The tenant the job belongs to (a tenant's token sets its own).
        #[arg(long)]
        tenant: Option<String>,
        /// The user the job is started for.
        #[arg(long)]
        user: Option<String>,
        /// Caller metadata kept with the job: JSON, `@FILE` or `-`.
        #[arg(long)]
        meta: Option<String>,
        /// Not claimed before this long from now (`30s`, `5m`, `1h 30m`).
        #[arg(long, value_name = "DURATION", value_parser = args::parse_duration, conflicts_with = "at")]
        delay: Option<Duration>,
        /// Not claimed before this time: RFC 3339 (`2026-12-24T18:00:00Z`) or epoch milliseconds.
        #[arg(long, value_name = "TIME", value_parser = args::parse_time)]
        at: Option<i64>,
        /// Wait for the job to finish and print its outcome.
        #[arg(long, conflicts_with = "batch")]
        wait: bool,
        /// Enqueue the jobs of this file (`-`: standard input), one JSON object a line, in
        /// batches of 1000.
        #[arg(long, value_name = "FILE")]
        batch: Option<std::path::PathBuf>,
        /// How long `--wait` waits.
        #[command(flatten)]
        wait_for: WaitArgs,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a job and its latest run.
    Get {
        /// Job id.
        id: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait for a job to finish.
    Wait {
        /// Job id.
        id: String,
        /// How long to wait.
        #[command(flatten)]
        wait_for: WaitArgs,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job or long-lived agent: a queued one ends `cancelled`, a running one is aborted
    /// and ends `failed (Cancelled)`. One that has already finished is refused (exit code 1).
    Cancel {
        /// Job id.
        id: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask a long-lived agent (or a job) to stop gracefully: it finishes up and ends `done`.
    /// One that has already finished is refused (exit code 1). `delete` is another name.
    #[command(alias = "delete")]
    Stop {
        /// Agent or job id.
        id: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only these statuses (comma-separated: scheduled, queued, running, done, failed,
        /// cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List runs, newest first.
    Runs {
        /// Only these statuses (comma-separated).
        #[arg(long)]
        status: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a run's events (a job id shows its latest run).
    Events {
        /// Run id or job id.
        id: String,
        /// Keep printing new events until the run ends.
        #[arg(long)]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the agent types the host has loaded (and files it could not load).
    #[command(alias = "templates")]
    Types {
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start a long-lived agent of a type: `drover-host spawn queue-worker '{"intervalMs": 500}'`.
    /// Prints its id, which `agents`, `send`, `events` and `stop` take.
    Spawn {
        /// Agent type (a long-lived one; run-to-completion types are enqueued as jobs).
        agent_type: String,
        /// Input: JSON, `@FILE` or `-`.
        #[arg(default_value = "null")]
        input: String,
        /// The tenant it belongs to (a tenant's token sets its own).
        #[arg(long)]
        tenant: Option<String>,
        /// The user it is started for.
        #[arg(long)]
        user: Option<String>,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List long-lived agents, newest first.
    Agents {
        /// Only these job statuses (comma-separated: queued, running, done, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many of each type.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a message to a long-lived agent's inbox: `drover-host send chat-0a1b '"hi"' --wait 30s`.
    Send {
        /// Agent id.
        id: String,
        /// The message: JSON, `@FILE` or `-`.
        message: String,
        /// Wait this long for the agent's reply and print it (exit code 3 if none came).
        #[arg(long, value_name = "DURATION", value_parser = args::parse_duration)]
        wait: Option<Duration>,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a long-lived agent's latest messages and their replies, oldest first.
    Messages {
        /// Agent id.
        id: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs the command line and returns the process exit code (see [`EXIT_CODES`]): 0 on success,
/// 1 when the command failed, 2 when a job it waited for failed or was cancelled, 3 when a
/// wait timed out.
pub fn main() -> ExitCode {
    // Bad arguments exit with 1 like every other failure (clap's own default is 2, which
    // here means a failed job).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match &cli.command {
        Command::Run(args) => telemetry::init(args.log.log_format, &args.log.log),
        Command::Prune(args) => telemetry::init(args.log.log_format, &args.log.log),
        // Client commands print what they have to say; logs only say what goes wrong.
        _ => telemetry::init(LogFormat::Pretty, "warn"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("drover")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => match run::run(*args).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    1
                }
            },
            Command::Prune(args) => match prune::prune(args).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            },
            Command::Tokens(command) => tokens::tokens(command).await,
            Command::New(args) => match new::new(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            },
            Command::Build(args) => match build::build(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            },
            command => client::execute(command).await,
        }
    });
    ExitCode::from(code)
}
