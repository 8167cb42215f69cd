//! Dominance companions of sums and means of magnitudes: per group, the sum of
//! |x| of the `dominance_n` persons who contribute most, and of all persons.
//!
//! ```text
//!  input ─ GROUP BY keys, record key: s = Σ|x| ─ row_number() OVER (PARTITION BY keys ORDER BY s DESC)
//!        ─ GROUP BY keys: Σ s for rank ≤ n, Σ s ─┐
//!  aggregate ───────────── LEFT JOIN on keys (null-safe) ─ project
//! ```
//! Both sides go to the node as SQL when the input is one register's.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, NullEquality, Result};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, ExprFunctionExt, JoinType, LogicalPlan, LogicalPlanBuilder, Projection, SubqueryAlias, cast, lit,
    when,
};

use super::rules::Rule;
use super::trace::Persons;
use super::{PREFIX, Rewriter, col_expr};

impl Rewriter<'_> {
    /// Joins `aggregate` with the dominance companions of `args`
    /// (`__samkor_dtN`: the top persons' Σ|x|, `__samkor_dsN`: everyone's).
    pub(super) fn with_dominance(
        &self,
        aggregate: LogicalPlan,
        input: LogicalPlan,
        groups: &[Expr],
        persons: &Persons,
        args: &[Expr],
    ) -> Result<LogicalPlan> {
        let Some(person) = persons.primary() else {
            // Rows that summarise several persons (inner aggregates): no per-person sums.
            return Err(Rule::DominanceUntraceable.refuse(
                "a sum or mean of a magnitude over pre-aggregated rows cannot be checked for dominance; aggregate the rows of individuals directly",
            ));
        };
        let sum = |e: Expr| {
            Expr::AggregateFunction(AggregateFunction::new_udf(sum_udaf(), vec![e], false, None, vec![], None))
        };
        let key_names: Vec<String> = (0..groups.len()).map(|j| format!("{PREFIX}k{j}")).collect();
        let mut by_person: Vec<Expr> = groups.iter().zip(&key_names).map(|(g, n)| g.clone().alias(n)).collect();
        by_person.push(col_expr(&person.col).alias(format!("{PREFIX}person")));
        let shares: Vec<Expr> = args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                sum(datafusion::functions::math::expr_fn::abs(cast(a.clone(), DataType::Float64)))
                    .alias(format!("{PREFIX}s{i}"))
            })
            .collect();
        let per_person = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), by_person, shares)?);
        let keys: Vec<Expr> = key_names.iter().map(|n| Expr::Column(Column::from_name(n))).collect();
        let ranks: Vec<Expr> = (0..args.len())
            .map(|i| {
                datafusion::functions_window::expr_fn::row_number()
                    .partition_by(keys.clone())
                    .order_by(vec![Expr::Column(Column::from_name(format!("{PREFIX}s{i}"))).sort(false, true)])
                    .build()
                    .map(|e| e.alias(format!("{PREFIX}r{i}")))
            })
            .collect::<Result<_>>()?;
        let ranked = LogicalPlan::Window(datafusion::logical_expr::Window::try_new(ranks, Arc::new(per_person))?);
        let n = i64::from(self.cx.approval.disclosure.dominance_n.max(1));
        let mut totals = Vec::new();
        for i in 0..args.len() {
            let s = Expr::Column(Column::from_name(format!("{PREFIX}s{i}")));
            let r = Expr::Column(Column::from_name(format!("{PREFIX}r{i}")));
            let top = when(r.lt_eq(lit(n)), s.clone()).end()?;
            totals.push(sum(top).alias(format!("{PREFIX}dt{i}")));
            totals.push(sum(s).alias(format!("{PREFIX}ds{i}")));
        }
        let dominance = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(ranked), keys, totals)?);
        let alias = self.name("dom");
        let dominance = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(dominance), alias.as_str())?);
        let left: Vec<Column> =
            (0..groups.len()).map(|j| Column::from(aggregate.schema().qualified_field(j))).collect();
        let right: Vec<Column> = key_names.iter().map(|n| Column::new(Some(alias.clone()), n)).collect();
        let mut exprs: Vec<Expr> = aggregate.schema().columns().into_iter().map(Expr::Column).collect();
        for i in 0..args.len() {
            for what in ["dt", "ds"] {
                let name = format!("{PREFIX}{what}{i}");
                exprs.push(Expr::Column(Column::new(Some(alias.clone()), &name)).alias(&name));
            }
        }
        let joined = if groups.is_empty() {
            LogicalPlanBuilder::from(aggregate).cross_join(dominance)?.build()?
        } else {
            LogicalPlanBuilder::from(aggregate)
                .join_detailed(dominance, JoinType::Left, (left, right), None, NullEquality::NullEqualsNull)?
                .build()?
        };
        Ok(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(joined))?))
    }
}
