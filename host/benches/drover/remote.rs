//! 15. Several hosts on one libsql server.
//!
//! Real `drover-host` processes (the binary this build made) on a real `sqld`, fed over HTTP
//! with `POST /v1/jobs/batch`, each figure beside one host on an embedded file in the same run;
//! then one host reaching the server through a TCP proxy that adds latency; then a cancel sent
//! through one host for a job running on another.

use std::path::Path;
use std::time::{Duration, Instant};

use drover_host::db::{Db, RowExt, query_all};
use drover_test_support::proxy::FaultProxy;
use drover_test_support::sqld::{self, Sqld};
use drover_test_support::{AgentDir, CHAOS, ECHO, HostProcess, host_args_on};
use serde_json::json;

use super::{Row, Scale, millis, percentile};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");
/// Jobs per `POST /v1/jobs/batch`: the route's most.
const BATCH: usize = 1000;
/// Run slots of each host.
const CONCURRENCY: &str = "32";

/// The rows of this section; none (after saying why) without `sqld`.
pub async fn remote_hosts(scale: Scale, work: &Path) -> Vec<Row> {
    if sqld::available("the remote-host benchmarks").is_none() {
        return Vec::new();
    }
    let jobs = scale.pick(500, 20_000);
    let agents = AgentDir::new();
    agents.add("echo", ECHO, None).add("chaos", CHAOS, None);
    let mut rows = Vec::new();

    // The baseline: one host on an embedded file.
    let dir = tempfile::tempdir_in(work).expect("dir");
    let queue = format!("file:{}", dir.path().join("queue.db").display());
    let storage = format!("file:{}", dir.path().join("runs.db").display());
    let file = drain(
        &agents,
        dir.path(),
        &[(&queue, &storage)],
        &queue,
        jobs,
        None,
    )
    .await;
    eprintln!("  1 host on a file: {:.0} jobs/s", file.rate);

    let mut one_on_sqld = 0.0;
    for hosts in 1..=3 {
        let server = Sqld::start();
        let url = server.url();
        let dir = tempfile::tempdir_in(work).expect("dir");
        let urls = vec![(url.as_str(), url.as_str()); hosts];
        let run = drain(&agents, dir.path(), &urls, &url, jobs, Some(server.pid())).await;
        eprintln!("  {hosts} host(s) on sqld: {:.0} jobs/s", run.rate);
        if hosts == 1 {
            one_on_sqld = run.rate;
        }
        rows.push(Row {
            name: format!(
                "Durable throughput, {hosts} host process{} on one local `sqld` ({jobs} `echo` jobs posted in batches of {BATCH} over HTTP, {CONCURRENCY} slots a host, runs and events recorded; meanwhile sqld used {:.2} cores and the hosts {:.2}, of the machine's {}); vs 1 host on an embedded `file:` database",
                if hosts == 1 { "" } else { "es" },
                run.server_cores,
                run.host_cores,
                cores(),
            ),
            figure: format!("{:.0} jobs/s", run.rate),
            baseline: format!("{:.0} jobs/s", file.rate),
            ratio: run.rate / file.rate,
            target: if hosts == 3 {
                "≥ 10,000 jobs/s".into()
            } else {
                String::new()
            },
            met: (hosts == 3).then_some(run.rate >= 10_000.0),
        });
    }

    // One host across a slower link.
    for (one_way, target) in [
        (Duration::from_micros(500), Some(5_000.0)),
        (Duration::from_millis(5), None),
    ] {
        let server = Sqld::start();
        let proxy = FaultProxy::start(server.address()).await;
        proxy.set_delay(one_way);
        let (through, direct) = (
            round_trip(&proxy.url()).await,
            round_trip(&server.url()).await,
        );
        let dir = tempfile::tempdir_in(work).expect("dir");
        let url = proxy.url();
        let run = drain(
            &agents,
            dir.path(),
            &[(&url, &url)],
            &server.url(),
            jobs,
            Some(server.pid()),
        )
        .await;
        eprintln!(
            "  1 host at {} added round trip: {:.0} jobs/s",
            millis(2.0 * one_way.as_secs_f64()),
            run.rate
        );
        rows.push(Row {
            name: format!(
                "Durable throughput, 1 host reaching `sqld` through a TCP proxy that adds {} of round trip (a statement's round trip measured at {} through it, {} direct); vs 1 host on the same server directly",
                millis(2.0 * one_way.as_secs_f64()),
                millis(through),
                millis(direct),
            ),
            figure: format!("{:.0} jobs/s", run.rate),
            baseline: format!("{one_on_sqld:.0} jobs/s"),
            ratio: run.rate / one_on_sqld,
            target: target.map_or(String::new(), |t| format!("≥ {t:.0} jobs/s")),
            met: target.map(|t| run.rate >= t),
        });
    }

    rows.extend(cancel_across_hosts(scale, &agents, work).await);
    rows
}

