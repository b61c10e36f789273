//! Tools as components: the real tool components of `agents/tools/` (compiled for
//! `wasm32-wasip2` by the test-support build), loaded from an agent directory's `tools/` and
//! called in real wasmtime, each call in a fresh instance held to the tool's limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_host::registry::{DirRegistry, ToolRegistry, ToolSpec};
use drover_host::sandbox::wasm::{EngineConfig, ToolOutcome, WasmRuntime};
use drover_host::sandbox::{AbortReason, Control};
use drover_test_support::{AgentDir, ECHO, TOOL_BAD, TOOL_CALC, TOOL_JSON_QUERY, WAIT};
use serde_json::{Value, json};

/// A runtime and a registry on `agents`; the temp dir holds the scratch root.
struct Tools {
    runtime: Arc<WasmRuntime>,
    registry: Arc<DirRegistry>,
    _scratch: tempfile::TempDir,
}

impl Tools {
    async fn open(agents: &AgentDir) -> Self {
        let scratch = tempfile::tempdir().expect("temp dir");
        let config = EngineConfig {
            max_instances: 128,
            cache_dir: Some(drover_test_support::cache_dir()),
            ..EngineConfig::default()
        };
        let runtime = WasmRuntime::new(&config, scratch.path()).expect("runtime");
        let registry = DirRegistry::open(agents.path(), Arc::clone(&runtime))
            .await
            .expect("registry");
        Self {
            runtime,
            registry,
            _scratch: scratch,
        }
    }

    fn tool(&self, name: &str) -> Arc<ToolSpec> {
        self.registry.get_tool(name).unwrap_or_else(|| {
            panic!(
                "tool {name} is not loaded; problems: {:?}",
                self.registry.problems()
            )
        })
    }

    async fn call(&self, name: &str, input: Value) -> ToolOutcome {
        self.call_spec(&self.tool(name), &input.to_string()).await
    }

    async fn call_spec(&self, spec: &ToolSpec, input: &str) -> ToolOutcome {
        self.runtime.call_tool(spec, input, &Control::new()).await
    }
}

/// The output of a successful call, parsed.
fn ok(outcome: &ToolOutcome) -> Value {
    match &outcome.result {
        Ok(output) => serde_json::from_str(output).expect("the output is JSON"),
        Err(failure) => panic!("the call failed: {failure}"),
    }
}

/// The failure's tag and message of a failed call.
fn failed(outcome: &ToolOutcome) -> (String, String) {
    match &outcome.result {
        Ok(output) => panic!("the call succeeded with {output}"),
        Err(failure) => (failure.tag.clone(), failure.message.clone()),
    }
}

/// The three example tools, with bad-tool held to limits its misbehaviours reach quickly.
const BAD_LIMITS: &str = r#"
[limits]
fuel = 200_000_000
memory = "32MiB"
timeout-ms = 1000
max-output-bytes = "64KiB"
"#;

async fn example_tools() -> (AgentDir, Tools) {
    let agents = AgentDir::new();
    agents
        .add_tool("calc", TOOL_CALC, None)
        .add_tool("json-query", TOOL_JSON_QUERY, None)
        .add_tool("bad-tool", TOOL_BAD, Some(BAD_LIMITS));
    let tools = Tools::open(&agents).await;
    (agents, tools)
}

#[tokio::test]
async fn the_example_tools_load_and_describe_themselves() {
    let (_agents, tools) = example_tools().await;
    assert_eq!(
        tools.registry.problems().len(),
        0,
        "{:?}",
        tools.registry.problems()
    );
    let names: Vec<String> = tools
        .registry
        .list_tools()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(names, ["bad-tool", "calc", "json-query"]);
    // A tool directory is not an agent directory: none of them is an agent.
    assert!(drover_host::registry::Registry::list(&*tools.registry).is_empty());
    let calc = tools.tool("calc");
    assert!(
        calc.description.contains("arithmetic"),
        "{}",
        calc.description
    );
    assert_eq!(calc.component, "calc");
    assert_eq!(calc.limits, ToolSpec::default_limits());
    let schema = calc
        .input_schema_json
        .as_ref()
        .expect("calc has an input schema");
    assert_eq!(schema["required"], json!(["expression"]));
    assert_eq!(&calc.parameters(), schema);
    assert!(calc.output_schema.is_some());
    assert!(
        calc.source
            .as_ref()
            .is_some_and(|p| p.ends_with("tools/calc.wasm"))
    );
}

