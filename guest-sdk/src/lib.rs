//! Write drover agents in Rust.
//!
//! An agent is a type that implements [`Agent`]: typed input in, typed output (or an [`Error`])
//! out. [`export_agent!`] turns it into a WebAssembly component for the `drover:agent` world:
//!
//! ```no_run
//! use drover_sdk::{Agent, Error, export_agent};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input { n: i64 }
//!
//! #[derive(Serialize)]
//! struct Output { received: i64, ok: bool }
//!
//! struct Echo;
//!
//! impl Agent for Echo {
//!     type Input = Input;
//!     type Output = Output;
//!
//!     fn run(input: Input) -> Result<Output, Error> {
//!         Ok(Output { received: input.n, ok: true })
//!     }
//! }
//!
//! export_agent!(Echo);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (or `cargo component build
//! --release`) and drop the `.wasm` into the host's `agents/` directory.
//!
//! While it runs, an agent reaches the host through the functions of this crate: [`emit`] events,
//! [`heartbeat`], [`log`], read the clock with [`now_ms`], and — for long-lived agents — notice a
//! stop request with [`stop_requested`] or an interruptible [`sleep`]. It calls models through the
//! host with [`model::complete`] and its tools with [`tools::call`], or lets [`run_loop`] drive
//! both to an answer. It drives other agents with [`agents::spawn`] and [`agents::wait`]. A
//! long-lived agent takes messages posted to it with [`inbox::receive`] and answers them with
//! [`inbox::reply`] (or [`inbox::serve`]). Environment variables set
//! in the agent's manifest are visible through [`std::env::var`]; nothing else of the host is.
//!
//! # Tools
//!
//! A tool is a type that implements [`Tool`]: a name, a description, typed input (with a JSON
//! Schema the host checks before each call) and typed output. [`export_toolbox!`] turns one or
//! more tools into a component of the `toolbox` world, which the host loads from
//! `agents/tools/` and runs in a fresh sandbox for every call:
//!
//! ```no_run
//! use drover_sdk::{Error, Tool, Value, export_toolbox, json};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input { a: f64, b: f64 }
//!
//! #[derive(Serialize)]
//! struct Output { sum: f64 }
//!
//! struct Add;
//!
//! impl Tool for Add {
//!     type Input = Input;
//!     type Output = Output;
//!     const NAME: &'static str = "add";
//!     const DESCRIPTION: &'static str = "Adds two numbers";
//!
//!     fn input_schema() -> Option<Value> {
//!         Some(json!({
//!             "type": "object",
//!             "properties": { "a": { "type": "number" }, "b": { "type": "number" } },
//!             "required": ["a", "b"]
//!         }))
//!     }
//!
//!     fn call(input: Input) -> Result<Output, Error> {
//!         Ok(Output { sum: input.a + input.b })
//!     }
//! }
//!
//! export_toolbox!(Add);
//! ```
//!
//! A tool's [`log`] and [`emit`] calls are accepted and dropped (a tool call is recorded by the
//! host as one `tool_call` and one `tool_result` event of the calling run); [`now_ms`] works,
//! [`stop_requested`] is always `false`.

use std::time::Duration;

mod agent_loop;
pub mod agents;
pub mod http;
pub mod inbox;

pub use agent_loop::{LoopOptions, model, run_loop, tools};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use serde_json::{Value, json};

/// Generated bindings and the glue used by [`export_agent!`]. Not part of the API.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod __private {
    wit_bindgen::generate!({
        path: "../wit",
        world: "agent",
        pub_export_macro: true,
        export_macro_name: "__export_agent_world",
        default_bindings_module: "drover_sdk::__private",
    });

    pub use drover::agent::types::Lifecycle as WitLifecycle;

    use super::{Agent, Error, Lifecycle};

    /// The `describe` export for `A`, defaulting to the crate's package metadata.
    pub fn describe<A: Agent>(name: &str, version: &str, description: &str) -> AgentInfo {
        AgentInfo {
            id: A::ID.unwrap_or(name).to_string(),
            version: version.to_string(),
            description: A::DESCRIPTION.unwrap_or(description).to_string(),
            lifecycle: match A::LIFECYCLE {
                Lifecycle::Job => WitLifecycle::Job,
                Lifecycle::LongLived => WitLifecycle::LongLived,
            },
            input_schema: A::input_schema().map(|s| s.to_string()),
            output_schema: A::output_schema().map(|s| s.to_string()),
        }
    }

    /// The `run` export for `A`: decode, run, encode.
    pub fn run<A: Agent>(input: &str) -> Result<String, Failure> {
        let input: A::Input = serde_json::from_str(input).map_err(|e| {
            failure(Error::new("InvalidInput", format!("cannot decode the input: {e}")).permanent())
        })?;
        let output = A::run(input).map_err(failure)?;
        serde_json::to_string(&output).map_err(|e| {
            failure(
                Error::new("InvalidOutput", format!("cannot encode the output: {e}")).permanent(),
            )
        })
    }

    fn failure(e: Error) -> Failure {
        Failure {
            tag: e.tag,
            message: e.message,
            retryable: e.retryable,
        }
    }
}

