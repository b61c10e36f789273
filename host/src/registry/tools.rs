//! Tools: components of the `toolbox` world that agents (and the models they talk to) may call.
//!
//! The agent directory's `tools/` subdirectory holds them: every `tools/*.wasm` is a toolbox
//! component offering one or more tools, with an optional `tools/<name>.toml` manifest beside
//! it. They are compiled once, cached, and followed like agents (`rescan`, and the watcher):
//! replace a component by renaming a new file into place.
//!
//! ```toml
//! description = "Evaluates arithmetic"  # only for a component that offers one tool
//! allowed-outbound-hosts = ["https://api.example.com"]  # default: no network
//! secrets = ["api"]                      # host secrets its requests may carry, when the
//!                                        # calling agent's manifest lists them too
//!
//! [limits]                               # every call of every tool of the component
//! fuel = 1_000_000_000                   # or "unlimited"
//! memory = "64MiB"                       # at most the engine's max_memory_bytes
//! timeout-ms = 10000                     # or "none"
//! max-output-bytes = "1MiB"
//! ```
//!
//! | limit | tool default | exceeding it |
//! |---|---|---|
//! | `fuel` | 1 000 000 000 | tag `ToolQuota` |
//! | `memory` | 64 MiB | tag `ToolQuota` |
//! | `timeout-ms` | 10 s | tag `ToolTimeout` |
//! | `max-output-bytes` | 1 MiB | tag `ToolQuota` |
//!
//! Tool names are 1 to 64 letters, digits, `-` or `_`, and unique on the host: a component that
//! offers a name another component already offers is not loaded (a load problem names both)
//! until the other one goes or stops offering it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::dir::{LoadProblem, ScanReport};
use super::manifest::{Quantity, apply_call_limits};
use super::{CompiledToolbox, ComponentCompiler, Limits, Schema, human_bytes};
use crate::outbound::AllowList;

/// Default fuel of one tool call.
pub const DEFAULT_TOOL_FUEL: u64 = 1_000_000_000;
/// Default linear memory of one tool call.
pub const DEFAULT_TOOL_MEMORY_BYTES: u64 = 64 << 20;
/// Default wall-clock limit of one tool call.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest output of one tool call.
pub const DEFAULT_TOOL_OUTPUT_BYTES: u64 = 1 << 20;

/// Everything the host knows about one tool.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    /// Its name, unique on the host; models see it.
    pub name: String,
    /// What it does (the component's description, or its manifest's).
    pub description: String,
    /// Input validation, applied before every call.
    #[serde(skip)]
    pub input_schema: Option<Schema>,
    /// The input schema as a document (what models are given as the tool's parameters).
    #[serde(rename = "inputSchema")]
    pub input_schema_json: Option<serde_json::Value>,
    /// Output validation, applied after every call.
    pub output_schema: Option<Schema>,
    /// The component that offers it: its file's stem (`tools/<component>.wasm`).
    pub component: String,
    /// What one call may use.
    pub limits: Limits,
    /// Hosts a call may send HTTP requests to (its manifest's `allowed-outbound-hosts`).
    #[serde(skip)]
    pub outbound: AllowList,
    /// Host secrets a call's requests may carry (its manifest's `secrets`), when the calling
    /// agent may use them too.
    pub secrets: Vec<String>,
    /// Where the component came from, if from a file.
    pub source: Option<PathBuf>,
    /// The code.
    #[serde(skip)]
    pub code: Arc<dyn CompiledToolbox>,
}

impl ToolSpec {
    /// The limits a tool call gets unless its manifest says otherwise: tighter than a job's
    /// (fuel [`DEFAULT_TOOL_FUEL`], memory [`DEFAULT_TOOL_MEMORY_BYTES`], timeout
    /// [`DEFAULT_TOOL_TIMEOUT`], output [`DEFAULT_TOOL_OUTPUT_BYTES`]).
    pub fn default_limits() -> Limits {
        Limits {
            fuel: Some(DEFAULT_TOOL_FUEL),
            memory_bytes: DEFAULT_TOOL_MEMORY_BYTES,
            timeout: Some(DEFAULT_TOOL_TIMEOUT),
            max_output_bytes: DEFAULT_TOOL_OUTPUT_BYTES,
            ..Limits::default()
        }
    }

