//! The host configuration file, `drover.toml` (`--config` / `DROVER_CONFIG`). The host starts
//! without one; its sections are optional.
//!
//! ```toml
//! [models.cheap]
//! provider = "openai"
//! base-url = "http://127.0.0.1:11434/v1"
//! model = "qwen2.5:0.5b"
//! api-key-env = "OPENAI_API_KEY"
//! input-usd-per-mtok = 0.15
//! output-usd-per-mtok = 0.60
//!
//! [[api-tokens]]
//! name = "acme-ci"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! tenant = "acme"
//! verbs = ["enqueue", "read"]
//!
//! [secrets.sample-api-a]
//! from-env = "SAMPLE_API_A_TOKEN"
//! hosts = ["https://api.example.com"]
//!
//! [fair-share]
//! key = "tenant"
//! max-running = 20
//!
//! [inbox]
//! max-message-bytes = 65536
//! max-queued-messages = 1000
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::auth::ApiTokenConfig;
use crate::inbox::InboxConfig;
use crate::model::ModelsConfig;
use crate::outbound::OutboundConfig;
use crate::queue::FairShare;
use crate::secrets::SecretsConfig;

/// Everything `drover.toml` configures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HostConfig {
    /// The model aliases (`[models.<alias>]`).
    #[serde(default)]
    pub models: ModelsConfig,
    /// The API tokens (`[[api-tokens]]`), by hash; see [`crate::api::auth`]. Reloaded on
    /// SIGHUP.
    #[serde(default)]
    pub api_tokens: Vec<ApiTokenConfig>,
    /// Outbound HTTP from agents and tools (`[outbound]`).
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// The secrets agents may use without seeing them (`[secrets.<name>]`).
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// Fair shares across tenants or other concurrency keys (`[fair-share]`); none: claims in
    /// priority order alone.
    #[serde(default)]
    pub fair_share: Option<FairShare>,
    /// Messages to long-lived agents (`[inbox]`); see [`crate::inbox`].
    #[serde(default)]
    pub inbox: InboxConfig,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or not a valid configuration.
    #[error("configuration file {}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        problem: String,
    },
}

impl HostConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|problem| ConfigError::Invalid {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Parses and checks a configuration's text; says what is wrong, and where.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        config.models.validate().map_err(|e| e.to_string())?;
        crate::api::auth::validate_tokens(&config.api_tokens)?;
        config.outbound.validate()?;
        config.secrets.validate().map_err(|e| e.to_string())?;
        if let Some(fair_share) = &config.fair_share {
            fair_share.validate()?;
        }
        config.inbox.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::KeyExpr;

    #[test]
    fn fair_share_is_read_and_checked() {
        let config = HostConfig::parse(
            "[fair-share]\nkey = \"meta.customer\"\nmax-running = 5\n\
             [fair-share.max-running-for]\nacme = 50\n",
        )
        .expect("valid");
        let fair = config.fair_share.expect("fair share");
        assert_eq!(fair.key, KeyExpr::Meta(vec!["customer".into()]));
        assert_eq!(fair.max_running, Some(5));
        assert_eq!(fair.max_running_for.get("acme"), Some(&50));
        assert_eq!(HostConfig::parse("").expect("empty").fair_share, None);
        for (text, expected) in [
            (
                "[fair-share]\nkey = \"tenants\"",
                "\"tenants\" is not one of",
            ),
            ("[fair-share]\nkey = \"meta.\"", "empty field name"),
            ("[fair-share]\nmax-running = 5", "missing field `key`"),
            (
                "[fair-share]\nkey = \"tenant\"\nmax-running = 0",
                "at least 1",
            ),
            (
                "[fair-share]\nkey = \"tenant\"\nmax-running = -1",
                "max-running",
            ),
            (
                "[fair-share]\nkey = \"tenant\"\nmax-runing = 3",
                "unknown field",
            ),
            (
                "[fair-share]\nkey = \"agent\"\n[fair-share.max-running-for]\nbig = 0",
                "\"big\" must be at least 1",
            ),
        ] {
            let err = HostConfig::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
