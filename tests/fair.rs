//! Fair shares across real hosts: two `drover-host` processes on one pair of database files,
//! with `[fair-share]` in their configuration, running the chaos agent's sleeps. How many of a
//! tenant's jobs ran at once is measured from the runs' recorded start and end times.

use std::path::Path;

use drover_test_support::{AgentDir, CHAOS, HostProcess, WAIT};
use reqwest::StatusCode;
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// Starts a host named `worker_id` on the databases in `dir`, with `config` as its
/// `drover.toml` and four slots.
fn host(agents: &AgentDir, dir: &Path, config: &Path, worker_id: &str) -> HostProcess {
    let mut args = drover_test_support::host_args(agents.path(), dir, worker_id, Some(config));
    args.extend(["--concurrency", "4", "--worker-id", worker_id].map(String::from));
    HostProcess::start(EXE, &args, &[])
}

async fn http(method: reqwest::Method, url: String, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The most intervals `(start, end)` that overlap at one instant.
fn most_at_once(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // An end and a start at the same millisecond do not overlap.
    edges.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_running_holds_across_two_hosts_and_the_small_tenant_runs_early() {
    // Each host has its own copy of the chaos agent under its own name, and a host claims only
    // the jobs of agents it has: so both hosts run big's jobs whatever the timing, and the cap
    // can only hold if it holds across them.
    let limits = "[limits]\nfuel = \"unlimited\"\ntimeout-ms = \"none\"\n";
    let (agents_a, agents_b) = (AgentDir::new(), AgentDir::new());
    agents_a.add("chaos-a", CHAOS, Some(limits));
    agents_b.add("chaos-b", CHAOS, Some(limits));
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("drover.toml");
    std::fs::write(
        &config,
        "[fair-share]\nkey = \"tenant\"\nmax-running = 2\n\n\
         [fair-share.max-running-for]\nsmall = 1\n",
    )
    .expect("config");
    let a = host(&agents_a, dir.path(), &config, "host-a");
    let b = host(&agents_b, dir.path(), &config, "host-b");

    // Tenant big's backlog goes in first, then tenant small's: eight slots in all (four a host,
    // so four of big's at once if each host kept its own count), and without fair shares small
    // would wait behind big.
    let mut jobs = Vec::new();
    for i in 0..10 {
        jobs.push(("big", format!("big-{i}")));
    }
    for i in 0..3 {
        jobs.push(("small", format!("small-{i}")));
    }
    // Half to each host's agent, in one batch per host (so that small's jobs are queued with
    // big's, however slowly requests are answered), each through its own host so that it is
    // woken to claim.
    for (url, agent, parity) in [(&a.url, "chaos-a", 0), (&b.url, "chaos-b", 1)] {
        let batch: Vec<Value> = jobs
            .iter()
            .enumerate()
            .filter(|(n, _)| n % 2 == parity)
            .map(|(_, (tenant, id))| {
                json!({ "id": id, "agentId": agent, "tenantId": tenant,
                        "input": { "mode": "sleep", "ms": 300 } })
            })
            .collect();
        let (status, body) = http(
            reqwest::Method::POST,
            format!("{url}/v1/jobs/batch"),
            Some(json!({ "jobs": batch })),
        )
        .await;
        assert!(status.is_success(), "{status}: {body}");
    }

    let mut runs: Vec<(String, Value)> = Vec::new();
    for (tenant, id) in &jobs {
        let (status, done) = http(
            reqwest::Method::GET,
            format!("{}/v1/jobs/{id}/wait?timeoutMs={}", b.url, WAIT.as_millis()),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{done}");
        assert_eq!(done["job"]["status"], "done", "{done}");
        runs.push((tenant.to_string(), done["run"].clone()));
    }
    let interval = |run: &Value| {
        let start = run["startedAt"].as_i64().expect("startedAt");
        let end = run["endedAt"].as_i64().expect("endedAt");
        (start, end)
    };
    let of = |tenant: &str| -> Vec<(i64, i64)> {
        runs.iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, run)| interval(run))
            .collect()
    };
    let (big, small) = (of("big"), of("small"));
    assert_eq!(
        most_at_once(&big),
        2,
        "big's cap, used and never passed: {big:?}"
    );
    assert_eq!(most_at_once(&small), 1, "small's own cap: {small:?}");
    // Both hosts ran big's jobs (each ran its own agent's): the cap held across them.
    let hosts: std::collections::BTreeSet<&str> = runs
        .iter()
        .filter(|(t, _)| t == "big")
        .filter_map(|(_, run)| run["workerId"].as_str())
        .collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    // Small's jobs did not wait for big's backlog: each started before big's last one did.
    let big_last_start = big.iter().map(|&(start, _)| start).max().unwrap_or(0);
    for (start, _) in &small {
        assert!(*start < big_last_start, "small {small:?} vs big {big:?}");
    }
    drop(a);
    drop(b);
}

#[test]
fn a_bad_fair_share_section_stops_the_host_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("drover.toml");
    std::fs::write(&config, "[fair-share]\nkey = \"customer\"\n").expect("config");
    let output = std::process::Command::new(EXE)
        .args(["run", "--agents"])
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--queue-url", ":memory:", "--storage-url", ":memory:"])
        .arg("--config")
        .arg(&config)
        .env_remove("DROVER_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("drover.toml") && stderr.contains("\"customer\" is not one of"),
        "{stderr}"
    );
}
