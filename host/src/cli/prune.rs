//! `drover-host prune`: deletes finished jobs, runs and events older than a given age, once,
//! with the inbox messages and tree budgets of the jobs it deletes, and says what it removed.
//! `drover-host run --retention` does the same in the background.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use serde::Serialize;

use super::run::DatabaseArgs;
use crate::inbox::{Inbox, InboxConfig};
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
    /// Logging.
    #[command(flatten)]
    pub log: super::LogArgs,
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

/// What one pass of pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    /// Jobs, runs and events.
    #[serde(flatten)]
    pub pruned: Pruned,
    /// Inbox messages of the jobs removed.
    pub messages: u64,
    /// Tree budgets of the roots removed.
    pub tree_budgets: u64,
}

impl PruneReport {
    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        let p = &self.pruned;
        p.jobs + p.runs + p.events + self.messages + self.tree_budgets == 0
    }
}

/// One pass: finished work that ended longer ago than `older_than`, then what belonged to the
/// jobs removed (now or by an earlier pass).
pub async fn prune_once(
    queue: &Queue,
    store: &RunStore,
    inbox: &Inbox,
    older_than: Duration,
) -> anyhow::Result<PruneReport> {
    let pruned = retention::prune(queue, store, older_than, crate::time::now_ms(), PRUNE_BATCH)
        .await
        .context("pruning jobs and runs failed")?;
    let messages = inbox
        .prune_orphans(PRUNE_BATCH)
        .await
        .context("pruning inbox messages failed")?;
    let tree_budgets = crate::children::prune_budgets(queue, PRUNE_BATCH)
        .await
        .context("pruning tree budgets failed")?;
    Ok(PruneReport {
        pruned,
        messages,
        tree_budgets,
    })
}

/// Prunes both databases once and prints what went.
pub async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let (queue, store) = args.db.open().await?;
    let inbox = Inbox::open(&queue, InboxConfig::default())
        .await
        .context("opening the inboxes")?;
    let report = prune_once(&queue, &store, &inbox, args.older_than).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} older than {}",
            summary(&report),
            humantime::format_duration(args.older_than)
        );
    }
    Ok(())
}

/// `removed 3 job(s), 4 run(s), 20 event(s), 2 message(s) and 0 tree budget(s)`.
pub fn summary(report: &PruneReport) -> String {
    let p = &report.pruned;
    format!(
        "removed {} job(s), {} run(s), {} event(s), {} message(s) and {} tree budget(s)",
        p.jobs, p.runs, p.events, report.messages, report.tree_budgets
    )
}

/// Prunes every `interval` until `stop` is cancelled, first at once (see [`prune_once`]);
/// failures are logged and tried again next time.
pub async fn prune_in_background(
    queue: Queue,
    store: RunStore,
    inbox: Inbox,
    older_than: Duration,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match prune_once(&queue, &store, &inbox, older_than).await {
            Ok(report) if !report.is_empty() => {
                tracing::info!(
                    jobs = report.pruned.jobs,
                    runs = report.pruned.runs,
                    events = report.pruned.events,
                    messages = report.messages,
                    tree_budgets = report.tree_budgets,
                    "retention: {}",
                    summary(&report)
                );
            }
            Ok(_) => tracing::debug!("retention: nothing to remove"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "retention: pruning failed"),
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
