//! The statistical methods (docs/statistics.md) through a real federation,
//! checked against reference implementations on the same data pooled:
//! statsmodels' GLM and lifelines' Kaplan–Meier (run here, `.ci/run`
//! installs them), and the funnel, SMR and direct standardisation computed
//! from the pooled cells with samkor-stats (itself checked against scipy and R).

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::common;

const PROJECT: &str = "D-agg";

/// Rows as column name → rendered value (None for null).
fn named(batches: &[RecordBatch]) -> Vec<BTreeMap<String, Option<String>>> {
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<ArrayFormatter<'_>> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).expect("formatter"))
            .collect();
        for r in 0..b.num_rows() {
            let mut row = BTreeMap::new();
            for (i, f) in b.schema().fields().iter().enumerate() {
                let v = (!b.column(i).is_null(r)).then(|| formatters[i].value(r).to_string());
                row.insert(f.name().clone(), v);
            }
            out.push(row);
        }
    }
    out
}

fn num(row: &BTreeMap<String, Option<String>>, column: &str) -> Option<f64> {
    row.get(column).cloned().flatten().map(|v| v.parse().unwrap_or_else(|_| panic!("{column} = {v} is a number")))
}

fn close(got: f64, want: f64, what: &str) {
    let tolerance = 1e-6 * want.abs().max(1e-3);
    assert!((got - want).abs() <= tolerance, "{what}: {got} vs reference {want}");
}

async fn federated(sql: &str) -> Vec<BTreeMap<String, Option<String>>> {
    let fed = common::exact_federation().await;
    let mut c = fed.client("alice", PROJECT).await.expect("connect");
    let (_, batches) = c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    fed.shutdown().await;
    named(&batches)
}

async fn pooled(sql: &str) -> Vec<RecordBatch> {
    let ctx = samkor::federation::pooled_session(common::synth_dir(), PROJECT).await.expect("pooled session");
    ctx.sql(sql).await.expect("pooled plan").collect().await.expect("pooled answer")
}

fn write_csv(batches: &[RecordBatch], path: &Path) {
    let file = std::fs::File::create(path).expect("csv file");
    let mut writer = arrow::csv::Writer::new(file);
    for b in batches {
        writer.write(b).expect("csv");
    }
}

/// Runs tests/reference/fit.py on a spec; statsmodels and lifelines must be installed.
fn reference(spec: serde_json::Value) -> serde_json::Value {
    let python = std::env::var("SAMKOR_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("spec");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/fit.py");
    let out = std::process::Command::new(&python).arg(&script).arg(&spec_path).output().expect("run python");
    assert!(
        out.status.success(),
        "the reference fit failed (pip install statsmodels lifelines pandas; .ci/run does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference JSON")
}

/// One-year mortality after discharge per inpatient episode, with the patient's sex, age and education.
const EPISODES: &str = "SELECT CASE WHEN d.death_date IS NOT NULL AND d.death_date <= i.discharge_date + INTERVAL '365 days' THEN 1 ELSE 0 END AS died, \
    p.sex AS sex, age_years(p.birth_date, i.admit_date) AS age, i.length_of_stay AS los, p.education AS education, \
    ln(CAST(age_years(p.birth_date, i.admit_date) + 1 AS DOUBLE)) AS log_age, \
    i.hospital AS unit, age_band(p.birth_date, i.admit_date, 20) AS ageband \
    FROM npr.inpatient i JOIN pop.persons p ON p.person = i.person LEFT JOIN dors.deaths d ON d.person = i.person";

