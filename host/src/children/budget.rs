//! Budgets that flow down a tree: what a root job's runs were given (`[quota]`: turns, tokens,
//! cost, tool calls) bounds its whole tree, not each run alone.
//!
//! A root whose agent may spawn and has a `[quota]` keeps a ledger row in the database
//! (`tree_budgets`), keyed by its job: its quota, and what it and every run below it used. Each
//! model call and tool call of a run in the tree — the root's, a child's, a grandchild's, on
//! whichever host — is charged to that row as well as to the run's own budget, and is refused
//! (the run ends with status `quota`, tag `MaxTurns`, `MaxTokens`, `MaxCost` or `MaxToolCalls`)
//! once the tree has used what its root was given. A tree's time is bounded already: a child
//! lives no longer than the run that spawned it.
//!
//! Turns and tool calls are reserved before the call, in one conditional `UPDATE`, so a tree
//! never makes more of them than its root's quota, however many of its runs call at once.
//! Tokens and cost are known only from the answer: a call is refused once the tree has spent
//! its tokens or its cost, and asks for no more output than the tree's tokens left; a tree can
//! still go past them by what the calls in flight at the same moment use (a run alone can go
//! past its own by one call's answer, the same way).
//!
//! The row belongs to one run of the root: a new run of the root job (a retry, a restart)
//! starts the tree's account again, as the run's own budget starts again.

use libsql::Value;

use crate::db::{Db, DbError, Migration, RowExt, query_all};
use crate::registry::Quota;

pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "tree budgets",
    sql: r#"
CREATE TABLE IF NOT EXISTS tree_budgets (
    root_job_id TEXT PRIMARY KEY,
    root_run_id TEXT NOT NULL,
    max_turns INTEGER,
    max_tokens INTEGER,
    max_cost_usd REAL,
    max_tool_calls INTEGER,
    turns INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    tool_calls INTEGER NOT NULL DEFAULT 0
);
"#,
}];

const COLUMNS: &str =
    "max_turns, max_tokens, max_cost_usd, max_tool_calls, turns, tokens, cost_usd, tool_calls";

/// Which part of a tree's budget a call found spent.
#[derive(Debug, Clone, PartialEq)]
pub enum Exceeded {
    /// Model calls (`max-turns`).
    Turns(u32),
    /// Input and output tokens (`max-tokens`): used, limit.
    Tokens(u64, u64),
    /// Cost in US dollars (`max-cost-usd`): spent, limit.
    Cost(f64, f64),
    /// Tool calls (`max-tool-calls`): made, limit.
    ToolCalls(u32, u32),
}

impl Exceeded {
    /// The tag a run ended by it carries (the same as for a run's own budget).
    pub fn tag(&self) -> &'static str {
        match self {
            Exceeded::Turns(_) => "MaxTurns",
            Exceeded::Tokens(..) => "MaxTokens",
            Exceeded::Cost(..) => "MaxCost",
            Exceeded::ToolCalls(..) => "MaxToolCalls",
        }
    }
}

/// A tree budget's failure: spent, or the database failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeBudgetError {
    /// The tree has used this part of its root's budget.
    #[error("the tree of job {root_job_id} {}", describe(.exceeded))]
    Exceeded {
        /// The root.
        root_job_id: String,
        /// What is spent.
        exceeded: Exceeded,
    },
    /// The ledger could not be read or written.
    #[error("the tree's budget could not be checked: {0}")]
    Db(#[from] DbError),
}

fn describe(exceeded: &Exceeded) -> String {
    match exceeded {
        Exceeded::Turns(max) => {
            format!("used the {max} model calls its root was given (max-turns)")
        }
        Exceeded::Tokens(used, max) => {
            format!("used {used} of the {max} tokens its root was given (max-tokens)")
        }
        Exceeded::Cost(spent, max) => {
            format!("spent ${spent:.6} of the ${max} its root was given (max-cost-usd)")
        }
        Exceeded::ToolCalls(made, max) => {
            format!("made {made} of the {max} tool calls its root was given (max-tool-calls)")
        }
    }
}

/// One row of the ledger.
#[derive(Debug, Clone, Copy, Default)]
struct Account {
    quota: Quota,
    turns: u32,
    tokens: u64,
    cost_usd: f64,
    tool_calls: u32,
}

