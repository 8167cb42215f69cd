//! Every function of samkor-stats against reference outputs of scipy,
//! statsmodels and lifelines, stored by `reference/generate.py` in
//! `reference/reference.json` (with the datasets as CSV next to it).
//! Tolerance: 1e-6 relative, or 1e-9 absolute for values near zero.

use std::path::PathBuf;

use samkor_stats::{
    Band, Family, Fit, GlmError, Irls, KmInterval, Moments, Progress, Stratum, clopper_pearson, direct, fit_rows,
    kaplan_meier, moments_from_rows, poisson_exact, proportion_limits, rate, smr, smr_limits, wilson,
};
use serde_json::Value;

const REL: f64 = 1e-6;
const ABS: f64 = 1e-9;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference")
}

fn reference() -> Value {
    let path = reference_dir().join("reference.json");
    let text = std::fs::read_to_string(&path).expect("reference.json is committed next to generate.py");
    serde_json::from_str(&text).expect("reference.json is valid JSON")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("reference field {key} is a number in {v}"))
}

fn nums(v: &Value, key: &str) -> Vec<f64> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("reference field {key} is an array"))
        .iter()
        .map(|x| x.as_f64().expect("array of numbers"))
        .collect()
}

/// Asserts `actual` is within tolerance of `expected`, naming `what`.
fn check(what: &str, actual: f64, expected: f64) {
    let diff = (actual - expected).abs();
    assert!(
        diff <= REL * expected.abs() || diff <= ABS,
        "{what}: got {actual:e}, reference {expected:e} (relative error {:e})",
        diff / expected.abs()
    );
}

#[test]
fn intervals_match_statsmodels_and_scipy() {
    let r = reference();
    let cases = r["intervals"].as_array().expect("interval cases");
    assert!(cases.len() >= 20, "the reference covers the interval cases");
    for case in cases {
        let level = num(case, "level");
        let ci = match case["kind"].as_str().expect("kind") {
            "wilson" => wilson(num(case, "x"), num(case, "n"), level),
            "clopper_pearson" => clopper_pearson(num(case, "x"), num(case, "n"), level),
            "poisson" => poisson_exact(num(case, "x"), level),
            other => panic!("unknown interval kind {other}"),
        }
        .unwrap_or_else(|| panic!("valid case {case}"));
        check(&format!("lower of {case}"), ci.lower, num(case, "lower"));
        check(&format!("upper of {case}"), ci.upper, num(case, "upper"));
    }
}

#[test]
fn smr_matches_poisson_test() {
    for case in reference()["smr"].as_array().expect("smr cases") {
        let e = smr(num(case, "observed"), num(case, "expected"), num(case, "level")).expect("valid case");
        check(&format!("smr of {case}"), e.value, num(case, "value"));
        check(&format!("lower of {case}"), e.lower, num(case, "lower"));
        check(&format!("upper of {case}"), e.upper, num(case, "upper"));
    }
}

#[test]
fn rates_match_poisson_test() {
    for case in reference()["rates"].as_array().expect("rate cases") {
        let e = rate(num(case, "events"), num(case, "person_time"), num(case, "per"), num(case, "level"))
            .expect("valid case");
        check(&format!("rate of {case}"), e.value, num(case, "value"));
        check(&format!("lower of {case}"), e.lower, num(case, "lower"));
        check(&format!("upper of {case}"), e.upper, num(case, "upper"));
    }
}

#[test]
fn direct_standardisation_matches_fay_feuer() {
    for case in reference()["dsr"].as_array().expect("dsr cases") {
        let strata: Vec<Stratum> = nums(case, "events")
            .into_iter()
            .zip(nums(case, "persons"))
            .zip(nums(case, "weights"))
            .map(|((events, persons), weight)| Stratum { events, persons, weight })
            .collect();
        let d = direct(&strata, num(case, "level")).expect("valid case");
        check("rate", d.rate, num(case, "rate"));
        check("se", d.se, num(case, "se"));
        check("lower", d.lower, num(case, "lower"));
        check("upper", d.upper, num(case, "upper"));
    }
}

