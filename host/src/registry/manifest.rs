//! Agent manifests: `agents/<name>.toml` beside `agents/<name>.wasm`, the analogue of an agent
//! template. Every field is optional; what a manifest leaves out comes from the component's
//! `describe` export and the defaults for its lifecycle.
//!
//! ```toml
//! id = "queue-worker"            # default: the file name
//! description = "Drains a queue on a loop"
//! lifecycle = "long-lived"       # "job" or "long-lived"
//! scratch-dir = false            # a private directory at /scratch for each run
//! stop-grace-ms = 30000          # time to stop after being asked (long-lived)
//! max-restarts = 10              # restarts after host deaths (long-lived; default unlimited)
//! models = ["cheap"]             # model aliases the agent may call (default: none)
//! tools = ["calc", "json-query"] # tools the agent may call (default: none)
//! secrets = ["sample-api-a"]     # host secrets the agent may use (default: none); the agent
//!                                # sees each as a placeholder only, see `crate::secrets`
//!
//! [quota]                        # per-run budgets (default: none; the time limit still applies)
//! max-turns = 8                  # model calls
//! max-tokens = 20000             # input and output tokens together
//! max-cost-usd = 0.05            # at the alias's prices
//! max-tool-calls = 16
//!
//! [children]                     # agents its runs may spawn (see `crate::children`)
//! allowed = ["chain-worker"]     # agent ids (default: none)
//! max-depth = 2                  # deepest a child may be below its root (a root is 0)
//! max-fan-out = 3                # live children of one job at once
//! max-total = 100                # jobs below the root, in all
//!
//! [limits]
//! fuel = 5_000_000_000           # or "unlimited"
//! memory = "64MiB"               # at most the engine's max_memory_bytes (1 GiB by default)
//! timeout-ms = 60000             # or "none"
//! max-output-bytes = "1MiB"
//! max-events = 10000             # events per run, or "unlimited"
//! max-event-bytes = "64KiB"      # largest payload of one event
//! max-events-per-second = 100    # sustained event rate, or "unlimited"
//! event-burst = 1000             # events at once above that rate (needs a rate)
//! max-event-total-bytes = "16MiB" # bytes of events per run, or "unlimited"
//! max-event-bytes-per-second = "64KiB" # sustained event byte rate, or "unlimited"
//! event-byte-burst = "4MiB"      # event bytes at once above that rate (needs a byte rate)
//! max-log-bytes = "64KiB"        # stdout, stderr and `log` calls together
//! scratch-bytes = "256MiB"       # what the run's scratch directory may hold
//! scratch-files = 10000          # files and directories in it
//!
//! [env]
//! POLL_INTERVAL_MS = "30000"
//! ```
//!
//! Jobs default to `max-events = 10000`, `max-event-total-bytes = "16MiB"` and no rates;
//! long-lived agents to no event count or byte total, `max-events-per-second = 100` with
//! `event-burst = 1000`, and `max-event-bytes-per-second = "64KiB"` with
//! `event-byte-burst = "4MiB"` (see [`Limits`] for every default).
//! A memory limit above what the host's engine grants an instance, or `"unlimited"` memory, is
//! refused when the agent loads.
//!
//! # Declarative agents
//!
//! A manifest with no component beside it that has a `system-prompt` is an agent of its own: the
//! host runs it with its built-in agent loop. Its schemas are JSON Schemas written as TOML tables.
//!
//! ```toml
//! description = "Echoes its input back"
//! system-prompt = "Reply with {received, ok: true} as JSON."
//! model = "cheap"                # an alias; added to `models` if not listed there
//! temperature = 0.2              # optional, 0 to 2
//! max-output-tokens = 256        # optional, per model call
//! tools = []
//!
//! [input-schema]
//! type = "object"
//! required = ["n"]
//! properties.n.type = "integer"
//!
//! [output-schema]
//! type = "object"
//! properties.received.type = "integer"
//! properties.ok.type = "boolean"
//!
//! [quota]
//! max-turns = 2
//!
//! [limits]
//! timeout-ms = 60000
//! ```
//!
//! Declarative agents are jobs: `lifecycle = "long-lived"`, `scratch-dir`, `stop-grace-ms`,
//! `max-restarts`, `[env]`, `secrets` and `[children]` have no meaning for them and are refused.
//!
//! `[env]` names starting with `DROVER_SECRET_` are refused: that prefix is where the
//! placeholders of the agent's `secrets` are.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ByteRate, ChildrenPolicy, EventRate, Limits, Quota};
use crate::outbound::AllowList;
use crate::queue::Lifecycle;

