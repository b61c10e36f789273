//! The agent directory: every `*.wasm` in it is an agent (with an optional `<name>.toml`
//! manifest beside it), and every `<name>.toml` with no `<name>.wasm` beside it is a declarative
//! agent (it must have a `system-prompt` and a `model`); all are loaded at start and reloaded
//! when files change. A `Cargo.toml` is not an agent (the directory may be a Cargo workspace
//! of agents' sources too).
//!
//! To replace an agent without a restart, write the new file under another name and rename it
//! into place (`cp echo.wasm agents/.echo.wasm.tmp && mv agents/.echo.wasm.tmp agents/echo.wasm`):
//! a rename is atomic, so the host never reads a half-written component. Runs already in flight
//! keep the version they started with. A file that fails to load is reported and skipped (or,
//! when it replaces a working version, the working version stays).
//!
//! Tools live in the `tools/` subdirectory and are loaded and followed the same way (see
//! [`super::tools`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::tools::{ToolRegistry, ToolShelf, ToolSpec};
use super::{
    AgentCode, AgentSpec, ComponentCompiler, DeclarativeAgent, Manifest, Registry, Schema,
    human_bytes,
};
use crate::outbound::AllowList;
use crate::queue::Lifecycle;

/// How long file events settle before a rescan.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Rescan interval when no file events arrive (a safety net for filesystems without them).
const POLL: Duration = Duration::from_secs(10);

/// A file that could not be loaded.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadProblem {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub error: String,
}

/// What a scan changed.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    /// Agents loaded or reloaded.
    pub loaded: Vec<String>,
    /// Agents removed (their file is gone).
    pub removed: Vec<String>,
    /// Files that failed.
    pub problems: Vec<LoadProblem>,
    /// Tools loaded or reloaded.
    pub tools_loaded: Vec<String>,
    /// Tools removed (their component is gone, or no longer offers them).
    pub tools_removed: Vec<String>,
}

/// Agents loaded from a directory.
pub struct DirRegistry {
    dir: PathBuf,
    runtime: Arc<dyn ComponentCompiler>,
    agents: RwLock<BTreeMap<String, Arc<AgentSpec>>>,
    files: Mutex<HashMap<PathBuf, LoadedFile>>,
    /// Files currently failing to load, with why.
    problems: RwLock<BTreeMap<PathBuf, String>>,
    scan_lock: tokio::sync::Mutex<()>,
    /// The tools of `<dir>/tools/`.
    tools: ToolShelf,
}

/// What was loaded from one `.wasm` file (or a declarative agent's `.toml`).
#[derive(Debug, Clone)]
struct LoadedFile {
    signature: Signature,
    agent_id: Option<String>,
}

/// Size and modification times of a component and its manifest (or of a declarative agent's
/// `.toml` alone); a change means reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signature {
    wasm: (u64, Option<SystemTime>),
    manifest: Option<(u64, Option<SystemTime>)>,
}

fn stat(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| (meta.len(), meta.modified().ok()))
}

impl std::fmt::Debug for DirRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirRegistry")
            .field("dir", &self.dir)
            .finish()
    }
}