#[tokio::test]
async fn calc_evaluates_arithmetic() {
    let (_agents, tools) = example_tools().await;
    let cases = [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("2 ^ 3 ^ 2", 512.0),
        ("-2 ^ 2", -4.0),
        ("-(4 - 6) * 2.5", 5.0),
        ("17 % 5 + 0.25", 2.25),
        ("10 / 4", 2.5),
    ];
    for (expression, value) in cases {
        let outcome = tools
            .call("calc", json!({ "expression": expression }))
            .await;
        assert_eq!(ok(&outcome), json!({ "value": value }), "{expression}");
        assert!(outcome.fuel_used.is_some_and(|f| f > 0));
        assert!(outcome.peak_memory.is_some_and(|m| m > 0));
    }
    for (expression, tag) in [
        ("1 / 0", "DivisionByZero"),
        ("5 % (2 - 2)", "DivisionByZero"),
        ("2 +* 3", "SyntaxError"),
        ("(1 + 2", "SyntaxError"),
        ("10 ^ 999", "NotFinite"),
    ] {
        let outcome = tools
            .call("calc", json!({ "expression": expression }))
            .await;
        assert_eq!(failed(&outcome).0, tag, "{expression}");
    }
}

#[tokio::test]
async fn json_query_selects_by_path() {
    let (_agents, tools) = example_tools().await;
    let document = json!({
        "a": { "b": [{ "c": 1 }, { "c": 2 }] },
        "items": [{ "name": "x" }, { "name": "y" }, { "other": true }],
        "odd key": "z"
    });
    let cases = [
        ("a.b[0].c", json!([1])),
        ("a.b[-1].c", json!([2])),
        ("items[*].name", json!(["x", "y"])),
        ("a.b.*.c", json!([1, 2])),
        ("[\"odd key\"]", json!(["z"])),
        ("nothing.here", json!([])),
        ("", json!([document.clone()])),
    ];
    for (path, values) in cases {
        let outcome = tools
            .call("json-query", json!({ "document": document, "path": path }))
            .await;
        assert_eq!(ok(&outcome), json!({ "values": values }), "{path}");
    }
    let outcome = tools
        .call(
            "json-query",
            json!({ "document": document, "path": "a..b" }),
        )
        .await;
    assert_eq!(failed(&outcome).0, "InvalidPath");
}

#[tokio::test]
async fn every_misbehaviour_of_a_tool_stays_in_its_call() {
    let (_agents, tools) = example_tools().await;
    let cases: [(Value, &str, &str); 7] = [
        (
            json!({ "mode": "trap" }),
            "ToolTrapped",
            "bad-tool trapped on purpose",
        ),
        (json!({ "mode": "spin" }), "ToolQuota", "fuel"),
        (
            json!({ "mode": "hoard" }),
            "ToolQuota",
            "memory limit of 32 MiB",
        ),
        (
            json!({ "mode": "big-output", "bytes": 200_000 }),
            "ToolQuota",
            "max-output-bytes",
        ),
        (json!({ "mode": "sleep" }), "ToolTimeout", "1000 ms"),
        (json!({ "mode": "fail" }), "Broken", "on purpose"),
        (
            json!({ "mode": "wrong-output" }),
            "InvalidOutput",
            "output schema",
        ),
    ];
    for (input, tag, says) in cases {
        let started = Instant::now();
        let outcome = tools.call("bad-tool", input.clone()).await;
        let (got, message) = failed(&outcome);
        assert_eq!(got, tag, "{input}: {message}");
        assert!(message.contains(says), "{input}: {message}");
        assert!(message.len() <= 4096, "{input}: the message is not bounded");
        assert!(started.elapsed() < WAIT, "{input} took too long");
        // The next call of the same tool, and of another, is fine.
        assert_eq!(
            ok(&tools.call("bad-tool", json!({ "mode": "ok" })).await),
            json!({ "ok": true })
        );
        assert_eq!(
            ok(&tools.call("calc", json!({ "expression": "2 * 21" })).await),
            json!({ "value": 42.0 })
        );
    }
    // Output, logs and events of a tool are dropped without failing it; no stop is requested.
    assert_eq!(
        ok(&tools.call("bad-tool", json!({ "mode": "chatty" })).await),
        json!({ "chatty": true, "stopRequested": false })
    );
}