/// A manifest that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("manifest {path}: {message}")]
pub struct ManifestError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// An agent manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    /// Agent id.
    pub id: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Lifecycle.
    pub lifecycle: Option<Lifecycle>,
    /// Per-run scratch directory.
    pub scratch_dir: Option<bool>,
    /// Stop grace period in milliseconds.
    pub stop_grace_ms: Option<u64>,
    /// Restart cap for long-lived agents.
    pub max_restarts: Option<i64>,
    /// Limit overrides.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Model aliases the agent may call.
    #[serde(default)]
    pub models: Vec<String>,
    /// Tools the agent may call.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Hosts the agent may send HTTP requests to (`scheme://host:port` patterns; none: no
    /// network).
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Host secrets the agent may use, by name (it sees only their placeholders).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Per-run budgets.
    #[serde(default)]
    pub quota: Quota,
    /// The agents its runs may spawn (`[children]`; none by default), and the bounds on its
    /// tree; `None` when the manifest has no such section.
    #[serde(default)]
    pub children: Option<ChildrenPolicy>,
    /// A declarative agent's system prompt.
    pub system_prompt: Option<String>,
    /// A declarative agent's model alias.
    pub model: Option<String>,
    /// A declarative agent's sampling temperature.
    pub temperature: Option<f32>,
    /// A declarative agent's cap on output tokens per model call.
    pub max_output_tokens: Option<u32>,
    /// A declarative agent's input schema (a JSON Schema as a TOML table).
    pub input_schema: Option<serde_json::Map<String, serde_json::Value>>,
    /// A declarative agent's output schema (a JSON Schema as a TOML table).
    pub output_schema: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Limit overrides in a manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitOverrides {
    /// Fuel per run.
    pub fuel: Option<Quantity>,
    /// Linear memory.
    pub memory: Option<Quantity>,
    /// Wall clock, in milliseconds.
    pub timeout_ms: Option<Quantity>,
    /// Output size.
    pub max_output_bytes: Option<Quantity>,
    /// Events per run.
    pub max_events: Option<Quantity>,
    /// Largest payload of one event.
    pub max_event_bytes: Option<Quantity>,
    /// Sustained events per second.
    pub max_events_per_second: Option<Quantity>,
    /// Events at once above the sustained rate.
    pub event_burst: Option<Quantity>,
    /// Bytes of events per run.
    pub max_event_total_bytes: Option<Quantity>,
    /// Sustained event bytes per second.
    pub max_event_bytes_per_second: Option<Quantity>,
    /// Event bytes at once above the sustained byte rate.
    pub event_byte_burst: Option<Quantity>,
    /// Bytes of log output (stdout, stderr and `log` calls) kept.
    pub max_log_bytes: Option<Quantity>,
    /// Bytes the scratch directory may hold.
    pub scratch_bytes: Option<Quantity>,
    /// Files and directories the scratch directory may hold.
    pub scratch_files: Option<Quantity>,
    /// HTTP requests in flight at once (at most the host's `[outbound]` value).
    pub max_concurrent_requests: Option<Quantity>,
    /// Largest HTTP request body (at most the host's).
    pub max_request_bytes: Option<Quantity>,
    /// Largest HTTP response body (at most the host's).
    pub max_response_bytes: Option<Quantity>,
    /// Longest one HTTP request may take, in milliseconds (at most the host's).
    pub request_timeout_ms: Option<Quantity>,
}

