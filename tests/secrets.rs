//! Secrets the guest never sees: configuration errors, placeholders replaced only for the
//! secret's hosts (and in bodies only with `in-body`), OAuth2 tokens from a real local token
//! endpoint (fetched once, fetched again after expiry, failures not kept), values absent from
//! every error and `Debug` output, and a real wasm run of the real binary whose environment
//! holds only placeholders.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use drover_host::config::HostConfig;
use drover_host::outbound::Target;
use drover_host::secrets::{SecretError, Secrets, env_var, placeholder};
use drover_test_support::oauth_server::OAuthServer;
use drover_test_support::{AgentDir, CHAOS, HostProcess, WAIT};
use http::HeaderValue;
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// What the receiving server saw: each request's headers and body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A server on 127.0.0.1 that records every request it gets; its base URL.
async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .fallback(post(
            |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| async move {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((headers, body.to_vec()));
                "ok"
            },
        ))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

/// The secrets of `toml` (a `drover.toml`), with `env` as the environment.
fn load(toml: &str, env: &[(&str, &str)]) -> Result<Secrets, SecretError> {
    let config = HostConfig::parse(toml).expect("a valid configuration");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Secrets::with_env(&config.secrets, client(), move |var| {
        env.iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| OsString::from(v))
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn granted(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn target(url: &str) -> Target {
    Target::from_url(url).expect("target")
}

fn bearer(name: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", placeholder(name))).expect("value"),
    );
    headers
}

/// Sends what `apply` made of a request to `url`.
async fn send(url: &str, headers: HeaderMap, body: Vec<u8>) {
    let response = client()
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("send");
    assert!(response.status().is_success());
}

const STATIC_VALUE: &str = "sk-live-7f3a9c21d0";

#[tokio::test]
async fn placeholders_become_values_only_for_the_secrets_hosts() {
    let (bound, seen) = receiver().await;
    let (other, other_seen) = receiver().await;
    let secrets = load(
        &format!(
            "[secrets.sample-api-a]\nfrom-env = \"SAMPLE_API_A_TOKEN\"\nhosts = [\"{bound}\"]\n"
        ),
        &[("SAMPLE_API_A_TOKEN", STATIC_VALUE)],
    )
    .expect("loads");
    let agent = granted(&["sample-api-a"]);

    let mut headers = bearer("sample-api-a");
    headers.insert("x-tenant-id", HeaderValue::from_static("t1"));
    let used = secrets
        .apply(&agent, &target(&bound), &mut headers, None)
        .await
        .expect("bound host");
    assert_eq!(used, ["sample-api-a"]);
    send(&format!("{bound}/work"), headers, Vec::new()).await;
    {
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].0["authorization"],
            format!("Bearer {STATIC_VALUE}").as_str()
        );
        assert_eq!(seen[0].0["x-tenant-id"], "t1");
    }

    // To any other host the request is refused, and what would be sent still holds only the
    // placeholder.
    let mut headers = bearer("sample-api-a");
    let error = secrets
        .apply(&agent, &target(&other), &mut headers, None)
        .await
        .expect_err("another port of the same address");
    assert!(
        matches!(&error, SecretError::NotBound { name, target } if name == "sample-api-a" && target.ends_with(other.rsplit(':').next().unwrap_or_default())),
        "{error}"
    );
    assert!(!error.to_string().contains(STATIC_VALUE));
    assert_eq!(
        headers["authorization"],
        format!("Bearer {}", placeholder("sample-api-a")).as_str()
    );
    // An agent not granted the secret is refused even on its host.
    let mut headers = bearer("sample-api-a");
    let error = secrets
        .apply(&[], &target(&bound), &mut headers, None)
        .await
        .expect_err("not granted");
    assert!(matches!(error, SecretError::NotGranted { .. }), "{error}");
    assert!(other_seen.lock().expect("seen").is_empty());
}