    /// What this tool's manifest lists that the host does not have: each secret not among
    /// `known` (the host's), one problem each. Such a tool loads; a request carrying the
    /// placeholder of a missing secret is refused.
    pub fn check_secrets(&self, known: &[&str]) -> Vec<String> {
        super::missing_secrets(&format!("tool {:?}", self.name), &self.secrets, known)
    }

    /// The JSON Schema of the tool's input as models are given it (a tool's `parameters`): its
    /// input schema, or any JSON object if it has none.
    pub fn parameters(&self) -> serde_json::Value {
        self.input_schema_json
            .clone()
            .unwrap_or_else(|| serde_json::json!({ "type": "object" }))
    }

    /// A spec for every tool a loaded toolbox offers, with the default limits; `component` names
    /// the toolbox (its file stem). Fails on an invalid tool name or schema.
    pub fn from_toolbox(
        component: &str,
        code: Arc<dyn CompiledToolbox>,
    ) -> Result<Vec<Self>, String> {
        code.tools()
            .iter()
            .map(|tool| {
                validate_tool_name(&tool.name)?;
                let parse = |which: &str, text: &Option<String>| {
                    text.as_deref()
                        .map(|text| {
                            let value: serde_json::Value =
                                serde_json::from_str(text).map_err(|e| {
                                    format!("the {which} schema of tool {:?}: {e}", tool.name)
                                })?;
                            let schema = Schema::new(value.clone()).map_err(|e| {
                                format!("the {which} schema of tool {:?}: {e}", tool.name)
                            })?;
                            Ok::<_, String>((value, schema))
                        })
                        .transpose()
                };
                let input = parse("input", &tool.input_schema)?;
                let output = parse("output", &tool.output_schema)?;
                Ok(Self {
                    name: tool.name.clone(),
                    description: tool.description.clone(),
                    input_schema: input.as_ref().map(|(_, schema)| schema.clone()),
                    input_schema_json: input.map(|(value, _)| value),
                    output_schema: output.map(|(_, schema)| schema),
                    component: component.to_string(),
                    limits: Self::default_limits(),
                    outbound: AllowList::default(),
                    secrets: Vec::new(),
                    source: None,
                    code: Arc::clone(&code),
                })
            })
            .collect()
    }
}

/// Looks tools up by name.
pub trait ToolRegistry: Send + Sync + 'static {
    /// The tool with this name, if any.
    fn get_tool(&self, name: &str) -> Option<Arc<ToolSpec>>;
    /// Every tool, ordered by name.
    fn list_tools(&self) -> Vec<Arc<ToolSpec>>;
}

/// A fixed set of tools.
#[derive(Debug, Clone, Default)]
pub struct StaticToolRegistry {
    tools: BTreeMap<String, Arc<ToolSpec>>,
}

impl StaticToolRegistry {
    /// No tools.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a tool.
    pub fn with(mut self, spec: ToolSpec) -> Self {
        self.tools.insert(spec.name.clone(), Arc::new(spec));
        self
    }
}

impl ToolRegistry for StaticToolRegistry {
    fn get_tool(&self, name: &str) -> Option<Arc<ToolSpec>> {
        self.tools.get(name).cloned()
    }

    fn list_tools(&self) -> Vec<Arc<ToolSpec>> {
        self.tools.values().cloned().collect()
    }
}

/// Tool names: 1 to 64 letters, digits, `-` or `_`.
pub fn validate_tool_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tool name {name:?}: use 1 to 64 letters, digits, '-' or '_'"
        ))
    }
}

