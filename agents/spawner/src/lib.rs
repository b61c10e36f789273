//! Spawns the children its input lists, then waits for them, stops them or lists them, as
//! the input says, and reports what each call answered. The tests of agents that drive agents
//! use it.
//!
//! Input: `{"children": [{"agentId", "input"}], "wait": bool, "timeoutMs": n, "stop": bool
//! (stop each child once it runs), "oneByOne": bool (spawn each child once the one before has
//! finished, and wait for each),
//! "list": bool, "waitFor": "<job id>"}`. Output: `{"spawned": [{"id"} | {"tag", "message"}],
//! "outcomes": [{"status", "output", "error"}], "listed": [{"id", "agentId", "status"}],
//! "foreign": {"tag"}}` (`foreign`: what a wait for `waitFor`, not a child of this run, said).

use std::time::Duration;

use drover_sdk::agents::{self, Outcome, SpawnOptions, Status};
use drover_sdk::{Agent, Error, Value, json};
use serde::{Deserialize, Serialize};

/// One child to spawn.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spawn {
    agent_id: String,
    #[serde(default)]
    input: Value,
}

/// The job's input.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Input {
    children: Vec<Spawn>,
    wait: bool,
    timeout_ms: Option<u64>,
    stop: bool,
    one_by_one: bool,
    list: bool,
    wait_for: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    spawned: Vec<Value>,
    outcomes: Vec<Value>,
    listed: Vec<Value>,
    foreign: Option<Value>,
}

fn status(status: Status) -> &'static str {
    match status {
        Status::Scheduled => "scheduled",
        Status::Queued => "queued",
        Status::Running => "running",
        Status::Done => "done",
        Status::Failed => "failed",
        Status::Cancelled => "cancelled",
    }
}

fn outcome(outcome: &Outcome) -> Value {
    let output: Option<Value> = outcome.output().unwrap_or(None);
    json!({
        "status": status(outcome.status),
        "output": output,
        "error": outcome.error.as_ref().map(|e| json!({ "tag": e.tag, "message": e.message })),
    })
}

fn refusal(e: &Error) -> Value {
    json!({ "tag": e.tag, "message": e.message })
}

struct Spawner;

impl Agent for Spawner {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, Error> {
        let timeout = Duration::from_millis(input.timeout_ms.unwrap_or(60_000));
        let mut ids = Vec::new();
        let mut spawned = Vec::new();
        let mut outcomes = Vec::new();
        for child in &input.children {
            match agents::spawn(&child.agent_id, &child.input, SpawnOptions::default()) {
                Ok(id) => {
                    spawned.push(json!({ "id": id }));
                    if input.one_by_one {
                        match agents::wait(&id, timeout) {
                            Ok(o) => outcomes.push(outcome(&o)),
                            Err(e) => outcomes.push(refusal(&e)),
                        }
                    }
                    ids.push(id);
                }
                Err(e) => spawned.push(refusal(&e)),
            }
        }
        let listed = if input.list {
            agents::list()
                .into_iter()
                .map(|c| json!({ "id": c.id, "agentId": c.agent_id, "status": status(c.status) }))
                .collect()
        } else {
            Vec::new()
        };
        if input.stop {
            // Each child is stopped once it runs (one stopped before it starts is cancelled).
            let deadline = drover_sdk::now_ms().saturating_add(timeout.as_millis() as u64);
            for id in &ids {
                while drover_sdk::now_ms() < deadline {
                    let status = agents::list()
                        .into_iter()
                        .find(|c| &c.id == id)
                        .map(|c| c.status);
                    if status.is_none_or(|s| s == Status::Running || s.is_finished()) {
                        break;
                    }
                    drover_sdk::sleep(Duration::from_millis(10));
                }
                agents::stop(id)?;
            }
        }
        if input.wait && !input.one_by_one {
            for id in &ids {
                match agents::wait(id, timeout) {
                    Ok(o) => outcomes.push(outcome(&o)),
                    Err(e) => outcomes.push(refusal(&e)),
                }
            }
        }
        let foreign = input
            .wait_for
            .as_deref()
            .map(|id| match agents::wait(id, timeout) {
                Ok(o) => outcome(&o),
                Err(e) => refusal(&e),
            });
        Ok(Output {
            spawned,
            outcomes,
            listed,
            foreign,
        })
    }
}

drover_sdk::export_agent!(Spawner);
