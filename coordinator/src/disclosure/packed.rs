//! The person companions of the output aggregate in one call per record key.
//!
//! Every `samkor_persons(CASE WHEN c THEN rk END)` (the persons of a cell, of
//! a conditional count, with a non-zero value, of a complement) asked of the
//! output aggregate, every dominance total of the `n` largest persons' Σ|x|
//! and of everyone's ([`Packer::top`]), and the least and largest record key
//! ([`Packer::extremes`]), becomes a condition, a magnitude or a field of one
//! `samkor_companions` call over the same record key: one state per group
//! and one insert per row instead of one per companion
//! (`samkor_functions::companions_udaf`), and fewer aggregates to plan. Each
//! companion keeps its hidden name; release reads it as a field of the
//! call's struct column. A record key with one condition and no magnitude
//! keeps `samkor_persons` (its state is the keys alone), its extremes
//! `min` and `max`.
//!
//! ```text
//!   samkor_persons(rk) AS g1, samkor_persons(CASE WHEN bmi IS NOT NULL THEN rk END) AS a2,
//!   min(rk) AS kmin3, max(rk) AS kmax4, top 2 persons' Σ abs(bmi) AS dt5, sum(abs(bmi)) AS ds6
//!     ⇒ samkor_companions(rk, 2, true, bmi IS NOT NULL, abs(bmi)) AS pm7
//!       g1 = pm7.p0, a2 = pm7.p1, dt5 = pm7.t0, kmin3 = pm7.lo, kmax4 = pm7.hi, ds6 = pm7.s0
//! ```

use std::collections::HashMap;

use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::logical_expr::expr::{AggregateFunction, Case};
use datafusion::logical_expr::{Expr, lit, when};
use samkor_functions::companion_field as field;
use samkor_functions::{MAX_CONDITIONS, MAX_MAGNITUDES, PERSONS_FN, companions_udaf, persons_udaf};

/// Where a packed companion is: the struct column of its call and its field there.
pub(crate) type PackedFields = HashMap<String, (String, usize)>;

/// The companions over one record key.
struct Call {
    rk: Expr,
    /// Each condition and the hidden name of its persons (none for the
    /// `true` added for the extremes).
    conditions: Vec<(Expr, Option<String>)>,
    /// Each magnitude and the hidden names of its largest persons' total
    /// and of its total over every row.
    magnitudes: Vec<(Expr, String, String)>,
    /// The hidden names of the least and largest record key, when asked.
    extremes: Option<(String, String)>,
}

impl Call {
    /// Puts a condition that is `true` first (adding one if there is
    /// none), so that the first call's state keeps every person with a row:
    /// its least and largest keys are `min(rk)` and `max(rk)`.
    fn true_first(&mut self) {
        let always = |e: &Expr| matches!(e, Expr::Literal(ScalarValue::Boolean(Some(true)), _));
        match self.conditions.iter().position(|(c, _)| always(c)) {
            Some(i) => self.conditions.swap(0, i),
            None => self.conditions.insert(0, (lit(true), None)),
        }
    }
}

/// The companions taken so far, per record key.
pub(super) struct Packer {
    /// Persons whose totals the dominance rule adds up (`dominance_n`).
    n: i64,
    calls: Vec<Call>,
}

impl Packer {
    pub(super) fn new(n: i64) -> Packer {
        Packer { n, calls: Vec::new() }
    }

    fn call(&mut self, rk: &Expr) -> &mut Call {
        let i = match self.calls.iter().position(|c| &c.rk == rk) {
            Some(i) => i,
            None => {
                self.calls.push(Call { rk: rk.clone(), conditions: vec![], magnitudes: vec![], extremes: None });
                self.calls.len() - 1
            }
        };
        &mut self.calls[i]
    }