/// Fits `formula` federated and with statsmodels on the same rows pooled; every number within 1e-6.
async fn glm_matches_statsmodels(formula: &str, family: &str, offset: Option<&str>) {
    let sql = format!("SELECT * FROM glm('{}', '{formula}', '{family}')", EPISODES.replace('\'', "''"));
    let got = federated(&sql).await;
    assert!(got.iter().all(|r| r["withheld"].is_none()), "the model is released: {got:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("rows.csv");
    write_csv(&pooled(EPISODES).await, &csv);
    let want = reference(serde_json::json!({
        "kind": "glm", "csv": csv, "formula": formula, "family": family, "offset": offset, "text": ["sex", "education"],
    }));
    let terms: Vec<&str> = want["terms"].as_array().expect("terms").iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(got.len(), terms.len(), "{got:?}\n{want}");
    for row in &got {
        let term = row["term"].clone().unwrap_or_default();
        // statsmodels orders categorical terms first; match by name.
        let i = terms.iter().position(|t| *t == term).unwrap_or_else(|| panic!("term {term} not in {terms:?}"));
        for column in ["estimate", "std_error", "z", "p_value", "ci_lower", "ci_upper"] {
            let reference = want[column][i].as_f64().expect("reference number");
            close(num(row, column).expect("released"), reference, &format!("{formula}: {column} of {term}"));
        }
        for column in ["deviance", "aic", "n"] {
            close(num(row, column).expect("released"), want[column].as_f64().expect("number"), column);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logistic_model_matches_statsmodels() {
    glm_matches_statsmodels("died ~ sex + age + los + education", "binomial", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_model_with_offset_matches_statsmodels() {
    glm_matches_statsmodels("los ~ sex + education + C(ageband) + offset(log_age)", "poisson", Some("log_age")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_model_matches_statsmodels() {
    glm_matches_statsmodels("los ~ sex + age + education", "gaussian", None).await;
}

/// Models that would disclose are withheld with the rule named; mistakes
/// and plan-level refusals fail the query and say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_that_would_disclose_are_withheld() {
    let fed = common::federation().await;
    let mut c = fed.client("alice", PROJECT).await.expect("connect");
    // A logistic model per hospital: hospitals with fewer than k reoperations (or without).
    let (_, b) = c
        .query("SELECT * FROM glm('SELECT reoperation, hospital FROM hip.operations', 'reoperation ~ hospital', 'binomial')")
        .await
        .expect("answered");
    let rows = named(&b);
    assert!(rows.len() > 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r["withheld"].as_deref(), Some("model.small_category (hospital)"), "{r:?}");
        assert!(r["estimate"].is_none() && r["std_error"].is_none() && r["n"].is_none(), "{r:?}");
    }
    // Nine parameters over the few operations of one small hospital.
    let small = "SELECT bmi, asa AS a1, asa * asa AS a2, asa * bmi AS a3, bmi * bmi AS a4, \
                 CAST(op_id AS DOUBLE) AS a5, op_id * asa AS a6, op_id * bmi AS a7, op_id * op_id AS a8 \
                 FROM hip.operations WHERE op_id <= 12";
    let (_, b) = c
        .query(&format!("SELECT * FROM glm('{small}', 'bmi ~ a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8', 'gaussian')"))
        .await
        .expect("answered");
    let rows = named(&b);
    assert_eq!(rows.len(), 9, "{rows:?}");
    assert!(rows.iter().all(|r| r["withheld"].as_deref() == Some("model.saturated") && r["estimate"].is_none()));
    // The mean BMI of four patients, as an intercept-only linear model.
    let (_, b) = c
        .query("SELECT * FROM glm('SELECT bmi FROM hip.operations WHERE op_id <= 4', 'bmi ~ 1', 'gaussian')")
        .await
        .expect("answered");
    let rows = named(&b);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["withheld"].as_deref(), Some("model.small_population"));
    assert!(rows[0]["estimate"].is_none() && rows[0]["n"].is_none());
    // A mistake in the formula.
    let e = c
        .query("SELECT * FROM glm('SELECT reoperation, bmi FROM hip.operations', 'reoperation ~ log(bmi)', 'binomial')")
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("compute expressions in the query"), "{e}");
    // The method's table may not be joined with register data.
    let e = c
        .query(
            "SELECT g.term, count(*) FROM glm('SELECT bmi, asa FROM hip.operations', 'bmi ~ asa', 'gaussian') g \
                JOIN hip.operations h ON h.asa = 1 GROUP BY g.term",
        )
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("method.mixed"), "{e}");
    // Bands of a day would show single persons' days of death.
    let e = c
        .query("SELECT * FROM kaplan_meier('SELECT op_date AS start_date, reop_date AS event_date, DATE ''2024-12-31'' AS censor_date FROM hip.operations', 1)")
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("method.band_width"), "{e}");
    // The approval still decides what the method may read.
    let e = c
        .query("SELECT * FROM funnel('SELECT hospital AS unit, reoperation AS outcome FROM hip.no_such_table')")
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("no_such_table"), "{e}");
    fed.shutdown().await;
}

/// Funnel per region: counts equal the pooled ones, the national value is
/// the pooled total, the limits and intervals are samkor-stats' on those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnel_per_region_from_released_counts() {
    let got = federated(
        "SELECT * FROM funnel('SELECT region AS unit, length_of_stay > 7 AS outcome FROM npr.inpatient') ORDER BY unit",
    )
    .await;
    let truth = pooled(
        "SELECT region, CAST(count(*) AS DOUBLE) AS n, CAST(sum(CASE WHEN length_of_stay > 7 THEN 1 ELSE 0 END) AS DOUBLE) AS e \
         FROM npr.inpatient GROUP BY region ORDER BY region",
    )
    .await;
    let truth = named(&truth);
    let (total_n, total_e) =
        truth.iter().fold((0.0, 0.0), |(n, e), r| (n + num(r, "n").unwrap(), e + num(r, "e").unwrap()));
    let p0 = total_e / total_n;
    assert_eq!(got.len(), truth.len(), "{got:?}");
    for (g, t) in got.iter().zip(&truth) {
        assert_eq!(g["unit"], t["region"]);
        assert!(g["withheld"].is_none(), "{g:?}");
        let (n, e) = (num(t, "n").unwrap(), num(t, "e").unwrap());
        close(num(g, "n").unwrap(), n, "n");
        close(num(g, "events").unwrap(), e, "events");
        close(num(g, "proportion").unwrap(), e / n, "proportion");
        close(num(g, "national").unwrap(), p0, "national");
        let ci = samkor_stats::wilson(e, n, 0.95).expect("interval");
        close(num(g, "ci_lower").unwrap(), ci.lower, "wilson lower");
        let l998 = samkor_stats::proportion_limits(p0, n, 0.998).expect("limits");
        close(num(g, "limit998_upper").unwrap(), l998.upper, "99.8 % upper limit");
        let l95 = samkor_stats::proportion_limits(p0, n, 0.95).expect("limits");
        let want = if e / n > l998.upper {
            "above 99.8 %"
        } else if e / n > l95.upper {
            "above 95 %"
        } else if e / n < l998.lower {
            "below 99.8 %"
        } else if e / n < l95.lower {
            "below 95 %"
        } else {
            "within"
        };
        assert_eq!(g["signal"].as_deref(), Some(want));
    }
}

