//! Second-order disclosure attacks written as reconstructions: each test
//! computes the secret from what the federation releases, as an attacker
//! would, and checks against the pooled truth that the secret does not come
//! back (issue: derived statistics, extreme quantiles, differencing).

use std::collections::HashMap;

use arrow::array::RecordBatch;
use samkor::federation::LocalOptions;

use crate::common;

/// The threshold of the test approvals (federation default).
const K: i64 = 5;

async fn pooled(project: &str, sql: &str) -> Vec<Vec<String>> {
    let ctx = samkor::federation::pooled_session(common::synth_dir(), project).await.expect("pooled session");
    common::rows(&ctx.sql(sql).await.expect("pooled plan").collect().await.expect("pooled answer"))
}

fn num(s: &str) -> Option<f64> {
    s.parse().ok()
}

/// A share, a percentage, a mean and a variance of an indicator each give the
/// count of persons with it (n · share, n · pct / 100, …). Wherever that count
/// or its complement is 0..k−1 in the truth, none of them may be released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_statistics_do_not_give_withheld_counts_back() {
    let fed = common::exact_federation().await;
    let mut c = fed.client("alice", "D-agg").await.expect("connect");
    let sql = "SELECT hospital, count(*) AS n, \
               sum(CASE WHEN reoperation THEN 1 ELSE 0 END) AS reops, \
               100.0 * sum(CASE WHEN reoperation THEN 1 ELSE 0 END) / count(*) AS pct, \
               avg(CASE WHEN reoperation THEN 1.0 ELSE 0.0 END) AS share, \
               var_pop(CASE WHEN reoperation THEN 1.0 ELSE 0.0 END) AS v, \
               avg(CAST(reoperation AS DOUBLE)) AS share2 \
               FROM hip.operations GROUP BY hospital";
    let (_, got) = c.query(sql).await.expect("released");
    let truth: HashMap<String, (i64, i64)> = pooled("D-agg", sql)
        .await
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].parse().expect("n"), r[2].parse().expect("reops"))))
        .collect();
    let mut small_or_zero = 0;
    let mut recovered = Vec::new();
    for row in common::rows(&got) {
        let Some(&(n, reops)) = truth.get(&row[0]) else { continue };
        let exposed = (0..K).contains(&reops) || (0..K).contains(&(n - reops));
        if !exposed {
            continue;
        }
        small_or_zero += 1;
        // The attacker's reconstructions of the count from each released column.
        let n_released = num(&row[1]).unwrap_or(n as f64);
        let guesses = [
            num(&row[2]),
            num(&row[3]).map(|p| p * n_released / 100.0),
            num(&row[4]).map(|s| s * n_released),
            num(&row[5]).map(|v| n_released * (1.0 - (1.0 - 4.0 * v).max(0.0).sqrt()) / 2.0),
            num(&row[6]).map(|s| s * n_released),
        ];
        for (col, g) in ["reops", "pct", "share", "v", "share2"].iter().zip(guesses) {
            if let Some(g) = g {
                recovered.push(format!("{}: {col} released, giving {g:.2} (true {reops} of {n})", row[0]));
            }
        }
    }
    assert!(
        small_or_zero >= 3,
        "the data has hospitals with 0..k−1 reoperations or non-reoperations ({small_or_zero})"
    );
    assert!(recovered.is_empty(), "withheld counts came back:\n{}", recovered.join("\n"));
    fed.shutdown().await;
}

