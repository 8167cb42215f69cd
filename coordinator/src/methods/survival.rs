//! `kaplan_meier(query, band_days)`: survival by time band, per stratum,
//! with Greenwood standard errors and log(−log) intervals (as lifelines).
//!
//! ```text
//!  internal: exact rows per (stratum, band, event/censored)
//!     ─▶ merge each band whose events or censorings are 1..k−1 into the
//!        next (a step shows k events or none; the merge reveals what a
//!        withheld cell would); what is left after the last band that
//!        closes (fewer than k) is the tail, never shown
//!  released: persons per (stratum, merged band or tail, event/censored)
//!     with each stratum's total as margin ─▶ a step is shown while its
//!     counts are released and its risk set (the released total minus the
//!     released exits before it) is at least k; the first that is not, and
//!     the tail, are one row without a time (`survival.risk_set`)
//! ```
//!
//! No time is shown that only a few persons determine: a band's end is shown
//! only with its released step (k events or k censorings in it), so the last
//! exit of a small group, or of one person, does not come back as a time.
//!
//! Time is whole days from `start_date` to the event or the censoring,
//! whichever is first; a band `[i·w, (i+1)·w)` ends at `(i+1)·w`; events and
//! censorings in a band are at risk at its start (ties as Kaplan–Meier).

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Result;

use super::output::{self, Value};
use super::rules::MethodRule;
use super::steps::Steps;
use super::{Call, derived, quote};

const LEVEL: f64 = 0.95;
/// The band of the tail (exits after the last band that closes).
const TAIL: i64 = -1;
/// Narrower bands would show single persons' days.
pub(super) const MIN_BAND_DAYS: f64 = 7.0;

pub(super) fn schema() -> SchemaRef {
    output::schema(&[
        ("stratum", DataType::Utf8),
        ("time", DataType::Int64),
        ("at_risk", DataType::Float64),
        ("events", DataType::Float64),
        ("censored", DataType::Float64),
        ("survival", DataType::Float64),
        ("std_error", DataType::Float64),
        ("ci_lower", DataType::Float64),
        ("ci_upper", DataType::Float64),
    ])
}

pub(super) fn check(call: &Call) -> Result<()> {
    let (Some(_), Some(w)) = (call.text(0), call.number(1)) else {
        return call.error("two arguments: the query and the band width in days");
    };
    if call.args.len() != 2 || w.fract() != 0.0 {
        return call.error("the band width is a whole number of days");
    }
    if w < MIN_BAND_DAYS {
        return Err(MethodRule::BandWidth.refuse(format!(
            "kaplan_meier bands must be at least {MIN_BAND_DAYS} days wide: narrower steps show a few persons' days of death"
        )));
    }
    Ok(())
}

/// Exact rows of one stratum's fine band: (events, censored).
type Fine = BTreeMap<i64, (f64, f64)>;

/// A merged band: its end (days) and the exact rows that fall in it.
#[derive(Debug, Clone, Copy)]
struct Merged {
    end: i64,
    events: f64,
    censored: f64,
}

pub(super) async fn run(call: &Call, env: &dyn Steps) -> Result<RecordBatch> {
    let query = call.text(0).expect("checked");
    let width = call.number(1).expect("checked") as i64;
    let schema = super::input_schema(call, env, query, &["start_date", "event_date", "censor_date"]).await?;
    let stratum =
        if schema.field_with_name("stratum").is_ok() { "CAST(stratum AS VARCHAR)".to_owned() } else { quote("all") };
    let inner = format!(
        "(SELECT {stratum} AS stratum, \
         days_between(start_date, least(coalesce(event_date, censor_date), censor_date)) AS t, \
         CASE WHEN event_date IS NOT NULL AND event_date <= censor_date THEN 1 ELSE 0 END AS died \
         FROM {} WHERE start_date IS NOT NULL AND censor_date IS NOT NULL) AS km_input",
        derived(call, query)?
    );
    let exact = env
        .internal(&format!(
            "SELECT stratum, t / {width} AS band, died, count(*) AS n FROM {inner} WHERE t >= 0 AND stratum IS NOT NULL GROUP BY 1, 2, 3"
        ))
        .await?;
    let mut fine: BTreeMap<String, Fine> = BTreeMap::new();
    for r in &exact.rows {
        let (Some(s), Some(band), Some(died), Some(n)) =
            (r.key("stratum"), r.number("band"), r.number("died"), r.number("n"))
        else {
            continue;
        };
        let cell = fine.entry(s.to_owned()).or_default().entry(band as i64).or_default();
        if died > 0.0 { cell.0 += n } else { cell.1 += n }
    }
    let merged: BTreeMap<String, (Vec<Merged>, bool)> =
        fine.iter().map(|(s, bands)| (s.clone(), merge(bands, width, env.k()))).collect();
    // The tail after the last closed band is band -1: counted in the total, never shown.
    let mut case = String::from("CASE");
    for (s, (bands, _)) in &merged {
        for b in bands {
            case.push_str(&format!(" WHEN stratum = {} AND t < {} THEN {}", quote(s), b.end, b.end));
        }
    }
    let case = if case == "CASE" { TAIL.to_string() } else { format!("{case} ELSE {TAIL} END") };
    let released = env
        .released(&format!(
            "SELECT stratum, band_end, died, count(*) AS n FROM \
             (SELECT stratum, {case} AS band_end, died FROM {inner} WHERE t >= 0 AND stratum IS NOT NULL) AS km_bands \
             GROUP BY GROUPING SETS ((stratum, band_end, died), (stratum))"
        ))
        .await?;
    let mut rows = Vec::new();
    for (s, (bands, tail)) in &merged {
        let cells: Vec<&super::steps::Row> =
            released.rows.iter().filter(|r| !r.is_merged() && r.key("stratum") == Some(s.as_str())).collect();
        rows.extend(stratum_rows(s, bands, *tail, &cells, env.k()));
    }
    output::batch(&schema_ref(), rows)
}

