//! Running one claimed job: look the agent up, check the input, pick the sandbox, run it under
//! the job's control flags, and record the outcome under the lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::oneshot;

use super::slots::Slots;
use super::waiting::RunSlot;
use super::{InFlight, Shared};
use crate::queue::{ClaimedJob, Finish, FinishKind, Job, Lease, Lifecycle};
use crate::registry::AgentSpec;
use crate::sandbox::{
    AbortReason, Control, Failure, RunContext, RunIdentity, RunOutcome, Sandbox, WaitAdmission,
};
use crate::store::recording::Record;
use crate::store::{RunRecord, RunStatus, attempt_run_id};
use crate::time::now_ms;

/// A claimed job registered as in flight (so that renewals, signals and shutdown see it) and
/// about to run.
pub(super) struct Admitted {
    job: Job,
    lease: Lease,
    control: Arc<Control>,
}

/// Registers a claimed job as in flight, before its task starts. `claim_sent` is when the claim
/// left for the database: the lease runs from no earlier than that.
pub(super) fn admit(shared: &Shared, claimed: ClaimedJob, claim_sent: Instant) -> Admitted {
    let ClaimedJob { job, lease } = claimed;
    let control = Control::new();
    // Requests that arrived while the job waited (e.g. before a restart) apply at once.
    if job.cancel_requested {
        control.abort(AbortReason::Cancelled);
    }
    if job.stop_requested {
        control.request_stop();
    }
    let earlier = shared.in_flight().insert(
        job.id.clone(),
        InFlight {
            lease: lease.clone(),
            control: Arc::clone(&control),
            lifecycle: job.lifecycle,
            renewed: claim_sent,
            finished: false,
        },
    );
    // This pool claimed the job again after losing an earlier lease on it (it expired and was
    // reclaimed): that earlier run is no longer the job's, so it is stopped.
    if let Some(earlier) = earlier {
        tracing::warn!(
            job_id = %job.id,
            epoch = earlier.lease.epoch,
            "a run of this job lost its lease; aborting it"
        );
        earlier.control.abort(AbortReason::LeaseLost);
    }
    Admitted {
        job,
        lease,
        control,
    }
}

/// Waits for a slot, then runs an admitted job to its recorded outcome. A job whose pool shuts
/// down before it gets a slot is handed back untouched.
pub(super) async fn run(shared: Arc<Shared>, admitted: Admitted, slots: Arc<Slots>) {
    let Admitted {
        job,
        lease,
        control,
    } = admitted;
    let permit = slots.acquire(&shared.stop_claiming).await;
    let (slot, durable) = match permit {
        Some(permit) => {
            // A job lends its slot out while it waits on I/O; a long-lived agent's slot is not
            // a CPU slot, and it keeps it until it stops.
            let (run_slot, kept) = if Arc::ptr_eq(&slots, &shared.job_slots) {
                let run_slot = RunSlot::new(
                    permit,
                    Arc::clone(&slots),
                    Arc::clone(&shared.waiting_permits),
                    Arc::clone(&shared.stats),
                );
                (Some(run_slot), None)
            } else {
                (None, Some(permit))
            };
            shared.stats.run_started();
            let started = Instant::now();
            let admission = run_slot.as_ref().map(RunSlot::admission);
            let (status, fuel, durable) = execute(&shared, &job, &lease, &control, admission).await;
            let took = started.elapsed();
            shared.stats.run_ended(status, took, fuel);
            // What counts for claiming ahead is the time the run held its slot.
            let slot = match run_slot {
                Some(run_slot) => run_slot.close(),
                None => (kept, took),
            };
            (Some(slot), Some(durable))
        }
        None => {
            if let Err(e) = shared.deps.queue.release(&lease).await {
                tracing::warn!(job_id = %job.id, error = %e, "cannot hand a job back; its lease will expire");
            }
            (None, None)
        }
    };
    // The slot is free as soon as the run is over; the job itself stays in flight, its lease
    // renewed, until its outcome is durable.
    if let Some((permit, held)) = slot {
        slots.release(permit, held);
    }
    if let Some(durable) = durable {
        if let Some(job) = shared.in_flight().get_mut(&job.id)
            && job.lease == lease
        {
            job.finished = true;
        }
        // An error means the recorder gave up at shutdown: the lease expires, and the job is
        // reclaimed.
        let _ = durable.await;
    }
    {
        // A later claim of the same job may have taken the entry over; it is not ours to remove.
        let mut in_flight = shared.in_flight();
        if in_flight.get(&job.id).is_some_and(|j| j.lease == lease) {
            in_flight.remove(&job.id);
        }
    }
}

