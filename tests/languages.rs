//! Agents in TypeScript, JavaScript and Python, built by the SDKs' own build commands
//! (`guest-sdk/js/build.mjs`, `guest-sdk/python`'s `drover_sdk.build`) and run by the real
//! binary over real HTTP, beside the Rust ones: the same answers, the same long-lived
//! lifecycle, the same containment, the same hot reload, and the same host interfaces (models,
//! tools, children, the inbox) through the SDKs' wrappers.

use std::time::Duration;

use drover_test_support::http::{self, get_json, post_json};
use drover_test_support::{
    AgentDir, CHAOS_JS, CHAOS_PY, ECHO, ECHO_JS, ECHO_PY, HostProcess, QUEUE_WORKER_JS, WAIT,
    host_args, other_languages,
};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// The chaos agents' limits: tight enough to be hit quickly.
const CHAOS_LIMITS: &str = r#"
[limits]
fuel = 2_000_000_000
memory = "128MiB"
timeout-ms = 60000
[env]
GREETING = "hello from the manifest"
"#;

/// A host process on `agents`, with its own databases in `dir`.
fn start(agents: &AgentDir, dir: &tempfile::TempDir) -> HostProcess {
    HostProcess::start(
        EXE,
        &host_args(agents.path(), dir.path(), "data", None),
        &[],
    )
}

/// Posts a job and waits for it to finish; the `{job, run}` view.
async fn run(host: &HostProcess, agent: &str, input: Value) -> Value {
    post_and_wait(host, json!({ "agentId": agent, "input": input })).await
}

/// Posts the job `body` and waits for it to finish; the `{job, run}` view.
async fn post_and_wait(host: &HostProcess, body: Value) -> Value {
    let view = http::post_and_wait(&host.url, &body).await;
    assert!(
        matches!(view["job"]["status"].as_str(), Some("done" | "failed")),
        "{} did not finish: {view}",
        body["agentId"]
    );
    view
}

/// Runs `agent` on `input` and returns its output, asserting it succeeded.
async fn output(host: &HostProcess, agent: &str, input: Value) -> Value {
    let view = run(host, agent, input).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    view["run"]["output"].clone()
}

/// Runs a chaos mode and returns the failed run's error; the echo agents still answer after it.
async fn contained(host: &HostProcess, agent: &str, mode: &str) -> Value {
    let view = run(host, agent, json!({ "mode": mode })).await;
    assert_eq!(view["job"]["status"], "failed", "{agent} {mode}: {view}");
    for echo in ["echo", "echo-js", "echo-py"] {
        assert_eq!(
            output(host, echo, json!({ "n": 7 })).await,
            json!({ "received": 7, "ok": true }),
            "{echo} after {agent} {mode}"
        );
    }
    view["run"]["error"].clone()
}

