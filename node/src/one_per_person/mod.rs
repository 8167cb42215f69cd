//! Persons counted as rows, where every row is a different person.
//!
//! Disclosure control asks every cell for its distinct persons and its cell
//! key (`samkor_persons(samkor_record_key(person))`): a set of record keys per
//! cell. A table that holds one row per identity number (a population or a
//! death register) needs no set: a cell's persons are its rows, its key the
//! sum of their record keys. The holder states it in the table's config
//! (`one_row_per_person = true`); the node never trusts the statement:
//!
//! * at start it counts the repeated identity numbers of the files and
//!   refuses to start if there is one ([`Checked::at_start`]);
//! * before each sub-query it compares the files' names, sizes and
//!   modification times with those it checked; if they changed it checks
//!   again, and while the check fails the sets are counted as before (the
//!   answers are the same either way, only their cost differs).
//!
//! The rewrite ([`count_persons_by_rows`]) replaces `samkor_persons(k)` by
//! `samkor_persons_of_rows(k)` only where `k` is the record key of the
//! `person` column of such a table, reached through filters, projections,
//! aliases, sorts and limits alone (nothing that repeats a row: no join, no
//! union), possibly under a `CASE WHEN … THEN k END` of disclosure control's
//! conditional counts.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue, TableReference};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::{AggregateFunction, Case, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{AggregateUDF, Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use samkor_functions::{PERSONS_FN, RECORD_KEY_FN};
use samkor_proto::PERSON_COLUMN;
use tokio::sync::Mutex;

use crate::table::ProjectTable;

/// A data file as last seen: path, size, modification time.
type Stamp = (PathBuf, u64, Option<SystemTime>);

/// The data files of a table's `path` (a file, a directory or a glob), sorted.
fn stamps(path: &str) -> Vec<Stamp> {
    let p = std::path::Path::new(path);
    let mut files: Vec<PathBuf> = if p.is_dir() {
        std::fs::read_dir(p).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
    } else if p.is_file() {
        vec![p.to_owned()]
    } else {
        glob::glob(path).map(|g| g.filter_map(|e| e.ok()).collect()).unwrap_or_default()
    };
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let (len, modified) = meta.map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None));
            (f, len, modified)
        })
        .collect()
}

/// Identity numbers in more than one row of `inner` (nulls are no one).
async fn repeated(inner: Arc<dyn TableProvider>, person_column: &str) -> Result<u64> {
    let ctx = SessionContext::new();
    ctx.register_table("t", inner)?;
    let c = format!("\"{}\"", person_column.replace('"', "\"\""));
    let batches = ctx.sql(&format!("SELECT count({c}) - count(DISTINCT {c}) FROM t")).await?.collect().await?;
    let value = batches.first().filter(|b| b.num_rows() == 1).map(|b| ScalarValue::try_from_array(b.column(0), 0));
    match value {
        Some(Ok(ScalarValue::Int64(Some(n)))) => Ok(n.max(0) as u64),
        _ => Err(datafusion::error::DataFusionError::Internal("no count of repeated identity numbers".into())),
    }
}

/// A table declared to hold one row per person, and what its last check found.
#[derive(Debug)]
pub struct Checked {
    table: String,
    path: String,
    person_column: String,
    inner: Arc<dyn TableProvider>,
    /// The files checked and whether every identity number was in one row.
    last: Mutex<(Vec<Stamp>, bool)>,
}

/// Why a declaration was not confirmed at start.
#[derive(Debug)]
pub enum NotChecked {
    /// This many identity numbers are in more than one row.
    Repeated(u64),
    /// The files could not be read.
    Unreadable(datafusion::error::DataFusionError),
}

impl Checked {
    /// Checks the declaration at start.
    pub async fn at_start(
        table: &str,
        path: &str,
        person_column: &str,
        inner: Arc<dyn TableProvider>,
    ) -> std::result::Result<Checked, NotChecked> {
        let before = stamps(path);
        let n = repeated(inner.clone(), person_column).await.map_err(NotChecked::Unreadable)?;
        if n > 0 {
            return Err(NotChecked::Repeated(n));
        }
        Ok(Checked {
            table: table.to_owned(),
            path: path.to_owned(),
            person_column: person_column.to_owned(),
            inner,
            last: Mutex::new((before, true)),
        })
    }

    /// Whether every identity number is in one row now; checks again if the
    /// files changed since the last check.
    pub async fn holds(&self) -> bool {
        let now = stamps(&self.path);
        let mut last = self.last.lock().await;
        if last.0 == now {
            return last.1;
        }
        let found = repeated(self.inner.clone(), &self.person_column).await;
        // Files that change while they are checked are checked again next time.
        let holds = matches!(found, Ok(0)) && stamps(&self.path) == now;
        if !holds {
            tracing::warn!(
                table = %self.table,
                "the files of a table declared one_row_per_person changed and now hold an identity number in more than one row (or could not be read); its persons are counted as sets until they hold one row per person again"
            );
        }
        *last = (now, holds);
        holds
    }
}

