//! Sends the HTTP requests its input describes and returns what came back.
//!
//! Input: one request, `{"method": "GET", "url": "…", "headers": {"name": "value"}, "body":
//! "…"}` (`${VAR}` in a header value is replaced by the environment variable `VAR`), or several, `{"requests": [ … ]}`, which are all sent before any answer is read (so
//! they are in flight at once). Output: for each request `{"status": 200, "body": "…",
//! "location": "…"}`, or `{"error": {"tag": "Denied", "message": "…"}}`; several come back as
//! `{"results": [ … ]}`.

use std::collections::BTreeMap;

use drover_sdk::http::{self, Request};
use drover_sdk::{Agent, Error, Value, export_agent, json};
use serde::Deserialize;

/// One request.
#[derive(Deserialize)]
struct Spec {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn get() -> String {
    "GET".into()
}

/// The job's input.
#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Many { requests: Vec<Spec> },
    One(Spec),
}

struct Fetch;

fn request(spec: Spec) -> Request {
    let mut request = Request::new(spec.method, spec.url).body(spec.body.into_bytes());
    request.headers = spec
        .headers
        .into_iter()
        .map(|(name, value)| (name, expand(&value)))
        .collect();
    request
}

/// `value` with each `${VAR}` replaced by the environment variable `VAR` (empty if unset).
fn expand(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&std::env::var(&rest[start + 2..start + len]).unwrap_or_default());
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn outcome(result: Result<http::Response, http::Error>) -> Value {
    match result {
        Ok(response) => json!({
            "status": response.status,
            "body": response.text(),
            "location": response.header("location"),
        }),
        Err(error) => json!({ "error": { "tag": error.tag(), "message": error.to_string() } }),
    }
}

impl Agent for Fetch {
    type Input = Input;
    type Output = Value;

    fn run(input: Input) -> Result<Value, Error> {
        Ok(match input {
            Input::One(spec) => outcome(http::send(&request(spec))),
            Input::Many { requests } => {
                let pending: Vec<_> = requests
                    .into_iter()
                    .map(|spec| http::start(&request(spec)))
                    .collect();
                let results: Vec<Value> = pending
                    .into_iter()
                    .map(|p| outcome(p.and_then(http::Pending::wait)))
                    .collect();
                json!({ "results": results })
            }
        })
    }
}

export_agent!(Fetch);
