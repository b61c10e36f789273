# Shortcuts for people with `just` installed; every recipe is a plain cargo command.

# Start the host on its embedded default.
run:
    cargo run --release -p drover-host -- run

# Run the whole test suite.
test:
    cargo test --workspace

# Build the agents and install them into agents/ (copy, then rename).
agents:
    rustup target add wasm32-wasip2
    cargo build --release --target wasm32-wasip2 --manifest-path agents/Cargo.toml
    for a in echo queue_worker chaos; do cp agents/target/wasm32-wasip2/release/$a.wasm agents/.$a.tmp && mv agents/.$a.tmp agents/$(echo $a | tr _ -).wasm; done

# Formatting and lints, as CI runs them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy --manifest-path agents/Cargo.toml --target wasm32-wasip2 -- -D warnings
