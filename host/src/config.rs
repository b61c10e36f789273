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
//! [secrets.sample-api-a]
//! from-env = "SAMPLE_API_A_TOKEN"
//! hosts = ["https://api.example.com"]
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::ModelsConfig;
use crate::outbound::OutboundConfig;
use crate::secrets::SecretsConfig;

/// Everything `drover.toml` configures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HostConfig {
    /// The model aliases (`[models.<alias>]`).
    #[serde(default)]
    pub models: ModelsConfig,
    /// Outbound HTTP from agents and tools (`[outbound]`).
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// The secrets agents may use without seeing them (`[secrets.<name>]`).
    #[serde(default)]
    pub secrets: SecretsConfig,
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
        config.outbound.validate()?;
        config.secrets.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}