    /// Takes `e` under `name` if it is a person companion; false if not (it
    /// stays an aggregate of its own).
    pub(super) fn take(&mut self, e: &Expr, name: &str) -> bool {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
            return false;
        };
        if func.name() != PERSONS_FN || params.distinct || params.filter.is_some() || !params.order_by.is_empty() {
            return false;
        }
        let [arg] = params.args.as_slice() else {
            return false;
        };
        let Some((rk, condition)) = guarded_key(arg) else {
            return false;
        };
        self.call(&rk).conditions.push((condition, Some(name.to_owned())));
        true
    }

    /// Takes, under `top`, the sum of the `n` largest persons' totals of
    /// the magnitude `x` (null where a row does not count) per cell, and
    /// under `total` the sum of `x` over every row.
    pub(super) fn top(&mut self, rk: &Expr, x: Expr, top: &str, total: &str) {
        self.call(rk).magnitudes.push((x, top.to_owned(), total.to_owned()));
    }

    /// Takes, under `least` and `largest`, the least and largest record key
    /// of the cell's rows.
    pub(super) fn extremes(&mut self, rk: &Expr, least: &str, largest: &str) {
        self.call(rk).extremes = Some((least.to_owned(), largest.to_owned()));
    }

    /// The calls as aggregate expressions (named by `name`), and where each
    /// taken companion is in their results.
    pub(super) fn finish(self, mut name: impl FnMut() -> String) -> (Vec<Expr>, PackedFields) {
        let (mut exprs, mut fields) = (Vec::new(), PackedFields::new());
        for mut call in self.calls {
            if let ([(condition, Some(hidden))], []) = (call.conditions.as_slice(), call.magnitudes.as_slice()) {
                // One companion alone: its own aggregate (a smaller state).
                let arg = match condition {
                    Expr::Literal(ScalarValue::Boolean(Some(true)), _) => call.rk.clone(),
                    c => when(c.clone(), call.rk.clone()).end().expect("CASE with one branch"),
                };
                exprs.push(persons_udaf().call(vec![arg]).alias(hidden));
                if let Some((least, largest)) = &call.extremes {
                    exprs.push(min_udaf().call(vec![call.rk.clone()]).alias(least));
                    exprs.push(max_udaf().call(vec![call.rk.clone()]).alias(largest));
                }
                continue;
            }
            if call.extremes.is_some() {
                call.true_first();
            }
            let conditions: Vec<_> = call.conditions.chunks(MAX_CONDITIONS).collect();
            let magnitudes: Vec<_> = call.magnitudes.chunks(MAX_MAGNITUDES).collect();
            for k in 0..conditions.len().max(magnitudes.len()) {
                let (c, x) = (conditions.get(k).copied().unwrap_or(&[]), magnitudes.get(k).copied().unwrap_or(&[]));
                let (m, d) = (c.len(), x.len());
                let column = name();
                let mut field_of = |hidden: &String, at: usize| fields.insert(hidden.clone(), (column.clone(), at));
                let mut args = vec![call.rk.clone(), lit(self.n)];
                for (i, (e, hidden)) in c.iter().enumerate() {
                    args.push(e.clone());
                    if let Some(hidden) = hidden {
                        field_of(hidden, field::persons(i));
                    }
                }
                for (j, (e, top, total)) in x.iter().enumerate() {
                    args.push(e.clone());
                    field_of(top, field::top(m, j));
                    field_of(total, field::sum(m, d, j));
                }
                if let (0, Some((least, largest))) = (k, &call.extremes) {
                    field_of(least, field::least_key(m, d));
                    field_of(largest, field::largest_key(m, d));
                }
                exprs.push(companions_udaf().call(args).alias(column));
            }
        }
        (exprs, fields)
    }
}

/// `(rk, condition)` of `rk` or `CASE WHEN condition THEN rk END`.
fn guarded_key(arg: &Expr) -> Option<(Expr, Expr)> {
    match arg {
        Expr::Column(_) => Some((arg.clone(), lit(true))),
        Expr::Case(Case { expr: None, when_then_expr, else_expr: None }) => match when_then_expr.as_slice() {
            [(condition, rk)] if matches!(**rk, Expr::Column(_)) => Some(((**rk).clone(), (**condition).clone())),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::col;

    /// The least and largest record key of a call whose companions have no
    /// `true` condition: one is added first, so the state keeps every person
    /// with a row; its persons are nobody's hidden column.
    #[test]
    fn extremes_put_a_true_condition_first() {
        let mut packer = Packer::new(2);
        let rk = col("rk");
        let guarded = when(col("c").is_not_null(), rk.clone()).end().expect("CASE");
        assert!(packer.take(&persons_udaf().call(vec![guarded]), "a1"));
        packer.top(&rk, col("x"), "dt2", "ds3");
        packer.extremes(&rk, "kmin4", "kmax5");
        let (exprs, fields) = packer.finish(|| "pm6".to_owned());
        let text: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text, ["samkor_companions(rk, Int64(2), Boolean(true), c IS NOT NULL, x) AS pm6"]);
        let at = |name: &str| fields[name].1;
        assert_eq!(
            (at("a1"), at("dt2"), at("kmin4"), at("kmax5"), at("ds3")),
            (
                field::persons(1),
                field::top(2, 0),
                field::least_key(2, 1),
                field::largest_key(2, 1),
                field::sum(2, 1, 0)
            )
        );
        assert_eq!(fields.len(), 5, "the added condition has no hidden name: {fields:?}");
    }

    /// A record key with one companion keeps `samkor_persons`, its extremes `min` and `max`.
    #[test]
    fn a_lone_companion_keeps_its_own_aggregates() {
        let mut packer = Packer::new(2);
        let rk = col("rk");
        assert!(packer.take(&persons_udaf().call(vec![rk.clone()]), "g1"));
        packer.extremes(&rk, "kmin2", "kmax3");
        let (exprs, fields) = packer.finish(|| unreachable!("no call"));
        let text: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text, ["samkor_persons(rk) AS g1", "min(rk) AS kmin2", "max(rk) AS kmax3"]);
        assert!(fields.is_empty());
    }
}
