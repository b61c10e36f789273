//! drover-host: a WebAssembly plugin host for sandboxed agents.
//!
//! A producer enqueues jobs on a durable libsql [`queue`]; a worker [`pool`] claims them under
//! fenced leases and runs each in a [`sandbox`] chosen per job; the [`store`] keeps every run and
//! its events; the [`api`] enqueues, observes, waits for, cancels and stops jobs. The [`model`]
//! gateway calls models on agents' behalf, on the aliases the host's [`config`] file declares.

pub mod api;
pub mod children;
pub mod cli;
pub mod config;
pub mod db;
pub mod inbox;
pub mod model;
pub mod outbound;
pub mod pool;
pub mod queue;
pub mod registry;
pub mod sandbox;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod viewer;