fn schema_ref() -> SchemaRef {
    schema()
}

/// Merges fine bands so that each merged band has no events or at least
/// `k`, and no censorings or at least `k`. Returns the closed bands and
/// whether a tail of fewer is left after them.
fn merge(bands: &Fine, width: i64, k: f64) -> (Vec<Merged>, bool) {
    let ok = |x: f64| x == 0.0 || x >= k;
    let mut out: Vec<Merged> = Vec::new();
    let mut open: Option<Merged> = None;
    for (&band, &(events, censored)) in bands {
        let m = open.get_or_insert(Merged { end: 0, events: 0.0, censored: 0.0 });
        m.end = (band + 1) * width;
        m.events += events;
        m.censored += censored;
        if ok(m.events) && ok(m.censored) {
            out.push(*m);
            open = None;
        }
    }
    (out, open.is_some())
}

/// The steps of one stratum from its released cells.
fn stratum_rows(
    stratum: &str,
    bands: &[Merged],
    tail: bool,
    cells: &[&super::steps::Row],
    k: f64,
) -> Vec<(Vec<Value>, Option<String>)> {
    let cell = |end: Option<i64>, died: Option<i64>| {
        cells
            .iter()
            .find(|r| r.number("band_end").map(|b| b as i64) == end && r.number("died").map(|d| d as i64) == died)
    };
    // A released count, or None where one was expected but is withheld or merged away.
    let count = |end: i64, died: i64, exact: f64| -> Option<f64> {
        if exact == 0.0 {
            return Some(0.0);
        }
        cell(Some(end), Some(died)).and_then(|r| r.number("n"))
    };
    let total = cell(None, None).filter(|r| r.withheld.is_none()).and_then(|r| r.number("n"));
    let mut shown: Vec<samkor_stats::Band> = Vec::new();
    let mut at_risk = total.unwrap_or(0.0);
    for b in bands {
        let (Some(events), Some(censored)) = (count(b.end, 1, b.events), count(b.end, 0, b.censored)) else { break };
        if at_risk < k || events + censored > at_risk {
            break;
        }
        at_risk -= events + censored;
        shown.push(samkor_stats::Band { end: b.end as f64, events, censored });
    }
    let steps = total
        .and_then(|n| samkor_stats::kaplan_meier(n, &shown, LEVEL, samkor_stats::KmInterval::LogLog).ok())
        .unwrap_or_default();
    let mut rows: Vec<(Vec<Value>, Option<String>)> = steps
        .iter()
        .map(|s| {
            let values = vec![
                Value::text(stratum),
                Value::Int(Some(s.time as i64)),
                Value::num(Some(s.at_risk)),
                Value::num(Some(s.events)),
                Value::num(Some(s.censored)),
                Value::num(Some(s.survival)),
                Value::num(Some(s.se)),
                Value::num(Some(s.lower)),
                Value::num(Some(s.upper)),
            ];
            (values, None)
        })
        .collect();
    if steps.len() < bands.len() || tail {
        // Where the curve stops: no time, no counts.
        let mut v = vec![Value::text(stratum), Value::Int(None)];
        v.extend(std::iter::repeat_n(Value::Num(None), 7));
        rows.push((v, Some(MethodRule::RiskSet.name().to_owned())));
    }
    rows
}
