//! Agents in TypeScript and Python beside the same agent in Rust, in the same run: the per-job
//! cost of a fresh instance and a call, the cost of compiling each component the first time and
//! of loading it from the cache after, and the resident memory of idle long-lived JavaScript
//! agents (see `density`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use drover_host::sandbox::Sandbox;
use drover_host::sandbox::wasm::{EngineConfig, Metering, WasmRuntime, WasmSandbox};
use serde_json::value::RawValue;

use super::{
    Row, Scale, component_spec, density_in_child, kib, micros, millis, percentile, time_runs,
    wasm_runtime,
};

/// The echo agent in each language: name, component.
fn echoes() -> [(&'static str, &'static str); 3] {
    [
        ("Rust", drover_test_support::ECHO),
        ("TypeScript", drover_test_support::ECHO_JS),
        ("Python", drover_test_support::ECHO_PY),
    ]
}

/// Per-job cost and compile times of the three echo agents.
pub async fn languages(scale: Scale, work: &Path) -> Vec<Row> {
    if !drover_test_support::other_languages("the languages benchmark") {
        return Vec::new();
    }
    let mut rows = per_job(scale, work).await;
    rows.extend(compile_times(work).await);
    rows
}

async fn per_job(scale: Scale, work: &Path) -> Vec<Row> {
    let iterations = scale.pick(200, 5_000);
    let runtime = wasm_runtime(work, 64, Metering::ON);
    let sandbox: Arc<dyn Sandbox> = Arc::new(WasmSandbox::new(Arc::clone(&runtime)));
    let input: Arc<RawValue> =
        Arc::from(RawValue::from_string(r#"{"n":42}"#.into()).expect("json"));
    let mut specs = Vec::new();
    for (language, path) in echoes() {
        specs.push((language, component_spec(&runtime, "echo", path).await));
    }
    // Rounds in turn, so that every language sees the same moments of a noisy machine.
    let mut times = vec![Vec::new(); specs.len()];
    for _ in 0..10 {
        for (i, (_, spec)) in specs.iter().enumerate() {
            times[i].extend(time_runs(&sandbox, spec, &input, iterations / 10).await);
        }
    }
    let (rust50, rust99) = (percentile(&times[0], 0.50), percentile(&times[0], 0.99));
    let mut rows = Vec::new();
    for (i, (language, _)) in specs.iter().enumerate().skip(1) {
        let (p50, p99) = (percentile(&times[i], 0.50), percentile(&times[i], 0.99));
        let target = if *language == "Python" { 3e-3 } else { 1e-3 };
        rows.push(Row {
            name: format!(
                "Per-job instance cost of the {language} `echo` ({iterations} runs): new store + instantiate + call + drop, p50; vs the Rust `echo`"
            ),
            figure: micros(p50),
            baseline: micros(rust50),
            ratio: p50 / rust50,
            target: format!("≤ {}", millis(target)),
            met: Some(p50 <= target),
        });
        rows.push(Row {
            name: format!("Per-job instance cost of the {language} `echo`, p99"),
            figure: micros(p99),
            baseline: micros(rust99),
            ratio: p99 / rust99,
            target: String::new(),
            met: None,
        });
    }
    rows
}

/// Each echo compiled with an empty cache, then loaded from that cache by a new engine.
async fn compile_times(work: &Path) -> Vec<Row> {
    let mut timed = Vec::new();
    for (language, path) in echoes() {
        let cache = tempfile::tempdir_in(work).expect("cache");
        let load = async || {
            let started = Instant::now();
            let runtime = WasmRuntime::new(
                &EngineConfig {
                    max_instances: 16,
                    cache_dir: Some(cache.path().to_path_buf()),
                    ..EngineConfig::default()
                },
                work.join("scratch"),
            )
            .expect("runtime");
            runtime
                .load_file(Path::new(path))
                .await
                .expect("load component");
            started.elapsed().as_secs_f64()
        };
        let cold = load().await;
        let cached = load().await;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        timed.push((language, bytes, cold, cached));
    }
    let (_, _, rust_cold, rust_cached) = timed[0];
    timed
        .iter()
        .skip(1)
        .flat_map(|&(language, bytes, cold, cached)| {
            [
                Row {
                    name: format!(
                        "Cold compile of the {language} `echo` ({:.1} MiB of WebAssembly), cache empty; vs the Rust `echo`",
                        bytes as f64 / f64::from(1 << 20)
                    ),
                    figure: millis(cold),
                    baseline: millis(rust_cold),
                    ratio: cold / rust_cold,
                    target: String::new(),
                    met: None,
                },
                Row {
                    name: format!(
                        "Cached start of the {language} `echo`: a new engine loading its compiled code from the cache; vs the Rust `echo`"
                    ),
                    figure: millis(cached),
                    baseline: millis(rust_cached),
                    ratio: cached / rust_cached,
                    target: String::new(),
                    met: None,
                },
            ]
        })
        .collect()
}

/// Resident memory per idle long-lived JavaScript queue worker, beside the Rust one.
pub fn density(scale: Scale) -> Vec<Row> {
    if !drover_test_support::other_languages("the JavaScript density benchmark") {
        return Vec::new();
    }
    let n = scale.pick(20, 1_000);
    let (js_rss, js_late) = density_in_child(n, "js");
    let (rust_rss, rust_late) = density_in_child(n, "wasm");
    vec![
        Row {
            name: format!(
                "Density, {n} long-lived `queue-worker-js` agents idling and heartbeating every second in one host: resident memory per agent; vs the Rust `queue-worker`"
            ),
            figure: kib(js_rss),
            baseline: kib(rust_rss),
            ratio: js_rss / rust_rss.max(1.0),
            target: if n == 1_000 {
                "≤ 4 MiB at 1,000".into()
            } else {
                String::new()
            },
            met: (n == 1_000).then_some(js_rss <= 4.0 * 1024.0 * 1024.0),
        },
        Row {
            name: format!("Density, {n} JavaScript agents: heartbeat lateness p99"),
            figure: millis(js_late),
            baseline: millis(rust_late),
            ratio: js_late / rust_late.max(1e-4),
            target: String::new(),
            met: None,
        },
    ]
}
