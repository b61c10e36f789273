//! The model gateway against the scripted model server, over real HTTP: both wire protocols,
//! retries, timeouts, the concurrency limit, cost, the key kept out of everything, and the
//! configuration file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_host::config::HostConfig;
use drover_host::model::{
    AliasConfig, ChatRequest, FinishReason, Message, ModelConfigError, ModelError, ModelGateway,
    ModelsConfig, Provider, TokenUsage, ToolDefinition,
};
use drover_test_support::model_server::{ModelServer, Reply};
use serde_json::{Value, json};

const KEY: &str = "sk-test-3b9f0c1d7e2a4f6b";
const KEY_ENV: &str = "DROVER_TEST_MODEL_KEY";

/// An alias on `server` with a key, fast retries, and the given changes.
fn alias(
    provider: Provider,
    server: &ModelServer,
    change: impl FnOnce(&mut AliasConfig),
) -> AliasConfig {
    let mut config = AliasConfig::new(provider, server.base_url(), "provider-model-1");
    config.api_key_env = Some(KEY_ENV.to_string());
    config.retry_base_ms = 10;
    change(&mut config);
    config
}

fn gateway(aliases: Vec<(&str, AliasConfig)>) -> ModelGateway {
    let config = ModelsConfig(
        aliases
            .into_iter()
            .map(|(name, a)| (name.to_string(), a))
            .collect(),
    );
    ModelGateway::with_keys(&config, |var| (var == KEY_ENV).then(|| KEY.to_string()))
        .expect("gateway")
}

fn request(alias: &str, text: &str) -> ChatRequest {
    ChatRequest {
        model: alias.to_string(),
        messages: vec![Message::system("Be brief."), Message::user(text)],
        tools: Vec::new(),
        max_output_tokens: None,
        temperature: None,
        json_output: false,
    }
}

fn calc_tool() -> ToolDefinition {
    ToolDefinition {
        name: "calc".into(),
        description: "Evaluates arithmetic.".into(),
        parameters: json!({"type": "object", "properties": {"expr": {"type": "string"}},
                           "required": ["expr"]}),
    }
}

#[tokio::test]
async fn a_text_reply_round_trips_and_the_request_is_the_providers_format() {
    let server = ModelServer::start(vec![Reply::text("hello there").usage(12, 3)]).await;
    let models = gateway(vec![(
        "cheap",
        alias(Provider::OpenAi, &server, |a| a.max_output_tokens = 256),
    )]);
    let mut req = request("cheap", "hi");
    req.tools = vec![calc_tool()];
    req.max_output_tokens = Some(5000);
    req.temperature = Some(0.5);
    req.json_output = true;
    let response = models.complete("echo", &req).await.expect("complete");

    assert_eq!(response.message, Message::assistant("hello there"));
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert_eq!(
        response.usage,
        TokenUsage {
            input_tokens: 12,
            output_tokens: 3
        }
    );
    assert_eq!(response.model, "scripted-model");
    assert_eq!(response.attempts, 1);

    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    let sent = &sent[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let body = &sent.body;
    assert_eq!(body["model"], "provider-model-1");
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(
        body["tools"],
        json!([{"type": "function", "function": {
            "name": "calc", "description": "Evaluates arithmetic.",
            "parameters": calc_tool().parameters}}])
    );
    assert_eq!(body["max_tokens"], 256, "clamped to the alias's limit");
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["response_format"], json!({"type": "json_object"}));

    // Without a limit asked for, the alias's is sent; the other field name on request.
    let server = ModelServer::start(vec![Reply::text("ok")]).await;
    let models = gateway(vec![(
        "cheap",
        alias(Provider::OpenAi, &server, |a| {
            a.max_output_tokens = 300;
            a.max_tokens_field = drover_host::model::MaxTokensField::MaxCompletionTokens;
        }),
    )]);
    models
        .complete("echo", &request("cheap", "hi"))
        .await
        .expect("complete");
    let body = &server.requests()[0].body;
    assert_eq!(body["max_completion_tokens"], 300);
    assert!(body.get("max_tokens").is_none());
    assert!(body.get("response_format").is_none());
}

