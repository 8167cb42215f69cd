//! `funnel(query)`: per unit the proportion with the outcome, its Wilson
//! interval and the funnel plot's control limits (95 % and 99.8 %) around
//! the national proportion, for open comparisons.
//!
//! One released step: `count(*)` and the outcome's sum per unit with the
//! national total (`GROUP BY ROLLUP(unit)`, so secondary suppression
//! protects a withheld unit from the total); every number in the answer is
//! computed from those released numbers.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Result;

use super::output::{self, Value};
use super::steps::{Row, Steps};
use super::{Call, derived, events_of, input_schema};

const LEVEL: f64 = 0.95;

pub(super) fn schema() -> SchemaRef {
    output::schema(&[
        ("unit", DataType::Utf8),
        ("n", DataType::Float64),
        ("events", DataType::Float64),
        ("proportion", DataType::Float64),
        ("ci_lower", DataType::Float64),
        ("ci_upper", DataType::Float64),
        ("national", DataType::Float64),
        ("limit95_lower", DataType::Float64),
        ("limit95_upper", DataType::Float64),
        ("limit998_lower", DataType::Float64),
        ("limit998_upper", DataType::Float64),
        ("signal", DataType::Utf8),
    ])
}

pub(super) fn check(call: &Call) -> Result<()> {
    if call.args.len() != 1 || call.text(0).is_none() {
        return call.error("one argument, the query");
    }
    Ok(())
}

pub(super) async fn run(call: &Call, env: &dyn Steps) -> Result<RecordBatch> {
    let query = call.text(0).expect("checked");
    let input = input_schema(call, env, query, &["unit", "outcome"]).await?;
    let events = events_of(call, &input, true)?;
    let sql = format!(
        "SELECT unit, count(*) AS n, {events} AS events FROM \
         (SELECT CAST(unit AS VARCHAR) AS unit, outcome FROM {} WHERE unit IS NOT NULL AND outcome IS NOT NULL) AS f \
         GROUP BY ROLLUP(unit)",
        derived(call, query)?
    );
    let table = env.released(&sql).await?;
    let national = table.rows.iter().find(|r| r.key("unit").is_none() && !r.is_merged());
    let p0 = national.and_then(|r| Some(r.number("events")? / r.number("n")?));
    let mut rows = Vec::new();
    for r in table.rows.iter().filter(|r| r.key("unit").is_some() || r.is_merged()) {
        rows.push(unit_row(r, p0));
    }
    output::sort_by_first(&mut rows);
    output::batch(&schema(), rows)
}

fn unit_row(r: &Row, p0: Option<f64>) -> (Vec<Value>, Option<String>) {
    if r.is_merged() {
        let mut values = vec![Value::Text(None)];
        values.extend(std::iter::repeat_n(Value::Num(None), 10));
        values.push(Value::Text(None));
        return (values, Some("* (units below the threshold)".to_owned()));
    }
    let (n, events) = (r.number("n"), r.number("events"));
    let proportion = n.zip(events).map(|(n, e)| e / n);
    let ci = n.zip(events).and_then(|(n, e)| samkor_stats::wilson(e, n, LEVEL));
    let limits = |coverage| p0.zip(n).and_then(|(p0, n)| samkor_stats::proportion_limits(p0, n, coverage));
    let (l95, l998) = (limits(0.95), limits(0.998));
    let signal = proportion.zip(l95).zip(l998).map(|((p, l95), l998)| signal(p, l95, l998));
    let values = vec![
        Value::Text(r.key("unit").map(str::to_owned)),
        Value::num(n),
        Value::num(events),
        Value::num(proportion),
        Value::num(ci.map(|c| c.lower)),
        Value::num(ci.map(|c| c.upper)),
        Value::num(p0),
        Value::num(l95.map(|l| l.lower)),
        Value::num(l95.map(|l| l.upper)),
        Value::num(l998.map(|l| l.lower)),
        Value::num(l998.map(|l| l.upper)),
        Value::Text(signal.map(str::to_owned)),
    ];
    (values, r.withheld.clone())
}

/// Where a unit's value lies relative to the control limits.
pub(super) fn signal(value: f64, l95: samkor_stats::Interval, l998: samkor_stats::Interval) -> &'static str {
    if value > l998.upper {
        "above 99.8 %"
    } else if value > l95.upper {
        "above 95 %"
    } else if value < l998.lower {
        "below 99.8 %"
    } else if value < l95.lower {
        "below 95 %"
    } else {
        "within"
    }
}