impl Account {
    /// The first part of the budget that `turns` more model calls and `tool_calls` more tool
    /// calls would go past, if any.
    fn exceeded(&self, turns: u32, tool_calls: u32) -> Option<Exceeded> {
        let q = &self.quota;
        if let Some(max) = q.max_turns
            && turns > 0
            && self.turns.saturating_add(turns) > max
        {
            return Some(Exceeded::Turns(max));
        }
        if let Some(max) = q.max_tool_calls
            && tool_calls > 0
            && self.tool_calls.saturating_add(tool_calls) > max
        {
            return Some(Exceeded::ToolCalls(self.tool_calls, max));
        }
        if let Some(max) = q.max_tokens
            && self.tokens >= max
        {
            return Some(Exceeded::Tokens(self.tokens, max));
        }
        if let Some(max) = q.max_cost_usd
            && self.cost_usd >= max
        {
            return Some(Exceeded::Cost(self.cost_usd, max));
        }
        None
    }

    /// Whether what is used is past a limit (after an answer: equal is still within it).
    fn overspent(&self) -> Option<Exceeded> {
        let q = &self.quota;
        if let Some(max) = q.max_tokens
            && self.tokens > max
        {
            return Some(Exceeded::Tokens(self.tokens, max));
        }
        if let Some(max) = q.max_cost_usd
            && self.cost_usd > max
        {
            return Some(Exceeded::Cost(self.cost_usd, max));
        }
        None
    }
}

