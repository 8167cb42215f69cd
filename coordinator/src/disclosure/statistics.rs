//! Every released statistic is decomposed into the additive statistics it
//! determines, and each of them is judged as if it had been asked for
//! directly (SDC.md, "How agencies judge derived statistics"):
//!
//! | statistic                          | what it determines (hidden parts)                      |
//! |------------------------------------|--------------------------------------------------------|
//! | `count(…)`, `approx_distinct`      | the count                                              |
//! | `sum(x)`                           | Σx, and n, min, max, Σx² (a two-valued x gives counts) |
//! | `avg(x)`                           | n, Σx, min, max, Σx²                                   |
//! | `var`, `stddev` (samp/pop)         | n, Σx, Σx², min, max                                   |
//! | `median`, `percentile_cont`, …     | the quantile of at least k persons around its rank     |
//! | `min`, `max`, `bool_and`, `bool_or`| one person's value: refused unless the approval allows |
//!
//! An indicator (`CASE … THEN 1 ELSE 0`, a boolean, a comparison) makes Σx a
//! count: its persons and the persons outside it must both reach k, zeros
//! included (a share of 0 % or 100 % tells every person's value). A numeric x
//! found at release to take only its minimum and maximum in a cell gives the
//! counts of both values from n, Σx and Σx²: the same rule applies to them.

use std::collections::BTreeSet;

use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::{Case, Expr, ExprSchemable, LogicalPlan, lit};
use samkor_policies::disclosure::Additive;

use super::Rewriter;
use super::lineage::{Source, expr_lineage};
use super::rules::Rule;

/// The lowest and highest quantile released.
pub(crate) const QUANTILE_RANGE: (f64, f64) = (0.05, 0.95);

/// What kind of statistic an aggregate is, for its release.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A count of rows, values or persons.
    Count,
    /// Σx.
    Sum,
    /// Σx / n.
    Mean,
    /// Variance or standard deviation, sample or population.
    Spread { population: bool, root: bool },
    /// A protected quantile.
    Quantile { p: f64 },
    /// min or max the approval allows; released unperturbed.
    Extreme,
    /// No person data in the value (`grouping()`).
    Exact,
}

/// One aggregate of the output, decomposed.
#[derive(Debug, Clone)]
pub(super) struct Stat {
    pub(super) kind: Kind,
    pub(super) distinct: bool,
    /// The data argument.
    pub(super) x: Option<Expr>,
    /// The `FILTER (WHERE …)` clause.
    pub(super) filter: Option<Expr>,
    /// Rows behind the value (filter, arguments not null, and for sums not 0).
    pub(super) condition: Option<Expr>,
    /// Rows where the argument is present (filter, argument not null).
    pub(super) present: Option<Expr>,
    /// Rows outside a conditional count or an indicator sum.
    pub(super) complement: Option<Expr>,
    /// The argument is an indicator: Σx is a count.
    pub(super) indicator: bool,
    /// The argument is a magnitude with a unit (dominance rule).
    pub(super) magnitude: bool,
    /// Tables the statistic reads.
    pub(super) tables: Vec<String>,
    pub(super) additive: Option<Additive>,
    /// Tells apart the magnitudes of one cell by what they sum (the source
    /// columns), whatever the query text, for independent, repeatable noise.
    pub(super) stream: u32,
}

/// Aggregates that return one person's value.
const IDENTIFYING: &[&str] = &[
    "min",
    "max",
    "first_value",
    "last_value",
    "nth_value",
    "array_agg",
    "string_agg",
    "any_value",
    "bit_and",
    "bit_or",
    "bit_xor",
    "bool_and",
    "bool_or",
];

fn guard(cond: &Expr, e: Expr) -> Expr {
    Expr::Case(Case::new(None, vec![(Box::new(cond.clone()), Box::new(e))], None))
}

/// `CASE WHEN f THEN x END`, or `x` without a filter.
pub(super) fn filtered(filter: Option<&Expr>, x: Expr) -> Expr {
    match filter {
        Some(f) => guard(f, x),
        None => x,
    }
}