/// Quantiles at or near 0 and 1 are extremes; a median of 2k−1 persons has
/// fewer than k on one side; a released median is no person's own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantiles_never_release_an_extreme_or_one_persons_value() {
    let fed = common::exact_federation().await;
    let mut c = fed.client("alice", "D-agg").await.expect("connect");
    for p in ["0", "0.01", "0.99", "1"] {
        for f in ["percentile_cont", "approx_percentile_cont"] {
            let sql =
                format!("SELECT region, {f}({p}) WITHIN GROUP (ORDER BY income) AS q FROM pop.persons GROUP BY region");
            let e = c.query(&sql).await.expect_err("an extreme quantile is refused").to_string();
            // DataFusion rewrites the 0 and 1 quantiles to min and max before disclosure control sees them.
            let by = if ["0", "1"].contains(&p) && f == "percentile_cont" {
                "identifying_aggregate"
            } else {
                "extreme_quantile"
            };
            assert!(e.contains(&format!("refused by rule disclosure.{by}:")), "{sql}: {e}");
        }
    }
    // Groups of exactly 2k−1 and 2k persons: the incomes of one region ranked.
    let region = "Stockholm";
    let incomes: Vec<i64> = pooled(
        "D-agg",
        &format!("SELECT income FROM pop.persons WHERE region = '{region}' AND income IS NOT NULL ORDER BY income"),
    )
    .await
    .into_iter()
    .map(|r| r[0].parse().expect("income"))
    .collect();
    let start = incomes.windows(2).position(|w| w[0] != w[1]).expect("distinct incomes") + 1;
    for (size, released) in [(2 * K - 1, false), (2 * K, true)] {
        let window = &incomes[start..start + size as usize];
        let (lo, hi) = (window[0], window[window.len() - 1]);
        let members: Vec<i64> = incomes.iter().copied().filter(|x| (lo..=hi).contains(x)).collect();
        let sql = format!(
            "SELECT count(*) AS n, median(income) AS m FROM pop.persons WHERE region = '{region}' AND income BETWEEN {lo} AND {hi}"
        );
        let (_, got) = c.query(&sql).await.expect("answered");
        let row = &common::rows(&got)[0];
        let n = members.len() as i64;
        let (below, above) = ((n as f64 * 0.5).floor() as i64, (n as f64 * 0.5).floor() as i64);
        let expect_released = below >= K && above >= K;
        assert_eq!(expect_released, released || n != size, "group of {n}");
        match num(&row[1]) {
            Some(m) => {
                assert!(expect_released, "median of {n} persons released: {row:?}");
                assert!(!members.iter().any(|x| (*x as f64 - m).abs() < 1e-9), "the median {m} is one person's income");
                assert!((lo as f64..=hi as f64).contains(&m));
            }
            None => assert!(!expect_released, "median of {n} persons withheld: {row:?}"),
        }
    }
    fed.shutdown().await;
}

/// One person isolated by attributes the attacker knows (birth year, sex,
/// education in a region): (their birth year, sex, education, income).
async fn isolated_person(region: &str) -> (String, String, String, f64) {
    let rows = pooled(
        "D-agg",
        &format!(
            "SELECT birth_year, sex, education, max(income) FROM pop.persons WHERE region = '{region}' \
             AND income > 100000 AND education IS NOT NULL GROUP BY 1, 2, 3 HAVING count(*) = 1 ORDER BY 4 DESC LIMIT 1"
        ),
    )
    .await;
    let r = rows.first().expect("a person alone with these attributes");
    (r[0].clone(), r[1].clone(), r[2].clone(), r[3].parse().expect("income"))
}

async fn difference(
    fed: &samkor::federation::LocalFederation,
    region: &str,
    who: &(String, String, String, f64),
) -> (f64, f64) {
    let mut c = fed.client("alice", "D-agg").await.expect("connect");
    let all = format!("SELECT count(*) AS n, sum(income) AS s FROM pop.persons WHERE region = '{region}'");
    let (by, sex, edu, _) = who;
    let without =
        format!("{all} AND NOT (birth_year = {by} AND sex = '{sex}' AND education IS NOT DISTINCT FROM '{edu}')");
    let value = |b: &[RecordBatch]| -> (f64, f64) {
        let r = &common::rows(b)[0];
        (num(&r[0]).expect("count released"), num(&r[1]).expect("sum released"))
    };
    let (_, a) = c.query(&all).await.expect("answer");
    let (_, b) = c.query(&without).await.expect("answer");
    let ((na, sa), (nb, sb)) = (value(&a), value(&b));
    (na - nb, sa - sb)
}

/// Asking a population's total, then the same without one person: the
/// released difference must not be that person's value. Over many federation
/// keys (fresh record keys each time) the differences scatter around it
/// instead of concentrating on it; within one key, asking again returns the
/// same cells (nothing to average).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_does_not_single_out_a_persons_value() {
    let region = "Gotland";
    let who = isolated_person(region).await;
    let income = who.3;
    let mut exact_hits = 0;
    let mut deviations = Vec::new();
    const KEYS: usize = 6;
    for _ in 0..KEYS {
        let dir = common::private_copy();
        samkor::certs::write_federation_key(&dir.path().join("federation.key")).expect("a fresh federation key");
        let fed =
            samkor::federation::LocalFederation::start(dir.path(), &LocalOptions::default()).await.expect("starts");
        let (dn, ds) = difference(&fed, region, &who).await;
        let again = difference(&fed, region, &who).await;
        assert_eq!((dn, ds), again, "the same persons get the same noise");
        exact_hits += usize::from((ds - income).abs() < 1.0);
        deviations.push((ds - income).abs() / income);
        let _ = dn;
        fed.shutdown().await;
    }
    println!("differencing over {KEYS} federation keys: {exact_hits} exact, relative deviations {deviations:.3?}");
    assert!(exact_hits <= 1, "the difference gave the person's income exactly under {exact_hits} of {KEYS} keys");
    let spread = deviations.iter().cloned().fold(0.0, f64::max);
    assert!(spread > 0.01, "the differences concentrate on the person's income: {deviations:?}");
}

