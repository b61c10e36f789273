//! Fair shares: which concurrency key a job belongs to, and how many of a key's jobs may run at
//! once across every host on the database (`[fair-share]` in `drover.toml`).
//!
//! ```toml
//! [fair-share]
//! key = "tenant"          # or "agent", or "meta.<path>" (e.g. "meta.customer")
//! max-running = 20        # per key, across all hosts; absent: no cap, round-robin only
//!
//! [fair-share.max-running-for]
//! acme = 50
//! ```
//!
//! The key is computed when a job is enqueued and stored with it, and each job gets its key's
//! next turn as it becomes due. Claims take the highest priority first and, within a priority,
//! the jobs in turn order, so that the keys take turns; they never lease more of a key's jobs
//! than its cap (counted in the claim's own statement, so the cap holds across hosts).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::job::NewJob;
use super::schema::FairCaps;

/// Longest concurrency key a job may have, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// What a job's concurrency key is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyExpr {
    /// The job's tenant (`tenantId`); jobs without one share the key `""`.
    Tenant,
    /// The job's agent.
    Agent,
    /// A value in the job's `meta` JSON, found by following these object fields. A string is
    /// the key as it is; a number or boolean its JSON text; an absent field or `null`, `""`;
    /// an object or array, its compact JSON text.
    Meta(Vec<String>),
}

impl KeyExpr {
    /// Parses `tenant`, `agent` or `meta.<field>[.<field>…]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "tenant" => Ok(KeyExpr::Tenant),
            "agent" => Ok(KeyExpr::Agent),
            _ => match text.strip_prefix("meta.") {
                Some(path) => {
                    let fields: Vec<String> = path.split('.').map(str::to_string).collect();
                    if fields.iter().any(String::is_empty) {
                        return Err(format!(
                            "fair-share key {text:?} has an empty field name; write \
                             meta.<field>[.<field>…], e.g. meta.customer"
                        ));
                    }
                    Ok(KeyExpr::Meta(fields))
                }
                None => Err(format!(
                    "fair-share key {text:?} is not one of \"tenant\", \"agent\" or \
                     \"meta.<path>\" (e.g. \"meta.customer\")"
                )),
            },
        }
    }

    /// The concurrency key of `job`.
    pub fn key_of(&self, job: &NewJob) -> Result<String, String> {
        let key = match self {
            KeyExpr::Tenant => job.tenant_id.clone().unwrap_or_default(),
            KeyExpr::Agent => job.agent_id.clone(),
            KeyExpr::Meta(path) => match &job.meta {
                None => String::new(),
                Some(meta) => {
                    let meta: Value = serde_json::from_str(meta.get())
                        .map_err(|e| format!("meta is not valid JSON: {e}"))?;
                    let found = path.iter().try_fold(&meta, |value, field| value.get(field));
                    match found {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                    }
                }
            },
        };
        if key.len() > MAX_KEY_LEN {
            return Err(format!(
                "the fair-share key ({self}) of this job is {} bytes long; at most \
                 {MAX_KEY_LEN} are allowed",
                key.len()
            ));
        }
        Ok(key)
    }
}

impl fmt::Display for KeyExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyExpr::Tenant => f.write_str("tenant"),
            KeyExpr::Agent => f.write_str("agent"),
            KeyExpr::Meta(path) => write!(f, "meta.{}", path.join(".")),
        }
    }
}

impl Serialize for KeyExpr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyExpr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeyExpr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The `[fair-share]` section: the key jobs are grouped by, and the caps on how many of a key's
/// jobs run at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FairShare {
    /// What a job's concurrency key is computed from.
    pub key: KeyExpr,
    /// The most jobs of one key leased at once, across every host on the database (absent: no
    /// cap; claims still take from the keys round-robin).
    #[serde(default)]
    pub max_running: Option<u32>,
    /// Caps for particular keys, instead of `max-running`.
    #[serde(default)]
    pub max_running_for: BTreeMap<String, u32>,
}

impl FairShare {
    /// Groups jobs by `key`, with no caps.
    pub fn new(key: KeyExpr) -> Self {
        Self {
            key,
            max_running: None,
            max_running_for: BTreeMap::new(),
        }
    }

