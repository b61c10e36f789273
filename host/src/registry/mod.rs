//! Agent registries: which agents exist, what they are allowed to use, and how to run them.
//!
//! An [`AgentSpec`] describes one agent type: its id, lifecycle, limits, input and output
//! schemas, the model aliases and tools it may use, its per-run [`Quota`], and its code (a
//! native Rust agent, a WebAssembly component, or a [`DeclarativeAgent`]: a system prompt and a
//! model that the host's built-in agent loop runs). A [`Registry`] looks specs up by id;
//! [`StaticRegistry`] is a fixed set, and [`DirRegistry`] loads `agents/*.wasm` and declarative
//! `agents/*.toml` and follows changes. A [`ToolSpec`] describes one tool (a component of the
//! `toolbox` world); a [`ToolRegistry`] looks tools up by name, and [`DirRegistry`] loads
//! `agents/tools/*.wasm`.

mod component;
pub mod dir;
mod limits;
mod manifest;
mod schema;
pub mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outbound::AllowList;
use crate::queue::Lifecycle;

pub use component::{
    CompiledAgent, CompiledToolbox, Compiling, ComponentCompiler, Description, NativeCode,
    ToolDescription, human_bytes,
};
pub use dir::DirRegistry;
pub use limits::{
    ByteRate, DEFAULT_LONG_LIVED_EVENT_BYTE_RATE, DEFAULT_LONG_LIVED_EVENT_RATE,
    DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_EVENT_TOTAL_BYTES, EventRate, Limits, MIN_EVENT_CHARGE,
};
pub use manifest::{Manifest, ManifestError};
pub use schema::{Schema, SchemaError};
pub use tools::{StaticToolRegistry, ToolManifest, ToolRegistry, ToolSpec, validate_tool_name};

/// The code behind an agent.
#[derive(Clone)]
pub enum AgentCode {
    /// In-process Rust code, trusted (runs only in the none sandbox).
    Native(Arc<dyn NativeCode>),
    /// A WebAssembly component.
    Wasm(Arc<dyn CompiledAgent>),
    /// No code: a system prompt and a model, run by the host's built-in agent loop.
    Declarative(Arc<DeclarativeAgent>),
}

impl std::fmt::Debug for AgentCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentCode::Native(_) => f.write_str("Native"),
            AgentCode::Wasm(agent) => f.debug_tuple("Wasm").field(&agent.digest()).finish(),
            AgentCode::Declarative(agent) => f.debug_tuple("Declarative").field(agent).finish(),
        }
    }
}

/// An agent that is only configuration (`agents/<id>.toml` with a `system-prompt` and no
/// component): the host runs it with its built-in agent loop. Its schemas, tools, quota and
/// model aliases are on its [`AgentSpec`] as for any agent (`spec.models` contains `model`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclarativeAgent {
    /// The system message of every conversation.
    pub system_prompt: String,
    /// The model alias the loop calls.
    pub model: String,
    /// Sampling temperature (the provider's default if unset).
    pub temperature: Option<f32>,
    /// Cap on output tokens per model call (the alias's if unset; never more than the alias's).
    pub max_output_tokens: Option<u32>,
}

/// Per-run budgets, enforced by the host: a run that goes past one ends with status `quota`.
/// `None` is no limit (the run's time limit still applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    rename_all(serialize = "camelCase", deserialize = "kebab-case"),
    deny_unknown_fields
)]
pub struct Quota {
    /// Model calls per run.
    pub max_turns: Option<u32>,
    /// Input and output tokens per run, over all model calls.
    pub max_tokens: Option<u64>,
    /// Cost per run in US dollars, at the prices of the aliases called.
    pub max_cost_usd: Option<f64>,
    /// Tool calls per run.
    pub max_tool_calls: Option<u32>,
}

impl Quota {
    /// Whether no budget is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }

    /// Checks that every budget set is positive (and the cost finite).
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            ("max-turns", self.max_turns == Some(0)),
            ("max-tokens", self.max_tokens == Some(0)),
            ("max-tool-calls", self.max_tool_calls == Some(0)),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, zero)| *zero) {
            return Err(format!("quota: {name} must be positive"));
        }
        if let Some(cost) = self.max_cost_usd
            && !(cost.is_finite() && cost > 0.0)
        {
            return Err(format!(
                "quota: max-cost-usd must be a positive number, not {cost}"
            ));
        }
        Ok(())
    }
}

