//! Sums of floating-point numbers at the node, rounded once.
//!
//! DataFusion's `sum` of doubles rounds after each addition, so its last bits
//! follow the order of the rows and how they were split among partial
//! aggregates: the same query over the same files gave `8136.999999999998`
//! read from the files and `8137.000000000002` read through the holder's
//! cluster, and persons split by record key (`samkor_functions::by_person`)
//! group a node's rows differently again. [`exact_float_sums`] replaces each
//! `sum` of a `Float64` by `samkor_exact_sum`, which keeps the sum without
//! error and rounds it once: the answer is the same however the node reads
//! and splits its rows. A `sum(DISTINCT x)` is left as it is.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result};
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable, LogicalPlan};
use samkor_functions::exact_sum_udaf;

/// `plan` with every `sum` of a `Float64` summed exactly, under its own name.
pub fn exact_float_sums(plan: LogicalPlan) -> Result<LogicalPlan> {
    let udaf = Arc::new(exact_sum_udaf());
    let rewritten = plan.transform_up(|node| {
        let LogicalPlan::Aggregate(aggregate) = &node else { return Ok(Transformed::no(node)) };
        let schema = aggregate.input.schema();
        let exprs = aggregate.aggr_expr.iter().map(|e| exact(e, schema, &udaf)).collect::<Result<Vec<_>>>()?;
        if exprs.iter().all(Option::is_none) {
            return Ok(Transformed::no(node));
        }
        let aggr = exprs.into_iter().zip(&aggregate.aggr_expr).map(|(new, old)| new.unwrap_or_else(|| old.clone()));
        let rebuilt = Aggregate::try_new(Arc::clone(&aggregate.input), aggregate.group_expr.clone(), aggr.collect())?;
        Ok(Transformed::yes(LogicalPlan::Aggregate(rebuilt)))
    })?;
    Ok(rewritten.data)
}

/// The exact sum replacing `e`, named as `e` was, if `e` is a `sum` of a
/// `Float64` (aliased or not).
fn exact(e: &Expr, schema: &DFSchema, udaf: &Arc<datafusion::logical_expr::AggregateUDF>) -> Result<Option<Expr>> {
    let (inner, alias) = match e {
        Expr::Alias(Alias { expr, relation, name, .. }) => (expr.as_ref(), Some((relation.clone(), name.clone()))),
        _ => (e, None),
    };
    let Expr::AggregateFunction(f) = inner else { return Ok(None) };
    let [x] = f.params.args.as_slice() else { return Ok(None) };
    if f.func.name() != "sum" || f.params.distinct || x.get_type(schema)? != DataType::Float64 {
        return Ok(None);
    }
    let exact = Expr::AggregateFunction(AggregateFunction { func: Arc::clone(udaf), params: f.params.clone() });
    Ok(Some(match alias {
        Some((relation, name)) => exact.alias_qualified(relation, name),
        None => exact.alias(e.schema_name().to_string()),
    }))
}

#[cfg(test)]
mod tests;
