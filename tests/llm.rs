//! Model-backed agents end to end: real pools, real components (agents and tools from
//! `agents/`), the real model gateway, and a scripted model server speaking the OpenAI and
//! Anthropic wire protocols over real HTTP.

use std::sync::Arc;
use std::time::Duration;

use drover_host::api::metrics::Metrics;
use drover_host::api::{JobView, RunApi};
use drover_host::config::HostConfig;
use drover_host::model::{ModelGateway, ModelsConfig};
use drover_host::outbound::Outbound;
use drover_host::pool::{PoolConfig, PoolDeps, PoolHandle, WorkerPool};
use drover_host::queue::{JobStatus, NewJob};
use drover_host::registry::{DirRegistry, Registry, ToolRegistry};
use drover_host::sandbox::caps::Capabilities;
use drover_host::sandbox::wasm::{EngineConfig, WasmRuntime, WasmSandbox};
use drover_host::sandbox::{Sandbox, SandboxFor};
use drover_host::secrets::{Secrets, placeholder};
use drover_host::store::{Run, RunStatus, Usage};
use drover_test_support::model_server::{ModelServer, Reply};
use drover_test_support::sample_api::SampleApi;
use drover_test_support::{
    AgentDir, MATH, TOOL_BAD, TOOL_CALC, TOOL_HTTP_GET, TOOL_TEXT_PY, TestDb, WAIT, other_languages,
};
use serde_json::{Value, json};

/// The key the configured aliases send; it must never reach a guest, an event or the store.
const KEY: &str = "sk-test-9f8e7d6c5b4a39281706";

/// The declarative echo agent as shipped in `agents/`.
const ECHO_LLM: &str = include_str!("../agents/echo-llm.toml");

/// A host with a model gateway on `server` (alias `cheap`, OpenAI protocol, and alias `claude`,
/// Anthropic protocol) and the agents and tools in `agents`.
struct Host {
    _db: TestDb,
    _agents: AgentDir,
    caps: Arc<Capabilities>,
    api: RunApi,
    pool: Option<PoolHandle>,
}

fn models_config(base_url: &str) -> ModelsConfig {
    let text = format!(
        r#"
        [cheap]
        provider = "openai"
        base-url = "{base_url}"
        model = "qwen2.5:0.5b"
        api-key-env = "DROVER_TEST_MODEL_KEY"
        input-usd-per-mtok = 0.15
        output-usd-per-mtok = 0.60
        timeout-ms = 5000
        max-retries = 1

        [claude]
        provider = "anthropic"
        base-url = "{base_url}"
        model = "claude-haiku"
        api-key-env = "DROVER_TEST_MODEL_KEY"
        input-usd-per-mtok = 1.0
        output-usd-per-mtok = 5.0
        "#
    );
    toml::from_str(&text).expect("models config")
}

impl Host {
    async fn start(server: &ModelServer, agents: AgentDir, concurrency: usize) -> Self {
        Self::start_with(
            server,
            agents,
            concurrency,
            Outbound::default(),
            Secrets::empty(),
        )
        .await
    }

