//! Agents that drive agents: real `drover-host` processes over real HTTP, running the real
//! `spawner` and `chain-worker` components, which spawn, wait for, stop and list their children
//! through `drover:agent/agents`. The policy's refusals, the round trip of a spawn and a wait,
//! a parent that waits at `--concurrency 1`, the cascades of cancel and stop, and two hosts on
//! one database, one of which is killed under a parent.

use drover_test_support::{
    AgentDir, CHAIN_WORKER, ECHO, HostProcess, SPAWNER, host_args, wait_for,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// The spawner's policy in these tests.
const SPAWNER_MANIFEST: &str = r#"
[children]
allowed = ["echo", "spawner", "chain-worker", "ghost"]
max-depth = 2
max-fan-out = 3
max-total = 4
"#;

/// An agent directory with echo, spawner and chain-worker (with its manifest from `agents/`),
/// and a place for the databases.
struct Setup {
    agents: AgentDir,
    data: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let agents = AgentDir::new();
        agents
            .add("echo", ECHO, None)
            .add("spawner", SPAWNER, Some(SPAWNER_MANIFEST))
            .add(
                "chain-worker",
                CHAIN_WORKER,
                Some(include_str!("../agents/chain-worker.toml")),
            );
        Self {
            agents,
            data: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A host named `name` (its worker id and data directory) with `extra` arguments.
    fn start(&self, name: &str, extra: &[&str]) -> HostProcess {
        let mut args = host_args(self.agents.path(), self.data.path(), name, None);
        args.extend(["--worker-id".to_string(), name.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        HostProcess::start(EXE, &args, &[])
    }
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

/// Enqueues `agent` with `input`; returns the job id.
async fn enqueue(url: &str, agent: &str, input: Value) -> String {
    let (status, created) = post(
        format!("{url}/v1/jobs"),
        json!({ "agentId": agent, "input": input }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["job"]["id"].as_str().expect("id").to_string()
}

/// The job once finished.
async fn finished(url: &str, id: &str) -> Value {
    let (status, view) = get(format!("{url}/v1/jobs/{id}/wait?timeoutMs=30000")).await;
    assert_eq!(status, StatusCode::OK, "{id}: {view}");
    view
}

/// The jobs of the tree of `root`, by depth.
async fn tree(url: &str, root: &str) -> Vec<Value> {
    let (status, jobs) = get(format!("{url}/v1/jobs?rootJobId={root}")).await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    let mut jobs = jobs["jobs"].as_array().expect("jobs").clone();
    jobs.sort_by_key(|j| j["depth"].as_i64());
    jobs
}

/// The kinds and payloads of a run's events.
async fn events(url: &str, run_id: &str) -> Vec<(String, Value)> {
    let (status, events) = get(format!("{url}/v1/runs/{run_id}/events")).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("").to_string(),
                e["payload"].clone(),
            )
        })
        .collect()
}

/// Waits until the tree of `root` has `n` jobs, all of them running; returns them by depth.
async fn running_tree(url: &str, root: &str, n: usize) -> Vec<Value> {
    wait_for(|| async {
        let jobs = tree(url, root).await;
        (jobs.len() == n && jobs.iter().all(|j| j["status"] == "leased")).then_some(jobs)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawns_outside_the_policy_are_refused_recorded_and_enqueue_nothing() {
    let setup = Setup::new();
    // One CPU slot: children cannot start while their parent computes.
    let host = setup.start("host", &["--concurrency", "1"]);
    let url = &host.url;

    // An agent the manifest does not allow; then more children than max-fan-out.
    let echo = |n: i64| json!({ "agentId": "echo", "input": { "n": n } });
    let parent = enqueue(
        url,
        "spawner",
        json!({ "children": [
            { "agentId": "chain-worker-2", "input": {} },
            echo(1), echo(2), echo(3), echo(4),
        ] }),
    )
    .await;
    let view = finished(url, &parent).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    let spawned = view["run"]["output"]["spawned"]
        .as_array()
        .expect("spawned");
    assert_eq!(spawned[0]["tag"], "ChildNotAllowed", "{view}");
    assert!(
        spawned[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("echo, spawner, chain-worker")),
        "{view}"
    );
    assert!(spawned[1..4].iter().all(|s| s["id"].is_string()), "{view}");
    assert_eq!(spawned[4]["tag"], "MaxFanOut", "{view}");
    let (_, children) = get(format!("{url}/v1/jobs/{parent}/children")).await;
    let children = children["jobs"].as_array().expect("children");
    assert_eq!(
        children.len(),
        3,
        "refused spawns enqueue nothing: {children:?}"
    );
    for (child, spawn) in children.iter().zip(&spawned[1..4]) {
        assert_eq!(child["id"], spawn["id"]);
        assert_eq!(child["parentJobId"], parent.as_str());
        assert_eq!(child["rootJobId"], parent.as_str());
        assert_eq!(child["depth"], 1);
    }
    let run_id = view["run"]["id"].as_str().expect("run id");
    let events = events(url, run_id).await;
    let refused: Vec<&Value> = events
        .iter()
        .filter(|(kind, _)| kind == "child_refused")
        .map(|(_, payload)| payload)
        .collect();
    assert_eq!(refused.len(), 2, "{events:?}");
    assert_eq!(refused[0]["agentId"], "chain-worker-2");
    assert_eq!(refused[0]["tag"], "ChildNotAllowed");
    assert_eq!(refused[1]["tag"], "MaxFanOut");
    let spawned_events: Vec<&Value> = events
        .iter()
        .filter(|(kind, _)| kind == "child_spawned")
        .map(|(_, payload)| payload)
        .collect();
    assert_eq!(spawned_events.len(), 3, "{events:?}");
    assert_eq!(spawned_events[0]["childJobId"], spawned[1]["id"]);
    assert_eq!(spawned_events[0]["agentId"], "echo");

    // Too deep: spawner (0) → spawner (1) → spawner (2) → a child at depth 3. Every parent
    // waits for its child, at one CPU slot.
    let deepest = json!({ "children": [echo(7)], "wait": true });
    let middle = json!({ "children": [{ "agentId": "spawner", "input": deepest }], "wait": true });
    let top = json!({ "children": [{ "agentId": "spawner", "input": middle }], "wait": true });
    let root = enqueue(url, "spawner", top).await;
    let view = finished(url, &root).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    let child = &view["run"]["output"]["outcomes"][0];
    assert_eq!(child["status"], "done", "{view}");
    let grandchild = &child["output"]["outcomes"][0];
    assert_eq!(grandchild["status"], "done", "{view}");
    assert_eq!(
        grandchild["output"]["spawned"][0]["tag"], "MaxDepth",
        "{view}"
    );
    assert_eq!(tree(url, &root).await.len(), 3);

    // Too many in one tree (max-total 4): two children that each spawn two more; whichever
    // spawns second finds the tree full.
    let two = json!({ "children": [echo(1), echo(2)], "wait": true });
    let root = enqueue(
        url,
        "spawner",
        json!({ "children": [
            { "agentId": "spawner", "input": two },
            { "agentId": "spawner", "input": two },
        ], "wait": true }),
    )
    .await;
    let view = finished(url, &root).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    let grandchildren: Vec<&Value> = view["run"]["output"]["outcomes"]
        .as_array()
        .expect("outcomes")
        .iter()
        .flat_map(|o| o["output"]["spawned"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(grandchildren.len(), 4, "{view}");
    assert_eq!(
        grandchildren.iter().filter(|s| s["id"].is_string()).count(),
        2,
        "{view}"
    );
    assert_eq!(
        grandchildren
            .iter()
            .filter(|s| s["tag"] == "MaxTotal")
            .count(),
        2,
        "{view}"
    );
    assert_eq!(
        tree(url, &root).await.len(),
        5,
        "the root and four below it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_waits_at_concurrency_one_gets_its_childs_output() {
    let setup = Setup::new();
    let host = setup.start("host", &["--concurrency", "1"]);
    let url = &host.url;

    let parent = enqueue(
        url,
        "spawner",
        json!({ "children": [
            { "agentId": "echo", "input": { "n": 5 } },
            { "agentId": "ghost", "input": {} },
        ], "wait": true, "list": true }),
    )
    .await;
    let view = finished(url, &parent).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    let output = &view["run"]["output"];
    let child_id = output["spawned"][0]["id"].as_str().expect("child id");
    assert_eq!(
        output["outcomes"][0],
        json!({ "status": "done", "output": { "received": 5, "ok": true }, "error": null }),
        "{view}"
    );
    assert_eq!(output["spawned"][1]["tag"], "UnknownAgent", "{view}");
    assert_eq!(output["listed"].as_array().map(Vec::len), Some(1), "{view}");
    assert_eq!(output["listed"][0]["id"], child_id, "{view}");
    assert_eq!(output["listed"][0]["agentId"], "echo", "{view}");
    let child = finished(url, child_id).await;
    assert_eq!(child["job"]["parentJobId"], parent.as_str(), "{child}");
    assert_eq!(child["job"]["parentRunId"], view["run"]["id"], "{child}");
    assert_eq!(child["job"]["rootJobId"], parent.as_str(), "{child}");
    assert_eq!(child["job"]["depth"], 1, "{child}");
    assert_eq!(view["job"]["depth"], 0, "{view}");
    assert_eq!(view["job"]["rootJobId"], parent.as_str(), "{view}");

    // The policy is shown with the agent, and an allowed agent that is not loaded is a load
    // problem.
    let (_, templates) = get(format!("{url}/v1/templates")).await;
    let spawner = templates["templates"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == "spawner"))
        .expect("spawner template");
    assert_eq!(
        spawner["children"],
        json!({ "allowed": ["echo", "spawner", "chain-worker", "ghost"], "maxDepth": 2,
                "maxFanOut": 3, "maxTotal": 4 }),
        "{spawner}"
    );
    let problems = templates["problems"].to_string();
    assert!(
        problems.contains(r#"may spawn agent \"ghost\""#),
        "{problems}"
    );

    // Another run's child is not this run's to wait for.
    let other = enqueue(url, "spawner", json!({ "waitFor": child_id })).await;
    let view = finished(url, &other).await;
    assert_eq!(
        view["run"]["output"]["foreign"]["tag"], "NotFound",
        "{view}"
    );

    // Children of an unknown job are not found; a tree of one is its root.
    let (status, _) = get(format!("{url}/v1/jobs/no-such-job/children")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let solo = tree(url, &other).await;
    assert_eq!(solo.len(), 1);
    assert_eq!(solo[0]["id"], other.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_stop_go_down_the_tree_and_a_parents_end_stops_its_children() {
    let setup = Setup::new();
    let host = setup.start("host", &[]);
    let url = &host.url;

    // spawner (0) waits for a chain worker (1), which spawns a chain worker (2), which may
    // spawn no further (the chain worker's max-depth is 2).
    let chain = json!({ "agentId": "chain-worker", "input": { "intervalMs": 50 } });
    let root = enqueue(url, "spawner", json!({ "children": [chain], "wait": true })).await;
    let jobs = running_tree(url, &root, 3).await;
    let (status, _) = post(format!("{url}/v1/jobs/{root}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for job in &jobs {
        let id = job["id"].as_str().expect("id");
        let view = finished(url, id).await;
        assert_eq!(view["job"]["status"], "failed", "{view}");
        assert_eq!(view["job"]["resultError"]["tag"], "Cancelled", "{view}");
    }

    // A parent that stops its running child: the chain worker stops when asked, so it is
    // completed, and its own child is stopped with it (cancelled if it had not started yet).
    let root = enqueue(
        url,
        "spawner",
        json!({ "children": [chain], "stop": true, "wait": true }),
    )
    .await;
    let view = finished(url, &root).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    let outcome = &view["run"]["output"]["outcomes"][0];
    assert_eq!(outcome["status"], "done", "{view}");
    assert!(outcome["output"]["iterations"].is_u64(), "{view}");
    let jobs = tree(url, &root).await;
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let leaf = finished(url, jobs[2]["id"].as_str().expect("id")).await;
    let status = &leaf["job"]["status"];
    assert!(status == "done" || status == "cancelled", "{leaf}");

    // A stop requested of a waiting parent ends its wait early, with the child still running;
    // the parent returns, and the stop went down its tree too: the chain is Completed.
    let root = enqueue(
        url,
        "spawner",
        json!({ "children": [chain], "wait": true, "timeoutMs": 600_000 }),
    )
    .await;
    let jobs = running_tree(url, &root, 3).await;
    let (status, _) = post(format!("{url}/v1/jobs/{root}/stop"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let view = finished(url, &root).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    assert_eq!(
        view["run"]["output"]["outcomes"][0]["status"], "running",
        "{view}"
    );
    for job in &jobs[1..] {
        let view = finished(url, job["id"].as_str().expect("id")).await;
        assert_eq!(view["job"]["status"], "done", "{view}");
        assert_eq!(view["job"]["stopRequested"], true, "{view}");
    }

    // No orphans: a parent that returns without waiting leaves a long-lived child, which
    // would never end on its own; its run's end stops it (Completed).
    let root = enqueue(url, "spawner", json!({ "children": [chain] })).await;
    let view = finished(url, &root).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    let child = view["run"]["output"]["spawned"][0]["id"]
        .as_str()
        .expect("child")
        .to_string();
    let view = finished(url, &child).await;
    let status = &view["job"]["status"];
    assert!(status == "done" || status == "cancelled", "{view}");
    assert_eq!(view["job"]["stopRequested"], status == "done", "{view}");
}

/// Host A (`--max-agents 1`) runs the root chain worker; host B, started after, runs the rest
/// of the chain. Returns both hosts and the chain's jobs, by depth.
async fn chain_across_two_hosts(
    setup: &Setup,
    extra: &[&str],
) -> (HostProcess, HostProcess, Vec<Value>) {
    let a = setup.start("host-a", &[extra, &["--max-agents", "1"]].concat());
    let root = enqueue(&a.url, "chain-worker", json!({ "intervalMs": 50 })).await;
    wait_for(|| async {
        let (_, view) = get(format!("{}/v1/jobs/{root}", a.url)).await;
        (view["job"]["leaseOwner"] == "host-a").then_some(())
    })
    .await;
    let b = setup.start("host-b", extra);
    let jobs = running_tree(&b.url, &root, 3).await;
    let owners: Vec<&str> = jobs
        .iter()
        .map(|j| j["leaseOwner"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(owners, ["host-a", "host-b", "host-b"], "{jobs:?}");
    let depths: Vec<i64> = jobs.iter().filter_map(|j| j["depth"].as_i64()).collect();
    assert_eq!(depths, [0, 1, 2]);
    assert_eq!(jobs[1]["parentJobId"], root.as_str());
    assert_eq!(jobs[2]["parentJobId"], jobs[1]["id"]);
    assert!(jobs.iter().all(|j| j["rootJobId"] == root.as_str()));
    (a, b, jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_on_two_hosts_grows_to_its_depth_and_deleting_the_root_completes_it() {
    let setup = Setup::new();
    let (a, b, jobs) = chain_across_two_hosts(&setup, &[]).await;
    // The leaf found the chain at its depth, and works all the same.
    let leaf = jobs[2]["id"].as_str().expect("leaf");
    let leaf_run = wait_for(|| async {
        let (_, view) = get(format!("{}/v1/jobs/{leaf}", b.url)).await;
        view["run"]["id"].as_str().map(str::to_string)
    })
    .await;
    let leaf_events = wait_for(|| async {
        let events = events(&b.url, &leaf_run).await;
        events
            .iter()
            .any(|(kind, _)| kind == "work_ok")
            .then_some(events)
    })
    .await;
    let no_child = leaf_events
        .iter()
        .find(|(kind, _)| kind == "no_child")
        .map(|(_, payload)| payload);
    assert_eq!(
        no_child.map(|p| &p["tag"]),
        Some(&json!("MaxDepth")),
        "{leaf_events:?}"
    );

    // Deleting the root (on host A) stops the whole chain, on both hosts: each agent stops
    // when asked, so each is Completed.
    let root = jobs[0]["id"].as_str().expect("root");
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{}/v1/agents/{root}", a.url),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for job in &jobs {
        let id = job["id"].as_str().expect("id");
        let view = finished(&b.url, id).await;
        assert_eq!(view["job"]["status"], "done", "{view}");
        assert_eq!(view["run"]["status"], "success", "{view}");
        assert_eq!(view["job"]["stopRequested"], true, "{view}");
        let (_, agent) = get(format!("{}/v1/agents/{id}", b.url)).await;
        assert_eq!(agent["agent"]["phase"], "Completed", "{agent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_parents_host_is_killed_its_children_are_stopped_once_its_lease_expires() {
    let setup = Setup::new();
    let fast = ["--lease-ms", "1000", "--reclaim-interval-ms", "200"];
    let (a, b, jobs) = chain_across_two_hosts(&setup, &fast).await;
    let status = a.signal("KILL");
    assert!(!status.success());

    // Host B reclaims the root's expired lease: that run has ended, so its children (running
    // on B) are asked to stop, and stop: Completed.
    for job in &jobs[1..] {
        let id = job["id"].as_str().expect("id");
        let view = finished(&b.url, id).await;
        assert_eq!(view["job"]["status"], "done", "{view}");
        assert_eq!(view["run"]["status"], "success", "{view}");
        assert_eq!(view["job"]["stopRequested"], true, "{view}");
    }
    // The root itself, a long-lived agent, is restarted on B; deleting it ends it Completed.
    let root = jobs[0]["id"].as_str().expect("root");
    wait_for(|| async {
        let (_, view) = get(format!("{}/v1/jobs/{root}", b.url)).await;
        (view["job"]["leaseOwner"] == "host-b").then_some(())
    })
    .await;
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{}/v1/agents/{root}", b.url),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let view = finished(&b.url, root).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    for job in tree(&b.url, root).await {
        let status = &job["status"];
        assert!(status == "done" || status == "cancelled", "{job}");
    }
}

/// A new API token for `tenant` with `verbs`: its text and its `drover.toml` entry.
fn new_token(name: &str, tenant: &str, verbs: &str) -> (String, String) {
    let out = std::process::Command::new(EXE)
        .args([
            "tokens", "new", "--name", name, "--tenant", tenant, "--verbs", verbs,
        ])
        .output()
        .expect("run drover-host");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("a token line")
        .to_string();
    let entry = out
        .split_once("\n\n")
        .map(|(_, toml)| toml.to_string())
        .expect("a TOML entry");
    (token, entry)
}

async fn get_as(token: &str, url: String) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_keep_their_parents_tenant_and_other_tenants_see_none_of_the_tree() {
    let (acme, acme_entry) = new_token("acme-ci", "acme", "enqueue,read");
    let (beta, beta_entry) = new_token("beta-ro", "beta", "read");
    let setup = Setup::new();
    let config = setup.data.path().join("drover.toml");
    std::fs::write(&config, format!("{acme_entry}\n{beta_entry}")).expect("config");
    let mut args = host_args(setup.agents.path(), setup.data.path(), "var", Some(&config));
    args.extend(["--concurrency", "2"].map(String::from));
    let host = HostProcess::start(EXE, &args, &[("DROVER_API_TOKEN", "root")]);
    let url = &host.url;

    let response = reqwest::Client::new()
        .post(format!("{url}/v1/jobs"))
        .bearer_auth(&acme)
        .json(&json!({ "agentId": "spawner", "userId": "ann", "input": {
            "children": [{ "agentId": "echo", "input": { "n": 1 } }], "wait": true } }))
        .send()
        .await
        .expect("enqueue");
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("json");
    let parent = created["job"]["id"].as_str().expect("id").to_string();
    let (status, view) = get_as(
        &acme,
        format!("{url}/v1/jobs/{parent}/wait?timeoutMs=30000"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["job"]["status"], "done", "{view}");

    let (status, children) = get_as(&acme, format!("{url}/v1/jobs/{parent}/children")).await;
    assert_eq!(status, StatusCode::OK, "{children}");
    let children = children["jobs"].as_array().expect("jobs");
    assert_eq!(children.len(), 1, "{children:?}");
    assert_eq!(children[0]["tenantId"], "acme");
    assert_eq!(children[0]["userId"], "ann");
    let (_, tree) = get_as(&acme, format!("{url}/v1/jobs?rootJobId={parent}")).await;
    assert_eq!(tree["jobs"].as_array().map(Vec::len), Some(2), "{tree}");

    // Another tenant's token: the parent is not found, and its tree lists nothing.
    let (status, _) = get_as(&beta, format!("{url}/v1/jobs/{parent}/children")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, tree) = get_as(&beta, format!("{url}/v1/jobs?rootJobId={parent}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tree["jobs"], json!([]), "{tree}");
}

/// A spawner whose tree is given `quota`, with the declarative `echo-llm` (one model call per
/// run) as the child it may spawn.
fn budgeted_spawner(quota: &str) -> String {
    format!("[children]\nallowed = [\"echo-llm\"]\nmax-fan-out = 3\n\n[quota]\n{quota}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trees_model_calls_count_against_its_roots_budget() {
    use drover_test_support::model_server::{ModelServer, Reply};

    let server = ModelServer::start(vec![Reply::text(r#"{"received": 1, "ok": true}"#); 6]).await;
    let agents = AgentDir::new();
    agents
        .add("turns", SPAWNER, Some(&budgeted_spawner("max-turns = 2")))
        .add(
            "tokens",
            SPAWNER,
            Some(&budgeted_spawner("max-tokens = 20")),
        );
    std::fs::write(
        agents.path().join("echo-llm.toml"),
        include_str!("../agents/echo-llm.toml"),
    )
    .expect("echo-llm");
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("drover.toml");
    std::fs::write(
        &config,
        format!(
            "[models.cheap]\nprovider = \"openai\"\nbase-url = \"{}\"\nmodel = \"m\"\n\
             api-key-env = \"DROVER_TEST_MODEL_KEY\"\n",
            server.base_url()
        ),
    )
    .expect("config");
    let args = host_args(agents.path(), data.path(), "host", Some(&config));
    let host = HostProcess::start(EXE, &args, &[("DROVER_TEST_MODEL_KEY", "sk-test")]);
    let url = &host.url;
    let three = json!({
        "children": (1..=3)
            .map(|n| json!({ "agentId": "echo-llm", "input": { "n": n } }))
            .collect::<Vec<_>>(),
        "oneByOne": true,
    });
    let outcomes = |view: &Value| -> Vec<(String, String)> {
        view["run"]["output"]["outcomes"]
            .as_array()
            .expect("outcomes")
            .iter()
            .map(|o| {
                (
                    o["status"].as_str().unwrap_or("").to_string(),
                    o["error"]["tag"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };

    // Each child may make two model calls of its own; the tree may make two in all.
    let root = enqueue(url, "turns", three.clone()).await;
    let view = finished(url, &root).await;
    assert_eq!(view["job"]["status"], "done", "{view}");
    let done = ("done".to_string(), String::new());
    let over = |tag: &str| ("failed".to_string(), tag.to_string());
    assert_eq!(
        outcomes(&view),
        [done.clone(), done.clone(), over("MaxTurns")],
        "{view}"
    );
    assert_eq!(
        server.served(),
        2,
        "the third child's call never reached the model"
    );
    let children = tree(url, &root).await;
    let third = children
        .iter()
        .find(|j| j["depth"] == 1 && j["status"] == "failed")
        .expect("the refused child");
    let third_run = finished(url, third["id"].as_str().expect("id")).await;
    assert_eq!(third_run["run"]["status"], "quota", "{third_run}");
    assert!(
        third_run["run"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&root) && m.contains("max-turns")),
        "{third_run}"
    );

    // 15 tokens a call: the second child may write only the 5 the tree has left, its answer
    // takes the tree past 20, and the third child is refused before it calls.
    let root = enqueue(url, "tokens", three.clone()).await;
    let view = finished(url, &root).await;
    assert_eq!(
        outcomes(&view),
        [done.clone(), over("MaxTokens"), over("MaxTokens")],
        "{view}"
    );
    let requests = server.requests();
    let asked: Vec<&Value> = requests.iter().map(|r| &r.body["max_tokens"]).collect();
    assert_eq!(server.served(), 4, "{asked:?}");
    assert_eq!(asked[3], 5, "held to the tree's tokens left: {asked:?}");

    // Three children calling at once still make two calls in all: a turn is reserved in the
    // database before the call.
    let mut at_once = three;
    at_once["oneByOne"] = json!(false);
    at_once["wait"] = json!(true);
    let root = enqueue(url, "turns", at_once).await;
    let mut got = outcomes(&finished(url, &root).await);
    got.sort();
    assert_eq!(got, [done.clone(), done, over("MaxTurns")]);
    assert_eq!(server.served(), 6);
}