/// SMR per hospital (indirect standardisation for sex and 20-year age
/// band): observed and expected equal the pooled computation with the
/// national stratum rates, the interval is poisson.test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smr_per_hospital_against_pooled_rates() {
    // Coarse strata (sex × 40-year band, patients from 40), each with at least k deaths and k survivors nationally.
    let input = "SELECT unit, died AS outcome, sex, age_band(birth_date, admit_date, 40) AS ageband FROM (EPISODES) AS e WHERE age >= 40"
        .replace("EPISODES", &EPISODES.replace("i.hospital AS unit,", "i.hospital AS unit, p.birth_date, i.admit_date,"));
    let got = federated(&format!("SELECT * FROM smr('{}') ORDER BY unit", input.replace('\'', "''"))).await;
    let cells = named(
        &pooled(&format!(
            "SELECT unit, sex, CAST(ageband AS VARCHAR) AS ageband, CAST(count(*) AS DOUBLE) AS n, CAST(sum(outcome) AS DOUBLE) AS d \
             FROM ({input}) AS x GROUP BY 1, 2, 3"
        ))
        .await,
    );
    let mut strata: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for c in &cells {
        let s = strata.entry((c["sex"].clone().unwrap(), c["ageband"].clone().unwrap())).or_default();
        s.0 += num(c, "d").unwrap();
        s.1 += num(c, "n").unwrap();
    }
    assert!(strata.values().all(|(d, n)| *d >= 5.0 && n - d >= 5.0), "every national stratum is released: {strata:?}");
    let mut per_unit: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for c in &cells {
        let (d, n) = strata[&(c["sex"].clone().unwrap(), c["ageband"].clone().unwrap())];
        let u = per_unit.entry(c["unit"].clone().unwrap()).or_default();
        u.0 += num(c, "d").unwrap();
        u.1 += num(c, "n").unwrap() * d / n;
    }
    let released: Vec<_> = got.iter().filter(|r| r["withheld"].is_none()).collect();
    assert!(released.len() >= 5, "hospitals are released: {got:?}");
    for r in released {
        let (o, e) = per_unit[r["unit"].as_deref().expect("unit")];
        close(num(r, "observed").unwrap(), o, "observed");
        close(num(r, "expected").unwrap(), e, "expected");
        let smr = samkor_stats::smr(o, e, 0.95).expect("smr");
        close(num(r, "smr").unwrap(), smr.value, "smr");
        close(num(r, "ci_upper").unwrap(), smr.upper, "smr upper");
        let limit = samkor_stats::smr_limits(e, 0.998).expect("limits");
        close(num(r, "limit998_lower").unwrap(), limit.lower, "99.8 % lower limit");
    }
}

