//! The run viewer in a real headless Chromium against a real `drover-host run`: the runs list,
//! a run's detail and timeline, live agents (stopping one from the page), agent types (enqueueing
//! from the page) and the queue, with a screenshot of each view; and a model-backed run's
//! conversation, hostile content in it included; a long-lived agent's chat; a tree of runs.
//!
//! Needs Chromium (`/usr/bin/chromium`, or `CHROME=/path`). Without it the test says so and
//! passes, except under CI (`CI` set), where `.ci/run` installs it and a missing browser fails.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_test_support::{
    AgentDir, CHAIN_WORKER, CHAOS, CHAT, ECHO, HostProcess, QUEUE_WORKER, WAIT,
};
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");
const TOKEN: &str = "viewer-test-token";

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.exists().then_some(path)
}

#[test]
fn the_viewer_shows_runs_agents_and_the_queue_and_acts_on_them() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is required under CI (install Debian's `chromium` package)"
        );
        eprintln!("skipping the viewer test: no Chromium at /usr/bin/chromium (set CHROME)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    // A host with real data: a finished echo run, a failed run, and a live queue worker.
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add(
            "queue-worker",
            QUEUE_WORKER,
            Some("lifecycle = \"long-lived\"\n[env]\nPOLL_INTERVAL_MS = \"200\"\n"),
        )
        .add(
            "chaos",
            CHAOS,
            Some("models = [\"cheap\"]\ntools = [\"calc\"]\n[quota]\nmax-turns = 3\n"),
        );
    let data = tempfile::tempdir().expect("temp dir");
    let args: Vec<String> = [
        "--agents",
        &agents.path().display().to_string(),
        "--data-dir",
        &data.path().join("var").display().to_string(),
        "--cache-dir",
        &drover_test_support::cache_dir().display().to_string(),
        "--queue-url",
        &format!("file:{}", data.path().join("queue.db").display()),
        "--storage-url",
        &format!("file:{}", data.path().join("runs.db").display()),
    ]
    .map(String::from)
    .to_vec();
    let host = HostProcess::start(EXE, &args, &[("DROVER_API_TOKEN", TOKEN)]);
    let url = host.url.clone();
    let api = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let url = format!("{url}{path}");
        runtime.block_on(async move {
            let mut request = reqwest::Client::new()
                .request(method, url)
                .bearer_auth(TOKEN);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("request");
            response.json::<Value>().await.expect("json")
        })
    };
    let echo = api(
        reqwest::Method::POST,
        "/v1/jobs",
        Some(json!({ "agentId": "echo", "input": { "n": 42 } })),
    );
    let echo_id = echo["job"]["id"].as_str().expect("id").to_string();
    let done = api(
        reqwest::Method::GET,
        &format!("/v1/jobs/{echo_id}/wait?timeoutMs=30000"),
        None,
    );
    assert_eq!(done["job"]["status"], "done");
    let echo_run = done["run"]["id"].as_str().expect("run").to_string();
    api(
        reqwest::Method::POST,
        "/v1/jobs",
        Some(json!({ "agentId": "chaos", "input": { "mode": "panic" } })),
    );
    let spawned = api(
        reqwest::Method::POST,
        "/spawn",
        Some(json!({ "agentType": "queue-worker", "tenantId": "t1" })),
    );
    let worker = spawned["workloadName"].as_str().expect("name").to_string();

    // Every file of the page comes with a strict policy: nothing inline, nothing from elsewhere,
    // no framing, no sniffing, no referrer.
    for path in ["/", "/assets/app.js", "/assets/style.css"] {
        let headers = runtime.block_on(async {
            reqwest::get(format!("{url}{path}"))
                .await
                .expect("asset")
                .headers()
                .clone()
        });
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let policy = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
    }
    let page = runtime.block_on(async {
        reqwest::get(format!("{url}/"))
            .await
            .expect("page")
            .text()
            .await
            .expect("text")
    });
    assert!(
        !page.contains("<script>") && !page.contains(" style=") && !page.contains(" onclick="),
        "no inline script, style or handler: {page}"
    );

    let profile = tempfile::tempdir().expect("profile");
    let browser = launch(chrome, &profile);
    let tab = browser.new_tab().expect("tab");
    tab.set_default_timeout(WAIT);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viewer");
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    // Without the token the page asks for it; with `?token=` it remembers it.
    tab.navigate_to(&format!("{url}/#/runs")).expect("open");
    tab.wait_for_element("dialog[open]")
        .expect("the page asks for the token");
    tab.navigate_to(&format!("{url}/?token={TOKEN}#/runs"))
        .expect("open with token");
    // The token leaves the address at once, and is kept for this tab only.
    wait_for_js(
        &tab,
        &format!(
            "location.search === '' && location.hash === '#/runs' \
             && sessionStorage.getItem('drover-token') === '{TOKEN}' \
             && localStorage.getItem('drover-token') === null"
        ),
    );

    // Runs list: the finished echo run is there, newest first, with its status.
    wait_for_js(
        &tab,
        &format!(
            "!!document.querySelector('tr[data-run=\"{echo_run}\"] [data-status=\"success\"]')"
        ),
    );
    wait_for_js(&tab, "!!document.querySelector('[data-status=\"error\"]')");
    shot(&tab, &shots, "runs");
    // Filtering by status keeps only matching runs.
    tab.navigate_to(&format!("{url}/#/runs?status=error"))
        .expect("filter");
    wait_for_js(
        &tab,
        "document.querySelector('[data-testid=runs-table] tbody').innerText.includes('chaos') \
         && !document.querySelector('[data-testid=runs-table] tbody').innerText.includes('echo')",
    );

    // Run detail: status, output and the event timeline.
    tab.navigate_to(&format!("{url}/#/runs/{echo_run}"))
        .expect("run detail");
    wait_for_js(
        &tab,
        "[...document.querySelectorAll('[data-testid=event]')].map(e => e.dataset.kind).join() === 'run_start,run_end'",
    );
    let output = tab
        .wait_for_element("[data-testid=run-output]")
        .expect("output")
        .get_inner_text()
        .expect("text");
    assert!(output.contains("\"received\": 42"), "{output}");
    // Payloads expand.
    tab.find_element("[data-testid=event] summary")
        .expect("summary")
        .click()
        .expect("expand");
    wait_for_js(
        &tab,
        "!!document.querySelector('[data-testid=event] details[open]')",
    );
    shot(&tab, &shots, "run");

    // Live agents: the queue worker is running and heartbeating; stop it from the page.
    tab.navigate_to(&format!("{url}/#/agents")).expect("agents");
    wait_for_js(
        &tab,
        &format!(
            "!!document.querySelector('tr[data-agent=\"{worker}\"] [data-status=\"Running\"]')"
        ),
    );
    // Let a few heartbeats land so that its run page has a timeline worth looking at.
    std::thread::sleep(Duration::from_millis(800));
    tab.navigate_to(&format!("{url}/#/agents")).expect("agents");
    wait_for_js(
        &tab,
        &format!(
            "!!document.querySelector('tr[data-agent=\"{worker}\"] [data-testid=stop-agent]')"
        ),
    );
    shot(&tab, &shots, "agents");
    tab.find_element(&format!(
        "tr[data-agent=\"{worker}\"] [data-testid=stop-agent]"
    ))
    .expect("stop button")
    .click()
    .expect("click stop");
    wait_for_js(
        &tab,
        &format!(
            "!!document.querySelector('tr[data-agent=\"{worker}\"] [data-status=\"Completed\"]')"
        ),
    );
    let stopped = api(reqwest::Method::GET, &format!("/v1/agents/{worker}"), None);
    assert_eq!(stopped["agent"]["run"]["status"], "success", "{stopped}");
    let worker_run = stopped["agent"]["run"]["id"]
        .as_str()
        .expect("run")
        .to_string();
    tab.navigate_to(&format!("{url}/#/runs/{worker_run}"))
        .expect("worker run");
    wait_for_js(
        &tab,
        "[...document.querySelectorAll('[data-testid=event]')].some(e => e.dataset.kind === 'worker_stopping')",
    );
    // Filter the timeline down to heartbeats.
    for kind in ["item_processed", "run_start", "worker_started"] {
        tab.find_element(&format!(".chip[data-kind=\"{kind}\"]"))
            .expect("chip")
            .click()
            .expect("toggle");
    }
    wait_for_js(
        &tab,
        "![...document.querySelectorAll('[data-testid=event]')].some(e => e.dataset.kind === 'item_processed')",
    );
    shot(&tab, &shots, "agent-run");

    // Agent types: enqueue a job from the page and land on its run.
    tab.navigate_to(&format!("{url}/#/templates"))
        .expect("templates");
    wait_for_js(
        &tab,
        "document.querySelectorAll('[data-testid=template]').length === 3",
    );
    // An agent's model aliases, tools and budgets are shown, and so is what this host lacks of
    // them (it configures no alias and has no tools).
    wait_for_js(
        &tab,
        "document.querySelector('[data-agent=\"chaos\"] [data-testid=template-models]').textContent.includes('cheap') \
         && document.querySelector('[data-agent=\"chaos\"] [data-testid=template-tools]').textContent.includes('calc') \
         && document.querySelector('[data-agent=\"chaos\"]').textContent.includes('max turns') \
         && document.querySelector('.problems').textContent.includes('which is not configured')",
    );
    shot(&tab, &shots, "templates");
    tab.evaluate(
        "document.querySelector('[data-agent=\"echo\"] textarea').value = '{\"n\": 7}'",
        false,
    )
    .expect("fill input");
    tab.find_element("form.enqueue[data-agent=\"echo\"] [data-testid=enqueue]")
        .expect("enqueue button")
        .click()
        .expect("click enqueue");
    wait_for_js(
        &tab,
        "location.hash.startsWith('#/runs/') && !!document.querySelector('[data-testid=run-output]') \
         && document.querySelector('[data-testid=run-output]').innerText.includes('\"received\": 7')",
    );

    // Queue overview: counts by status.
    tab.navigate_to(&format!("{url}/#/queue")).expect("queue");
    wait_for_js(
        &tab,
        "document.querySelector('[data-count=\"done\"] .value') && \
         Number(document.querySelector('[data-count=\"done\"] .value').innerText) >= 3",
    );
    shot(&tab, &shots, "queue");
    eprintln!("screenshots in {}", shots.display());
}

