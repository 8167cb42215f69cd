//! Dominance companions of sums and means of magnitudes: per cell, the sum of
//! |x| of the `dominance_n` persons who contribute most, and of all rows (a
//! magnitude of the record key's `samkor_companions` call, which totals |x|
//! per person and ranks the totals, and sums |x| over every row; `packed`).
//!
//! ```text
//!  Aggregate(keys; …, samkor_companions(record key, n, …, |x|) AS __samkor_pmN)
//!    top n persons' Σ|x| = __samkor_pmN.t_j, everyone's = __samkor_pmN.s_j
//! ```
//! Both are aggregates of the output aggregate itself: one pass over the
//! rows, computed at the node with the other companions when the input is one
//! register's, and per cell of every grouping set (margins included).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::functions::math::expr_fn::abs;
use datafusion::logical_expr::{Expr, cast};

use super::rules::Rule;
use super::trace::Persons;
use super::{Rewriter, col_expr};

impl Rewriter<'_> {
    /// The record key whose persons' Σ|x| are ranked and |x| (null where a
    /// row does not count).
    pub(super) fn dominance(&self, persons: &Persons, x: Expr) -> Result<(Expr, Expr)> {
        let Some(person) = persons.primary() else {
            // Rows that summarise several persons (inner aggregates): no per-person sums.
            return Err(Rule::DominanceUntraceable.refuse(
                "a sum or mean of a magnitude over pre-aggregated rows cannot be checked for dominance; aggregate the rows of individuals directly",
            ));
        };
        Ok((col_expr(&person.col), abs(cast(x, DataType::Float64))))
    }
}