/// A number, a size with a unit (`"64MiB"`), or `"unlimited"` / `"none"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quantity {
    /// A finite amount.
    Finite(u64),
    /// No limit.
    Unlimited,
}

impl Quantity {
    /// The amount, if finite.
    pub fn finite(&self) -> Option<u64> {
        match self {
            Quantity::Finite(n) => Some(*n),
            Quantity::Unlimited => None,
        }
    }
}

/// Applies the overrides an agent's manifest and a tool's share: fuel, wall clock and output
/// size. (Memory is checked against what the engine grants, by each caller.)
pub(super) fn apply_call_limits(
    limits: &mut Limits,
    fuel: Option<&Quantity>,
    timeout_ms: Option<&Quantity>,
    max_output_bytes: Option<&Quantity>,
) {
    if let Some(q) = fuel {
        limits.fuel = q.finite();
    }
    if let Some(q) = timeout_ms {
        limits.timeout = q.finite().map(Duration::from_millis);
    }
    if let Some(q) = max_output_bytes {
        limits.max_output_bytes = q.finite().unwrap_or(u64::MAX);
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => u64::try_from(n)
                .map(Quantity::Finite)
                .map_err(|_| serde::de::Error::custom("must not be negative")),
            Raw::Text(text) => parse_quantity(&text).map_err(serde::de::Error::custom),
        }
    }
}