#[tokio::test]
async fn a_tool_that_computes_past_its_timeout_is_interrupted() {
    let (_agents, tools) = example_tools().await;
    let mut spec = (*tools.tool("bad-tool")).clone();
    spec.limits.fuel = None;
    spec.limits.timeout = Some(Duration::from_millis(300));
    let outcome = tools.call_spec(&spec, r#"{"mode":"spin"}"#).await;
    assert_eq!(failed(&outcome).0, "ToolTimeout");
    assert!(outcome.duration < WAIT);
}

#[tokio::test]
async fn aborting_the_calling_run_ends_the_call() {
    let (_agents, tools) = example_tools().await;
    let mut spec = (*tools.tool("bad-tool")).clone();
    spec.limits.fuel = None;
    spec.limits.timeout = None;
    for mode in ["spin", "sleep"] {
        let control = Control::new();
        let abort = {
            let control = Arc::clone(&control);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                control.abort(AbortReason::Cancelled);
            })
        };
        let input = json!({ "mode": mode }).to_string();
        let outcome = tokio::time::timeout(WAIT, tools.runtime.call_tool(&spec, &input, &control))
            .await
            .expect("the call ends when its run is aborted");
        abort.await.expect("abort task");
        assert_eq!(failed(&outcome).0, "Cancelled", "{mode}");
    }
    // A call for a run that is already aborted does not start.
    let control = Control::new();
    control.abort(AbortReason::Timeout);
    let outcome = tools
        .runtime
        .call_tool(&spec, r#"{"mode":"ok"}"#, &control)
        .await;
    assert_eq!(failed(&outcome).0, "Cancelled");
    assert_eq!(outcome.fuel_used, None);
}

