//! The seed's long-lived queue worker, for real: the real binary runs `agents/queue-worker` in
//! the wasm sandbox; per item it posts to a protected API on 127.0.0.1 with a scoped OAuth2
//! token the host fetched from a real token endpoint (the guest holds only a placeholder) and
//! its job's tenant in `X-Tenant-ID`. Only that API's host is allowed.

use std::time::Duration;

use drover_test_support::http::{self, get_json};
use drover_test_support::oauth_server::OAuthServer;
use drover_test_support::sample_api::SampleApi;
use drover_test_support::{AgentDir, HostProcess, QUEUE_WORKER};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");
const CLIENT_ID: &str = "queue-worker-client";
const CLIENT_SECRET: &str = "cs-worker-41d9e6b2";
const SCOPE: &str = "sample-api-a:write";

async fn spawn(url: &str, agent: &str, tenant: &str) -> String {
    http::spawn(
        url,
        &json!({
            "agentType": agent, "tenantId": tenant, "userId": "user-1",
            "input": { "itemsPerBatch": 2 },
        }),
    )
    .await
}

/// The agent's events of `kind`, once there are at least `count` of them.
async fn events_of(url: &str, agent: &str, kind: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = get_json(format!("{url}/v1/agents/{agent}/events")).await;
        let found: Vec<Value> = events["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect();
        if found.len() >= count {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {count} {kind} events: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop(url: &str, agent: &str) -> Value {
    let status = reqwest::Client::new()
        .delete(format!("{url}/v1/agents/{agent}"))
        .send()
        .await
        .expect("delete")
        .status();
    assert_eq!(status, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let view = get_json(format!("{url}/v1/agents/{agent}")).await;
        if view["agent"]["phase"] == "Completed" {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not stopped: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_worker_posts_each_item_with_a_scoped_token_and_its_tenant() {
    let oauth = OAuthServer::start(CLIENT_ID, CLIENT_SECRET, SCOPE).await;
    let api = SampleApi::accepting(oauth.verifier()).await;
    let api_host = api.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("drover.toml");
    std::fs::write(
        &config,
        format!(
            "[outbound]\nallowed-hosts = [\"{api_host}\"]\n\n\
             [secrets.sample-api-a]\nhosts = [\"{api_host}\"]\n\
             [secrets.sample-api-a.oauth2]\ntoken-url = \"{}\"\n\
             client-id-env = \"SAMPLE_CLIENT_ID\"\nclient-secret-env = \"SAMPLE_CLIENT_SECRET\"\n\
             scope = \"{SCOPE}\"\n",
            oauth.token_url()
        ),
    )
    .expect("write config");
    let manifest = |secrets: &str| {
        format!(
            "lifecycle = \"long-lived\"\nallowed-outbound-hosts = [\"{api_host}\"]\n\
             secrets = {secrets}\n[env]\nAPI_A_URL = \"{api_host}\"\nPOLL_INTERVAL_MS = \"100\"\n"
        )
    };
    let agents = AgentDir::new();
    agents
        .add(
            "queue-worker",
            QUEUE_WORKER,
            Some(&manifest("[\"sample-api-a\"]")),
        )
        // The same worker without the secret: its placeholder is refused, never sent.
        .add("ungranted-worker", QUEUE_WORKER, Some(&manifest("[]")));
    let args = drover_test_support::host_args(agents.path(), dir.path(), "var", Some(&config));
    let host = HostProcess::start(
        EXE,
        &args,
        &[
            ("SAMPLE_CLIENT_ID", CLIENT_ID),
            ("SAMPLE_CLIENT_SECRET", CLIENT_SECRET),
        ],
    );
    let url = host.url.clone();

    let worker = spawn(&url, "queue-worker", "tenant-1").await;
    let processed = events_of(&url, &worker, "item_processed", 6).await;
    for event in &processed {
        assert_eq!(event["payload"]["ok"], true, "{event}");
        assert_eq!(event["payload"]["status"], 200, "{event}");
    }
    let requests = events_of(&url, &worker, "http_request", 6).await;
    assert_eq!(
        requests[0]["payload"]["url"],
        format!("{api_host}/work"),
        "{}",
        requests[0]
    );
    let view = stop(&url, &worker).await;
    assert_eq!(view["agent"]["run"]["status"], "success", "{view}");

    // The API saw the tenant and a token the endpoint issued, fetched once for every item.
    let received = api.received();
    assert!(received.len() >= 6, "{received:?}");
    let issued = oauth.issued();
    assert_eq!(oauth.requests(), 1, "one token for every request");
    for r in &received {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.tenant.as_deref(), Some("tenant-1"));
        assert_eq!(r.authorization, Some(format!("Bearer {}", issued[0])));
    }

    // Without the grant the placeholder is refused: nothing reaches the API.
    let before = api.received().len();
    let ungranted = spawn(&url, "ungranted-worker", "tenant-2").await;
    let refused = events_of(&url, &ungranted, "item_processed", 2).await;
    for event in &refused {
        assert_eq!(event["payload"]["ok"], false, "{event}");
        assert!(event["payload"]["error"].is_string(), "{event}");
    }
    stop(&url, &ungranted).await;
    assert_eq!(api.received().len(), before, "{:?}", api.received());

    // Neither the client's secret nor the token appears in anything the host serves or logs.
    let mut served = Vec::new();
    for path in [
        format!("/v1/agents/{worker}/events"),
        format!("/v1/agents/{ungranted}/events"),
        format!("/v1/agents/{worker}"),
        "/v1/agents".to_string(),
        "/v1/jobs".to_string(),
        "/v1/runs".to_string(),
        "/v1/templates".to_string(),
    ] {
        served.push(get_json(format!("{url}{path}")).await.to_string());
    }
    let everything = format!("{}\n{}", served.join("\n"), host.log_text());
    assert!(everything.contains("sample-api-a"));
    for secret in [CLIENT_SECRET, issued[0].as_str()] {
        assert!(
            !everything.contains(secret),
            "{secret} was served or logged"
        );
    } // Nor in any byte the host stored: its databases, their write-ahead logs, its data dir.
    let mut stored = 0;
    for file in walk(dir.path()) {
        if file == config {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        stored += bytes.len();
        for secret in [CLIENT_SECRET, issued[0].as_str()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is stored in {}",
                file.display()
            );
        }
    }
    assert!(stored > 0);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
