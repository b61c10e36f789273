//! A model-backed agent with a tool: a question in, a number out. The model is asked through
//! the host (alias `cheap`, see `agents/math.toml`) and may call the `calc` tool, which runs in
//! a sandbox of its own; the SDK's agent loop drives the conversation.

use drover_sdk::{Agent, Error, LoopOptions, Value, export_agent, json, run_loop};
use serde::{Deserialize, Serialize};

/// The job's input.
#[derive(Serialize, Deserialize)]
struct Question {
    question: String,
}

/// The run's output.
#[derive(Serialize, Deserialize)]
struct Answer {
    answer: f64,
}

const SYSTEM_PROMPT: &str = "You answer arithmetic questions. Work the numbers out with the \
    calc tool, never in your head. Reply with only a JSON object {\"answer\": <number>}.";

struct Math;

impl Agent for Math {
    type Input = Question;
    type Output = Answer;

    fn input_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": { "question": { "type": "string", "maxLength": 2000 } },
            "required": ["question"]
        }))
    }

    fn output_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": { "answer": { "type": "number" } },
            "required": ["answer"]
        }))
    }

    fn run(input: Question) -> Result<Answer, Error> {
        let model = std::env::var("MODEL").unwrap_or_else(|_| "cheap".into());
        run_loop(&LoopOptions::new(model, SYSTEM_PROMPT), &input)
    }
}

export_agent!(Math);