/// Which agents an agent's runs may spawn, and how far its tree may grow: its manifest's
/// `[children]`. Enforced by the host at every spawn (see [`crate::children`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all(serialize = "camelCase", deserialize = "kebab-case"),
    deny_unknown_fields
)]
pub struct ChildrenPolicy {
    /// The agent ids its runs may spawn (default: none, so it spawns nothing).
    #[serde(default)]
    pub allowed: Vec<String>,
    /// The deepest a child it spawns may be below the root (a root is at depth 0).
    #[serde(default = "ChildrenPolicy::default_max_depth")]
    pub max_depth: u32,
    /// Most live (unfinished) children of one of its jobs at once.
    #[serde(default = "ChildrenPolicy::default_max_fan_out")]
    pub max_fan_out: u32,
    /// Most jobs below the root of its tree, spawned by anyone in it, finished or not.
    #[serde(default = "ChildrenPolicy::default_max_total")]
    pub max_total: u32,
}

impl Default for ChildrenPolicy {
    fn default() -> Self {
        Self {
            allowed: Vec::new(),
            max_depth: Self::default_max_depth(),
            max_fan_out: Self::default_max_fan_out(),
            max_total: Self::default_max_total(),
        }
    }
}

/// Highest `max-depth` a manifest may set.
pub const MAX_CHILD_DEPTH: u32 = 64;
/// Highest `max-fan-out` and `max-total` a manifest may set.
pub const MAX_CHILD_COUNT: u32 = 100_000;

impl ChildrenPolicy {
    fn default_max_depth() -> u32 {
        2
    }

    fn default_max_fan_out() -> u32 {
        3
    }

    fn default_max_total() -> u32 {
        100
    }

    /// Checks the bounds: `max-depth` from 1 to [`MAX_CHILD_DEPTH`], `max-fan-out` and
    /// `max-total` from 1 to [`MAX_CHILD_COUNT`].
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_CHILD_DEPTH).contains(&self.max_depth) {
            return Err(format!(
                "children: max-depth must be from 1 to {MAX_CHILD_DEPTH}, not {}",
                self.max_depth
            ));
        }
        for (name, value) in [
            ("max-fan-out", self.max_fan_out),
            ("max-total", self.max_total),
        ] {
            if !(1..=MAX_CHILD_COUNT).contains(&value) {
                return Err(format!(
                    "children: {name} must be from 1 to {MAX_CHILD_COUNT}, not {value}"
                ));
            }
        }
        Ok(())
    }
}

/// Everything the host knows about one agent type.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Unique id, used in jobs' `agentId`.
    pub id: String,
    /// The agent's version string.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Runs to completion, or until told to stop.
    pub lifecycle: Lifecycle,
    /// Resource limits in the wasm sandbox.
    pub limits: Limits,
    /// Environment variables the agent sees (wasm sandbox: nothing else is visible).
    pub env: BTreeMap<String, String>,
    /// Whether each run gets a private scratch directory (wasm sandbox).
    pub scratch_dir: bool,
    /// How long a long-lived agent may take to stop after being asked, before it is interrupted.
    #[serde(serialize_with = "serialize_ms")]
    pub stop_grace: Duration,
    /// Cap on restarts after its host died (long-lived agents; `None`: unlimited).
    pub max_restarts: Option<i64>,
    /// Input validation.
    pub input_schema: Option<Schema>,
    /// Output validation.
    pub output_schema: Option<Schema>,
    /// Model aliases the agent may call.
    pub models: Vec<String>,
    /// Tools the agent may call.
    pub tools: Vec<String>,
    /// Host secrets the agent may use, by name: a run sees only their placeholders.
    pub secrets: Vec<String>,
    /// Per-run budgets.
    pub quota: Quota,
    /// The agents its runs may spawn, and the bounds on its tree.
    pub children: ChildrenPolicy,
    /// Hosts its runs may send HTTP requests to (its manifest's `allowed-outbound-hosts`).
    #[serde(skip)]
    pub outbound: AllowList,
    /// Where the code came from (a `.wasm` file, or a declarative agent's `.toml`), if anywhere.
    pub source: Option<PathBuf>,
    /// The code.
    #[serde(skip)]
    pub code: AgentCode,
}

fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Default time a long-lived agent gets to stop gracefully.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);