async fn execute(
    shared: &Shared,
    job: &Job,
    lease: &Lease,
    control: &Arc<Control>,
    admission: Option<Arc<dyn WaitAdmission>>,
) -> (RunStatus, Option<u64>, oneshot::Receiver<()>) {
    let run_id: Arc<str> = attempt_run_id(&job.id, job.created_at, lease.epoch).into();
    let spec = shared.deps.registry.get(&job.agent_id);
    let sandbox: Option<Arc<dyn Sandbox>> = spec
        .as_deref()
        .map(|spec| (shared.deps.sandbox_for)(job, spec));
    let mut run = RunRecord {
        id: run_id.to_string(),
        job_id: Some(job.id.clone()),
        agent_id: job.agent_id.clone(),
        attempt: lease.epoch,
        parent_run_id: job.parent_run_id.clone(),
        status: RunStatus::Running,
        sandbox: sandbox.as_ref().map(|s| s.name()),
        long_lived: spec.as_ref().map_or(job.lifecycle, |s| s.lifecycle) == Lifecycle::LongLived,
        input: Some(Arc::clone(&job.input)),
        output: None,
        error_tag: None,
        error_message: None,
        started_at: now_ms(),
        ended_at: None,
        heartbeat_at: None,
        fuel_used: None,
        peak_memory: None,
        worker_id: Some(Arc::clone(&shared.worker_id)),
        usage: None,
        tenant_id: job.tenant_id.clone(),
        user_id: job.user_id.clone(),
    };
    let identity = RunIdentity {
        run_id: Arc::clone(&run_id),
        job_id: job.id.clone(),
        agent_id: job.agent_id.clone(),
        attempt: lease.epoch,
        tenant_id: job.tenant_id.clone(),
        user_id: job.user_id.clone(),
        root_job_id: job.parent_job_id.as_ref().map(|_| job.root_job_id.clone()),
    };
    let ctx = RunContext::new(
        identity,
        Arc::clone(control),
        shared.recorder.clone(),
        1,
        spec.as_ref()
            .filter(|_| sandbox.as_ref().is_none_or(|s| s.holds_to_limits()))
            .map(|s| &s.limits),
        admission,
    );
    shared.recorder.send(Record::Started(run.clone())).await;
    ctx.record_event(
        "run_start",
        raw(&json!({
            "jobId": job.id,
            "agentId": job.agent_id,
            "attempt": lease.epoch,
            "sandbox": run.sandbox,
            "workerId": &*shared.worker_id,
        })),
    )
    .await;

    let started = Instant::now();
    let outcome = match (&spec, &sandbox) {
        (Some(spec), Some(sandbox)) => run_agent(shared, spec, sandbox, job, &ctx, control).await,
        _ => RunOutcome::from_result(Err(Failure::permanent(
            "UnknownAgent",
            format!(
                "no agent with id {:?} is registered on this host",
                job.agent_id
            ),
        ))),
    };
    let duration = started.elapsed();

    run.ended_at = Some(now_ms());
    run.fuel_used = outcome
        .fuel_used
        .map(|f| i64::try_from(f).unwrap_or(i64::MAX));
    run.peak_memory = outcome
        .peak_memory
        .map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    run.usage = outcome.usage;
    // A long-lived agent asked to stop for this host's shutdown goes on elsewhere, however it
    // ended here (unless it lost its lease, in which case it is someone else's already).
    let handed_back =
        shared.handing_back(&job.id) && control.aborted() != Some(AbortReason::LeaseLost);
    let (kind, result_status) = match outcome.result {
        _ if handed_back => {
            let failure = AbortReason::Shutdown.failure();
            run.status = failure.status;
            run.error_tag = Some(failure.error.tag.clone());
            run.error_message = Some(
                "the agent was stopped for its host's shutdown and handed back to go on elsewhere"
                    .to_string(),
            );
            (Some(FinishKind::Release), failure.status)
        }
        Ok(output) => {
            run.status = RunStatus::Success;
            run.output = Some(output);
            (Some(FinishKind::Complete), RunStatus::Success)
        }
        Err(failure) => {
            run.status = failure.status;
            run.error_tag = Some(failure.error.tag.clone());
            run.error_message = Some(failure.error.message.clone());
            ctx.record_event("error", raw(&failure.error)).await;
            let kind = match control.aborted() {
                // Someone else holds the job now; its outcome is not ours to write.
                Some(AbortReason::LeaseLost) => None,
                // Handed back untouched for another host.
                Some(AbortReason::Shutdown) => Some(FinishKind::Release),
                // A cancel is final.
                Some(AbortReason::Cancelled) => Some(FinishKind::Fail {
                    error: failure.error,
                    retry: false,
                }),
                _ => Some(FinishKind::Fail {
                    error: failure.error,
                    retry: failure.retry,
                }),
            };
            (kind, failure.status)
        }
    };
    ctx.record_event(
        "run_end",
        raw(&json!({
            "status": run.status,
            "durationMs": duration.as_secs_f64() * 1000.0,
            "fuelUsed": run.fuel_used,
            "peakMemory": run.peak_memory,
        })),
    )
    .await;
    if let (Some(tag), Some(message)) = (&run.error_tag, &run.error_message) {
        tracing::debug!(job_id = %job.id, run_id = %run_id, %tag, %message, "run failed");
    }
    let finish = kind.map(|kind| Finish {
        lease: lease.clone(),
        kind,
        run_id: Some(run_id.to_string()),
        result_status: Some(result_status.as_str().to_string()),
    });
    let status = run.status;
    let fuel = outcome.fuel_used;
    let (durable, durable_rx) = oneshot::channel();
    shared
        .recorder
        .send(Record::Finished {
            run,
            finish,
            durable,
        })
        .await;
    (status, fuel, durable_rx)
}

