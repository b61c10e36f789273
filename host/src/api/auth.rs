//! Who may call the API, and on whose behalf: API tokens.
//!
//! Tokens are declared in `drover.toml`, each by the SHA-256 of its text (the text itself is
//! never stored), with the tenant whose work it may see (`*`: every tenant) and the verbs it
//! may use:
//!
//! ```toml
//! [[api-tokens]]
//! name = "acme-ci"
//! sha256 = "<64 hex digits>"   # drover-host tokens new / drover-host tokens hash
//! tenant = "acme"              # or "*"
//! verbs = ["enqueue", "read", "cancel"]
//! stop-agents-on-revoke = true # optional: revoking it stops acme's long-lived agents
//! ```
//!
//! `read` is every `GET`; `enqueue` is `POST /v1/jobs`, `POST /v1/jobs/batch`, `POST /spawn` and posting a message to
//! a long-lived agent (`POST /v1/agents/{id}/messages`); `cancel` is cancel,
//! stop and `DELETE /v1/agents/{id}`; `admin` is all of them and the host-wide routes
//! (`/metrics`, `/v1/stats`, token revocation). `DROVER_API_TOKEN`, if set, is an admin token
//! of every tenant. `/healthz` needs no token.
//!
//! A token is revoked by name (`POST /v1/tokens/{name}/revoke`): the revocation is written to
//! the queue database, where every host on that database reads it (each host looks again at
//! most [`REVOCATION_REFRESH`] after its last look, so a revoked token is refused everywhere
//! within a second, and at once on the host that revoked it). A revocation names the token's
//! hash: a new token under the same name is not revoked with the old one. The token list is
//! swapped whole when the configuration is reloaded ([`Auth::reload`]).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::{Db, DbError, Migration, RowExt};
use crate::queue::validate_tenant_id;
use crate::time::now_ms;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Every `GET` (jobs, runs, events, agents, templates).
    Read,
    /// `POST /v1/jobs`, `POST /spawn`, `POST /v1/agents/{id}/messages`.
    Enqueue,
    /// Cancel and stop jobs, stop agents.
    Cancel,
    /// Everything, and the host-wide routes: `/metrics`, `/v1/stats`, token revocation.
    Admin,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 4] = [Verb::Read, Verb::Enqueue, Verb::Cancel, Verb::Admin];

    /// The name used in the configuration and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Read => "read",
            Verb::Enqueue => "enqueue",
            Verb::Cancel => "cancel",
            Verb::Admin => "admin",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verb {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verb::ALL
            .into_iter()
            .find(|v| v.as_str() == s.trim())
            .ok_or_else(|| format!("unknown verb {s:?} (expected enqueue, read, cancel or admin)"))
    }
}

/// The tenant `*`: every tenant.
pub const ALL_TENANTS: &str = "*";

/// One `[[api-tokens]]` entry of `drover.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApiTokenConfig {
    /// The token's name: how it is revoked, and how logs and errors refer to it.
    pub name: String,
    /// The SHA-256 of the token's text, in hex.
    pub sha256: String,
    /// The tenant whose jobs, runs and agents it sees, or `*` for every tenant.
    pub tenant: String,
    /// What it may do.
    pub verbs: Vec<Verb>,
    /// Whether revoking it (or removing it from the file) stops its tenant's long-lived
    /// agents. Needs a tenant (not `*`).
    #[serde(default)]
    pub stop_agents_on_revoke: bool,
}

/// Checks a list of tokens: names unique and plain, hashes 64 hex digits and unique, tenants
/// valid, verbs given. Says what is wrong, naming the token.
pub fn validate_tokens(tokens: &[ApiTokenConfig]) -> Result<(), String> {
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for token in tokens {
        let name = &token.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "api-tokens: the name {name:?} must be 1 to 64 ASCII letters, digits, '-', '_' \
                 or '.'"
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(format!("api-tokens: the name {name:?} is used twice"));
        }
        let hash = parse_hash(&token.sha256).ok_or_else(|| {
            format!(
                "api-tokens: {name}: sha256 must be 64 hex digits (the SHA-256 of the token; \
                 `drover-host tokens hash` prints it)"
            )
        })?;
        if !hashes.insert(hash) {
            return Err(format!(
                "api-tokens: {name}: the same token (sha256) is listed twice"
            ));
        }
        if token.tenant != ALL_TENANTS {
            validate_tenant_id(&token.tenant).map_err(|e| {
                format!("api-tokens: {name}: tenant: {e} (or \"*\" for every tenant)")
            })?;
        }
        if token.verbs.is_empty() {
            return Err(format!(
                "api-tokens: {name}: verbs must name at least one of enqueue, read, cancel, admin"
            ));
        }
        if token.stop_agents_on_revoke && token.tenant == ALL_TENANTS {
            return Err(format!(
                "api-tokens: {name}: stop-agents-on-revoke needs a tenant, not \"*\" (it would \
                 stop every tenant's agents)"
            ));
        }
    }
    Ok(())
}

