//! `drover-host tokens`: make API tokens, hash them, revoke them.

use std::io::Read;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::ClientArgs;
use crate::api::auth::{self, ApiTokenConfig, Verb};

/// What `drover-host tokens` does.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a new random token: prints it once (keep it; the host stores only its hash) and the
    /// `[[api-tokens]]` entry to add to the configuration file.
    New {
        /// The token's name (how it is revoked and logged).
        #[arg(long)]
        name: String,
        /// The tenant whose work it sees, or `*` for every tenant.
        #[arg(long)]
        tenant: String,
        /// What it may do, comma-separated: enqueue, read, cancel, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        verbs: Vec<Verb>,
        /// Revoking the token (or removing it from the file) stops its tenant's long-lived
        /// agents.
        #[arg(long)]
        stop_agents_on_revoke: bool,
    },
    /// Print the SHA-256 of a token read from standard input (one line; surrounding
    /// whitespace is dropped), for the `sha256` of an `[[api-tokens]]` entry.
    Hash,
    /// Revoke a configured token on every host sharing the queue database (`POST
    /// /v1/tokens/{name}/revoke`; needs an admin token).
    Revoke {
        /// The token's name.
        name: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs a `tokens` subcommand; returns the exit code.
pub(super) async fn tokens(command: TokensCommand) -> u8 {
    match run(command).await {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

async fn run(command: TokensCommand) -> Result<(), String> {
    match command {
        TokensCommand::New {
            name,
            tenant,
            verbs,
            stop_agents_on_revoke,
        } => {
            let token = auth::new_token();
            let entry = ApiTokenConfig {
                name,
                sha256: auth::hex(&auth::hash_token(&token)),
                tenant,
                verbs,
                stop_agents_on_revoke,
            };
            auth::validate_tokens(std::slice::from_ref(&entry))?;
            #[derive(serde::Serialize)]
            #[serde(rename_all = "kebab-case")]
            struct Entries<'a> {
                api_tokens: [&'a ApiTokenConfig; 1],
            }
            let toml = toml::to_string(&Entries {
                api_tokens: [&entry],
            })
            .map_err(|e| format!("cannot write the entry: {e}"))?;
            println!("token: {token}");
            println!("(shown once: the host keeps only its hash; add this to drover.toml)");
            println!();
            print!("{toml}");
            Ok(())
        }
        TokensCommand::Hash => {
            let mut text = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
            let token = text.trim();
            if token.is_empty() {
                return Err("no token on standard input".into());
            }
            println!("{}", auth::hex(&auth::hash_token(token)));
            Ok(())
        }
        TokensCommand::Revoke { name, client } => {
            let (_, body) = super::client::Client::new(&client)
                .call(
                    Method::POST,
                    &["v1", "tokens", &name, "revoke"],
                    &[],
                    Some(&json!({})),
                    &[],
                )
                .await
                .map_err(|f| f.0)?;
            if client.json {
                println!("{body}");
            } else {
                let token = &body["token"];
                let stopped = token["stoppedAgents"].as_array().map_or(0, Vec::len);
                let already = if token["newly"] == false {
                    " (it already was)"
                } else {
                    ""
                };
                println!("revoked {name}{already}; {stopped} long-lived agent(s) asked to stop");
            }
            Ok(())
        }
    }
}
