//! The real `drover-host` binary, driven over real HTTP and through its own CLI: both seed
//! walkthroughs, bad requests, authentication, graceful shutdown, and two hosts sharing one
//! database while one of them is killed.

use std::time::{Duration, Instant};

use drover_test_support::{AgentDir, CHAOS, CHAT, ECHO, HostProcess, QUEUE_WORKER, WAIT, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// An agent directory with echo, queue-worker (fast polling), chat and chaos, and a place for
/// the databases.
struct Setup {
    agents: AgentDir,
    data: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let agents = AgentDir::new();
        agents
            .add("echo", ECHO, None)
            .add(
                "queue-worker",
                QUEUE_WORKER,
                Some("lifecycle = \"long-lived\"\n[env]\nPOLL_INTERVAL_MS = \"50\"\n"),
            )
            .add("chat", CHAT, Some("lifecycle = \"long-lived\"\n"))
            .add(
                "chaos",
                CHAOS,
                Some("[limits]\nfuel = \"unlimited\"\ntimeout-ms = \"none\"\n"),
            );
        Self {
            agents,
            data: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let dir = self.data.path();
        let mut args: Vec<String> = vec![
            "--agents".into(),
            self.agents.path().display().to_string(),
            "--data-dir".into(),
            dir.join("var").display().to_string(),
            "--cache-dir".into(),
            drover_test_support::cache_dir().display().to_string(),
            "--queue-url".into(),
            format!("file:{}", dir.join("queue.db").display()),
            "--storage-url".into(),
            format!("file:{}", dir.join("runs.db").display()),
        ];
        if !extra.contains(&"--concurrency") {
            args.extend(["--concurrency".into(), "4".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn start(&self, extra: &[&str]) -> HostProcess {
        HostProcess::start(EXE, &self.args(extra), &[])
    }
}

/// Runs a client subcommand against `url`.
fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(EXE)
        .args(args)
        .env("DROVER_URL", url)
        .env_remove("DROVER_API_TOKEN")
        .output()
        .expect("run drover-host");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(url: String) -> (StatusCode, Value) {
    call(reqwest::Method::GET, url, None).await
}

async fn post(url: String, body: Value) -> (StatusCode, Value) {
    call(reqwest::Method::POST, url, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_one_enqueue_wait_and_cancel_over_http() {
    let setup = Setup::new();
    let host = setup.start(&[]);
    let url = &host.url;

    let (status, created) = post(
        format!("{url}/v1/jobs"),
        json!({ "id": "job-42", "agentId": "echo", "input": { "n": 42 }, "priority": 10, "maxAttempts": 3 }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["job"]["id"], "job-42");
    let (status, done) = get(format!("{url}/v1/jobs/job-42/wait?timeoutMs=30000")).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["job"]["status"], "done");
    assert_eq!(done["run"]["output"], json!({ "received": 42, "ok": true }));
    assert_eq!(done["run"]["status"], "success");

    // The same job again returns the existing one; another under the same id is a conflict.
    let (status, again) = post(
        format!("{url}/v1/jobs"),
        json!({ "id": "job-42", "agentId": "echo", "input": { "n": 42 } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["job"]["status"], "done");
    let (status, conflict) = post(
        format!("{url}/v1/jobs"),
        json!({ "id": "job-42", "agentId": "echo", "input": { "n": 1 } }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["error"]["tag"], "JobIdConflict");

    // Cancel mid-flight: failed, never retried.
    let (_, spinning) = post(
        format!("{url}/v1/jobs"),
        json!({ "agentId": "chaos", "input": { "mode": "spin" }, "maxAttempts": 3 }),
    )
    .await;
    let id = spinning["job"]["id"].as_str().expect("id").to_string();
    wait_until(|| async {
        get(format!("{url}/v1/jobs/{id}")).await.1["job"]["status"] == "leased"
    })
    .await;
    let (status, cancelled) = post(format!("{url}/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancelled}");
    let (_, finished) = get(format!("{url}/v1/jobs/{id}/wait?timeoutMs=30000")).await;
    assert_eq!(finished["job"]["status"], "failed");
    assert_eq!(finished["job"]["resultError"]["tag"], "Cancelled");
    assert_eq!(finished["job"]["attempts"], 1);
    assert_eq!(finished["run"]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_one_through_the_cli() {
    let setup = Setup::new();
    let host = setup.start(&[]);
    let (code, out, err) = cli(&host.url, &["enqueue", "echo", r#"{"n": 42}"#, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(r#"{"received":42,"ok":true}"#), "{out}");
    assert!(out.contains("done"), "{out}");

    let (code, out, _) = cli(
        &host.url,
        &["enqueue", "chaos", r#"{"mode": "spin"}"#, "--json"],
    );
    assert_eq!(code, 0);
    let id = serde_json::from_str::<Value>(&out).expect("json")["job"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Cancel it mid-flight: once it runs.
    let deadline = std::time::Instant::now() + drover_test_support::WAIT;
    loop {
        let (code, out, _) = cli(&host.url, &["get", &id, "--json"]);
        assert_eq!(code, 0, "{out}");
        let view: Value = serde_json::from_str(&out).expect("json");
        if view["run"]["status"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ran: {view}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, out, err) = cli(&host.url, &["cancel", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(&host.url, &["wait", &id, "--timeout-ms", "30000", "--json"]);
    assert_eq!(code, 2, "a failed job exits with 2: {out}");
    let view: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(view["job"]["status"], "failed", "{view}");
    assert_eq!(view["job"]["resultError"]["tag"], "Cancelled", "{view}");
    assert_eq!(view["run"]["status"], "cancelled", "{view}");
    // A finished job cannot be cancelled or stopped: the CLI says so and fails.
    for action in ["cancel", "stop"] {
        let (code, out, err) = cli(&host.url, &[action, &id]);
        assert_eq!(code, 1, "{action}: {out}{err}");
        assert!(
            err.contains("AlreadyFinished") && err.contains("already finished"),
            "{action}: {err}"
        );
    }

    // Any id works, whatever characters it holds.
    let odd = "batch 7/item?x=1#2";
    let (code, out, err) = cli(
        &host.url,
        &["enqueue", "echo", r#"{"n": 7}"#, "--id", odd, "--wait"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&host.url, &["get", odd, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let view: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(view["job"]["id"], odd);
    assert_eq!(view["run"]["output"]["received"], 7);

    let (code, out, _) = cli(&host.url, &["jobs", "--status", "done"]);
    assert_eq!(code, 0);
    assert!(out.lines().count() >= 2 && out.contains("echo"), "{out}");
    let (code, out, _) = cli(&host.url, &["runs", "--agent", "echo"]);
    assert_eq!(code, 0);
    assert!(out.contains("success"), "{out}");
    // Agent types, under their name and the walkthrough's.
    for command in ["types", "templates"] {
        let (code, out, _) = cli(&host.url, &[command]);
        assert_eq!(code, 0);
        assert!(
            out.contains("queue-worker") && out.contains("long-lived"),
            "{command}: {out}"
        );
    }

    let (code, _, err) = cli(&host.url, &["enqueue", "nope", "{}"]);
    assert_eq!(code, 1);
    assert!(err.contains("UnknownAgent"), "{err}");
    let (code, _, err) = cli(&host.url, &["get", "missing-job"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = cli("http://127.0.0.1:9", &["jobs"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_two_spawn_heartbeat_and_delete_is_completed() {
    let setup = Setup::new();
    let host = setup.start(&[]);
    let url = &host.url;
    let (status, spawned) = post(
        format!("{url}/spawn"),
        json!({ "agentType": "queue-worker", "tenantId": "tenant-1", "userId": "user-1" }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{spawned}");
    let name = spawned["workloadName"]
        .as_str()
        .expect("workloadName")
        .to_string();
    assert!(name.starts_with("queue-worker-"), "{name}");

    // Heartbeat events accumulate while it stays Running.
    wait_until(|| async {
        let (_, events) = get(format!("{url}/v1/agents/{name}/events")).await;
        events["events"]
            .as_array()
            .is_some_and(|e| e.iter().filter(|e| e["kind"] == "heartbeat").count() >= 3)
    })
    .await;
    let (_, agent) = get(format!("{url}/v1/agents/{name}")).await;
    assert_eq!(agent["agent"]["phase"], "Running");
    assert_eq!(agent["agent"]["stale"], false);
    let (_, agents) = get(format!("{url}/v1/agents")).await;
    assert!(
        agents["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["id"] == name.as_str())),
        "{agents}"
    );

    // Deletion is the stop signal: a graceful stop is Completed, not Failed.
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{url}/v1/agents/{name}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_until(|| async {
        get(format!("{url}/v1/agents/{name}")).await.1["agent"]["phase"] == "Completed"
    })
    .await;
    let (_, agent) = get(format!("{url}/v1/agents/{name}")).await;
    assert_eq!(agent["agent"]["run"]["status"], "success");
    let (_, events) = get(format!("{url}/v1/agents/{name}/events")).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"worker_started") && kinds.contains(&"item_processed"));
    assert_eq!(kinds[kinds.len() - 2..], ["worker_stopping", "run_end"]);

    // The CLI follows the same agent's events to the end.
    let (code, out, _) = cli(url, &["events", &name, "--follow"]);
    assert_eq!(code, 0);
    assert!(out.contains("worker_stopping"), "{out}");

    // The same lifecycle from a shell: enqueue, stop, wait.
    let (code, out, _) = cli(url, &["enqueue", "queue-worker", "null", "--json"]);
    assert_eq!(code, 0, "{out}");
    let id = serde_json::from_str::<Value>(&out).expect("json")["job"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_until(|| async {
        let (_, job) = get(format!("{url}/v1/jobs/{id}")).await;
        job["run"]["status"] == "running"
    })
    .await;
    let (code, out, err) = cli(url, &["stop", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(url, &["wait", &id, "--timeout-ms", "30000"]);
    assert_eq!(code, 0, "a stopped long-lived agent is done: {out}");
    assert!(out.contains("done") && out.contains("success"), "{out}");
    let (code, out, _) = cli(url, &["get", &id, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["run"]["status"],
        "success"
    );
}

/// The JSON a client command printed with `--json`.
fn json_out(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_agents_are_spawned_listed_messaged_and_stopped_from_the_cli() {
    let setup = Setup::new();
    let host = setup.start(&[]);
    let url = &host.url;
    let input = setup.data.path().join("chat-input.json");
    std::fs::write(&input, r#"{"replyDelayMs": 0}"#).expect("input");
    let (code, out, err) = cli(
        url,
        &[
            "spawn",
            "chat",
            &format!("@{}", input.display()),
            "--tenant",
            "acme",
            "--user",
            "ann",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let id = out
        .trim()
        .strip_prefix("spawned ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let (_, agent) = get(format!("{url}/v1/agents/{id}")).await;
    assert_eq!(agent["agent"]["job"]["tenantId"], "acme", "{agent}");
    assert_eq!(agent["agent"]["job"]["userId"], "ann", "{agent}");
    assert_eq!(agent["agent"]["job"]["input"], json!({ "replyDelayMs": 0 }));

    // A reply comes back to the shell; a bare word is told how to quote it.
    let (code, out, err) = cli(url, &["send", &id, r#"{"text": "hi"}"#, "--wait", "30s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        json_out(&out),
        json!({ "echo": { "text": "hi" }, "count": 1 })
    );
    let (code, _, err) = cli(url, &["send", &id, "hello"]);
    assert_eq!(code, 1);
    assert!(err.contains(r#"'"hello"'"#), "{err}");
    // From standard input, without waiting: the message is queued and answered later.
    let mut child = std::process::Command::new(EXE)
        .args(["send", &id, "-", "--json"])
        .env("DROVER_URL", url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("send");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"\"again\"")
        .expect("write");
    let sent = child.wait_with_output().expect("send");
    assert!(sent.status.success());
    let message_id = json_out(&String::from_utf8_lossy(&sent.stdout))["messageId"]
        .as_str()
        .expect("messageId")
        .to_string();
    wait_until(|| async {
        let (code, out, _) = cli(url, &["messages", &id, "--json"]);
        assert_eq!(code, 0);
        json_out(&out)["messages"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["id"] == message_id.as_str() && m["reply"]["count"] == 2)
        })
    })
    .await;
    let (code, out, _) = cli(url, &["messages", &id]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("MESSAGE") && out.contains(r#""again""#),
        "{out}"
    );

    // Listed with its phase; filtered by status and tenant.
    let (code, out, _) = cli(url, &["agents"]);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("chat") && line.contains("acme") && line.contains("Running"),
        "{line}"
    );
    let (_, out, _) = cli(url, &["agents", "--status", "running", "--json"]);
    assert!(json_out(&out)["agents"][0]["id"] == id.as_str(), "{out}");
    let (_, out, _) = cli(url, &["agents", "--tenant", "other", "--json"]);
    assert_eq!(json_out(&out)["agents"], json!([]));

    // Stopped: it completes, and a second stop is refused.
    let (code, out, err) = cli(url, &["stop", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(url, &["wait", &id, "--timeout", "30s"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("done"), "{out}");
    let (code, _, err) = cli(url, &["stop", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("already finished"), "{err}");
    let (_, out, _) = cli(url, &["agents", "--json"]);
    assert_eq!(json_out(&out)["agents"][0]["phase"], "Completed", "{out}");

    // A run-to-completion type is not spawned, and says how to run it.
    let (code, _, err) = cli(url, &["spawn", "echo"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("NotLongLived") && err.contains("drover-host enqueue echo"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_takes_files_standard_input_delays_times_and_meta() {
    let setup = Setup::new();
    let host = setup.start(&[]);
    let url = &host.url;
    let input = setup.data.path().join("input.json");
    std::fs::write(&input, r#"{"n": 5}"#).expect("input");
    let (code, out, err) = cli(
        url,
        &[
            "enqueue",
            "echo",
            &format!("@{}", input.display()),
            "--meta",
            r#"{"batch": "b-1"}"#,
            "--wait",
            "--timeout",
            "30s",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let view = json_out(&out);
    assert_eq!(view["run"]["output"]["received"], 5, "{view}");
    assert_eq!(view["job"]["meta"], json!({ "batch": "b-1" }), "{view}");

    // A delay holds the job back: scheduled, not claimed, until its time.
    let before = drover_host::time::now_ms();
    let (code, out, err) = cli(
        url,
        &["enqueue", "echo", r#"{"n": 1}"#, "--delay", "1h", "--json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let job = &json_out(&out)["job"];
    assert_eq!(job["status"], "scheduled", "{job}");
    let at = job["scheduledFor"].as_i64().expect("scheduledFor");
    assert!(
        (before + 3_590_000..before + 3_700_000).contains(&at),
        "{at} vs {before}"
    );
    let (code, out, _) = cli(
        url,
        &[
            "enqueue",
            "echo",
            "{\"n\": 2}",
            "--at",
            "2999-01-01T00:00:00Z",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        json_out(&out)["job"]["scheduledFor"],
        32_472_144_000_000_i64
    );
    let (code, _, err) = cli(url, &["enqueue", "echo", "{}", "--delay", "soon"]);
    assert_eq!(code, 1, "bad arguments: {err}");
    assert!(err.contains("\"30s\""), "{err}");
    let (code, _, err) = cli(url, &["enqueue", "echo", "@/nonexistent/input.json"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read the input from /nonexistent/input.json"),
        "{err}"
    );
    let (code, _, err) = cli(url, &["jobs", "--status", "sleeping"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("running"),
        "the valid statuses are listed: {err}"
    );
    let (code, out, _) = cli(url, &["jobs", "--status", "scheduled"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().filter(|l| l.contains("scheduled")).count(),
        2,
        "{out}"
    );

    // Client commands' help shows client options, not the server's logging.
    let (code, out, _) = cli(url, &["enqueue", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--delay") && !out.contains("--log-format"),
        "{out}"
    );
    let (_, out, _) = cli(url, &["--help"]);
    assert!(out.contains("Exit codes:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_write_nothing() {
    let setup = Setup::new();
    let host = setup.start(&[]);
    let url = &host.url;
    let client = reqwest::Client::new();
    let malformed = client
        .post(format!("{url}/v1/jobs"))
        .header("content-type", "application/json")
        .body("{\"agentId\": \"echo\", ")
        .send()
        .await
        .expect("send");
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let body: Value = malformed.json().await.expect("json");
    assert_eq!(body["error"]["tag"], "InvalidJson");

    let cases = [
        (json!({ "agentId": "ghost", "input": {} }), "UnknownAgent"),
        (
            json!({ "agentId": "echo", "input": { "n": "x" } }),
            "InvalidInput",
        ),
        (
            json!({ "agentId": "echo", "input": { "n": 1 }, "maxAttempts": 0 }),
            "InvalidRequest",
        ),
        (
            json!({ "agentId": "echo", "input": { "n": 1 }, "colour": "red" }),
            "InvalidRequest",
        ),
        (json!({ "input": { "n": 1 } }), "InvalidRequest"),
    ];
    for (body, tag) in cases {
        let (status, error) = post(format!("{url}/v1/jobs"), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["error"]["tag"], tag, "{body}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (status, error) = post(format!("{url}/spawn"), json!({ "agentType": "ghost" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["tag"], "UnknownAgent");
    let (_, jobs) = get(format!("{url}/v1/jobs")).await;
    assert_eq!(jobs["jobs"], json!([]), "nothing was written");

    for path in [
        "/v1/jobs/nope",
        "/v1/runs/nope",
        "/v1/agents/nope",
        "/v1/runs/nope/events",
    ] {
        let (status, error) = get(format!("{url}{path}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error["error"]["tag"], "NotFound");
    }
    // Every error, whoever notices it, has the same JSON shape.
    for (method, path, expected) in [
        ("GET", "/v1/jobs?status=sleeping", StatusCode::BAD_REQUEST),
        ("GET", "/v1/jobs?limit=lots", StatusCode::BAD_REQUEST),
        (
            "GET",
            "/v1/jobs/x/wait?timeoutMs=soon",
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/v1/runs?lifecycle=forever", StatusCode::BAD_REQUEST),
        ("GET", "/v1/nothing-here", StatusCode::NOT_FOUND),
        ("DELETE", "/v1/jobs", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let method: reqwest::Method = method.parse().expect("method");
        let (status, error) = call(method, format!("{url}{path}"), None).await;
        assert_eq!(status, expected, "{path}: {error}");
        assert!(error["error"]["tag"].is_string(), "{path}: {error}");
        assert!(error["error"]["message"].is_string(), "{path}: {error}");
    }
    let huge = format!(
        r#"{{"agentId": "echo", "input": {{"n": 1, "pad": "{}"}}}}"#,
        "x".repeat(3 << 20)
    );
    let response = client
        .post(format!("{url}/v1/jobs"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let error: Value = response.json().await.expect("a JSON error");
    assert!(error["error"]["tag"].is_string(), "{error}");

    // A wait that times out answers 408 with the job as it is.
    let (_, slow) = post(
        format!("{url}/v1/jobs"),
        json!({ "agentId": "chaos", "input": { "mode": "sleep", "ms": 5000 } }),
    )
    .await;
    let id = slow["job"]["id"].as_str().expect("id");
    let (status, view) = get(format!("{url}/v1/jobs/{id}/wait?timeoutMs=100")).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(view["job"]["id"], id);

    let (status, health) = get(format!("{url}/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("drover_jobs{status=\"queued\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("drover_runs_in_flight"), "{metrics}");
    assert!(metrics.contains("drover_runs_waiting 0"), "{metrics}");
    // The agent types, under their name and the walkthrough's.
    for (route, key) in [("types", "types"), ("templates", "templates")] {
        let (status, types) = get(format!("{url}/v1/{route}")).await;
        assert_eq!(status, StatusCode::OK);
        let ids: Vec<&str> = types[key]
            .as_array()
            .expect("types")
            .iter()
            .filter_map(|t| t["id"].as_str())
            .collect();
        assert_eq!(ids, ["chaos", "chat", "echo", "queue-worker"], "{route}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_on_every_route() {
    let setup = Setup::new();
    let host = HostProcess::start(EXE, &setup.args(&[]), &[("DROVER_API_TOKEN", "s3cret")]);
    let url = &host.url;
    for path in ["/v1/jobs", "/v1/templates", "/metrics", "/readyz"] {
        let (status, body) = get(format!("{url}{path}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["error"]["tag"], "Unauthorized");
    }
    // Liveness probes need no token.
    let (status, _) = get(format!("{url}/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    let wrong = reqwest::Client::new()
        .get(format!("{url}/v1/jobs"))
        .bearer_auth("guess")
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = reqwest::Client::new()
        .get(format!("{url}/v1/jobs"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("send");
    assert_eq!(right.status(), StatusCode::OK);
    let out = std::process::Command::new(EXE)
        .args(["jobs"])
        .env("DROVER_URL", url)
        .env("DROVER_API_TOKEN", "s3cret")
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Producers and pools on different processes, configured through the environment alone: an
/// API-only host takes the job, a worker-only host runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_only_host_and_a_worker_only_host_split_the_work() {
    let setup = Setup::new();
    let dir = setup.data.path();
    let queue_url = format!("file:{}", dir.join("split-queue.db").display());
    let storage_url = format!("file:{}", dir.join("split-runs.db").display());
    let agents = setup.agents.path().display().to_string();
    let data_dir = dir.join("split-var").display().to_string();
    let cache_dir = drover_test_support::cache_dir().display().to_string();
    let envs = [
        ("DROVER_QUEUE_URL", queue_url.as_str()),
        ("DROVER_STORAGE_URL", storage_url.as_str()),
        ("DROVER_AGENTS_DIR", agents.as_str()),
        ("DROVER_DATA_DIR", data_dir.as_str()),
        ("DROVER_CACHE_DIR", cache_dir.as_str()),
        ("DROVER_CONCURRENCY", "2"),
        ("DROVER_MAX_WAITING_RUNS", "64"),
    ];
    let api = HostProcess::start(EXE, &["--api-only".into()], &envs);
    let url = api.url.clone();
    let (status, job) = post(
        format!("{url}/v1/jobs"),
        json!({ "id": "split-1", "agentId": "echo", "input": { "n": 5 } }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    // Nobody runs it yet: the API host has no pool.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, view) = get(format!("{url}/v1/jobs/split-1")).await;
    assert_eq!(view["job"]["status"], "queued", "{view}");

    let worker = HostProcess::start(
        EXE,
        &[
            "--worker-only".into(),
            "--worker-id".into(),
            "worker-1".into(),
        ],
        &envs,
    );
    let (status, done) = get(format!("{url}/v1/jobs/split-1/wait?timeoutMs=30000")).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["job"]["status"], "done", "{done}");
    assert_eq!(done["run"]["output"], json!({ "received": 5, "ok": true }));
    assert_eq!(done["run"]["workerId"], "worker-1");
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_and_hands_back_long_lived_agents() {
    let setup = Setup::new();
    let host = setup.start(&["--shutdown-grace-ms", "10000"]);
    let url = host.url.clone();
    let (_, spawned) = post(
        format!("{url}/spawn"),
        json!({ "agentType": "queue-worker" }),
    )
    .await;
    let name = spawned["workloadName"].as_str().expect("name").to_string();
    let (_, job) = post(
        format!("{url}/v1/jobs"),
        json!({ "agentId": "chaos", "input": { "mode": "sleep", "ms": 3000 } }),
    )
    .await;
    let job_id = job["job"]["id"].as_str().expect("id").to_string();
    wait_until(|| async {
        get(format!("{url}/v1/jobs/{job_id}")).await.1["job"]["status"] == "leased"
            && get(format!("{url}/v1/jobs/{name}")).await.1["job"]["status"] == "leased"
    })
    .await;
    let log = std::sync::Arc::clone(&host.log);
    let status = host.signal("TERM");
    assert!(status.success(), "exit status {status}");
    let log = log.lock().expect("log").join("\n");
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
    // While it waited it said what for, and how long it would.
    assert!(
        log.contains("still waiting for in-flight work to end")
            && log.contains(&job_id)
            && log.contains("grace_left_ms"),
        "{log}"
    );

    // The in-flight job was allowed to finish; the long-lived agent was handed back.
    let restarted = setup.start(&["--worker-only"]);
    let queue = drover_host::queue::Queue::open(
        &format!("file:{}", setup.data.path().join("queue.db").display()),
        None,
    )
    .await
    .expect("queue");
    let job = queue.get(&job_id).await.expect("get").expect("job");
    assert_eq!(job.status, drover_host::queue::JobStatus::Done);
    let agent = queue.get(&name).await.expect("get").expect("agent");
    assert_eq!(agent.attempts, 0);
    // The agent was asked to stop, finished its item and wound down, and its run was recorded
    // as handed back for the shutdown, not as completed.
    let store = drover_host::store::RunStore::open(
        &format!("file:{}", setup.data.path().join("runs.db").display()),
        None,
    )
    .await
    .expect("store");
    let runs = store
        .list_runs(&drover_host::store::RunFilter {
            job_id: Some(name.clone()),
            ..Default::default()
        })
        .await
        .expect("runs");
    let first = runs.iter().find(|r| r.attempt == 1).expect("first run");
    assert_eq!(
        first.error.as_ref().map(|e| e.tag.as_str()),
        Some("Shutdown"),
        "{first:?}"
    );
    let events = store.events(&first.id, 0, 1000).await.expect("events");
    assert!(
        events.iter().any(|e| e.kind == "worker_stopping"),
        "it stopped when asked: {events:?}"
    );
    drop(restarted);
}

/// The handlers are in place before the host says it listens, so a SIGTERM sent the moment it
/// does is a graceful stop, never the default death by signal.
#[test]
fn a_sigterm_the_moment_the_host_listens_stops_it_gracefully() {
    let setup = Setup::new();
    for _ in 0..5 {
        let host = setup.start(&[]);
        let log = std::sync::Arc::clone(&host.log);
        let status = host.signal("TERM");
        let log = log.lock().expect("log").join("\n");
        assert!(status.success(), "exit status {status}:\n{log}");
        assert!(log.contains("stopped"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_one_database_and_survive_a_sigkill() {
    let setup = Setup::new();
    let fast = [
        "--lease-ms",
        "1000",
        "--reclaim-interval-ms",
        "200",
        "--concurrency",
        "2",
    ];
    let a = setup.start(&[&fast[..], &["--worker-id", "host-a"]].concat());
    // A long-lived agent, running on host A before host B exists.
    let (status, spawned) = post(
        format!("{}/spawn", a.url),
        json!({ "agentType": "queue-worker" }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{spawned}");
    let agent = spawned["workloadName"].as_str().expect("name").to_string();
    let agent_url = format!("{}/v1/agents/{agent}", a.url);
    wait_until(|| {
        let agent_url = agent_url.clone();
        async move {
            let (_, view) = get(agent_url).await;
            view["agent"]["phase"] == "Running" && view["agent"]["job"]["leaseOwner"] == "host-a"
        }
    })
    .await;
    let b = setup.start(&[&fast[..], &["--worker-id", "host-b"]].concat());
    let url = b.url.clone();
    let mut ids = Vec::new();
    for n in 0..8 {
        let (status, job) = post(
            format!("{url}/v1/jobs"),
            json!({ "id": format!("slow-{n}"), "agentId": "chaos",
                    "input": { "mode": "sleep", "ms": 1500 }, "maxAttempts": 3 }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push(job["job"]["id"].as_str().expect("id").to_string());
    }
    // Wait until host A is running some jobs (their runs recorded as its own), then kill it
    // without warning. A job it has claimed but whose run is not yet recorded is only held in
    // the queue; it must still end up done, which the loop below checks for every job.
    let on_a = wait_for(|| async {
        let (_, runs) = get(format!("{url}/v1/runs?agentId=chaos&status=running")).await;
        let running: Vec<String> = runs["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["workerId"] == "host-a")
            .filter_map(|r| r["jobId"].as_str().map(str::to_string))
            .collect();
        (!running.is_empty()).then_some(running)
    })
    .await;
    let status = a.signal("KILL");
    assert!(!status.success());

    for id in &ids {
        let (status, view) = get(format!("{url}/v1/jobs/{id}/wait?timeoutMs=30000")).await;
        assert_eq!(status, StatusCode::OK, "{id}: {view}");
        assert_eq!(view["job"]["status"], "done", "{id}: {view}");
    }
    // Every claim of every job has exactly one run: the one that finished it, a success, and
    // before it the killed host's, lost (recorded by the survivor for claims host A died
    // holding before it recorded a run). The survivor writes those just after the job went
    // back to the queue, so they may trail its end.
    for id in &ids {
        wait_until(|| {
            let (job_url, runs_url) = (
                format!("{url}/v1/jobs/{id}"),
                format!("{url}/v1/runs?jobId={id}"),
            );
            async move {
                let (_, view) = get(job_url).await;
                let (_, runs) = get(runs_url).await;
                let mut runs: Vec<Value> = runs["runs"].as_array().cloned().unwrap_or_default();
                runs.sort_by_key(|r| r["attempt"].as_i64());
                let attempts: Vec<i64> =
                    runs.iter().filter_map(|r| r["attempt"].as_i64()).collect();
                let claims = view["job"]["leaseEpoch"].as_i64().unwrap_or(0);
                let statuses: Vec<&str> =
                    runs.iter().filter_map(|r| r["status"].as_str()).collect();
                let (last, earlier) = statuses.split_last().unwrap_or((&"", &[]));
                attempts == (1..=claims).collect::<Vec<_>>()
                    && *last == "success"
                    && earlier.iter().all(|s| *s == "lost")
            }
        })
        .await;
    }
    for id in &on_a {
        let (_, runs) = get(format!("{url}/v1/runs?jobId={id}")).await;
        let runs = runs["runs"].as_array().expect("runs");
        let winner: Vec<&Value> = runs.iter().filter(|r| r["status"] == "success").collect();
        assert_eq!(winner.len(), 1, "{id}: {runs:?}");
        assert_eq!(
            winner[0]["workerId"], "host-b",
            "{id} finished on the survivor"
        );
        assert!(
            runs.iter()
                .any(|r| r["workerId"] == "host-a" && r["status"] == "lost"),
            "{id}: the killed host's run is marked lost: {runs:?}"
        );
    }

    // The long-lived agent is restarted on the survivor as a new run of the same job, without
    // using up an attempt, and its new run heartbeats.
    let agent_url = format!("{url}/v1/agents/{agent}");
    let view = wait_for(|| {
        let agent_url = agent_url.clone();
        async move {
            let (_, view) = get(agent_url).await;
            let restarted = view["agent"]["phase"] == "Running"
                && view["agent"]["job"]["leaseOwner"] == "host-b"
                && view["agent"]["lastHeartbeatAt"].is_i64();
            restarted.then_some(view)
        }
    })
    .await;
    assert_eq!(view["agent"]["job"]["attempts"], 0, "{view}");
    assert_eq!(view["agent"]["job"]["restarts"], 1, "{view}");
    assert_eq!(view["agent"]["run"]["attempt"], 2, "{view}");
    assert_eq!(view["agent"]["run"]["workerId"], "host-b", "{view}");
    let (_, events) = get(format!("{agent_url}/events")).await;
    assert_eq!(events["runId"], view["agent"]["run"]["id"], "{events}");
    let (status, _) = call(reqwest::Method::DELETE, agent_url.clone(), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, done) = get(format!("{url}/v1/jobs/{agent}/wait?timeoutMs=30000")).await;
    assert_eq!(done["job"]["status"], "done", "{done}");
    assert_eq!(done["run"]["status"], "success", "{done}");
}

/// Polls `check` until it holds.
async fn wait_until<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(|| {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
}

/// `prune` deletes old finished runs (and their events) from the files `run` uses and says what
/// it removed; `run --retention` does the same in the background, first at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_retention_remove_old_finished_work() {
    use drover_host::store::{EventRecord, RunRecord, RunStatus, RunStore, WriteBatch};
    use std::sync::Arc;

    let setup = Setup::new();
    let storage_url = format!("file:{}", setup.data.path().join("runs.db").display());
    let queue_url = format!("file:{}", setup.data.path().join("queue.db").display());
    let store = RunStore::open(&storage_url, None).await.expect("store");
    let now = drover_host::time::now_ms();
    let write_run = |id: &'static str, ended_at: i64| {
        let store = store.clone();
        async move {
            let run = RunRecord {
                id: id.into(),
                job_id: None,
                agent_id: "echo".into(),
                attempt: 1,
                parent_run_id: None,
                status: RunStatus::Success,
                sandbox: Some("wasm"),
                long_lived: false,
                input: None,
                output: None,
                error_tag: None,
                error_message: None,
                started_at: ended_at - 10,
                ended_at: Some(ended_at),
                heartbeat_at: None,
                fuel_used: None,
                peak_memory: None,
                worker_id: None,
                usage: None,
                tenant_id: None,
                user_id: None,
            };
            let events = (1..=2)
                .map(|seq| EventRecord {
                    run_id: Arc::from(id),
                    seq,
                    ts: ended_at,
                    kind: "tick".into(),
                    payload: Arc::from(
                        serde_json::value::RawValue::from_string("{}".into()).expect("json"),
                    ),
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
    };
    let day = 86_400_000;
    write_run("old", now - 40 * day).await;
    write_run("recent", now - day).await;
    // A message left behind by a job that is gone goes too.
    {
        let queue = drover_host::queue::Queue::open(&queue_url, None)
            .await
            .expect("queue");
        let inbox = drover_host::inbox::Inbox::open(&queue, Default::default())
            .await
            .expect("inbox");
        let body = serde_json::value::RawValue::from_string("\"hi\"".into()).expect("json");
        inbox.post("a-pruned-job", &body).await.expect("post");
    }

    let prune = |extra: &[&str]| {
        let out = std::process::Command::new(EXE)
            .args([
                "prune",
                "--queue-url",
                &queue_url,
                "--storage-url",
                &storage_url,
            ])
            .args(extra)
            .output()
            .expect("run drover-host prune");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = prune(&["--older-than", "30d"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "removed 0 job(s), 1 run(s), 2 event(s), 1 message(s) and 0 tree budget(s) older than 30days"
    );
    assert!(store.get_run("old").await.expect("get").is_none());
    assert!(store.get_run("recent").await.expect("get").is_some());
    let (code, _, stderr) = prune(&["--older-than", "soon"]);
    assert_eq!(code, 1, "bad arguments exit with 1");
    assert!(stderr.contains("\"soon\" is not an age"), "{stderr}");

    // The host prunes at start-up with its retention.
    write_run("old-again", now - 3 * day).await;
    let host = setup.start(&["--retention", "2d"]);
    let deadline = Instant::now() + WAIT;
    while store.get_run("old-again").await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "{}", host.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.get_run("recent").await.expect("get").is_some());
    let log = std::sync::Arc::clone(&host.log);
    let status = host.signal("TERM");
    assert!(
        status.success(),
        "{status}\n{}",
        log.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    );
}

/// Runs `drover-host run` with `args` and `envs` until it exits (or is killed after a while);
/// returns its exit code and its stderr.
fn run_until_exit(args: &[String], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(EXE);
    command
        .arg("run")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start drover-host");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_non_loopback_listen_address_needs_a_token_or_an_explicit_opt_out() {
    let setup = Setup::new();
    let mut args = setup.args(&[]);
    args.extend(["--listen".to_string(), "0.0.0.0:0".to_string()]);
    let (code, err) = run_until_exit(&args, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("refusing to serve the API on 0.0.0.0:0 without a token")
            && err.contains("DROVER_API_TOKEN")
            && err.contains("--insecure-no-auth"),
        "{err}"
    );
    // A bad number of waiting runs is refused with the flag's name.
    let mut bad = setup.args(&[]);
    bad.extend(["--max-waiting-runs".to_string(), "lots".to_string()]);
    let (code, err) = run_until_exit(&bad, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--max-waiting-runs"), "{err}");
    // With a token, or with the opt-out, it starts (and is stopped here once it listens).
    for (extra, envs) in [
        (vec!["--insecure-no-auth"], vec![]),
        (vec![], vec![("DROVER_API_TOKEN", "t0ken")]),
    ] {
        let mut args = setup.args(&extra);
        args.extend(["--listen".to_string(), "0.0.0.0:0".to_string()]);
        let mut command = std::process::Command::new(EXE);
        command
            .arg("run")
            .args(&args)
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("start");
        let stderr = child.stderr.take().expect("stderr");
        let listening = std::io::BufRead::lines(std::io::BufReader::new(stderr))
            .map_while(Result::ok)
            .any(|line| line.contains("listening on"));
        let _ = child.kill();
        let _ = child.wait();
        assert!(listening, "{extra:?} {envs:?}: never listened");
    }
}

fn sha256_hex(path: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).expect("read component"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_follows_the_component_digest_and_brings_only_allowed_variables() {
    // `echo.wasm` here is the chaos component: the id of a trusted agent, other contents.
    let agents = AgentDir::new();
    agents.add("echo", CHAOS, None).add("chaos", CHAOS, None);
    let setup = Setup {
        agents,
        data: tempfile::tempdir().expect("temp dir"),
    };
    let echo_pin = format!("echo@sha256:{}", sha256_hex(ECHO));
    let chaos_digest = sha256_hex(CHAOS);

    // Trust by a bare id is refused, with the digest to pin it to.
    let (code, err) = run_until_exit(&setup.args(&["--trusted", "chaos"]), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("not pinned to a digest")
            && err.contains(&format!("chaos@sha256:{chaos_digest}")),
        "{err}"
    );

    let trusted = format!("{echo_pin},chaos@sha256:{chaos_digest}");
    let host = HostProcess::start(
        EXE,
        &setup.args(&[
            "--trusted",
            &trusted,
            "--trusted-env",
            "DROVER_TEST_ALLOWED,DROVER_TEST_UNSET",
        ]),
        &[
            ("DROVER_API_TOKEN", "host-secret"),
            ("DROVER_TEST_ALLOWED", "visible"),
            ("DROVER_TEST_HIDDEN", "hidden"),
        ],
    );
    let client = reqwest::Client::new();
    let run = |agent: &'static str| {
        let client = client.clone();
        let url = host.url.clone();
        async move {
            let created: Value = client
                .post(format!("{url}/v1/jobs"))
                .bearer_auth("host-secret")
                .json(&json!({ "agentId": agent, "input": { "mode": "env" } }))
                .send()
                .await
                .expect("enqueue")
                .json()
                .await
                .expect("json");
            let id = created["job"]["id"].as_str().expect("id").to_string();
            client
                .get(format!("{url}/v1/jobs/{id}/wait?timeoutMs=30000"))
                .bearer_auth("host-secret")
                .send()
                .await
                .expect("wait")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    // The impostor runs sandboxed: nothing of the host's environment.
    let impostor = run("echo").await;
    assert_eq!(impostor["job"]["status"], "done", "{impostor}");
    assert_eq!(impostor["run"]["sandbox"], "wasm", "{impostor}");
    assert!(
        impostor["run"]["output"]
            .get("DROVER_TEST_ALLOWED")
            .is_none()
    );
    // The pinned component is trusted, and sees the allowed variable, not the host's secrets.
    let trusted = run("chaos").await;
    assert_eq!(trusted["job"]["status"], "done", "{trusted}");
    assert_eq!(trusted["run"]["sandbox"], "none", "{trusted}");
    let env = &trusted["run"]["output"];
    assert_eq!(env["DROVER_TEST_ALLOWED"], "visible", "{env}");
    for hidden in [
        "DROVER_API_TOKEN",
        "DROVER_TEST_HIDDEN",
        "DROVER_TEST_UNSET",
        "PATH",
    ] {
        assert!(env.get(hidden).is_none(), "{hidden} is visible: {env}");
    }
    // `drover-host types` shows the digests to pin.
    let out = std::process::Command::new(EXE)
        .args(["types"])
        .env("DROVER_URL", &host.url)
        .env("DROVER_API_TOKEN", "host-secret")
        .output()
        .expect("agents");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("sha256:{chaos_digest}")), "{text}");
}

/// `enqueue --batch FILE` posts a file of JSON lines in batches of 1000, idempotent by id, and
/// names a bad line before it sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_batch_posts_a_file_of_jobs() {
    let setup = Setup::new();
    let host = setup.start(&[]);
    let file = setup.data.path().join("jobs.jsonl");
    let lines: Vec<String> = (0..1500)
        .map(|n| {
            json!({ "id": format!("batch-{n}"), "agentId": "echo", "input": { "n": n } })
                .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).expect("jobs file");
    let path = file.display().to_string();
    let (code, out, err) = cli(&host.url, &["enqueue", "--batch", &path]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "queued 1500, existing 0");
    let (code, out, err) = cli(&host.url, &["enqueue", "--batch", &path, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!({ "queued": 0, "existing": 1500 })
    );
    let (status, done) = get(format!(
        "{}/v1/jobs/batch-1499/wait?timeoutMs=30000",
        host.url
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["run"]["output"]["received"], 1499);

    std::fs::write(
        &file,
        "{\"agentId\": \"echo\", \"id\": \"never\"}\nnot json\n",
    )
    .expect("bad file");
    let (code, _, err) = cli(&host.url, &["enqueue", "--batch", &path]);
    assert_ne!(code, 0);
    assert!(err.contains("line 2"), "{err}");
    let (status, _) = get(format!("{}/v1/jobs/never", host.url)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nothing of a bad file is sent"
    );
}

/// Runs `drover-host new` with `args`.
fn scaffold(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(EXE)
        .arg("new")
        .args(args)
        .output()
        .expect("run drover-host new");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_scaffolds_agents_that_build_and_run() {
    let setup = Setup::new();
    let agents = setup.agents.path().display().to_string();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf();

    // Names that are not ids, directories that are not there, and Rust without a workspace
    // are refused, saying what to do.
    let (code, _, err) = scaffold(&["Greeter", "--agents", &agents]);
    assert_eq!(code, 1);
    assert!(err.contains("lowercase letters"), "{err}");
    let (code, _, err) = scaffold(&["greeter", "--agents", "/nonexistent/agents"]);
    assert_eq!(code, 1);
    assert!(err.contains("--agents"), "{err}");
    let (code, _, err) = scaffold(&["greeter-rs", "--agents", &agents]);
    assert_eq!(code, 1);
    assert!(err.contains("--lang ts"), "{err}");
    let (code, _, err) = scaffold(&["greeter", "--lang", "go", "--agents", &agents]);
    assert_ne!(code, 0);
    assert!(err.contains("rust") && err.contains("py"), "{err}");

    // A Rust agent joins the workspace, next to the members it had.
    std::fs::write(
        setup.agents.path().join("Cargo.toml"),
        "[workspace]\nmembers = [\"echo\"]\n",
    )
    .expect("workspace");
    let (code, out, err) = scaffold(&["greeter-rs", "--agents", &agents]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("--target wasm32-wasip2"), "{out}");
    let workspace =
        std::fs::read_to_string(setup.agents.path().join("Cargo.toml")).expect("workspace");
    assert!(
        workspace.contains("members = [\"echo\", \"greeter-rs\"]"),
        "{workspace}"
    );
    let crate_toml =
        std::fs::read_to_string(setup.agents.path().join("greeter-rs/Cargo.toml")).expect("crate");
    assert!(
        crate_toml.contains("crate-type = [\"cdylib\"]"),
        "{crate_toml}"
    );
    let (code, _, err) = scaffold(&["greeter-rs", "--agents", &agents]);
    assert_eq!(code, 1, "a second time");
    assert!(err.contains("exists already"), "{err}");

    if !drover_test_support::other_languages("new_scaffolds_agents_that_build_and_run") {
        return;
    }
    // TypeScript and Python agents, built and installed with `drover-host build`.
    let (code, out, err) = scaffold(&["greeter-ts", "--lang", "ts", "--agents", &agents]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("drover-host build greeter-ts") && out.contains("guest-sdk/js/build.mjs"),
        "{out}"
    );
    let (code, out, err) = scaffold(&["greeter-py", "--lang", "py", "--agents", &agents]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("drover_sdk.build"), "{out}");
    let (code, out, err) = drover_build(&[
        "greeter-ts",
        "greeter-py",
        "--agents",
        &agents,
        "--sdk",
        &repo.join("guest-sdk").display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for (agent, language) in [("greeter-ts", "TypeScript"), ("greeter-py", "Python")] {
        assert!(
            out.contains(&format!("built {agent} ({language})")),
            "{out}"
        );
        assert!(setup.agents.path().join(format!("{agent}.wasm")).is_file());
    }

    let host = setup.start(&[]);
    for agent in ["greeter-ts", "greeter-py"] {
        let (code, out, err) = cli(
            &host.url,
            &["enqueue", agent, r#"{"name": "Ada"}"#, "--wait"],
        );
        assert_eq!(code, 0, "{agent}: {out}{err}\n{}", host.log_text());
        assert!(
            out.contains(r#"{"greeting":"Hello, Ada!"}"#),
            "{agent}: {out}"
        );
        let (code, out, _) = cli(&host.url, &["enqueue", agent, r#"{"name": ""}"#, "--wait"]);
        assert_eq!(code, 2, "{agent}: {out}");
        assert!(out.contains("EmptyName"), "{agent}: {out}");
    }
}

/// Runs `drover-host build` with `args`, with the SDKs' build tools the test build installed.
fn drover_build(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(EXE)
        .arg("build")
        .args(args)
        .env("DROVER_JS_BUILD", drover_test_support::JS_BUILD)
        .env("DROVER_PYTHON", drover_test_support::PYTHON)
        .output()
        .expect("run drover-host build");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A workspace of two crates with no dependencies: `plain`, a `cdylib` that becomes a
/// component, and `no-lib`, which does not.
fn tiny_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "Cargo.toml",
        "[workspace]\nmembers = [\"plain\", \"no-lib\"]\nresolver = \"3\"\n",
    );
    write(
        "plain/Cargo.toml",
        "[package]\nname = \"plain\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n",
    );
    write(
        "plain/src/lib.rs",
        "#[unsafe(no_mangle)]\npub extern \"C\" fn answer() -> u32 {\n    42\n}\n",
    );
    write(
        "no-lib/Cargo.toml",
        "[package]\nname = \"no-lib\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
    );
    write("no-lib/src/lib.rs", "pub fn answer() -> u32 {\n    42\n}\n");
    dir
}

/// `drover-host build` compiles Rust agents for wasm32-wasip2 and installs them by renaming
/// into place; a crate that makes no component is told what to add, and `--watch` builds again
/// when a source changes.
#[test]
fn build_installs_rust_agents_and_rebuilds_them_on_change() {
    use std::io::BufRead;

    let workspace = tiny_workspace();
    let agents = workspace.path().display().to_string();
    let (code, out, err) = drover_build(&["no-lib", "--agents", &agents]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("crate-type = [\"cdylib\"]") && err.contains("no-lib/Cargo.toml"),
        "{err}"
    );
    let (code, _, err) = drover_build(&["ghost", "--agents", &agents]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no agent \"ghost\"") && err.contains("plain"),
        "{err}"
    );

    let (code, out, err) = drover_build(&["plain", "--agents", &agents, "--debug"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("built plain (Rust)"), "{out}");
    let installed = workspace.path().join("plain.wasm");
    let first = std::fs::read(&installed).expect("installed");
    assert!(first.starts_with(b"\0asm"), "a WebAssembly file");
    let leftovers: Vec<_> = std::fs::read_dir(workspace.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Watching: a change to the crate's source builds it again.
    let mut watcher = std::process::Command::new(EXE)
        .args(["build", "plain", "--debug", "--watch", "--agents", &agents])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("build --watch");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = watcher.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |what: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return,
                Ok(_) => {}
                Err(e) => panic!("no line with {what:?}: {e}"),
            }
        }
    };
    wait_line("watching");
    std::fs::write(
        workspace.path().join("plain/src/lib.rs"),
        "#[unsafe(no_mangle)]\npub extern \"C\" fn answer() -> u32 {\n    43\n}\n",
    )
    .expect("edit");
    wait_line("changed: plain");
    wait_line("built plain (Rust)");
    let _ = watcher.kill();
    let _ = watcher.wait();
    let second = std::fs::read(&installed).expect("installed");
    assert_ne!(first, second, "the new build was installed");
}

#[test]
fn a_taken_port_and_an_empty_agent_directory_say_what_to_do() {
    let setup = Setup::new();
    let first = setup.start(&[]);
    let address = first.url.trim_start_matches("http://").to_string();

    // A second host on the same address stops at once, before it claims anything, and says
    // which address and how to change it; its output is plain, with no colour codes.
    let other = tempfile::tempdir().expect("dir");
    let mut args = setup.args(&[]);
    let queue = args
        .iter()
        .position(|a| a == "--queue-url")
        .expect("a queue URL")
        + 1;
    args[queue] = format!("file:{}", other.path().join("queue.db").display());
    args.extend(["--listen".to_string(), address.clone()]);
    let (code, err) = run_until_exit(&args, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {address}"))
            && err.contains("--listen")
            && err.contains("DROVER_LISTEN"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "colour codes in {err:?}");
    assert!(
        !other.path().join("queue.db").exists(),
        "it opened its queue before it knew it could serve"
    );

    // A host on an agent directory that is not there creates it and warns, with its absolute
    // path; the databases' paths are absolute too.
    let missing = other.path().join("no-agents-here");
    let args = vec![
        "--agents".to_string(),
        missing.display().to_string(),
        "--queue-url".to_string(),
        "file:relative-queue.db".to_string(),
        "--storage-url".to_string(),
        format!("file:{}", other.path().join("runs.db").display()),
        "--data-dir".to_string(),
        other.path().join("var").display().to_string(),
        "--listen".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    let mut command = std::process::Command::new(EXE);
    command
        .arg("run")
        .args(&args)
        .current_dir(other.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let lines: Vec<String> = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .take_while(|line| !line.contains("listening on"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let log = lines.join("\n");
    assert!(
        log.contains("holds no agents") && log.contains("it did not exist"),
        "{log}"
    );
    assert!(log.contains(&missing.display().to_string()), "{log}");
    assert!(
        log.contains(&format!(
            "file:{}",
            other.path().join("relative-queue.db").display()
        )),
        "{log}"
    );
    drop(first);
}

/// The embedding example (`host/examples/server.rs`), as `cargo test` builds it: beside a
/// running host it opens databases of its own, runs its job, and serves the API and the viewer
/// on its own port; Ctrl-C stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_runs_beside_a_running_host() {
    use std::io::BufRead;

    // target/<profile>/deps/<this test> → target/<profile>/examples/server
    let example = std::env::current_exe()
        .expect("this test")
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the profile directory")
        .join("examples/server");
    if !example.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing: `cargo test --workspace` builds it",
            example.display()
        );
        eprintln!(
            "skipping: {} is not built (`cargo test --workspace` builds it)",
            example.display()
        );
        return;
    }
    let setup = Setup::new();
    let host = setup.start(&[]);
    let cwd = tempfile::tempdir().expect("dir");
    std::fs::create_dir(cwd.path().join("agents")).expect("agents");
    std::fs::copy(ECHO, cwd.path().join("agents/math.wasm")).expect("a wasm agent");
    let mut child = std::process::Command::new(&example)
        .arg("127.0.0.1:0")
        .current_dir(cwd.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run the example");
    let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut printed = Vec::new();
    let mut url = None;
    for line in stdout.lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("serving the API and the viewer on ") {
            url = rest
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches('/').to_string());
            break;
        }
        printed.push(line);
    }
    let url = url.unwrap_or_else(|| panic!("the example did not serve: {printed:?}"));
    assert!(printed.contains(&"status: done".to_string()), "{printed:?}");
    let output = printed
        .iter()
        .find_map(|l| l.strip_prefix("output: "))
        .unwrap_or_else(|| panic!("{printed:?}"));
    assert_eq!(
        serde_json::from_str::<Value>(output).expect("json"),
        json!({ "received": 42, "ok": true })
    );

    let (status, types) = get(format!("{url}/v1/types")).await;
    assert_eq!(status, StatusCode::OK, "{types}");
    let ids: Vec<&str> = types["types"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(ids.contains(&"echo") && ids.contains(&"math"), "{types}");
    let page = reqwest::get(format!("{url}/")).await.expect("viewer");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("html").contains("<html"));
    assert!(cwd.path().join("var/example/queue.db").exists());
    // The host beside it is untouched, and still works.
    let (code, out, err) = cli(&host.url, &["enqueue", "echo", r#"{"n": 1}"#, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, jobs) = get(format!("{}/v1/jobs", host.url)).await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");

    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
}
