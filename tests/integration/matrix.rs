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
    /// The disclosure or approval rule that must refuse the case.
    refused: Option<String>,
    /// Columns released as protected quantiles (the mean of the values of
    /// at least k persons around the rank): not compared with the exact quantile.
    protected: Vec<String>,
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
                refused: None,
                protected: Vec::new(),
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
        if in_header && let Some(rule) = trimmed.strip_prefix("-- refused:") {
            case.refused = Some(rule.trim().to_owned());
            continue;
        }
        if in_header && let Some(columns) = trimmed.strip_prefix("-- protected:") {
            case.protected = columns.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect();
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
    /// Per row, the cells withheld by disclosure control (federated answers only).
    withheld: Vec<Vec<bool>>,
    /// Groups below the threshold were merged into one withheld row (dropped here).
    merged: bool,
}

fn render(columns: Vec<String>, batches: &[RecordBatch]) -> Result<Answer, String> {
    let rows = common::rows(batches);
    let withheld = vec![vec![false; columns.len()]; rows.len()];
    Ok(Answer { columns, rows, withheld, merged: false })
}

async fn run_federated(client: &mut Client, sql: &str) -> Result<Answer, String> {
    let (schema, batches) = client.query(sql).await.map_err(|e| format!("{e} (code {:?})", e.code()))?;
    let mut answer = render(schema.fields().iter().map(|f| f.name().clone()).collect(), &batches)?;
    let controlled = schema
        .metadata()
        .get(samkor_coordinator::disclosure::METADATA_KEY)
        .is_some_and(|m| m.contains("\"aggregate\""));
    if !controlled {
        return Ok(answer);
    }
    // The last column marks the withheld cells of each row; a row marked `*`
    // stands for the groups below the threshold whose keys were withheld too.
    answer.columns.pop();
    let mut rows = Vec::new();
    let mut withheld = Vec::new();
    for mut row in std::mem::take(&mut answer.rows) {
        let mark = row.pop().unwrap_or_default();
        if mark.starts_with('*') {
            answer.merged = true;
            continue;
        }
        let names: Vec<&str> = if mark == "NULL" { Vec::new() } else { mark.split(',').collect() };
        withheld.push(answer.columns.iter().map(|c| names.contains(&c.as_str())).collect());
        rows.push(row);
    }
    answer.rows = rows;
    answer.withheld = withheld;
    Ok(answer)
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

/// Whether the federation perturbs its answers (the cell-key method).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tolerance {
    /// Perturbation off: every released cell equals the pooled one up to floating-point noise.
    Exact,
    /// The federation's default: every case is answered (or refused) as in the
    /// exact run; the cells that moved are counted.
    Perturbed,
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

/// Whether a federated row agrees with a pooled row on every released cell.
fn row_agrees(fed: &[String], withheld: &[bool], pooled: &[String]) -> bool {
    fed.iter().zip(pooled).zip(withheld).all(|((a, b), w)| *w || cells_equal(a, b))
}

/// Why two answers differ, or `None` when they agree. Cells withheld by
/// disclosure control are not compared; groups merged into the withheld row
/// must be exactly the pooled rows left unmatched.
/// A HAVING clause is evaluated on released cells: a group whose cell is
/// withheld (null) does not pass it, so pooled groups may be missing.
fn having(sql: &str) -> bool {
    sql.to_uppercase().contains("HAVING")
}

fn compare(ordered: bool, federated: &Answer, pooled: &Answer, subset: bool) -> Option<String> {
    if federated.columns.len() != pooled.columns.len() {
        return Some(format!(
            "column count differs: federated {} {:?}, pooled {} {:?}",
            federated.columns.len(),
            federated.columns,
            pooled.columns.len(),
            pooled.columns
        ));
    }
    let rows_ok = if federated.merged {
        federated.rows.len() < pooled.rows.len()
    } else if subset {
        federated.rows.len() <= pooled.rows.len()
    } else {
        federated.rows.len() == pooled.rows.len()
    };
    if !rows_ok {
        return Some(format!(
            "row count differs: federated {}{}, pooled {}",
            federated.rows.len(),
            if federated.merged { " (+ merged withheld groups)" } else { "" },
            pooled.rows.len()
        ));
    }
    let mut diffs = Vec::new();
    if ordered {
        // Rows come in the same order; merged groups are skipped in the pooled answer.
        let mut p = 0;
        for (i, (row, w)) in federated.rows.iter().zip(&federated.withheld).enumerate() {
            while p < pooled.rows.len() && !row_agrees(row, w, &pooled.rows[p]) && (federated.merged || subset) {
                p += 1;
            }
            match pooled.rows.get(p) {
                Some(prow) if row_agrees(row, w, prow) => p += 1,
                Some(prow) => {
                    diffs.push(format!("row {i}: federated {row:?}, pooled {prow:?}"));
                    p += 1;
                }
                None => diffs.push(format!("row {i}: federated {row:?} has no pooled counterpart in order")),
            }
        }
    } else {
        let mut a: Vec<(&Vec<String>, &Vec<bool>)> = federated.rows.iter().zip(&federated.withheld).collect();
        a.sort_by_cached_key(|(r, _)| sort_key(r));
        let mut left: Vec<&Vec<String>> = pooled.rows.iter().collect();
        left.sort_by_cached_key(|r| sort_key(r));
        for (row, w) in a {
            match left.iter().position(|p| row_agrees(row, w, p)) {
                Some(i) => {
                    left.remove(i);
                }
                None => diffs.push(format!("federated row {row:?} matches no pooled row")),
            }
        }
    }
    if diffs.is_empty() {
        return None;
    }
    let total = diffs.len();
    diffs.truncate(5);
    Some(format!("{total} row(s) differ; first: {}", diffs.join("; ")))
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
    run_matrix(common::synth_dir(), common::synth_dir(), Tolerance::Exact).await;
}

/// The same cases with the cell-key perturbation on (the federation's
/// default): every case is answered or refused as without it; the run
/// reports how many released cells moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perturbed_federation_answers_every_case() {
    run_matrix(common::synth_dir(), common::synth_dir(), Tolerance::Perturbed).await;
}