#[tokio::test]
async fn parallel_tool_calls_round_trip() {
    let server = ModelServer::start(vec![
        Reply::tool_calls(vec![
            ("call_1", "calc", json!({"expr": "1+2"})),
            ("call_2", "calc", json!({"expr": "3*4"})),
        ]),
        Reply::text("3 and 12"),
    ])
    .await;
    let models = gateway(vec![("cheap", alias(Provider::OpenAi, &server, |_| {}))]);
    let mut req = request("cheap", "compute");
    req.tools = vec![calc_tool()];
    let response = models.complete("agent", &req).await.expect("first turn");
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    let calls = &response.message.tool_calls;
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].id.as_str(), calls[0].name.as_str()),
        ("call_1", "calc")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&calls[1].arguments).expect("json arguments"),
        json!({"expr": "3*4"})
    );

    req.messages.push(response.message.clone());
    req.messages.push(Message::tool("call_1", "3"));
    req.messages.push(Message::tool("call_2", "12"));
    let response = models.complete("agent", &req).await.expect("second turn");
    assert_eq!(response.message.content, "3 and 12");
    assert_eq!(response.finish_reason, FinishReason::Stop);

    let body = &server.requests()[1].body;
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 5);
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["content"], Value::Null);
    assert_eq!(
        messages[2]["tool_calls"][1],
        json!({"id": "call_2", "type": "function",
               "function": {"name": "calc", "arguments": json!({"expr": "3*4"}).to_string()}})
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "content": "3", "tool_call_id": "call_1"})
    );
    assert_eq!(
        messages[4],
        json!({"role": "tool", "content": "12", "tool_call_id": "call_2"})
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_succeeds() {
    let server =
        ModelServer::start(vec![Reply::status(429).retry_after(1), Reply::text("ok")]).await;
    // The backoff alone would retry after 10 ms: waiting a second is Retry-After's doing.
    let models = gateway(vec![("cheap", alias(Provider::OpenAi, &server, |_| {}))]);
    let started = Instant::now();
    let response = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect("complete after a retry");
    assert_eq!(response.attempts, 2);
    assert_eq!(response.message.content, "ok");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured ({:?})",
        started.elapsed()
    );
    assert_eq!(server.served(), 2);
}

#[tokio::test]
async fn a_429_that_lasts_is_rate_limited_after_the_retries() {
    let server =
        ModelServer::start((0..4).map(|_| Reply::status(429).retry_after(0)).collect()).await;
    let models = gateway(vec![(
        "cheap",
        alias(Provider::OpenAi, &server, |a| a.max_retries = 2),
    )]);
    let error = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect_err("rate limited");
    assert!(matches!(error, ModelError::RateLimited { .. }), "{error:?}");
    assert_eq!(error.tag(), "ModelRateLimited");
    assert!(error.retryable());
    assert!(error.to_string().contains("scripted error 429"), "{error}");
    assert_eq!(server.served(), 3, "one attempt and two retries");
}

#[tokio::test]
async fn a_500_is_retried_then_unavailable() {
    let server = ModelServer::start((0..3).map(|_| Reply::status(500)).collect()).await;
    let models = gateway(vec![(
        "cheap",
        alias(Provider::OpenAi, &server, |a| a.max_retries = 2),
    )]);
    let error = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect_err("unavailable");
    assert!(matches!(error, ModelError::Unavailable { .. }), "{error:?}");
    assert_eq!(error.tag(), "ModelUnavailable");
    assert!(error.to_string().contains("500"), "{error}");
    assert_eq!(server.served(), 3);

    // A 500 then a good answer: two attempts.
    let server = ModelServer::start(vec![Reply::status(503), Reply::text("back")]).await;
    let models = gateway(vec![("cheap", alias(Provider::OpenAi, &server, |_| {}))]);
    let response = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect("second attempt");
    assert_eq!(response.attempts, 2);
}

