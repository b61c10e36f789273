//! Secrets the guest never sees.
//!
//! The host's configuration declares secrets (`[secrets.<name>]`, see [`config`]), each bound to
//! the hosts its value may be sent to. An agent's manifest lists the secrets it may use; the
//! guest is given only a placeholder, [`placeholder`]`(name)` (`DROVER_SECRET_<name>`), in the
//! environment variable [`env_var`]`(name)`. When the guest sends a request, the host replaces
//! the placeholder with the value in the request's header values (and, for a secret with
//! `in-body = true`, in its body) — but only if the agent was granted the secret and the
//! request goes to one of the secret's hosts. Otherwise the request is refused and nothing is
//! sent.
//!
//! Every message that could echo a request back goes through [`Secrets::redact`], which
//! replaces every value the host holds with `[secret <name>]`.

pub mod config;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::sync::{Arc, RwLock};

use http::{HeaderMap, HeaderValue};

pub use config::{SecretConfig, SecretsConfig, validate_name};

use crate::outbound::{AllowList, Target};

/// What every placeholder starts with.
pub const PLACEHOLDER_PREFIX: &str = "DROVER_SECRET_";

/// The text a guest puts where the secret goes: `DROVER_SECRET_` + name (e.g.
/// `DROVER_SECRET_sample-api-a`).
pub fn placeholder(name: &str) -> String {
    format!("{PLACEHOLDER_PREFIX}{name}")
}

/// The environment variable a granted secret's placeholder is given to the guest under:
/// `DROVER_SECRET_` + the name upper-cased, with `-` and `.` as `_`
/// (`DROVER_SECRET_SAMPLE_API_A`).
pub fn env_var(name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("{PLACEHOLDER_PREFIX}{tail}")
}

/// A secret that cannot be loaded, or a request that may not carry a placeholder. Messages
/// name the secret, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A secret's name cannot be used.
    #[error("invalid secret name {name:?}: {problem}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A secret's configuration cannot be used.
    #[error("secret {name:?}: {problem}")]
    Invalid {
        /// The secret.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A secret's value cannot be read.
    #[error("secret {name:?}: {problem}")]
    Unavailable {
        /// The secret.
        name: String,
        /// Why.
        problem: String,
    },
    /// A request carries the placeholder of a secret the host does not have.
    #[error("the request carries the placeholder of an unknown secret {name:?}")]
    Unknown {
        /// The name in the placeholder.
        name: String,
    },
    /// A request carries the placeholder of a secret the agent was not granted.
    #[error("the request carries the placeholder of secret {name:?}, which the agent may not use")]
    NotGranted {
        /// The secret.
        name: String,
    },
    /// A request to a host the secret is not bound to carries its placeholder.
    #[error("secret {name:?} may not be sent to {target}")]
    NotBound {
        /// The secret.
        name: String,
        /// Where the request goes (`scheme://host:port`).
        target: String,
    },
}

/// A secret's value: printed by `Debug` as `<secret>`.
#[derive(Clone)]
struct Value(Arc<str>);

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// One loaded secret.
#[derive(Debug)]
struct Entry {
    hosts: AllowList,
    in_body: bool,
    value: Value,
}

struct Inner {
    entries: BTreeMap<String, Entry>,
    /// Every value the host holds, as `(name, value)`, longest value first; what
    /// [`Secrets::redact`] replaces.
    known: RwLock<Vec<(String, Value)>>,
    #[allow(dead_code)]
    client: Option<reqwest::Client>,
}

/// The host's secrets: cheap to clone (the clones share one set).
#[derive(Clone)]
pub struct Secrets {
    inner: Arc<Inner>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.inner.entries.iter()).finish()
    }
}

impl Default for Secrets {
    fn default() -> Self {
        Self::empty()
    }
}

impl Secrets {
    /// No secrets: every placeholder in a request header is refused.
    pub fn empty() -> Self {
        Self {
            inner: Arc::new(Inner {
                entries: BTreeMap::new(),
                known: RwLock::new(Vec::new()),
                client: None,
            }),
        }
    }

    /// Checks `config` and reads every `from-env` and `from-file` value now, from the process's
    /// environment; `client` is what tokens will be fetched with.
    pub fn new(config: &SecretsConfig, client: reqwest::Client) -> Result<Self, SecretError> {
        Self::with_env(config, client, |var| std::env::var_os(var))
    }