impl DirRegistry {
    /// Loads every agent in `dir` (created if missing), compiling components with `runtime`
    /// (the wasm sandbox's `WasmRuntime` is one).
    pub async fn open<R: ComponentCompiler + 'static>(
        dir: impl Into<PathBuf>,
        runtime: Arc<R>,
    ) -> std::io::Result<Arc<Self>> {
        let runtime: Arc<dyn ComponentCompiler> = runtime;
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir).await?;
        let registry = Arc::new(Self {
            dir,
            runtime,
            agents: RwLock::new(BTreeMap::new()),
            files: Mutex::new(HashMap::new()),
            problems: RwLock::new(BTreeMap::new()),
            scan_lock: tokio::sync::Mutex::new(()),
            tools: ToolShelf::default(),
        });
        registry.rescan().await;
        Ok(registry)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files that currently fail to load (agents, then tools).
    pub fn problems(&self) -> Vec<LoadProblem> {
        let mut problems: Vec<LoadProblem> = self
            .problems
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(path, error)| LoadProblem {
                path: path.clone(),
                error: error.clone(),
            })
            .collect();
        problems.extend(self.tools.problems());
        problems
    }

    fn set_problem(&self, path: &Path, error: Option<String>) {
        let mut problems = self.problems.write().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(error) => problems.insert(path.to_path_buf(), error),
            None => problems.remove(path),
        };
    }

    /// Looks at the directory again: loads new and changed agents and tools, drops removed
    /// ones.
    pub async fn rescan(&self) -> ScanReport {
        let _scan = self.scan_lock.lock().await;
        let mut report = self.rescan_agents().await;
        self.tools
            .rescan(&self.dir, &*self.runtime, &mut report)
            .await;
        report
    }

    /// The agents' part of [`DirRegistry::rescan`].
    async fn rescan_agents(&self) -> ScanReport {
        let mut report = ScanReport::default();
        let agent_files = match list_agent_files(&self.dir) {
            Ok(files) => {
                self.set_problem(&self.dir, None);
                files
            }
            Err(e) => {
                let error = format!("cannot list the agent directory: {e}");
                self.set_problem(&self.dir, Some(error.clone()));
                report.problems.push(LoadProblem {
                    path: self.dir.clone(),
                    error,
                });
                return report;
            }
        };

        // Files that disappeared take their agents with them.
        let gone: Vec<(PathBuf, LoadedFile)> = {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files
                .iter()
                .filter(|(path, _)| !agent_files.contains(path))
                .map(|(p, f)| (p.clone(), f.clone()))
                .collect()
        };
        for (path, file) in gone {
            self.files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&path);
            self.set_problem(&path, None);
            if let Some(id) = file.agent_id {
                self.agents
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                tracing::info!(agent = %id, path = %path.display(), "agent removed");
                report.removed.push(id);
            }
        }

        // Files that are new or changed since the last scan, in load order.
        let mut changed = Vec::new();
        for path in agent_files {
            let Some(wasm_stat) = stat(&path) else {
                continue;
            };
            let signature = Signature {
                wasm: wasm_stat,
                manifest: if is_declarative_file(&path) {
                    None
                } else {
                    stat(&path.with_extension("toml"))
                },
            };
            let previous = self
                .files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&path)
                .cloned();
            if previous.as_ref().is_some_and(|p| p.signature == signature) {
                continue;
            }
            changed.push((path, signature, previous.and_then(|p| p.agent_id)));
        }

        // Compile them all at once (each compile runs on the blocking pool), then register
        // them one by one in load order, so that id conflicts resolve the same way every time.
        let loads =
            futures::future::join_all(changed.iter().map(|(path, _, _)| self.load(path))).await;
        for ((path, signature, previous_id), loaded) in changed.into_iter().zip(loads) {
            let loaded = loaded.and_then(|spec| match self.owner_of(&spec.id, &path) {
                Some(owner) if previous_id.as_deref() != Some(spec.id.as_str()) => Err(format!(
                    "agent id {:?} is already taken by {}",
                    spec.id,
                    owner.display()
                )),
                _ => Ok(spec),
            });
            match loaded {
                Ok(spec) => {
                    let id = spec.id.clone();
                    tracing::info!(
                        agent = %id,
                        path = %path.display(),
                        lifecycle = spec.lifecycle.as_str(),
                        "agent loaded"
                    );
                    let mut agents = self.agents.write().unwrap_or_else(|p| p.into_inner());
                    if let Some(old) = previous_id.filter(|old| *old != id) {
                        agents.remove(&old);
                    }
                    agents.insert(id.clone(), Arc::new(spec));
                    drop(agents);
                    self.set_problem(&path, None);
                    self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(
                        path,
                        LoadedFile {
                            signature,
                            agent_id: Some(id.clone()),
                        },
                    );
                    report.loaded.push(id);
                }
                Err(mut error) => {
                    // Say so where the problem is shown: the agent is still there.
                    let kept = previous_id.as_deref().filter(|id| {
                        self.agents
                            .read()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains_key(*id)
                    });
                    if let Some(id) = kept {
                        error.push_str(&format!(
                            " (agent {id:?} keeps running its previous version)"
                        ));
                    }
                    tracing::warn!(path = %path.display(), %error, "agent not loaded");
                    self.set_problem(&path, Some(error.clone()));
                    report.problems.push(LoadProblem {
                        path: path.clone(),
                        error,
                    });
                    // Remember the failed signature so an unchanged broken file is not retried
                    // on every scan; a working previous version stays registered.
                    self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(
                        path,
                        LoadedFile {
                            signature,
                            agent_id: previous_id,
                        },
                    );
                }
            }
        }
        report
    }

    /// Reads an agent's file (a component and its manifest, or a declarative agent's manifest)
    /// into a spec (not yet registered).
    async fn load(&self, path: &Path) -> Result<AgentSpec, String> {
        if is_declarative_file(path) {
            load_declarative(path)
        } else {
            self.load_component(path).await
        }
    }

    /// Reads a component and its manifest into a spec (not yet registered).
    async fn load_component(&self, path: &Path) -> Result<AgentSpec, String> {
        let manifest_path = path.with_extension("toml");
        let manifest_path = manifest_path.as_path();
        let manifest = if manifest_path.exists() {
            Manifest::read(manifest_path).map_err(|e| e.to_string())?
        } else {
            Manifest::default()
        };
        let declarative = manifest.declarative_fields();
        if !declarative.is_empty() {
            return Err(format!(
                "manifest {}: {} {} for declarative agents, but there is a component beside it \
                 ({}); remove {} or the component",
                manifest_path.display(),
                declarative.join(", "),
                if declarative.len() == 1 { "is" } else { "are" },
                path.display(),
                if declarative.len() == 1 { "it" } else { "them" },
            ));
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| "the file name is not valid UTF-8".to_string())?;
        let id = manifest.id.clone().unwrap_or_else(|| stem.to_string());
        validate_id(&id)?;
        let agent = self.runtime.compile_agent(path).await?;
        let mut spec =
            AgentSpec::from_component(id, agent).map_err(|e| format!("the agent's schema: {e}"))?;
        spec.lifecycle = manifest.lifecycle.unwrap_or(spec.lifecycle);
        let manifest_error =
            |message: String| format!("manifest {}: {message}", manifest_path.display());
        spec.limits = manifest.limits(spec.lifecycle).map_err(manifest_error)?;
        let engine_max = self.runtime.max_memory_bytes();
        if spec.limits.memory_bytes > engine_max {
            if manifest.limits.memory.is_some() {
                let asked = match spec.limits.memory_bytes {
                    u64::MAX => "\"unlimited\"".to_string(),
                    bytes => human_bytes(bytes),
                };
                return Err(manifest_error(format!(
                    "memory = {asked} is more than this host grants an instance ({}, the \
                     engine's max_memory_bytes); set memory to at most that",
                    human_bytes(engine_max)
                )));
            }
            // The default is more than this engine grants: the engine's cap is the limit.
            spec.limits.memory_bytes = engine_max;
        }
        if let Some(description) = &manifest.description {
            spec.description = description.clone();
        }
        spec.env = manifest.env.clone();
        spec.scratch_dir = manifest.scratch_dir.unwrap_or(false);
        if let Some(ms) = manifest.stop_grace_ms {
            spec.stop_grace = Duration::from_millis(ms);
        }
        spec.max_restarts = manifest.max_restarts;
        spec.models = manifest.models;
        spec.tools = manifest.tools;
        spec.secrets = manifest.secrets;
        spec.quota = manifest.quota;
        spec.children = manifest.children.unwrap_or_default();
        spec.outbound = AllowList::parse(&manifest.allowed_outbound_hosts)
            .map_err(|e| manifest_error(format!("allowed-outbound-hosts: {e}")))?;
        spec.source = Some(path.to_path_buf());
        Ok(spec)
    }

    /// The file that currently provides agent `id`, if another file than `path` does.
    fn owner_of(&self, id: &str, path: &Path) -> Option<PathBuf> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(p, f)| f.agent_id.as_deref() == Some(id) && p.as_path() != path)
            .map(|(p, _)| p.clone())
    }

    /// Follows changes to the directory until the returned handle is dropped.
    pub fn watch(self: &Arc<Self>) -> WatchHandle {
        use notify::Watcher;

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = event.is_ok_and(|e| {
                e.paths.iter().any(|p| {
                    matches!(
                        p.extension().and_then(|x| x.to_str()),
                        Some("wasm") | Some("toml")
                    )
                })
            });
            if relevant {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| {
            // Recursive: tools live in `tools/`.
            w.watch(&self.dir, notify::RecursiveMode::Recursive)
                .map(|()| w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch the agent directory; polling instead");
                None
            }
        };
        let registry = Arc::clone(self);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = rx.recv() => {
                        if event.is_none() {
                            // No watcher: fall back to polling only.
                            tokio::time::sleep(POLL).await;
                        } else {
                            // Let a burst of events (copy, rename, manifest edit) settle.
                            tokio::time::sleep(DEBOUNCE).await;
                            while rx.try_recv().is_ok() {}
                        }
                    }
                    () = tokio::time::sleep(POLL) => {}
                }
                registry.rescan().await;
            }
        });
        WatchHandle {
            _watcher: watcher,
            task,
        }
    }
}

