//! The disclosure attack suite: every case in `tests/disclosure/*.toml` runs
//! against the real federation (five nodes and a coordinator over mutual
//! TLS) and must be refused by the rule it names or released with the
//! protection it names. One case a file:
//!
//! ```toml
//! attack = "what the attacker tries"
//! project = "D-agg"            # a test approval (tests/integration/common.rs)
//! sql = "SELECT …"
//! [expect]
//! refused = "disclosure.identifying_aggregate"   # or, for a released answer:
//! error = "cannot be converted"       # (instead) fails at planning, not a refusal, with this in the message
//! withheld = ["n"]             # these columns are withheld in every released row
//! reasons = ["secondary"]      # the answer withholds at least one cell for each reason
//! merged = true                # groups below the threshold were merged, keys withheld
//! exact = true                 # nothing withheld, equal to the pooled answer (controls)
//! mode = "pseudonymised_microdata"
//! rounded_to = 5               # every released count column is a multiple of 5
//! ```
//!
//! An error-oracle case adds `twin`: the same query except that its fallible
//! expression meets no existing person's row. Both must end identically (the
//! same rows and metadata, or the same refusal). With `oracle = true` the pair
//! is checked to be a real oracle on plain DataFusion (pooled data, no
//! control): there `sql` fails and `twin` does not.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use serde::Deserialize;

use crate::common;

/// The suite may grow, never silently shrink.
const MIN_CASES: usize = 40;
/// Error-oracle pairs (issue 9, channel 3).
const MIN_TWINS: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    attack: String,
    project: String,
    sql: String,
    /// The same query with the fallible expression meeting no person's row.
    twin: Option<String>,
    #[serde(default)]
    oracle: bool,
    expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    refused: Option<String>,
    /// Fails at planning (not a policy refusal) with a message containing this.
    error: Option<String>,
    #[serde(default)]
    withheld: Vec<String>,
    #[serde(default)]
    reasons: Vec<String>,
    merged: Option<bool>,
    #[serde(default)]
    exact: bool,
    mode: Option<String>,
    rounded_to: Option<i64>,
}

fn cases() -> Vec<(String, Case)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("disclosure");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().expect("name").to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&f).expect("read case");
            let case: Case = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, case)
        })
        .collect()
}

/// Checks a released answer against the case's expectations; returns what is wrong.
fn check_released(
    case: &Case,
    schema: &arrow::datatypes::Schema,
    batches: &[RecordBatch],
    pooled: Option<&[RecordBatch]>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let e = &case.expect;
    let summary: serde_json::Value = schema
        .metadata()
        .get(samkor_coordinator::disclosure::METADATA_KEY)
        .map(|m| serde_json::from_str(m).expect("summary is JSON"))
        .unwrap_or_default();
    let mode = summary["mode"].as_str().unwrap_or("none").to_owned();
    if let Some(want) = &e.mode
        && &mode != want
    {
        problems.push(format!("released as {mode}, expected {want}"));
    }
    if mode != "aggregate" {
        if e.mode.is_none() {
            problems.push(format!("released as {mode}, expected a disclosure-controlled aggregate"));
        }
        return problems;
    }
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let rows = common::rows(batches);
    let marks: Vec<&String> = rows.iter().map(|r| r.last().expect("marker")).collect();
    let merged = marks.iter().any(|m| m.starts_with('*'));
    for col in &e.withheld {
        assert!(names.contains(col), "{}: no column {col} in {names:?}", case.attack);
        for (i, m) in marks.iter().enumerate() {
            if !m.starts_with('*') && !m.split(',').any(|w| w == col) {
                problems.push(format!("row {i}: column {col} released: {:?}", rows[i]));
            }
        }
    }
    for reason in &e.reasons {
        if summary["withheld"][reason].as_u64().unwrap_or(0) == 0 {
            problems.push(format!("no cell withheld for reason {reason}: {}", summary["withheld"]));
        }
    }
    if let Some(m) = e.merged
        && m != merged
    {
        problems.push(format!("groups merged: {merged}, expected {m}"));
    }
    if e.exact {
        if marks.iter().any(|m| m.as_str() != "NULL") {
            problems.push(format!("cells withheld in a control case: {:?}", marks));
        }
        if let Some(p) = pooled {
            let mut got: Vec<Vec<String>> = rows.iter().map(|r| r[..r.len() - 1].to_vec()).collect();
            let mut want = common::rows(p);
            got.sort();
            want.sort();
            if got != want {
                problems.push(format!("differs from the pooled answer: {got:?} vs {want:?}"));
            }
        }
    }
    if let Some(base) = e.rounded_to {
        if summary["round_counts_to"].as_i64() != Some(base) {
            problems
                .push(format!("the answer says counts are rounded to {}, expected {base}", summary["round_counts_to"]));
        }
        for (c, f) in schema.fields().iter().enumerate() {
            if f.data_type() != &arrow::datatypes::DataType::Int64 {
                continue;
            }
            for b in batches {
                let a = b.column(c).as_primitive::<Int64Type>();
                for i in 0..a.len() {
                    if !a.is_null(i) && a.value(i) % base != 0 {
                        problems.push(format!("{} = {} is not rounded to {base}", f.name(), a.value(i)));
                    }
                }
            }
        }
    }
    problems
}

