//! The HTTP calls to a running host that many tests make.

use serde_json::Value;

use crate::WAIT;

/// `GET url`: the body as JSON, or as a JSON string when it is not JSON.
pub async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    let text = reqwest::get(url)
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// `POST url` with the JSON `body`: the answer's JSON.
pub async fn post_json(url: impl reqwest::IntoUrl, body: &Value) -> Value {
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json")
}

/// Every event at `url` (`…/v1/runs/{id}/events` or `…/v1/agents/{id}/events`), following
/// `nextAfter` over as many pages as there are.
pub async fn events(url: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = get_json(format!("{url}?after={after}")).await;
        let events = page["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events in {page}"));
        all.extend(events.iter().cloned());
        if page["truncated"] != true {
            return all;
        }
        after = page["nextAfter"]
            .as_i64()
            .unwrap_or_else(|| panic!("truncated without nextAfter: {page}"));
    }
}

/// Posts the job `body` to the host at `url` and waits up to [`WAIT`] for it to finish; the
/// `{job, run}` view (the job still unfinished if it did not).
pub async fn post_and_wait(url: &str, body: &Value) -> Value {
    let posted = post_json(format!("{url}/v1/jobs"), body).await;
    let id = posted["job"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("not enqueued: {posted}"));
    get_json(format!(
        "{url}/v1/jobs/{id}/wait?timeoutMs={}",
        WAIT.as_millis()
    ))
    .await
}

/// Starts a long-lived agent with `POST /spawn` and the seed's body `body` on the host at
/// `url`; its workload name.
pub async fn spawn(url: &str, body: &Value) -> String {
    let spawned = post_json(format!("{url}/spawn"), body).await;
    spawned["workloadName"]
        .as_str()
        .unwrap_or_else(|| panic!("no workloadName in {spawned}"))
        .to_string()
}