fn decode(row: &libsql::Row) -> Result<Account, DbError> {
    let count = |idx| -> Result<Option<u32>, DbError> {
        Ok(row
            .opt_int(idx)?
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
    };
    let real = |idx| -> Result<f64, DbError> {
        match row.get_value(idx)? {
            Value::Real(v) => Ok(v),
            Value::Integer(v) => Ok(v as f64),
            other => Err(DbError::Decode(format!(
                "column {idx}: expected a number, found {other:?}"
            ))),
        }
    };
    Ok(Account {
        quota: Quota {
            max_turns: count(0)?,
            max_tokens: row.opt_int(1)?.map(|v| u64::try_from(v).unwrap_or(0)),
            max_cost_usd: match row.get_value(2)? {
                Value::Null => None,
                _ => Some(real(2)?),
            },
            max_tool_calls: count(3)?,
        },
        turns: count(4)?.unwrap_or(0),
        tokens: u64::try_from(row.int(5)?).unwrap_or(0),
        cost_usd: real(6)?,
        tool_calls: count(7)?.unwrap_or(0),
    })
}

/// The account of one tree, as one run in it sees it. Every run of a tree holds one: the root's
/// opens the ledger row (see [`TreeBudget::open`]); the others charge it if it exists (a root
/// with no `[quota]` keeps no row: its tree has only each run's own budget).
#[derive(Debug, Clone)]
pub struct TreeBudget {
    db: Db,
    root_job_id: String,
    /// For the root's own runs: the run, and the quota its tree is given.
    root: Option<(String, Quota)>,
    /// Whether the root's run has opened its row.
    opened: std::sync::Arc<tokio::sync::OnceCell<()>>,
}

impl TreeBudget {
    /// The budget of the tree whose root is `root_job_id`, as a run below the root sees it.
    pub(super) fn member(db: Db, root_job_id: String) -> Self {
        Self {
            db,
            root_job_id,
            root: None,
            opened: std::sync::Arc::default(),
        }
    }

    /// The budget of the tree of root job `job_id`, as its run `run_id`, given `quota`, sees it.
    pub(super) fn root(db: Db, job_id: String, run_id: String, quota: Quota) -> Self {
        Self {
            db,
            root_job_id: job_id,
            root: Some((run_id, quota)),
            opened: std::sync::Arc::default(),
        }
    }

    /// The root job.
    pub fn root_job_id(&self) -> &str {
        &self.root_job_id
    }

    /// For the root's run: writes the row that holds its tree's account, with the root's
    /// quota, unless this run has already (a row of an earlier run of the root is started
    /// again). A child is never enqueued before its root's row exists: a spawn opens it first.
    pub async fn open(&self) -> Result<(), DbError> {
        let Some((run_id, quota)) = &self.root else {
            return Ok(());
        };
        let params = vec![
            Value::Text(self.root_job_id.clone()),
            Value::Text(run_id.clone()),
            quota
                .max_turns
                .map_or(Value::Null, |v| Value::Integer(v.into())),
            quota.max_tokens.map_or(Value::Null, |v| {
                Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
            }),
            quota.max_cost_usd.map_or(Value::Null, Value::Real),
            quota
                .max_tool_calls
                .map_or(Value::Null, |v| Value::Integer(v.into())),
        ];
        let db = self.db.clone();
        self.opened
            .get_or_try_init(|| async move {
                db.write(move |conn| async move {
                    conn.execute(
                        "INSERT INTO tree_budgets (root_job_id, root_run_id, max_turns,
                                                   max_tokens, max_cost_usd, max_tool_calls)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (root_job_id) DO UPDATE SET
                             root_run_id = excluded.root_run_id,
                             max_turns = excluded.max_turns,
                             max_tokens = excluded.max_tokens,
                             max_cost_usd = excluded.max_cost_usd,
                             max_tool_calls = excluded.max_tool_calls,
                             turns = 0, tokens = 0, cost_usd = 0, tool_calls = 0
                         WHERE root_run_id <> excluded.root_run_id",
                        params,
                    )
                    .await?;
                    Ok(())
                })
                .await
            })
            .await?;
        Ok(())
    }

    /// Reserves `turns` model calls and `tool_calls` tool calls for a run of the tree, if the
    /// tree has them left (and has tokens and cost left). Returns the tokens the tree has left
    /// (none: no limit).
    pub async fn reserve(
        &self,
        turns: u32,
        tool_calls: u32,
    ) -> Result<Option<u64>, TreeBudgetError> {
        self.open().await?;
        let root = self.root_job_id.clone();
        let accounts = self
            .db
            .write(move |conn| async move {
                let params = vec![
                    Value::Text(root.clone()),
                    Value::Integer(turns.into()),
                    Value::Integer(tool_calls.into()),
                ];
                let reserved = query_all(
                    &conn,
                    &format!(
                        "UPDATE tree_budgets SET turns = turns + ?2, tool_calls = tool_calls + ?3
                         WHERE root_job_id = ?1
                           AND (max_turns IS NULL OR ?2 = 0 OR turns + ?2 <= max_turns)
                           AND (max_tool_calls IS NULL OR ?3 = 0
                                OR tool_calls + ?3 <= max_tool_calls)
                           AND (max_tokens IS NULL OR tokens < max_tokens)
                           AND (max_cost_usd IS NULL OR cost_usd < max_cost_usd)
                         RETURNING {COLUMNS}"
                    ),
                    params,
                    decode,
                )
                .await?;
                if !reserved.is_empty() {
                    return Ok((true, reserved));
                }
                let found = query_all(
                    &conn,
                    &format!("SELECT {COLUMNS} FROM tree_budgets WHERE root_job_id = ?1"),
                    [Value::Text(root)],
                    decode,
                )
                .await?;
                Ok((false, found))
            })
            .await?;
        match accounts {
            (true, accounts) => Ok(accounts
                .first()
                .and_then(|a| a.quota.max_tokens.map(|max| max.saturating_sub(a.tokens)))),
            // No row: the root keeps no account, and only each run's own budget applies.
            (false, accounts) if accounts.is_empty() => Ok(None),
            (false, accounts) => {
                let exceeded = accounts[0]
                    .exceeded(turns, tool_calls)
                    .unwrap_or(Exceeded::Turns(accounts[0].turns));
                Err(TreeBudgetError::Exceeded {
                    root_job_id: self.root_job_id.clone(),
                    exceeded,
                })
            }
        }
    }

    /// Charges the tokens and cost of a model call's answer to the tree; fails if the tree has
    /// now gone past its root's tokens or cost.
    pub async fn charge(&self, tokens: u64, cost_usd: f64) -> Result<(), TreeBudgetError> {
        let root = self.root_job_id.clone();
        let params = vec![
            Value::Text(root),
            Value::Integer(i64::try_from(tokens).unwrap_or(i64::MAX)),
            Value::Real(if cost_usd.is_finite() { cost_usd } else { 0.0 }),
        ];
        let accounts = self
            .db
            .write(move |conn| async move {
                query_all(
                    &conn,
                    &format!(
                        "UPDATE tree_budgets SET tokens = tokens + ?2, cost_usd = cost_usd + ?3
                         WHERE root_job_id = ?1 RETURNING {COLUMNS}"
                    ),
                    params,
                    decode,
                )
                .await
            })
            .await?;
        match accounts.first().and_then(Account::overspent) {
            Some(exceeded) => Err(TreeBudgetError::Exceeded {
                root_job_id: self.root_job_id.clone(),
                exceeded,
            }),
            None => Ok(()),
        }
    }
}

