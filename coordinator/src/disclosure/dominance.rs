//! Dominance companions of sums and means of magnitudes: per cell, the sum of
//! |x| of the `dominance_n` persons who contribute most (a magnitude of the
//! record key's `samkor_companions` call, which totals |x| per person and
//! ranks the totals; `packed`), and of all persons.
//!
//! ```text
//!  Aggregate(keys; …, samkor_companions(record key, n, …, |x|) AS __samkor_pmN,
//!                     sum(|x|)                                AS __samkor_dsN)
//! ```
//! Both are aggregates of the output aggregate itself: one pass over the
//! rows, computed at the node with the other companions when the input is one
//! register's, and per cell of every grouping set (margins included).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::functions::math::expr_fn::abs;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Expr, cast};

use super::rules::Rule;
use super::trace::Persons;
use super::{Rewriter, col_expr};

impl Rewriter<'_> {
    /// The record key whose persons' Σ|x| are ranked, |x| (null where a row
    /// does not count), and everyone's Σ|x| as an aggregate expression.
    pub(super) fn dominance(&self, persons: &Persons, x: Expr) -> Result<(Expr, Expr, Expr)> {
        let Some(person) = persons.primary() else {
            // Rows that summarise several persons (inner aggregates): no per-person sums.
            return Err(Rule::DominanceUntraceable.refuse(
                "a sum or mean of a magnitude over pre-aggregated rows cannot be checked for dominance; aggregate the rows of individuals directly",
            ));
        };
        let magnitude = abs(cast(x, DataType::Float64));
        let total = Expr::AggregateFunction(AggregateFunction::new_udf(
            sum_udaf(),
            vec![magnitude.clone()],
            false,
            None,
            vec![],
            None,
        ));
        Ok((col_expr(&person.col), magnitude, total))
    }
}