use __private::drover::agent::host;

/// Generated bindings for the `toolbox` world and the glue used by [`export_toolbox!`]. Not part
/// of the API.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod __toolbox {
    wit_bindgen::generate!({
        path: "../wit",
        world: "toolbox",
        pub_export_macro: true,
        export_macro_name: "__export_toolbox_world",
        default_bindings_module: "drover_sdk::__toolbox",
        with: {
            "drover:agent/types@0.2.0": crate::__private::drover::agent::types,
            "drover:agent/host@0.2.0": crate::__private::drover::agent::host,
        },
    });

    pub use crate::__private::drover::agent::types::{Failure, ToolInfo};
    pub use exports::drover::agent::tool_provider::Guest;

    use super::{Error, Tool};

    /// What the toolbox says about tool `T`.
    pub fn info<T: Tool>() -> ToolInfo {
        ToolInfo {
            name: T::NAME.to_string(),
            description: T::DESCRIPTION.to_string(),
            input_schema: T::input_schema().map(|s| s.to_string()),
            output_schema: T::output_schema().map(|s| s.to_string()),
        }
    }

    /// One call of tool `T`: decode, call, encode.
    pub fn call<T: Tool>(input: &str) -> Result<String, Failure> {
        let input: T::Input = serde_json::from_str(input).map_err(|e| {
            failure(
                Error::new(
                    "InvalidInput",
                    format!("cannot decode the input of {}: {e}", T::NAME),
                )
                .permanent(),
            )
        })?;
        let output = T::call(input).map_err(failure)?;
        serde_json::to_string(&output).map_err(|e| {
            failure(
                Error::new(
                    "InvalidOutput",
                    format!("cannot encode the output of {}: {e}", T::NAME),
                )
                .permanent(),
            )
        })
    }

    /// The failure for a call of a tool this toolbox does not offer.
    pub fn unknown_tool(name: &str) -> Failure {
        failure(Error::new("UnknownTool", format!("this toolbox has no tool {name:?}")).permanent())
    }

    fn failure(e: Error) -> Failure {
        Failure {
            tag: e.tag,
            message: e.message,
            retryable: e.retryable,
        }
    }
}

/// A tool: a named function with typed input and output, which models (and agents) can call.
///
/// The host checks every call's input against [`Tool::input_schema`] before it starts the tool,
/// and runs the call in a fresh instance of the component, held to the tool's limits.
pub trait Tool {
    /// The input, decoded from the call's JSON.
    type Input: DeserializeOwned;
    /// The output, encoded as the call's JSON result.
    type Output: Serialize;

    /// The tool's name: 1 to 64 letters, digits, `-` or `_`, unique on the host. Models see it.
    const NAME: &'static str;
    /// What the tool does, for people and for models (who decide from it when to call it).
    const DESCRIPTION: &'static str;

    /// JSON Schema of the input (a JSON object). Models are told to call the tool with input
    /// matching it, and the host refuses other input before the call.
    fn input_schema() -> Option<Value> {
        None
    }

    /// JSON Schema of the output (checked by the host after the call).
    fn output_schema() -> Option<Value> {
        None
    }

    /// Calls the tool once.
    fn call(input: Self::Input) -> Result<Self::Output, Error>;
}

/// An agent: typed input in, typed output out.
pub trait Agent {
    /// The input, decoded from the job's JSON.
    type Input: DeserializeOwned;
    /// The output, encoded as the run's JSON output.
    type Output: Serialize;

    /// The id the agent reports about itself. Default: the crate's package name.
    /// Informational: the host names an agent after its file (`agents/<name>.wasm`) or the `id`
    /// in its manifest.
    const ID: Option<&'static str> = None;
    /// One line on what the agent does. Default: the crate's package description.
    const DESCRIPTION: Option<&'static str> = None;
    /// Whether it runs to completion or until stopped.
    const LIFECYCLE: Lifecycle = Lifecycle::Job;