    /// [`Secrets::new`], with `env` looking environment variables up.
    pub fn with_env(
        config: &SecretsConfig,
        client: reqwest::Client,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Self, SecretError> {
        config.validate()?;
        let mut entries = BTreeMap::new();
        let mut known = Vec::new();
        for (name, secret) in &config.0 {
            let unavailable = |problem: String| SecretError::Unavailable {
                name: name.clone(),
                problem,
            };
            let text = match (&secret.from_env, &secret.from_file) {
                (Some(var), _) => env(var)
                    .ok_or_else(|| {
                        unavailable(format!("the environment variable {var} is not set"))
                    })?
                    .into_string()
                    // The variable's text is not printed: it is the secret.
                    .map_err(|_| {
                        unavailable(format!("the environment variable {var} is not UTF-8"))
                    })?,
                (None, Some(path)) => {
                    let bytes = std::fs::read(path).map_err(|e| {
                        unavailable(format!("cannot read {}: {}", path.display(), e.kind()))
                    })?;
                    let mut text = String::from_utf8(bytes).map_err(|_| {
                        unavailable(format!("the file {} is not UTF-8", path.display()))
                    })?;
                    let kept = text.trim_end_matches(['\r', '\n']).len();
                    text.truncate(kept);
                    text
                }
                (None, None) => unreachable_source(name)?,
            };
            check_value(&text).map_err(|problem| unavailable(problem.to_string()))?;
            let value = Value(text.into());
            known.push((name.clone(), value.clone()));
            entries.insert(
                name.clone(),
                Entry {
                    hosts: secret
                        .allow_list()
                        .map_err(|problem| SecretError::Invalid {
                            name: name.clone(),
                            problem,
                        })?,
                    in_body: secret.in_body,
                    value,
                },
            );
        }
        known.sort_by_key(|(_, value)| std::cmp::Reverse(value.0.len()));
        Ok(Self {
            inner: Arc::new(Inner {
                entries,
                known: RwLock::new(known),
                client: Some(client),
            }),
        })
    }

    /// Whether the host has a secret of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.entries.contains_key(name)
    }

    /// The names of the host's secrets, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.entries.keys().map(String::as_str)
    }

    /// Whether any of `granted` is substituted into request bodies too (the caller then buffers
    /// the body).
    pub fn needs_body(&self, granted: &[String]) -> bool {
        granted
            .iter()
            .any(|name| self.inner.entries.get(name).is_some_and(|e| e.in_body))
    }

    /// Replaces placeholders in header values (and in `body` if given and the secret allows it)
    /// of a request to `target` from an agent granted `granted`. A request that carries the
    /// placeholder of a secret that is not granted, or not bound to `target`'s host, is refused
    /// (Err) and nothing is sent; on Err, neither `headers` nor `body` is changed.
    ///
    /// In header values, any `DROVER_SECRET_<name>` must be a placeholder the request may carry
    /// (an unknown name is refused too). In a body, only the placeholders of secrets with
    /// `in-body = true` are looked at; other text is the guest's own and is sent as it is.
    /// Substituted header values are marked sensitive.
    ///
    /// Returns the names of the secrets substituted.
    pub async fn apply(
        &self,
        granted: &[String],
        target: &Target,
        headers: &mut HeaderMap,
        body: Option<&mut Vec<u8>>,
    ) -> Result<Vec<String>, SecretError> {
        // First every check, then every change: a refused request is left as it was.
        let mut used: BTreeSet<&str> = BTreeSet::new();
        for value in headers.values() {
            for found in placeholders(value.as_bytes()) {
                let (name, _) = self.allowed(found.name, granted, target)?;
                used.insert(name);
            }
        }
        let mut body_used = false;
        if let Some(body) = body.as_deref() {
            for found in placeholders(body) {
                if self
                    .inner
                    .entries
                    .get(found.name)
                    .is_some_and(|entry| entry.in_body)
                {
                    let (name, _) = self.allowed(found.name, granted, target)?;
                    used.insert(name);
                    body_used = true;
                }
            }
        }
        if used.is_empty() {
            return Ok(Vec::new());
        }
        let mut values: BTreeMap<&str, (bool, Value)> = BTreeMap::new();
        for name in &used {
            let entry = &self.inner.entries[*name];
            values.insert(name, (entry.in_body, self.value(name, entry).await?));
        }
        let mut new_headers = Vec::new();
        for (index, value) in headers.values().enumerate() {
            let bytes = value.as_bytes();
            if placeholders(bytes).next().is_none() {
                continue;
            }
            let replaced = substitute(bytes, |name| values.get(name).map(|(_, v)| v));
            let mut value =
                HeaderValue::from_bytes(&replaced).map_err(|_| SecretError::Invalid {
                    name: used.iter().copied().collect::<Vec<_>>().join(", "),
                    problem: "a value cannot be sent in a header".into(),
                })?;
            value.set_sensitive(true);
            new_headers.push((index, value));
        }
        let new_body = match (&body, body_used) {
            (Some(body), true) => Some(substitute(body, |name| {
                values
                    .get(name)
                    .and_then(|(in_body, v)| in_body.then_some(v))
            })),
            _ => None,
        };
        let mut new_headers = new_headers.into_iter().peekable();
        for (index, value) in headers.values_mut().enumerate() {
            if let Some((_, new)) = new_headers.next_if(|(i, _)| *i == index) {
                *value = new;
            }
        }
        if let (Some(body), Some(new)) = (body, new_body) {
            *body = new;
        }
        Ok(used.into_iter().map(str::to_string).collect())
    }

    /// `text` with every secret value the host holds (static values, cached tokens, client
    /// secrets) replaced by `[secret NAME]`. Used on every error/message that could echo a
    /// request back.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let known = self
            .inner
            .known
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = Cow::Borrowed(text);
        for (name, value) in known.iter() {
            if out.contains(&*value.0) {
                out = Cow::Owned(out.replace(&*value.0, &format!("[secret {name}]")));
            }
        }
        out
    }

    /// Whether the placeholder of `name` may go to `target` from an agent granted `granted`.
    fn allowed<'s>(
        &'s self,
        name: &str,
        granted: &[String],
        target: &Target,
    ) -> Result<(&'s str, &'s Entry), SecretError> {
        let (name, entry) =
            self.inner
                .entries
                .get_key_value(name)
                .ok_or_else(|| SecretError::Unknown {
                    name: name.to_string(),
                })?;
        if !granted.iter().any(|g| g == name) {
            return Err(SecretError::NotGranted { name: name.clone() });
        }
        if entry.hosts.allows(target).is_none() {
            return Err(SecretError::NotBound {
                name: name.clone(),
                target: target.to_string(),
            });
        }
        Ok((name, entry))
    }

    /// The value to put where the placeholder of `name` is.
    async fn value(&self, _name: &str, entry: &Entry) -> Result<Value, SecretError> {
        Ok(entry.value.clone())
    }
}

