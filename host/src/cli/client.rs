//! The client subcommands: talk to a running host over its HTTP API and print for people (or
//! JSON with `--json`).

use std::time::Duration;

use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::Command;
use super::args::{epoch_ms, read_json};

/// Options shared by the client subcommands.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The host's HTTP API.
    #[arg(long, env = "DROVER_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token, if the host requires one.
    #[arg(long, env = "DROVER_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Exit codes.
const OK: u8 = 0;
const FAILED: u8 = 1;
const JOB_FAILED: u8 = 2;
const TIMED_OUT: u8 = 3;

/// An error worth one line on stderr.
pub(super) struct Failure(pub(super) String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(super) fn new(args: &ClientArgs) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: args.url.trim_end_matches('/').to_string(),
            token: args.token.clone(),
        }
    }

    /// Sends a request; returns the status and the JSON body. Errors from the API become a
    /// failure carrying its message.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
        accept: &[StatusCode],
    ) -> Result<(StatusCode, Value), Failure> {
        let mut request = self.http.request(method, self.url(path)?).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            Failure(format!(
                "cannot reach the host at {} ({e}); is `drover-host run` running?",
                self.base
            ))
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() || accept.contains(&status) {
            return Ok((status, body));
        }
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the host answered {status}"));
        let tag = body["error"]["tag"].as_str().unwrap_or("Error");
        Err(Failure(format!("{tag}: {message}")))
    }

    /// The URL of the route made of `segments`, each percent-encoded (job ids may hold any
    /// character but control characters).
    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, Failure> {
        let mut url = reqwest::Url::parse(&self.base)
            .map_err(|e| Failure(format!("invalid host URL {:?}: {e}", self.base)))?;
        url.path_segments_mut()
            .map_err(|()| Failure(format!("invalid host URL {:?}", self.base)))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn get(&self, path: &[&str], query: &[(&str, String)]) -> Result<Value, Failure> {
        Ok(self.call(Method::GET, path, query, None, &[]).await?.1)
    }
}

/// Jobs one batch request carries (the API's most).
const BATCH: usize = 1000;

/// `enqueue --batch FILE`: posts the jobs of `file` (JSON lines; `-` is standard input) to
/// `POST /v1/jobs/batch`, [`BATCH`] at a time, and says how many were queued and how many
/// existed. A bad line is reported with its number before anything is sent.
async fn enqueue_batch(c: &Client, file: &std::path::Path, json: bool) -> Result<u8, Failure> {
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| Failure(format!("cannot read {}: {e}", file.display())))?;
    let jobs = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    Failure(format!(
                        "{} line {}: not a JSON object",
                        file.display(),
                        n + 1
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (mut queued, mut existing) = (0usize, 0usize);
    for chunk in jobs.chunks(BATCH) {
        let body = json!({ "jobs": chunk });
        let (_, answer) = c
            .call(
                Method::POST,
                &["v1", "jobs", "batch"],
                &[],
                Some(&body),
                &[],
            )
            .await?;
        for item in answer["jobs"].as_array().into_iter().flatten() {
            match item["created"].as_bool() {
                Some(true) => queued += 1,
                _ => existing += 1,
            }
        }
    }
    if json {
        print_json(&json!({ "queued": queued, "existing": existing }));
    } else {
        println!("queued {queued}, existing {existing}");
    }
    Ok(OK)
}

/// Runs a client subcommand and returns its exit code.
pub(super) async fn execute(command: Command) -> u8 {
    match dispatch(command).await {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            FAILED
        }
    }
}