#[tokio::test]
async fn other_4xx_are_not_retried() {
    let server = ModelServer::start(vec![Reply::status(404), Reply::text("unused")]).await;
    let models = gateway(vec![("cheap", alias(Provider::OpenAi, &server, |_| {}))]);
    let error = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect_err("not found");
    assert!(matches!(error, ModelError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("scripted error 404"), "{error}");
    assert_eq!(server.served(), 1);

    let server = ModelServer::start(vec![Reply::status(400), Reply::text("unused")]).await;
    let models = gateway(vec![("cheap", alias(Provider::OpenAi, &server, |_| {}))]);
    let error = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect_err("bad request");
    assert!(matches!(error, ModelError::BadResponse { .. }), "{error:?}");
    assert!(!error.retryable());
    assert_eq!(server.served(), 1);
}

#[tokio::test]
async fn a_malformed_body_is_a_bad_response() {
    for reply in [
        Reply::raw("not json"),
        Reply::json(json!({"choices": []})),
        Reply::json(json!({"unexpected": true})),
    ] {
        let server = ModelServer::start(vec![reply, Reply::text("unused")]).await;
        let models = gateway(vec![("cheap", alias(Provider::OpenAi, &server, |_| {}))]);
        let error = models
            .complete("agent", &request("cheap", "hi"))
            .await
            .expect_err("bad response");
        assert!(matches!(error, ModelError::BadResponse { .. }), "{error:?}");
        assert_eq!(error.tag(), "ModelBadResponse");
        assert_eq!(server.served(), 1, "not retried");
    }
}

#[tokio::test]
async fn a_reply_slower_than_the_timeout_is_unavailable() {
    let server = ModelServer::start(vec![
        Reply::text("too late").delay(Duration::from_secs(5)),
        Reply::text("unused"),
    ])
    .await;
    let models = gateway(vec![(
        "cheap",
        alias(Provider::OpenAi, &server, |a| a.timeout_ms = 300),
    )]);
    let started = Instant::now();
    let error = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect_err("timed out");
    assert!(matches!(error, ModelError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("300 ms"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout did not apply"
    );
    assert_eq!(server.requests().len(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn the_concurrency_limit_holds_requests_back() {
    let server = ModelServer::always(Reply::text("ok").delay(Duration::from_millis(200))).await;
    let models = gateway(vec![(
        "cheap",
        alias(Provider::OpenAi, &server, |a| a.max_concurrent = 2),
    )]);
    let calls = (0..6).map(|_| {
        let models = models.clone();
        tokio::spawn(async move { models.complete("agent", &request("cheap", "hi")).await })
    });
    for call in futures::future::join_all(calls).await {
        call.expect("task").expect("complete");
    }
    assert_eq!(server.served(), 6);
    assert_eq!(
        server.max_in_flight(),
        2,
        "at most (and, here, exactly) 2 at once"
    );
}

#[tokio::test]
async fn cost_and_metrics_follow_the_prices_and_usage() {
    let server = ModelServer::start(vec![
        Reply::text("a").usage(2000, 500),
        Reply::text("b").usage(1000, 0),
        Reply::raw("broken"),
    ])
    .await;
    let models = gateway(vec![(
        "cheap",
        alias(Provider::OpenAi, &server, |a| {
            a.input_usd_per_mtok = 0.15;
            a.output_usd_per_mtok = 0.60;
        }),
    )]);
    let first = models
        .complete("alpha", &request("cheap", "1"))
        .await
        .expect("first");
    assert!(
        (first.cost_usd - 0.0006).abs() < 1e-12,
        "{}",
        first.cost_usd
    );
    let second = models
        .complete("beta", &request("cheap", "2"))
        .await
        .expect("second");
    assert!(
        (second.cost_usd - 0.00015).abs() < 1e-12,
        "{}",
        second.cost_usd
    );
    models
        .complete("alpha", &request("cheap", "3"))
        .await
        .expect_err("broken");

    let metrics = models.metrics();
    assert_eq!(metrics.len(), 2);
    let alpha = &metrics[0];
    assert_eq!(
        (alpha.agent_id.as_str(), alpha.alias.as_str()),
        ("alpha", "cheap")
    );
    assert_eq!((alpha.calls, alpha.failures), (2, 1));
    assert_eq!((alpha.input_tokens, alpha.output_tokens), (2000, 500));
    assert!((alpha.cost_usd - 0.0006).abs() < 1e-12);
    let beta = &metrics[1];
    assert_eq!((beta.calls, beta.failures, beta.input_tokens), (1, 0, 1000));
}

#[tokio::test]
async fn an_anthropic_round_trip_with_a_tool_use() {
    let server = ModelServer::start(vec![
        Reply::tool_calls(vec![("toolu_1", "calc", json!({"expr": "1+2"}))]).usage(30, 8),
        Reply::text("It is 3.").usage(40, 4),
    ])
    .await;
    let models = gateway(vec![(
        "smart",
        alias(Provider::Anthropic, &server, |a| {
            a.max_output_tokens = 512;
            a.input_usd_per_mtok = 3.0;
            a.output_usd_per_mtok = 15.0;
        }),
    )]);
    let mut req = request("smart", "What is 1+2?");
    req.tools = vec![calc_tool()];
    let response = models.complete("agent", &req).await.expect("tool use");
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_eq!(response.message.tool_calls.len(), 1);
    let call = &response.message.tool_calls[0];
    assert_eq!((call.id.as_str(), call.name.as_str()), ("toolu_1", "calc"));
    assert_eq!(
        serde_json::from_str::<Value>(&call.arguments).expect("json arguments"),
        json!({"expr": "1+2"})
    );
    assert_eq!(response.usage.input_tokens, 30);
    assert!((response.cost_usd - (30.0 * 3.0 + 8.0 * 15.0) / 1e6).abs() < 1e-12);

    req.messages.push(response.message.clone());
    req.messages.push(Message::tool("toolu_1", "3"));
    let response = models.complete("agent", &req).await.expect("answer");
    assert_eq!(response.message, Message::assistant("It is 3."));
    assert_eq!(response.finish_reason, FinishReason::Stop);

    let sent = server.requests();
    assert_eq!(sent[0].path, "/v1/messages");
    assert_eq!(sent[0].header("x-api-key"), Some(KEY));
    assert_eq!(sent[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent[0].header("authorization"), None);
    let body = &sent[0].body;
    assert_eq!(body["model"], "provider-model-1");
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["max_tokens"], 512);
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "What is 1+2?"}]}])
    );
    assert_eq!(
        body["tools"],
        json!([{"name": "calc", "description": "Evaluates arithmetic.",
                "input_schema": calc_tool().parameters}])
    );
    let messages = &sent[1].body["messages"];
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"expr": "1+2"}}]})
    );
    assert_eq!(
        messages[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "3"}]})
    );
}

