//! The `drover-host` command line: `run` starts a host; the other subcommands are clients of a
//! running host's HTTP API.

mod client;
mod new;
mod prune;
mod run;
mod tokens;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::{self, LogFormat};

pub use client::ClientArgs;
pub use new::{Lang, NewArgs, NewLifecycle};
pub use prune::PruneArgs;
pub use run::RunArgs;
pub use tokens::TokensCommand;

/// A WebAssembly plugin host for sandboxed agents.
#[derive(Debug, Parser)]
#[command(name = "drover-host", version, about, long_about = None)]
pub struct Cli {
    /// Log line format.
    #[arg(long, env = "DROVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `drover_host=debug,warn`, …).
    #[arg(long, env = "DROVER_LOG", default_value = "info", global = true)]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the host: worker pool and HTTP API (with the run viewer) on the agent directory.
    Run(Box<RunArgs>),
    /// Create a ready agent in the agents directory: `drover-host new greeter --lang ts`.
    New(NewArgs),
    /// Delete finished jobs, runs and events older than an age (default 30 days), once.
    Prune(PruneArgs),
    /// API tokens: make one (`new`), hash one (`hash`), revoke one (`revoke`).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Enqueue a job: `drover-host enqueue echo '{"n": 42}' --wait`; or many from a file of
    /// JSON lines, each a `POST /v1/jobs` body: `drover-host enqueue --batch jobs.jsonl`.
    Enqueue {
        /// Agent id.
        #[arg(required_unless_present = "batch")]
        agent: Option<String>,
        /// Input (JSON).
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
        /// Wait for the job to finish and print its outcome.
        #[arg(long, conflicts_with = "batch")]
        wait: bool,
        /// Enqueue the jobs of this file (`-`: standard input), one JSON object a line, in
        /// batches of 1000.
        #[arg(long, value_name = "FILE")]
        batch: Option<std::path::PathBuf>,
        /// How long to wait, in milliseconds.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
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
        /// How long to wait, in milliseconds.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job (a running one is aborted and fails with `Cancelled`).
    Cancel {
        /// Job id.
        id: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask a job to stop gracefully (a long-lived agent finishes up and completes).
    Stop {
        /// Job id.
        id: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only these statuses (comma-separated: queued,leased,done,failed,cancelled).
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
    Agents {
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs the command line and returns the process exit code: 0 on success, 1 when the command
/// failed, 2 when a job it waited for failed or was cancelled, 3 when a wait timed out.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log);
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
            command => client::execute(command).await,
        }
    });
    ExitCode::from(code)
}
