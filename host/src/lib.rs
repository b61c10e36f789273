//! drover-host: a WebAssembly plugin host for sandboxed agents.

pub mod db;
pub mod queue;
pub mod time;