async fn dispatch(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Run(_)
        | Command::Prune(_)
        | Command::Tokens(_)
        | Command::New(_)
        | Command::Build(_) => Ok(FAILED),
        Command::Enqueue {
            agent,
            input,
            id,
            priority,
            max_attempts,
            tenant,
            user,
            meta,
            delay,
            at,
            wait,
            batch,
            wait_for,
            client,
        } => {
            if let Some(file) = batch {
                return enqueue_batch(&Client::new(&client), &file, client.json).await;
            }
            let agent = agent.unwrap_or_default();
            let input = read_json(&input, "the input")?;
            let meta = meta.map(|m| read_json(&m, "the meta")).transpose()?;
            let scheduled_for = match (delay, at) {
                (Some(delay), _) => Some(epoch_ms(std::time::SystemTime::now() + delay)?),
                (None, at) => at,
            };
            let c = Client::new(&client);
            let body = json!({
                "id": id,
                "agentId": agent,
                "input": input,
                "meta": meta,
                "priority": priority,
                "scheduledFor": scheduled_for,
                "maxAttempts": max_attempts,
                "tenantId": tenant,
                "userId": user,
            });
            let (status, created) = c
                .call(Method::POST, &["v1", "jobs"], &[], Some(&body), &[])
                .await?;
            let job = &created["job"];
            if !wait {
                if client.json {
                    print_json(&created);
                } else {
                    let verb = if status == StatusCode::CREATED {
                        "queued"
                    } else {
                        "exists"
                    };
                    println!("{verb} {}", job["id"].as_str().unwrap_or_default());
                }
                return Ok(OK);
            }
            let id = job["id"].as_str().unwrap_or_default().to_string();
            wait_and_show(&c, &id, wait_for.duration(), client.json).await
        }
        Command::Get { id, client } => {
            let view = Client::new(&client).get(&["v1", "jobs", &id], &[]).await?;
            show_view(&view, client.json);
            Ok(OK)
        }
        Command::Wait {
            id,
            wait_for,
            client,
        } => wait_and_show(&Client::new(&client), &id, wait_for.duration(), client.json).await,
        Command::Cancel { id, client } => {
            act(
                &Client::new(&client),
                &id,
                "cancel",
                "cancel requested",
                client.json,
            )
            .await
        }
        Command::Stop { id, client } => {
            act(
                &Client::new(&client),
                &id,
                "stop",
                "stop requested",
                client.json,
            )
            .await
        }
        Command::Jobs {
            status,
            agent,
            tenant,
            limit,
            client,
        } => {
            let query = list_query(limit, status, agent, tenant);
            let list = Client::new(&client).get(&["v1", "jobs"], &query).await?;
            if client.json {
                print_json(&list);
            } else {
                print_table(
                    &[
                        "ID", "AGENT", "TENANT", "STATUS", "ATTEMPT", "PRIORITY", "CREATED",
                    ],
                    list["jobs"].as_array().into_iter().flatten().map(|j| {
                        vec![
                            text(&j["id"]),
                            text(&j["agentId"]),
                            text(&j["tenantId"]),
                            status_with_error(j),
                            attempt(j),
                            j["priority"].to_string(),
                            age(&j["createdAt"]),
                        ]
                    }),
                );
            }
            Ok(OK)
        }
        Command::Runs {
            status,
            agent,
            tenant,
            limit,
            client,
        } => {
            let query = list_query(limit, status, agent, tenant);
            let list = Client::new(&client).get(&["v1", "runs"], &query).await?;
            if client.json {
                print_json(&list);
            } else {
                print_table(
                    &[
                        "RUN", "AGENT", "JOB", "TENANT", "STATUS", "DURATION", "FUEL", "STARTED",
                    ],
                    list["runs"].as_array().into_iter().flatten().map(|r| {
                        vec![
                            text(&r["id"]),
                            text(&r["agentId"]),
                            text(&r["jobId"]),
                            text(&r["tenantId"]),
                            text(&r["status"]),
                            duration(r),
                            r["fuelUsed"]
                                .as_u64()
                                .map(|f| f.to_string())
                                .unwrap_or_default(),
                            age(&r["startedAt"]),
                        ]
                    }),
                );
            }
            Ok(OK)
        }
        Command::Events {
            id,
            follow,
            after,
            client,
        } => events(&Client::new(&client), &id, follow, after, client.json).await,
        Command::Spawn {
            agent_type,
            input,
            tenant,
            user,
            client,
        } => {
            let input = read_json(&input, "the input")?;
            let body = json!({
                "agentType": agent_type,
                "input": input,
                "tenantId": tenant,
                "userId": user,
            });
            let (_, spawned) = Client::new(&client)
                .call(Method::POST, &["spawn"], &[], Some(&body), &[])
                .await?;
            if client.json {
                print_json(&spawned);
            } else {
                println!("spawned {}", text(&spawned["workloadName"]));
            }
            Ok(OK)
        }
        Command::Agents {
            status,
            tenant,
            limit,
            client,
        } => {
            let query = list_query(limit, status, None, tenant);
            let list = Client::new(&client).get(&["v1", "agents"], &query).await?;
            if client.json {
                print_json(&list);
                return Ok(OK);
            }
            print_table(
                &["AGENT", "TYPE", "TENANT", "PHASE", "HEARTBEAT", "CREATED"],
                list["agents"].as_array().into_iter().flatten().map(|a| {
                    let mut phase = text(&a["phase"]);
                    if a["stale"] == true {
                        phase.push_str(" (silent)");
                    }
                    vec![
                        text(&a["id"]),
                        text(&a["agentType"]),
                        text(&a["job"]["tenantId"]),
                        phase,
                        age(&a["lastHeartbeatAt"]),
                        age(&a["job"]["createdAt"]),
                    ]
                }),
            );
            Ok(OK)
        }
        Command::Send {
            id,
            message,
            wait,
            client,
        } => {
            let message = read_json(&message, "the message")?;
            let mut query = Vec::new();
            if let Some(wait) = wait {
                query.push(("waitMs", wait.as_millis().to_string()));
            }
            let (status, posted) = Client::new(&client)
                .call(
                    Method::POST,
                    &["v1", "agents", &id, "messages"],
                    &query,
                    Some(&json!({ "message": message })),
                    &[],
                )
                .await?;
            let replied = status == StatusCode::OK;
            if client.json {
                print_json(&posted);
            } else if replied {
                println!("{}", posted["reply"]);
            } else {
                println!("sent {}", text(&posted["messageId"]));
            }
            match wait {
                Some(wait) if !replied => {
                    if !client.json {
                        eprintln!(
                            "no reply within {}; the message stays in the inbox",
                            humantime::format_duration(wait)
                        );
                    }
                    Ok(TIMED_OUT)
                }
                _ => Ok(OK),
            }
        }
        Command::Messages { id, limit, client } => {
            let list = Client::new(&client)
                .get(
                    &["v1", "agents", &id, "messages"],
                    &[("limit", limit.to_string())],
                )
                .await?;
            if client.json {
                print_json(&list);
                return Ok(OK);
            }
            print_table(
                &["MESSAGE", "SENT", "DELIVERED", "BODY", "REPLY"],
                list["messages"].as_array().into_iter().flatten().map(|m| {
                    vec![
                        text(&m["id"]),
                        age(&m["createdAt"]),
                        match m["deliveries"].as_u64() {
                            Some(0) | None => "not yet".to_string(),
                            Some(1) => "once".to_string(),
                            Some(n) => format!("{n} times"),
                        },
                        m["body"].to_string(),
                        if m["reply"].is_null() {
                            String::new()
                        } else {
                            m["reply"].to_string()
                        },
                    ]
                }),
            );
            Ok(OK)
        }
        Command::Types { client } => {
            let list = Client::new(&client).get(&["v1", "types"], &[]).await?;
            if client.json {
                print_json(&list);
                return Ok(OK);
            }
            print_table(
                &[
                    "AGENT",
                    "LIFECYCLE",
                    "SANDBOX",
                    "VERSION",
                    "DIGEST",
                    "DESCRIPTION",
                ],
                list["types"].as_array().into_iter().flatten().map(|t| {
                    vec![
                        text(&t["id"]),
                        text(&t["lifecycle"]),
                        text(&t["sandbox"]),
                        text(&t["version"]),
                        t["digest"]
                            .as_str()
                            .map(|d| format!("sha256:{d}"))
                            .unwrap_or_default(),
                        text(&t["description"]),
                    ]
                }),
            );
            for problem in list["problems"].as_array().into_iter().flatten() {
                eprintln!(
                    "not loaded: {}: {}",
                    text(&problem["path"]),
                    text(&problem["error"])
                );
            }
            Ok(OK)
        }
    }
}