/// The SHA-256 of a token's text.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A hash as 64 lower-case hex digits.
pub fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Compares two hashes in time that does not depend on where they differ.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller of a request, as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`DROVER_API_TOKEN` for that one; `anonymous` on a host without
    /// tokens).
    pub name: Arc<str>,
    /// The tenant it acts for; `None`: every tenant.
    pub tenant: Option<Arc<str>>,
    verbs: Vec<Verb>,
}

impl Principal {
    /// A caller that may do everything for every tenant.
    pub fn admin(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            tenant: None,
            verbs: vec![Verb::Admin],
        }
    }

    /// Whether it may use `verb` (`admin` may use every verb).
    pub fn may(&self, verb: Verb) -> bool {
        self.verbs.contains(&Verb::Admin) || self.verbs.contains(&verb)
    }
}

/// A configured token, decoded.
#[derive(Debug, Clone)]
struct Token {
    name: Arc<str>,
    hash: [u8; 32],
    tenant: Option<Arc<str>>,
    verbs: Vec<Verb>,
    stop_agents_on_revoke: bool,
}

impl Token {
    fn from_config(config: &ApiTokenConfig) -> Result<Self, AuthError> {
        let hash = parse_hash(&config.sha256).ok_or_else(|| {
            AuthError::Invalid(format!(
                "api-tokens: {}: sha256 must be 64 hex digits",
                config.name
            ))
        })?;
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            hash,
            tenant: (config.tenant != ALL_TENANTS).then(|| Arc::from(config.tenant.as_str())),
            verbs: config.verbs.clone(),
            stop_agents_on_revoke: config.stop_agents_on_revoke,
        })
    }

    fn principal(&self) -> Principal {
        Principal {
            name: Arc::clone(&self.name),
            tenant: self.tenant.clone(),
            verbs: self.verbs.clone(),
        }
    }
}

/// Errors of the token machinery.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token list is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The revocations table cannot be read or written.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Why a request's token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one this host does not know.
    Unknown,
    /// A token that was revoked.
    Revoked(Arc<str>),
}

/// A token that was revoked, as [`Auth::revoke`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    /// Its name.
    pub name: String,
    /// Its tenant (`None`: every tenant).
    pub tenant: Option<String>,
    /// Whether its tenant's long-lived agents are to be stopped.
    pub stop_agents: bool,
    /// `false` if it was already revoked.
    pub newly: bool,
}

/// Longest a host goes without reading the revocations of other hosts.
pub const REVOCATION_REFRESH: Duration = Duration::from_millis(500);

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "token revocations",
    sql: "CREATE TABLE IF NOT EXISTS api_token_revocations (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    revoked_at INTEGER NOT NULL
) WITHOUT ROWID;",
}];

/// The tokens a host accepts, and the revocations it honours. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// The hash of `DROVER_API_TOKEN`.
    admin: Option<[u8; 32]>,
    tokens: RwLock<Arc<Vec<Token>>>,
    /// Whether requests need a token: once any token is configured, always (a reload that
    /// empties the list refuses every request rather than opening the host).
    required: std::sync::atomic::AtomicBool,
    revocations: Option<Revocations>,
}

struct Revocations {
    db: Db,
    /// The revoked hashes, and when they were last read.
    cache: Mutex<(HashSet<[u8; 32]>, Option<Instant>)>,
    /// One read at a time.
    refresh: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("admin_token", &self.inner.admin.is_some())
            .field("tokens", &self.tokens().len())
            .finish()
    }
}