/// Stops following the directory when dropped.
pub struct WatchHandle {
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registry for DirRegistry {
    fn get(&self, id: &str) -> Option<Arc<AgentSpec>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn list(&self) -> Vec<Arc<AgentSpec>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

impl ToolRegistry for DirRegistry {
    fn get_tool(&self, name: &str) -> Option<Arc<ToolSpec>> {
        self.tools.get(name)
    }

    fn list_tools(&self) -> Vec<Arc<ToolSpec>> {
        self.tools.list()
    }
}

/// The agents' files directly in `dir`: each `*.wasm`, and each `*.toml` with no `.wasm` beside
/// it (a declarative agent), skipping hidden files (such as a `.name.wasm.tmp` being copied in)
/// and `Cargo.toml`. Files whose manifest names a different id come last, so that when two files
/// claim one id the file named after it (`<id>.wasm` or `<id>.toml`) wins; otherwise the order
/// is by name.
fn list_agent_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden || !path.is_file() {
            continue;
        }
        let wasm = path.extension().and_then(|e| e.to_str()) == Some("wasm");
        if wasm || is_declarative_file(&path) {
            files.push(path);
        }
    }
    files.sort_by_cached_key(|path| (renames_itself(path), path.clone()));
    Ok(files)
}

/// Whether `path` is a `.toml` that stands for a declarative agent: no component beside it, and
/// not a `Cargo.toml`.
fn is_declarative_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("toml")
        && path.file_name().and_then(|n| n.to_str()) != Some("Cargo.toml")
        && !path.with_extension("wasm").is_file()
        // A component's manifest whose component is not there (yet) is not an agent, nor a
        // problem; one that does not even parse is reported as the declarative agent it might
        // have meant to be.
        && !Manifest::read(path).is_ok_and(|m| m.declarative_fields().is_empty())
}

