//! Standardisation for age, sex or any strata.
//!
//! `smr(query)` (indirect): the national rate of every stratum (released
//! step 1, `GROUPING SETS ((strata), ())`), then per unit the observed
//! events and the expected ones, Σ over its persons of their stratum's
//! released national rate (released step 2, `ROLLUP(unit)`); SMR = O/E
//! with the exact Poisson interval (R's `poisson.test(O, E)`) and the
//! funnel limits around 1. A stratum whose national rate is withheld
//! contributes the crude national rate (documented).
//!
//! `dsr(query [, standard])` (direct): per unit and stratum the events and
//! persons (one released step with the national strata as the margin);
//! the rate weighted by the standard population (given as constants, or
//! the national persons per stratum), Fay–Feuer gamma interval. A unit
//! without a released cell in a stratum of positive weight is withheld
//! (`standardisation.stratum`).

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Result;

use super::output::{self, Value};
use super::rules::MethodRule;
use super::steps::{Steps, Table};
use super::{Call, derived, float, quote};

const LEVEL: f64 = 0.95;

pub(super) fn smr_schema() -> SchemaRef {
    output::schema(&[
        ("unit", DataType::Utf8),
        ("n", DataType::Float64),
        ("observed", DataType::Float64),
        ("expected", DataType::Float64),
        ("smr", DataType::Float64),
        ("ci_lower", DataType::Float64),
        ("ci_upper", DataType::Float64),
        ("limit95_lower", DataType::Float64),
        ("limit95_upper", DataType::Float64),
        ("limit998_lower", DataType::Float64),
        ("limit998_upper", DataType::Float64),
        ("signal", DataType::Utf8),
    ])
}

pub(super) fn dsr_schema() -> SchemaRef {
    output::schema(&[
        ("unit", DataType::Utf8),
        ("n", DataType::Float64),
        ("events", DataType::Float64),
        ("crude_rate", DataType::Float64),
        ("rate", DataType::Float64),
        ("std_error", DataType::Float64),
        ("ci_lower", DataType::Float64),
        ("ci_upper", DataType::Float64),
    ])
}

pub(super) fn check(call: &Call) -> Result<()> {
    let max = if call.method == super::Method::Dsr { 2 } else { 1 };
    if call.args.is_empty() || call.args.len() > max || (0..call.args.len()).any(|i| call.text(i).is_none()) {
        return call.error("the query (and for dsr optionally the standard population) as text");
    }
    Ok(())
}

/// The user's query with its strata named `s0, s1, …` as text, the unit as
/// text and the outcome as a number `y`; rows missing any of them left out.
struct Input {
    strata: Vec<String>,
    inner: String,
    /// The events of a group of rows: a count for a boolean outcome, else a sum.
    events: String,
}