#[tokio::test]
async fn the_key_is_in_no_error_and_no_debug_output() {
    // A provider that echoes the key back in its errors, and one whose answer mentions it.
    let echo = json!({"error": {"message": format!("invalid api key {KEY}")}});
    let server = ModelServer::start(vec![
        Reply::json(echo.clone()).with_status(401),
        Reply::json(echo.clone()).with_status(400),
        Reply::json(echo.clone()).with_status(500),
        Reply::json(echo).with_status(429),
        Reply::raw(format!("{KEY} is not json")),
    ])
    .await;
    let models = gateway(vec![
        (
            "openai",
            alias(Provider::OpenAi, &server, |a| a.max_retries = 0),
        ),
        (
            "anthropic",
            alias(Provider::Anthropic, &server, |a| a.max_retries = 0),
        ),
    ]);
    let mut seen = vec![format!("{models:?}")];
    for alias in ["openai", "anthropic", "openai", "anthropic", "openai"] {
        let error = models
            .complete("agent", &request(alias, "hi"))
            .await
            .expect_err("an error");
        seen.push(error.to_string());
        seen.push(format!("{error:?}"));
    }
    assert_eq!(server.served(), 5);
    assert!(
        seen[1].contains("invalid api key [redacted]"),
        "{}",
        seen[1]
    );
    for text in &seen {
        assert!(!text.contains(KEY), "the key leaked: {text}");
    }
    // The key did go where it belongs.
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let key = drover_host::model::ApiKey::new(KEY);
    assert_eq!(format!("{key:?} {key}"), "[redacted] [redacted]");
}