/// A `from-env`/`from-file` pair that validation lets through is never neither.
fn unreachable_source(name: &str) -> Result<String, SecretError> {
    Err(SecretError::Invalid {
        name: name.to_string(),
        problem: "give where its value comes from: from-env or from-file".into(),
    })
}

/// Checks that a value can be sent in a header: not empty, printable ASCII (spaces and tabs
/// allowed). Says what is wrong without showing the value.
fn check_value(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("its value is empty");
    }
    if HeaderValue::from_str(text).is_err() {
        return Err("its value has characters a header cannot carry (only printable ASCII)");
    }
    Ok(())
}

/// A placeholder found in a header value or a body.
struct Found<'a> {
    /// Where it starts.
    start: usize,
    /// Where it ends.
    end: usize,
    /// The secret's name.
    name: &'a str,
}

/// Every `DROVER_SECRET_<name>` in `bytes`: the name is the longest run of name characters
/// after the prefix, less any trailing `-`, `.` or `_` (a name ends with a letter or digit).
fn placeholders(bytes: &[u8]) -> impl Iterator<Item = Found<'_>> {
    let prefix = PLACEHOLDER_PREFIX.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        let at = bytes
            .get(from..)?
            .windows(prefix.len())
            .position(|w| w == prefix)?;
        let start = from + at;
        let name_start = start + prefix.len();
        let mut end = name_start;
        while end < bytes.len() && config::is_name_byte(bytes[end]) {
            end += 1;
        }
        while end > name_start && !bytes[end - 1].is_ascii_alphanumeric() {
            end -= 1;
        }
        from = end;
        // Name bytes are ASCII.
        let name = std::str::from_utf8(&bytes[name_start..end]).unwrap_or_default();
        Some(Found { start, end, name })
    })
}