/// Direct standardisation per region to a standard population given as
/// constants; a standard read from registers is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_standardisation_to_a_given_standard() {
    let input = "SELECT p.region AS unit, i.length_of_stay > 7 AS outcome, p.sex AS sex \
                 FROM npr.inpatient i JOIN pop.persons p ON p.person = i.person";
    let standard = "SELECT * FROM (VALUES (''F'', 60.0), (''M'', 40.0)) AS s(sex, weight)";
    let got =
        federated(&format!("SELECT * FROM dsr('{}', '{standard}') ORDER BY unit", input.replace('\'', "''"))).await;
    let cells = named(
        &pooled(&format!(
            "SELECT unit, sex, CAST(count(*) AS DOUBLE) AS n, CAST(sum(CASE WHEN outcome THEN 1 ELSE 0 END) AS DOUBLE) AS d \
             FROM ({input}) AS x GROUP BY 1, 2"
        ))
        .await,
    );
    assert!(got.len() >= 15, "{got:?}");
    for r in got.iter().filter(|r| r["withheld"].is_none()) {
        let strata: Vec<samkor_stats::Stratum> = cells
            .iter()
            .filter(|c| c["unit"] == r["unit"])
            .map(|c| samkor_stats::Stratum {
                events: num(c, "d").unwrap(),
                persons: num(c, "n").unwrap(),
                weight: if c["sex"].as_deref() == Some("F") { 60.0 } else { 40.0 },
            })
            .collect();
        let dsr = samkor_stats::direct(&strata, 0.95).expect("dsr");
        close(num(r, "rate").unwrap(), dsr.rate, "rate");
        close(num(r, "ci_lower").unwrap(), dsr.lower, "lower");
        close(num(r, "ci_upper").unwrap(), dsr.upper, "upper");
    }
    let fed = common::federation().await;
    let mut c = fed.client("alice", PROJECT).await.expect("connect");
    let e = c
        .query(&format!(
            "SELECT * FROM dsr('{}', 'SELECT sex, count(*) AS weight FROM pop.persons GROUP BY sex')",
            input.replace('\'', "''")
        ))
        .await
        .expect_err("a standard from register data is refused");
    assert!(e.to_string().contains("must be constants"), "{e}");
    fed.shutdown().await;
}