#[test]
fn funnel_limits_match_the_independent_computation() {
    let r = reference();
    for case in r["funnel"]["proportion"].as_array().expect("proportion cases") {
        let l = proportion_limits(num(case, "p0"), num(case, "n"), num(case, "coverage")).expect("valid case");
        check(&format!("lower of {case}"), l.lower, num(case, "lower"));
        check(&format!("upper of {case}"), l.upper, num(case, "upper"));
    }
    for case in r["funnel"]["smr"].as_array().expect("smr cases") {
        let l = smr_limits(num(case, "expected"), num(case, "coverage")).expect("valid case");
        check(&format!("lower of {case}"), l.lower, num(case, "lower"));
        check(&format!("upper of {case}"), l.upper, num(case, "upper"));
    }
}

/// The band counts recomputed from the survival dataset, checked against
/// the bands stored with the reference.
fn km_bands(stored: &Value) -> Vec<Band> {
    let text = std::fs::read_to_string(reference_dir().join("km_data.csv")).expect("km_data.csv");
    let rows: Vec<(usize, bool)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let (t, e) = l.split_once(',').expect("time,event");
            (t.parse().expect("whole time"), e == "1")
        })
        .collect();
    let horizon = rows.iter().map(|r| r.0).max().expect("rows");
    let bands: Vec<Band> = (1..=horizon)
        .map(|t| Band {
            end: t as f64,
            events: rows.iter().filter(|r| r.0 == t && r.1).count() as f64,
            censored: rows.iter().filter(|r| r.0 == t && !r.1).count() as f64,
        })
        .collect();
    let stored: Vec<Band> = stored
        .as_array()
        .expect("bands")
        .iter()
        .map(|b| Band { end: num(b, "end"), events: num(b, "events"), censored: num(b, "censored") })
        .collect();
    assert_eq!(bands, stored, "bands recomputed from km_data.csv equal the reference's");
    bands
}

#[test]
fn kaplan_meier_matches_lifelines() {
    let r = reference();
    let km = &r["kaplan_meier"];
    let bands = km_bands(&km["bands"]);
    let start = num(km, "at_risk_start");
    for (loglog, log) in km["loglog"].as_array().expect("loglog").iter().zip(km["log"].as_array().expect("log")) {
        let level = num(loglog, "level");
        let steps = kaplan_meier(start, &bands, level, KmInterval::LogLog).expect("valid bands");
        let (s, lo, hi, se) =
            (nums(loglog, "survival"), nums(loglog, "lower"), nums(loglog, "upper"), nums(loglog, "se"));
        assert_eq!(steps.len(), s.len());
        for (i, step) in steps.iter().enumerate() {
            check(&format!("S at band {i}"), step.survival, s[i]);
            check(&format!("se at band {i}"), step.se, se[i]);
            check(&format!("log-log lower at band {i}, level {level}"), step.lower, lo[i]);
            check(&format!("log-log upper at band {i}, level {level}"), step.upper, hi[i]);
        }
        let steps = kaplan_meier(start, &bands, level, KmInterval::Log).expect("valid bands");
        let (lo, hi) = (nums(log, "lower"), nums(log, "upper"));
        for (i, step) in steps.iter().enumerate() {
            check(&format!("log lower at band {i}, level {level}"), step.lower, lo[i]);
            check(&format!("log upper at band {i}, level {level}"), step.upper, hi[i]);
        }
    }
}

/// The GLM dataset: design matrix (intercept, (age − 65)/10, sex, region
/// dummies b, c, d), outcomes and log person-years.
struct GlmData {
    x: Vec<Vec<f64>>,
    y_bin: Vec<f64>,
    y_count: Vec<f64>,
    y_cont: Vec<f64>,
    log_pyears: Vec<f64>,
}

