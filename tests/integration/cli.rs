//! The `samkor` binary as a newcomer meets it: exit codes, error messages
//! and the first lines of its commands, run as a real process.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the built `samkor` binary with `args`, without a terminal.
pub fn samkor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_samkor"))
        .args(args)
        .env_remove("SAMKOR_LOG")
        .env_remove("SAMKOR_CERT")
        .env_remove("SAMKOR_KEY")
        .env_remove("SAMKOR_CA")
        .env_remove("SAMKOR_PROJECT")
        .env_remove("SAMKOR_COORDINATOR")
        .output()
        .expect("run samkor")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails with both streams when the command did not succeed.
pub fn success(args: &[&str]) -> String {
    let out = samkor(args);
    assert!(
        out.status.success(),
        "samkor {args:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The one-line message of a failing command (exit code 1, nothing on standard output).
pub fn failure(args: &[&str]) -> String {
    let out = samkor(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "samkor {args:?} should fail:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes without a terminal: {stderr:?}"
    );
    stderr
}

/// `samkor query` arguments for `user` of the shared test federation.
pub fn query_args(addr: &str, user: &str, project: &str, sql: &str) -> Vec<String> {
    let certs = crate::common::synth_dir().join("certs");
    let file = |name: String| certs.join(name).to_str().expect("utf-8 path").to_owned();
    let mut args: Vec<String> = ["query", "--coordinator", addr, "--project", project].map(str::to_owned).to_vec();
    args.extend(["--cert".into(), file(format!("{user}.pem")), "--key".into(), file(format!("{user}.key"))]);
    args.extend(["--ca".into(), file("ca.pem".into()), sql.into()]);
    args
}

fn audit_log(dir: &Path) -> std::path::PathBuf {
    use samkor_policies::audit::{AuditEntry, AuditLog};
    let path = dir.join("coordinator.log");
    let log = AuditLog::open(&path, "coordinator").expect("open");
    log.append(
        AuditEntry::accepted("alice", "q1", "SELECT count(*) FROM hip.operations")
            .project("P-1")
            .released(1, 1, 0),
    )
    .expect("append");
    log.append(
        AuditEntry::refused("bob", "q2", "SELECT 1", "approval.member", "not a member")
            .project("P-1"),
    )
    .expect("append");
    path
}

#[test]
fn audit_report_covers_the_whole_log_without_since() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = audit_log(dir.path());
    let log = log.to_str().expect("utf-8 path");
    let whole = success(&["audit", "report", log]);
    let period = whole.lines().nth(1).expect("period line");
    assert!(
        period.starts_with("Period: the whole log (2 of 2 records, "),
        "{whole}"
    );
    assert!(
        whole
            .lines()
            .any(|l| l.contains("alice") && l.contains("P-1")),
        "{whole}"
    );
    let narrowed = success(&[
        "audit",
        "report",
        log,
        "--since",
        "2000-01-01",
        "--until",
        "2000-02-01",
    ]);
    assert!(narrowed.contains("Period: from 2000-01-01 00:00:00 UTC to before 2000-02-02 00:00:00 UTC (0 of 2 records)"), "a date includes its day: {narrowed}");
    let bad = failure(&["audit", "report", log, "--until", "soon"]);
    assert!(
        bad.starts_with("samkor: --until \"soon\": expected an RFC 3339 time"),
        "{bad}"
    );
}

/// Mistakes in the SQL come back as one line without Rust debug formatting,
/// with the position where DataFusion knows it: the same text over Flight SQL
/// (any client) and from `samkor query` (exit code 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_mistakes_are_one_clean_line_over_flight_sql_and_in_the_cli() {
    let fed = crate::common::federation().await;
    let mut client = fed.client("alice", "G-narrow").await.expect("connect");
    let cases = [
        ("SELEC 1", "SQL syntax error: Expected: an SQL statement, found: SELEC at Line: 1, Column: 1"),
        (
            "SELECT nope FROM hip.operations",
            "column nope not found in hip.operations; valid columns: person, op_date, hospital, region, fixation",
        ),
        (
            "SELECT region FROM hip.nothing",
            "table hip.nothing not found at Line: 1, Column: 20; the tables of project G-narrow: dors.deaths, hip.operations",
        ),
        ("SELECT 1/0", "division by zero"),
    ];
    for (sql, want) in cases {
        let err = client.query(sql).await.expect_err(sql);
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{sql}: {err}");
        assert_eq!(err.to_string(), want, "{sql}");
    }
    // Joined tables: the columns are named with their table's alias; none the approval does not grant.
    let err = client
        .query("SELECT o.nope FROM hip.operations o JOIN dors.deaths d ON d.person = o.person")
        .await
        .expect_err("unknown column");
    assert_eq!(
        err.to_string(),
        "column o.nope not found; valid columns: o.person, o.op_date, o.hospital, o.region, o.fixation, d.person, d.death_date"
    );
    // A value that does not convert: named, never quoted, and not an internal error.
    let err = client.query("SELECT CAST(hospital AS INT) AS h, count(*) FROM hip.operations GROUP BY 1").await.expect_err("cast");
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("cannot be converted") && err.to_string().contains("value is not shown"), "{err}");
    assert!(!err.to_string().contains("Hospital") && !err.to_string().contains("sjukhus"), "no data value: {err}");

    let args = query_args(&fed.coordinator_addr(), "alice", "G-narrow", "SELEC 1");
    let out = tokio::task::spawn_blocking(move || failure(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("cli");
    assert_eq!(out, "samkor: SQL syntax error: Expected: an SQL statement, found: SELEC at Line: 1, Column: 1\n");
    fed.shutdown().await;
}