#[tokio::test]
async fn input_is_checked_against_the_schema_before_the_call() {
    let (_agents, tools) = example_tools().await;
    let calc = tools.tool("calc");
    let big = format!(r#"{{"expression":"{}"}}"#, "1".repeat(2 << 20));
    for input in [
        "not json",
        r#"{"expression": 5}"#,
        r#"{}"#,
        r#"{"expression": "1", "extra": true}"#,
        r#"[1, 2]"#,
        big.as_str(),
    ] {
        let outcome = tools.call_spec(&calc, input).await;
        let (tag, message) = failed(&outcome);
        assert_eq!(tag, "InvalidInput", "{message}");
        // Refused before an instance was made.
        assert_eq!(outcome.fuel_used, None, "{message}");
        assert_eq!(outcome.peak_memory, None, "{message}");
    }
    let outcome = tools.call_spec(&calc, r#"{"expression": 5}"#).await;
    assert!(failed(&outcome).1.contains("input schema of calc"));
    // bad-tool refuses a mode its schema does not list, before it could misbehave.
    let outcome = tools.call("bad-tool", json!({ "mode": "explode" })).await;
    assert_eq!(failed(&outcome).0, "InvalidInput");
}

#[tokio::test]
async fn a_tool_name_offered_twice_is_refused_naming_both() {
    let agents = AgentDir::new();
    agents
        .add_tool("calc", TOOL_CALC, None)
        .add_tool("other-calc", TOOL_CALC, None);
    let tools = Tools::open(&agents).await;
    let calc = tools.tool("calc");
    assert!(
        calc.source
            .as_ref()
            .is_some_and(|p| p.ends_with("tools/calc.wasm"))
    );
    assert_eq!(tools.registry.list_tools().len(), 1);
    let problems = tools.registry.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("tools/other-calc.wasm"));
    assert!(
        problems[0].error.contains("other-calc.wasm"),
        "{}",
        problems[0].error
    );
    assert!(
        problems[0].error.contains("tools/calc.wasm"),
        "{}",
        problems[0].error
    );

    // When the first goes, the second takes the name.
    std::fs::remove_file(agents.path().join("tools/calc.wasm")).expect("remove");
    let report = tools.registry.rescan().await;
    assert_eq!(report.tools_removed, ["calc"]);
    assert_eq!(report.tools_loaded, ["calc"]);
    let calc = tools.tool("calc");
    assert!(
        calc.source
            .as_ref()
            .is_some_and(|p| p.ends_with("tools/other-calc.wasm"))
    );
    assert!(tools.registry.problems().is_empty());
    assert_eq!(
        ok(&tools.call("calc", json!({ "expression": "1 + 1" })).await),
        json!({ "value": 2.0 })
    );
}

#[tokio::test]
async fn a_manifest_sets_the_description_and_the_limits() {
    let agents = AgentDir::new();
    agents.add_tool(
        "calc",
        TOOL_CALC,
        Some(
            r#"
description = "Arithmetic, held tight"
[limits]
fuel = 1000
memory = "16MiB"
timeout-ms = 2500
max-output-bytes = "4KiB"
"#,
        ),
    );
    agents.add_tool(
        "json-query",
        TOOL_JSON_QUERY,
        Some("[limits]\nmax-output-bytes = 40\n"),
    );
    agents.add_tool("bad-tool", TOOL_BAD, Some("[limits]\nmemory = \"64GiB\"\n"));
    let tools = Tools::open(&agents).await;
    let calc = tools.tool("calc");
    assert_eq!(calc.description, "Arithmetic, held tight");
    assert_eq!(calc.limits.fuel, Some(1000));
    assert_eq!(calc.limits.memory_bytes, 16 << 20);
    assert_eq!(calc.limits.timeout, Some(Duration::from_millis(2500)));
    assert_eq!(calc.limits.max_output_bytes, 4 << 10);
    // 1000 units of fuel do not even instantiate it.
    let outcome = tools.call("calc", json!({ "expression": "1 + 1" })).await;
    let (tag, message) = failed(&outcome);
    assert_eq!(tag, "ToolQuota", "{message}");
    assert!(message.contains("1000 units"), "{message}");
    // An output over 40 bytes is refused.
    let small = tools
        .call("json-query", json!({ "document": [1], "path": "[0]" }))
        .await;
    assert_eq!(ok(&small), json!({ "values": [1] }));
    let large = tools
        .call(
            "json-query",
            json!({ "document": ["x".repeat(100)], "path": "[0]" }),
        )
        .await;
    assert_eq!(failed(&large).0, "ToolQuota");
    // More memory than the engine grants: not loaded, with a reason.
    assert!(tools.registry.get_tool("bad-tool").is_none());
    let problems = tools.registry.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].error.contains("max_memory_bytes"),
        "{}",
        problems[0].error
    );
}

#[tokio::test]
async fn broken_components_and_manifests_are_reported() {
    let agents = AgentDir::new();
    agents
        .add_tool("echo", ECHO, None)
        .add_tool("calc", TOOL_CALC, Some("[limits]\nmax-events = 3\n"))
        .add_tool("json-query", TOOL_JSON_QUERY, Some("description = 5\n"));
    std::fs::write(agents.path().join("tools/garbage.wasm"), b"not wasm").expect("write");
    let tools = Tools::open(&agents).await;
    assert!(tools.registry.list_tools().is_empty());
    let problems = tools.registry.problems();
    let error = |file: &str| {
        problems
            .iter()
            .find(|p| p.path.ends_with(format!("tools/{file}")))
            .map(|p| p.error.clone())
            .unwrap_or_else(|| panic!("no problem for {file}: {problems:?}"))
    };
    assert!(
        error("echo.wasm").contains("not a toolbox"),
        "{}",
        error("echo.wasm")
    );
    assert!(
        error("calc.wasm").contains("max-events"),
        "{}",
        error("calc.wasm")
    );
    assert!(
        error("json-query.wasm").contains("manifest"),
        "{}",
        error("json-query.wasm")
    );
    assert!(error("garbage.wasm").contains("not a valid WebAssembly component"));
}