fn glm_data() -> GlmData {
    let text = std::fs::read_to_string(reference_dir().join("glm_data.csv")).expect("glm_data.csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("age,sex,region,pyears,y_bin,y_count,y_cont"));
    let mut d = GlmData { x: vec![], y_bin: vec![], y_count: vec![], y_cont: vec![], log_pyears: vec![] };
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f[i].parse::<f64>().expect("numeric field");
        let region = |r: &str| if f[2] == r { 1.0 } else { 0.0 };
        d.x.push(vec![1.0, (num(0) - 65.0) / 10.0, num(1), region("b"), region("c"), region("d")]);
        d.log_pyears.push(num(3).ln());
        d.y_bin.push(num(4));
        d.y_count.push(num(5));
        d.y_cont.push(num(6));
    }
    assert_eq!(d.x.len(), 2000);
    d
}

/// One node's rows: covariates, outcomes, offsets.
type Part = (Vec<Vec<f64>>, Vec<f64>, Vec<f64>);

/// Fits as the coordinator does: each iteration sums the moments of three
/// "nodes" holding rows 0, 3, 6, … / 1, 4, 7, … / 2, 5, 8, ….
fn fit_federated(family: Family, x: &[Vec<f64>], y: &[f64], offset: &[f64]) -> Result<Fit, GlmError> {
    let parts: Vec<Part> = (0..3)
        .map(|node| {
            let rows: Vec<usize> = (node..y.len()).step_by(3).collect();
            (
                rows.iter().map(|&i| x[i].clone()).collect(),
                rows.iter().map(|&i| y[i]).collect(),
                if offset.is_empty() { vec![] } else { rows.iter().map(|&i| offset[i]).collect() },
            )
        })
        .collect();
    let p = x[0].len();
    let mut irls = Irls::new(family, p, vec![0.0; p])?;
    loop {
        let mut m = Moments::zeros(p);
        for (xs, ys, os) in &parts {
            m.add(&moments_from_rows(family, xs, ys, os, irls.beta()));
        }
        if let Progress::Converged(fit) = irls.update(m)? {
            return Ok(fit);
        }
    }
}

#[test]
fn glms_match_statsmodels() {
    let r = reference();
    let data = glm_data();
    let models = [
        ("binomial", Family::Binomial, &data.y_bin, &[][..]),
        ("poisson", Family::Poisson, &data.y_count, &data.log_pyears[..]),
        ("gaussian", Family::Gaussian, &data.y_cont, &[][..]),
    ];
    for (name, family, y, offset) in models {
        let reference = &r["glm"][name];
        let pooled = fit_rows(family, &data.x, y, offset).unwrap_or_else(|e| panic!("{name} fits: {e}"));
        let federated =
            fit_federated(family, &data.x, y, offset).unwrap_or_else(|e| panic!("{name} fits federated: {e}"));
        for fit in [pooled, federated] {
            let fields = [
                ("params", fit.coefficients.iter().map(|c| c.estimate).collect::<Vec<_>>()),
                ("bse", fit.coefficients.iter().map(|c| c.se).collect()),
                ("z", fit.coefficients.iter().map(|c| c.z).collect()),
                ("pvalues", fit.coefficients.iter().map(|c| c.p).collect()),
                ("lower", fit.coefficients.iter().map(|c| c.lower).collect()),
                ("upper", fit.coefficients.iter().map(|c| c.upper).collect()),
            ];
            for (field, actual) in fields {
                let expected = nums(reference, field);
                assert_eq!(actual.len(), expected.len(), "{name} {field}");
                for (j, (a, e)) in actual.iter().zip(&expected).enumerate() {
                    check(&format!("{name} {field}[{j}]"), *a, *e);
                }
            }
            check(&format!("{name} deviance"), fit.deviance, num(reference, "deviance"));
            check(&format!("{name} aic"), fit.aic, num(reference, "aic"));
            check(&format!("{name} llf"), fit.loglik, num(reference, "llf"));
            check(&format!("{name} scale"), fit.scale, num(reference, "scale"));
            assert_eq!(fit.n, num(reference, "nobs"), "{name} nobs");
            assert!(fit.iterations >= 1 && fit.iterations <= 10, "{name} took {} iterations", fit.iterations);
        }
    }
}