impl Auth {
    /// No tokens at all: every request may do everything, for every tenant (a host on a
    /// loopback address, or one behind a proxy that authenticates).
    pub fn none() -> Self {
        Self {
            inner: Arc::new(Inner {
                admin: None,
                tokens: RwLock::new(Arc::new(Vec::new())),
                required: false.into(),
                revocations: None,
            }),
        }
    }

    /// The admin token (`DROVER_API_TOKEN`) and the configured tokens; revocations are kept in
    /// `db` (the queue's database, shared by every host), whose table is created as needed.
    pub async fn open(
        admin_token: Option<&str>,
        tokens: &[ApiTokenConfig],
        db: Db,
    ) -> Result<Self, AuthError> {
        validate_tokens(tokens).map_err(AuthError::Invalid)?;
        db.migrate("auth", MIGRATIONS).await?;
        let decoded = tokens
            .iter()
            .map(Token::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        let auth = Self {
            inner: Arc::new(Inner {
                admin: admin_token.map(hash_token),
                required: (admin_token.is_some() || !decoded.is_empty()).into(),
                tokens: RwLock::new(Arc::new(decoded)),
                revocations: Some(Revocations {
                    db,
                    cache: Mutex::new((HashSet::new(), None)),
                    refresh: tokio::sync::Mutex::new(()),
                }),
            }),
        };
        auth.refresh_revocations().await?;
        Ok(auth)
    }

    /// Whether requests need a token.
    pub fn required(&self) -> bool {
        self.inner
            .required
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn tokens(&self) -> Arc<Vec<Token>> {
        Arc::clone(
            &self
                .inner
                .tokens
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Replaces the configured tokens (a configuration reload): a token no longer listed is
    /// refused from now on. Returns the tenants of the tokens that left the list with
    /// `stop-agents-on-revoke`, whose long-lived agents are to be stopped.
    pub fn reload(&self, tokens: &[ApiTokenConfig]) -> Result<Vec<Arc<str>>, AuthError> {
        validate_tokens(tokens).map_err(AuthError::Invalid)?;
        let decoded = tokens
            .iter()
            .map(Token::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        let kept: HashSet<[u8; 32]> = decoded.iter().map(|t| t.hash).collect();
        if !decoded.is_empty() {
            self.inner
                .required
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let old = std::mem::replace(
            &mut *self
                .inner
                .tokens
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            Arc::new(decoded),
        );
        Ok(old
            .iter()
            .filter(|t| t.stop_agents_on_revoke && !kept.contains(&t.hash))
            .filter_map(|t| t.tenant.clone())
            .collect())
    }

    /// The caller a bearer token (`None`: no `Authorization`) stands for.
    pub async fn authenticate(&self, presented: Option<&str>) -> Result<Principal, Refusal> {
        let Some(presented) = presented else {
            return if self.required() {
                Err(Refusal::Unknown)
            } else {
                Ok(Principal::admin("anonymous"))
            };
        };
        let hash = hash_token(presented);
        // Every candidate is compared, whichever matches.
        let mut found: Option<Principal> = None;
        if let Some(admin) = &self.inner.admin
            && same_hash(admin, &hash)
        {
            found = Some(Principal::admin("DROVER_API_TOKEN"));
        }
        let mut named = None;
        for token in self.tokens().iter() {
            if same_hash(&token.hash, &hash) {
                named = Some(token.principal());
            }
        }
        let principal = match (found, named) {
            (Some(admin), _) => admin,
            (None, Some(token)) => token,
            (None, None) if !self.required() => return Ok(Principal::admin("anonymous")),
            (None, None) => return Err(Refusal::Unknown),
        };
        if principal.name.as_ref() != "DROVER_API_TOKEN" && self.is_revoked(&hash).await {
            return Err(Refusal::Revoked(principal.name));
        }
        Ok(principal)
    }

    /// Whether `hash` was revoked, by this host or another: the list is read again when the
    /// copy here is older than [`REVOCATION_REFRESH`]. If it cannot be read, the last copy
    /// is used (and the failure logged).
    async fn is_revoked(&self, hash: &[u8; 32]) -> bool {
        let Some(revocations) = &self.inner.revocations else {
            return false;
        };
        let fresh = |r: &Revocations| {
            let cache = r.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache
                .1
                .is_some_and(|at| at.elapsed() < REVOCATION_REFRESH)
                .then(|| cache.0.contains(hash))
        };
        if let Some(revoked) = fresh(revocations) {
            return revoked;
        }
        if let Err(e) = self.refresh_revocations().await {
            tracing::warn!(error = %e, "cannot read the token revocations; using the last list read");
        }
        let cache = revocations
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache.0.contains(hash)
    }

    /// Reads the revocations again (unless another request just did).
    async fn refresh_revocations(&self) -> Result<(), AuthError> {
        let Some(revocations) = &self.inner.revocations else {
            return Ok(());
        };
        let _one = revocations.refresh.lock().await;
        let fresh = revocations
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .is_some_and(|at| at.elapsed() < REVOCATION_REFRESH);
        if fresh {
            return Ok(());
        }
        let read_at = Instant::now();
        let rows = revocations
            .db
            .query("SELECT sha256 FROM api_token_revocations", (), |row| {
                row.text(0)
            })
            .await?;
        let hashes = rows.iter().filter_map(|h| parse_hash(h)).collect();
        *revocations
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (hashes, Some(read_at));
        Ok(())
    }

    /// Revokes the configured token `name` for every host on the database (`None` if no
    /// token has that name). This host refuses it from now on.
    pub async fn revoke(&self, name: &str) -> Result<Option<Revoked>, AuthError> {
        let Some(revocations) = &self.inner.revocations else {
            return Ok(None);
        };
        let Some(token) = self.tokens().iter().find(|t| &*t.name == name).cloned() else {
            return Ok(None);
        };
        let (hash, token_name) = (hex(&token.hash), token.name.to_string());
        let written = revocations
            .db
            .write(move |conn| async move {
                Ok(conn
                    .execute(
                        "INSERT INTO api_token_revocations (sha256, name, revoked_at)
                         VALUES (?1, ?2, ?3) ON CONFLICT (sha256) DO NOTHING",
                        (hash, token_name, now_ms()),
                    )
                    .await?)
            })
            .await?;
        revocations
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .insert(token.hash);
        tracing::info!(token = %token.name, "API token revoked");
        Ok(Some(Revoked {
            name: token.name.to_string(),
            tenant: token.tenant.as_deref().map(str::to_string),
            stop_agents: token.stop_agents_on_revoke,
            newly: written > 0,
        }))
    }
}

/// A new random token: `drv_` and 64 hex digits, from two version-4 UUIDs (244 bits from
/// the operating system's random source; their version and variant bits are dropped).
pub fn new_token() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(a.as_bytes());
    bytes[16..].copy_from_slice(b.as_bytes());
    format!("drv_{}", hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, tenant: &str, verbs: &[Verb]) -> ApiTokenConfig {
        ApiTokenConfig {
            name: name.into(),
            sha256: hex(&hash_token(name)),
            tenant: tenant.into(),
            verbs: verbs.to_vec(),
            stop_agents_on_revoke: false,
        }
    }

    #[test]
    fn bad_token_lists_are_refused_naming_the_token() {
        let good = token("a", "acme", &[Verb::Read]);
        assert!(validate_tokens(std::slice::from_ref(&good)).is_ok());
        let cases = [
            (vec![good.clone(), good.clone()], "used twice"),
            (
                vec![ApiTokenConfig {
                    sha256: "abc".into(),
                    ..good.clone()
                }],
                "64 hex digits",
            ),
            (
                vec![ApiTokenConfig {
                    tenant: "a b".into(),
                    ..good.clone()
                }],
                "tenant",
            ),
            (
                vec![ApiTokenConfig {
                    verbs: Vec::new(),
                    ..good.clone()
                }],
                "at least one",
            ),
            (
                vec![ApiTokenConfig {
                    tenant: "*".into(),
                    stop_agents_on_revoke: true,
                    ..good.clone()
                }],
                "needs a tenant",
            ),
        ];
        for (tokens, expected) in cases {
            let error = validate_tokens(&tokens).expect_err(expected);
            assert!(error.contains(expected) && error.contains("a"), "{error}");
        }
    }

    #[test]
    fn new_tokens_differ_and_hash_to_64_hex_digits() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("drv_") && a.len() == 68, "{a}");
        let hash = hex(&hash_token(&a));
        assert_eq!(parse_hash(&hash), Some(hash_token(&a)));
        assert_eq!(
            hex(&hash_token("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