impl Input {
    async fn read(call: &Call, env: &dyn Steps) -> Result<Input> {
        let query = call.text(0).expect("checked");
        let schema = super::input_schema(call, env, query, &["unit", "outcome"]).await?;
        let events = super::events_of(call, &schema, false)?;
        let strata: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != "unit" && n != "outcome" && n != crate::disclosure::WITHHELD_COLUMN)
            .collect();
        if strata.is_empty() {
            return call
                .error("the query has no strata: add the columns to standardise for (e.g. age_band(…) AS age, sex)");
        }
        let cast: Vec<String> =
            strata.iter().enumerate().map(|(i, s)| format!("CAST({} AS VARCHAR) AS s{i}", ident(s))).collect();
        let present: Vec<String> = strata.iter().map(|s| format!("{} IS NOT NULL", ident(s))).collect();
        let inner = format!(
            "(SELECT CAST(unit AS VARCHAR) AS unit, outcome, {} FROM {} WHERE unit IS NOT NULL AND outcome IS NOT NULL AND {}) AS strata_input",
            cast.join(", "),
            derived(call, query)?,
            present.join(" AND ")
        );
        Ok(Input { strata, inner, events })
    }

    fn keys(&self) -> String {
        (0..self.strata.len()).map(|i| format!("s{i}")).collect::<Vec<_>>().join(", ")
    }

    fn stratum_of(&self, row: &super::steps::Row) -> Option<Vec<String>> {
        (0..self.strata.len()).map(|i| row.key(&format!("s{i}")).map(str::to_owned)).collect()
    }

    /// Released national events and persons per stratum, and the crude rate.
    async fn national(&self, env: &dyn Steps) -> Result<(BTreeMap<Vec<String>, (f64, f64)>, Option<f64>)> {
        let keys = self.keys();
        let sql = format!(
            "SELECT {keys}, count(*) AS n, {} AS d FROM {} GROUP BY GROUPING SETS (({keys}), ())",
            self.events, self.inner
        );
        let table = env.released(&sql).await?;
        let mut strata = BTreeMap::new();
        let mut crude = None;
        for row in table.rows.iter().filter(|r| !r.is_merged()) {
            let (Some(n), Some(d)) = (row.number("n"), row.number("d")) else { continue };
            match self.stratum_of(row) {
                Some(s) => {
                    strata.insert(s, (d, n));
                }
                None => crude = Some(d / n),
            }
        }
        Ok((strata, crude))
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) async fn run_smr(call: &Call, env: &dyn Steps) -> Result<RecordBatch> {
    let input = Input::read(call, env).await?;
    let (strata, crude) = input.national(env).await?;
    let Some(crude) = crude else {
        // The national total itself is withheld: nothing can be expected.
        return output::batch(&smr_schema(), vec![]);
    };
    let mut case = String::from("CASE");
    for (key, (d, n)) in &strata {
        let cond: Vec<String> = key.iter().enumerate().map(|(i, v)| format!("s{i} = {}", quote(v))).collect();
        case.push_str(&format!(" WHEN {} THEN {}", cond.join(" AND "), float(d / n)));
    }
    case.push_str(&format!(" ELSE {} END", float(crude)));
    let sql = format!(
        "SELECT unit, count(*) AS n, {} AS observed, sum(r) AS expected FROM \
         (SELECT unit, outcome, {case} AS r FROM {}) AS expected_input GROUP BY ROLLUP(unit)",
        input.events, input.inner
    );
    let table = env.released(&sql).await?;
    let mut rows = Vec::new();
    for r in table.rows.iter().filter(|r| r.key("unit").is_some() || r.is_merged()) {
        if r.is_merged() {
            rows.push(merged_row(12));
            continue;
        }
        let (o, e) = (r.number("observed"), r.number("expected"));
        let est = o.zip(e).and_then(|(o, e)| samkor_stats::smr(o, e, LEVEL));
        let limits = |c| e.and_then(|e| samkor_stats::smr_limits(e, c));
        let (l95, l998) = (limits(0.95), limits(0.998));
        let signal = est.zip(l95).zip(l998).map(|((s, a), b)| super::funnel::signal(s.value, a, b));
        let values = vec![
            Value::Text(r.key("unit").map(str::to_owned)),
            Value::num(r.number("n")),
            Value::num(o),
            Value::num(e),
            Value::num(est.map(|s| s.value)),
            Value::num(est.map(|s| s.lower)),
            Value::num(est.map(|s| s.upper)),
            Value::num(l95.map(|l| l.lower)),
            Value::num(l95.map(|l| l.upper)),
            Value::num(l998.map(|l| l.lower)),
            Value::num(l998.map(|l| l.upper)),
            Value::Text(signal.map(str::to_owned)),
        ];
        rows.push((values, r.withheld.clone()));
    }
    output::sort_by_first(&mut rows);
    output::batch(&smr_schema(), rows)
}

fn merged_row(columns: usize) -> (Vec<Value>, Option<String>) {
    let mut values = vec![Value::Text(None)];
    values.extend(std::iter::repeat_n(Value::Num(None), columns - 2));
    values.push(Value::Text(None));
    (values, Some("* (units below the threshold)".to_owned()))
}

