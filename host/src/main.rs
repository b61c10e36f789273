//! The `drover-host` command: `drover-host run` starts a host; see `drover-host --help`.

fn main() -> std::process::ExitCode {
    drover_host::cli::main()
}
