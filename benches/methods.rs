//! What federation costs the statistical methods (docs/statistics.md).
//!
//! ```text
//!  synth (temp dir, SAMKOR_BENCH_PERSONS persons, default 1 000 000)
//!  federation in process (5 nodes + coordinator over mTLS, disclosure control on)
//!     vs the same method on one pooled DataFusion session over the same files
//!        (samkor_coordinator::methods::Pooled: the same code and SQL, no control)
//!  logistic model, 10 parameters, hip ⋈ dors ⋈ pop: iterations, time per iteration
//!  funnel, SMR, Kaplan–Meier: time of the whole method
//! ```
//!
//! Each side runs SAMKOR_BENCH_RUNS times (default 3), interleaved; medians.
//! Run: `CARGO_TARGET_DIR=/work/target-release cargo bench --bench methods`.

mod common;

use std::sync::Mutex;
use std::time::Instant;

use arrow::array::Array;
use samkor::federation::{LocalFederation, LocalOptions};
use tracing_subscriber::layer::SubscriberExt;

const PROJECT: &str = "bench";

const MODEL_INPUT: &str = "SELECT CASE WHEN d.death_date <= o.op_date + INTERVAL '90 days' THEN 1 ELSE 0 END AS died, \
    p.sex, age_years(p.birth_date, o.op_date) AS age, o.asa, o.bmi, p.education, date_part('year', o.op_date) AS year \
    FROM hip.operations o JOIN pop.persons p ON p.person = o.person LEFT JOIN dors.deaths d ON d.person = o.person";
const FORMULA: &str = "died ~ sex + age + C(asa) + bmi + education + year";

const FUNNEL: &str = "SELECT region AS unit, reoperation AS outcome FROM hip.operations";
const SMR: &str = "SELECT o.hospital AS unit, CASE WHEN d.death_date <= o.op_date + INTERVAL '365 days' THEN 1 ELSE 0 END AS outcome, \
    p.sex, age_band(p.birth_date, o.op_date, 10) AS age \
    FROM hip.operations o JOIN pop.persons p ON p.person = o.person LEFT JOIN dors.deaths d ON d.person = o.person";
const KM: &str = "SELECT o.op_date AS start_date, d.death_date AS event_date, DATE '2024-12-31' AS censor_date, \
    CASE WHEN o.asa >= 3 THEN 'ASA 3-4' ELSE 'ASA 1-2' END AS stratum \
    FROM hip.operations o LEFT JOIN dors.deaths d ON d.person = o.person";

/// The duration of every IRLS pass, as the coordinator logs it (`samkor::glm`).
static PASSES: Mutex<Vec<f64>> = Mutex::new(Vec::new());

struct Passes;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Passes {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "samkor::glm" {
            return;
        }
        struct Elapsed(Option<f64>);
        impl tracing::field::Visit for Elapsed {
            fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
                if field.name() == "elapsed_ms" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut v = Elapsed(None);
        event.record(&mut v);
        if let Some(ms) = v.0 {
            PASSES.lock().expect("passes").push(ms);
        }
    }
}

fn take_passes() -> Vec<f64> {
    std::mem::take(&mut *PASSES.lock().expect("passes"))
}

/// The median of some milliseconds (nearest rank, as every bench reports
/// it); not a number when there are none.
fn median(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { common::percentile_by(v, 50.0, f64::total_cmp) }
}

fn quoted(sql: &str) -> String {
    format!("'{}'", sql.replace('\'', "''"))
}

