//! The `drover-host` command: `drover-host run` starts a host; see `drover-host --help`.

/// Instantiating a component allocates many small objects; mimalloc serves them faster than the
/// system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    drover_host::cli::main()
}