/// Validates the input, then runs the agent until it returns or the run is aborted (a cancel, a
/// lost lease, a shutdown, or a stop request it ignores past its grace period).
async fn run_agent(
    shared: &Shared,
    spec: &Arc<AgentSpec>,
    sandbox: &Arc<dyn Sandbox>,
    job: &Job,
    ctx: &RunContext,
    control: &Arc<Control>,
) -> RunOutcome {
    if let Some(reason) = control.aborted() {
        return RunOutcome::from_result(Err(reason.failure()));
    }
    if let Some(schema) = &spec.input_schema {
        let checked = serde_json::from_str::<serde_json::Value>(job.input.get())
            .map_err(|e| e.to_string())
            .and_then(|input| schema.validate(&input));
        if let Err(problems) = checked {
            return RunOutcome::from_result(Err(Failure::permanent(
                "InvalidInput",
                format!("input does not match the agent's schema: {problems}"),
            )));
        }
    }
    let run = on_guest_threads(shared, spec, sandbox, job, ctx);
    let mut outcome = tokio::select! {
        outcome = run => outcome,
        reason = abort_or_stop_timeout(control, spec.stop_grace) => {
            RunOutcome::from_result(Err(reason.failure()))
        }
    };
    // An abort that raced with the agent's own return still decides the outcome.
    if let (Err(_), Some(reason)) = (&outcome.result, control.aborted()) {
        outcome.result = Err(reason.failure());
    }
    if let (Ok(output), Some(schema)) = (&outcome.result, &spec.output_schema) {
        let checked = serde_json::from_str::<serde_json::Value>(output.get())
            .map_err(|e| e.to_string())
            .and_then(|output| schema.validate(&output));
        if let Err(problems) = checked {
            outcome.result = Err(Failure::permanent(
                "InvalidOutput",
                format!("output does not match the agent's schema: {problems}"),
            ));
        }
    }
    outcome
}

/// Runs the agent on the pool's guest threads (where it cannot delay the API, renewals or the
/// recorder however much it computes), or here if the pool has none. Dropping the future stops
/// the run. A panic in the run fails that run alone.
async fn on_guest_threads(
    shared: &Shared,
    spec: &Arc<AgentSpec>,
    sandbox: &Arc<dyn Sandbox>,
    job: &Job,
    ctx: &RunContext,
) -> RunOutcome {
    let (spec, sandbox, input, ctx) = (
        Arc::clone(spec),
        Arc::clone(sandbox),
        Arc::clone(&job.input),
        ctx.clone(),
    );
    let run = async move { sandbox.run(&spec, input, ctx).await };
    let task = match shared.guests() {
        Some(guests) => guests.spawn(run),
        None => tokio::spawn(run),
    };
    let mut task = AbortOnDrop(task);
    (&mut task.0).await.unwrap_or_else(|e| {
        let message = if e.is_panic() {
            "the run panicked inside the host; see the host's log".to_string()
        } else {
            format!("the run's task ended: {e}")
        };
        tracing::error!(job_id = %job.id, error = %e, "a run's task failed");
        RunOutcome::from_result(Err(Failure::error("HostPanic", message)))
    })
}

/// Aborts a spawned run when its future is dropped (the run was cut short).
struct AbortOnDrop(tokio::task::JoinHandle<RunOutcome>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves when the run must be cut short: an abort, or a stop request that the agent has not
/// honoured within `grace`.
async fn abort_or_stop_timeout(control: &Control, grace: Duration) -> AbortReason {
    let stop_timer = async {
        control.stopped().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        reason = control.abort_requested() => reason,
        () = stop_timer => {
            control.abort(AbortReason::StopTimeout);
            control.aborted().unwrap_or(AbortReason::StopTimeout)
        }
    }
}

fn raw(value: &impl serde::Serialize) -> Arc<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value)
        .map(Arc::from)
        .unwrap_or_else(|_| Arc::from(serde_json::value::RawValue::NULL.to_owned()))
}
