//! Secrets as `drover.toml` declares them (`[secrets.<name>]`), and their validation.
//!
//! ```toml
//! [secrets.sample-api-a]
//! from-env = "SAMPLE_API_A_TOKEN"      # or: from-file = "/run/secrets/sample-api-a"
//! hosts = ["https://api.example.com"]  # where its value may be sent (required)
//! in-body = false                      # also substituted in request bodies (default: false)
//!
//! [secrets.sample-api-a-write]         # an OAuth2 client-credentials grant instead:
//! hosts = ["https://api.example.com"]  # its access token is what the placeholder becomes
//! [secrets.sample-api-a-write.oauth2]
//! token-url = "https://auth.example.com/oauth/token"
//! client-id-env = "SAMPLE_CLIENT_ID"
//! client-secret-env = "SAMPLE_CLIENT_SECRET"
//! scope = "sample-api-a:write"         # one or more scopes, separated by spaces
//! audience = "https://api.example.com" # optional, sent as the `audience` parameter
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
    /// An OAuth2 client-credentials grant whose access token is the value.
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
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
            oauth2: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            in_body: false,
        }
    }

    /// A secret read from the file at `path`, sent only to `hosts`.
    pub fn from_file(path: impl Into<PathBuf>, hosts: &[&str]) -> Self {
        Self {
            from_env: None,
            from_file: Some(path.into()),
            oauth2: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            in_body: false,
        }
    }

    /// A secret whose value is an access token of the grant `oauth2`, sent only to `hosts`.
    pub fn oauth2(oauth2: OAuth2Config, hosts: &[&str]) -> Self {
        Self {
            from_env: None,
            from_file: None,
            oauth2: Some(oauth2),
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
        let sources = usize::from(self.from_env.is_some())
            + usize::from(self.from_file.is_some())
            + usize::from(self.oauth2.is_some());
        if sources == 0 {
            return Err("give where its value comes from: from-env, from-file or [oauth2]".into());
        }
        if sources > 1 {
            return Err("give one of from-env, from-file and [oauth2], not several".into());
        }
        if let Some(var) = &self.from_env {
            check_var("from-env", var)?;
        }
        if let Some(path) = &self.from_file
            && path.as_os_str().is_empty()
        {
            return Err("from-file must name a file".into());
        }
        if let Some(oauth2) = &self.oauth2 {
            oauth2.validate().map_err(|e| format!("oauth2: {e}"))?;
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

/// Checks that `var` (the value of `key`) can name an environment variable.
fn check_var(key: &str, var: &str) -> Result<(), String> {
    if var.is_empty() || var.contains(['=', '\0']) {
        return Err(format!("{key} {var:?} is not an environment variable name"));
    }
    Ok(())
}

/// An OAuth2 client-credentials grant (`[secrets.<name>.oauth2]`): the client's id and secret
/// are read from the environment when the host starts; tokens are fetched on first use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OAuth2Config {
    /// The token endpoint, an `http://` or `https://` URL.
    pub token_url: String,
    /// The environment variable holding the client id.
    pub client_id_env: String,
    /// The environment variable holding the client secret.
    pub client_secret_env: String,
    /// The scope asked for: one or more scopes separated by spaces.
    pub scope: String,
    /// An `audience` parameter sent with the request, for endpoints that want one.
    #[serde(default)]
    pub audience: Option<String>,
}

impl OAuth2Config {
    /// Checks the grant: a token URL with a host, variable names, a scope. Says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match reqwest::Url::parse(&self.token_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Ok(_) => {
                return Err(format!(
                    "token-url {:?} must be an http:// or https:// URL with a host",
                    self.token_url
                ));
            }
            Err(e) => return Err(format!("token-url {:?} is not a URL: {e}", self.token_url)),
        }
        check_var("client-id-env", &self.client_id_env)?;
        check_var("client-secret-env", &self.client_secret_env)?;
        if self.scope.split_whitespace().next().is_none() {
            return Err("scope must name at least one scope".into());
        }
        if self
            .audience
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err("audience must not be empty (leave it out instead)".into());
        }
        Ok(())
    }
}
