//! Every integration suite but the sandbox's, in one test binary: each links wasmtime, libsql
//! and the HTTP stack, so one binary links them once. Run one suite with
//! `cargo test --test integration <suite>::`, for example `queue::`.
//!
//! `tests/sandbox.rs` stays a binary of its own: its memory tests measure this process's
//! resident memory, which other suites' runs would disturb.

mod api;
mod children;
mod cli;
mod docs;
mod fair;
mod faults;
mod http;
mod inbox;
mod languages;
mod llm;
mod model;
mod pool;
mod queue;
mod remote;
mod secrets;
mod store;
mod tenants;
mod tools;
mod viewer;
mod worker;