/// A tool manifest, `tools/<name>.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ToolManifest {
    /// Replaces the description of the component's tool (it must offer exactly one).
    pub description: Option<String>,
    /// Limits of every call of the component's tools.
    #[serde(default)]
    pub limits: ToolLimitOverrides,
    /// Hosts the component's tools may send HTTP requests to (none: no network).
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Host secrets the component's requests may carry, of those the calling agent may use.
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// Limit overrides in a tool manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ToolLimitOverrides {
    /// Fuel per call.
    pub fuel: Option<Quantity>,
    /// Linear memory.
    pub memory: Option<Quantity>,
    /// Wall clock per call, in milliseconds.
    pub timeout_ms: Option<Quantity>,
    /// Output size.
    pub max_output_bytes: Option<Quantity>,
}

impl ToolManifest {
    /// Parses manifest text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The limits of a call, with this manifest's overrides applied; `engine_max_memory` is the
    /// most the engine grants an instance (a memory limit above it is refused).
    pub fn limits(&self, engine_max_memory: u64) -> Result<Limits, String> {
        let mut limits = ToolSpec::default_limits();
        let o = &self.limits;
        apply_call_limits(
            &mut limits,
            o.fuel.as_ref(),
            o.timeout_ms.as_ref(),
            o.max_output_bytes.as_ref(),
        );
        match o.memory.as_ref().map(Quantity::finite) {
            Some(Some(bytes)) if bytes <= engine_max_memory => limits.memory_bytes = bytes,
            Some(asked) => {
                let asked = asked.map_or_else(|| "\"unlimited\"".to_string(), human_bytes);
                return Err(format!(
                    "memory = {asked} is more than this host grants an instance ({}, the \
                     engine's max_memory_bytes); set memory to at most that",
                    human_bytes(engine_max_memory)
                ));
            }
            None => limits.memory_bytes = limits.memory_bytes.min(engine_max_memory),
        }
        Ok(limits)
    }
}

/// The tools of an agent directory (`<dir>/tools/`), kept by its [`DirRegistry`].
///
/// [`DirRegistry`]: super::DirRegistry
#[derive(Default)]
pub(crate) struct ToolShelf {
    tools: RwLock<BTreeMap<String, Arc<ToolSpec>>>,
    files: Mutex<BTreeMap<PathBuf, ToolFile>>,
    problems: RwLock<BTreeMap<PathBuf, String>>,
}

/// What was loaded from one component file.
struct ToolFile {
    signature: Signature,
    /// The tools of this file that are registered.
    registered: Vec<String>,
    /// A version loaded but not registered yet: one of its names is offered by another file.
    /// Tried again on every scan, without compiling it again.
    waiting: Option<Vec<ToolSpec>>,
}

/// Size and modification times of a component and its manifest; a change means reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signature {
    wasm: (u64, Option<SystemTime>),
    manifest: Option<(u64, Option<SystemTime>)>,
}