/// Reads a declarative agent's manifest into a spec (not yet registered).
fn load_declarative(path: &Path) -> Result<AgentSpec, String> {
    let error = |message: String| format!("manifest {}: {message}", path.display());
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| "the file name is not valid UTF-8".to_string())?;
    let manifest = Manifest::read(path).map_err(|e| {
        format!("{e} (there is no component {stem}.wasm beside it, so it was read as a declarative agent)")
    })?;
    let Some(system_prompt) = manifest.system_prompt.clone() else {
        return Err(error(format!(
            "there is no component {stem}.wasm beside it, and it has no system-prompt: a \
             manifest belongs beside its component, and a declarative agent needs a \
             system-prompt and a model"
        )));
    };
    let Some(model) = manifest.model.clone() else {
        return Err(error(
            "a declarative agent needs a model (an alias the host's configuration defines)"
                .to_string(),
        ));
    };
    let refused = manifest.component_only_fields();
    if !refused.is_empty() {
        return Err(error(format!(
            "{} cannot be set for a declarative agent (it runs as a job, in the host)",
            refused.join(", ")
        )));
    }
    let id = manifest.id.clone().unwrap_or_else(|| stem.to_string());
    validate_id(&id)?;
    let schema = |what: &str, table: &Option<serde_json::Map<String, serde_json::Value>>| {
        table
            .clone()
            .map(|table| {
                Schema::new(serde_json::Value::Object(table))
                    .map_err(|e| error(format!("{what}: {e}")))
            })
            .transpose()
    };
    let input_schema = schema("input-schema", &manifest.input_schema)?;
    let output_schema = schema("output-schema", &manifest.output_schema)?;
    let limits = manifest.limits(Lifecycle::Job).map_err(error)?;
    let mut models = manifest.models.clone();
    if !models.contains(&model) {
        models.insert(0, model.clone());
    }
    Ok(AgentSpec {
        id,
        version: "0.0.0".into(),
        description: manifest.description.clone().unwrap_or_default(),
        lifecycle: Lifecycle::Job,
        limits,
        env: BTreeMap::new(),
        scratch_dir: false,
        stop_grace: super::DEFAULT_STOP_GRACE,
        max_restarts: None,
        input_schema,
        output_schema,
        models,
        tools: manifest.tools,
        secrets: Vec::new(),
        quota: manifest.quota,
        children: Default::default(),
        outbound: AllowList::default(),
        source: Some(path.to_path_buf()),
        code: AgentCode::Declarative(Arc::new(DeclarativeAgent {
            system_prompt,
            model,
            temperature: manifest.temperature,
            max_output_tokens: manifest.max_output_tokens,
        })),
    })
}

/// Whether the manifest beside `path` gives the agent an id other than the file's name.
fn renames_itself(path: &Path) -> bool {
    let stem = path.file_stem().and_then(|s| s.to_str());
    Manifest::read(&path.with_extension("toml"))
        .ok()
        .and_then(|m| m.id)
        .is_some_and(|id| Some(id.as_str()) != stem)
}

/// Agent ids: 1 to 64 characters of letters, digits, `-`, `_` and `.`, starting with a letter
/// or digit.
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid agent id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}
