//! The run store's rules, against a real libsql file database.

use drover_host::queue::ErrorInfo;
use drover_host::store::{RunRecord, RunStatus, RunStore, WriteBatch};

async fn store() -> (RunStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}", dir.path().join("runs.db").display());
    (RunStore::open(&url, None).await.expect("open store"), dir)
}

fn run(id: &str, job_id: &str, status: RunStatus, error: Option<&str>) -> RunRecord {
    RunRecord {
        id: id.into(),
        job_id: Some(job_id.into()),
        agent_id: "echo".into(),
        attempt: 1,
        parent_run_id: None,
        status,
        sandbox: Some("wasm"),
        long_lived: false,
        input: None,
        output: None,
        error_tag: error.map(Into::into),
        error_message: error.map(|e| format!("{e} happened")),
        started_at: 1,
        ended_at: (status != RunStatus::Running).then_some(2),
        heartbeat_at: None,
        fuel_used: None,
        peak_memory: None,
        worker_id: None,
    }
}

async fn status_and_tag(store: &RunStore, id: &str) -> (RunStatus, Option<String>) {
    let run = store.get_run(id).await.expect("get").expect("run");
    (run.status, run.error.map(|e| e.tag))
}

/// A lost lease takes away a result that never reached the queue: runs still running or recorded
/// as a success become `lost`, but a run that failed keeps its own error.
#[tokio::test]
async fn lost_leases_mark_running_and_successful_runs_but_keep_failures() {
    let (store, _dir) = store().await;
    let batch = WriteBatch {
        runs: vec![
            run("r-running", "j-1", RunStatus::Running, None),
            run("r-success", "j-2", RunStatus::Success, None),
            run("r-error", "j-3", RunStatus::Error, Some("Trap")),
            run("r-other", "j-4", RunStatus::Running, None),
            run("r-unapplied", "j-5", RunStatus::Success, None),
        ],
        ..WriteBatch::default()
    };
    store.write(&batch).await.expect("write");
    let lost = ErrorInfo::new("LeaseLost", "lost");

    let ids: Vec<String> = ["r-running", "r-success", "r-error"]
        .map(String::from)
        .to_vec();
    store
        .mark_runs_lost(&ids, &lost, 10)
        .await
        .expect("mark by id");
    for id in ["r-running", "r-success"] {
        let got = status_and_tag(&store, id).await;
        assert_eq!(got, (RunStatus::Lost, Some("LeaseLost".into())), "{id}");
    }
    assert_eq!(
        status_and_tag(&store, "r-error").await,
        (RunStatus::Error, Some("Trap".into()))
    );

    // By attempt, as the reclaim loop does; another attempt of the job is left alone.
    store
        .mark_attempts_lost(&[("j-4".into(), 2)], &lost, 10)
        .await
        .expect("mark other attempt");
    assert_eq!(
        status_and_tag(&store, "r-other").await.0,
        RunStatus::Running
    );
    store
        .mark_attempts_lost(&[("j-4".into(), 1), ("j-5".into(), 1)], &lost, 10)
        .await
        .expect("mark by attempt");
    assert_eq!(status_and_tag(&store, "r-other").await.0, RunStatus::Lost);
    // A success whose outcome never reached the queue (its job was reclaimed) is lost too.
    assert_eq!(
        status_and_tag(&store, "r-unapplied").await.0,
        RunStatus::Lost
    );
}