impl AgentSpec {
    /// A spec for native code, with default limits for a job (`AgentSpec::native`, beside the
    /// none sandbox that runs it, makes one from a Rust agent).
    pub fn from_native(id: impl Into<String>, code: Arc<dyn NativeCode>) -> Self {
        Self {
            id: id.into(),
            version: "0.0.0".into(),
            description: String::new(),
            lifecycle: Lifecycle::Job,
            limits: Limits::for_lifecycle(Lifecycle::Job),
            env: BTreeMap::new(),
            scratch_dir: false,
            stop_grace: DEFAULT_STOP_GRACE,
            max_restarts: None,
            input_schema: None,
            output_schema: None,
            models: Vec::new(),
            tools: Vec::new(),
            secrets: Vec::new(),
            quota: Quota::default(),
            children: ChildrenPolicy::default(),
            outbound: AllowList::default(),
            source: None,
            code: AgentCode::Native(code),
        }
    }

    /// A spec for a loaded component, from what it says about itself and the default limits of
    /// its lifecycle. Fails if its schemas are not valid JSON Schemas.
    pub fn from_component(
        id: impl Into<String>,
        agent: Arc<dyn CompiledAgent>,
    ) -> Result<Self, SchemaError> {
        let described = agent.description().clone();
        let schema = |text: &Option<String>| text.as_deref().map(Schema::parse).transpose();
        Ok(Self {
            id: id.into(),
            version: described.version,
            description: described.description,
            lifecycle: described.lifecycle,
            limits: Limits::for_lifecycle(described.lifecycle),
            env: BTreeMap::new(),
            scratch_dir: false,
            stop_grace: DEFAULT_STOP_GRACE,
            max_restarts: None,
            input_schema: schema(&described.input_schema)?,
            output_schema: schema(&described.output_schema)?,
            models: Vec::new(),
            tools: Vec::new(),
            secrets: Vec::new(),
            quota: Quota::default(),
            children: ChildrenPolicy::default(),
            outbound: AllowList::default(),
            source: None,
            code: AgentCode::Wasm(agent),
        })
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Makes the agent long-lived (and gives it the long-lived default limits).
    pub fn long_lived(mut self) -> Self {
        self.lifecycle = Lifecycle::LongLived;
        self.limits = Limits::for_lifecycle(Lifecycle::LongLived);
        self
    }

    /// Sets the input schema.
    pub fn input_schema(mut self, schema: Schema) -> Self {
        self.input_schema = Some(schema);
        self
    }

    /// Sets the output schema.
    pub fn output_schema(mut self, schema: Schema) -> Self {
        self.output_schema = Some(schema);
        self
    }

    /// Whether the code is a WebAssembly component.
    pub fn is_wasm(&self) -> bool {
        matches!(self.code, AgentCode::Wasm(_))
    }

    /// Sets the stop grace period.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Sets the model aliases the agent may call.
    pub fn models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the tools the agent may call.
    pub fn tools<S: Into<String>>(mut self, tools: impl IntoIterator<Item = S>) -> Self {
        self.tools = tools.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the host secrets the agent may use.
    pub fn secrets<S: Into<String>>(mut self, secrets: impl IntoIterator<Item = S>) -> Self {
        self.secrets = secrets.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the per-run budgets.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// Sets the agents its runs may spawn, and the bounds on its tree.
    pub fn children(mut self, children: ChildrenPolicy) -> Self {
        self.children = children;
        self
    }

    /// The agents its `[children]` allows that are not among `agents` (the loaded ones), one
    /// problem each. Such an agent loads; a spawn of a missing agent fails with `UnknownAgent`.
    pub fn check_children(&self, agents: &[String]) -> Vec<String> {
        self.children
            .allowed
            .iter()
            .filter(|a| !agents.contains(a))
            .map(|a| {
                format!(
                    "agent {:?} may spawn agent {a:?} ([children] allowed), which is not loaded \
                     (loaded: {})",
                    self.id,
                    agents.join(", ")
                )
            })
            .collect()
    }

    /// Whether the agent is declarative (run by the host's built-in agent loop).
    pub fn is_declarative(&self) -> bool {
        matches!(self.code, AgentCode::Declarative(_))
    }

    /// What this agent lists that the host does not have: each model alias not among `aliases`
    /// (the configured ones) and each tool not among `tools` (the loaded ones), one problem each.
    /// Empty: every capability it asks for is there.
    pub fn check_capabilities(&self, aliases: &[String], tools: &[String]) -> Vec<String> {
        let known = |names: &[String]| {
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        let models = self
            .models
            .iter()
            .filter(|m| !aliases.contains(m))
            .map(|m| {
                format!(
                    "agent {:?} lists model alias {m:?}, which is not configured (configured: {})",
                    self.id,
                    known(aliases)
                )
            });
        let missing_tools = self.tools.iter().filter(|t| !tools.contains(t)).map(|t| {
            format!(
                "agent {:?} lists tool {t:?}, which is not loaded (loaded: {})",
                self.id,
                known(tools)
            )
        });
        models.chain(missing_tools).collect()
    }

    /// What this agent lists that the host does not have: each secret not among `known` (the
    /// host's), one problem each. Such an agent loads; a request carrying the placeholder of a
    /// missing secret is refused.
    pub fn check_secrets(&self, known: &[&str]) -> Vec<String> {
        missing_secrets(&format!("agent {:?}", self.id), &self.secrets, known)
    }
}

/// One problem for each of `listed` (the secrets an agent's or a tool's manifest lists, `who`)
/// that is not among `known` (the host's).
pub(crate) fn missing_secrets(who: &str, listed: &[String], known: &[&str]) -> Vec<String> {
    listed
        .iter()
        .filter(|s| !known.contains(&s.as_str()))
        .map(|s| {
            format!(
                "{who} lists secret {s:?}, which is not configured (configured: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
        .collect()
}

/// Looks agents up by id.
pub trait Registry: Send + Sync + 'static {
    /// The agent with this id, if any.
    fn get(&self, id: &str) -> Option<Arc<AgentSpec>>;
    /// Every agent, ordered by id.
    fn list(&self) -> Vec<Arc<AgentSpec>>;
}

/// A fixed set of agents.
#[derive(Debug, Clone, Default)]
pub struct StaticRegistry {
    agents: BTreeMap<String, Arc<AgentSpec>>,
}

impl StaticRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an agent.
    pub fn with(mut self, spec: AgentSpec) -> Self {
        self.insert(spec);
        self
    }

    /// Adds (or replaces) an agent.
    pub fn insert(&mut self, spec: AgentSpec) {
        self.agents.insert(spec.id.clone(), Arc::new(spec));
    }
}

impl Registry for StaticRegistry {
    fn get(&self, id: &str) -> Option<Arc<AgentSpec>> {
        self.agents.get(id).cloned()
    }

    fn list(&self) -> Vec<Arc<AgentSpec>> {
        self.agents.values().cloned().collect()
    }
}

/// Several registries searched in order (e.g. native agents, then the agent directory).
#[derive(Clone, Default)]
pub struct ChainRegistry {
    registries: Vec<Arc<dyn Registry>>,
}

impl ChainRegistry {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a registry; earlier ones win on duplicate ids.
    pub fn with(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registries.push(registry);
        self
    }
}

impl Registry for ChainRegistry {
    fn get(&self, id: &str) -> Option<Arc<AgentSpec>> {
        self.registries.iter().find_map(|r| r.get(id))
    }

    fn list(&self) -> Vec<Arc<AgentSpec>> {
        let mut all: BTreeMap<String, Arc<AgentSpec>> = BTreeMap::new();
        for registry in self.registries.iter().rev() {
            for spec in registry.list() {
                all.insert(spec.id.clone(), spec);
            }
        }
        all.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Native code that is never run.
    struct Idle;

    impl NativeCode for Idle {
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    #[test]
    fn capabilities_the_host_lacks_are_named() {
        let spec = AgentSpec::from_native("a", Arc::new(Idle))
            .models(["cheap", "big"])
            .tools(["calc", "json-query"]);
        let aliases = vec!["cheap".to_string()];
        let tools = vec!["calc".to_string(), "other".to_string()];
        let problems = spec.check_capabilities(&aliases, &tools);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("model alias \"big\""), "{problems:?}");
        assert!(problems[0].contains("configured: cheap"), "{problems:?}");
        assert!(problems[1].contains("tool \"json-query\""), "{problems:?}");
        assert!(problems[1].contains("loaded: calc, other"), "{problems:?}");
        let all = spec.check_capabilities(
            &["big".into(), "cheap".into()],
            &["json-query".into(), "calc".into()],
        );
        assert!(all.is_empty(), "{all:?}");
        let none = spec.check_capabilities(&[], &[]);
        assert_eq!(none.len(), 4);
        assert!(none[0].contains("configured: none"), "{none:?}");
    }

    #[test]
    fn a_quota_is_shown_in_camel_case() {
        let quota = Quota {
            max_turns: Some(2),
            max_cost_usd: Some(0.5),
            ..Quota::default()
        };
        assert_eq!(
            serde_json::to_value(quota).expect("json"),
            serde_json::json!({
                "maxTurns": 2, "maxTokens": null, "maxCostUsd": 0.5, "maxToolCalls": null
            })
        );
    }
}