#[tokio::test]
async fn bodies_are_substituted_only_for_in_body_secrets() {
    let (url, seen) = receiver().await;
    let secrets = load(
        &format!(
            "[secrets.header-only]\nfrom-env = \"H\"\nhosts = [\"{url}\"]\n\
             [secrets.form-key]\nfrom-env = \"B\"\nhosts = [\"{url}\"]\nin-body = true\n"
        ),
        &[("H", "header-value-1"), ("B", "body-value-2")],
    )
    .expect("loads");
    let both = granted(&["header-only", "form-key"]);
    assert!(secrets.needs_body(&both));
    assert!(!secrets.needs_body(&granted(&["header-only"])));

    let mut headers = bearer("header-only");
    let mut body = format!(
        "key={}&h={}",
        placeholder("form-key"),
        placeholder("header-only")
    )
    .into_bytes();
    let mut used = secrets
        .apply(&both, &target(&url), &mut headers, Some(&mut body))
        .await
        .expect("applies");
    used.sort();
    assert_eq!(used, ["form-key", "header-only"]);
    send(&url, headers, body).await;
    let seen = seen.lock().expect("seen");
    assert_eq!(seen[0].0["authorization"], "Bearer header-value-1");
    assert_eq!(
        String::from_utf8_lossy(&seen[0].1),
        format!("key=body-value-2&h={}", placeholder("header-only"))
    );
}

const CLIENT_ID: &str = "drover-client";
const CLIENT_SECRET: &str = "cs-5e1f0b77a2";
const SCOPE: &str = "sample-api-a:write";

fn oauth_toml(token_url: &str, api: &str) -> String {
    format!(
        "[secrets.api-a-write]\nhosts = [\"{api}\"]\n\
         [secrets.api-a-write.oauth2]\ntoken-url = \"{token_url}\"\n\
         client-id-env = \"CLIENT_ID\"\nclient-secret-env = \"CLIENT_SECRET\"\n\
         scope = \"{SCOPE}\"\naudience = \"https://api.test\"\n"
    )
}

fn oauth_secrets(token_url: &str, client_secret: &str) -> Secrets {
    load(
        &oauth_toml(token_url, "http://127.0.0.1:9"),
        &[("CLIENT_ID", CLIENT_ID), ("CLIENT_SECRET", client_secret)],
    )
    .expect("loads")
}