/// Kaplan–Meier after hip replacement by ASA group, in 180-day bands:
/// every released step equals lifelines on the same persons with their
/// times set to the ends of the released bands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaplan_meier_matches_lifelines() {
    let input = "SELECT o.op_date AS start_date, d.death_date AS event_date, DATE '2024-12-31' AS censor_date, \
                 CASE WHEN o.asa >= 3 THEN 'ASA 3-4' ELSE 'ASA 1-2' END AS stratum \
                 FROM hip.operations o LEFT JOIN dors.deaths d ON d.person = o.person";
    let got = federated(&format!("SELECT * FROM kaplan_meier('{}', 180)", input.replace('\'', "''"))).await;
    let rows = named(
        &pooled(&format!(
            "SELECT stratum, days_between(start_date, least(coalesce(event_date, censor_date), censor_date)) AS t, \
             CASE WHEN event_date IS NOT NULL AND event_date <= censor_date THEN 1 ELSE 0 END AS event FROM ({input}) AS x"
        ))
        .await,
    );
    // Each person's time: the end of the band it falls in (as the federation reports the bands).
    let mut ends: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in got.iter().filter(|r| r["withheld"].is_none()) {
        ends.entry(r["stratum"].clone().unwrap()).or_default().push(num(r, "time").unwrap());
    }
    // Where a curve stops, the row has no time (a time there would be a few persons' exits).
    assert!(got.iter().filter(|r| r["withheld"].is_some()).all(|r| r["time"].is_none() && r["survival"].is_none()));
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("km.csv");
    let mut text = String::from("stratum,duration,event\n");
    for r in &rows {
        let s = r["stratum"].clone().unwrap();
        let t = num(r, "t").unwrap();
        // Exits after the last shown band: any later time (they are at risk through every shown step).
        let end = ends[&s].iter().find(|e| t < **e).copied().unwrap_or_else(|| ends[&s].last().unwrap() + 1.0);
        text.push_str(&format!("{s},{end},{}\n", r["event"].clone().unwrap()));
    }
    std::fs::write(&csv, text).expect("csv");
    let want = reference(serde_json::json!({"kind": "km", "csv": csv}));
    let mut compared = 0;
    for r in got.iter().filter(|r| r["withheld"].is_none()) {
        let s = want[r["stratum"].as_deref().unwrap()].clone();
        let times: Vec<f64> = s["time"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
        let i = times
            .iter()
            .position(|t| *t == num(r, "time").unwrap())
            .expect("the band's end is a time of the reference");
        close(num(r, "survival").unwrap(), s["survival"][i].as_f64().unwrap(), "survival");
        close(num(r, "ci_lower").unwrap(), s["ci_lower"][i].as_f64().unwrap(), "lower");
        close(num(r, "ci_upper").unwrap(), s["ci_upper"][i].as_f64().unwrap(), "upper");
        assert!(
            num(r, "events").unwrap() == 0.0 || num(r, "events").unwrap() >= 5.0,
            "a step shows k events or none: {r:?}"
        );
        compared += 1;
    }
    assert!(compared >= 8, "steps were released: {got:?}");
}