/// What one drain measured.
struct Drain {
    /// Jobs per second, from the first post until the last job is done.
    rate: f64,
    /// CPU the server used meanwhile, in cores.
    server_cores: f64,
    /// CPU the hosts used meanwhile, in cores.
    host_cores: f64,
}

/// Starts one host per `(queue, storage)` URL pair, posts `jobs` `echo` jobs spread over them,
/// and waits until every job is done (read from `count_url`) and has its successful run.
async fn drain(
    agents: &AgentDir,
    dir: &Path,
    databases: &[(&str, &str)],
    count_url: &str,
    jobs: usize,
    server_pid: Option<u32>,
) -> Drain {
    let hosts: Vec<HostProcess> = databases
        .iter()
        .enumerate()
        .map(|(n, (queue, storage))| start_host(agents, dir, &format!("host-{n}"), queue, storage))
        .collect();
    let counter = Db::open(count_url, None).await.expect("open the database");
    let batches: Vec<serde_json::Value> = (0..jobs)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|chunk| {
            let jobs: Vec<_> = chunk
                .iter()
                .map(|n| json!({ "agentId": "echo", "input": { "n": n } }))
                .collect();
            json!({ "jobs": jobs })
        })
        .collect();
    let client = reqwest::Client::new();
    let host_pids: Vec<u32> = hosts.iter().map(HostProcess::pid).collect();
    let cpu_before = (server_pid.map_or(0.0, cpu_seconds), cpu_total(&host_pids));
    let started = Instant::now();
    let posts: Vec<_> = batches
        .into_iter()
        .enumerate()
        .map(|(n, body)| {
            let url = format!("{}/v1/jobs/batch", hosts[n % hosts.len()].url);
            let client = client.clone();
            tokio::spawn(async move {
                let response = client.post(url).json(&body).send().await.expect("post");
                let status = response.status();
                assert!(
                    status.is_success(),
                    "{status}: {}",
                    response.text().await.unwrap_or_default()
                );
            })
        })
        .collect();
    for post in posts {
        post.await.expect("a post failed");
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while count(&counter, "SELECT count(*) FROM jobs WHERE status = 'done'").await < jobs as i64 {
        assert!(Instant::now() < deadline, "the drain never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let server_cores = (server_pid.map_or(0.0, cpu_seconds) - cpu_before.0) / elapsed;
    let host_cores = (cpu_total(&host_pids) - cpu_before.1) / elapsed;
    // Every job's run is recorded too (runs are written beside the outcomes, never after a loss).
    let runs = Db::open(databases[0].1, None).await.expect("open the runs");
    while count(&runs, "SELECT count(*) FROM runs WHERE status = 'success'").await < jobs as i64 {
        assert!(Instant::now() < deadline, "runs were never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Drain {
        rate: jobs as f64 / elapsed,
        server_cores,
        host_cores,
    }
}

/// A host named `name` with its data in `dir`, on the databases at `queue` and `storage`.
fn start_host(
    agents: &AgentDir,
    dir: &Path,
    name: &str,
    queue: &str,
    storage: &str,
) -> HostProcess {
    let mut args = host_args_on(agents.path(), &dir.join(name), queue, storage);
    args.extend(["--worker-id", name, "--concurrency", CONCURRENCY].map(String::from));
    HostProcess::start(EXE, &args, &[])
}

/// The one integer `sql` selects.
async fn count(db: &Db, sql: &'static str) -> i64 {
    db.run(move |conn| async move { query_all(&conn, sql, (), |row| row.int(0)).await })
        .await
        .expect("count")[0]
}

/// Median time of a `SELECT 1` on the server at `url`, in seconds.
async fn round_trip(url: &str) -> f64 {
    let db = Db::open(url, None).await.expect("open");
    let mut samples = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        db.run(|conn| async move { query_all(&conn, "SELECT 1", (), |row| row.int(0)).await })
            .await
            .expect("select");
        samples.push(started.elapsed().as_secs_f64());
    }
    percentile(&samples, 0.5)
}

/// A cancel sent through host A for a job running on host B, both on one `sqld`, until B has
/// recorded it terminal; vs a cancel sent through B itself.
async fn cancel_across_hosts(scale: Scale, agents: &AgentDir, work: &Path) -> Vec<Row> {
    let rounds = scale.pick(4, 40);
    let server = Sqld::start();
    let dir = tempfile::tempdir_in(work).expect("dir");
    let url = server.url();
    let hosts: Vec<HostProcess> = ["host-a", "host-b"]
        .iter()
        .map(|name| start_host(agents, dir.path(), name, &url, &url))
        .collect();
    let client = reqwest::Client::new();
    let get = async |url: String| -> serde_json::Value {
        client
            .get(url)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    };
    let (mut across, mut same) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let created: serde_json::Value = client
            .post(format!("{}/v1/jobs", hosts[round % 2].url))
            .json(&json!({ "agentId": "chaos", "input": { "mode": "sleep", "ms": 60_000 } }))
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        let id = created["job"]["id"].as_str().expect("id").to_string();
        let owner = loop {
            let view = get(format!("{}/v1/jobs/{id}", hosts[0].url)).await;
            if let Some(owner) = view["job"]["leaseOwner"].as_str() {
                break if owner == "host-a" { 0 } else { 1 };
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // Let the run get going, then cancel it through the other host, or (every other
        // round) through its own.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let through = if round % 2 == 0 { 1 - owner } else { owner };
        let started = Instant::now();
        let cancel = client
            .post(format!("{}/v1/jobs/{id}/cancel", hosts[through].url))
            .json(&json!({}))
            .send()
            .await
            .expect("cancel");
        assert_eq!(cancel.status(), reqwest::StatusCode::ACCEPTED);
        let view = get(format!(
            "{}/v1/jobs/{id}/wait?timeoutMs=30000",
            hosts[owner].url
        ))
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(view["run"]["status"], "cancelled", "{view}");
        if through == owner {
            same.push(elapsed);
        } else {
            across.push(elapsed);
        }
    }
    let row = |p: f64, target: &str, met: Option<bool>| Row {
        name: format!(
            "Cancel latency across hosts, p{:.0} ({} cancels): `POST /v1/jobs/{{id}}/cancel` through host A for a job sleeping on host B, both on one local `sqld`, until B's `wait` answers it cancelled; vs the cancel sent through B",
            p * 100.0,
            across.len()
        ),
        figure: millis(percentile(&across, p)),
        baseline: millis(percentile(&same, p)),
        ratio: percentile(&across, p) / percentile(&same, p),
        target: target.into(),
        met,
    };
    vec![
        row(
            0.99,
            "≤ 250 ms (≤ 1 s at most)",
            Some(percentile(&across, 0.99) <= 0.25),
        ),
        row(0.5, "", None),
    ]
}

/// CPU time (user and system) `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command (which may hold spaces) in parentheses; utime and stime are
    // the 14th and 15th of the line.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|t| t.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / clock_ticks_per_second()
}

/// CPU time of all of `pids`, in seconds.
fn cpu_total(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The machine's cores.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