#[tokio::test]
async fn an_unknown_alias_is_refused_without_a_request() {
    let server = ModelServer::start(vec![Reply::text("unused")]).await;
    let models = gateway(vec![("cheap", alias(Provider::OpenAi, &server, |_| {}))]);
    let error = models
        .complete("agent", &request("premium", "hi"))
        .await
        .expect_err("unknown");
    assert_eq!(error, ModelError::UnknownAlias("premium".into()));
    assert_eq!(error.tag(), "ModelNotAllowed");
    assert_eq!(server.served(), 0);
    assert_eq!(models.aliases(), vec!["cheap".to_string()]);
    assert!(models.has("cheap") && !models.has("premium"));
    assert_eq!(models.max_output_tokens("cheap"), Some(1024));
    let empty = ModelGateway::empty();
    assert!(empty.aliases().is_empty());
    assert!(matches!(
        empty.complete("agent", &request("cheap", "hi")).await,
        Err(ModelError::UnknownAlias(_))
    ));
}

#[test]
fn the_configuration_file_is_parsed_and_checked() {
    let config = HostConfig::parse(
        r#"
        [models.cheap]
        provider = "openai"
        base-url = "http://127.0.0.1:11434/v1"
        model = "qwen2.5:0.5b"
        api-key-env = "OPENAI_API_KEY"
        input-usd-per-mtok = 0.15
        output-usd-per-mtok = 0.6

        [models.smart]
        provider = "anthropic"
        base-url = "http://127.0.0.1:8081/v1"
        model = "claude-sonnet-4-5"
        max-output-tokens = 4096
        timeout-ms = 120000
        max-concurrent = 8
        max-retries = 5
        "#,
    )
    .expect("valid");
    let cheap = &config.models.0["cheap"];
    assert_eq!(cheap.provider, Provider::OpenAi);
    assert_eq!(cheap.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(cheap.input_usd_per_mtok, 0.15);
    assert_eq!(
        (
            cheap.max_output_tokens,
            cheap.timeout_ms,
            cheap.max_concurrent,
            cheap.max_retries
        ),
        (1024, 60_000, 64, 3),
        "defaults"
    );
    let smart = &config.models.0["smart"];
    assert_eq!(smart.provider, Provider::Anthropic);
    assert_eq!(
        (
            smart.max_output_tokens,
            smart.timeout_ms,
            smart.max_concurrent,
            smart.max_retries
        ),
        (4096, 120_000, 8, 5)
    );
    assert_eq!(HostConfig::parse("").expect("empty"), HostConfig::default());

    let head = "[models.cheap]\nprovider = \"openai\"\nmodel = \"m\"\n";
    for (extra, expected) in [
        ("base-url = \"not a url\"", "base-url"),
        ("base-url = \"ftp://example.com/v1\"", "http://"),
        (
            "base-url = \"http://x/v1\"\ninput-usd-per-mtok = -1.0",
            "input-usd-per-mtok",
        ),
        (
            "base-url = \"http://x/v1\"\noutput-usd-per-mtok = nan",
            "output-usd-per-mtok",
        ),
        (
            "base-url = \"http://x/v1\"\nmax-concurrent = 0",
            "max-concurrent",
        ),
        ("base-url = \"http://x/v1\"\ntimeout-ms = 0", "timeout-ms"),
        (
            "base-url = \"http://x/v1\"\nmax-output-tokens = 0",
            "max-output-tokens",
        ),
        (
            "base-url = \"http://x/v1\"\napi-key = \"sk-inline\"",
            "api-key",
        ),
        ("base-url = \"http://x/v1\"\nprovider-x = 1", "provider-x"),
    ] {
        let error = HostConfig::parse(&format!("{head}{extra}")).expect_err(extra);
        assert!(error.contains(expected), "{extra}: {error}");
    }
    let error = HostConfig::parse("[model.cheap]\n").expect_err("unknown section");
    assert!(error.contains("model"), "{error}");
    let error = HostConfig::parse("[models.cheap]\nprovider = \"gemini\"\n").expect_err("provider");
    assert!(error.contains("gemini"), "{error}");
}

#[test]
fn a_missing_key_variable_is_named_with_its_alias() {
    let variable = "DROVER_TEST_UNSET_KEY_7d1e";
    let mut cheap = AliasConfig::new(Provider::OpenAi, "http://127.0.0.1:9/v1", "m");
    cheap.api_key_env = Some(variable.into());
    let config = ModelsConfig([("cheap".to_string(), cheap)].into_iter().collect());
    let error = ModelGateway::new(&config).expect_err("missing key");
    assert_eq!(
        error,
        ModelConfigError::MissingKey {
            alias: "cheap".into(),
            variable: variable.into()
        }
    );
    let text = error.to_string();
    assert!(
        text.contains(variable) && text.contains("`cheap`"),
        "{text}"
    );
}

#[test]
fn a_config_file_error_names_the_file() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("drover.toml");
    let error = HostConfig::load(&path).expect_err("missing file");
    assert!(error.to_string().contains("drover.toml"), "{error}");
    std::fs::write(&path, "[models.cheap]\nprovider = \"openai\"\n").expect("write");
    let error = HostConfig::load(&path).expect_err("incomplete alias");
    let text = error.to_string();
    assert!(
        text.contains("drover.toml") && text.contains("base-url"),
        "{text}"
    );
}

