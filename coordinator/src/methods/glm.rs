//! `glm(query, formula, family)`: linear, logistic and Poisson regression by
//! iteratively reweighted least squares, each iteration one federated
//! aggregate (X'WX and X'Wz summed where the rows are; no row leaves).
//!
//! ```text
//!  describe the query ─▶ design: intercept, numbers, dummies (first level
//!                        of each category the reference, as R and statsmodels)
//!  released: persons per level of each category (× outcome, for a binary
//!            outcome) ─▶ any level withheld, merged or missing: the model is
//!            withheld (`model.small_category`)
//!  released: persons in the model ─▶ fewer than k: withheld (`model.small_population`)
//!  internal: n ─▶ parameters > n/3: withheld (`model.saturated`, DataSHIELD's nfilter.glm)
//!  internal, per iteration: Σ w·x·xᵀ, Σ x·(w(η−o) + y − μ), deviance, log-likelihood
//!            (at the node for one register; over linked registers, whose rows
//!            come to the coordinator for the join, over the joined rows kept
//!            in memory for the fit)
//!  answer: one row per coefficient (estimate, SE, z, p, 95 % CI) with n,
//!          deviance, AIC and iterations; never residuals or fitted values
//! ```
//!
//! Whether a model is withheld depends on data, so it never fails the query:
//! the numbers are null and `withheld` names the rule.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Result;
use samkor_stats::{Family, Irls, Moments, Progress};

use super::formula::Formula;
use super::output::{self, Value};
use super::rules::MethodRule;
use super::steps::Steps;
use super::{Call, derived, float, quote};

/// Parameters may be at most this share of the rows (DataSHIELD's nfilter.glm).
pub(super) const MAX_PARAMETER_SHARE: f64 = 0.33;

pub(super) fn schema() -> SchemaRef {
    output::schema(&[
        ("term", DataType::Utf8),
        ("estimate", DataType::Float64),
        ("std_error", DataType::Float64),
        ("z", DataType::Float64),
        ("p_value", DataType::Float64),
        ("ci_lower", DataType::Float64),
        ("ci_upper", DataType::Float64),
        ("n", DataType::Float64),
        ("deviance", DataType::Float64),
        ("aic", DataType::Float64),
        ("iterations", DataType::Int64),
    ])
}

fn family(call: &Call) -> Result<Family> {
    match call.text(2).map(str::to_ascii_lowercase).as_deref() {
        Some("binomial" | "logistic") => Ok(Family::Binomial),
        Some("poisson") => Ok(Family::Poisson),
        Some("gaussian" | "linear") => Ok(Family::Gaussian),
        _ => call.error("the family is 'binomial', 'poisson' or 'gaussian'"),
    }
}

pub(super) fn check(call: &Call) -> Result<()> {
    if call.args.len() != 3 || (0..3).any(|i| call.text(i).is_none()) {
        return call.error("three text arguments");
    }
    family(call)?;
    if let Err(e) = Formula::parse(call.text(1).expect("checked")) {
        return call.error(&e);
    }
    Ok(())
}

