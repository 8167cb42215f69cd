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
    assert!(out.status.success(), "samkor {args:?} failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
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
    assert!(!stderr.contains('\u{1b}'), "no colour codes without a terminal: {stderr:?}");
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
        AuditEntry::accepted("alice", "q1", "SELECT count(*) FROM hip.operations").project("P-1").released(1, 1, 0),
    )
    .expect("append");
    log.append(AuditEntry::refused("bob", "q2", "SELECT 1", "approval.member", "not a member").project("P-1"))
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
    assert!(period.starts_with("Period: the whole log (2 of 2 records, "), "{whole}");
    assert!(whole.lines().any(|l| l.contains("alice") && l.contains("P-1")), "{whole}");
    let narrowed = success(&["audit", "report", log, "--since", "2000-01-01", "--until", "2000-02-01"]);
    assert!(
        narrowed.contains("Period: from 2000-01-01 00:00:00 UTC to before 2000-02-02 00:00:00 UTC (0 of 2 records)"),
        "a date includes its day: {narrowed}"
    );
    let bad = failure(&["audit", "report", log, "--until", "soon"]);
    assert!(bad.starts_with("samkor: --until \"soon\": expected an RFC 3339 time"), "{bad}");
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
    ];
    for (sql, want) in cases {
        let err = client.query(sql).await.expect_err(sql);
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{sql}: {err}");
        assert_eq!(err.to_string(), want, "{sql}");
    }
    // A constant that cannot be evaluated fails at planning, whatever the data, by a rule.
    let err = client.query("SELECT 1/0").await.expect_err("1/0");
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    assert!(err.to_string().starts_with("refused by rule disclosure.fallible_expression: "), "{err}");
    // Joined tables: the columns are named with their table's alias; none the approval does not grant.
    let err = client
        .query("SELECT o.nope FROM hip.operations o JOIN dors.deaths d ON d.person = o.person")
        .await
        .expect_err("unknown column");
    assert_eq!(
        err.to_string(),
        "column o.nope not found; valid columns: o.person, o.op_date, o.hospital, o.region, o.fixation, d.person, d.death_date"
    );
    // A value that does not convert becomes NULL (a cast over data never fails on a value).
    let (_, got) = client
        .query("SELECT CAST(hospital AS INT) AS h, count(*) FROM hip.operations GROUP BY 1")
        .await
        .expect("a cast over data is answered");
    assert!(crate::common::rows(&got).iter().all(|r| r[0] == "NULL"), "no hospital name converts to a number");

    let args = query_args(&fed.coordinator_addr(), "alice", "G-narrow", "SELEC 1");
    let out = tokio::task::spawn_blocking(move || failure(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("cli");
    assert_eq!(out, "samkor: SQL syntax error: Expected: an SQL statement, found: SELEC at Line: 1, Column: 1\n");
    fed.shutdown().await;
}

/// `samkor demo --serve`: its first lines say where its files are and how to
/// remove them; the servers' log goes to a file there, so the showcase and
/// the snippet to copy carry no log lines or colour codes; Ctrl-C ends it
/// cleanly; `--clean` removes the directory, and only a demo directory.
#[test]
fn demo_says_where_its_files_are_and_keeps_server_logs_out_of_the_terminal() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().expect("tempdir");
    let demo = tmp.path().join("demo");
    let demo_arg = demo.to_str().expect("utf-8 path");
    let mut child = Command::new(env!("CARGO_BIN_EXE_samkor"))
        .args(["demo", "--dir", demo_arg, "--persons", "3000", "--serve"])
        .env_remove("SAMKOR_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("samkor demo");
    let mut stdout = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read");
        let done = line.starts_with("Press Ctrl-C to stop.");
        stdout.push(line);
        if done {
            break;
        }
    }
    let interrupted = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(interrupted.success());
    let out = child.wait_with_output().expect("demo ends");
    let stdout = stdout.join("\n");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "the demo stops cleanly on Ctrl-C:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Press Ctrl-C to stop."), "the demo got to serving:\n{stdout}\n{stderr}");
    let head: Vec<&str> = stdout.lines().take(4).collect();
    assert!(head[0].starts_with("Generating a synthetic federation of 3000 persons"), "{stdout}");
    assert!(head.iter().any(|l| l.contains(&format!("`samkor demo --dir {demo_arg} --clean`"))), "{stdout}");
    let log = demo.join("demo.log");
    assert!(head.iter().any(|l| l.contains(&format!("Server logs: {}", log.display()))), "{stdout}");
    for (name, stream) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!stream.contains(" INFO "), "no server log lines on {name}:\n{stream}");
        assert!(!stream.contains('\u{1b}'), "no colour codes on {name} without a terminal:\n{stream}");
    }
    let snippet = stdout.split("Connect from Python").nth(1).expect("the Python snippet");
    assert!(
        snippet.contains("grpc+tls://127.0.0.1:") && snippet.contains("samkor query --coordinator 127.0.0.1:"),
        "{snippet}"
    );
    let server_log = std::fs::read_to_string(&log).expect("the servers' log");
    assert!(server_log.contains(" INFO ") && server_log.contains("node serving over mutual TLS"), "{server_log}");
    assert!(!server_log.contains('\u{1b}'), "no colour codes in the log file");

    let other = tmp.path().join("not-a-demo");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("thesis.tex"), "keep me").expect("write");
    let refused = failure(&["demo", "--dir", other.to_str().expect("utf-8"), "--clean"]);
    assert!(refused.contains("no READY stamp"), "{refused}");
    assert!(other.join("thesis.tex").exists());
    let removed = success(&["demo", "--dir", demo_arg, "--clean"]);
    assert!(removed.starts_with(&format!("removed {demo_arg} (")), "{removed}");
    assert!(!demo.exists());
}