/// Waits until a JavaScript expression is true in the page.
fn wait_for_js(tab: &Tab, expression: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = tab
            .evaluate(&format!("Boolean({expression})"), false)
            .ok()
            .and_then(|o| o.value);
        if value == Some(Value::Bool(true)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page never satisfied: {expression}\npage text: {}",
            tab.evaluate("document.body.innerText", false)
                .ok()
                .and_then(|o| o.value)
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn shot(tab: &Tab, dir: &std::path::Path, name: &str) {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// Headless Chromium with a profile of its own.
fn launch(chrome: PathBuf, profile: &tempfile::TempDir) -> Browser {
    Browser::new(LaunchOptions {
        headless: true,
        sandbox: false,
        path: Some(chrome),
        window_size: Some((1440, 960)),
        user_data_dir: Some(profile.path().to_path_buf()),
        idle_browser_timeout: Duration::from_secs(120),
        args: [
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .iter()
        .map(OsStr::new)
        .collect(),
        ..LaunchOptions::default()
    })
    .expect("launch Chromium")
}

/// Markup that would run script or load an image if the page ever parsed it.
const HOSTILE: &str = "</pre></div><img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script><b>bold</b>";

/// A model-backed run as the host records it: the store's run (with its usage) and the events
/// of two tool calls, a failed model call, and a long final answer.
async fn seed_conversation(storage_url: &str, long_answer: &str) {
    use drover_host::store::{EventRecord, RunRecord, RunStatus, RunStore, Usage, WriteBatch};
    use serde_json::value::RawValue;
    use std::sync::Arc;

    let store = RunStore::open(storage_url, None).await.expect("store");
    let now = drover_host::time::now_ms();
    let raw = |v: Value| Arc::<RawValue>::from(serde_json::value::to_raw_value(&v).expect("json"));
    let calls = json!([
        { "id": "call_1", "name": "calc", "arguments": "{\"expr\":\"6*7\"}" },
        { "id": "call_2", "name": "json-query", "arguments": format!("{{\"path\":\"{}\"}}", HOSTILE.replace('"', "\\\"")) },
    ]);
    let asking = json!({ "role": "assistant", "content": "", "toolCalls": calls });
    let events = [
        (
            "run_start",
            json!({ "agentId": "chatty", "sandbox": "wasm" }),
        ),
        (
            "model_request",
            json!({ "alias": "cheap", "turn": 1, "firstMessage": 0, "tools": ["calc", "json-query"],
                    "messages": [
                        { "role": "system", "content": "You are a calculator. Use the calc tool." },
                        { "role": "user", "content": format!("What is 6*7? {HOSTILE}") },
                    ] }),
        ),
        (
            "model_response",
            json!({ "alias": "cheap", "model": "qwen2.5:0.5b", "turn": 1, "message": asking,
                    "finishReason": "tool_calls", "usage": { "inputTokens": 120, "outputTokens": 30 },
                    "costUsd": 0.000_036, "durationMs": 812.5, "attempts": 1 }),
        ),
        ("tool_call", calls[0].clone()),
        ("tool_call", calls[1].clone()),
        (
            "tool_result",
            json!({ "id": "call_1", "name": "calc", "ok": true, "result": "42", "durationMs": 1.2, "fuel": 5000 }),
        ),
        (
            "tool_result",
            json!({ "id": "call_2", "name": "json-query", "ok": false, "durationMs": 3.4, "fuel": null,
                    "error": { "tag": "ToolTrapped", "message": format!("the tool trapped: {HOSTILE}") } }),
        ),
        (
            "model_request",
            json!({ "alias": "cheap", "turn": 2, "firstMessage": 2, "tools": ["calc", "json-query"],
                    "messages": [
                        asking,
                        { "role": "tool", "content": "42", "toolCallId": "call_1" },
                        { "role": "tool", "content": "ToolTrapped", "toolCallId": "call_2" },
                    ] }),
        ),
        (
            "model_error",
            json!({ "alias": "cheap", "turn": 2, "tag": "ModelRateLimited",
                    "message": "the provider answered 429 Too Many Requests", "durationMs": 15.0 }),
        ),
        (
            "model_request",
            json!({ "alias": "cheap", "turn": 3, "firstMessage": 5, "tools": ["calc", "json-query"], "messages": [] }),
        ),
        (
            "model_response",
            json!({ "alias": "cheap", "model": "qwen2.5:0.5b", "turn": 3,
                    "message": { "role": "assistant", "content": long_answer },
                    "finishReason": "stop", "usage": { "inputTokens": 1400, "outputTokens": 30 },
                    "costUsd": 0.000_384, "durationMs": 2100.0, "attempts": 2 }),
        ),
        ("run_end", json!({ "status": "success" })),
    ];
    let run = RunRecord {
        id: "conv-run".into(),
        job_id: None,
        agent_id: "chatty".into(),
        attempt: 1,
        parent_run_id: None,
        status: RunStatus::Success,
        sandbox: Some("wasm"),
        long_lived: false,
        input: Some(raw(json!({ "question": "What is 6*7?" }))),
        output: Some(raw(json!({ "answer": 42 }))),
        error_tag: None,
        error_message: None,
        started_at: now - 3000,
        ended_at: Some(now),
        heartbeat_at: None,
        fuel_used: Some(1_000_000),
        peak_memory: Some(1 << 20),
        worker_id: None,
        usage: Some(Usage {
            turns: 3,
            input_tokens: 1520,
            output_tokens: 60,
            cost_usd: 0.000_42,
            tool_calls: 2,
        }),
        tenant_id: None,
        user_id: None,
    };
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, (kind, payload))| EventRecord {
            run_id: Arc::from("conv-run"),
            seq: i as i64 + 1,
            ts: now - 3000 + i as i64 * 100,
            kind: kind.into(),
            payload: raw(payload),
        })
        .collect();
    store
        .write(&WriteBatch {
            runs: vec![run],
            events,
            ..WriteBatch::default()
        })
        .await
        .expect("write");
}

/// A model-backed run's timeline shows its conversation: messages by role, tool calls with their
/// arguments and results, a failed model call, tokens, cost and time per model call, long content
/// collapsed until asked for; the run list shows its tokens and cost. Markup in anything a model
/// or tool wrote stays text.
#[test]
fn the_viewer_shows_a_runs_conversation_as_text() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is required under CI (install Debian's `chromium` package)"
        );
        eprintln!("skipping the viewer test: no Chromium at /usr/bin/chromium (set CHROME)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let data = tempfile::tempdir().expect("temp dir");
    let storage_url = format!("file:{}", data.path().join("runs.db").display());
    let long_answer = format!(
        "The answer is 42. {} END-OF-ANSWER",
        "Forty-two. ".repeat(90)
    );
    runtime.block_on(seed_conversation(&storage_url, &long_answer));

    let agents = AgentDir::new();
    let args: Vec<String> = [
        "--agents",
        &agents.path().display().to_string(),
        "--data-dir",
        &data.path().join("var").display().to_string(),
        "--cache-dir",
        &drover_test_support::cache_dir().display().to_string(),
        "--queue-url",
        &format!("file:{}", data.path().join("queue.db").display()),
        "--storage-url",
        &storage_url,
    ]
    .map(String::from)
    .to_vec();
    let host = HostProcess::start(EXE, &args, &[]);
    let url = host.url.clone();

    let profile = tempfile::tempdir().expect("profile");
    let browser = launch(chrome, &profile);
    let tab = browser.new_tab().expect("tab");
    tab.set_default_timeout(WAIT);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viewer");
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    // The run list: tokens (input and output together) and cost.
    tab.navigate_to(&format!("{url}/#/runs")).expect("runs");
    wait_for_js(
        &tab,
        "document.querySelector('tr[data-run=\"conv-run\"] td.tokens')?.innerText === '1,580' \
         && document.querySelector('tr[data-run=\"conv-run\"] td.cost')?.innerText === '$0.000420'",
    );

    tab.navigate_to(&format!("{url}/#/runs/conv-run"))
        .expect("run");
    let conversation = "document.querySelector('[data-testid=conversation]')";
    let messages =
        "[...document.querySelectorAll('[data-testid=conversation] [data-testid=message]')]";
    // Each message once, in order: the model's own answer fed back and the tool messages (shown
    // as the results of their calls) are not repeated.
    wait_for_js(
        &tab,
        &format!(
            "{messages}.map(m => m.dataset.role).join() === 'system,user,assistant,assistant'"
        ),
    );
    let roles = eval(
        &tab,
        &format!("{messages}.map(m => m.querySelector('.role').textContent).join()"),
    );
    assert_eq!(roles, json!("system,user,assistant,assistant"));
    assert_eq!(
        eval(
            &tab,
            &format!("{messages}[1].querySelector('pre').textContent")
        ),
        json!(format!("What is 6*7? {HOSTILE}"))
    );

    // Tool calls, inside the answer that asked for them, with their arguments and results.
    let cards = "[...document.querySelectorAll('[data-testid=message]')[2].querySelectorAll('[data-testid=tool-call]')]";
    assert_eq!(
        eval(
            &tab,
            &format!(
                "{cards}.map(c => c.dataset.tool + ':' + c.querySelector('[data-testid=tool-result]').dataset.ok).join()"
            )
        ),
        json!("calc:true,json-query:false")
    );
    let calc = eval(&tab, &format!("{cards}[0].innerText"));
    let calc = calc.as_str().expect("text");
    assert!(
        calc.contains("\"expr\": \"6*7\"") && calc.contains("42") && calc.contains("5,000 fuel"),
        "{calc}"
    );
    let failed = eval(
        &tab,
        &format!("{cards}[1].querySelector('[data-testid=tool-result]').innerText"),
    );
    let failed = failed.as_str().expect("text");
    assert!(
        failed.contains("ToolTrapped") && failed.contains(HOSTILE),
        "{failed}"
    );
    let args = eval(
        &tab,
        &format!("{cards}[1].querySelector('.args').textContent"),
    );
    assert!(
        args.as_str()
            .is_some_and(|a| a.contains("</pre></div><img src=x onerror=")),
        "the arguments are shown as written: {args}"
    );

    // Per model call: tokens, cost, time; and the call that failed.
    let calls = eval(
        &tab,
        "[...document.querySelectorAll('[data-testid=model-call]')].map(m => m.innerText)",
    );
    let calls: Vec<String> = serde_json::from_value(calls).expect("strings");
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (call, expected) in calls.iter().zip([
        [
            "cheap (qwen2.5:0.5b)",
            "120 in / 30 out tokens",
            "$0.000036",
            "813 ms",
            "finish: tool_calls",
        ],
        [
            "cheap (qwen2.5:0.5b)",
            "1,400 in / 30 out tokens",
            "$0.000384",
            "2.1 s",
            "2 attempts",
        ],
    ]) {
        for part in expected {
            assert!(call.contains(part), "{call:?} lacks {part:?}");
        }
    }
    let error = eval(
        &tab,
        "document.querySelector('[data-testid=model-error]').innerText",
    );
    let error = error.as_str().expect("text");
    assert!(
        error.contains("ModelRateLimited") && error.contains("429"),
        "{error}"
    );
    let facts = eval(&tab, "document.querySelector('#facts').innerText");
    let facts = facts.as_str().expect("text");
    assert!(
        facts.contains("1,520 in · 60 out") && facts.contains("$0.000420"),
        "{facts}"
    );

    // The long answer is collapsed until asked for.
    let last = format!("{messages}[3]");
    let shown = eval(&tab, &format!("{last}.querySelector('pre').textContent"));
    let shown = shown.as_str().expect("text");
    assert!(
        shown.len() < long_answer.len() && !shown.contains("END-OF-ANSWER"),
        "{shown}"
    );
    tab.evaluate(
        "document.querySelector('#conversation-panel').scrollIntoView(); window.scrollBy(0, -70)",
        false,
    )
    .expect("scroll");
    shot(&tab, &shots, "conversation");
    tab.find_element("[data-testid=conversation] [data-testid=show-all]")
        .expect("toggle")
        .click()
        .expect("show all");
    wait_for_js(
        &tab,
        &format!("{last}.querySelector('pre').textContent.endsWith('END-OF-ANSWER')"),
    );
    assert_eq!(
        eval(&tab, &format!("{last}.querySelector('pre').textContent")),
        json!(long_answer)
    );

    // Nothing anyone wrote became markup: no element from it, no script run.
    assert_eq!(
        eval(
            &tab,
            &format!(
                "{conversation}.querySelectorAll('img, script, b').length + document.querySelectorAll('img, body script:not([src])').length"
            )
        ),
        json!(0)
    );
    assert_eq!(eval(&tab, "window.__pwned === undefined"), json!(true));
    drop(host);
}

/// The value of a JavaScript expression in the page (as JSON, so arrays come back whole).
fn eval(tab: &Tab, expression: &str) -> Value {
    let json = tab
        .evaluate(&format!("JSON.stringify({expression})"), false)
        .expect("evaluate")
        .value;
    match json {
        Some(Value::String(text)) => serde_json::from_str(&text).expect("JSON from the page"),
        _ => Value::Null,
    }
}

/// With a tenant's token the page works, and shows that tenant's runs and jobs only (and no
/// host-wide counts, which need an admin token).
#[test]
fn the_viewer_with_a_tenants_token_shows_only_that_tenant() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is required under CI (install Debian's `chromium` package)"
        );
        eprintln!("skipping the viewer test: no Chromium at /usr/bin/chromium (set CHROME)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let agents = AgentDir::new();
    agents.add("echo", ECHO, None);
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("drover.toml");
    let entry = |name: &str, tenant: &str| {
        let hash: String = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "[[api-tokens]]\nname = \"{name}\"\nsha256 = \"{hash}\"\ntenant = \"{tenant}\"\nverbs = [\"read\", \"enqueue\", \"cancel\"]\n"
        )
    };
    std::fs::write(
        &config,
        format!(
            "{}{}",
            entry("acme-token", "acme"),
            entry("beta-token", "beta")
        ),
    )
    .expect("config");
    let args: Vec<String> = [
        "--agents",
        &agents.path().display().to_string(),
        "--data-dir",
        &data.path().join("var").display().to_string(),
        "--cache-dir",
        &drover_test_support::cache_dir().display().to_string(),
        "--queue-url",
        &format!("file:{}", data.path().join("queue.db").display()),
        "--storage-url",
        &format!("file:{}", data.path().join("runs.db").display()),
        "--config",
        &config.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let host = HostProcess::start(EXE, &args, &[("DROVER_API_TOKEN", TOKEN)]);
    let url = host.url.clone();
    let run_of = |token: &str, id: &str| {
        let url = url.clone();
        let token = token.to_string();
        let id = id.to_string();
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let job: Value = client
                .post(format!("{url}/v1/jobs"))
                .bearer_auth(&token)
                .json(&json!({ "id": id, "agentId": "echo", "input": { "n": 1 } }))
                .send()
                .await
                .expect("enqueue")
                .json()
                .await
                .expect("json");
            let id = job["job"]["id"].as_str().expect("id").to_string();
            let done: Value = client
                .get(format!("{url}/v1/jobs/{id}/wait?timeoutMs=30000"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("wait")
                .json()
                .await
                .expect("json");
            assert_eq!(done["job"]["status"], "done", "{done}");
            (id, done["run"]["id"].as_str().expect("run").to_string())
        })
    };
    let (acme_job, acme_run) = run_of("acme-token", "acme-job-1");
    let (beta_job, beta_run) = run_of("beta-token", "beta-job-1");

    let profile = tempfile::tempdir().expect("profile");
    let browser = launch(chrome, &profile);
    let tab = browser.new_tab().expect("tab");
    tab.set_default_timeout(WAIT);
    tab.navigate_to(&format!("{url}/?token=acme-token#/runs"))
        .expect("open");
    wait_for_js(
        &tab,
        &format!("!!document.querySelector('tr[data-run=\"{acme_run}\"]')"),
    );
    assert_eq!(
        eval(
            &tab,
            &format!("!!document.querySelector('tr[data-run=\"{beta_run}\"]')")
        ),
        json!(false)
    );
    wait_for_js(
        &tab,
        "document.getElementById('summary').innerText.includes('host up')",
    );
    // The queue view lists acme's job, not beta's, and says nothing went wrong.
    tab.navigate_to(&format!("{url}/?token=acme-token#/queue"))
        .expect("queue");
    wait_for_js(
        &tab,
        &format!("document.getElementById('jobs-body').innerText.includes('{acme_job}')"),
    );
    let text = eval(&tab, "document.getElementById('main').innerText");
    let text = text.as_str().unwrap_or_default();
    assert!(!text.contains(&beta_job), "{text}");
    assert!(!text.contains("Forbidden"), "{text}");
    drop(host);
}

/// A long-lived agent's run page has a chat panel: messages posted to the agent and its replies,
/// and a form that posts one and shows the reply; what either side wrote is shown as text.
#[test]
fn the_viewer_chats_with_a_long_lived_agent() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is required under CI (install Debian's `chromium` package)"
        );
        eprintln!("skipping the viewer test: no Chromium at /usr/bin/chromium (set CHROME)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let agents = AgentDir::new();
    agents.add("chat", CHAT, Some("lifecycle = \"long-lived\"\n"));
    let data = tempfile::tempdir().expect("temp dir");
    let args = drover_test_support::host_args(agents.path(), data.path(), "var", None);
    let host = HostProcess::start(EXE, &args, &[("DROVER_API_TOKEN", TOKEN)]);
    let url = host.url.clone();
    let api = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let url = format!("{url}{path}");
        runtime.block_on(async move {
            let mut request = reqwest::Client::new()
                .request(method, url)
                .bearer_auth(TOKEN);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("request");
            response.json::<Value>().await.expect("json")
        })
    };
    let spawned = api(
        reqwest::Method::POST,
        "/spawn",
        Some(json!({ "agentType": "chat" })),
    );
    let id = spawned["workloadName"].as_str().expect("name").to_string();
    let first = api(
        reqwest::Method::POST,
        &format!("/v1/agents/{id}/messages?waitMs=30000"),
        Some(json!({ "message": { "text": "from the API" } })),
    );
    assert_eq!(first["reply"]["count"], 1, "{first}");
    let agent = api(reqwest::Method::GET, &format!("/v1/agents/{id}"), None);
    let run = agent["agent"]["run"]["id"]
        .as_str()
        .expect("run")
        .to_string();

    let profile = tempfile::tempdir().expect("profile");
    let browser = launch(chrome, &profile);
    let tab = browser.new_tab().expect("tab");
    tab.set_default_timeout(WAIT);
    tab.navigate_to(&format!("{url}/?token={TOKEN}#/runs/{run}"))
        .expect("open the agent's run");
    wait_for_js(
        &tab,
        "document.querySelectorAll('[data-testid=chat-message]').length === 1 \
         && document.querySelector('[data-testid=chat-reply]').innerText.includes('from the API')",
    );
    // Send one from the page: markup in it stays text, on the way out and in the reply.
    tab.evaluate(
        &format!(
            "document.querySelector('[data-testid=chat-input]').value = {}",
            serde_json::to_string(HOSTILE).expect("json")
        ),
        false,
    )
    .expect("type");
    tab.find_element("[data-testid=chat-send]")
        .expect("send button")
        .click()
        .expect("send");
    wait_for_js(
        &tab,
        "document.querySelectorAll('[data-testid=chat-reply]').length === 2 \
         && document.querySelectorAll('[data-testid=chat-reply]')[1].innerText.includes('\"count\": 2')",
    );
    let replies = eval(
        &tab,
        "[...document.querySelectorAll('[data-testid=chat-reply]')].map(r => r.innerText)",
    );
    assert!(
        replies[1].as_str().is_some_and(|r| r.contains("onerror")),
        "{replies}"
    );
    assert_eq!(eval(&tab, "window.__pwned ?? null"), Value::Null);
    assert_eq!(
        eval(
            &tab,
            "document.querySelectorAll('#chat img, #chat script, #chat b').length"
        ),
        json!(0)
    );
    // The timeline shows each message received and replied.
    wait_for_js(
        &tab,
        "[...document.querySelectorAll('[data-testid=event]')].filter(e => e.dataset.kind === 'message_replied').length === 2",
    );
    let listed = api(
        reqwest::Method::GET,
        &format!("/v1/agents/{id}/messages"),
        None,
    );
    assert_eq!(listed["messages"][1]["body"], HOSTILE, "{listed}");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viewer");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    shot(&tab, &shots, "chat");
}

/// A run in a tree shows the tree (its root, its parents and children, each a link to the
/// job's latest run) and a link to its parent run.
#[test]
fn the_viewer_shows_a_runs_tree_and_links_parents_and_children() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is required under CI (install Debian's `chromium` package)"
        );
        eprintln!("skipping the viewer test: no Chromium at /usr/bin/chromium (set CHROME)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let agents = AgentDir::new();
    agents.add(
        "chain-worker",
        CHAIN_WORKER,
        Some(include_str!("../agents/chain-worker.toml")),
    );
    let data = tempfile::tempdir().expect("temp dir");
    let args = drover_test_support::host_args(agents.path(), data.path(), "var", None);
    let host = HostProcess::start(EXE, &args, &[("DROVER_API_TOKEN", TOKEN)]);
    let url = host.url.clone();
    let api = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let url = format!("{url}{path}");
        runtime.block_on(async move {
            let mut request = reqwest::Client::new()
                .request(method, url)
                .bearer_auth(TOKEN);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("request");
            response.json::<Value>().await.unwrap_or(Value::Null)
        })
    };
    let created = api(
        reqwest::Method::POST,
        "/v1/jobs",
        Some(json!({ "agentId": "chain-worker", "input": { "intervalMs": 200 } })),
    );
    let root = created["job"]["id"].as_str().expect("root").to_string();
    // The chain grows to its depth: a root, a child and a grandchild, all running.
    let deadline = Instant::now() + WAIT;
    let root_run = loop {
        let tree = api(
            reqwest::Method::GET,
            &format!("/v1/jobs?rootJobId={root}"),
            None,
        );
        let jobs = tree["jobs"].as_array().cloned().unwrap_or_default();
        if jobs.len() == 3 && jobs.iter().all(|j| j["status"] == "leased") {
            let view = api(reqwest::Method::GET, &format!("/v1/jobs/{root}"), None);
            if let Some(run) = view["run"]["id"].as_str() {
                break run.to_string();
            }
        }
        assert!(Instant::now() < deadline, "the chain never grew: {tree}");
        std::thread::sleep(Duration::from_millis(50));
    };

    let profile = tempfile::tempdir().expect("profile");
    let browser = launch(chrome, &profile);
    let tab = browser.new_tab().expect("tab");
    tab.set_default_timeout(WAIT);
    tab.navigate_to(&format!("{url}/?token={TOKEN}#/runs/{root_run}"))
        .expect("open the root's run");
    wait_for_js(
        &tab,
        "document.querySelectorAll('[data-testid=tree-node]').length === 3 \
         && !document.querySelector('[data-testid=tree-panel]').hidden",
    );
    // Nested: the grandchild is inside the child, inside the root (the page's own job).
    assert_eq!(
        eval(
            &tab,
            "[...document.querySelectorAll('[data-testid=tree-node]')].map(n => \
             [n.dataset.depth, n.classList.contains('current'), \
              n.parentElement.closest('[data-testid=tree-node]')?.dataset.depth ?? null])"
        ),
        json!([["0", true, null], ["1", false, "0"], ["2", false, "1"]])
    );
    // The grandchild's link opens its run, whose parent is the child's run.
    tab.evaluate(
        "document.querySelector('[data-testid=tree-node][data-depth=\"2\"] [data-testid=tree-link]').click()",
        false,
    )
    .expect("click the grandchild");
    wait_for_js(
        &tab,
        "location.hash.startsWith('#/runs/') \
         && document.querySelector('[data-testid=tree-node].current')?.dataset.depth === '2' \
         && !!document.querySelector('[data-testid=parent-run]')",
    );
    let child = api(
        reqwest::Method::GET,
        &format!("/v1/jobs/{root}/children"),
        None,
    );
    let child_id = child["jobs"][0]["id"].as_str().expect("child").to_string();
    let child_view = api(reqwest::Method::GET, &format!("/v1/jobs/{child_id}"), None);
    let child_run = child_view["run"]["id"].as_str().expect("child's run");
    assert_eq!(
        eval(
            &tab,
            "document.querySelector('[data-testid=parent-run]').getAttribute('href')"
        ),
        json!(format!("#/runs/{child_run}"))
    );
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viewer");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    shot(&tab, &shots, "tree");
    api(reqwest::Method::DELETE, &format!("/v1/agents/{root}"), None);
}
