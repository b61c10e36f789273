//! The imports of `drover:agent@0.1.0`, served to agents built against it: the same host
//! functions as the current version's, under the old names.

use super::bindings::drover::agent::{host as current, types as current_types};
use super::bindings_v0_1::drover::agent::{host, types};
use super::state::HostState;

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn emit(&mut self, kind: String, payload: String) -> wasmtime::Result<()> {
        current::Host::emit(self, kind, payload).await
    }

    async fn heartbeat(&mut self) -> wasmtime::Result<()> {
        current::Host::heartbeat(self).await
    }

    async fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            types::Level::Trace => current_types::Level::Trace,
            types::Level::Debug => current_types::Level::Debug,
            types::Level::Info => current_types::Level::Info,
            types::Level::Warn => current_types::Level::Warn,
            types::Level::Error => current_types::Level::Error,
        };
        current::Host::log(self, level, message).await
    }

    fn now(&mut self) -> wasmtime::Result<u64> {
        current::Host::now(self)
    }

    fn stop_requested(&mut self) -> wasmtime::Result<bool> {
        current::Host::stop_requested(self)
    }

    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<bool> {
        current::Host::sleep(self, ms).await
    }
}