/// The `Authorization` value a request to the API gets.
async fn authorization(secrets: &Secrets) -> Result<String, SecretError> {
    let mut headers = bearer("api-a-write");
    secrets
        .apply(
            &granted(&["api-a-write"]),
            &target("http://127.0.0.1:9"),
            &mut headers,
            None,
        )
        .await?;
    Ok(headers["authorization"]
        .to_str()
        .expect("ascii")
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_fetched_once_for_many_requests_and_again_after_it_expires() {
    let server = OAuthServer::start(CLIENT_ID, CLIENT_SECRET, SCOPE).await;
    server.set_expires_in(Some(3));
    server.set_delay(Duration::from_millis(200));
    let secrets = oauth_secrets(&server.token_url(), CLIENT_SECRET);
    // Nothing is fetched before a request needs it.
    assert_eq!(server.requests(), 0);

    let started = Instant::now();
    let answers = futures::future::join_all((0..16).map(|_| authorization(&secrets))).await;
    let first = server.issued();
    assert_eq!(first.len(), 1, "one fetch for 16 concurrent requests");
    for answer in answers {
        assert_eq!(answer.expect("a token"), format!("Bearer {}", first[0]));
    }
    for _ in 0..10 {
        assert_eq!(
            authorization(&secrets).await.expect("kept token"),
            format!("Bearer {}", first[0])
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the kept token was checked before its refresh time; this machine is too slow for it"
    );
    assert_eq!(server.requests(), 1);
    assert_eq!(server.audiences(), [Some("https://api.test".to_string())]);

    // After it expires, the next request gets a new one.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let answer = authorization(&secrets).await.expect("a new token");
    let issued = server.issued();
    assert_eq!(issued.len(), 2);
    assert_ne!(issued[0], issued[1]);
    assert_eq!(answer, format!("Bearer {}", issued[1]));
    // Both tokens are redacted.
    let text = format!("{} and {}", issued[0], issued[1]);
    assert_eq!(
        secrets.redact(&text),
        "[secret api-a-write] and [secret api-a-write]"
    );
    assert_eq!(
        secrets.redact(&format!("client {CLIENT_SECRET}")),
        "client [secret api-a-write]"
    );

    // A token with no `expires_in` is kept too.
    let server = OAuthServer::start(CLIENT_ID, CLIENT_SECRET, SCOPE).await;
    server.set_expires_in(None);
    let secrets = oauth_secrets(&server.token_url(), CLIENT_SECRET);
    authorization(&secrets).await.expect("a token");
    authorization(&secrets).await.expect("the same token");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_failed_token_fetch_is_a_redacted_error_and_is_not_kept() {
    let server = OAuthServer::start(CLIENT_ID, CLIENT_SECRET, SCOPE).await;
    let secrets = oauth_secrets(&server.token_url(), CLIENT_SECRET);

    // The endpoint fails, echoing the client secret in its description: the error says what
    // the endpoint said, with the secret redacted.
    server.set_failing(true);
    let error = authorization(&secrets).await.expect_err("failing endpoint");
    let message = error.to_string();
    assert!(matches!(error, SecretError::Token { .. }), "{message}");
    assert!(message.contains("\"api-a-write\""), "{message}");
    assert!(message.contains("temporarily_unavailable"), "{message}");
    assert!(message.contains("[secret api-a-write]"), "{message}");
    assert!(!message.contains(CLIENT_SECRET), "{message}");
    assert!(!format!("{error:?}").contains(CLIENT_SECRET));
    assert_eq!(server.requests(), 1);

    // The failure was not kept: once the endpoint works, the next request gets a token.
    server.set_failing(false);
    let answer = authorization(&secrets).await.expect("a token");
    assert_eq!(server.requests(), 2);
    assert_eq!(answer, format!("Bearer {}", server.issued()[0]));

    // A wrong client secret, and a scope the client may not have, are refused by the endpoint.
    let wrong = oauth_secrets(&server.token_url(), "not-the-secret");
    let message = authorization(&wrong).await.expect_err("wrong").to_string();
    assert!(message.contains("invalid_client"), "{message}");
    assert!(!message.contains("not-the-secret"), "{message}");
    let other_scope = load(
        &oauth_toml(&server.token_url(), "http://127.0.0.1:9").replace(SCOPE, "admin"),
        &[("CLIENT_ID", CLIENT_ID), ("CLIENT_SECRET", CLIENT_SECRET)],
    )
    .expect("loads");
    let message = authorization(&other_scope)
        .await
        .expect_err("scope")
        .to_string();
    assert!(message.contains("invalid_scope"), "{message}");

    // An endpoint nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = format!(
        "http://{}/oauth/token",
        listener.local_addr().expect("address")
    );
    drop(listener);
    let unreachable = oauth_secrets(&closed, CLIENT_SECRET);
    let message = authorization(&unreachable)
        .await
        .expect_err("unreachable")
        .to_string();
    assert!(
        message.contains("cannot reach the token endpoint"),
        "{message}"
    );
}

#[test]
fn configuration_errors_name_the_secret_and_never_its_value() {
    for (toml, expected) in [
        (
            "[secrets.a]\nhosts = [\"https://x.test\"]\n",
            "secret \"a\": give where its value comes from",
        ),
        ("[secrets.a]\nfrom-env = \"V\"\n", "missing field `hosts`"),
        (
            "[secrets.a]\nfrom-env = \"V\"\nhosts = [\"https://*.x.test/path\"]\n",
            "secret \"a\": hosts: \"https://*.x.test/path\"",
        ),
        (
            "[secrets.a]\nhosts = [\"https://x.test\"]\n[secrets.a.oauth2]\ntoken-url = \"ftp://x\"\n\
             client-id-env = \"I\"\nclient-secret-env = \"S\"\nscope = \"s\"\n",
            "secret \"a\": oauth2: token-url \"ftp://x\" must be an http:// or https:// URL",
        ),
        (
            "[secrets.a]\nhosts = [\"https://x.test\"]\n[secrets.a.oauth2]\n\
             token-url = \"https://auth.test/token\"\nclient-id-env = \"I\"\n\
             client-secret-env = \"S\"\nscope = \" \"\n",
            "scope must name at least one scope",
        ),
        (
            "[secrets.a]\nfrom-env = \"V\"\nhosts = [\"https://x.test\"]\nin-bodies = true\n",
            "unknown field `in-bodies`",
        ),
    ] {
        let error = HostConfig::parse(toml).expect_err(toml);
        assert!(
            error.contains(expected),
            "{error:?} should say {expected:?}"
        );
    }

    let static_toml = "[secrets.a]\nfrom-env = \"V\"\nhosts = [\"https://x.test\"]\n";
    let value_with_break = "first-line\nsecond-line-9d2";
    for (env, expected) in [
        (
            vec![],
            "secret \"a\": the environment variable V is not set",
        ),
        (
            vec![("V", value_with_break)],
            "secret \"a\": its value has characters a header cannot carry",
        ),
        (vec![("V", "")], "secret \"a\": its value is empty"),
    ] {
        let error = load(static_toml, &env).expect_err("refused").to_string();
        assert!(
            error.contains(expected),
            "{error:?} should say {expected:?}"
        );
        assert!(!error.contains("second-line"), "{error}");
    }
    let oauth = oauth_toml("https://auth.test/token", "https://api.test");
    let error = load(&oauth, &[("CLIENT_ID", "id")])
        .expect_err("no client secret")
        .to_string();
    assert!(
        error.contains("secret \"api-a-write\": the environment variable CLIENT_SECRET is not set"),
        "{error}"
    );

    // Debug output of the configuration and of the loaded secrets shows no value.
    let config = HostConfig::parse(static_toml).expect("valid");
    let secrets = load(static_toml, &[("V", STATIC_VALUE)]).expect("loads");
    let oauth_loaded = load(
        &oauth,
        &[("CLIENT_ID", CLIENT_ID), ("CLIENT_SECRET", CLIENT_SECRET)],
    )
    .expect("loads");
    for debug in [
        format!("{config:?}"),
        format!("{secrets:?}"),
        format!("{oauth_loaded:?}"),
    ] {
        assert!(!debug.contains(STATIC_VALUE), "{debug}");
        assert!(!debug.contains(CLIENT_SECRET), "{debug}");
        assert!(!debug.contains(CLIENT_ID), "{debug}");
    }
    assert!(format!("{secrets:?}").contains("\"a\""));
}

#[tokio::test]
async fn the_host_does_not_start_without_a_secrets_value_and_never_prints_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("drover.toml");
    std::fs::write(
        &config,
        "[secrets.sample-api-a]\nfrom-env = \"SAMPLE_API_A_TOKEN\"\nhosts = [\"https://api.test\"]\n",
    )
    .expect("write config");
    let agents = AgentDir::new();
    for env in [None, Some("broken\u{7}-sk-bell-4411")] {
        let mut command = std::process::Command::new(EXE);
        command
            .args(["run", "--config"])
            .arg(&config)
            .arg("--agents")
            .arg(agents.path())
            .arg("--data-dir")
            .arg(dir.path().join("var"))
            .arg("--queue-url")
            .arg(format!("file:{}", dir.path().join("queue.db").display()))
            .arg("--storage-url")
            .arg(format!("file:{}", dir.path().join("runs.db").display()))
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("SAMPLE_API_A_TOKEN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(value) = env {
            command.env("SAMPLE_API_A_TOKEN", value);
        }
        let mut child = command.spawn().expect("start");
        let deadline = Instant::now() + WAIT;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("drover-host started without its secret");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot load the secrets"), "{stderr}");
        assert!(stderr.contains("secret \"sample-api-a\""), "{stderr}");
        assert!(!stderr.contains("sk-bell"), "{stderr}");
        if env.is_none() {
            assert!(stderr.contains("SAMPLE_API_A_TOKEN is not set"), "{stderr}");
        }
    }
}

async fn get(url: String) -> Value {
    let response = reqwest::get(&url).await.expect("get");
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_run_sees_only_placeholders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("drover.toml");
    std::fs::write(
        &config,
        "[secrets.sample-api-a]\nfrom-env = \"SAMPLE_API_A_TOKEN\"\nhosts = [\"https://api.test\"]\n\
         [secrets.unused]\nfrom-env = \"UNUSED_TOKEN\"\nhosts = [\"https://api.test\"]\n",
    )
    .expect("write config");
    let agents = AgentDir::new();
    agents
        .add(
            "chaos",
            CHAOS,
            Some("secrets = [\"sample-api-a\"]\n[env]\nGREETING = \"hi\"\n"),
        )
        .add("stranger", CHAOS, Some("secrets = [\"nope\"]\n"))
        .add_tool(
            "http-get",
            drover_test_support::TOOL_HTTP_GET,
            Some("secrets = [\"sample-api-a\", \"gone\"]\n"),
        );
    let args = drover_test_support::host_args(agents.path(), dir.path(), "var", Some(&config));
    let host = HostProcess::start(
        EXE,
        &args,
        &[
            ("SAMPLE_API_A_TOKEN", STATIC_VALUE),
            ("UNUSED_TOKEN", "unused-value-3b8e"),
        ],
    );
    let url = &host.url;
    let http = reqwest::Client::new();
    let mut served = Vec::new();
    for (id, agent) in [("env-1", "chaos"), ("env-2", "stranger")] {
        let created = http
            .post(format!("{url}/v1/jobs"))
            .json(&json!({ "id": id, "agentId": agent, "input": { "mode": "env" } }))
            .send()
            .await
            .expect("enqueue");
        assert!(created.status().is_success());
        let done = get(format!("{url}/v1/jobs/{id}/wait?timeoutMs=30000")).await;
        assert_eq!(done["job"]["status"], "done", "{done}");
        served.push(done);
    }
    assert_eq!(
        served[0]["run"]["output"],
        json!({
            "GREETING": "hi",
            env_var("sample-api-a"): placeholder("sample-api-a"),
        })
    );
    assert_eq!(
        served[1]["run"]["output"],
        json!({ env_var("nope"): placeholder("nope") })
    );

    let templates = get(format!("{url}/v1/templates")).await;
    let chaos = templates["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .find(|t| t["id"] == "chaos")
        .expect("chaos");
    assert_eq!(chaos["secrets"], json!(["sample-api-a"]));
    let text = templates.to_string();
    assert!(
        text.contains("agent \\\"stranger\\\" lists secret \\\"nope\\\", which is not configured (configured: sample-api-a, unused)"),
        "{text}"
    );
    // A tool's manifest is checked the same way.
    assert!(
        text.contains("tool \\\"http-get\\\" lists secret \\\"gone\\\", which is not configured"),
        "{text}"
    );
    assert!(
        !text.contains("lists secret \\\"sample-api-a\\\""),
        "{text}"
    );
    for path in [
        "/v1/templates".to_string(),
        "/v1/jobs".to_string(),
        "/v1/runs".to_string(),
        "/v1/jobs/env-1".to_string(),
    ] {
        served.push(get(format!("{url}{path}")).await);
    }
    let run_id = served[0]["run"]["id"].as_str().expect("run id").to_string();
    served.push(get(format!("{url}/v1/runs/{run_id}/events")).await);
    // (The viewer is a page over these same API routes.)
    let everything = format!(
        "{}\n{}",
        served
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        host.log_text()
    );
    assert!(everything.contains("sample-api-a"));
    for value in [STATIC_VALUE, "unused-value-3b8e"] {
        assert!(!everything.contains(value), "{value} was served or logged");
    }
}