fn stat(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| (meta.len(), meta.modified().ok()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ToolShelf {
    /// The tool with this name.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<ToolSpec>> {
        self.tools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every tool, by name.
    pub(crate) fn list(&self) -> Vec<Arc<ToolSpec>> {
        self.tools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Files that currently fail to load (or wait for a name another file holds).
    pub(crate) fn problems(&self) -> Vec<LoadProblem> {
        self.problems
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(path, error)| LoadProblem {
                path: path.clone(),
                error: error.clone(),
            })
            .collect()
    }

    fn set_problem(&self, path: &Path, error: Option<String>) {
        let mut problems = self.problems.write().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(error) => problems.insert(path.to_path_buf(), error),
            None => problems.remove(path),
        };
    }

    fn problem(&self, report: &mut ScanReport, path: &Path, error: String) {
        let known = self
            .problems
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .is_some_and(|e| *e == error);
        if !known {
            tracing::warn!(path = %path.display(), %error, "tool not loaded");
        }
        self.set_problem(path, Some(error.clone()));
        report.problems.push(LoadProblem {
            path: path.to_path_buf(),
            error,
        });
    }

    /// Looks at `<agents_dir>/tools/` again: loads new and changed components, drops removed
    /// ones, and registers waiting ones whose names are free now. Callers serialize scans.
    pub(crate) async fn rescan(
        &self,
        agents_dir: &Path,
        runtime: &dyn ComponentCompiler,
        report: &mut ScanReport,
    ) {
        let dir = agents_dir.join("tools");
        let listed = if dir.is_dir() {
            match list_wasm(&dir) {
                Ok(files) => {
                    self.set_problem(&dir, None);
                    files
                }
                Err(e) => {
                    self.problem(report, &dir, format!("cannot list the tool directory: {e}"));
                    return;
                }
            }
        } else {
            self.set_problem(&dir, None);
            Vec::new()
        };

        // Files that disappeared take their tools with them.
        let gone: Vec<(PathBuf, Vec<String>)> = {
            let mut files = lock(&self.files);
            let paths: Vec<PathBuf> = files
                .keys()
                .filter(|p| !listed.contains(p))
                .cloned()
                .collect();
            paths
                .into_iter()
                .filter_map(|p| files.remove(&p).map(|f| (p, f.registered)))
                .collect()
        };
        for (path, names) in gone {
            self.set_problem(&path, None);
            let mut tools = self.tools.write().unwrap_or_else(|p| p.into_inner());
            for name in names {
                tools.remove(&name);
                tracing::info!(tool = %name, path = %path.display(), "tool removed");
                report.tools_removed.push(name);
            }
        }

        // Files that are new or changed since the last scan.
        let changed: Vec<(PathBuf, Signature)> = {
            let files = lock(&self.files);
            listed
                .iter()
                .filter_map(|path| {
                    let signature = Signature {
                        wasm: stat(path)?,
                        manifest: stat(&path.with_extension("toml")),
                    };
                    let same = files.get(path).is_some_and(|f| f.signature == signature);
                    (!same).then(|| (path.clone(), signature))
                })
                .collect()
        };
        let loads =
            futures::future::join_all(changed.iter().map(|(path, _)| load(path, runtime))).await;
        for ((path, signature), loaded) in changed.into_iter().zip(loads) {
            let mut files = lock(&self.files);
            let file = files.entry(path.clone()).or_insert_with(|| ToolFile {
                signature: signature.clone(),
                registered: Vec::new(),
                waiting: None,
            });
            file.signature = signature;
            match loaded {
                Ok(specs) => file.waiting = Some(specs),
                Err(error) => {
                    // A working previous version stays registered.
                    file.waiting = None;
                    drop(files);
                    self.problem(report, &path, error);
                }
            }
        }

        // Register what waits, in file-name order, where its names are free.
        let mut files = lock(&self.files);
        let paths: Vec<PathBuf> = files
            .iter()
            .filter(|(_, f)| f.waiting.is_some())
            .map(|(p, _)| p.clone())
            .collect();
        for path in paths {
            let Some(file) = files.get_mut(&path) else {
                continue;
            };
            let Some(specs) = file.waiting.take() else {
                continue;
            };
            let taken = {
                let tools = self.tools.read().unwrap_or_else(|p| p.into_inner());
                specs.iter().find_map(|spec| {
                    tools
                        .get(&spec.name)
                        .filter(|owner| owner.source.as_deref() != Some(path.as_path()))
                        .map(|owner| (spec.name.clone(), owner.source.clone()))
                })
            };
            if let Some((name, owner)) = taken {
                file.waiting = Some(specs);
                let owner =
                    owner.map_or_else(|| "another component".into(), |p| p.display().to_string());
                self.problem(
                    report,
                    &path,
                    format!(
                        "tool {name:?} of {} is already offered by {owner}; {} is not loaded \
                         while that holds",
                        path.display(),
                        path.display()
                    ),
                );
                continue;
            }
            let mut tools = self.tools.write().unwrap_or_else(|p| p.into_inner());
            let old: Vec<String> = file.registered.drain(..).collect();
            for name in &old {
                tools.remove(name);
            }
            for spec in specs {
                tracing::info!(
                    tool = %spec.name,
                    path = %path.display(),
                    "tool loaded"
                );
                file.registered.push(spec.name.clone());
                report.tools_loaded.push(spec.name.clone());
                tools.insert(spec.name.clone(), Arc::new(spec));
            }
            drop(tools);
            for name in old {
                if !file.registered.contains(&name) {
                    tracing::info!(tool = %name, path = %path.display(), "tool removed");
                    report.tools_removed.push(name);
                }
            }
            self.set_problem(&path, None);
        }
    }
}

/// Reads a toolbox component and its manifest into specs (not yet registered).
async fn load(path: &Path, runtime: &dyn ComponentCompiler) -> Result<Vec<ToolSpec>, String> {
    let manifest_path = path.with_extension("toml");
    let manifest_error =
        |message: String| format!("manifest {}: {message}", manifest_path.display());
    let manifest = if manifest_path.exists() {
        let text =
            std::fs::read_to_string(&manifest_path).map_err(|e| manifest_error(e.to_string()))?;
        ToolManifest::parse(&text).map_err(manifest_error)?
    } else {
        ToolManifest::default()
    };
    let limits = manifest
        .limits(runtime.max_memory_bytes())
        .map_err(manifest_error)?;
    let outbound = AllowList::parse(&manifest.allowed_outbound_hosts)
        .map_err(|e| manifest_error(format!("allowed-outbound-hosts: {e}")))?;
    for name in &manifest.secrets {
        crate::secrets::validate_name(name).map_err(|e| manifest_error(format!("secrets: {e}")))?;
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| "the file name is not valid UTF-8".to_string())?;
    let code = runtime.compile_toolbox(path).await?;
    let mut specs = ToolSpec::from_toolbox(stem, code)?;
    if let Some(description) = &manifest.description {
        let [spec] = specs.as_mut_slice() else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(manifest_error(format!(
                "description applies to a component that offers one tool; this one offers {} \
                 ({})",
                names.len(),
                names.join(", ")
            )));
        };
        spec.description = description.clone();
    }
    for spec in &mut specs {
        spec.limits = limits.clone();
        spec.outbound = outbound.clone();
        spec.secrets = manifest.secrets.clone();
        spec.source = Some(path.to_path_buf());
    }
    Ok(specs)
}