    /// Caps every key at `max` jobs running at once.
    pub fn max_running(mut self, max: u32) -> Self {
        self.max_running = Some(max);
        self
    }

    /// Caps `key` at `max` jobs running at once.
    pub fn max_running_for(mut self, key: impl Into<String>, max: u32) -> Self {
        self.max_running_for.insert(key.into(), max);
        self
    }

    /// Checks the caps; says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_running == Some(0) {
            return Err(
                "fair-share max-running must be at least 1 (leave it out for no cap)".into(),
            );
        }
        if let Some((key, _)) = self.max_running_for.iter().find(|(_, max)| **max == 0) {
            return Err(format!(
                "fair-share max-running-for {key:?} must be at least 1"
            ));
        }
        if let Some(key) = self.max_running_for.keys().find(|k| k.len() > MAX_KEY_LEN) {
            return Err(format!(
                "fair-share max-running-for names a key of {} bytes; keys are at most \
                 {MAX_KEY_LEN}",
                key.len()
            ));
        }
        Ok(())
    }

    /// How the claims cap the keys.
    pub(crate) fn caps(&self) -> FairCaps {
        if !self.max_running_for.is_empty() {
            FairCaps::PerKey
        } else if self.max_running.is_some() {
            FairCaps::One
        } else {
            FairCaps::None
        }
    }

    /// The caps as the claim statement of [`FairShare::caps`] reads them (after its first five
    /// parameters).
    pub(crate) fn claim_params(&self) -> Vec<libsql::Value> {
        let cap = |max: Option<u32>| max.map_or(libsql::Value::Null, |m| i64::from(m).into());
        match self.caps() {
            FairCaps::None => Vec::new(),
            FairCaps::One => vec![cap(self.max_running)],
            FairCaps::PerKey => vec![
                serde_json::to_string(&self.max_running_for)
                    .unwrap_or_else(|_| "{}".into())
                    .into(),
                cap(self.max_running),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_parse_and_print() {
        for text in ["tenant", "agent", "meta.customer", "meta.org.id"] {
            assert_eq!(KeyExpr::parse(text).expect(text).to_string(), text);
        }
        for bad in [
            "",
            "tenants",
            "meta",
            "meta.",
            "meta.a..b",
            "meta.a.",
            "user",
        ] {
            let err = KeyExpr::parse(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn keys_are_read_from_the_job() {
        let mut job = NewJob::new("echo", &json!({})).meta(&json!({
            "customer": "acme", "n": 7, "flag": true, "none": null, "org": {"id": "o-1"}
        }));
        let key = |expr: &str, job: &NewJob| KeyExpr::parse(expr).expect(expr).key_of(job);
        assert_eq!(key("agent", &job).as_deref(), Ok("echo"));
        assert_eq!(key("tenant", &job).as_deref(), Ok(""));
        job.tenant_id = Some("t-1".into());
        assert_eq!(key("tenant", &job).as_deref(), Ok("t-1"));
        assert_eq!(key("meta.customer", &job).as_deref(), Ok("acme"));
        assert_eq!(key("meta.n", &job).as_deref(), Ok("7"));
        assert_eq!(key("meta.flag", &job).as_deref(), Ok("true"));
        assert_eq!(key("meta.none", &job).as_deref(), Ok(""));
        assert_eq!(key("meta.missing", &job).as_deref(), Ok(""));
        assert_eq!(key("meta.org.id", &job).as_deref(), Ok("o-1"));
        assert_eq!(key("meta.customer.deeper", &job).as_deref(), Ok(""));
        let long = NewJob::new("echo", &json!({})).meta(&json!({ "c": "x".repeat(300) }));
        let err = key("meta.c", &long).expect_err("too long");
        assert!(err.contains("300 bytes"), "{err}");
    }

    #[test]
    fn zero_caps_are_refused() {
        let fair = FairShare::new(KeyExpr::Tenant);
        assert!(fair.validate().is_ok());
        assert!(fair.clone().max_running(0).validate().is_err());
        let err = fair
            .max_running_for("acme", 0)
            .validate()
            .expect_err("zero");
        assert!(err.contains("\"acme\""), "{err}");
    }
}
