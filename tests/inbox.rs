//! Messages to long-lived agents, with the real binary over real HTTP: the `chat` agent answers
//! what is posted to it (a reply wakes the waiting `POST` at once), bad requests get clear
//! errors, another tenant's agent is as unknown as an unknown one, a stop reaches an agent
//! blocked waiting for a message, and messages survive the agent's host being killed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use drover_host::api::auth;
use drover_test_support::{AgentDir, CHAT, ECHO, HostProcess, QUEUE_WORKER, WAIT, host_args};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// An agent directory with chat (`chat_manifest`), echo and a queue-worker that never reads
/// its inbox, and a place for the databases.
struct Setup {
    agents: AgentDir,
    data: tempfile::TempDir,
}

impl Setup {
    fn new(chat_manifest: &str) -> Self {
        let agents = AgentDir::new();
        agents
            .add("chat", CHAT, Some(chat_manifest))
            .add("echo", ECHO, None)
            .add(
                "queue-worker",
                QUEUE_WORKER,
                Some("lifecycle = \"long-lived\"\n[env]\nPOLL_INTERVAL_MS = \"50\"\n"),
            );
        Self {
            agents,
            data: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A host on the setup's databases, with `config` as its `drover.toml`.
    fn start(&self, data: &str, config: Option<&str>, extra: &[&str]) -> HostProcess {
        let path = self.data.path().join("drover.toml");
        if let Some(config) = config {
            std::fs::write(&path, config).expect("config");
        }
        let mut args = host_args(
            self.agents.path(),
            self.data.path(),
            data,
            config.map(|_| path.as_path()),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        HostProcess::start(EXE, &args, &[])
    }
}

const CHAT_MANIFEST: &str = "lifecycle = \"long-lived\"\nstop-grace-ms = 10000\n";

async fn call(
    method: Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn spawn(url: &str, agent: &str, input: Value, token: Option<&str>) -> String {
    let (status, body) = call(
        Method::POST,
        format!("{url}/spawn"),
        token,
        Some(json!({ "agentType": agent, "input": input })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["workloadName"].as_str().expect("name").to_string()
}

async fn post(
    url: &str,
    id: &str,
    query: &str,
    message: Value,
    token: Option<&str>,
) -> (StatusCode, Value) {
    call(
        Method::POST,
        format!("{url}/v1/agents/{id}/messages{query}"),
        token,
        Some(json!({ "message": message })),
    )
    .await
}

async fn messages(url: &str, id: &str) -> Vec<Value> {
    let (status, body) = call(
        Method::GET,
        format!("{url}/v1/agents/{id}/messages"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["messages"].as_array().cloned().unwrap_or_default()
}

/// Waits until `check` holds of the agent's state (`GET /v1/agents/{id}`).
async fn wait_for_agent(url: &str, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = call(Method::GET, format!("{url}/v1/agents/{id}"), None, None).await;
        if check(&body["agent"]) {
            return body["agent"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "agent {id} never got {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_message_gets_its_reply_over_http() {
    let setup = Setup::new(CHAT_MANIFEST);
    let host = setup.start("var", None, &[]);
    let url = &host.url;
    let id = spawn(url, "chat", Value::Null, None).await;

    // Waiting: the reply comes back in the answer to the post.
    let (status, first) = post(url, &id, "?waitMs=30000", json!({ "text": "hello" }), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        first["reply"],
        json!({ "echo": { "text": "hello" }, "count": 1 })
    );
    assert_eq!(first["message"]["id"], first["messageId"]);
    let (status, second) = post(url, &id, "?waitMs=30000", json!([1, 2, 3]), None).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["reply"], json!({ "echo": [1, 2, 3], "count": 2 }));

    // Without waiting: 202 with the id; the reply shows in the list.
    let (status, third) = post(url, &id, "", json!("third"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{third}");
    let third_id = third["messageId"].as_str().expect("id").to_string();
    assert!(third.get("reply").is_none(), "{third}");
    let deadline = Instant::now() + WAIT;
    let listed = loop {
        let listed = messages(url, &id).await;
        if listed.len() == 3 && listed.iter().all(|m| !m["reply"].is_null()) {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "no reply to {third_id}: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed[0]["id"], first["messageId"]);
    assert_eq!(listed[2]["id"], third_id.as_str());
    assert_eq!(listed[2]["body"], "third");
    assert_eq!(listed[2]["reply"], json!({ "echo": "third", "count": 3 }));
    assert!(
        listed
            .iter()
            .all(|m| m["deliveries"] == 1 && !m["ackedAt"].is_null())
    );

    // The run's timeline has each message received and replied.
    let (_, events) = call(
        Method::GET,
        format!("{url}/v1/agents/{id}/events"),
        None,
        None,
    )
    .await;
    let events = events["events"].as_array().cloned().unwrap_or_default();
    for message in &listed {
        for kind in ["message_received", "message_replied"] {
            assert!(
                events
                    .iter()
                    .any(|e| e["kind"] == kind && e["payload"]["messageId"] == message["id"]),
                "no {kind} for {}: {events:?}",
                message["id"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_clear_errors() {
    let setup = Setup::new(CHAT_MANIFEST);
    let host = setup.start(
        "var",
        Some("[inbox]\nmax-message-bytes = 64\nmax-queued-messages = 2\n"),
        &[],
    );
    let url = &host.url;
    // The queue worker never reads its inbox.
    let worker = spawn(url, "queue-worker", Value::Null, None).await;
    let endpoint = format!("{url}/v1/agents/{worker}/messages");
    let raw = |body: &'static str, content_type: &'static str| {
        let endpoint = endpoint.clone();
        async move {
            let response = reqwest::Client::new()
                .post(endpoint)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .expect("request");
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = raw("{not json", "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["tag"], "InvalidJson");
    let (status, body) = raw("{}", "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("message")),
        "{body}"
    );
    let (status, body) = raw(r#"{"message": 1, "extra": 2}"#, "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = raw(r#"{"message": 1}"#, "text/plain").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");

    let (status, body) = post(url, &worker, "", json!("x".repeat(100)), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["tag"], "MessageTooLarge");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("64")),
        "{body}"
    );

    let (status, body) = post(url, &worker, "?waitMs=soon", json!(1), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = post(url, "no-such-agent", "", json!(1), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["tag"], "NotFound");
    let (status, _) = call(
        Method::GET,
        format!("{url}/v1/agents/no-such-agent/messages"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A run-to-completion job takes no messages.
    let (status, body) = call(
        Method::POST,
        format!("{url}/v1/jobs"),
        None,
        Some(json!({ "id": "a-job", "agentId": "echo", "input": { "n": 1 } })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post(url, "a-job", "", json!(1), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["tag"], "NotLongLived");

    // Waiting for a reply that never comes: 202 once the wait is up.
    let (status, body) = post(url, &worker, "?waitMs=200", json!(0), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body["message"]["reply"].is_null(), "{body}");
    // The operator's cap on messages waiting: the third is refused, with a Retry-After.
    let (status, body) = post(url, &worker, "", json!(1), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let response = reqwest::Client::new()
        .post(&endpoint)
        .json(&json!({ "message": 3 }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["tag"], "InboxFull");
    assert_eq!(messages(url, &worker).await.len(), 2);

    // An agent that has ended takes no more.
    let (status, body) = call(
        Method::DELETE,
        format!("{url}/v1/agents/{worker}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for_agent(url, &worker, "completed", |a| a["phase"] == "Completed").await;
    let (status, body) = post(url, &worker, "", json!(1), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["tag"], "AgentEnded");

    // The host is still up, and chat still answers.
    let chat = spawn(url, "chat", Value::Null, None).await;
    let (status, body) = post(url, &chat, "?waitMs=30000", json!("still here"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A token of `tenant` with `verbs`, as a `[[api-tokens]]` entry; its text is its name.
fn token(name: &str, tenant: &str, verbs: &str) -> String {
    format!(
        "[[api-tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\ntenant = \"{tenant}\"\nverbs = {verbs}\n",
        auth::hex(&auth::hash_token(name))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_agent_is_as_unknown_as_an_unknown_one() {
    let setup = Setup::new(CHAT_MANIFEST);
    let config = [
        token("acme", "acme", "[\"enqueue\", \"read\"]"),
        token("acme-reader", "acme", "[\"read\"]"),
        token("globex", "globex", "[\"enqueue\", \"read\"]"),
    ]
    .concat();
    let host = setup.start("var", Some(&config), &[]);
    let url = &host.url;
    let id = spawn(url, "chat", Value::Null, Some("acme")).await;

    let (status, body) = post(url, &id, "?waitMs=30000", json!("hi"), Some("acme")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reply"]["echo"], "hi");

    // globex: the same answer as for an id that does not exist.
    let (status, theirs) = post(url, &id, "", json!("peek"), Some("globex")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{theirs}");
    let (status, unknown) = post(url, "no-such-agent", "", json!("peek"), Some("globex")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
    let unknown_text = unknown.to_string().replace("no-such-agent", &id);
    assert_eq!(theirs.to_string(), unknown_text);
    let (status, listed) = call(
        Method::GET,
        format!("{url}/v1/agents/{id}/messages"),
        Some("globex"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{listed}");
    assert_eq!(listed.to_string(), unknown_text);

    // Reading needs `read`; posting needs `enqueue`; no token, nothing.
    let (status, listed) = call(
        Method::GET,
        format!("{url}/v1/agents/{id}/messages"),
        Some("acme-reader"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["messages"].as_array().map(Vec::len), Some(1));
    assert!(listed.to_string().contains("hi"));
    let (status, body) = post(url, &id, "", json!("let me"), Some("acme-reader")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("enqueue")),
        "{body}"
    );
    let (status, _) = post(url, &id, "", json!("anyone?"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing refused was stored.
    let (_, listed) = call(
        Method::GET,
        format!("{url}/v1/agents/{id}/messages"),
        Some("acme"),
        None,
    )
    .await;
    assert_eq!(
        listed["messages"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_reaches_an_agent_waiting_for_a_message() {
    // Its grace is shorter than the agent's wait for a message (5 s): unless the stop ends the
    // wait, the agent is cut off when the grace runs out, and the run is not a success.
    let setup = Setup::new("lifecycle = \"long-lived\"\nstop-grace-ms = 1000\n");
    let host = setup.start("var", None, &[]);
    let url = &host.url;
    let id = spawn(url, "chat", Value::Null, None).await;
    let (status, body) = post(url, &id, "?waitMs=30000", json!("one"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Now it waits in `receive`.
    let (status, body) = call(Method::DELETE, format!("{url}/v1/agents/{id}"), None, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let agent = wait_for_agent(url, &id, "an end", |a| {
        matches!(
            a["phase"].as_str(),
            Some("Completed" | "Failed" | "Cancelled")
        )
    })
    .await;
    assert_eq!(agent["phase"], "Completed", "{agent}");
    assert_eq!(agent["run"]["status"], "success", "{agent}");
    assert_eq!(agent["run"]["output"], json!({ "handled": 1 }));
    let (_, events) = call(
        Method::GET,
        format!("{url}/v1/agents/{id}/events"),
        None,
        None,
    )
    .await;
    assert!(
        events["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "chat_stopping")),
        "{events}"
    );
}

/// Waits until agent `id` has `n` messages, each replied to, and returns them.
async fn wait_for_replies(url: &str, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = messages(url, id).await;
        if listed.len() == n && listed.iter().all(|m| !m["reply"].is_null()) {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "not every message was replied to: {listed:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_their_agents_host_being_killed() {
    let setup = Setup::new(CHAT_MANIFEST);
    let fast = ["--lease-ms", "1000", "--reclaim-interval-ms", "100"];
    let first = setup.start("var-1", None, &fast);
    // It thinks a while over each message, so that the host dies mid-conversation.
    let id = spawn(&first.url, "chat", json!({ "replyDelayMs": 300 }), None).await;
    const N: usize = 8;
    let mut sent = Vec::new();
    for n in 0..N {
        let (status, body) = post(&first.url, &id, "", json!({ "n": n }), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        sent.push(body["messageId"].as_str().expect("id").to_string());
    }
    // Once the first reply is written, kill the host without warning.
    let deadline = Instant::now() + WAIT;
    while !messages(&first.url, &id)
        .await
        .iter()
        .any(|m| !m["reply"].is_null())
    {
        assert!(Instant::now() < deadline, "no first reply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = first.signal("KILL");
    assert!(!killed.success());

    // A new host on the same database restarts the agent, which handles the rest.
    let second = setup.start("var-2", None, &fast);
    let listed = wait_for_replies(&second.url, &id, N).await;
    let ids: Vec<&str> = listed.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(
        ids,
        sent.iter().map(String::as_str).collect::<Vec<_>>(),
        "none lost, in order"
    );
    for message in &listed {
        assert_eq!(message["reply"]["echo"], message["body"], "{message}");
        assert!(!message["ackedAt"].is_null(), "{message}");
    }
    // Both runs answered some: the conversation went on in the agent's next run.
    let runs: HashSet<&str> = listed
        .iter()
        .filter_map(|m| m["deliveredRunId"].as_str())
        .collect();
    assert!(runs.len() >= 2, "{listed:#?}");
    let agent = wait_for_agent(&second.url, &id, "its restart", |a| a["phase"] == "Running").await;
    assert!(
        agent["job"]["restarts"].as_i64().is_some_and(|r| r >= 1),
        "{agent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_and_its_reply_cross_hosts_through_the_database() {
    // The API on one host, the agent on another: neither hears of the other in-process, and
    // each finds what the other wrote by polling the shared database.
    let setup = Setup::new(CHAT_MANIFEST);
    let api = setup.start("var-api", None, &["--api-only"]);
    let _worker = setup.start("var-worker", None, &["--worker-only"]);
    let id = spawn(&api.url, "chat", Value::Null, None).await;
    for n in 1..=3 {
        let (status, body) = post(&api.url, &id, "?waitMs=30000", json!({ "n": n }), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["reply"], json!({ "echo": { "n": n }, "count": n }));
    }
}

/// With a model alias in its input the chat agent is model-backed: each message is answered by
/// the model, which sees the whole conversation of the run so far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_backed_chat_keeps_its_conversation() {
    use drover_test_support::model_server::{ModelServer, Reply};

    let server = ModelServer::start(vec![
        Reply::text("Hello! How can I help?"),
        Reply::text("Two plus two is four."),
    ])
    .await;
    let setup = Setup::new(include_str!("../agents/chat.toml"));
    let config = setup.data.path().join("drover.toml");
    std::fs::write(
        &config,
        format!(
            "[models.cheap]\nprovider = \"openai\"\nbase-url = \"{}\"\nmodel = \"m\"\n\
             api-key-env = \"DROVER_TEST_MODEL_KEY\"\n",
            server.base_url()
        ),
    )
    .expect("config");
    let args = host_args(setup.agents.path(), setup.data.path(), "var", Some(&config));
    let host = HostProcess::start(EXE, &args, &[("DROVER_TEST_MODEL_KEY", "sk-chat-test")]);
    let url = &host.url;
    let id = spawn(
        url,
        "chat",
        json!({ "model": "cheap", "systemPrompt": "Be brief." }),
        None,
    )
    .await;

    let (status, first) = post(url, &id, "?waitMs=30000", json!("hi"), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        first["reply"],
        json!({ "reply": "Hello! How can I help?", "count": 1 })
    );
    let (status, second) = post(
        url,
        &id,
        "?waitMs=30000",
        json!({ "question": "2 + 2" }),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        second["reply"],
        json!({ "reply": "Two plus two is four.", "count": 2 })
    );
    // The second request carried the whole conversation, the first answer included.
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let said: Vec<(Value, Value)> = requests[1].body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["role"].clone(), m["content"].clone()))
        .collect();
    assert_eq!(
        said,
        [
            (json!("system"), json!("Be brief.")),
            (json!("user"), json!("hi")),
            (json!("assistant"), json!("Hello! How can I help?")),
            (json!("user"), json!(r#"{"question":"2 + 2"}"#)),
        ]
    );
    // The host, not the guest, holds the key: it went with the request.
    assert_eq!(
        requests[0].header("authorization"),
        Some("Bearer sk-chat-test")
    );
}