/// The same matrix with `hip` served from PostgreSQL (loaded from the same
/// Parquet), against the pooled session over the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_with_hip_from_postgres_agrees_with_pooled_files() {
    let pg = crate::pg::Postgres::start();
    let dir = crate::pg::federation_dir(&pg, &["hip"]).await;
    run_matrix(dir.path(), common::synth_dir(), Tolerance::Exact).await;
}

/// The same matrix with `lmr` and `npr` scanned by their holders' own
/// workers (`samkor worker` processes, `crate::cluster`), against the pooled
/// session over the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_with_lmr_and_npr_on_clusters_agrees_with_pooled_files() {
    let (dir, _workers) = crate::cluster::federation_dir(&["lmr", "npr"], 2).await;
    run_matrix(dir.path(), common::synth_dir(), Tolerance::Exact).await;
}

/// Runs every case on the federation of `fed_dir` and on the pooled session of `pooled_dir`.
async fn run_matrix(fed_dir: &Path, pooled_dir: &Path, tolerance: Tolerance) {
    let cases = load_cases();
    assert!(
        cases.len() >= MIN_CASES,
        "the matrix holds {} cases, fewer than {MIN_CASES}: cases were lost from {}",
        cases.len(),
        matrix_dir().display()
    );

    let options = samkor::federation::LocalOptions {
        perturbation: tolerance == Tolerance::Perturbed,
        ..samkor::federation::LocalOptions::default()
    };
    let fed = samkor::federation::LocalFederation::start(fed_dir, &options).await.expect("federation starts");
    let mut client = fed.client("alice", PROJECT).await.expect("client connects to the coordinator");
    let pooled = samkor::federation::pooled_session(pooled_dir, PROJECT).await.expect("pooled session opens");

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut known = Vec::new();
    let mut withheld_cells = 0;
    let (mut released_cells, mut moved_cells) = (0, 0);
    for case in &cases {
        let t = Instant::now();
        let mut federated = run_federated(&mut client, &case.sql).await;
        if let Ok(a) = &federated {
            withheld_cells += a.withheld.iter().flatten().filter(|w| **w).count();
        }
        if let Ok(a) = &mut federated {
            for (i, name) in a.columns.iter().enumerate() {
                if case.protected.contains(name) {
                    a.withheld.iter_mut().for_each(|w| w[i] = true);
                }
            }
        }
        let local = run_pooled(&pooled, &case.sql).await;
        let problem = match (&federated, &local, &case.refused) {
            (Err(e), Ok(_), Some(rule)) if e.contains(&format!("refused by rule {rule}:")) => None,
            (_, _, Some(rule)) => Some(format!("the case must be refused by rule {rule}")),
            (Ok(a), Ok(b), None) => {
                let (released, moved) = moved(a, b);
                released_cells += released;
                moved_cells += moved;
                match tolerance {
                    Tolerance::Exact => compare(case.ordered, a, b, having(&case.sql)),
                    // Perturbed cells reorder LIMITs and move small means: the
                    // closeness of values is the perturbation table's (policies
                    // unit tests); here every case must still be answered.
                    Tolerance::Perturbed => None,
                }
            }
            (Err(_), Ok(_), None) => Some("the federation failed".to_owned()),
            (Ok(_), Err(_), None) => Some("the pooled session failed (the case itself is broken)".to_owned()),
            (Err(_), Err(_), None) => Some("both sides failed (the case itself is broken)".to_owned()),
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
        "matrix ({tolerance:?}): {} cases in {:.1} s: {} failed, {} marked known-failure, {} refused by rule as marked, {} cells withheld by disclosure control, {moved_cells} of {released_cells} released cells differ from the exact answer",
        cases.len(),
        started.elapsed().as_secs_f64(),
        failures.len(),
        cases.iter().filter(|c| c.known_failure.is_some()).count(),
        cases.iter().filter(|c| c.refused.is_some()).count(),
        withheld_cells
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

/// Released cells of an answer, and how many of them differ from the exact
/// answer (rows matched in order of their keys; answers of other shapes count none).
fn moved(federated: &Answer, pooled: &Answer) -> (usize, usize) {
    if federated.rows.len() != pooled.rows.len() || federated.merged {
        return (0, 0);
    }
    let mut a: Vec<(&Vec<String>, &Vec<bool>)> = federated.rows.iter().zip(&federated.withheld).collect();
    a.sort_by_cached_key(|(r, _)| sort_key(r));
    let mut b: Vec<&Vec<String>> = pooled.rows.iter().collect();
    b.sort_by_cached_key(|r| sort_key(r));
    let (mut released, mut moved) = (0, 0);
    for ((row, w), prow) in a.into_iter().zip(b) {
        for ((x, y), w) in row.iter().zip(prow).zip(w) {
            if !*w {
                released += 1;
                moved += usize::from(!cells_equal(x, y));
            }
        }
    }
    (released, moved)
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