pub(super) async fn run_dsr(call: &Call, env: &dyn Steps) -> Result<RecordBatch> {
    let input = Input::read(call, env).await?;
    let keys = input.keys();
    let sql = format!(
        "SELECT unit, {keys}, count(*) AS n, {} AS d FROM {} GROUP BY GROUPING SETS ((unit, {keys}), ({keys}))",
        input.events, input.inner
    );
    let table = env.released(&sql).await?;
    let weights = match call.text(1) {
        Some(standard) => standard_weights(call, env, standard, &input.strata).await?,
        None => national_persons(&input, &table),
    };
    let mut units: BTreeMap<String, Cells> = BTreeMap::new();
    let mut merged = false;
    for row in &table.rows {
        if row.is_merged() {
            merged = true;
            continue;
        }
        let (Some(unit), Some(stratum)) = (row.key("unit"), input.stratum_of(row)) else { continue };
        let cell = row.number("n").zip(row.number("d")).map(|(n, d)| (d, n));
        units.entry(unit.to_owned()).or_default().insert(stratum, cell);
    }
    let mut rows: Vec<(Vec<Value>, Option<String>)> =
        units.iter().map(|(u, cells)| dsr_row(u, cells, &weights)).collect();
    if merged {
        rows.push(merged_row(9));
    }
    output::batch(&dsr_schema(), rows)
}

/// One unit's released (events, persons) per stratum; None where withheld.
type Cells = BTreeMap<Vec<String>, Option<(f64, f64)>>;

fn dsr_row(unit: &str, cells: &Cells, weights: &BTreeMap<Vec<String>, f64>) -> (Vec<Value>, Option<String>) {
    let mut strata = Vec::new();
    let mut complete = true;
    for (stratum, w) in weights.iter().filter(|(_, w)| **w > 0.0) {
        match cells.get(stratum).copied().flatten() {
            Some((d, n)) => strata.push(samkor_stats::Stratum { events: d, persons: n, weight: *w }),
            None => complete = false,
        }
    }
    let released: Vec<(f64, f64)> = cells.values().map(|c| c.unwrap_or((f64::NAN, f64::NAN))).collect();
    let (events, n): (f64, f64) = released.iter().fold((0.0, 0.0), |(e, n), (d, m)| (e + d, n + m));
    let totals = released.iter().all(|(d, n)| d.is_finite() && n.is_finite());
    let dsr = if complete { samkor_stats::direct(&strata, LEVEL) } else { None };
    let mut withheld: Vec<&str> = Vec::new();
    if !totals {
        withheld.extend(["n", "events", "crude_rate"]);
    }
    if dsr.is_none() {
        withheld.push(MethodRule::Stratum.name());
    }
    let values = vec![
        Value::text(unit),
        Value::num(totals.then_some(n)),
        Value::num(totals.then_some(events)),
        Value::num(totals.then(|| events / n)),
        Value::num(dsr.map(|d| d.rate)),
        Value::num(dsr.map(|d| d.se)),
        Value::num(dsr.map(|d| d.lower)),
        Value::num(dsr.map(|d| d.upper)),
    ];
    (values, (!withheld.is_empty()).then(|| withheld.join(",")))
}

/// The national persons per stratum (the margin rows of the released step).
fn national_persons(input: &Input, table: &Table) -> BTreeMap<Vec<String>, f64> {
    table
        .rows
        .iter()
        .filter(|r| !r.is_merged() && r.key("unit").is_none())
        .filter_map(|r| Some((input.stratum_of(r)?, r.number("n")?)))
        .collect()
}

/// A standard population given as constants: its strata columns (named as
/// the query's) and `weight`.
async fn standard_weights(
    call: &Call,
    env: &dyn Steps,
    standard: &str,
    strata: &[String],
) -> Result<BTreeMap<Vec<String>, f64>> {
    let cast: Vec<String> =
        strata.iter().enumerate().map(|(i, s)| format!("CAST({} AS VARCHAR) AS s{i}", ident(s))).collect();
    let sql = format!("SELECT {}, CAST(weight AS DOUBLE) AS weight FROM {}", cast.join(", "), derived(call, standard)?);
    let table = env.constant(&sql).await.map_err(|e| {
        datafusion::common::DataFusionError::Plan(format!(
            "dsr: the standard population must be constants with the strata columns ({}) and weight, e.g. SELECT * FROM (VALUES …) AS s({}, weight): {e}",
            strata.join(", "),
            strata.join(", ")
        ))
    })?;
    Ok(table
        .rows
        .iter()
        .filter_map(|r| {
            let key: Option<Vec<String>> =
                (0..strata.len()).map(|i| r.key(&format!("s{i}")).map(str::to_owned)).collect();
            Some((key?, r.number("weight")?))
        })
        .collect())
}
