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