    /// [`Host::start`], with agents' and tools' HTTP requests sent by `outbound`.
    async fn start_with(
        server: &ModelServer,
        agents: AgentDir,
        concurrency: usize,
        outbound: Outbound,
        secrets: Secrets,
    ) -> Self {
        let db = TestDb::new().await;
        let runtime = WasmRuntime::new(&EngineConfig::default(), db.dir.path().join("scratch"))
            .expect("runtime");
        let registry = DirRegistry::open(agents.path(), Arc::clone(&runtime))
            .await
            .expect("registry");
        let gateway = ModelGateway::with_keys(&models_config(&server.base_url()), |_| {
            Some(KEY.to_string())
        })
        .expect("gateway");
        let tools: Arc<dyn ToolRegistry> = registry.clone();
        let caps = Capabilities::with_outbound(
            Arc::new(gateway),
            Some((tools, Arc::clone(&runtime))),
            outbound,
            secrets,
        );
        let wasm: Arc<dyn Sandbox> =
            Arc::new(WasmSandbox::new(Arc::clone(&runtime)).with_capabilities(Arc::clone(&caps)));
        let sandbox_for: SandboxFor = Arc::new(move |_job, _spec| Arc::clone(&wasm));
        let registry_dyn: Arc<dyn Registry> = registry.clone();
        let api = RunApi::new(
            db.queue.clone(),
            db.store.clone(),
            Arc::clone(&registry_dyn),
        );
        let pool = WorkerPool::new(
            PoolDeps {
                queue: db.queue.clone(),
                store: db.store.clone(),
                registry: registry_dyn,
                sandbox_for,
            },
            PoolConfig {
                concurrency,
                signal_poll_interval: Duration::from_millis(50),
                ..PoolConfig::default()
            },
        )
        .start();
        Self {
            _db: db,
            _agents: agents,
            caps,
            api,
            pool: Some(pool),
        }
    }

    async fn run(&self, agent: &str, input: Value) -> JobView {
        let job = self
            .api
            .enqueue(NewJob::new(agent, &input))
            .await
            .expect("enqueue")
            .job;
        self.api.wait_for(&job.id, WAIT).await.expect("wait")
    }

    async fn events(&self, run: &Run) -> Vec<(String, Value)> {
        self.pool.as_ref().expect("pool").flush().await;
        self.api
            .events(&run.id, 0, 10_000)
            .await
            .expect("events")
            .into_iter()
            .map(|e| (e.kind, serde_json::from_str(e.payload.get()).expect("json")))
            .collect()
    }

    /// `/metrics` as the host renders it, with its tool-call counters.
    async fn metrics(&self) -> String {
        let metrics = Metrics::new(None);
        metrics.register_tools(Arc::clone(&self.caps));
        metrics.render(&self.api).await.expect("metrics")
    }

    async fn shutdown(mut self) {
        if let Some(pool) = self.pool.take() {
            pool.shutdown().await;
        }
    }
}

/// An agent directory with `echo-llm` and whatever `extra` adds.
fn agents_with(extra: impl FnOnce(&AgentDir)) -> AgentDir {
    let agents = AgentDir::new();
    std::fs::write(agents.path().join("echo-llm.toml"), ECHO_LLM).expect("echo-llm");
    extra(&agents);
    agents
}

/// Installs tool component `component` as `agents/tools/<name>.wasm`.
fn add_tool(agents: &AgentDir, name: &str, component: &str) {
    let dir = agents.path().join("tools");
    std::fs::create_dir_all(&dir).expect("tools dir");
    std::fs::copy(component, dir.join(format!("{name}.wasm"))).expect("copy tool");
}

/// Writes a declarative agent.
fn declare(agents: &AgentDir, id: &str, manifest: &str) {
    std::fs::write(agents.path().join(format!("{id}.toml")), manifest).expect("manifest");
}

