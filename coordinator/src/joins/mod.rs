//! Registers are joined on the 16 bytes behind their pseudonyms.
//!
//! An equi-join key that is a register's `person` column, passed through
//! unchanged on both sides, is replaced by `samkor_pseudonym_bytes(person)`,
//! computed below the join (at the node when the side is pushed down):
//! `FixedSizeBinary(16)` keys instead of 32-letter strings, half the bytes to
//! send, hash and compare. The letters are a one-to-one writing of the bytes,
//! so the same rows match. Where nothing above the join reads the text, it is
//! no longer sent at all, and a node that only counts, keys and joins a
//! person computes the bytes from the identity number
//! (`samkor-node`'s `counting`).
//!
//! ```text
//!   Join: o.person = d.person            Projection: <the join's columns>
//!     hip …                      ⇒         Join: __samkor_join_l0 = __samkor_join_r0
//!     dors …                                 Projection: …, samkor_pseudonym_bytes(o.person) AS __samkor_join_l0
//!                                              hip …
//!                                            Projection: …, samkor_pseudonym_bytes(d.person) AS __samkor_join_r0
//!                                              dors …
//! ```
//!
//! Only plain `person` columns qualify: a key computed from one (`upper`,
//! `coalesce`, a constant) is not a pseudonym and keeps its text.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Expr, Join, JoinConstraint, JoinType, LogicalPlan, Projection};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use samkor_proto::PERSON_COLUMN;

/// The optimizer rule (see the module doc).
#[derive(Debug, Default)]
pub struct JoinOnPseudonymBytes;

impl OptimizerRule for JoinOnPseudonymBytes {
    fn name(&self) -> &str {
        "samkor_join_on_pseudonym_bytes"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        match plan {
            LogicalPlan::Join(join) if !join.null_aware => on_bytes(join),
            other => Ok(Transformed::no(other)),
        }
    }
}

/// Whether output column `i` of `plan` is a register's `person` column, unchanged.
pub(crate) fn plain_person(plan: &LogicalPlan, i: usize) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => {
            scan.table_name.schema().is_some() && scan.projected_schema.field(i).name() == PERSON_COLUMN
        }
        LogicalPlan::Projection(p) => match p.expr[i].clone().unalias_nested().data {
            Expr::Column(c) => p.input.schema().index_of_column(&c).is_ok_and(|j| plain_person(&p.input, j)),
            _ => false,
        },
        LogicalPlan::SubqueryAlias(a) => plain_person(&a.input, i),
        LogicalPlan::Filter(f) => plain_person(&f.input, i),
        LogicalPlan::Sort(s) => plain_person(&s.input, i),
        LogicalPlan::Limit(l) => plain_person(&l.input, i),
        LogicalPlan::Repartition(r) => plain_person(&r.input, i),
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    if i < left {
                        plain_person(&j.left, i)
                    } else {
                        plain_person(&j.right, i - left)
                    }
                }
                JoinType::LeftSemi | JoinType::LeftAnti => plain_person(&j.left, i),
                JoinType::RightSemi | JoinType::RightAnti => plain_person(&j.right, i),
                JoinType::LeftMark | JoinType::RightMark => false,
            }
        }
        _ => false,
    }
}

/// Whether `key` is a plain `person` column of `side`.
fn person_key(side: &LogicalPlan, key: &Expr) -> bool {
    match key {
        Expr::Column(c) => side.schema().index_of_column(c).is_ok_and(|i| plain_person(side, i)),
        _ => false,
    }
}

fn on_bytes(join: Join) -> Result<Transformed<LogicalPlan>> {
    let keyed: Vec<usize> = (0..join.on.len())
        .filter(|&k| person_key(&join.left, &join.on[k].0) && person_key(&join.right, &join.on[k].1))
        .collect();
    if keyed.is_empty() {
        return Ok(Transformed::no(LogicalPlan::Join(join)));
    }
    let bytes = Arc::new(samkor_functions::pseudonym_bytes_udf());
    let side = |plan: &Arc<LogicalPlan>, extra: Vec<Expr>| -> Result<Arc<LogicalPlan>> {
        let mut exprs: Vec<Expr> = plan.schema().columns().into_iter().map(Expr::Column).collect();
        exprs.extend(extra);
        Ok(Arc::new(LogicalPlan::Projection(Projection::try_new(exprs, Arc::clone(plan))?)))
    };
    let (mut left_keys, mut right_keys, mut on) = (Vec::new(), Vec::new(), join.on.clone());
    for k in keyed {
        let (l, r) = (format!("__samkor_join_l{k}"), format!("__samkor_join_r{k}"));
        left_keys.push(bytes.call(vec![join.on[k].0.clone()]).alias(&l));
        right_keys.push(bytes.call(vec![join.on[k].1.clone()]).alias(&r));
        on[k] = (Expr::Column(Column::from_name(l)), Expr::Column(Column::from_name(r)));
    }
    let joined = Join::try_new(
        side(&join.left, left_keys)?,
        side(&join.right, right_keys)?,
        on,
        join.filter.clone(),
        join.join_type,
        JoinConstraint::On,
        join.null_equality,
        join.null_aware,
    )?;
    // The join's own columns, as before: the keys stay below it.
    let columns: Vec<Expr> = join.schema.columns().into_iter().map(Expr::Column).collect();
    let restored = Projection::try_new(columns, Arc::new(LogicalPlan::Join(joined)))?;
    Ok(Transformed::yes(LogicalPlan::Projection(restored)))
}

#[cfg(test)]
mod tests;