fn all_echoes() -> AgentDir {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add("echo-js", ECHO_JS, None)
        .add("echo-py", ECHO_PY, None);
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_typescript_and_python_echo_answer_alike() {
    if !other_languages("rust_typescript_and_python_echo_answer_alike") {
        return;
    }
    let agents = all_echoes();
    let dir = tempfile::tempdir().expect("tempdir");
    let host = start(&agents, &dir);

    for agent in ["echo", "echo-js", "echo-py"] {
        let view = run(&host, agent, json!({ "n": 42 })).await;
        assert_eq!(view["job"]["status"], "done", "{view}");
        assert_eq!(view["run"]["output"], json!({ "received": 42, "ok": true }));
        assert_eq!(view["run"]["sandbox"], "wasm");
        // Each one's schema, from its own `describe`, guards its input at the door.
        let refused = reqwest::Client::new()
            .post(format!("{}/v1/jobs", host.url))
            .json(&json!({ "agentId": agent, "input": { "n": "forty-two" } }))
            .send()
            .await
            .expect("post");
        assert_eq!(refused.status(), 400, "{agent}");
        let body: Value = refused.json().await.expect("json");
        assert_eq!(body["error"]["tag"], "InvalidInput", "{body}");
    }
    let templates = get_json(format!("{}/v1/templates", host.url)).await;
    let described = |id: &str| {
        templates["templates"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no template {id}: {templates}"))
    };
    assert_eq!(
        described("echo-js")["description"],
        "Echoes the number it is given (TypeScript)"
    );
    assert_eq!(
        described("echo-py")["outputSchema"]["required"],
        json!(["received", "ok"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_queue_worker_heartbeats_until_deleted_and_completes() {
    if !other_languages("the_javascript_queue_worker_heartbeats_until_deleted_and_completes") {
        return;
    }
    let agents = AgentDir::new();
    agents.add("queue-worker-js", QUEUE_WORKER_JS, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let host = start(&agents, &dir);

    let name = http::spawn(
        &host.url,
        &json!({
            "agentType": "queue-worker-js",
            "tenantId": "tenant-a",
            "input": { "intervalMs": 40, "itemsPerBatch": 2 },
        }),
    )
    .await;

    // It heartbeats and processes items while it runs.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = get_json(format!("{}/v1/agents/{name}/events", host.url)).await;
        let count = |kind: &str| {
            events["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["kind"] == kind)
                .count()
        };
        if count("heartbeat") >= 3 && count("item_processed") >= 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "too few heartbeats: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = get_json(format!("{}/v1/agents/{name}", host.url)).await;
    assert_eq!(view["agent"]["phase"], "Running", "{view}");

    // DELETE asks it to stop; it finishes its item and returns: Completed, not Failed.
    let deleted = reqwest::Client::new()
        .delete(format!("{}/v1/agents/{name}", host.url))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 202);
    let deadline = tokio::time::Instant::now() + WAIT;
    let view = loop {
        let view = get_json(format!("{}/v1/agents/{name}", host.url)).await;
        if view["agent"]["phase"] != "Running" && view["agent"]["phase"] != "Pending" {
            break view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not stopped: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(view["agent"]["phase"], "Completed", "{view}");
    // Every page of the run's events: at 25 batches (75 events) a second, under its event
    // rate, a slow machine fills more than one page before the stop.
    let events = http::events(&format!("{}/v1/agents/{name}/events", host.url)).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"run_start"), "{kinds:?}");
    assert_eq!(kinds.get(1), Some(&"worker_started"), "{kinds:?}");
    assert_eq!(
        kinds[kinds.len().saturating_sub(2)..],
        ["worker_stopping", "run_end"],
        "{kinds:?}"
    );
    let digest = events
        .iter()
        .find(|e| e["kind"] == "item_processed")
        .map(|e| e["payload"]["digest"].clone());
    // FNV-1a of "item-1-0", as the Rust queue worker computes it.
    assert_eq!(digest, Some(json!(fnv1a("item-1-0"))));
}

fn fnv1a(item: &str) -> String {
    let hash = item.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_agent_that_misbehaves_is_contained() {
    if !other_languages("a_javascript_agent_that_misbehaves_is_contained") {
        return;
    }
    let agents = all_echoes();
    agents.add("chaos-js", CHAOS_JS, Some(CHAOS_LIMITS));
    let dir = tempfile::tempdir().expect("tempdir");
    let host = start(&agents, &dir);

    let error = contained(&host, "chaos-js", "spin").await;
    assert_eq!(error["tag"], "OutOfFuel", "{error}");
    let error = contained(&host, "chaos-js", "hoard").await;
    assert_eq!(error["tag"], "MemoryLimit", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("memory limit of 128 MiB")),
        "{error}"
    );
    let error = contained(&host, "chaos-js", "throw").await;
    assert_eq!(error["tag"], "Error", "{error}");
    assert_eq!(error["message"], "chaos agent threw on purpose");
    // A failure the agent marks permanent is not retried, though the job allows it.
    let view = post_and_wait(
        &host,
        json!({ "agentId": "chaos-js", "input": { "mode": "fail" }, "maxAttempts": 3 }),
    )
    .await;
    assert_eq!(view["run"]["error"]["tag"], "ChaosFailure", "{view}");
    assert_eq!(view["job"]["status"], "failed", "{view}");
    assert_eq!(view["job"]["attempts"], 1, "{view}");

    // No process, no environment, no files: the engine has none to offer.
    let found = output(&host, "chaos-js", json!({ "mode": "escape" })).await;
    assert_eq!(
        found,
        json!({ "process": "undefined", "require": "undefined", "deno": "undefined" })
    );
    // `fetch` goes through the host, which allows no outbound host to this agent.
    let fetched = output(
        &host,
        "chaos-js",
        json!({ "mode": "fetch", "url": "http://127.0.0.1:9/" }),
    )
    .await;
    assert!(fetched.get("status").is_none(), "{fetched}");
    assert!(fetched["error"].is_string(), "{fetched}");
    let log = host.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_agent_that_misbehaves_is_contained() {
    if !other_languages("a_python_agent_that_misbehaves_is_contained") {
        return;
    }
    let agents = all_echoes();
    agents.add("chaos-py", CHAOS_PY, Some(CHAOS_LIMITS));
    let dir = tempfile::tempdir().expect("tempdir");
    let host = start(&agents, &dir);

    let error = contained(&host, "chaos-py", "spin").await;
    assert_eq!(error["tag"], "OutOfFuel", "{error}");
    let error = contained(&host, "chaos-py", "hoard").await;
    // CPython reports the failed allocation itself (MemoryError) or the host stops it at the
    // limit; either way the run fails and the host goes on.
    assert!(
        matches!(error["tag"].as_str(), Some("MemoryError" | "MemoryLimit")),
        "{error}"
    );
    let error = contained(&host, "chaos-py", "throw").await;
    assert_eq!(error["tag"], "RuntimeError", "{error}");
    assert_eq!(error["message"], "chaos agent raised on purpose");
    // A failure the agent marks permanent is not retried, though the job allows it.
    let view = post_and_wait(
        &host,
        json!({ "agentId": "chaos-py", "input": { "mode": "fail" }, "maxAttempts": 3 }),
    )
    .await;
    assert_eq!(view["run"]["error"]["tag"], "ChaosFailure", "{view}");
    assert_eq!(view["job"]["status"], "failed", "{view}");
    assert_eq!(view["job"]["attempts"], 1, "{view}");

    // Only the manifest's environment; no files outside the component; no sockets.
    let found = output(&host, "chaos-py", json!({ "mode": "escape" })).await;
    assert_eq!(
        found["environ"],
        json!({ "GREETING": "hello from the manifest" }),
        "{found}"
    );
    for path in ["/etc/passwd", "/proc/self/environ", "../../etc/passwd"] {
        let answer = found[path].as_str().unwrap_or_default();
        assert!(
            answer.starts_with("FileNotFoundError") || answer.starts_with("PermissionError"),
            "{path}: {found}"
        );
    }
    let sockets = output(&host, "chaos-py", json!({ "mode": "sockets" })).await;
    assert_eq!(sockets["connected"], false, "{sockets}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_agent_is_hot_reloaded() {
    if !other_languages("a_javascript_agent_is_hot_reloaded") {
        return;
    }
    let agents = AgentDir::new();
    agents.add("greeter", ECHO_JS, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let host = start(&agents, &dir);
    assert_eq!(
        output(&host, "greeter", json!({ "n": 1 })).await,
        json!({ "received": 1, "ok": true })
    );

    // Its file is replaced by another JavaScript component; new jobs run the new one.
    agents.add("greeter", CHAOS_JS, None);
    // The new component compiles first (seconds, more on a busy machine).
    let deadline = tokio::time::Instant::now() + drover_test_support::START_WAIT;
    loop {
        let view = run(&host, "greeter", json!({ "n": 1, "mode": "ok" })).await;
        if view["run"]["output"] == json!({ "ok": true }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reloaded: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let templates = get_json(format!("{}/v1/templates", host.url)).await;
    let greeter = templates["templates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["id"] == "greeter")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        greeter["description"], "Misbehaves on purpose (JavaScript)",
        "{greeter}"
    );
}

/// A long-lived TypeScript agent that answers each message by calling what it names: a model,
/// a tool, or a child agent, through the SDK's wrappers of the host's interfaces.
const CAPS_TS: &str = r#"
import { defineAgent, stopRequested } from 'drover-sdk';
import { complete } from 'drover-sdk/model';
import { callTool } from 'drover-sdk/tools';
import { spawn, waitFor, listChildren } from 'drover-sdk/agents';
import { receive, reply } from 'drover-sdk/inbox';

function answer(ask: any): unknown {
  switch (ask.call) {
    case 'model': {
      const r = complete({ model: 'cheap', messages: [{ role: 'user', content: ask.text }] });
      return { text: r.message.content, tokens: r.usage.inputTokens + r.usage.outputTokens };
    }
    case 'tool':
      return callTool(ask.tool, ask.input);
    case 'child': {
      const id = spawn('echo', { n: ask.n });
      const done = waitFor(id, 30000);
      return { status: done.status, output: done.output, children: listChildren().length };
    }
    default:
      return { unknown: ask };
  }
}

export const { describe, run } = defineAgent({
  id: 'caps-ts',
  lifecycle: 'long-lived',
  run() {
    let handled = 0;
    while (!stopRequested()) {
      const message = receive(1000);
      if (message === undefined) continue;
      let body: unknown;
      try {
        body = answer(message.body);
      } catch (e: any) {
        body = { error: { tag: e.tag ?? 'Error', message: String(e.message) } };
      }
      reply(message.id, body);
      handled += 1;
    }
    return { handled };
  },
});
"#;

/// The same agent in Python.
const CAPS_PY: &str = r#"
from drover_sdk import (Agent, AgentError, call_tool, complete, export, list_children, receive,
                        reply, spawn, stop_requested, wait_for)


def answer(ask):
    if ask["call"] == "model":
        r = complete("cheap", [{"role": "user", "content": ask["text"]}])
        return {"text": r["message"]["content"],
                "tokens": r["usage"]["input_tokens"] + r["usage"]["output_tokens"]}
    if ask["call"] == "tool":
        return call_tool(ask["tool"], ask["input"])
    if ask["call"] == "child":
        done = wait_for(spawn("echo", {"n": ask["n"]}), 30000)
        return {"status": done["status"], "output": done["output"], "children": len(list_children())}
    return {"unknown": ask}


class Caps(Agent):
    id = "caps-py"
    lifecycle = "long-lived"

    def run(self, input):
        handled = 0
        while not stop_requested():
            message = receive(1000)
            if message is None:
                continue
            try:
                body = answer(message["body"])
            except AgentError as e:
                body = {"error": {"tag": e.tag, "message": str(e)}}
            reply(message["id"], body)
            handled += 1
        return {"handled": handled}


WitWorld = export(Caps)
"#;

/// What both capability agents may use.
const CAPS_MANIFEST: &str = r#"
lifecycle = "long-lived"
models = ["cheap"]
tools = ["calc"]
[children]
allowed = ["echo"]
"#;

/// TypeScript and Python agents call a model (through the host, with a key they never see), a
/// tool, and a child agent, and answer over their inbox: the SDKs' wrappers of every host
/// interface, end to end, with the failures of each coming back as tagged errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_and_python_agents_use_models_tools_children_and_their_inbox() {
    use drover_test_support::model_server::{ModelServer, Reply};

    if !other_languages("typescript_and_python_agents_use_models_tools_children_and_their_inbox") {
        return;
    }
    let agents = AgentDir::new();
    agents.add("echo", ECHO, None);
    std::fs::create_dir_all(agents.path().join("tools")).expect("tools");
    std::fs::copy(
        drover_test_support::TOOL_CALC,
        agents.path().join("tools/calc.wasm"),
    )
    .expect("calc");
    for (name, file, source) in [
        ("caps-ts", "agent.ts", CAPS_TS),
        ("caps-py", "app.py", CAPS_PY),
    ] {
        let dir = agents.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(file), source).expect("source");
        std::fs::write(agents.path().join(format!("{name}.toml")), CAPS_MANIFEST)
            .expect("manifest");
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository");
    let built = std::process::Command::new(EXE)
        .args(["build", "caps-ts", "caps-py", "--agents"])
        .arg(agents.path())
        .arg("--sdk")
        .arg(repo.join("guest-sdk"))
        .env("DROVER_JS_BUILD", drover_test_support::JS_BUILD)
        .env("DROVER_PYTHON", drover_test_support::PYTHON)
        .output()
        .expect("drover-host build");
    assert!(
        built.status.success(),
        "{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    let server = ModelServer::always(Reply::text("Paris.")).await;
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("drover.toml");
    std::fs::write(
        &config,
        format!(
            "[models.cheap]\nprovider = \"openai\"\nbase-url = \"{}\"\nmodel = \"m\"\n\
             api-key-env = \"DROVER_TEST_MODEL_KEY\"\n",
            server.base_url()
        ),
    )
    .expect("config");
    let key = "sk-languages-5b4a3928";
    let host = HostProcess::start(
        EXE,
        &host_args(agents.path(), dir.path(), "data", Some(&config)),
        &[("DROVER_TEST_MODEL_KEY", key)],
    );
    let client = reqwest::Client::new();
    for agent in ["caps-ts", "caps-py"] {
        let spawned = post_json(
            format!("{}/spawn", host.url),
            &json!({ "agentType": agent }),
        )
        .await;
        let id = spawned["workloadName"]
            .as_str()
            .unwrap_or_else(|| panic!("{agent}: {spawned}\n{}", host.log_text()))
            .to_string();
        let ask = |message: Value| {
            let url = format!("{}/v1/agents/{id}/messages?waitMs=120000", host.url);
            async move { post_json(url, &json!({ "message": message })).await["reply"].clone() }
        };
        assert_eq!(
            ask(json!({ "call": "model", "text": "The capital of France?" })).await,
            json!({ "text": "Paris.", "tokens": 15 }),
            "{agent}: {}",
            host.log_text()
        );
        // (calc answers 42.0, which JavaScript's JSON writes back as 42 and Python's as 42.0.)
        let calc =
            ask(json!({ "call": "tool", "tool": "calc", "input": { "expression": "6 * 7" } }))
                .await;
        assert_eq!(calc["value"].as_f64(), Some(42.0), "{agent}: {calc}");
        let refused = ask(json!({ "call": "tool", "tool": "http-get", "input": {} })).await;
        assert!(
            refused["error"]["tag"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
            "{agent}: a tool it may not call is a tagged error: {refused}"
        );
        assert_eq!(
            ask(json!({ "call": "child", "n": 7 })).await,
            json!({ "status": "done", "output": { "received": 7, "ok": true }, "children": 1 }),
            "{agent}"
        );
        let status = client
            .delete(format!("{}/v1/agents/{id}", host.url))
            .send()
            .await
            .expect("delete")
            .status();
        assert!(status.is_success(), "{agent}: {status}");
        let done = get_json(format!(
            "{}/v1/jobs/{id}/wait?timeoutMs={}",
            host.url,
            WAIT.as_millis()
        ))
        .await;
        assert_eq!(done["job"]["status"], "done", "{agent}: {done}");
        assert_eq!(done["run"]["output"], json!({ "handled": 4 }), "{agent}");
        assert!(
            !host.log_text().contains(key),
            "the model key never reaches a log"
        );
    }
    // Every model call went to the server with the host's key.
    assert_eq!(server.served(), 2);
}
