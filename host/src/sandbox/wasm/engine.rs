//! The host's one `wasmtime::Engine`: pooling allocator, fuel, and epoch interruption driven by
//! a single engine-wide ticker thread.
//!
//! **The compiled-component cache is a trust boundary.** It holds native code, which wasmtime
//! loads and runs with no check beyond its own version and settings: whoever can write to the
//! directory can run code in the host. So the directory is created private (mode 0700), and an
//! existing one is used only if it belongs to the host's own user and no one else may write to
//! it; otherwise the host logs a warning and compiles without a cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wasmtime::{Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy};

/// How the wasm engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Component instances that may exist at once (jobs in flight plus live long-lived agents).
    pub max_instances: u32,
    /// Largest linear memory any agent may be granted, in bytes (a manifest asking for more is
    /// rejected when the agent loads).
    pub max_memory_bytes: u64,
    /// Where compiled components are cached, so a restart deserializes instead of recompiling.
    /// `None`: no cache. Created with mode 0700; a directory that another user owns, or that its
    /// group or others may write to, is not used (the host warns and compiles every time).
    pub cache_dir: Option<PathBuf>,
    /// How often the epoch advances: the granularity of timeouts, cancellation and time slicing.
    pub epoch_tick: Duration,
    /// Fuel metering and epoch interruption. Without them a guest computing in a loop can be
    /// neither limited nor interrupted; turn them off only to measure what they cost.
    pub metering: Metering,
}

/// Which of the two instrumentations compiled code carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metering {
    /// Fuel: counts instructions, so a run can be held to a quota.
    pub fuel: bool,
    /// Epoch checks: let a timeout, a cancel or a time slice interrupt a guest that never calls
    /// the host.
    pub epochs: bool,
}

impl Metering {
    /// Both on: what every host runs with.
    pub const ON: Self = Self {
        fuel: true,
        epochs: true,
    };
    /// Both off (for measurement only).
    pub const OFF: Self = Self {
        fuel: false,
        epochs: false,
    };
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_bytes: 1 << 30,
            cache_dir: None,
            epoch_tick: Duration::from_millis(10),
            metering: Metering::ON,
        }
    }
}

/// Core instances, memories and tables a component may use. A Rust `wasm32-wasip2` component
/// has a few core instances (its main module plus the shims that `wasm-component-ld` adds), a
/// JavaScript one (componentize-js) about as many, and a Python one (componentize-py: CPython,
/// libc and the runtime as modules linked at load time) 14. These are both the pool's totals
/// per instance slot and the caps on each component: a component needing more is refused when
/// it is compiled, so that one agent cannot take the slots of many.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// Linear memory kept mapped when a pool slot is reused (only its dirty pages are reset, found
/// with `pagemap_scan`), which spares every instantiation the page faults of a fresh mapping. A
/// Rust component's memory starts with a 1 MiB stack, then data and heap: keep a few MiB.
const KEEP_RESIDENT: usize = 4 << 20;
/// Instances released before their slots' memory is decommitted in one go. One: a slot's memory
/// above `KEEP_RESIDENT` goes back to the kernel as soon as its instance is dropped, so a run that
/// touched hundreds of MiB does not leave them resident until a batch of later runs fills up. A
/// slot that stayed within `KEEP_RESIDENT` has nothing to decommit and is reused at once, so
/// small runs pay nothing for this.
const DECOMMIT_BATCH: usize = 1;
/// The same for the fiber stacks that async calls run on.
const STACK_KEEP_RESIDENT: usize = 128 << 10;

/// Builds the engine.
pub(crate) fn build(config: &EngineConfig) -> Result<Engine, wasmtime::Error> {
    let instances = config.max_instances.max(1);
    let max_memory = usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX);

    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(instances)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(max_memory)
        .max_memories_per_module(1)
        .max_tables_per_module(2)
        .decommit_batch_size(DECOMMIT_BATCH)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .async_stack_keep_resident(STACK_KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);

    let mut wasm = Config::new();
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .consume_fuel(config.metering.fuel)
        .epoch_interruption(config.metering.epochs)
        // Agents are plain WASIp2 components; the component-model-async machinery only adds
        // per-call bookkeeping.
        .concurrency_support(false)
        .max_wasm_stack(512 << 10)
        .async_stack_size(1 << 20);
    if let Some(dir) = &config.cache_dir {
        match trusted_cache_dir(dir) {
            Ok(dir) => {
                let mut cache = CacheConfig::new();
                cache.with_directory(dir);
                wasm.cache(Some(Cache::new(cache)?));
            }
            Err(CacheDirError::Create(e)) => {
                return Err(wasmtime::format_err!(
                    "cannot create cache directory {}: {e}",
                    dir.display()
                ));
            }
            Err(CacheDirError::Untrusted(why)) => {
                tracing::warn!(
                    path = %dir.display(),
                    reason = %why,
                    "not using the compiled-component cache: anyone who can write to it could run code in this host"
                );
            }
        }
    }
    Engine::new(&wasm)
}

/// Why the cache directory is not used.
#[derive(Debug)]
enum CacheDirError {
    /// It could not be created or looked at.
    Create(std::io::Error),
    /// Someone other than this process's user could have written to it.
    Untrusted(String),
}

/// Creates the cache directory (mode 0700) if it is missing, and checks that it belongs to this
/// process's user and that neither its group nor others may write to it. Returns its absolute
/// path.
fn trusted_cache_dir(dir: &Path) -> Result<PathBuf, CacheDirError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(CacheDirError::Create)?;
    let dir = std::path::absolute(dir).map_err(CacheDirError::Create)?;
    let meta = std::fs::metadata(&dir).map_err(CacheDirError::Create)?;
    let user = rustix::process::geteuid().as_raw();
    if meta.uid() != user {
        return Err(CacheDirError::Untrusted(format!(
            "it belongs to user {}, not to this process's user {user}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(CacheDirError::Untrusted(format!(
            "its group or others may write to it (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(dir)
}

/// Advances the engine's epoch every `tick` until the engine is dropped.
pub(crate) fn start_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("drover-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch ticker; wasm timeouts will not fire");
    }
}