/// Coverage by patients found (docs/statistics.md, definition 1) with Wilson
/// intervals computed in the query: released rows equal samkor-stats on the
/// pooled counts; a withheld count withholds its interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_with_intervals_in_the_query() {
    let sql = "SELECT n.hospital, count(*) AS in_npr, count(o.op_id) AS found, \
               wilson_lower(count(o.op_id), count(*)) AS lower, wilson_upper(count(o.op_id), count(*), 0.99) AS upper \
               FROM npr.inpatient n LEFT JOIN hip.operations o \
               ON o.person = n.person AND o.op_date BETWEEN n.admit_date AND n.discharge_date \
               WHERE n.procedure LIKE 'NFB%' GROUP BY n.hospital ORDER BY n.hospital";
    let got = federated(sql).await;
    let truth = named(&pooled(sql).await);
    let mut released = 0;
    for g in &got {
        let Some(t) = truth.iter().find(|t| t["hospital"] == g["hospital"] && g["hospital"].is_some()) else {
            continue;
        };
        match (num(g, "found"), num(g, "in_npr")) {
            (Some(found), Some(n)) => {
                let lower = samkor_stats::wilson(found, n, 0.95).expect("interval").lower;
                let upper = samkor_stats::wilson(found, n, 0.99).expect("interval").upper;
                close(num(g, "lower").unwrap(), lower, "wilson lower");
                close(num(g, "upper").unwrap(), upper, "wilson upper (99 %)");
                close(found, num(t, "found").unwrap(), "found");
                released += 1;
            }
            _ => assert!(g["lower"].is_none() && g["upper"].is_none(), "an interval of a withheld count: {g:?}"),
        }
    }
    assert!(released >= 5, "{got:?}");
}

/// One person's Kaplan–Meier "curve" gives nothing back: not the band of
/// the exit, not a count (the attack of a query that selects one operation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaplan_meier_of_one_person_shows_no_time() {
    let got = federated(
        "SELECT * FROM kaplan_meier('SELECT o.op_date AS start_date, d.death_date AS event_date, \
         DATE ''2024-12-31'' AS censor_date FROM hip.operations o LEFT JOIN dors.deaths d ON d.person = o.person \
         WHERE o.op_id = 7', 30)",
    )
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    let row = &got[0];
    assert_eq!(row["withheld"].as_deref(), Some("survival.risk_set"));
    for column in ["time", "at_risk", "events", "censored", "survival", "ci_lower", "ci_upper"] {
        assert!(row[column].is_none(), "{column} is shown: {row:?}");
    }
}

/// The register review's three coverage definitions (DOMAIN.md) as the
/// documented queries of docs/statistics.md: all answered, released cells
/// equal to the pooled ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_three_definitions() {
    let treated = "SELECT person, hospital, admit_date, discharge_date FROM npr.inpatient WHERE procedure LIKE 'NFB%'";
    let units = format!(
        "WITH treated AS ({treated}) \
         SELECT count(DISTINCT t.hospital) AS treating_units, count(DISTINCT o.hospital) AS reporting_units \
         FROM treated t LEFT JOIN hip.operations o ON o.hospital = t.hospital"
    );
    let patients = |reporting_only: bool| {
        let filter = if reporting_only { "WHERE t.hospital IN (SELECT hospital FROM hip.operations)" } else { "" };
        format!(
            "WITH treated AS ({treated}) \
             SELECT t.hospital, count(*) AS treated, count(o.op_id) AS registered, \
             wilson_lower(count(o.op_id), count(*)) AS lower, wilson_upper(count(o.op_id), count(*)) AS upper \
             FROM treated t LEFT JOIN hip.operations o \
             ON o.person = t.person AND o.op_date BETWEEN t.admit_date AND t.discharge_date \
             {filter} GROUP BY t.hospital ORDER BY t.hospital"
        )
    };
    for (sql, key) in [(units, None), (patients(true), Some("hospital")), (patients(false), Some("hospital"))] {
        let got = federated(&sql).await;
        let truth = named(&pooled(&sql).await);
        let released: Vec<_> = got.iter().filter(|g| g["withheld"].is_none()).collect();
        assert!(!released.is_empty(), "{sql}: {got:?}");
        for g in released {
            let t = match key {
                Some(k) => truth.iter().find(|t| t[k] == g[k]).expect("a pooled row"),
                None => &truth[0],
            };
            for (column, value) in g.iter().filter(|(c, _)| c.as_str() != "withheld") {
                assert_eq!(value, &t[column], "{column} in {sql}");
            }
        }
    }
}