/// The query of a list route: `limit`, and the filters given.
fn list_query(
    limit: u32,
    status: Option<String>,
    agent: Option<String>,
    tenant: Option<String>,
) -> Vec<(&'static str, String)> {
    let mut query = vec![("limit", limit.to_string())];
    query.extend(status.map(|s| ("status", s)));
    query.extend(agent.map(|a| ("agentId", a)));
    query.extend(tenant.map(|t| ("tenantId", t)));
    query
}

async fn act(
    client: &Client,
    id: &str,
    action: &str,
    done: &str,
    as_json: bool,
) -> Result<u8, Failure> {
    // The API takes no body here, but wants every POST to say it is JSON.
    let (_, body) = client
        .call(
            Method::POST,
            &["v1", "jobs", id, action],
            &[],
            Some(&json!({})),
            &[],
        )
        .await?;
    if as_json {
        print_json(&body);
    } else {
        println!("{done}: {id} is {}", job_status(&body["job"]));
    }
    Ok(OK)
}

async fn wait_and_show(
    client: &Client,
    id: &str,
    timeout: Duration,
    as_json: bool,
) -> Result<u8, Failure> {
    let timeout_ms = timeout.as_millis();
    let (status, view) = client
        .call(
            Method::GET,
            &["v1", "jobs", id, "wait"],
            &[("timeoutMs", timeout_ms.to_string())],
            None,
            &[StatusCode::REQUEST_TIMEOUT],
        )
        .await?;
    show_view(&view, as_json);
    if status == StatusCode::REQUEST_TIMEOUT {
        if !as_json {
            eprintln!(
                "timed out after {}; the job is still {}",
                humantime::format_duration(timeout),
                job_status(&view["job"])
            );
        }
        return Ok(TIMED_OUT);
    }
    Ok(if view["job"]["status"] == "done" {
        OK
    } else {
        JOB_FAILED
    })
}

