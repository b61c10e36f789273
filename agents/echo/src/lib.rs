//! The first agent of the seed: `{n}` in, `{received: n, ok: true}` out.

use drover_sdk::{Agent, Error, Value, export_agent, json};
use serde::{Deserialize, Serialize};

/// The job's input.
#[derive(Deserialize)]
struct Input {
    n: i64,
}

/// The run's output.
#[derive(Serialize)]
struct Output {
    received: i64,
    ok: bool,
}

struct Echo;

impl Agent for Echo {
    type Input = Input;
    type Output = Output;

    fn input_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": { "n": { "type": "integer" } },
            "required": ["n"]
        }))
    }

    fn output_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "received": { "type": "integer" },
                "ok": { "type": "boolean" }
            },
            "required": ["received", "ok"]
        }))
    }

    fn run(input: Input) -> Result<Output, Error> {
        Ok(Output {
            received: input.n,
            ok: true,
        })
    }
}

export_agent!(Echo);