/// Repeating a query, or writing it another way, returns identical cells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_and_rephrased_queries_get_identical_cells() {
    let fed = common::federation().await;
    let mut c = fed.client("alice", "D-agg").await.expect("connect");
    let texts = [
        "SELECT region, count(*) AS n, sum(income) AS s, avg(income) AS m FROM pop.persons GROUP BY region",
        "SELECT region, count(*) AS n, sum(income) AS s, avg(income) AS m FROM pop.persons GROUP BY region",
        "select p.region, COUNT(1) as n, SUM(p.income) as s, AVG(p.income) as m from pop.persons p where 1 = 1 group by p.region",
        "SELECT region, count(*) AS n, sum(income) AS s, avg(income) AS m FROM (SELECT * FROM pop.persons) t GROUP BY region ORDER BY region DESC",
    ];
    let mut answers = Vec::new();
    for sql in texts {
        let (_, b) = c.query(sql).await.expect("answer");
        answers.push(common::sorted_lines(&b));
    }
    for (i, a) in answers.iter().enumerate().skip(1) {
        assert_eq!(a, &answers[0], "query {i} differs from the first");
    }
    // And the noise is there: the released cells are not all exact.
    let exact = common::sorted_lines(
        &samkor::federation::pooled_session(common::synth_dir(), "D-agg")
            .await
            .expect("pooled")
            .sql(texts[0])
            .await
            .expect("plan")
            .collect()
            .await
            .expect("pooled answer"),
    );
    assert_ne!(answers[0], exact, "the perturbation moved some released cell");
    fed.shutdown().await;
}

/// A logistic model with only an intercept, per hospital, gives the share
/// of long stays
/// with the outcome (expit of the intercept) and n: their product is the
/// count. Wherever that count or its complement is 1..k−1 in the truth,
/// the model must be withheld; where released, it reproduces nothing smaller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_do_not_give_small_counts_back() {
    let fed = common::federation().await;
    let mut c = fed.client("alice", "D-agg").await.expect("connect");
    let truth = pooled(
        "D-agg",
        "SELECT hospital, count(DISTINCT CASE WHEN length_of_stay > 25 THEN person END) AS yes, \
         count(DISTINCT CASE WHEN length_of_stay <= 25 THEN person END) AS no FROM npr.inpatient GROUP BY hospital",
    )
    .await;
    let mut released = 0;
    for row in truth.iter().take(25) {
        let (hospital, yes, no) = (&row[0], num(&row[1]).unwrap_or(0.0), num(&row[2]).unwrap_or(0.0));
        let sql = format!(
            "SELECT estimate, n, withheld FROM glm('SELECT length_of_stay > 25 AS long_stay FROM npr.inpatient WHERE hospital = ''{}''', 'long_stay ~ 1', 'binomial')",
            hospital.replace('\'', "''''")
        );
        let (_, b) = c.query(&sql).await.expect("answered");
        let rows = common::rows(&b);
        let (estimate, n) = (num(&rows[0][0]), num(&rows[0][1]));
        let small = |x: f64| x < K as f64;
        if small(yes) || small(no) {
            assert!(
                estimate.is_none() && n.is_none(),
                "{hospital}: a model over {yes}/{no} persons is released: {rows:?}"
            );
        } else if let (Some(b0), Some(n)) = (estimate, n) {
            let count = n / (1.0 + (-b0).exp());
            assert!(count >= K as f64 - 1e-6 && n - count >= K as f64 - 1e-6, "{hospital}: {count} of {n}");
            released += 1;
        }
    }
    let small = truth.iter().take(25).filter(|r| num(&r[1]).unwrap_or(0.0) < K as f64).count();
    assert!(released > 0 && small > 0, "both kinds of hospital are tried: {released} released, {small} small");
    fed.shutdown().await;
}