/// Mortality per 1 000 person-years by region (person-time from entry and
/// exit dates), with exact Poisson intervals computed in the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidence_rate_per_person_years() {
    let py = "years_between(DATE '2020-01-01', least(coalesce(d.death_date, DATE '2025-01-01'), DATE '2025-01-01'))";
    let sql = format!(
        "SELECT p.region, count(d.person) AS deaths, sum({py}) AS person_years, \
         1000 * count(d.person) / sum({py}) AS rate, \
         1000 * poisson_lower(count(d.person)) / sum({py}) AS lower, \
         1000 * poisson_upper(count(d.person)) / sum({py}) AS upper \
         FROM pop.persons p LEFT JOIN dors.deaths d ON d.person = p.person \
         WHERE d.death_date IS NULL OR d.death_date >= DATE '2020-01-01' \
         GROUP BY p.region ORDER BY p.region"
    );
    let got = federated(&sql).await;
    let truth = named(&pooled(&sql).await);
    let mut released = 0;
    for g in got.iter().filter(|g| g["withheld"].is_none()) {
        let t = truth.iter().find(|t| t["region"] == g["region"]).expect("pooled row");
        let (deaths, years) = (num(t, "deaths").unwrap(), num(t, "person_years").unwrap());
        let ci = samkor_stats::poisson_exact(deaths, 0.95).expect("interval");
        close(num(g, "rate").unwrap(), 1000.0 * deaths / years, "rate");
        close(num(g, "lower").unwrap(), 1000.0 * ci.lower / years, "lower");
        close(num(g, "upper").unwrap(), 1000.0 * ci.upper / years, "upper");
        released += 1;
    }
    assert!(released >= 10, "{got:?}");
}

/// With the cell-key perturbation on (the default), every method answers
/// from perturbed released numbers: survival never increases, SMR intervals
/// contain their estimate, no model is fitted on perturbed sums (models are exact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_answer_on_perturbed_numbers() {
    let fed = common::federation().await;
    let mut c = fed.client("alice", PROJECT).await.expect("connect");
    let km = "SELECT * FROM kaplan_meier('SELECT o.admit_date AS start_date, d.death_date AS event_date, \
              DATE ''2024-12-31'' AS censor_date FROM npr.inpatient o LEFT JOIN dors.deaths d ON d.person = o.person', 90)";
    let (_, b) = c.query(km).await.expect("kaplan_meier answers");
    let steps: Vec<f64> = named(&b).iter().filter_map(|r| num(r, "survival")).collect();
    assert!(steps.len() > 5 && steps.windows(2).all(|w| w[1] <= w[0]), "{steps:?}");
    let smr = format!(
        "SELECT * FROM smr('{}')",
        "SELECT unit, died AS outcome, sex FROM (EPISODES) AS e".replace("EPISODES", EPISODES).replace('\'', "''")
    );
    let (_, b) = c.query(&smr).await.expect("smr answers");
    for r in named(&b).iter().filter(|r| r["withheld"].is_none()) {
        let (lo, s, hi) = (num(r, "ci_lower").unwrap(), num(r, "smr").unwrap(), num(r, "ci_upper").unwrap());
        assert!(lo <= s && s <= hi, "{r:?}");
    }
    let funnel = "SELECT * FROM funnel('SELECT region AS unit, length_of_stay > 7 AS outcome FROM npr.inpatient')";
    let (_, b) = c.query(funnel).await.expect("funnel answers");
    assert!(named(&b).iter().filter(|r| r["withheld"].is_none()).count() > 10);
    fed.shutdown().await;
}