/// Runs `drover-host run` with `args` and `envs` until it exits (or kills it after 20 s).
fn run_host(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().to_string_lossy().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drover-host"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--agents",
            &data,
            "--data-dir",
            &data,
        ])
        .args(["--queue-url", ":memory:", "--storage-url", ":memory:"])
        .args(args)
        .env_remove("DROVER_CONFIG")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

#[test]
fn the_host_refuses_to_start_without_an_aliases_key_or_with_a_bad_file() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("drover.toml");
    std::fs::write(
        &path,
        "[models.cheap]\nprovider = \"openai\"\nbase-url = \"http://127.0.0.1:9/v1\"\n\
         model = \"m\"\napi-key-env = \"DROVER_TEST_UNSET_KEY_91c3\"\n",
    )
    .expect("write");
    let config = path.to_string_lossy().to_string();
    let (status, stderr) = run_host(&["--config", &config], &[]);
    assert!(status.is_some_and(|s| s != 0), "{status:?}: {stderr}");
    assert!(
        stderr.contains("DROVER_TEST_UNSET_KEY_91c3") && stderr.contains("cheap"),
        "{stderr}"
    );

    // Through DROVER_CONFIG, a file that does not parse.
    std::fs::write(&path, "[models.cheap]\nprovider = \"openai\"\nbogus = 1\n").expect("write");
    let (status, stderr) = run_host(&[], &[("DROVER_CONFIG", &config)]);
    assert!(status.is_some_and(|s| s != 0), "{status:?}: {stderr}");
    assert!(
        stderr.contains("drover.toml") && stderr.contains("bogus"),
        "{stderr}"
    );
}

