//! The echo agent exactly as an agent built against `drover:agent@0.1.0` sees the host: its
//! bindings come from the frozen `wit/archive/agent@0.1.0.wit`, so the component imports
//! `drover:agent/host@0.1.0` and nothing newer. The host must keep loading and running it.

#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({
    path: "../../wit/archive/agent@0.1.0.wit",
    world: "agent",
});

use drover::agent::host;
use drover::agent::types::Lifecycle;

struct Echo;

impl Guest for Echo {
    fn describe() -> AgentInfo {
        AgentInfo {
            id: "echo-v0-1".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
            lifecycle: Lifecycle::Job,
            input_schema: Some(
                r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#
                    .into(),
            ),
            output_schema: None,
        }
    }

    fn run(input: String) -> Result<String, Failure> {
        let failure = |message: String| Failure {
            tag: "InvalidInput".into(),
            message,
            retryable: false,
        };
        let input: serde_json::Value =
            serde_json::from_str(&input).map_err(|e| failure(e.to_string()))?;
        let n = input["n"]
            .as_i64()
            .ok_or_else(|| failure("n must be an integer".into()))?;
        host::emit("echoed", &format!(r#"{{"n":{n},"at":{}}}"#, host::now()));
        Ok(serde_json::json!({ "received": n, "ok": true }).to_string())
    }
}

export!(Echo);