/// What a client sees of an outcome: the rows and schema (metadata included) of an
/// answer, or the status code and message of an error.
fn outcome(answer: &Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), samkor::client::ClientError>) -> String {
    match answer {
        Ok((schema, batches)) => {
            let mut rows = common::rows(batches);
            rows.sort();
            format!("answer {schema:?}\n{rows:?}")
        }
        Err(e) => format!("error {:?}: {e}", e.code()),
    }
}

/// An error-oracle pair must end identically; with `oracle`, plain DataFusion must tell them apart.
async fn check_twin(fed: &samkor::federation::LocalFederation, case: &Case, twin: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut client = fed.client("alice", &case.project).await.expect("client connects");
    let first = outcome(&client.query(&case.sql).await);
    let second = outcome(&client.query(twin).await);
    if first != second {
        problems.push(format!("the pair ends differently:\n  meets a person: {first}\n  meets nobody:   {second}"));
    }
    if case.oracle {
        let ctx = samkor::federation::pooled_session(&fed.dir, &case.project).await.expect("pooled");
        let plain = |sql: String| {
            let ctx = ctx.clone();
            async move { ctx.sql(&sql).await?.collect().await }
        };
        let (a, b) = (plain(case.sql.clone()).await, plain(twin.to_owned()).await);
        if a.is_ok() || b.is_err() {
            problems.push(format!(
                "not an oracle on plain DataFusion (the first query must fail there, its twin not): {:?} / {:?}",
                a.err().map(|e| e.to_string()),
                b.err().map(|e| e.to_string())
            ));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_suite() {
    run_attack_suite(common::synth_dir()).await;
}

/// The attack suite with `hip` and `pop` served from PostgreSQL: filters run
/// in the database, opt-outs and disclosure control still at node and coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_suite_with_registers_from_postgres() {
    let pg = crate::pg::Postgres::start();
    let dir = crate::pg::federation_dir(&pg, &["hip", "pop"]).await;
    run_attack_suite(dir.path()).await;
}

/// The attack suite with `lmr` and `npr` scanned on their holders' workers:
/// scans and filters there, opt-outs, pseudonyms and disclosure control at
/// node and coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_suite_with_registers_on_clusters() {
    let (dir, _workers) = crate::cluster::federation_dir(&["lmr", "npr"], 2).await;
    run_attack_suite(dir.path()).await;
}

/// Runs every attack on the federation of `fed_dir`; exact answers are
/// compared with the pooled session over the synthetic Parquet files.
async fn run_attack_suite(fed_dir: &Path) {
    let cases = cases();
    assert!(cases.len() >= MIN_CASES, "{} attack cases, fewer than {MIN_CASES}", cases.len());
    // The federation's defaults (cell-key perturbation on); control cases that
    // compare with the exact pooled answer run where it is off.
    let start = |perturbation| {
        let options = samkor::federation::LocalOptions { perturbation, ..samkor::federation::LocalOptions::default() };
        async move { samkor::federation::LocalFederation::start(fed_dir, &options).await.expect("federation starts") }
    };
    let perturbed = start(true).await;
    let exact = start(false).await;
    let mut failures = Vec::new();
    let (mut refused, mut released, mut twins) = (0, 0, 0);
    for (name, case) in &cases {
        let fed = if case.expect.exact { &exact } else { &perturbed };
        let mut client = fed.client("alice", &case.project).await.expect("client connects");
        let answer = client.query(&case.sql).await;
        let problems = match (&case.expect.refused, answer) {
            (Some(rule), Err(e)) => {
                let text = e.to_string();
                refused += 1;
                let mut p = Vec::new();
                if !text.contains(&format!("refused by rule {rule}:")) {
                    p.push(format!("refused, but not by {rule}: {text}"));
                }
                if e.code() != Some(tonic::Code::PermissionDenied) {
                    p.push(format!("a refusal is PermissionDenied, got {:?}", e.code()));
                }
                p
            }
            (Some(rule), Ok((_, b))) => {
                vec![format!("released ({} rows) instead of refused by {rule}", common::rows(&b).len())]
            }
            (None, Err(e)) => match &case.expect.error {
                Some(want)
                    if e.to_string().contains(want.as_str()) && e.code() != Some(tonic::Code::PermissionDenied) =>
                {
                    refused += 1;
                    Vec::new()
                }
                _ => vec![format!("refused or failed: {e}")],
            },
            (None, Ok(_)) if case.expect.error.is_some() => {
                vec![format!("answered instead of failing with {:?}", case.expect.error)]
            }
            (None, Ok((schema, batches))) => {
                released += 1;
                let pooled = if case.expect.exact {
                    let ctx =
                        samkor::federation::pooled_session(common::synth_dir(), &case.project).await.expect("pooled");
                    Some(ctx.sql(&case.sql).await.expect("pooled plan").collect().await.expect("pooled answer"))
                } else {
                    None
                };
                check_released(case, &schema, &batches, pooled.as_deref())
            }
        };
        let mut problems = problems;
        if let Some(twin) = &case.twin {
            twins += 1;
            problems.extend(check_twin(fed, case, twin).await);
        }
        println!("attack {name:<48} {}", if problems.is_empty() { "ok" } else { "FAIL" });
        if !problems.is_empty() {
            failures.push(format!("{name} ({}):\n  {}\n  SQL: {}", case.attack, problems.join("\n  "), case.sql));
        }
    }
    println!(
        "attack suite: {} cases ({twins} error-oracle pairs), {refused} refused, {released} released under control, {} failed",
        cases.len(),
        failures.len()
    );
    assert!(twins >= MIN_TWINS, "{twins} error-oracle pairs, fewer than {MIN_TWINS}");
    perturbed.shutdown().await;
    exact.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} attack case(s) not stopped as expected:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generalised_microdata_leaves_coarse_and_exports_to_parquet() {
    let fed = common::federation().await;
    let mut c = fed.client("alice", "D-general").await.expect("connect");
    let sql = "SELECT p.person, p.birth_date, p.sex, i.admit_date, i.main_dx \
               FROM pop.persons p JOIN npr.inpatient i ON i.person = p.person";
    let (schema, batches) = c.query(sql).await.expect("microdata released");
    assert!(schema.metadata()[samkor_coordinator::disclosure::METADATA_KEY].contains("pseudonymised_microdata"));
    let rows = common::rows(&batches);
    assert!(rows.len() > 100, "the linked data set has rows");
    for r in &rows {
        assert!(r[1].ends_with("-01-01"), "birth date generalised to the year: {r:?}");
        assert!(r[3].ends_with("-01"), "admission generalised to the month: {r:?}");
        assert!(r[4].chars().count() <= 3, "diagnosis generalised to 3 characters: {r:?}");
        assert_eq!(r[0].len(), 32, "the person only as the project pseudonym");
    }
    // A filter on an exact birth date sees the generalised value only.
    let pooled = samkor::federation::pooled_session(&fed.dir, "D-general").await.expect("pooled");
    let exact = pooled
        .sql("SELECT birth_date FROM pop.persons WHERE extract(doy FROM birth_date) > 40 LIMIT 1")
        .await
        .expect("plan")
        .collect()
        .await
        .expect("a birth date");
    let day = common::rows(&exact)[0][0].clone();
    let (_, found) =
        c.query(&format!("SELECT person FROM pop.persons WHERE birth_date = DATE '{day}'")).await.expect("answer");
    assert_eq!(common::rows(&found).len(), 0, "no row matches the exact date {day}");
    // Grouping by a generalised birth date is an ordinary characteristic.
    let (_, years) =
        c.query("SELECT birth_date, count(*) AS n FROM pop.persons GROUP BY birth_date").await.expect("answer");
    assert!(common::rows(&years).iter().all(|r| r[0].ends_with("-01-01") || r[0] == "NULL"));

    // Export through the CLI as Parquet: the same rows, the disclosure metadata kept.
    let files = samkor::federation::identity_files(&fed.dir, "alice");
    let out = tempfile::Builder::new().suffix(".parquet").tempfile().expect("temp file");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_samkor"))
        .args([
            "query",
            "--coordinator",
            &fed.coordinator_addr(),
            "--project",
            "D-general",
            "--format",
            "parquet",
            "--out",
        ])
        .arg(out.path())
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .arg("--ca")
        .arg(&files.ca)
        .arg(sql)
        .status()
        .await
        .expect("samkor query runs");
    assert!(status.success());
    let file = std::fs::File::open(out.path()).expect("parquet written");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet");
    assert!(reader.schema().metadata().contains_key(samkor_coordinator::disclosure::METADATA_KEY));
    let n: usize = reader.build().expect("reader").map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(n, rows.len());
    fed.shutdown().await;
}

/// The guards of `coordinator/src/infallible.rs` travel to the node in its SQL
/// (TRY_CAST, nullif), and the node answers with NULLs where they apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_against_data_errors_reach_the_nodes() {
    let fed = common::federation().await;
    let mut client = fed.client("alice", "D-micro").await.expect("connect");
    let sql = "SELECT region, count(*) AS n, count(CAST(side AS INT)) AS sides, sum(100 / (asa - 1)) AS q \
               FROM hip.operations GROUP BY region";
    let (_, b) = client.query(&format!("EXPLAIN {sql}")).await.expect("explain");
    let text = arrow::util::pretty::pretty_format_batches(&b).expect("format").to_string();
    let hip_sql = text.lines().find(|l| l.contains("name=hip")).unwrap_or_else(|| panic!("hip sub-query: {text}"));
    assert!(hip_sql.contains("TRY_CAST"), "the cast reaches the node as TRY_CAST: {hip_sql}");
    assert!(hip_sql.contains("nullif"), "the divisor reaches the node guarded: {hip_sql}");
    // Every side is L or R: no cast succeeds, and asa = 1 divides by zero, yet the query answers.
    let (_, b) = client.query(sql).await.expect("answered");
    let rows = common::rows(&b);
    assert!(!rows.is_empty());
    for r in &rows {
        assert!(r[2] == "0" || r[2] == "NULL", "CAST(side AS INT) is NULL for every row: {r:?}");
    }
    fed.shutdown().await;
}
