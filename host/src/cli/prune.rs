//! `drover-host prune`: deletes finished jobs, runs and events older than a given age, once,
//! and says what it removed. `drover-host run --retention` does the same in the background.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::run::DatabaseArgs;
use crate::queue::Queue;
use crate::store::RunStore;
use crate::store::retention::{self, PRUNE_BATCH, Pruned};

/// Options of `drover-host prune`.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Delete finished work that ended longer ago than this (`30d`, `12h`, `90m`).
    #[arg(long, default_value = "30d", value_parser = parse_age)]
    pub older_than: Duration,
    /// The databases.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Print what was removed as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses an age such as `30d`, `12h` or `1h 30m`.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not an age like \"30d\" or \"12h\": {e}"))?;
    if age.is_zero() {
        return Err("the age must be longer than zero".into());
    }
    Ok(age)
}

/// Parses a retention setting: an age (see [`parse_age`]) or `off`.
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(Retention(None));
    }
    parse_age(text).map(|age| Retention(Some(age)))
}

/// How long finished work is kept (`None`: for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// Prunes both databases once and prints what went.
pub async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let (queue, store) = args.db.open().await?;
    let pruned = retention::prune(
        &queue,
        &store,
        args.older_than,
        crate::time::now_ms(),
        PRUNE_BATCH,
    )
    .await
    .context("pruning failed")?;
    if args.json {
        println!("{}", serde_json::to_string(&pruned)?);
    } else {
        println!(
            "{} older than {}",
            summary(&pruned),
            humantime::format_duration(args.older_than)
        );
    }
    Ok(())
}

/// `removed 3 jobs, 4 runs and 20 events`.
pub fn summary(pruned: &Pruned) -> String {
    format!(
        "removed {} job(s), {} run(s) and {} event(s)",
        pruned.jobs, pruned.runs, pruned.events
    )
}

/// Prunes every `interval` until `stop` is cancelled, first at once; failures are logged and
/// tried again next time. The messages of pruned long-lived agents go from `inbox` too.
pub async fn prune_in_background(
    queue: Queue,
    store: RunStore,
    inbox: Option<crate::inbox::Inbox>,
    older_than: Duration,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match retention::prune(
            &queue,
            &store,
            older_than,
            crate::time::now_ms(),
            PRUNE_BATCH,
        )
        .await
        {
            Ok(pruned) if pruned.jobs + pruned.runs + pruned.events > 0 => {
                tracing::info!(
                    jobs = pruned.jobs,
                    runs = pruned.runs,
                    events = pruned.events,
                    "retention: {}",
                    summary(&pruned)
                );
            }
            Ok(_) => tracing::debug!("retention: nothing to remove"),
            Err(e) => tracing::warn!(error = %e, "retention: pruning failed"),
        }
        if let Some(inbox) = &inbox {
            match inbox.prune_orphans(PRUNE_BATCH).await {
                Ok(0) => {}
                Ok(messages) => tracing::info!(
                    messages,
                    "retention: removed the messages of removed agents"
                ),
                Err(e) => tracing::warn!(error = %e, "retention: pruning messages failed"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ages_and_off() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_age("0s").is_err());
        assert!(parse_age("soon").expect_err("not an age").contains("soon"));
        assert_eq!(parse_retention("off"), Ok(Retention(None)));
        assert_eq!(
            parse_retention("12h"),
            Ok(Retention(Some(Duration::from_secs(43_200))))
        );
    }
}
