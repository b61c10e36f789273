//! Secrets as `drover.toml` declares them (`[secrets.<name>]`), and their validation.
//!
//! ```toml
//! [secrets.sample-api-a]
//! from-env = "SAMPLE_API_A_TOKEN"      # or: from-file = "/run/secrets/sample-api-a"
//! hosts = ["https://api.example.com"]  # where its value may be sent (required)
//! in-body = false                      # also substituted in request bodies (default: false)
//! ```
//!
//! The configuration holds where a value comes from, never the value itself.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{SecretError, env_var};
use crate::outbound::AllowList;

/// The secrets of a host: `[secrets.<name>]` tables of `drover.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretsConfig(pub BTreeMap<String, SecretConfig>);

/// Longest secret name.
const MAX_NAME_LEN: usize = 64;

impl SecretsConfig {
    /// Checks every secret: its name, exactly one source, its hosts; and that no two names
    /// give the same environment variable. Reads no environment variable and no file.
    pub fn validate(&self) -> Result<(), SecretError> {
        let mut vars: BTreeMap<String, &str> = BTreeMap::new();
        for (name, secret) in &self.0 {
            validate_name(name)?;
            secret.validate().map_err(|problem| SecretError::Invalid {
                name: name.clone(),
                problem,
            })?;
            if let Some(other) = vars.insert(env_var(name), name) {
                return Err(SecretError::Invalid {
                    name: name.clone(),
                    problem: format!(
                        "its environment variable {} is also secret {other:?}'s",
                        env_var(name)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether a secret of this name is declared.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Checks a secret's name: 1 to 64 letters, digits, `-`, `.` or `_`, starting and ending with a
/// letter or digit.
pub fn validate_name(name: &str) -> Result<(), SecretError> {
    let invalid = |problem: &str| SecretError::InvalidName {
        name: name.to_string(),
        problem: problem.to_string(),
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid("a secret name must have 1 to 64 characters"));
    }
    if !name.bytes().all(is_name_byte) {
        return Err(invalid(
            "a secret name is made of letters, digits, `-`, `.` and `_`",
        ));
    }
    let bytes = name.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err(invalid(
            "a secret name starts and ends with a letter or a digit",
        ));
    }
    Ok(())
}

/// Whether `b` may be part of a secret's name.
pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// One secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SecretConfig {
    /// The environment variable holding the value, read once when the host starts.
    #[serde(default)]
    pub from_env: Option<String>,
    /// The file holding the value (trailing line breaks are not part of it), read once when
    /// the host starts.
    #[serde(default)]
    pub from_file: Option<PathBuf>,
    /// The hosts the value may be sent to, as allowed-host patterns
    /// (`https://api.example.com`, `https://*.example.org:443`; see [`crate::outbound::pattern`]).
    pub hosts: Vec<String>,
    /// Whether the placeholder is replaced in request bodies too, not only in headers.
    #[serde(default)]
    pub in_body: bool,
}

impl SecretConfig {
    /// A secret read from the environment variable `var`, sent only to `hosts`.
    pub fn from_env(var: impl Into<String>, hosts: &[&str]) -> Self {
        Self {
            from_env: Some(var.into()),
            from_file: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            in_body: false,
        }
    }

    /// A secret read from the file at `path`, sent only to `hosts`.
    pub fn from_file(path: impl Into<PathBuf>, hosts: &[&str]) -> Self {
        Self {
            from_env: None,
            from_file: Some(path.into()),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            in_body: false,
        }
    }

    /// The hosts as an allow-list.
    pub fn allow_list(&self) -> Result<AllowList, String> {
        AllowList::parse(&self.hosts).map_err(|e| format!("hosts: {e}"))
    }

    /// Checks the secret: exactly one source, a valid variable name, at least one host
    /// pattern, each readable. Says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.from_env, &self.from_file) {
            (Some(_), Some(_)) => {
                return Err("give one of from-env and from-file, not both".into());
            }
            (None, None) => {
                return Err("give where its value comes from: from-env or from-file".into());
            }
            (Some(var), None) => {
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(format!(
                        "from-env {var:?} is not an environment variable name"
                    ));
                }
            }
            (None, Some(path)) => {
                if path.as_os_str().is_empty() {
                    return Err("from-file must name a file".into());
                }
            }
        }
        if self.hosts.is_empty() {
            return Err(
                "hosts must list at least one host its value may be sent to, as in \
                 [\"https://api.example.com\"]"
                    .into(),
            );
        }
        self.allow_list()?;
        Ok(())
    }
}
