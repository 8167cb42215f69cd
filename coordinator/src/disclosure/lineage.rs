//! Where a column of a plan comes from: the source columns behind it.

use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};

use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{Aggregate, Expr, JoinType, LogicalPlan};

/// `(table, column)`, e.g. `("hip.operations", "bmi")`.
pub(super) type Source = (String, String);

/// Nodes that keep the rows of their input (and their meaning) on the way to the output.
pub(super) fn pass_through(plan: &LogicalPlan) -> Option<&LogicalPlan> {
    match plan {
        LogicalPlan::Projection(p) => Some(&p.input),
        LogicalPlan::Filter(f) => Some(&f.input),
        LogicalPlan::Sort(s) => Some(&s.input),
        LogicalPlan::Limit(l) => Some(&l.input),
        LogicalPlan::SubqueryAlias(a) => Some(&a.input),
        LogicalPlan::Repartition(r) => Some(&r.input),
        _ => None,
    }
}

pub(super) fn reads_data(plan: &LogicalPlan) -> bool {
    plan.exists(|p| Ok(matches!(p, LogicalPlan::TableScan(_) | LogicalPlan::Extension(_)))).unwrap_or(true)
}

pub(super) fn is_grouping_set(a: &Aggregate) -> bool {
    matches!(a.group_expr.as_slice(), [Expr::GroupingSet(_)])
}

/// The source columns a column of `plan`'s output is computed from.
pub(super) fn lineage(plan: &LogicalPlan, idx: usize) -> BTreeSet<Source> {
    let mut out = BTreeSet::new();
    lineage_into(plan, idx, &mut out);
    out
}

/// The source columns an expression over `input`'s columns is computed from.
pub(super) fn expr_lineage(input: &LogicalPlan, e: &Expr) -> BTreeSet<Source> {
    let mut out = BTreeSet::new();
    refs_lineage(input, e, &mut out);
    out
}

/// Column references count as their sources, except under a generalising
/// function (`age_band(birth_date, …)`, [`samkor_functions::GENERALISING_FUNCTIONS`]):
/// there the first argument's sources become `(table, "age_band(birth_date)")`,
/// a column the catalogue does not know and so does not hold identifying
/// (its arguments are checked by `classify::check_generalisations`).
fn refs_lineage(input: &LogicalPlan, e: &Expr, out: &mut BTreeSet<Source>) {
    let _ = e.apply(|e| {
        Ok(match e {
            Expr::Column(c) => {
                if let Ok(i) = input.schema().index_of_column(c) {
                    lineage_into(input, i, out);
                }
                TreeNodeRecursion::Continue
            }
            Expr::ScalarFunction(f) if samkor_functions::GENERALISING_FUNCTIONS.contains(&f.name()) => {
                if let Some((first, rest)) = f.args.split_first() {
                    let mut inner = BTreeSet::new();
                    refs_lineage(input, first, &mut inner);
                    out.extend(inner.into_iter().map(|(t, c)| (t, format!("{}({c})", f.name()))));
                    for a in rest {
                        refs_lineage(input, a, out);
                    }
                }
                TreeNodeRecursion::Jump
            }
            _ => TreeNodeRecursion::Continue,
        })
    });
}

fn lineage_into(plan: &LogicalPlan, idx: usize, out: &mut BTreeSet<Source>) {
    match plan {
        LogicalPlan::TableScan(scan) => {
            if let (Some(schema), Some((_, field))) = (scan.table_name.schema(), plan.schema().iter().nth(idx)) {
                out.insert((format!("{schema}.{}", scan.table_name.table()), field.name().clone()));
            }
        }
        LogicalPlan::Projection(p) => {
            if let Some(e) = p.expr.get(idx) {
                refs_lineage(&p.input, e, out);
            }
        }
        LogicalPlan::Window(w) => {
            let n = w.input.schema().fields().len();
            if idx < n {
                lineage_into(&w.input, idx, out);
            } else if let Some(e) = w.window_expr.get(idx - n) {
                refs_lineage(&w.input, e, out);
            }
        }
        LogicalPlan::Aggregate(a) => {
            let groups = grouping_set_to_exprlist(&a.group_expr).unwrap_or_default();
            let gid = usize::from(is_grouping_set(a));
            if idx < groups.len() {
                refs_lineage(&a.input, groups[idx], out);
            } else if idx >= groups.len() + gid
                && let Some(e) = a.aggr_expr.get(idx - groups.len() - gid)
            {
                refs_lineage(&a.input, e, out);
            }
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => lineage_into(&j.left, idx, out),
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => lineage_into(&j.right, idx, out),
                _ if idx < left => lineage_into(&j.left, idx, out),
                _ => lineage_into(&j.right, idx - left, out),
            }
        }
        LogicalPlan::Union(u) => {
            for input in &u.inputs {
                lineage_into(input, idx, out);
            }
        }
        other => {
            if let Some(input) = pass_through(other) {
                lineage_into(input, idx, out);
            } else if let [input] = other.inputs().as_slice()
                && idx < input.schema().fields().len()
            {
                lineage_into(input, idx, out);
            }
        }
    }
}