/// One column of the design matrix.
#[derive(Debug, Clone)]
struct Column {
    term: String,
    sql: String,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The model's rows: outcome `y`, offset `o`, predictors under their names
/// (categories as text); rows missing any of them left out (as statsmodels' `missing='drop'`).
fn model_input(call: &Call, f: &Formula, categorical: &[bool], outcome_bool: bool) -> Result<String> {
    let y = if outcome_bool {
        format!("CASE WHEN {} THEN 1.0 ELSE 0.0 END", ident(&f.outcome))
    } else {
        format!("CAST({} AS DOUBLE)", ident(&f.outcome))
    };
    let o = f.offset.as_ref().map(|o| format!("CAST({} AS DOUBLE)", ident(o))).unwrap_or_else(|| "0.0".into());
    let mut cols = vec![format!("{y} AS y"), format!("{o} AS o")];
    let mut present = vec![format!("{} IS NOT NULL", ident(&f.outcome))];
    present.extend(f.offset.iter().map(|o| format!("{} IS NOT NULL", ident(o))));
    for (t, cat) in f.terms.iter().zip(categorical) {
        let c = ident(&t.column);
        cols.push(if *cat { format!("CAST({c} AS VARCHAR) AS {c}") } else { format!("CAST({c} AS DOUBLE) AS {c}") });
        present.push(format!("{c} IS NOT NULL"));
    }
    Ok(format!(
        "(SELECT {} FROM {} WHERE {}) AS model_input",
        cols.join(", "),
        derived(call, call.text(0).expect("checked"))?,
        present.join(" AND ")
    ))
}

pub(super) async fn run(call: &Call, env: &dyn Steps) -> Result<RecordBatch> {
    let family = family(call)?;
    let f = Formula::parse(call.text(1).expect("checked")).or_else(|e| call.error(&e))?;
    let mut needed: Vec<&str> = vec![&f.outcome];
    needed.extend(f.terms.iter().map(|t| t.column.as_str()));
    needed.extend(f.offset.as_deref());
    let described = super::input_schema(call, env, call.text(0).expect("checked"), &needed).await?;
    let type_of = |name: &str| -> Result<DataType> { Ok(described.field_with_name(name)?.data_type().clone()) };
    let outcome = type_of(&f.outcome)?;
    if !(outcome.is_numeric() || outcome == DataType::Boolean) {
        return call.error(&format!("the outcome {} must be a number or a boolean", f.outcome));
    }
    if let Some(o) = &f.offset
        && !type_of(o)?.is_numeric()
    {
        return call.error(&format!("the offset {o} must be a number"));
    }
    let mut categorical = Vec::new();
    for t in &f.terms {
        let ty = type_of(&t.column)?;
        categorical.push(t.categorical || !ty.is_numeric());
    }
    let input = model_input(call, &f, &categorical, outcome == DataType::Boolean)?;

    // Levels, released: the small-category rule on what disclosure control withholds.
    let mut columns = vec![Column { term: "Intercept".into(), sql: "1.0".into() }];
    let mut withheld: Option<String> = None;
    // The population, released: fewer than k persons withholds the model (its
    // intercept alone would be their mean).
    let population = env.released(&format!("SELECT count(*) AS n FROM {input}")).await?;
    if population.rows.iter().all(|r| r.withheld.is_some() || r.number("n").is_none()) {
        withheld = Some(MethodRule::SmallPopulation.name().to_owned());
    }
    let binary = family == Family::Binomial;
    if binary {
        let outcome_levels = env.released(&format!("SELECT y, count(*) AS n FROM {input} GROUP BY y")).await?;
        if !complete(&outcome_levels, None, binary) {
            withheld = Some(format!("{} ({})", MethodRule::SmallCategory.name(), f.outcome));
        }
    }
    for (t, cat) in f.terms.iter().zip(&categorical) {
        let c = ident(&t.column);
        if !cat {
            columns.push(Column { term: t.column.clone(), sql: c });
            continue;
        }
        let by_outcome = if binary { ", y" } else { "" };
        let table = env
            .released(&format!("SELECT {c} AS level{by_outcome}, count(*) AS n FROM {input} GROUP BY {c}{by_outcome}"))
            .await?;
        if !complete(&table, Some("level"), binary) {
            withheld.get_or_insert_with(|| format!("{} ({})", MethodRule::SmallCategory.name(), t.column));
        }
        let mut levels: Vec<String> = table.rows.iter().filter_map(|r| r.key("level").map(str::to_owned)).collect();
        // The reference level is the least: by number for a numeric column (as R and statsmodels).
        let numeric = type_of(&t.column)?.is_numeric();
        levels.sort_by(|a, b| match (numeric, a.parse::<f64>(), b.parse::<f64>()) {
            (true, Ok(x), Ok(y)) => x.total_cmp(&y),
            _ => a.cmp(b),
        });
        levels.dedup();
        for level in levels.iter().skip(1) {
            // Named as statsmodels (patsy) names them.
            let name = if t.categorical { format!("C({})", t.column) } else { t.column.clone() };
            columns.push(Column {
                term: format!("{name}[T.{level}]"),
                sql: format!("CASE WHEN {c} = {} THEN 1.0 ELSE 0.0 END", quote(level)),
            });
        }
    }
    let terms: Vec<String> = columns.iter().map(|c| c.term.clone()).collect();
    if let Some(reason) = withheld {
        return withheld_model(&terms, &reason);
    }
    // A model over linked registers has its rows at the coordinator for the
    // join: joined once and kept for the iterations (a single register's
    // sums are computed at its node every iteration; its rows never come here).
    let input = match env.keep_rows(&format!("SELECT * FROM {input}")).await? {
        Some(name) => format!("{name} AS model_input"),
        None => input,
    };
    let start = env.internal(&format!("SELECT count(*) AS n, avg(y) AS ybar FROM {input}")).await?;
    let n = start.scalar("n").unwrap_or(0.0);
    if columns.len() as f64 > MAX_PARAMETER_SHARE * n {
        return withheld_model(&terms, MethodRule::Saturated.name());
    }
    let ybar = start.scalar("ybar").unwrap_or(0.0);
    let lgamma_sum = if family == Family::Poisson { log_factorials(env, &input).await? } else { 0.0 };
    let fitted = fit(env, family, &input, &columns, ybar, lgamma_sum).await?;
    match fitted {
        Ok(fit) => {
            let rows = terms
                .iter()
                .zip(&fit.coefficients)
                .map(|(term, c)| {
                    let values = vec![
                        Value::text(term),
                        Value::num(Some(c.estimate)),
                        Value::num(Some(c.se)),
                        Value::num(Some(c.z)),
                        Value::num(Some(c.p)),
                        Value::num(Some(c.lower)),
                        Value::num(Some(c.upper)),
                        Value::num(Some(fit.n)),
                        Value::num(Some(fit.deviance)),
                        Value::num(Some(fit.aic)),
                        Value::Int(Some(fit.iterations as i64)),
                    ];
                    (values, None)
                })
                .collect();
            output::batch(&schema(), rows)
        }
        Err(rule) => withheld_model(&terms, rule.name()),
    }
}

/// Every level released, nothing merged away; with `binary`, each level
/// with both outcomes 0 and 1.
fn complete(table: &super::steps::Table, level: Option<&str>, binary: bool) -> bool {
    if table.rows.iter().any(|r| r.withheld.is_some()) {
        return false;
    }
    if !binary {
        return true;
    }
    let levels: std::collections::BTreeSet<Option<&str>> =
        table.rows.iter().map(|r| level.and_then(|l| r.key(l))).collect();
    levels.iter().all(|l| {
        [0.0, 1.0]
            .iter()
            .all(|y| table.rows.iter().any(|r| level.and_then(|c| r.key(c)) == *l && r.number("y") == Some(*y)))
    })
}

/// Σ ln Γ(y + 1) over the rows (the Poisson log-likelihood's constant).
async fn log_factorials(env: &dyn Steps, input: &str) -> Result<f64> {
    let t = env.internal(&format!("SELECT y, count(*) AS c FROM {input} GROUP BY y")).await?;
    Ok(t.rows
        .iter()
        .filter_map(|r| Some(r.number("c")? * statrs::function::gamma::ln_gamma(r.number("y")? + 1.0)))
        .sum())
}

/// The IRLS loop: one internal aggregate per iteration.
async fn fit(
    env: &dyn Steps,
    family: Family,
    input: &str,
    columns: &[Column],
    ybar: f64,
    lgamma_sum: f64,
) -> Result<std::result::Result<samkor_stats::Fit, MethodRule>> {
    let p = columns.len();
    let mut start = vec![0.0; p];
    start[0] = match family {
        Family::Binomial => (ybar / (1.0 - ybar)).ln(),
        Family::Poisson => ybar.ln(),
        Family::Gaussian => ybar,
    };
    if !start[0].is_finite() {
        start[0] = 0.0;
    }
    let mut irls = match Irls::new(family, p, start) {
        Ok(i) => i,
        Err(_) => return Ok(Err(MethodRule::Singular)),
    };
    loop {
        let sql = iteration_sql(family, input, columns, irls.beta());
        let started = std::time::Instant::now();
        let t = env.internal(&sql).await?;
        tracing::info!(
            target: "samkor::glm",
            pass = irls.iterations() + 1,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "glm iteration"
        );
        let num = |name: &str| t.scalar(name).unwrap_or(f64::NAN);
        let mut xtwx = vec![0.0; p * p];
        for j in 0..p {
            for k in j..p {
                let v = num(&format!("a{j}_{k}"));
                xtwx[j * p + k] = v;
                xtwx[k * p + j] = v;
            }
        }
        let moments = Moments {
            xtwx,
            xtwz: (0..p).map(|j| num(&format!("b{j}"))).collect(),
            deviance: num("dev"),
            loglik: num("ll") - lgamma_sum,
            n: num("n"),
        };
        match irls.update(moments) {
            Ok(Progress::Continue) => continue,
            Ok(Progress::Converged(fit)) => return Ok(Ok(fit)),
            Err(samkor_stats::GlmError::NotConverged { .. }) => return Ok(Err(MethodRule::NotConverged)),
            Err(_) => return Ok(Err(MethodRule::Singular)),
        }
    }
}

/// The sums of one iteration at coefficients `beta`.
fn iteration_sql(family: Family, input: &str, columns: &[Column], beta: &[f64]) -> String {
    let x: Vec<String> = columns.iter().enumerate().map(|(j, c)| format!("{} AS x{j}", c.sql)).collect();
    let eta: Vec<String> = beta.iter().enumerate().map(|(j, b)| format!("{} * x{j}", float(*b))).collect();
    let (mu, w, dev, ll) = match family {
        Family::Gaussian => ("eta", "1.0", "(y - mu) * (y - mu)", "0.0"),
        Family::Binomial => (
            "1.0 / (1.0 + exp(-eta))",
            "mu * (1.0 - mu)",
            "2.0 * (CASE WHEN y > 0 THEN y * ln(y / mu) ELSE 0.0 END + CASE WHEN y < 1 THEN (1.0 - y) * ln((1.0 - y) / (1.0 - mu)) ELSE 0.0 END)",
            "CASE WHEN y > 0 THEN y * ln(mu) ELSE 0.0 END + CASE WHEN y < 1 THEN (1.0 - y) * ln(1.0 - mu) ELSE 0.0 END",
        ),
        Family::Poisson => {
            ("exp(eta)", "mu", "2.0 * (CASE WHEN y > 0 THEN y * ln(y / mu) ELSE 0.0 END - (y - mu))", "y * eta - mu")
        }
    };
    let p = columns.len();
    let mut sums = vec!["count(*) AS n".to_owned(), "sum(dev) AS dev".to_owned(), "sum(ll) AS ll".to_owned()];
    for j in 0..p {
        for k in j..p {
            sums.push(format!("sum(w * x{j} * x{k}) AS a{j}_{k}"));
        }
        sums.push(format!("sum(x{j} * wz) AS b{j}"));
    }
    format!(
        "SELECT {} FROM (SELECT *, {w} AS w, {w} * (eta - o) + (y - mu) AS wz, {dev} AS dev, {ll} AS ll FROM \
         (SELECT *, {mu} AS mu FROM (SELECT *, o + {} AS eta FROM (SELECT y, o, {} FROM {input}) AS xs) AS etas) AS mus) AS terms",
        sums.join(", "),
        eta.join(" + "),
        x.join(", ")
    )
}

fn withheld_model(terms: &[String], reason: &str) -> Result<RecordBatch> {
    let rows = terms
        .iter()
        .map(|t| {
            let mut v = vec![Value::text(t)];
            v.extend(std::iter::repeat_n(Value::Num(None), 9));
            v.push(Value::Int(None));
            (v, Some(reason.to_owned()))
        })
        .collect();
    output::batch(&schema(), rows)
}