fn main() -> anyhow::Result<()> {
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Passes));
    let persons = common::env_u64("SAMKOR_BENCH_PERSONS", 1_000_000);
    let seed = common::env_u64("SAMKOR_BENCH_SEED", 1);
    let runs = common::env_u64("SAMKOR_BENCH_RUNS", 3) as usize;
    let tmp = tempfile::Builder::new().prefix("samkor-bench-methods-").tempdir()?;
    let dir = tmp.path().to_owned();
    eprintln!("synthesising {persons} persons into {} ...", dir.display());
    let (_, synth_time) = common::synth(&dir, persons, seed, PROJECT);
    let rt = common::runtime();
    rt.block_on(async {
        let fed = LocalFederation::start(&dir, &LocalOptions::default()).await?;
        let mut client = fed.client("alice", PROJECT).await?;
        let pooled =
            samkor_coordinator::methods::Pooled { ctx: samkor::federation::pooled_session(&dir, PROJECT).await? };
        println!(
            "persons: {persons} (seed {seed}); synth {:.1} s; {runs} runs per side, interleaved, medians",
            synth_time.as_secs_f64()
        );

        // ── the logistic model ──
        let glm_sql = format!("SELECT * FROM glm({}, {}, 'binomial')", quoted(MODEL_INPUT), quoted(FORMULA));
        let (mut fed_total, mut pool_total, mut fed_pass, mut pool_pass) = (vec![], vec![], vec![], vec![]);
        let mut shape = (0usize, 0usize, 0.0f64);
        let mut max_rel = 0.0f64;
        for i in 0..runs * 2 {
            take_passes();
            let started = Instant::now();
            if (i % 2 == 0) == (i / 2 % 2 == 0) {
                let (_, batches) = client.query(&glm_sql).await?;
                fed_total.push(started.elapsed().as_secs_f64() * 1000.0);
                fed_pass.extend(take_passes());
                let b = &batches[0];
                let col = |name: &str| {
                    let i = b.schema().index_of(name).expect("column");
                    arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Float64).expect("cast")
                };
                let it = col("iterations");
                let it = it.as_any().downcast_ref::<arrow::array::Float64Array>().expect("f64");
                let n = col("n");
                let n = n.as_any().downcast_ref::<arrow::array::Float64Array>().expect("f64");
                shape = (b.num_rows(), it.value(0) as usize, n.value(0));
                let withheld = b.column(b.num_columns() - 1);
                if withheld.null_count() < withheld.len() {
                    anyhow::bail!("the model is withheld at {persons} persons: {:?}", withheld);
                }
                let fed_est = col("estimate");
                let fed_est = fed_est.as_any().downcast_ref::<arrow::array::Float64Array>().expect("f64");
                if i == 0 {
                    let pooled_batch = pooled.call("glm", &[MODEL_INPUT, FORMULA, "binomial"]).await?;
                    let _ = take_passes();
                    let pe = arrow::compute::cast(pooled_batch.column(1), &arrow::datatypes::DataType::Float64)?;
                    let pe = pe.as_any().downcast_ref::<arrow::array::Float64Array>().expect("f64");
                    for r in 0..fed_est.len() {
                        max_rel = max_rel.max(((fed_est.value(r) - pe.value(r)) / pe.value(r).abs().max(1e-12)).abs());
                    }
                }
            } else {
                pooled.call("glm", &[MODEL_INPUT, FORMULA, "binomial"]).await?;
                pool_total.push(started.elapsed().as_secs_f64() * 1000.0);
                pool_pass.extend(take_passes());
            }
        }
        let (p, iterations, n) = shape;
        let (ft, pt, fp, pp) = (median(&fed_total), median(&pool_total), median(&fed_pass), median(&pool_pass));
        println!("\nlogistic model, {p} parameters, n = {n}, hip ⋈ dors ⋈ pop ({FORMULA})");
        println!("IRLS iterations: {iterations} ({} passes of X'WX incl. the one at the solution)", iterations + 1);
        println!("{:<38} {:>12} {:>12} {:>8}", "", "federated", "pooled", "ratio");
        println!("{:<38} {:>12.1} {:>12.1} {:>7.2}x", "whole fit, ms", ft, pt, ft / pt);
        println!("{:<38} {:>12.1} {:>12.1} {:>7.2}x", "one iteration (median pass), ms", fp, pp, fp / pp);
        println!("largest relative difference of the coefficients, federated vs pooled: {max_rel:.2e}");

        // ── the other methods, whole ──
        println!("\n{:<38} {:>12} {:>12} {:>8}", "method (whole query), ms", "federated", "pooled", "ratio");
        let others: [(&str, Vec<String>); 3] = [
            ("funnel (reoperation per region)", vec![FUNNEL.to_owned()]),
            ("smr (1-year mortality per hospital)", vec![SMR.to_owned()]),
            ("kaplan_meier (ASA, 365-day bands)", vec![KM.to_owned(), "365".to_owned()]),
        ];
        for (name, args) in others {
            let method = name.split(' ').next().expect("name");
            let sql = format!(
                "SELECT * FROM {method}({})",
                args.iter()
                    .map(|a| if a.parse::<f64>().is_ok() { a.clone() } else { quoted(a) })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let (mut f, mut pl) = (vec![], vec![]);
            for i in 0..runs * 2 {
                let started = Instant::now();
                if i % 2 == 0 {
                    client.query(&sql).await?;
                    f.push(started.elapsed().as_secs_f64() * 1000.0);
                } else {
                    pooled.call(method, &refs).await?;
                    pl.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            let (f, pl) = (median(&f), median(&pl));
            println!("{name:<38} {f:>12.1} {pl:>12.1} {:>7.2}x", f / pl);
        }
        fed.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(())
}