fn output(run: &Run) -> Value {
    serde_json::from_str(run.output.as_ref().expect("output").get()).expect("json")
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

fn first<'a>(events: &'a [(String, Value)], kind: &str) -> &'a Value {
    &events
        .iter()
        .find(|(k, _)| k == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {:?}", kinds(events)))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_declarative_echo_llm_answers_with_what_it_received() {
    let server = ModelServer::start(vec![Reply::text(r#"{"received": 42, "ok": true}"#)]).await;
    let host = Host::start(&server, agents_with(|_| {}), 4).await;

    let view = host.run("echo-llm", json!({ "n": 42 })).await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let run = view.run.expect("run");
    assert_eq!(output(&run), json!({ "received": 42, "ok": true }));
    let usage = run.usage.expect("usage");
    let cost = (10.0 * 0.15 + 5.0 * 0.60) / 1e6;
    assert!((usage.cost_usd - cost).abs() < 1e-12, "{usage:?}");
    assert_eq!(
        usage,
        Usage {
            turns: 1,
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: usage.cost_usd,
            tool_calls: 0,
        }
    );

    // What the model saw: the seed's system prompt, then the job's input.
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    assert_eq!(body["model"], "qwen2.5:0.5b");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(
        body["messages"][0]["content"],
        "Reply with {received, ok: true} as JSON."
    );
    assert_eq!(body["messages"][1]["role"], "user");
    assert_eq!(
        serde_json::from_str::<Value>(body["messages"][1]["content"].as_str().expect("text"))
            .expect("the input, as JSON"),
        json!({ "n": 42 })
    );
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );

    let events = host.events(&run).await;
    let request = first(&events, "model_request");
    assert_eq!(request["alias"], "cheap");
    assert_eq!(request["turn"], 1);
    assert_eq!(request["messages"].as_array().map(Vec::len), Some(2));
    let response = first(&events, "model_response");
    assert_eq!(response["model"], "scripted-model");
    assert_eq!(response["usage"]["inputTokens"], 10);
    assert_eq!(response["finishReason"], "stop");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_agent_calls_its_tool_through_the_sdk_loop() {
    let server = ModelServer::start(vec![
        Reply::tool_calls(vec![(
            "call_1",
            "calc",
            json!({ "expression": "6 * (3 + 4)" }),
        )]),
        Reply::text(r#"{"answer": 42}"#),
    ])
    .await;
    let agents = agents_with(|agents| {
        agents.add("math", MATH, Some(include_str!("../agents/math.toml")));
        add_tool(agents, "calc", TOOL_CALC);
    });
    let host = Host::start(&server, agents, 4).await;

    let view = host
        .run("math", json!({ "question": "What is 6 times 3 plus 4?" }))
        .await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let run = view.run.expect("run");
    assert_eq!(output(&run), json!({ "answer": 42.0 }));
    let usage = run.usage.expect("usage");
    assert_eq!((usage.turns, usage.tool_calls), (2, 1));

    // The model was offered calc with its schema, and got calc's real answer back.
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let tools = &requests[0].body["tools"];
    assert_eq!(tools[0]["function"]["name"], "calc");
    assert_eq!(
        tools[0]["function"]["parameters"]["required"],
        json!(["expression"])
    );
    let messages = requests[1].body["messages"].as_array().expect("messages");
    let answer = messages.last().expect("a tool message");
    assert_eq!(answer["role"], "tool");
    assert_eq!(answer["tool_call_id"], "call_1");
    assert_eq!(
        serde_json::from_str::<Value>(answer["content"].as_str().expect("text")).expect("json"),
        json!({ "value": 42.0 })
    );

    let events = host.events(&run).await;
    let call = first(&events, "tool_call");
    assert_eq!(call["name"], "calc");
    let result = first(&events, "tool_result");
    assert_eq!(result["ok"], true);
    assert!(result["fuel"].as_u64().is_some_and(|f| f > 0), "{result}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_written_in_python_answers_the_model() {
    if !other_languages("a_tool_written_in_python_answers_the_model") {
        return;
    }
    let server = ModelServer::start(vec![
        Reply::tool_calls(vec![
            ("call_1", "words", json!({ "text": "one two three" })),
            ("call_2", "upper", json!({ "text": "" })),
        ]),
        Reply::text(r#"{"words": 3}"#),
    ])
    .await;
    let agents = agents_with(|agents| {
        add_tool(agents, "text", TOOL_TEXT_PY);
        declare(
            agents,
            "counter",
            "system-prompt = \"Count the words, then answer with {\\\"words\\\": <number>}.\"\n\
             model = \"cheap\"\ntools = [\"words\", \"upper\"]\n",
        );
    });
    let host = Host::start(&server, agents, 2).await;

    let view = host
        .run("counter", json!({ "text": "one two three" }))
        .await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    assert_eq!(output(&view.run.expect("run")), json!({ "words": 3 }));

    // The model was offered both tools with the schemas the Python toolbox describes, and got
    // the answer of one and the tagged failure of the other.
    let requests = server.requests();
    let offered: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(offered, ["words", "upper"]);
    assert_eq!(
        requests[0].body["tools"][0]["function"]["parameters"]["required"],
        json!(["text"])
    );
    let messages = requests[1].body["messages"].as_array().expect("messages");
    let answer = |id: &str| {
        messages
            .iter()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == id)
            .and_then(|m| m["content"].as_str())
            .unwrap_or_else(|| panic!("no answer to {id}: {messages:?}"))
            .to_string()
    };
    assert_eq!(
        serde_json::from_str::<Value>(&answer("call_1")).expect("json"),
        json!({ "words": 3, "characters": 13 })
    );
    assert!(
        answer("call_2").contains("EmptyText"),
        "{}",
        answer("call_2")
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tools_requests_are_on_the_calling_runs_timeline() {
    // The tool's target: an API that answers a GET without its token with 401.
    let api = SampleApi::start(&[]).await;
    let origin = api.url();
    let server = ModelServer::start(vec![
        Reply::tool_calls(vec![(
            "call_1",
            "http-get",
            json!({ "url": format!("{origin}/work?key=hidden") }),
        )]),
        Reply::text(r#"{"status": 401}"#),
    ])
    .await;
    let agents = agents_with(|agents| {
        agents.add_tool(
            "http-get",
            TOOL_HTTP_GET,
            Some(&format!("allowed-outbound-hosts = [\"{origin}\"]\n")),
        );
        declare(
            agents,
            "fetcher",
            "system-prompt = \"Fetch it, then answer with {\\\"status\\\": <number>}.\"\n\
             model = \"cheap\"\ntools = [\"http-get\"]\n",
        );
    });
    let config = HostConfig::parse(&format!("[outbound]\nallowed-hosts = [\"{origin}\"]\n"))
        .expect("config");
    let outbound = Outbound::new(&config.outbound).expect("outbound");
    let host = Host::start_with(&server, agents, 2, outbound, Secrets::empty()).await;

    let view = host.run("fetcher", json!({})).await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let run = view.run.expect("run");
    let events = host.events(&run).await;
    let request = first(&events, "http_request");
    assert_eq!(request["tool"], "http-get", "{request}");
    assert_eq!(request["method"], "GET");
    assert_eq!(
        request["url"],
        format!("{origin}/work"),
        "no query: {request}"
    );
    assert_eq!(request["status"], 401, "{request}");
    assert_eq!(first(&events, "tool_result")["ok"], true);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_carries_only_the_secrets_both_it_and_its_caller_may_use() {
    const TOKEN: &str = "tok-tool-5d2a90";
    let api = SampleApi::start(&[TOKEN]).await;
    let origin = api.url();
    let call = || {
        Reply::tool_calls(vec![(
            "call_1",
            "http-get",
            json!({
                "url": format!("{origin}/work"),
                "headers": {
                    "authorization": format!("Bearer {}", placeholder("api")),
                    "x-tenant-id": "t1",
                },
            }),
        )])
    };
    let server = ModelServer::start(vec![
        call(),
        Reply::text(r#"{"answer": 1}"#),
        call(),
        Reply::text(r#"{"answer": 2}"#),
    ])
    .await;
    let math = |secrets: &str| {
        format!(
            "models = [\"cheap\"]\ntools = [\"http-get\"]\nsecrets = {secrets}\n\
             [env]\nMODEL = \"cheap\"\n"
        )
    };
    let agents = agents_with(|agents| {
        agents.add_tool(
            "http-get",
            TOOL_HTTP_GET,
            Some(&format!(
                "allowed-outbound-hosts = [\"{origin}\"]\nsecrets = [\"api\"]\n"
            )),
        );
        agents.add("granted", MATH, Some(&math("[\"api\"]")));
        agents.add("ungranted", MATH, Some(&math("[]")));
    });
    let config = HostConfig::parse(&format!(
        "[outbound]\nallowed-hosts = [\"{origin}\"]\n\
         [secrets.api]\nfrom-env = \"API_TOKEN\"\nhosts = [\"{origin}\"]\n"
    ))
    .expect("config");
    let outbound = Outbound::new(&config.outbound).expect("outbound");
    let secrets = Secrets::with_env(&config.secrets, reqwest::Client::new(), |name| {
        (name == "API_TOKEN").then(|| TOKEN.into())
    })
    .expect("secrets");
    let host = Host::start_with(&server, agents, 2, outbound, secrets).await;

    // Granted to both: the host fills the token in; the API sees it (and, lacking an item,
    // answers 400 rather than 401).
    let view = host.run("granted", json!({ "question": "?" })).await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let events = host.events(&view.run.expect("run")).await;
    assert_eq!(first(&events, "http_request")["status"], 400);
    let received = api.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    // The tool lists the secret, but its caller may not use it: the request is refused.
    let view = host.run("ungranted", json!({ "question": "?" })).await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let run = view.run.expect("run");
    let events = host.events(&run).await;
    assert!(first(&events, "http_request")["refused"].is_string());
    assert_eq!(first(&events, "tool_result")["ok"], false);
    assert_eq!(api.received().len(), 1, "nothing more reached the API");
    let text = format!("{events:?}");
    assert!(!text.contains(TOKEN), "{text}");
    host.shutdown().await;
}

/// A declarative agent with the calc and bad-tool tools.
const TOOLED: &str = r#"
system-prompt = "Use the tools, then answer with {\"sum\": <number>}."
model = "cheap"
tools = ["calc", "bad-tool"]

[output-schema]
type = "object"
required = ["sum"]
properties = { sum = { type = "number" } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tool_calls_run_and_a_trapping_tool_is_only_a_tool_error() {
    let server = ModelServer::start(vec![
        Reply::tool_calls(vec![
            ("a", "calc", json!({ "expression": "1 + 2" })),
            ("b", "calc", json!({ "expression": "3 * 4" })),
            ("c", "bad-tool", json!({ "mode": "trap" })),
        ]),
        Reply::text(r#"{"sum": 15}"#),
    ])
    .await;
    let agents = agents_with(|agents| {
        declare(agents, "tooled", TOOLED);
        add_tool(agents, "calc", TOOL_CALC);
        add_tool(agents, "bad-tool", TOOL_BAD);
    });
    let host = Host::start(&server, agents, 4).await;

    let view = host.run("tooled", json!({ "numbers": [1, 2, 3, 4] })).await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let run = view.run.expect("run");
    assert_eq!(output(&run), json!({ "sum": 15 }));
    assert_eq!(run.usage.expect("usage").tool_calls, 3);

    let messages = server.requests()[1].body["messages"].clone();
    let tool_messages: Vec<&Value> = messages
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), 3, "{messages}");
    let by_id = |id: &str| {
        tool_messages
            .iter()
            .find(|m| m["tool_call_id"] == id)
            .and_then(|m| m["content"].as_str())
            .unwrap_or_else(|| panic!("no answer to {id}"))
            .to_string()
    };
    assert!(by_id("a").contains('3'), "{}", by_id("a"));
    assert!(by_id("b").contains("12"), "{}", by_id("b"));
    assert!(by_id("c").contains("ToolTrapped"), "{}", by_id("c"));

    let events = host.events(&run).await;
    let failed: Vec<&Value> = events
        .iter()
        .filter(|(k, p)| k == "tool_result" && p["ok"] == false)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error"]["tag"], "ToolTrapped");

    let metrics = host.metrics().await;
    for line in [
        r#"drover_tool_calls_total{agent="tooled",tool="calc"} 2"#,
        r#"drover_tool_calls_total{agent="tooled",tool="bad-tool"} 1"#,
        r#"drover_tool_failures_total{agent="tooled",tool="bad-tool"} 1"#,
        r#"drover_tool_failures_total{agent="tooled",tool="calc"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_end_the_run_with_quota() {
    let calls = |n: usize| {
        (0..n)
            .map(|i| {
                Reply::tool_calls(vec![(
                    "x",
                    "calc",
                    json!({ "expression": format!("{i} + 1") }),
                )])
            })
            .collect::<Vec<_>>()
    };
    let mut script = calls(2);
    script.push(Reply::text(r#"{"sum": 1}"#).usage(2_000_000, 1_000_000));
    script.extend(calls(3));
    script.push(Reply::text(r#"{"sum": 2}"#));
    let server = ModelServer::start(script).await;
    let agents = agents_with(|agents| {
        add_tool(agents, "calc", TOOL_CALC);
        declare(
            agents,
            "two-turns",
            &format!("{TOOLED}\n[quota]\nmax-turns = 2\n").replace("\"bad-tool\"", ""),
        );
        declare(
            agents,
            "cheapskate",
            &format!("{TOOLED}\n[quota]\nmax-cost-usd = 0.10\n").replace("\"bad-tool\"", ""),
        );
        declare(
            agents,
            "few-tokens",
            &format!("{TOOLED}\n[quota]\nmax-tokens = 20\n").replace("\"bad-tool\"", ""),
        );
        declare(
            agents,
            "one-tool-call",
            &format!("{TOOLED}\n[quota]\nmax-tool-calls = 1\n").replace("\"bad-tool\"", ""),
        );
    });
    let host = Host::start(&server, agents, 1).await;

    // Two tool-calling turns, then a third model call is refused.
    let view = host.run("two-turns", json!({})).await;
    let run = view.run.expect("run");
    assert_eq!(run.status, RunStatus::Quota, "{run:?}");
    assert_eq!(run.error.as_ref().expect("error").tag, "MaxTurns");
    assert_eq!(run.usage.expect("usage").turns, 2);
    assert_eq!(
        view.job.status,
        JobStatus::Failed,
        "a budget is not retried"
    );
    assert_eq!(server.served(), 2, "the third call never reached the model");

    // One answer that costs more than the budget ends the run there.
    let view = host.run("cheapskate", json!({})).await;
    let run = view.run.expect("run");
    assert_eq!(run.status, RunStatus::Quota, "{run:?}");
    assert_eq!(run.error.as_ref().expect("error").tag, "MaxCost");
    assert!(run.usage.expect("usage").cost_usd > 0.10);

    // The second tool call is past max-tool-calls.
    let view = host.run("one-tool-call", json!({})).await;
    let run = view.run.expect("run");
    assert_eq!(run.status, RunStatus::Quota, "{run:?}");
    assert_eq!(run.error.as_ref().expect("error").tag, "MaxToolCalls");
    assert_eq!(run.usage.expect("usage").tool_calls, 1);

    // 15 tokens for the first call; the second may write only the 5 left, and its 15 more end
    // the run.
    let view = host.run("few-tokens", json!({})).await;
    let run = view.run.expect("run");
    assert_eq!(run.status, RunStatus::Quota, "{run:?}");
    assert_eq!(run.error.as_ref().expect("error").tag, "MaxTokens");
    let usage = run.usage.expect("usage");
    assert_eq!(usage.input_tokens + usage.output_tokens, 30);
    let last = server.requests().pop().expect("requests");
    assert_eq!(
        last.body["max_tokens"], 5,
        "the request was held to the budget left"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_failures_fail_the_run_with_their_tag_and_an_event() {
    let server = ModelServer::start(vec![
        Reply::raw("this is not JSON"),
        Reply::status(500),
        Reply::status(500),
    ])
    .await;
    let host = Host::start(&server, agents_with(|_| {}), 2).await;

    let bad = NewJob::new("echo-llm", &json!({ "n": 1 })).max_attempts(1);
    let job = host.api.enqueue(bad).await.expect("enqueue").job;
    let view = host.api.wait_for(&job.id, WAIT).await.expect("wait");
    let run = view.run.expect("run");
    assert_eq!(run.error.as_ref().expect("error").tag, "ModelBadResponse");
    let events = host.events(&run).await;
    assert_eq!(first(&events, "model_error")["tag"], "ModelBadResponse");

    let down = NewJob::new("echo-llm", &json!({ "n": 1 })).max_attempts(1);
    let job = host.api.enqueue(down).await.expect("enqueue").job;
    let view = host.api.wait_for(&job.id, WAIT).await.expect("wait");
    let run = view.run.expect("run");
    assert_eq!(run.error.as_ref().expect("error").tag, "ModelUnavailable");
    assert_eq!(server.served(), 3, "one retry of the 500");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_use_an_alias_its_manifest_does_not_list() {
    let server = ModelServer::start(vec![]).await;
    let agents = agents_with(|agents| {
        agents.add(
            "math",
            MATH,
            Some(
                &include_str!("../agents/math.toml")
                    .replace("MODEL = \"cheap\"", "MODEL = \"claude\""),
            ),
        );
        add_tool(agents, "calc", TOOL_CALC);
    });
    let host = Host::start(&server, agents, 2).await;
    let view = host.run("math", json!({ "question": "1 + 1?" })).await;
    let run = view.run.expect("run");
    assert_eq!(run.error.as_ref().expect("error").tag, "ModelNotAllowed");
    assert_eq!(server.served(), 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_alias_round_trips_a_tool_call() {
    let server = ModelServer::start(vec![
        Reply::tool_calls(vec![("toolu_1", "calc", json!({ "expression": "2 ^ 10" }))]),
        Reply::text(r#"{"sum": 1024}"#),
    ])
    .await;
    let agents = agents_with(|agents| {
        add_tool(agents, "calc", TOOL_CALC);
        declare(
            agents,
            "claude-agent",
            &TOOLED
                .replace("model = \"cheap\"", "model = \"claude\"")
                .replace(", \"bad-tool\"", ""),
        );
    });
    let host = Host::start(&server, agents, 2).await;
    let view = host.run("claude-agent", json!({})).await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let run = view.run.expect("run");
    assert_eq!(output(&run), json!({ "sum": 1024 }));

    let requests = server.requests();
    assert!(requests.iter().all(|r| r.path == "/v1/messages"));
    assert_eq!(requests[0].header("x-api-key"), Some(KEY));
    assert_eq!(
        requests[0].body["system"],
        "Use the tools, then answer with {\"sum\": <number>}."
    );
    let last = requests[1].body["messages"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .expect("messages");
    assert_eq!(last["role"], "user");
    assert_eq!(last["content"][0]["type"], "tool_result");
    assert_eq!(last["content"][0]["tool_use_id"], "toolu_1");
    let usage = run.usage.expect("usage");
    let expected = 2.0 * (10.0 * 1.0 + 5.0 * 5.0) / 1e6;
    assert!((usage.cost_usd - expected).abs() < 1e-12, "{usage:?}");
    host.shutdown().await;
}

/// Runs waiting on their model hold no CPU slot: with one slot, twenty runs whose model takes
/// a second each are all in flight at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_waiting_on_a_model_do_not_hold_cpu_slots() {
    let server = ModelServer::always(
        Reply::text(r#"{"received": 1, "ok": true}"#).delay(Duration::from_secs(1)),
    )
    .await;
    let host = Host::start(&server, agents_with(|_| {}), 1).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let job = host
            .api
            .enqueue(NewJob::new("echo-llm", &json!({ "n": n })))
            .await
            .expect("enqueue")
            .job;
        ids.push(job.id);
    }
    for id in &ids {
        let view = host.api.wait_for(id, WAIT).await.expect("wait");
        assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    }
    assert!(
        server.max_in_flight() > 1,
        "waiting runs gave their one slot back: {} at once",
        server.max_in_flight()
    );
    host.shutdown().await;
}

/// The API key is never where a guest, an event, a log line, an API response or the store could
/// show it: through the real binary, with a provider that even repeats the key in its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_nowhere_a_guest_or_the_store_can_see() {
    let server = ModelServer::start(vec![
        Reply::text(r#"{"received": 7, "ok": true}"#),
        Reply::json(json!({
            "error": { "message": format!("Incorrect API key provided: {KEY}"), "type": "invalid_request_error" }
        }))
        .with_status(401),
    ])
    .await;
    let agents = agents_with(|agents| {
        agents.add(
            "chaos",
            drover_test_support::CHAOS,
            Some("models = [\"cheap\"]\n"),
        );
    });
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("drover.toml");
    let models = format!(
        "[models.cheap]\nprovider = \"openai\"\nbase-url = \"{}\"\nmodel = \"m\"\napi-key-env = \"DROVER_TEST_MODEL_KEY\"\nmax-retries = 0\n",
        server.base_url()
    );
    std::fs::write(&config, models).expect("config");
    let args = drover_test_support::host_args(agents.path(), data.path(), "var", Some(&config));
    let host = drover_test_support::HostProcess::start(
        env!("CARGO_BIN_EXE_drover-host"),
        &args,
        &[("DROVER_TEST_MODEL_KEY", KEY), ("DROVER_TRUSTED_ENV", "")],
    );
    let client = reqwest::Client::new();
    let post = |agent: &str, input: Value| {
        let client = client.clone();
        let url = format!("{}/v1/jobs", host.url);
        let body = json!({ "agentId": agent, "input": input, "maxAttempts": 1 });
        async move {
            let job: Value = client
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("enqueue")
                .json()
                .await
                .expect("json");
            job["job"]["id"].as_str().expect("id").to_string()
        }
    };
    let wait = |id: String| {
        let client = client.clone();
        let url = format!("{}/v1/jobs/{id}/wait?timeoutMs=30000", host.url);
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("wait")
                .text()
                .await
                .expect("text")
        }
    };

    let mut seen = Vec::new();
    let ok = post("echo-llm", json!({ "n": 7 })).await;
    let answer = wait(ok).await;
    assert!(answer.contains("\"done\""), "{answer}");
    seen.push(answer);
    let refused = post("echo-llm", json!({ "n": 8 })).await;
    let answer = wait(refused).await;
    assert!(
        answer.contains("ModelUnavailable") || answer.contains("ModelBadResponse"),
        "{answer}"
    );
    seen.push(answer);
    let env = post("chaos", json!({ "mode": "env" })).await;
    seen.push(wait(env).await);
    // Every run and every event, as the API serves them.
    let runs: Value = client
        .get(format!("{}/v1/runs?limit=100", host.url))
        .send()
        .await
        .expect("runs")
        .json()
        .await
        .expect("json");
    seen.push(runs.to_string());
    for run in runs["runs"].as_array().expect("a list of runs") {
        let id = run["id"].as_str().expect("id");
        let events = client
            .get(format!("{}/v1/runs/{id}/events", host.url))
            .send()
            .await
            .expect("events")
            .text()
            .await
            .expect("text");
        assert!(
            events.contains("model_") || events.contains("run_start"),
            "{events}"
        );
        seen.push(events);
    }
    let metrics = client
        .get(format!("{}/metrics", host.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    seen.push(metrics);
    seen.push(host.log_text());
    drop(host);
    for entry in std::fs::read_dir(data.path()).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("read");
            seen.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    // The model server did get it: the key works, it just never comes back.
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {KEY}")))
    );
    for text in &seen {
        assert!(!text.contains(KEY), "the key leaked into: {text}");
        assert!(
            !text.contains(&KEY[8..]),
            "part of the key leaked into: {text}"
        );
    }
}