#[tokio::test]
async fn metrics_export_model_calls_per_agent_and_alias() {
    use drover_host::api::RunApi;
    use drover_host::api::metrics::Metrics;
    use drover_host::registry::{Registry, StaticRegistry};

    let server =
        ModelServer::start(vec![Reply::text("a").usage(2000, 500), Reply::status(400)]).await;
    let models = gateway(vec![(
        "cheap",
        alias(Provider::OpenAi, &server, |a| {
            a.input_usd_per_mtok = 0.15;
            a.output_usd_per_mtok = 0.60;
        }),
    )]);
    models
        .complete("echo-llm", &request("cheap", "1"))
        .await
        .expect("first");
    models
        .complete("echo-llm", &request("cheap", "2"))
        .await
        .expect_err("second");

    let db = drover_test_support::TestDb::new().await;
    let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::new());
    let api = RunApi::new(db.queue.clone(), db.store.clone(), registry);
    let metrics = Metrics::new(None);
    metrics.register_models(models.clone());
    let text = metrics.render(&api).await.expect("render");
    let labels = r#"{agent="echo-llm",alias="cheap"}"#;
    for line in [
        format!("drover_model_calls_total{labels} 2"),
        format!("drover_model_failures_total{labels} 1"),
        format!("drover_model_input_tokens_total{labels} 2000"),
        format!("drover_model_output_tokens_total{labels} 500"),
        format!("drover_model_cost_usd_total{labels} 0.0006"),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn a_response_over_the_size_bound_is_a_bad_response() {
    let mut huge = br#"{"choices": [{"message": {"role": "assistant", "content": ""#.to_vec();
    huge.resize(huge.len() + drover_host::model::MAX_RESPONSE_BYTES, b'a');
    huge.extend_from_slice(br#""}}]}"#);
    let server = ModelServer::start(vec![Reply::raw(huge), Reply::text("unused")]).await;
    let models = gateway(vec![("cheap", alias(Provider::OpenAi, &server, |_| {}))]);
    let error = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect_err("too large");
    assert!(matches!(error, ModelError::BadResponse { .. }), "{error:?}");
    assert!(error.to_string().contains("16 MiB"), "{error}");
    assert_eq!(server.served(), 1);
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_is_unavailable_after_the_retries() {
    // A port nothing listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let mut config = AliasConfig::new(Provider::OpenAi, format!("http://127.0.0.1:{port}/v1"), "m");
    config.max_retries = 2;
    config.retry_base_ms = 10;
    let models = ModelGateway::new(&ModelsConfig(
        [("cheap".to_string(), config)].into_iter().collect(),
    ))
    .expect("gateway without a key");
    let error = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect_err("unreachable");
    assert!(matches!(error, ModelError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("cannot reach"), "{error}");
    assert_eq!(models.metrics()[0].failures, 1);
}

/// An `https://` alias speaks TLS: against a server that does not, the handshake fails and the
/// call is `ModelUnavailable` (the request never goes out in the clear).
#[tokio::test]
async fn an_https_alias_speaks_tls() {
    let server = ModelServer::start(vec![Reply::text("never sent")]).await;
    let url = server.base_url().replace("http://", "https://");
    let mut config = AliasConfig::new(Provider::OpenAi, url, "m");
    config.max_retries = 0;
    let models = ModelGateway::new(&ModelsConfig(
        [("cheap".to_string(), config)].into_iter().collect(),
    ))
    .expect("an https alias is accepted");
    let error = models
        .complete("agent", &request("cheap", "hi"))
        .await
        .expect_err("no TLS on the other side");
    assert!(matches!(error, ModelError::Unavailable { .. }), "{error:?}");
    assert_eq!(
        server.served(),
        0,
        "nothing was read as a request in the clear"
    );
}
