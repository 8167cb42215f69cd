//! Correctness matrix: every case in `tests/matrix/*.sql` runs through the
//! real federation (coordinator + five nodes over mTLS) and through the same
//! Parquet pooled in one local DataFusion session; the answers must agree.
//!
//! ```text
//!   case SQL ──▶ Client ─▶ coordinator ─▶ nodes (sub-queries) ──▶ answer A ─┐
//!            └─▶ pooled_session (one SessionContext, same tables) ─▶ answer B ─┴─▶ compare
//! ```
//!
//! The file format is described at the top of `tests/matrix/queries.sql`.
//! One run reports every failing case (both answers, and the coordinator's
//! `EXPLAIN` so the SQL sent to each node is visible); cases marked
//! `-- known-failure: <reason>` are run and reported but never fail the test.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use samkor::client::Client;

use crate::common;

/// The matrix may grow, never silently shrink.
const MIN_CASES: usize = 45;
/// Project both sides pseudonymise for (the pseudonyms must agree for joins).
const PROJECT: &str = "matrix";
/// Rows of each answer shown for a failing case.
const SHOW_ROWS: usize = 40;
const ABS_TOLERANCE: f64 = 1e-9;
const REL_TOLERANCE: f64 = 1e-9;

/// One query of the matrix.
#[derive(Debug)]
struct Case {
    name: String,
    /// `file:line` of the header, for messages.
    origin: String,
    sql: String,
    /// The query has a total ORDER BY: rows must come in the same order.
    ordered: bool,
    /// Why the federation is known to get this case wrong.
    known_failure: Option<String>,
}

fn matrix_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("matrix")
}

/// Reads every `*.sql` file of the matrix directory, in name order.
fn load_cases() -> Vec<Case> {
    let dir = matrix_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("matrix directory {}: {e}", dir.display()))
        .map(|e| e.expect("matrix directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file.file_name().expect("file name").to_string_lossy().into_owned();
        cases.extend(parse_cases(&name, &text));
    }
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    for pair in names.windows(2) {
        assert_ne!(pair[0], pair[1], "case name {:?} appears twice in the matrix", pair[0]);
    }
    cases
}

/// Splits one file into cases: a `-- case: <name>` line starts a case; the
/// `-- ordered` and `-- known-failure: <reason>` lines right after it qualify
/// it; other comment lines are dropped; the rest, up to the next header, is
/// the SQL (a trailing `;` is removed). Text before the first header is the
/// file's documentation.
fn parse_cases(file: &str, text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut in_header = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("-- case:") {
            let name = name.trim();
            assert!(!name.is_empty(), "{file}:{}: a case needs a name", i + 1);
            cases.push(Case {
                name: name.to_owned(),
                origin: format!("{file}:{}", i + 1),
                sql: String::new(),
                ordered: false,
                known_failure: None,
            });
            in_header = true;
            continue;
        }
        let Some(case) = cases.last_mut() else { continue };
        if in_header && trimmed == "-- ordered" {
            case.ordered = true;
            continue;
        }
        if in_header && let Some(reason) = trimmed.strip_prefix("-- known-failure:") {
            case.known_failure = Some(reason.trim().to_owned());
            continue;
        }
        if trimmed.starts_with("--") {
            continue;
        }
        if !trimmed.is_empty() {
            in_header = false;
        }
        case.sql.push_str(line);
        case.sql.push('\n');
    }
    for case in &mut cases {
        let sql = case.sql.trim().trim_end_matches(';').trim_end();
        assert!(!sql.is_empty(), "{}: case {} has no SQL", case.origin, case.name);
        assert!(!sql.contains(';'), "{}: case {} holds more than one statement", case.origin, case.name);
        case.sql = sql.to_owned();
    }
    cases
}

/// An answer rendered as text, one `Vec<String>` per row.
#[derive(Debug)]
struct Answer {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn render(columns: Vec<String>, batches: &[RecordBatch]) -> Result<Answer, String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot render the answer: {e}"))?;
        for row in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(row).to_string()).collect());
        }
    }
    Ok(Answer { columns, rows })
}

async fn run_federated(client: &mut Client, sql: &str) -> Result<Answer, String> {
    let (schema, batches) = client.query(sql).await.map_err(|e| format!("{e} (code {:?})", e.code()))?;
    render(schema.fields().iter().map(|f| f.name().clone()).collect(), &batches)
}