/// Whether an expression can only be 0/1 (or false/true): a boolean, a
/// comparison, or a CASE whose results are all 0 or 1.
fn is_indicator(e: &Expr, input: &LogicalPlan) -> bool {
    if matches!(e.get_type(input.schema()), Ok(datafusion::arrow::datatypes::DataType::Boolean)) {
        return true;
    }
    match e {
        Expr::Alias(a) => is_indicator(&a.expr, input),
        Expr::Cast(c) => is_indicator(&c.expr, input),
        Expr::TryCast(c) => is_indicator(&c.expr, input),
        Expr::Case(c) => {
            let zero_one = |r: &Expr| match r {
                Expr::Literal(v, _) => is_zero_or_one(v),
                other => is_indicator(other, input),
            };
            c.when_then_expr.iter().all(|(_, t)| zero_one(t)) && c.else_expr.as_deref().is_none_or(zero_one)
        }
        _ => false,
    }
}

fn is_zero_or_one(v: &ScalarValue) -> bool {
    if v.is_null() {
        return true;
    }
    match v.cast_to(&datafusion::arrow::datatypes::DataType::Float64) {
        Ok(ScalarValue::Float64(Some(f))) => f == 0.0 || f == 1.0,
        _ => false,
    }
}

/// FNV-1a of the sorted source columns.
fn stream_of(sources: &BTreeSet<Source>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for (t, c) in sources {
        for b in t.bytes().chain([b'.']).chain(c.bytes()).chain([0]) {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    h
}

fn literal_f64(e: &Expr) -> Option<f64> {
    match e {
        Expr::Literal(v, _) => match v.cast_to(&datafusion::arrow::datatypes::DataType::Float64) {
            Ok(ScalarValue::Float64(Some(f))) => Some(f),
            _ => None,
        },
        Expr::Alias(a) => literal_f64(&a.expr),
        Expr::Cast(c) => literal_f64(&c.expr),
        _ => None,
    }
}

impl Rewriter<'_> {
    /// Refuses identifying and unknown aggregates and decomposes the others.
    pub(super) fn statistic(&self, e: &Expr, input: &LogicalPlan) -> Result<Stat> {
        let project = &self.cx.approval.project;
        let Expr::AggregateFunction(AggregateFunction { func, params }) = e.clone().unalias_nested().data else {
            return Err(Rule::Untraceable.refuse(format!("unexpected aggregate expression {e}")));
        };
        let name = func.name().to_lowercase();
        let AggregateFunctionParams { args, distinct, filter, order_by, .. } = params;
        let mut data_args: Vec<Expr> = args.iter().filter(|a| !a.column_refs().is_empty()).cloned().collect();
        if data_args.is_empty() {
            // `percentile_cont(p) WITHIN GROUP (ORDER BY x)` carries x in the ordering.
            data_args.extend(order_by.iter().map(|s| s.expr.clone()).filter(|e| !e.column_refs().is_empty()));
        }
        let sources: BTreeSet<Source> =
            data_args.iter().chain(filter.iter().map(|f| f.as_ref())).flat_map(|a| expr_lineage(input, a)).collect();
        if IDENTIFYING.contains(&name.as_str()) {
            self.check_extreme(&name, &args, &sources, project)?;
        }
        let kind = match name.as_str() {
            "count" | "approx_distinct" => Kind::Count,
            "sum" => Kind::Sum,
            "avg" | "mean" => Kind::Mean,
            "var" | "var_samp" | "var_sample" => Kind::Spread { population: false, root: false },
            "var_pop" | "var_population" => Kind::Spread { population: true, root: false },
            "stddev" | "stddev_samp" => Kind::Spread { population: false, root: true },
            "stddev_pop" => Kind::Spread { population: true, root: true },
            "median" | "approx_median" => Kind::Quantile { p: 0.5 },
            "percentile_cont" | "approx_percentile_cont" => {
                let p = args.iter().find(|a| a.column_refs().is_empty()).and_then(literal_f64);
                let Some(p) = p else {
                    return Err(Rule::UnknownAggregate.refuse(format!(
                        "{name}() needs a constant fraction between {} and {}",
                        QUANTILE_RANGE.0, QUANTILE_RANGE.1
                    )));
                };
                Kind::Quantile { p }
            }
            "grouping" => Kind::Exact,
            _ if IDENTIFYING.contains(&name.as_str()) => Kind::Extreme,
            "corr" | "covar" | "covar_samp" | "covar_pop" | "regr_slope" | "regr_intercept" | "regr_count"
            | "regr_r2" | "regr_avgx" | "regr_avgy" | "regr_sxx" | "regr_syy" | "regr_sxy" => {
                return Err(Rule::UnknownAggregate.refuse(format!(
                    "{name}() is not yet decomposed into the sums disclosure control checks; compute it from released sums (count, sum(x), sum(y), sum(x*y), sum(x*x)) in one query"
                )));
            }
            _ => {
                return Err(Rule::UnknownAggregate.refuse(format!(
                    "{name}() is not a statistic that disclosure control knows how to protect; use count, sum, avg, stddev, median or percentile_cont"
                )));
            }
        };
        // A distinct count of a characteristic (hospitals, diagnoses) counts
        // values, not persons or rows: released exactly (its cell still needs k persons).
        let counts_values = (distinct || name == "approx_distinct") && !sources.iter().any(|s| self.is_person(s));
        let kind = if kind == Kind::Count && counts_values { Kind::Exact } else { kind };
        if let Kind::Quantile { p } = kind
            && !(QUANTILE_RANGE.0..=QUANTILE_RANGE.1).contains(&p)
        {
            return Err(Rule::ExtremeQuantile.refuse(format!(
                "the {p} quantile is too close to a minimum or maximum: quantiles are released between {} and {}",
                QUANTILE_RANGE.0, QUANTILE_RANGE.1
            )));
        }
        let x = data_args.first().cloned();
        if matches!(kind, Kind::Sum | Kind::Mean | Kind::Spread { .. } | Kind::Quantile { .. })
            && let Some(x) = &x
            && !x.get_type(input.schema()).is_ok_and(|t| t.is_numeric())
        {
            return Err(Rule::UnknownAggregate.refuse(format!(
                "{name}() of a value that is not a number cannot be protected; compute it over a number (e.g. days between two dates: date_part('day', d2 - d1))"
            )));
        }
        let filter = filter.map(|f| *f);
        let mut present: Vec<Expr> = filter.iter().cloned().collect();
        present.extend(data_args.iter().map(|a| a.clone().is_not_null()));
        let present = present.into_iter().reduce(Expr::and);
        let nonzero = matches!(kind, Kind::Sum).then(|| x.clone().map(|x| x.not_eq(lit(0i64)))).flatten();
        let condition = match (present.clone(), nonzero) {
            (Some(p), Some(z)) => Some(p.and(z)),
            (p, z) => p.or(z),
        };
        let indicator = x.as_ref().is_some_and(|x| is_indicator(x, input));
        let conditional = match kind {
            Kind::Count => filter.is_some() || !data_args.is_empty(),
            Kind::Sum | Kind::Mean => filter.is_some() || indicator,
            _ => false,
        };
        let complement = match (kind, &x) {
            // The persons whose indicator is 0: with those whose indicator is
            // 1, the two counts a share or mean of an indicator gives.
            (Kind::Mean | Kind::Spread { .. }, Some(x)) if indicator => {
                let zero = x.clone().eq(lit(0i64));
                Some(present.clone().map_or(zero.clone(), |p| p.and(zero)))
            }
            _ if conditional => condition.clone().map(|c| c.is_not_true()),
            _ => None,
        };
        let magnitude = matches!(kind, Kind::Sum | Kind::Mean | Kind::Spread { .. })
            && !indicator
            && sources.iter().any(|(t, c)| self.facts(t, c).magnitude);
        let additive = match kind {
            Kind::Count if !distinct => Some(Additive::Count),
            Kind::Sum if !distinct => Some(Additive::Sum),
            _ => None,
        };
        let stream = stream_of(&sources);
        let tables = sources.into_iter().map(|(t, _)| t).collect();
        Ok(Stat {
            kind,
            distinct,
            x,
            filter,
            condition,
            present,
            complement,
            indicator,
            magnitude,
            tables,
            additive,
            stream,
        })
    }

    /// min/max (and the boolean extremes) only where the approval allows them
    /// for the column; min/max of values no register column stands behind
    /// (counts of inner groups, which carry their own persons) reveal no one's value.
    fn check_extreme(&self, name: &str, args: &[Expr], sources: &BTreeSet<Source>, project: &str) -> Result<()> {
        let extreme = matches!(name, "min" | "max" | "bool_and" | "bool_or");
        let plain_column = matches!(args, [Expr::Column(_)]);
        let approved = extreme
            && (sources.is_empty()
                || (plain_column && sources.iter().all(|(t, c)| self.cx.approval.disclosure.allows_min_max(t, c))));
        if approved {
            return Ok(());
        }
        let hint = if extreme {
            " (the approval may allow min/max on named columns: disclosure.allow_min_max; bool_and and bool_or are the minimum and maximum of a boolean)"
        } else {
            ""
        };
        Err(Rule::IdentifyingAggregate.refuse(format!(
            "{name}() returns one person's value and is not released for project {project}{hint}; use counts, means, medians or percentiles"
        )))
    }
}