fn parse_quantity(text: &str) -> Result<Quantity, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(Quantity::Unlimited);
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let number: u64 = digits.replace('_', "").parse().map_err(|_| {
        format!("{text:?} is not a number, a size like \"64MiB\", or \"unlimited\"")
    })?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" | "kB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .map(Quantity::Finite)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl Manifest {
    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let err = |message: String| ManifestError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    /// Parses manifest text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(max) = manifest.max_restarts
            && max < 0
        {
            return Err("max-restarts must not be negative".into());
        }
        check_names("models", &manifest.models)?;
        check_names("tools", &manifest.tools)?;
        check_names("secrets", &manifest.secrets)?;
        if let Some(name) = manifest
            .env
            .keys()
            .find(|k| k.starts_with(crate::secrets::PLACEHOLDER_PREFIX))
        {
            return Err(format!(
                "[env] {name}: names starting with {} are reserved for the placeholders of \
                 the agent's secrets",
                crate::secrets::PLACEHOLDER_PREFIX
            ));
        }
        AllowList::parse(&manifest.allowed_outbound_hosts)
            .map_err(|e| format!("allowed-outbound-hosts: {e}"))?;
        if let Some(model) = &manifest.model {
            validate_name("model", model)?;
        }
        manifest.quota.validate()?;
        if let Some(children) = &manifest.children {
            check_names("children: allowed", &children.allowed)?;
            children.validate()?;
        }
        if let Some(t) = manifest.temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            return Err(format!("temperature must be from 0 to 2, not {t}"));
        }
        if manifest.max_output_tokens == Some(0) {
            return Err("max-output-tokens must be positive".into());
        }
        if let Some(prompt) = &manifest.system_prompt
            && prompt.trim().is_empty()
        {
            return Err("system-prompt must not be empty".into());
        }
        Ok(manifest)
    }

    /// Whether the manifest sets any field that only a declarative agent has.
    pub fn declarative_fields(&self) -> Vec<&'static str> {
        [
            ("system-prompt", self.system_prompt.is_some()),
            ("model", self.model.is_some()),
            ("temperature", self.temperature.is_some()),
            ("max-output-tokens", self.max_output_tokens.is_some()),
            ("input-schema", self.input_schema.is_some()),
            ("output-schema", self.output_schema.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// The fields set that have no meaning for a declarative agent (which is always a job).
    pub fn component_only_fields(&self) -> Vec<&'static str> {
        [
            (
                "lifecycle = \"long-lived\"",
                self.lifecycle == Some(Lifecycle::LongLived),
            ),
            ("scratch-dir", self.scratch_dir.is_some()),
            ("stop-grace-ms", self.stop_grace_ms.is_some()),
            ("max-restarts", self.max_restarts.is_some()),
            ("[env]", !self.env.is_empty()),
            (
                "allowed-outbound-hosts",
                !self.allowed_outbound_hosts.is_empty(),
            ),
            ("secrets", !self.secrets.is_empty()),
            ("[children]", self.children.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// The limits for an agent of `lifecycle`, with this manifest's overrides applied. Fails
    /// if the overrides do not make sense together (an `event-burst` without a rate).
    pub fn limits(&self, lifecycle: Lifecycle) -> Result<Limits, String> {
        let mut limits = Limits::for_lifecycle(lifecycle);
        let o = &self.limits;
        let finite = Quantity::finite;
        apply_call_limits(
            &mut limits,
            o.fuel.as_ref(),
            o.timeout_ms.as_ref(),
            o.max_output_bytes.as_ref(),
        );
        if let Some(q) = &o.memory {
            limits.memory_bytes = finite(q).unwrap_or(u64::MAX);
        }
        if let Some(q) = &o.max_events {
            limits.max_events = finite(q);
        }
        if let Some(q) = &o.max_event_bytes {
            limits.max_event_bytes = finite(q).unwrap_or(u64::MAX);
        }
        if let Some(q) = &o.max_events_per_second {
            limits.event_rate = finite(q).map(|per_second| EventRate {
                per_second,
                // A rate the manifest sets keeps the default burst if there is one, or else
                // allows ten seconds' worth at once.
                burst: limits
                    .event_rate
                    .map_or(per_second.saturating_mul(10), |r| r.burst),
            });
        }
        if let Some(q) = &o.event_burst {
            let Some(rate) = &mut limits.event_rate else {
                return Err(
                    "event-burst needs an event rate: set max-events-per-second too".into(),
                );
            };
            rate.burst = finite(q).ok_or(
                "event-burst must be a number (use max-events-per-second = \"unlimited\" to lift the rate)",
            )?;
        }
        if let Some(q) = &o.max_log_bytes {
            limits.max_log_bytes = finite(q).unwrap_or(u64::MAX);
        }
        limits.http = crate::outbound::HttpLimits {
            max_concurrent_requests: o
                .max_concurrent_requests
                .as_ref()
                .and_then(finite)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            max_request_bytes: o.max_request_bytes.as_ref().and_then(finite),
            max_response_bytes: o.max_response_bytes.as_ref().and_then(finite),
            request_timeout_ms: o.request_timeout_ms.as_ref().and_then(finite),
        };
        if let Some(q) = &o.max_event_total_bytes {
            limits.max_event_total_bytes = finite(q);
        }
        if let Some(q) = &o.max_event_bytes_per_second {
            limits.event_byte_rate = finite(q).map(|per_second| ByteRate {
                per_second,
                // As for the event rate: the default burst, or else ten seconds' worth.
                burst: limits
                    .event_byte_rate
                    .map_or(per_second.saturating_mul(10), |r| r.burst),
            });
        }
        if let Some(q) = &o.event_byte_burst {
            let Some(rate) = &mut limits.event_byte_rate else {
                return Err(
                    "event-byte-burst needs an event byte rate: set max-event-bytes-per-second too"
                        .into(),
                );
            };
            rate.burst = finite(q).ok_or(
                "event-byte-burst must be a size (use max-event-bytes-per-second = \"unlimited\" to lift the rate)",
            )?;
        }
        if let Some(q) = &o.scratch_bytes {
            limits.scratch_bytes = finite(q).unwrap_or(u64::MAX);
        }
        if let Some(q) = &o.scratch_files {
            limits.scratch_files = finite(q).unwrap_or(u64::MAX);
        }
        Ok(limits)
    }
}

/// Model aliases and tool names: 1 to 64 letters, digits, `-`, `_` and `.`.
pub(super) fn validate_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Checks every name of a `models` or `tools` list, and that none is listed twice.
fn check_names(list: &str, names: &[String]) -> Result<(), String> {
    let what = list.trim_end_matches('s');
    for (i, name) in names.iter().enumerate() {
        validate_name(what, name).map_err(|e| format!("{list}: {e}"))?;
        if names[..i].contains(name) {
            return Err(format!("{list} lists {name:?} twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_default_to_none_allowed_and_are_bounded() {
        let m = Manifest::parse("[children]\nallowed = [\"chain-worker\"]\nmax-depth = 4\n")
            .expect("parses");
        let children = m.children.expect("a [children] section");
        assert_eq!(children.allowed, ["chain-worker"]);
        assert_eq!(
            (children.max_depth, children.max_fan_out, children.max_total),
            (4, 3, 100)
        );
        assert!(Manifest::parse("").expect("parses").children.is_none());
        let zero = Manifest::parse("[children]\nmax-fan-out = 0\n").expect_err("refused");
        assert!(zero.contains("max-fan-out must be from 1"), "{zero}");
        let deep = Manifest::parse("[children]\nmax-depth = 65\n").expect_err("refused");
        assert!(deep.contains("max-depth must be from 1 to 64"), "{deep}");
        let twice = Manifest::parse("[children]\nallowed = [\"a\", \"a\"]\n").expect_err("refused");
        assert!(twice.contains("lists \"a\" twice"), "{twice}");
        let unknown = Manifest::parse("[children]\nmax-width = 2\n").expect_err("refused");
        assert!(unknown.contains("unknown field"), "{unknown}");
    }

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(
            r#"
            id = "qw"
            lifecycle = "long-lived"
            scratch-dir = true
            stop-grace-ms = 500
            [limits]
            fuel = "unlimited"
            memory = "32MiB"
            timeout-ms = 1_000
            max-events = 5
            [env]
            POLL_INTERVAL_MS = "10"
            "#,
        )
        .expect("valid");
        assert_eq!(m.id.as_deref(), Some("qw"));
        assert_eq!(m.lifecycle, Some(Lifecycle::LongLived));
        let limits = m.limits(Lifecycle::LongLived).expect("limits");
        assert_eq!(limits.fuel, None);
        assert_eq!(limits.memory_bytes, 32 << 20);
        assert_eq!(limits.timeout, Some(Duration::from_secs(1)));
        assert_eq!(limits.max_events, Some(5));
        assert_eq!(limits.max_event_bytes, 64 << 10, "the default");
        assert_eq!(
            limits.event_rate,
            Some(EventRate {
                per_second: 100,
                burst: 1000
            }),
            "long-lived agents are rate limited by default"
        );
        assert_eq!(
            m.env.get("POLL_INTERVAL_MS").map(String::as_str),
            Some("10")
        );
    }

    #[test]
    fn rejects_typos_and_bad_sizes_clearly() {
        let typo = Manifest::parse("lifecylce = \"job\"").expect_err("unknown field");
        assert!(typo.contains("lifecylce"), "{typo}");
        let size = Manifest::parse("[limits]\nmemory = \"64 parsecs\"").expect_err("bad unit");
        assert!(size.contains("unknown unit"), "{size}");
        let negative = Manifest::parse("[limits]\nfuel = -1").expect_err("negative");
        assert!(negative.contains("negative"), "{negative}");
        let lifecycle = Manifest::parse("lifecycle = \"forever\"").expect_err("bad lifecycle");
        assert!(lifecycle.contains("forever"), "{lifecycle}");
    }

    #[test]
    fn scratch_budgets_can_be_set_and_lifted() {
        let m = Manifest::parse("[limits]\nscratch-bytes = \"8MiB\"\nscratch-files = 20")
            .expect("parse");
        let limits = m.limits(Lifecycle::Job).expect("limits");
        assert_eq!((limits.scratch_bytes, limits.scratch_files), (8 << 20, 20));
        let m = Manifest::parse("[limits]\nscratch-bytes = \"unlimited\"").expect("parse");
        let limits = m.limits(Lifecycle::Job).expect("limits");
        assert_eq!(limits.scratch_bytes, u64::MAX);
        assert_eq!(
            limits.scratch_files,
            super::super::limits::DEFAULT_SCRATCH_FILES
        );
    }

    #[test]
    fn event_limits_can_be_set_and_lifted() {
        let m = Manifest::parse(
            "[limits]\nmax-event-bytes = \"1KiB\"\nmax-events-per-second = 5\nevent-burst = 7",
        )
        .expect("valid");
        let job = m.limits(Lifecycle::Job).expect("limits");
        assert_eq!(job.max_event_bytes, 1024);
        assert_eq!(
            job.event_rate,
            Some(EventRate {
                per_second: 5,
                burst: 7
            })
        );
        let rate_only = Manifest::parse("[limits]\nmax-events-per-second = 5").expect("valid");
        assert_eq!(
            rate_only.limits(Lifecycle::Job).expect("limits").event_rate,
            Some(EventRate {
                per_second: 5,
                burst: 50
            }),
            "a job's rate gets ten seconds' worth of burst"
        );
        let lifted =
            Manifest::parse("[limits]\nmax-events-per-second = \"unlimited\"").expect("valid");
        assert_eq!(
            lifted
                .limits(Lifecycle::LongLived)
                .expect("limits")
                .event_rate,
            None
        );
        let bytes = Manifest::parse(
            "[limits]\nmax-event-total-bytes = \"2KiB\"\nmax-event-bytes-per-second = \"1KiB\"",
        )
        .expect("valid");
        let job = bytes.limits(Lifecycle::Job).expect("limits");
        assert_eq!(job.max_event_total_bytes, Some(2048));
        assert_eq!(
            job.event_byte_rate,
            Some(ByteRate {
                per_second: 1024,
                burst: 10 * 1024
            })
        );
        let long_lived = bytes.limits(Lifecycle::LongLived).expect("limits");
        assert_eq!(
            long_lived.event_byte_rate.map(|r| r.burst),
            Some(4 << 20),
            "a long-lived agent keeps its default byte burst"
        );
        let unlimited = Manifest::parse(
            "[limits]\nmax-event-total-bytes = \"unlimited\"\nevent-byte-burst = \"1MiB\"",
        )
        .expect("valid");
        assert_eq!(
            unlimited
                .limits(Lifecycle::LongLived)
                .expect("limits")
                .event_byte_rate,
            Some(ByteRate {
                per_second: 64 << 10,
                burst: 1 << 20
            })
        );
        let error = unlimited.limits(Lifecycle::Job).expect_err("no byte rate");
        assert!(error.contains("max-event-bytes-per-second"), "{error}");
        assert_eq!(
            Limits::for_lifecycle(Lifecycle::Job).max_event_total_bytes,
            Some(16 << 20)
        );
        let burst_alone = Manifest::parse("[limits]\nevent-burst = 3").expect("parses");
        let error = burst_alone.limits(Lifecycle::Job).expect_err("no rate");
        assert!(error.contains("max-events-per-second"), "{error}");
        assert!(burst_alone.limits(Lifecycle::LongLived).is_ok());
    }

    #[test]
    fn secrets_are_listed_by_name_and_their_env_prefix_is_reserved() {
        let m = Manifest::parse("secrets = [\"sample-api-a\"]").expect("valid");
        assert_eq!(m.secrets, ["sample-api-a"]);
        for (text, expected) in [
            ("secrets = [\"a\", \"a\"]", "secrets lists \"a\" twice"),
            ("secrets = [\"a b\"]", "invalid secret name"),
            (
                "[env]\nDROVER_SECRET_X = \"mine\"",
                "[env] DROVER_SECRET_X: names starting with DROVER_SECRET_ are reserved",
            ),
        ] {
            let error = Manifest::parse(text).expect_err(text);
            assert!(
                error.contains(expected),
                "{error:?} should say {expected:?}"
            );
        }
    }

    #[test]
    fn models_tools_and_quota_are_read_and_checked() {
        let m = Manifest::parse(
            "models = [\"cheap\", \"big.v2\"]\ntools = [\"calc\", \"json-query\"]\n\
             [quota]\nmax-turns = 8\nmax-tokens = 20000\nmax-cost-usd = 1\nmax-tool-calls = 3",
        )
        .expect("valid");
        assert_eq!(m.models, ["cheap", "big.v2"]);
        assert_eq!(m.tools, ["calc", "json-query"]);
        assert_eq!(
            m.quota,
            Quota {
                max_turns: Some(8),
                max_tokens: Some(20000),
                max_cost_usd: Some(1.0),
                max_tool_calls: Some(3),
            }
        );
        let none = Manifest::parse("").expect("empty");
        assert!(none.models.is_empty() && none.tools.is_empty());
        assert!(none.quota.is_unlimited());
        for (text, expected) in [
            ("[quota]\nmax-turns = 0", "max-turns must be positive"),
            ("[quota]\nmax-tokens = 0", "max-tokens must be positive"),
            (
                "[quota]\nmax-tool-calls = 0",
                "max-tool-calls must be positive",
            ),
            ("[quota]\nmax-turns = -1", "-1"),
            (
                "[quota]\nmax-cost-usd = 0.0",
                "max-cost-usd must be a positive number",
            ),
            (
                "[quota]\nmax-cost-usd = -2.5",
                "max-cost-usd must be a positive number",
            ),
            (
                "[quota]\nmax-cost-usd = nan",
                "max-cost-usd must be a positive number",
            ),
            (
                "[quota]\nmax-cost-usd = inf",
                "max-cost-usd must be a positive number",
            ),
            ("[quota]\nmax-turnz = 2", "max-turnz"),
            ("tools = [\"no spaces\"]", "invalid tool name \"no spaces\""),
            ("tools = [\"\"]", "invalid tool name"),
            ("models = [\"a/b\"]", "invalid model name \"a/b\""),
            ("tools = [\"calc\", \"calc\"]", "tools lists \"calc\" twice"),
            ("model = \"c h e a p\"", "invalid model name"),
            ("temperature = 3.5", "temperature must be from 0 to 2"),
            (
                "max-output-tokens = 0",
                "max-output-tokens must be positive",
            ),
            ("system-prompt = \"  \"", "system-prompt must not be empty"),
        ] {
            let error = Manifest::parse(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
        let long = format!("tools = [\"{}\"]", "x".repeat(65));
        assert!(Manifest::parse(&long).is_err());
        let longest = format!("tools = [\"{}\"]", "x".repeat(64));
        assert!(Manifest::parse(&longest).is_ok());
    }

    #[test]
    fn a_declarative_agents_fields_and_schemas_as_tables() {
        let m = Manifest::parse(
            r#"
            system-prompt = "Reply with {received, ok: true} as JSON."
            model = "cheap"
            temperature = 0.5
            max-output-tokens = 64
            [input-schema]
            type = "object"
            required = ["n"]
            properties.n.type = "integer"
            [quota]
            max-turns = 2
            "#,
        )
        .expect("valid");
        assert_eq!(
            m.declarative_fields(),
            [
                "system-prompt",
                "model",
                "temperature",
                "max-output-tokens",
                "input-schema"
            ]
        );
        assert!(m.component_only_fields().is_empty());
        assert_eq!(
            serde_json::Value::Object(m.input_schema.clone().expect("schema")),
            serde_json::json!({
                "type": "object",
                "required": ["n"],
                "properties": { "n": { "type": "integer" } }
            })
        );
        let component =
            Manifest::parse("lifecycle = \"long-lived\"\n[env]\nA = \"1\"").expect("valid");
        assert!(component.declarative_fields().is_empty());
        assert_eq!(
            component.component_only_fields(),
            ["lifecycle = \"long-lived\"", "[env]"]
        );
    }
}
