//! Compiled components, as the registry holds them.
//!
//! The registry decides which agents and tools exist; the sandbox that runs components is the
//! one that compiles them. So the registry is handed a [`ComponentCompiler`] (the wasm
//! sandbox's runtime is one) and keeps what it returns, a [`CompiledAgent`] or a
//! [`CompiledToolbox`], knowing only what a component said about itself; the sandbox takes its
//! own code back out when it runs one. Nothing here names an engine.

use std::any::Any;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crate::queue::Lifecycle;

/// What an agent says about itself through its `describe` export.
#[derive(Debug, Clone)]
pub struct Description {
    /// Id.
    pub id: String,
    /// Version.
    pub version: String,
    /// Description.
    pub description: String,
    /// Lifecycle.
    pub lifecycle: Lifecycle,
    /// Input JSON Schema (text).
    pub input_schema: Option<String>,
    /// Output JSON Schema (text).
    pub output_schema: Option<String>,
    /// The interfaces the component imports (WASI and `drover:agent`), which is everything it
    /// could ask the host for.
    pub imports: Vec<String>,
}

/// One tool, as its component describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDescription {
    /// Name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its input (text).
    pub input_schema: Option<String>,
    /// JSON Schema of its output (text).
    pub output_schema: Option<String>,
}

/// A compiled agent component, ready to be instantiated per run by the sandbox that made it.
pub trait CompiledAgent: Send + Sync + 'static {
    /// SHA-256 of the component's bytes (hex).
    fn digest(&self) -> &str;
    /// What the component said about itself.
    fn description(&self) -> &Description;
    /// The compiled code itself, for the sandbox that made it to take back.
    fn as_any(&self) -> &dyn Any;
}

/// A compiled toolbox component, ready to be instantiated per call by the sandbox that made it.
pub trait CompiledToolbox: std::fmt::Debug + Send + Sync + 'static {
    /// SHA-256 of the component's bytes (hex).
    fn digest(&self) -> &str;
    /// The tools the component offers, as it described them.
    fn tools(&self) -> &[ToolDescription];
    /// The compiled code itself, for the sandbox that made it to take back.
    fn as_any(&self) -> &dyn Any;
}

/// Trusted Rust code linked into the host, as the registry holds it. The none sandbox, which
/// runs it, made it (`AgentSpec::native`) and takes it back out.
pub trait NativeCode: Send + Sync + 'static {
    /// The code itself, for the sandbox that runs it to take back.
    fn as_any(&self) -> &dyn Any;
}

/// A compilation under way: the compiled component, or why there is none (for the load
/// report).
pub type Compiling<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Compiles component files for a registry.
pub trait ComponentCompiler: Send + Sync {
    /// The most memory the engine grants one instance, which no manifest may exceed.
    fn max_memory_bytes(&self) -> u64;
    /// Compiles (or takes from a cache), links and describes the agent component at `path`.
    fn compile_agent<'a>(&'a self, path: &'a Path) -> Compiling<'a, Arc<dyn CompiledAgent>>;
    /// Compiles, links and describes the toolbox component at `path`.
    fn compile_toolbox<'a>(&'a self, path: &'a Path) -> Compiling<'a, Arc<dyn CompiledToolbox>>;
}

/// `64 MiB`, `4 KiB`, `1000 bytes`.
pub fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}