/// The `*.wasm` files directly in `dir`, by name, skipping hidden files (such as a
/// `.name.wasm.tmp` being copied in).
fn list_wasm(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if !hidden && path.extension().and_then(|e| e.to_str()) == Some("wasm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names() {
        for ok in ["calc", "json-query", "a_b", "X1", &"a".repeat(64)] {
            assert!(validate_tool_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a b", "ä", &"a".repeat(65)] {
            assert!(validate_tool_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_limits() {
        let m = ToolManifest::parse(
            "description = \"d\"\n[limits]\nfuel = 5\nmemory = \"8MiB\"\ntimeout-ms = 100\nmax-output-bytes = \"2KiB\"\n",
        )
        .expect("valid");
        let limits = m.limits(1 << 30).expect("limits");
        assert_eq!(limits.fuel, Some(5));
        assert_eq!(limits.memory_bytes, 8 << 20);
        assert_eq!(limits.timeout, Some(Duration::from_millis(100)));
        assert_eq!(limits.max_output_bytes, 2 << 10);
        let defaults = ToolManifest::default().limits(1 << 30).expect("limits");
        assert_eq!(defaults, ToolSpec::default_limits());
        assert!(ToolManifest::parse("[limits]\nmax-events = 3\n").is_err());
        let too_much = ToolManifest::parse("[limits]\nmemory = \"2GiB\"\n").expect("valid");
        assert!(too_much.limits(1 << 30).is_err());
    }
}