/// The tables scanned by `plan` whose rows are distinct persons now.
pub async fn distinct_person_tables(plan: &LogicalPlan) -> HashSet<TableReference> {
    let mut scans: Vec<(TableReference, ProjectTable)> = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(table) = provider.downcast_ref::<ProjectTable>()
        {
            scans.push((scan.table_name.clone(), table.clone()));
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    let mut distinct = HashSet::new();
    for (name, table) in scans {
        if table.rows_are_distinct_persons().await {
            distinct.insert(name);
        }
    }
    distinct
}

/// Whether output column `i` of `plan` is the `person` column of a table in
/// `distinct`, one row per input row.
fn distinct_person(plan: &LogicalPlan, i: usize, distinct: &HashSet<TableReference>) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => {
            scan.projected_schema.field(i).name() == PERSON_COLUMN && distinct.contains(&scan.table_name)
        }
        LogicalPlan::Projection(p) => match p.expr[i].clone().unalias_nested().data {
            Expr::Column(c) => {
                p.input.schema().index_of_column(&c).is_ok_and(|j| distinct_person(&p.input, j, distinct))
            }
            _ => false,
        },
        LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
            distinct_person(plan.inputs()[0], i, distinct)
        }
        _ => false,
    }
}

/// Whether output column `i` of `plan` is the record key of a distinct
/// person of its row.
fn distinct_key(plan: &LogicalPlan, i: usize, distinct: &HashSet<TableReference>) -> bool {
    match plan {
        LogicalPlan::Projection(p) => match p.expr[i].clone().unalias_nested().data {
            Expr::Column(c) => p.input.schema().index_of_column(&c).is_ok_and(|j| distinct_key(&p.input, j, distinct)),
            Expr::ScalarFunction(ScalarFunction { func, args }) if func.name() == RECORD_KEY_FN => {
                match args.as_slice() {
                    [Expr::Column(c)] => {
                        p.input.schema().index_of_column(c).is_ok_and(|j| distinct_person(&p.input, j, distinct))
                    }
                    _ => false,
                }
            }
            _ => false,
        },
        LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
            distinct_key(plan.inputs()[0], i, distinct)
        }
        _ => false,
    }
}

/// Whether `arg`, evaluated on the rows of `input`, is each row's own
/// distinct person's record key or null.
fn keys_of_distinct_persons(input: &LogicalPlan, arg: &Expr, distinct: &HashSet<TableReference>) -> bool {
    match arg {
        Expr::Alias(a) => keys_of_distinct_persons(input, &a.expr, distinct),
        Expr::Column(c) => input.schema().index_of_column(c).is_ok_and(|i| distinct_key(input, i, distinct)),
        Expr::ScalarFunction(ScalarFunction { func, args }) if func.name() == RECORD_KEY_FN => {
            matches!(args.as_slice(), [Expr::Column(c)]
                if input.schema().index_of_column(c).is_ok_and(|i| distinct_person(input, i, distinct)))
        }
        Expr::Case(Case { expr: None, when_then_expr, else_expr }) => {
            let no_else = match else_expr.as_deref() {
                None => true,
                Some(Expr::Literal(v, _)) => v.is_null(),
                Some(_) => false,
            };
            no_else && when_then_expr.iter().all(|(_, then)| keys_of_distinct_persons(input, then, distinct))
        }
        _ => false,
    }
}

/// `samkor_persons(k)` replaced by `samkor_persons_of_rows(k)` where `k` is
/// the record key of a distinct person of each row (see the module doc).
pub fn count_persons_by_rows(plan: LogicalPlan, distinct: &HashSet<TableReference>) -> Result<LogicalPlan> {
    if distinct.is_empty() {
        return Ok(plan);
    }
    let by_rows = Arc::new(samkor_functions::persons_of_rows_udaf());
    plan.transform_up(|node| {
        let LogicalPlan::Aggregate(aggregate) = &node else { return Ok(Transformed::no(node)) };
        let input = Arc::clone(&aggregate.input);
        let names = NamePreserver::new(&node);
        node.map_expressions(|e| {
            let saved = names.save(&e);
            let rewritten = e.transform_up(|e| match e {
                Expr::AggregateFunction(AggregateFunction { func, params })
                    if func.name() == PERSONS_FN
                        && matches!(params.args.as_slice(), [k] if keys_of_distinct_persons(&input, k, distinct)) =>
                {
                    let func: Arc<AggregateUDF> = Arc::clone(&by_rows);
                    Ok(Transformed::yes(Expr::AggregateFunction(AggregateFunction { func, params })))
                }
                other => Ok(Transformed::no(other)),
            })?;
            Ok(if rewritten.transformed { rewritten.update_data(|e| saved.restore(e)) } else { rewritten })
        })
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests;
