//! The run viewer in a real headless Chromium against a real `drover-host run`: the runs list,
//! a run's detail and timeline, live agents (stopping one from the page), agent types (enqueueing
//! from the page) and the queue, with a screenshot of each view.
//!
//! Needs Chromium (`/usr/bin/chromium`, or `CHROME=/path`). Without it the test says so and
//! passes, except under CI (`CI` set), where `.ci/run` installs it and a missing browser fails.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_test_support::{AgentDir, CHAOS, ECHO, HostProcess, QUEUE_WORKER, WAIT};
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
        .add("chaos", CHAOS, None);
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
    let browser = Browser::new(LaunchOptions {
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
    .expect("launch Chromium");
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