/// Deletes the accounts of roots that are gone (pruned by retention), at most `batch` per
/// statement; returns how many went.
pub(super) async fn prune_orphans(db: &Db, batch: usize) -> Result<u64, DbError> {
    let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    let mut removed = 0;
    loop {
        let deleted = db
            .write(move |conn| async move {
                Ok(conn
                    .execute(
                        "DELETE FROM tree_budgets WHERE root_job_id IN (
                             SELECT b.root_job_id FROM tree_budgets b
                             WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = b.root_job_id)
                             LIMIT ?1)",
                        [batch],
                    )
                    .await?)
            })
            .await?;
        removed += deleted;
        if deleted < batch.unsigned_abs() {
            return Ok(removed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(quota: Quota) -> Account {
        Account {
            quota,
            ..Account::default()
        }
    }

    #[test]
    fn a_reservation_names_the_first_part_it_would_go_past() {
        let mut a = account(Quota {
            max_turns: Some(2),
            max_tool_calls: Some(3),
            max_tokens: Some(100),
            max_cost_usd: Some(1.0),
        });
        assert_eq!(a.exceeded(1, 0), None);
        a.turns = 2;
        assert_eq!(a.exceeded(1, 0), Some(Exceeded::Turns(2)));
        assert_eq!(a.exceeded(0, 3), None, "a tool call needs no turn");
        assert_eq!(a.exceeded(0, 4), Some(Exceeded::ToolCalls(0, 3)));
        a.tokens = 100;
        assert_eq!(a.exceeded(0, 1), Some(Exceeded::Tokens(100, 100)));
        assert_eq!(a.overspent(), None, "using all of it is within it");
        a.tokens = 101;
        assert_eq!(a.overspent(), Some(Exceeded::Tokens(101, 100)));
    }

    #[tokio::test]
    async fn a_trees_account_is_shared_kept_to_its_run_and_pruned_with_its_root() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("file:{}", dir.path().join("queue.db").display());
        let queue = crate::queue::Queue::open(&url, None).await.expect("queue");
        let db = queue.db().clone();
        db.migrate("children", MIGRATIONS).await.expect("migrate");
        queue
            .enqueue(crate::queue::NewJob::new("root", &serde_json::Value::Null).id("root"))
            .await
            .expect("enqueue");
        let quota = Quota {
            max_turns: Some(3),
            ..Quota::default()
        };
        let root = TreeBudget::root(db.clone(), "root".into(), "run-1".into(), quota);
        let child = TreeBudget::member(db.clone(), "root".into());
        root.reserve(1, 0).await.expect("root's turn");
        child.reserve(2, 0).await.expect("the child's turns");
        let refused = child
            .reserve(1, 0)
            .await
            .expect_err("the tree's turns are spent");
        assert!(
            matches!(
                &refused,
                TreeBudgetError::Exceeded {
                    exceeded: Exceeded::Turns(3),
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(
            refused.to_string().contains("tree of job root"),
            "{refused}"
        );
        // A child of a root that keeps no account has its own budget only.
        let stray = TreeBudget::member(db.clone(), "nobody".into());
        assert_eq!(stray.reserve(1, 1).await.expect("no account"), None);
        // A new run of the root starts the account again.
        let again = TreeBudget::root(db.clone(), "root".into(), "run-2".into(), quota);
        again.reserve(3, 0).await.expect("a new run's turns");

        assert_eq!(
            prune_orphans(&db, 10).await.expect("prune"),
            0,
            "the root is alive"
        );
        db.write(|conn| async move {
            conn.execute("DELETE FROM jobs WHERE id = 'root'", ())
                .await?;
            Ok(())
        })
        .await
        .expect("delete the root, as retention does");
        assert_eq!(prune_orphans(&db, 10).await.expect("prune"), 1);
    }
}