/// `bytes` with each placeholder `value_of` knows replaced by its value.
fn substitute<'v>(bytes: &[u8], value_of: impl Fn(&str) -> Option<&'v Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for found in placeholders(bytes) {
        if let Some(value) = value_of(found.name) {
            out.extend_from_slice(&bytes[copied..found.start]);
            out.extend_from_slice(value.0.as_bytes());
            copied = found.end;
        }
    }
    out.extend_from_slice(&bytes[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> SecretsConfig {
        let table: BTreeMap<String, SecretConfig> = toml::from_str(text).expect("valid toml");
        SecretsConfig(table)
    }

    fn secrets(text: &str, env: &[(&str, &str)]) -> Result<Secrets, SecretError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Secrets::with_env(&config(text), reqwest::Client::new(), move |var| {
            env.get(var).map(OsString::from)
        })
    }

    const TWO: &str = r#"
        [sample-api-a]
        from-env = "A_TOKEN"
        hosts = ["https://api.example.com", "http://127.0.0.1:9000"]

        [body-key]
        from-env = "B_KEY"
        hosts = ["https://*.example.org"]
        in-body = true
    "#;

    fn two() -> Secrets {
        secrets(
            TWO,
            &[("A_TOKEN", "tok-aaaa-1111"), ("B_KEY", "key-bbbb-2222")],
        )
        .expect("loads")
    }

    fn target(url: &str) -> Target {
        Target::from_url(url).expect("a target")
    }

    fn granted(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn run<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn placeholders_and_env_vars() {
        assert_eq!(placeholder("sample-api-a"), "DROVER_SECRET_sample-api-a");
        assert_eq!(env_var("sample-api-a"), "DROVER_SECRET_SAMPLE_API_A");
        assert_eq!(env_var("big.v2_x"), "DROVER_SECRET_BIG_V2_X");
        let names: Vec<&str> = placeholders(
            b"Bearer DROVER_SECRET_a-b, DROVER_SECRET_c.d. \"DROVER_SECRET_e\"DROVER_SECRET_",
        )
        .map(|f| f.name)
        .collect();
        assert_eq!(names, ["a-b", "c.d", "e", ""]);
    }

    #[test]
    fn headers_get_values_only_for_bound_hosts() {
        let s = two();
        let mut h = headers(&[
            ("authorization", "Bearer DROVER_SECRET_sample-api-a"),
            ("x-other", "plain"),
        ]);
        let used = run(s.apply(
            &granted(&["sample-api-a"]),
            &target("https://api.example.com/work"),
            &mut h,
            None,
        ))
        .expect("bound host");
        assert_eq!(used, ["sample-api-a"]);
        assert_eq!(h["authorization"], "Bearer tok-aaaa-1111");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["x-other"], "plain");

        // The same request to another host (or port, or scheme) is refused and left as it was.
        for url in [
            "https://evil.example.net/",
            "https://api.example.com:8443/",
            "http://api.example.com/",
            "http://127.0.0.1:9001/",
        ] {
            let mut h = headers(&[("authorization", "Bearer DROVER_SECRET_sample-api-a")]);
            let error = run(s.apply(&granted(&["sample-api-a"]), &target(url), &mut h, None))
                .expect_err(url);
            assert!(
                matches!(&error, SecretError::NotBound { name, .. } if name == "sample-api-a"),
                "{error}"
            );
            assert_eq!(h["authorization"], "Bearer DROVER_SECRET_sample-api-a");
        }
    }

    #[test]
    fn ungranted_and_unknown_placeholders_are_refused() {
        let s = two();
        let to = target("https://api.example.com");
        let mut h = headers(&[
            ("x-ok", "DROVER_SECRET_sample-api-a"),
            ("x-key", "DROVER_SECRET_body-key"),
        ]);
        let error =
            run(s.apply(&granted(&["sample-api-a"]), &to, &mut h, None)).expect_err("refused");
        assert_eq!(
            error,
            SecretError::NotGranted {
                name: "body-key".into()
            }
        );
        // Nothing was substituted, not even the granted one.
        assert_eq!(h["x-ok"], "DROVER_SECRET_sample-api-a");

        let mut h = headers(&[("x", "DROVER_SECRET_nope")]);
        let error =
            run(s.apply(&granted(&["sample-api-a"]), &to, &mut h, None)).expect_err("refused");
        assert_eq!(
            error,
            SecretError::Unknown {
                name: "nope".into()
            }
        );

        let mut h = headers(&[("x", "DROVER_SECRET_sample-api-a")]);
        let error = run(Secrets::empty().apply(&[], &to, &mut h, None)).expect_err("refused");
        assert!(matches!(error, SecretError::Unknown { .. }));

        // No placeholder: nothing to do.
        let mut h = headers(&[("x", "DROVER_SECRET")]);
        assert!(
            run(s.apply(&[], &to, &mut h, None))
                .expect("works")
                .is_empty()
        );
    }

    #[test]
    fn bodies_only_for_in_body_secrets() {
        let s = two();
        assert!(s.needs_body(&granted(&["body-key"])));
        assert!(!s.needs_body(&granted(&["sample-api-a", "nope"])));

        let all = granted(&["sample-api-a", "body-key"]);
        let mut h = HeaderMap::new();
        let mut body =
            br#"{"key":"DROVER_SECRET_body-key","a":"DROVER_SECRET_sample-api-a"}"#.to_vec();
        let used = run(s.apply(
            &all,
            &target("https://x.example.org"),
            &mut h,
            Some(&mut body),
        ))
        .expect("works");
        assert_eq!(used, ["body-key"]);
        // The header-only secret stays a placeholder in the body.
        assert_eq!(
            body,
            br#"{"key":"key-bbbb-2222","a":"DROVER_SECRET_sample-api-a"}"#.to_vec()
        );

        let mut body = b"DROVER_SECRET_body-key".to_vec();
        let error = run(s.apply(
            &all,
            &target("https://api.example.com"),
            &mut h,
            Some(&mut body),
        ))
        .expect_err("refused");
        assert!(matches!(error, SecretError::NotBound { .. }));
        assert_eq!(body, b"DROVER_SECRET_body-key");
    }

    #[test]
    fn redaction_and_debug_hide_values() {
        let s = two();
        let text = "got tok-aaaa-1111 and key-bbbb-2222 back";
        assert_eq!(
            s.redact(text),
            "got [secret sample-api-a] and [secret body-key] back"
        );
        assert!(matches!(s.redact("nothing here"), Cow::Borrowed(_)));
        let debug = format!("{s:?}");
        assert!(debug.contains("sample-api-a"), "{debug}");
        assert!(
            !debug.contains("tok-aaaa") && !debug.contains("key-bbbb"),
            "{debug}"
        );
    }

    #[test]
    fn files_lose_trailing_line_breaks() {
        let dir = tempfile::tempdir().expect("works");
        let path = dir.path().join("token");
        std::fs::write(&path, "file-value-42\r\n").expect("works");
        let mut config = SecretsConfig::default();
        config.0.insert(
            "f".into(),
            SecretConfig::from_file(&path, &["https://api.example.com"]),
        );
        let s = Secrets::new(&config, reqwest::Client::new()).expect("works");
        let mut h = headers(&[("authorization", "Bearer DROVER_SECRET_f")]);
        run(s.apply(
            &granted(&["f"]),
            &target("https://api.example.com"),
            &mut h,
            None,
        ))
        .expect("works");
        assert_eq!(h["authorization"], "Bearer file-value-42");
    }

    #[test]
    fn bad_configs_name_the_secret_and_never_the_value() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "[a]\nfrom-env = \"NOPE\"\nhosts = [\"https://x.test\"]",
                &[],
                "secret \"a\": the environment variable NOPE is not set",
            ),
            (
                "[a]\nfrom-env = \"V\"\nhosts = [\"https://x.test\"]",
                &[("V", "")],
                "secret \"a\": its value is empty",
            ),
            (
                "[a]\nfrom-env = \"V\"\nhosts = [\"https://x.test\"]",
                &[("V", "line\nbreak-value")],
                "secret \"a\": its value has characters",
            ),
            (
                "[a]\nfrom-env = \"V\"\nhosts = []",
                &[("V", "x")],
                "secret \"a\": hosts must list at least one host",
            ),
            (
                "[a]\nfrom-env = \"V\"\nhosts = [\"api.example.com\"]",
                &[("V", "x")],
                "secret \"a\": hosts: \"api.example.com\"",
            ),
            (
                "[a]\nhosts = [\"https://x.test\"]",
                &[],
                "secret \"a\": give where its value comes from",
            ),
            (
                "[a]\nfrom-env = \"V\"\nfrom-file = \"f\"\nhosts = [\"https://x.test\"]",
                &[("V", "x")],
                "give one of from-env and from-file",
            ),
            (
                "[a]\nfrom-file = \"/nonexistent/secret\"\nhosts = [\"https://x.test\"]",
                &[],
                "secret \"a\": cannot read /nonexistent/secret: entity not found",
            ),
            (
                "[\"-a\"]\nfrom-env = \"V\"\nhosts = [\"https://x.test\"]",
                &[("V", "x")],
                "invalid secret name \"-a\"",
            ),
            (
                "[a-b]\nfrom-env = \"V\"\nhosts = [\"https://x.test\"]\n\
                 [a_b]\nfrom-env = \"V\"\nhosts = [\"https://x.test\"]",
                &[("V", "x")],
                "DROVER_SECRET_A_B is also secret",
            ),
        ];
        for (text, env, expected) in cases {
            let error = secrets(text, env).expect_err(text).to_string();
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
            assert!(!error.contains("break-value"), "{error}");
        }
        assert!(
            toml::from_str::<SecretsConfig>("[a]\nfrom-env = \"V\"\nhost = []").is_err(),
            "unknown keys are refused"
        );
    }
}