async fn run_pooled(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<Answer, String> {
    let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
    let columns = df.schema().fields().iter().map(|f| f.name().clone()).collect();
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    render(columns, &batches)
}

fn as_float(s: &str) -> Option<f64> {
    s.parse::<f64>().ok()
}

fn cells_equal(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (as_float(a), as_float(b)) {
        (Some(x), Some(y)) => {
            let diff = (x - y).abs();
            diff <= ABS_TOLERANCE || diff <= REL_TOLERANCE * x.abs().max(y.abs())
        }
        _ => false,
    }
}

/// Sort key of a row: floats rounded so that noise in the last digits does
/// not reorder rows between the two answers.
fn sort_key(row: &[String]) -> Vec<String> {
    row.iter()
        .map(|c| match as_float(c) {
            Some(x) if c.contains('.') || c.contains('e') => format!("{x:.6e}"),
            _ => c.clone(),
        })
        .collect()
}

/// Why two answers differ, or `None` when they agree.
fn compare(ordered: bool, federated: &Answer, pooled: &Answer) -> Option<String> {
    if federated.columns.len() != pooled.columns.len() {
        return Some(format!(
            "column count differs: federated {} {:?}, pooled {} {:?}",
            federated.columns.len(),
            federated.columns,
            pooled.columns.len(),
            pooled.columns
        ));
    }
    if federated.rows.len() != pooled.rows.len() {
        return Some(format!("row count differs: federated {}, pooled {}", federated.rows.len(), pooled.rows.len()));
    }
    let (mut a, mut b): (Vec<&Vec<String>>, Vec<&Vec<String>>) =
        (federated.rows.iter().collect(), pooled.rows.iter().collect());
    if !ordered {
        a.sort_by_cached_key(|r| sort_key(r));
        b.sort_by_cached_key(|r| sort_key(r));
    }
    let mut diffs = Vec::new();
    for (i, (ra, rb)) in a.iter().zip(&b).enumerate() {
        for (j, (ca, cb)) in ra.iter().zip(rb.iter()).enumerate() {
            if !cells_equal(ca, cb) {
                let row = if ordered { "row" } else { "sorted row" };
                diffs.push(format!("{row} {i}, column {j} ({}): federated {ca:?}, pooled {cb:?}", pooled.columns[j]));
            }
        }
    }
    if diffs.is_empty() {
        return None;
    }
    let total = diffs.len();
    diffs.truncate(5);
    Some(format!("{total} cell(s) differ; first: {}", diffs.join("; ")))
}

fn show(answer: &Result<Answer, String>) -> String {
    match answer {
        Err(e) => format!("    ERROR: {e}\n"),
        Ok(a) => {
            let mut s = format!("    {} row(s) | {}\n", a.rows.len(), a.columns.join(" | "));
            for row in a.rows.iter().take(SHOW_ROWS) {
                let _ = writeln!(s, "    {}", row.join(" | "));
            }
            if a.rows.len() > SHOW_ROWS {
                let _ = writeln!(s, "    … {} more", a.rows.len() - SHOW_ROWS);
            }
            s
        }
    }
}

/// The coordinator's plan for `sql`, for a failing case: shows what each node was sent.
async fn explain(client: &mut Client, sql: &str) -> String {
    match run_federated(client, &format!("EXPLAIN {sql}")).await {
        Err(e) => format!("    EXPLAIN failed: {e}\n"),
        Ok(a) => {
            let mut s = String::new();
            for row in &a.rows {
                let _ = writeln!(s, "    [{}]", row.first().map(String::as_str).unwrap_or_default());
                for line in row.get(1).map(String::as_str).unwrap_or_default().lines() {
                    let _ = writeln!(s, "      {line}");
                }
            }
            s
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_agrees_with_pooled_session() {
    let cases = load_cases();
    assert!(
        cases.len() >= MIN_CASES,
        "the matrix holds {} cases, fewer than {MIN_CASES}: cases were lost from {}",
        cases.len(),
        matrix_dir().display()
    );

    let fed = common::federation().await;
    let mut client = fed.client("alice", PROJECT).await.expect("client connects to the coordinator");
    let pooled = samkor::federation::pooled_session(&fed.dir, PROJECT).await.expect("pooled session opens");

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut known = Vec::new();
    for case in &cases {
        let t = Instant::now();
        let federated = run_federated(&mut client, &case.sql).await;
        let local = run_pooled(&pooled, &case.sql).await;
        let problem = match (&federated, &local) {
            (Ok(a), Ok(b)) => compare(case.ordered, a, b),
            (Err(_), Ok(_)) => Some("the federation failed".to_owned()),
            (Ok(_), Err(_)) => Some("the pooled session failed (the case itself is broken)".to_owned()),
            (Err(_), Err(_)) => Some("both sides failed (the case itself is broken)".to_owned()),
        };
        let status = match (&problem, &case.known_failure) {
            (None, None) => "ok",
            (None, Some(_)) => "ok (marked known-failure: remove the marker)",
            (Some(_), None) => "FAIL",
            (Some(_), Some(_)) => "known failure",
        };
        println!("matrix {:<40} {:>6} ms  {status}", case.name, t.elapsed().as_millis());
        let Some(problem) = problem else {
            if case.known_failure.is_some() {
                known.push(format!("{} ({}): now passes; remove its `-- known-failure` line", case.name, case.origin));
            }
            continue;
        };
        let mut report = format!("case {} ({}): {problem}\n  SQL:\n", case.name, case.origin);
        for line in case.sql.lines() {
            let _ = writeln!(report, "    {line}");
        }
        let _ = write!(report, "  federated:\n{}  pooled:\n{}", show(&federated), show(&local));
        let _ = write!(report, "  coordinator EXPLAIN:\n{}", explain(&mut client, &case.sql).await);
        match &case.known_failure {
            Some(reason) => known.push(format!("{} ({}): known failure: {reason}\n{report}", case.name, case.origin)),
            None => failures.push(report),
        }
    }
    println!(
        "matrix: {} cases in {:.1} s: {} failed, {} marked known-failure",
        cases.len(),
        started.elapsed().as_secs_f64(),
        failures.len(),
        cases.iter().filter(|c| c.known_failure.is_some()).count()
    );
    for k in &known {
        println!("matrix known-failure: {k}");
    }
    fed.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} of {} matrix cases disagree between the federation and the pooled session:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn matrix_files_parse() {
    let cases = parse_cases(
        "example.sql",
        "-- documentation\n-- case: a\n-- ordered\nSELECT 1\nORDER BY 1;\n\n-- case: b\n-- known-failure: why\n-- a comment\nSELECT 2\n",
    );
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].name, "a");
    assert!(cases[0].ordered);
    assert_eq!(cases[0].sql, "SELECT 1\nORDER BY 1");
    assert_eq!(cases[1].known_failure.as_deref(), Some("why"));
    assert!(!cases[1].ordered);
    assert_eq!(cases[1].sql, "SELECT 2");
    assert!(cells_equal("0.30000000000000004", "0.3"));
    assert!(!cells_equal("0.3001", "0.3"));
    assert!(!cells_equal("Skåne", "Halland"));
}