/// What a newcomer gets wrong first when connecting: each says what is wrong
/// and what to check, once, with exit code 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_mistakes_say_what_to_check() {
    let fed = crate::common::federation().await;
    let addr = fed.coordinator_addr();
    let nobody = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").to_string()
    };
    let certs = crate::common::synth_dir().join("certs");
    let rogue = crate::common::rogue_dir();
    let path = |p: std::path::PathBuf| p.to_str().expect("utf-8 path").to_owned();
    let with = |args: Vec<String>, flag: &str, value: String| {
        let mut args = args;
        let at = args.iter().position(|a| a == flag).expect("flag") + 1;
        args[at] = value;
        args
    };
    let base = query_args(&addr, "alice", "P-1", "SELECT 1");
    let cases = [
        (
            query_args(&nobody, "alice", "P-1", "SELECT 1"),
            "nothing accepts connections there: is the coordinator running",
        ),
        (
            query_args("localhost", "alice", "P-1", "SELECT 1"),
            "invalid coordinator address localhost: expected HOST:PORT",
        ),
        (
            with(
                with(base.clone(), "--cert", path(rogue.join("mallory.pem"))),
                "--key",
                path(rogue.join("mallory.key")),
            ),
            "it does not accept your certificate (--cert / SAMKOR_CERT)",
        ),
        (with(base.clone(), "--ca", path(rogue.join("ca.pem"))), "not signed by your CA file (--ca / SAMKOR_CA)"),
        (
            with(base.clone(), "--key", path(certs.join("bob.key"))),
            "the key is not the private key of this certificate",
        ),
    ];
    for (args, want) in cases {
        let shown = args.join(" ");
        let out = tokio::task::spawn_blocking(move || failure(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .expect("cli");
        assert!(out.starts_with("samkor: ") && out.contains(want), "{shown}:\n{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
    }
    let missing = with(base.clone(), "--cert", path(certs.join("nobody.pem")));
    let out = tokio::task::spawn_blocking(move || failure(&missing.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("cli");
    assert!(out.contains("cannot read certificate file") && out.contains("nobody.pem"), "{out}");
    assert_eq!(out.matches("No such file or directory").count(), 1, "the cause said once: {out}");
    fed.shutdown().await;
}

/// `samkor audit show … | head`: the reader going away ends the command quietly, not with a panic.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    use samkor_policies::audit::{AuditEntry, AuditLog};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.log");
    let log = AuditLog::open(&path, "coordinator").expect("open");
    // More than a pipe buffer of table rows, so the command is still writing when the reader leaves.
    for i in 0..2000 {
        log.append(
            AuditEntry::accepted("alice", format!("q{i}"), "SELECT count(*) FROM hip.operations").project("P-1"),
        )
        .expect("append");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_samkor"))
        .args(["audit", "show", path.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("samkor");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = text(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{:?}: {stderr}", out.status);
}