async fn events(
    client: &Client,
    id: &str,
    follow: bool,
    mut after: i64,
    as_json: bool,
) -> Result<u8, Failure> {
    // A job id stands for its latest run.
    let run_id = match client
        .call(
            Method::GET,
            &["v1", "runs", id],
            &[],
            None,
            &[StatusCode::NOT_FOUND],
        )
        .await?
    {
        (StatusCode::NOT_FOUND, _) => {
            let view = client.get(&["v1", "jobs", id], &[]).await?;
            view["run"]["id"]
                .as_str()
                .ok_or_else(|| Failure(format!("job {id} has not started a run yet")))?
                .to_string()
        }
        (_, run) => text(&run["run"]["id"]),
    };
    loop {
        let page = client
            .get(
                &["v1", "runs", &run_id, "events"],
                &[("after", after.to_string())],
            )
            .await?;
        for event in page["events"].as_array().into_iter().flatten() {
            after = event["seq"].as_i64().unwrap_or(after);
            if as_json {
                println!("{event}");
            } else {
                println!(
                    "{:>5}  {}  {:<16} {}",
                    event["seq"],
                    clock(&event["ts"]),
                    text(&event["kind"]),
                    event["payload"]
                );
            }
        }
        // A page cut short by the host's size bound: the rest follows at once.
        if page["truncated"] == true {
            continue;
        }
        if !follow {
            return Ok(OK);
        }
        let run = client.get(&["v1", "runs", &run_id], &[]).await?;
        if run["run"]["status"] != "running" {
            // One last look for events written as the run ended.
            let page = client
                .get(
                    &["v1", "runs", &run_id, "events"],
                    &[("after", after.to_string())],
                )
                .await?;
            if page["events"].as_array().is_none_or(Vec::is_empty) {
                return Ok(OK);
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn show_view(view: &Value, as_json: bool) {
    if as_json {
        print_json(view);
        return;
    }
    let job = &view["job"];
    println!(
        "job     {}  agent {}  {}  attempt {}  priority {}",
        text(&job["id"]),
        text(&job["agentId"]),
        status_with_error(job),
        attempt(job),
        job["priority"]
    );
    let run = &view["run"];
    if run.is_null() {
        println!("run     (none yet)");
        return;
    }
    let mut line = format!(
        "run     {}  {}  {}  sandbox {}",
        text(&run["id"]),
        text(&run["status"]),
        duration(run),
        text(&run["sandbox"])
    );
    if let Some(fuel) = run["fuelUsed"].as_u64() {
        line.push_str(&format!("  fuel {fuel}"));
    }
    if let Some(memory) = run["peakMemory"].as_u64() {
        line.push_str(&format!(
            "  memory {:.1} MiB",
            memory as f64 / f64::from(1 << 20)
        ));
    }
    let usage = &run["usage"];
    if usage.is_object() {
        line.push_str(&format!(
            "  turns {}  tokens {}+{}  cost ${:.6}",
            usage["turns"],
            usage["inputTokens"],
            usage["outputTokens"],
            usage["costUsd"].as_f64().unwrap_or(0.0)
        ));
        if usage["toolCalls"].as_u64().is_some_and(|n| n > 0) {
            line.push_str(&format!("  tool calls {}", usage["toolCalls"]));
        }
    }
    println!("{line}");
    if !run["output"].is_null() {
        println!("output  {}", run["output"]);
    }
    if !run["error"].is_null() {
        println!(
            "error   {}: {}",
            text(&run["error"]["tag"]),
            text(&run["error"]["message"])
        );
    }
}

/// A job's status as people read it: a claimed (`leased`) job is `running`, or `stopping`
/// once asked to stop.
fn job_status(job: &Value) -> String {
    match job["status"].as_str() {
        Some("leased") if job["stopRequested"] == true => "stopping".into(),
        Some("leased") => "running".into(),
        _ => text(&job["status"]),
    }
}

/// Which attempt a job is on, as `2/3`: the number of its latest run (`run.attempt`; `0` before
/// the first), of the attempts it may make; restarts of a long-lived agent after a host died
/// do not use up attempts and are counted apart.
fn attempt(job: &Value) -> String {
    let mut attempt = format!("{}/{}", job["leaseEpoch"], job["maxAttempts"]);
    if let Some(restarts) = job["restarts"].as_i64().filter(|&r| r > 0) {
        attempt.push_str(&format!(" ({restarts} restarts)"));
    }
    attempt
}

/// [`job_status`], with the tag of the error a failed job ended with.
fn status_with_error(job: &Value) -> String {
    match job["resultError"]["tag"].as_str() {
        Some(tag) => format!("{} ({tag})", job_status(job)),
        None => job_status(job),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn duration(run: &Value) -> String {
    match (run["startedAt"].as_i64(), run["endedAt"].as_i64()) {
        (Some(start), Some(end)) => format!("{} ms", end - start),
        (Some(_), None) => "running".into(),
        _ => String::new(),
    }
}

fn age(ts: &Value) -> String {
    let Some(ts) = ts.as_i64() else {
        return String::new();
    };
    let secs = (crate::time::now_ms() - ts).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn clock(ts: &Value) -> String {
    let ms = ts.as_i64().unwrap_or(0).rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn print_table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<width$}", width = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}
