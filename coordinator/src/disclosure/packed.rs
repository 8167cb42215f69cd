//! The person companions of the output aggregate in one call per record key.
//!
//! Every `samkor_persons(CASE WHEN c THEN rk END)` (the persons of a cell, of
//! a conditional count, with a non-zero value, of a complement) asked of the
//! output aggregate, and every dominance total of the `n` largest persons'
//! Σ|x| ([`Packer::top`]), becomes a condition or a magnitude of one
//! `samkor_companions` call over the same record key: one state per group
//! and one insert per row instead of one per companion
//! (`samkor_functions::companions_udaf`). Each companion keeps its hidden
//! name; release reads it as a field of the call's struct column. A record
//! key with one condition and no magnitude keeps `samkor_persons` (its state
//! is the keys alone).
//!
//! ```text
//!   samkor_persons(rk) AS g1, samkor_persons(CASE WHEN bmi IS NOT NULL THEN rk END) AS a2,
//!   top 2 persons' Σ abs(bmi) AS dt3
//!     ⇒ samkor_companions(rk, 2, true, bmi IS NOT NULL, abs(bmi)) AS pm4
//!       g1 = pm4.p0, a2 = pm4.p1, dt3 = pm4.t0
//! ```

use std::collections::HashMap;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::{AggregateFunction, Case};
use datafusion::logical_expr::{Expr, lit, when};
use samkor_functions::{MAX_CONDITIONS, MAX_MAGNITUDES, PERSONS_FN, companions_udaf, persons_udaf};

/// Where a packed companion is: the struct column of its call and its field there.
pub(crate) type PackedFields = HashMap<String, (String, usize)>;

/// The companions over one record key.
struct Call {
    rk: Expr,
    conditions: Vec<(Expr, String)>,
    magnitudes: Vec<(Expr, String)>,
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
                self.calls.push(Call { rk: rk.clone(), conditions: vec![], magnitudes: vec![] });
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
        self.call(&rk).conditions.push((condition, name.to_owned()));
        true
    }

    /// Takes, under `name`, the sum of the `n` largest persons' totals of
    /// the magnitude `x` (null where a row does not count) per cell.
    pub(super) fn top(&mut self, rk: &Expr, x: Expr, name: &str) {
        self.call(rk).magnitudes.push((x, name.to_owned()));
    }

    /// The calls as aggregate expressions (named by `name`), and where each
    /// taken companion is in their results.
    pub(super) fn finish(self, mut name: impl FnMut() -> String) -> (Vec<Expr>, PackedFields) {
        let (mut exprs, mut fields) = (Vec::new(), PackedFields::new());
        for call in self.calls {
            if let ([(condition, hidden)], []) = (call.conditions.as_slice(), call.magnitudes.as_slice()) {
                // One companion alone: its own aggregate (a smaller state).
                let arg = match condition {
                    Expr::Literal(ScalarValue::Boolean(Some(true)), _) => call.rk.clone(),
                    c => when(c.clone(), call.rk.clone()).end().expect("CASE with one branch"),
                };
                exprs.push(persons_udaf().call(vec![arg]).alias(hidden));
                continue;
            }
            let conditions: Vec<&[(Expr, String)]> = call.conditions.chunks(MAX_CONDITIONS).collect();
            let magnitudes: Vec<&[(Expr, String)]> = call.magnitudes.chunks(MAX_MAGNITUDES).collect();
            for k in 0..conditions.len().max(magnitudes.len()) {
                let (c, m) = (conditions.get(k).copied().unwrap_or(&[]), magnitudes.get(k).copied().unwrap_or(&[]));
                let column = name();
                let mut args = vec![call.rk.clone(), lit(self.n)];
                for (i, (e, hidden)) in c.iter().chain(m).enumerate() {
                    args.push(e.clone());
                    fields.insert(hidden.clone(), (column.clone(), i));
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
