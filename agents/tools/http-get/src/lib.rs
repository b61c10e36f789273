//! The `http-get` tool: fetches a URL, where the tool's manifest and the host allow.
//!
//! Input `{"url": "https://api.example.com/items", "headers": {"name": "value"}}` (headers
//! optional; a secret's placeholder in one is filled in by the host), output `{"status": 200, "body": "…"}`; a
//! refused or failed request fails the call with the error's tag (`Denied`, `Timeout`, …).

use drover_sdk::http::{self, Request};
use drover_sdk::{Error, Tool, Value, export_toolbox, json};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Output {
    status: u16,
    body: String,
}

struct HttpGet;

impl Tool for HttpGet {
    type Input = Input;
    type Output = Output;

    const NAME: &'static str = "http-get";
    const DESCRIPTION: &'static str = "Fetches a URL with GET and returns its status and body";

    fn input_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "url": { "type": "string" },
                "headers": { "type": "object", "additionalProperties": { "type": "string" } }
            },
            "required": ["url"],
            "additionalProperties": false
        }))
    }

    fn call(input: Input) -> Result<Output, Error> {
        let mut request = Request::get(input.url);
        request.headers = input.headers.into_iter().collect();
        let response = http::send(&request).map_err(|e| Error::new(e.tag(), e.to_string()))?;
        Ok(Output {
            status: response.status,
            body: response.text(),
        })
    }
}

export_toolbox!(HttpGet);