#[tokio::test]
async fn tools_are_hot_reloaded() {
    let agents = AgentDir::new();
    let tools = Tools::open(&agents).await;
    assert!(tools.registry.list_tools().is_empty());

    // Added while the host runs (the tools directory did not exist yet): the watcher finds it.
    let _watch = tools.registry.watch();
    agents.add_tool("math", TOOL_CALC, None);
    let deadline = Instant::now() + WAIT;
    while tools.registry.get_tool("calc").is_none() {
        assert!(Instant::now() < deadline, "calc was never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = tools.tool("calc");

    // Replaced by another component under the same file name: its tools replace the old ones,
    // and a spec taken before keeps working.
    agents.add_tool("math", TOOL_JSON_QUERY, None);
    let report = tools.registry.rescan().await;
    assert_eq!(report.tools_removed, ["calc"]);
    assert_eq!(report.tools_loaded, ["json-query"]);
    assert!(tools.registry.get_tool("calc").is_none());
    assert!(tools.registry.get_tool("json-query").is_some());
    assert_eq!(
        ok(&tools.call_spec(&before, r#"{"expression":"6*7"}"#).await),
        json!({ "value": 42.0 })
    );

    // A broken replacement keeps the working version.
    std::fs::write(agents.path().join("tools/.math.tmp"), b"broken").expect("write");
    std::fs::rename(
        agents.path().join("tools/.math.tmp"),
        agents.path().join("tools/math.wasm"),
    )
    .expect("rename");
    let report = tools.registry.rescan().await;
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(tools.registry.get_tool("json-query").is_some());

    // Removed: gone.
    std::fs::remove_file(agents.path().join("tools/math.wasm")).expect("remove");
    let report = tools.registry.rescan().await;
    assert_eq!(report.tools_removed, ["json-query"]);
    assert!(tools.registry.list_tools().is_empty());
    assert!(tools.registry.problems().is_empty());
}

#[tokio::test]
async fn fifty_concurrent_calls_all_answer() {
    let (_agents, tools) = example_tools().await;
    let calc = tools.tool("calc");
    let calls = (0..50).map(|i| {
        let calc = Arc::clone(&calc);
        let tools = &tools;
        async move {
            let input = json!({ "expression": format!("{i} * 3 + 1") }).to_string();
            (i, tools.call_spec(&calc, &input).await)
        }
    });
    let outcomes = tokio::time::timeout(WAIT, futures::future::join_all(calls))
        .await
        .expect("the calls finish");
    for (i, outcome) in outcomes {
        assert_eq!(ok(&outcome), json!({ "value": f64::from(i * 3 + 1) }));
    }
}

/// A Python toolbox whose `hoard` tool allocates until refused; CPython turns the refusal
/// into a `MemoryError`, which the SDK returns as the tool's own error.
const HOARD_PY: &str = r#"
from drover_sdk import Tool, export_tools


def hoard(_):
    held = []
    while True:
        held.append(bytearray(1 << 20))


ToolProvider = export_tools({"hoard": Tool(hoard, description="Allocates until refused")})
"#;

#[tokio::test]
async fn a_python_tool_past_its_memory_limit_fails_as_the_limit() {
    if !drover_test_support::other_languages("a Python tool's memory limit") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository");
    let src = tempfile::tempdir().expect("temp dir");
    let app = src.path().join("app.py");
    std::fs::write(&app, HOARD_PY).expect("app.py");
    let wasm = src.path().join("hoard.wasm");
    let built = std::process::Command::new(drover_test_support::PYTHON)
        .args(["-m", "drover_sdk.build"])
        .arg(&app)
        .arg("-o")
        .arg(&wasm)
        .args(["--world", "toolbox", "--wit"])
        .arg(root.join("wit"))
        .env("PYTHONPATH", root.join("guest-sdk/python"))
        .output()
        .expect("run the Python build");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let agents = AgentDir::new();
    agents.add_tool(
        "hoard-py",
        wasm.to_str().expect("a UTF-8 path"),
        Some("[limits]\nmemory = \"48MiB\"\nfuel = 20_000_000_000\ntimeout-ms = 60000\n"),
    );
    let tools = Tools::open(&agents).await;
    let outcome = tools.call("hoard", json!({})).await;
    let (tag, message) = failed(&outcome);
    // The limit ended the call, whatever the runtime made of it: a quota, not the tool's error.
    assert_eq!(tag, "ToolQuota", "{message}");
    assert!(
        message.contains("hoard exceeded its memory limit of 48 MiB"),
        "{message}"
    );
    assert!(
        outcome.peak_memory.is_some_and(|peak| peak <= 48 << 20),
        "{:?}",
        outcome.peak_memory
    );
}