    /// JSON Schema the input must match (checked by the host before the run).
    fn input_schema() -> Option<Value> {
        None
    }

    /// JSON Schema the output must match (checked by the host after the run).
    fn output_schema() -> Option<Value> {
        None
    }

    /// Runs the agent once.
    fn run(input: Self::Input) -> Result<Self::Output, Error>;
}

/// Whether an agent runs to completion or until it is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Runs to completion.
    Job,
    /// Loops until [`stop_requested`] (or [`sleep`] returns `true`), then returns.
    LongLived,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Machine-readable class, e.g. `NotFound`.
    pub tag: String,
    /// Human-readable explanation.
    pub message: String,
    /// Whether another attempt could succeed.
    pub retryable: bool,
}

impl Error {
    /// A retryable error.
    pub fn new(tag: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// Marks the error as one that another attempt would only repeat.
    pub fn permanent(mut self) -> Self {
        self.retryable = false;
        self
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.tag, self.message)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::new("Json", e.to_string()).permanent()
    }
}

/// Log severity for [`log`].
pub use __private::drover::agent::types::Level;

/// Appends an event to the run's timeline. `kind` is 1 to 64 bytes. Fails if `payload` cannot be
/// encoded as JSON; an event that breaks the agent's event limits (a count per run, a size per
/// payload, a rate) ends the run instead, and this call does not return.
pub fn emit(kind: &str, payload: &impl Serialize) -> Result<(), Error> {
    let payload = serde_json::to_string(payload)?;
    host::emit(kind, &payload);
    Ok(())
}

/// Marks the run as alive.
pub fn heartbeat() {
    host::heartbeat();
}

/// Writes a log line to the run's timeline, within the run's log budget (shared with stdout
/// and stderr; past it, lines are dropped).
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    host::now()
}

/// Whether the host has asked this agent to stop.
pub fn stop_requested() -> bool {
    host::stop_requested()
}

/// The placeholder of the host secret `name` (`DROVER_SECRET_<name>`): put it where the secret
/// goes in an outgoing request's headers (or body, if the host allows that for the secret), and
/// the host replaces it with the value — only for requests to the hosts the secret is bound to,
/// and only if the agent's manifest lists the secret; other requests carrying it are refused.
/// The agent never sees the value. The same text is in the environment variable
/// `DROVER_SECRET_<NAME>` (upper case, `-` and `.` as `_`) of each secret the agent may use.
pub fn secret(name: &str) -> String {
    format!("DROVER_SECRET_{name}")
}

/// Sleeps for up to `duration`; returns `true` early if a stop is requested meanwhile.
pub fn sleep(duration: Duration) -> bool {
    host::sleep(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Exports `$agent` (a type implementing [`Agent`]) as this component's agent.
///
/// The id the agent reports defaults to the crate's package name, its version and description
/// to the package's; see [`Agent::ID`] and [`Agent::DESCRIPTION`] to override them.
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        #[doc(hidden)]
        pub struct __DroverAgent;

        impl $crate::__private::Guest for __DroverAgent {
            fn describe() -> $crate::__private::AgentInfo {
                $crate::__private::describe::<$agent>(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_DESCRIPTION"),
                )
            }

            fn run(
                input: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::__private::Failure> {
                $crate::__private::run::<$agent>(&input)
            }
        }

        $crate::__private::__export_agent_world!(__DroverAgent with_types_in $crate::__private);
    };
}

/// Exports the tools `$tool, …` (types implementing [`Tool`]) as this component's toolbox.
///
/// The component describes every listed tool to the host and dispatches each call by name; a
/// name it does not offer fails with `UnknownTool`.
#[macro_export]
macro_rules! export_toolbox {
    ($($tool:ty),+ $(,)?) => {
        #[doc(hidden)]
        pub struct __DroverToolbox;

        impl $crate::__toolbox::Guest for __DroverToolbox {
            fn describe() -> ::std::vec::Vec<$crate::__toolbox::ToolInfo> {
                ::std::vec![$($crate::__toolbox::info::<$tool>()),+]
            }

            fn call(
                name: ::std::string::String,
                input: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::__toolbox::Failure> {
                $(
                    if name == <$tool as $crate::Tool>::NAME {
                        return $crate::__toolbox::call::<$tool>(&input);
                    }
                )+
                ::std::result::Result::Err($crate::__toolbox::unknown_tool(&name))
            }
        }

        $crate::__toolbox::__export_toolbox_world!(__DroverToolbox with_types_in $crate::__toolbox);
    };
}
