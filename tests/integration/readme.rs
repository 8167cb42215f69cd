//! The README's command blocks, run as written: every ```sh block of
//! README.md that does not run `cargo` (the Quick start is what CI runs),
//! in one shell, in a fresh directory, with the built `samkor` on `PATH` and
//! real `samkor node` and `samkor coordinator` processes.
//!
//! Two things differ from a newcomer's terminal, both outside the README's
//! text: the ports (`SAMKOR_SYNTH_BASE_PORT` for `samkor synth`, and the
//! coordinator address in the commands), so that the test does not clash with
//! a federation already running on 47100; and the waiting: after a command
//! that starts servers in the background, the next command is sent only once
//! every background job has said it is listening, as a reader of the README
//! waits for `serving Flight SQL`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// The README's port of the coordinator; the nodes follow it.
const README_PORT: u16 = 47100;
/// A guard against a hang (a server that died before it listened), not a pause.
const GUARD: Duration = Duration::from_secs(300);
/// What a server prints on standard output once it accepts connections.
const READY: [&str; 2] = ["listening on", "serving Flight SQL on"];

/// The shell commands of the README's ```sh blocks that do not run cargo,
/// one per logical line (backslash continuations joined).
fn readme_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().expect("open block")),
            (Some(lines), l) => lines.push(l.to_owned()),
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "README.md has an unclosed ```sh block");
    blocks
        .into_iter()
        .filter(|b| !b.iter().any(|l| l.trim_start().starts_with("cargo ")))
        .map(|b| {
            let mut commands = Vec::new();
            let mut pending = String::new();
            for l in b {
                match l.strip_suffix('\\') {
                    Some(head) => pending.push_str(head),
                    None => {
                        pending.push_str(&l);
                        if !pending.trim().is_empty() && !pending.trim_start().starts_with('#') {
                            commands.push(std::mem::take(&mut pending));
                        }
                        pending.clear();
                    }
                }
            }
            commands
        })
        .collect()
}

/// Six consecutive free loopback ports.
fn free_ports() -> u16 {
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = probe.local_addr().expect("addr").port();
        drop(probe);
        if base > 65_000 {
            continue;
        }
        let all: Result<Vec<_>, _> = (base..base + 6).map(|p| std::net::TcpListener::bind(("127.0.0.1", p))).collect();
        if all.is_ok() {
            return base;
        }
    }
    panic!("no six consecutive free ports on loopback");
}

/// One bash, fed a command at a time, in its own process group so that the
/// servers it starts in the background end with it.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// Everything the shell and its jobs printed, for failure messages.
    transcript: Vec<String>,
    ready: usize,
}

impl Shell {
    fn start(dir: &std::path::Path, base_port: u16) -> Shell {
        use std::os::unix::process::CommandExt;
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_samkor")).parent().expect("bin dir").to_owned();
        let path = std::env::join_paths(
            std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .expect("PATH");
        let (reader, writer) = std::io::pipe().expect("pipe");
        let mut command = Command::new("bash");
        command
            .args(["--noprofile", "--norc"])
            .current_dir(dir)
            .env("PATH", path)
            .env("SAMKOR_SYNTH_BASE_PORT", base_port.to_string())
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(writer.try_clone().expect("pipe"))
            .stderr(writer)
            .process_group(0);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SAMKOR_") && name != "SAMKOR_SYNTH_BASE_PORT" {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("bash");
        drop(command);
        let stdin = child.stdin.take().expect("stdin");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Shell { child, stdin, lines, transcript: Vec::new(), ready: 0 }
    }

    fn next_line(&mut self, waiting_for: &str) -> String {
        match self.lines.recv_timeout(GUARD) {
            Ok(line) => {
                if READY.iter().any(|r| line.contains(r)) {
                    self.ready += 1;
                }
                self.transcript.push(line.clone());
                line
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("no {waiting_for} within {GUARD:?}; output so far:\n{}", self.transcript.join("\n"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the shell ended while waiting for {waiting_for}; output:\n{}", self.transcript.join("\n"))
            }
        }
    }

    /// Runs one command; returns its output and exit status. Background
    /// jobs it starts are waited for until each one said it listens.
    fn run(&mut self, command: &str) -> (String, i32) {
        let marker = "@@samkor-readme-test";
        writeln!(self.stdin, "{command}\necho \"{marker} $? $(jobs -pr | wc -l)\"").expect("write to bash");
        self.stdin.flush().expect("flush");
        let start = self.transcript.len();
        let (status, jobs) = loop {
            let line = self.next_line(&format!("the end of `{command}`"));
            if let Some(rest) = line.strip_prefix(marker) {
                let mut fields = rest.split_whitespace().map(|f| f.parse::<i32>().expect("number"));
                break (fields.next().expect("status"), fields.next().expect("jobs") as usize);
            }
        };
        // Every running background job is a server: wait until each one has said it listens.
        while self.ready < jobs {
            self.next_line(&format!("{} of {jobs} servers listening", self.ready + 1));
        }
        let output = self.transcript[start..].iter().filter(|l| !l.starts_with(marker)).cloned().collect::<Vec<_>>();
        (output.join("\n"), status)
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // The shell and every server it started share its process group.
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

#[test]
fn readme_commands_work_as_written() {
    let blocks = readme_commands();
    let commands: Vec<&String> = blocks.iter().flatten().collect();
    assert!(
        commands.iter().any(|c| c.starts_with("samkor synth"))
            && commands.iter().any(|c| c.starts_with("samkor query")),
        "the README's runnable blocks were not found: {blocks:?}"
    );
    let dir = tempfile::Builder::new().prefix("samkor-readme-").tempdir().expect("tempdir");
    let base = free_ports();
    let mut shell = Shell::start(dir.path(), base);
    let mut outputs = Vec::new();
    for command in commands {
        let command = command.replace(&format!("127.0.0.1:{README_PORT}"), &format!("127.0.0.1:{base}"));
        let (output, status) = shell.run(&command);
        assert_eq!(status, 0, "`{command}` failed:\n{output}");
        outputs.push((command, output));
    }
    let output_of = |prefix: &str, needle: &str| {
        outputs
            .iter()
            .find(|(c, _)| c.starts_with(prefix) && c.contains(needle))
            .map(|(_, o)| o.as_str())
            .unwrap_or_else(|| panic!("no README command {prefix} … {needle}"))
    };
    let regions = output_of("samkor query", "--project demo-hip-outcomes");
    assert!(regions.contains("| region") && regions.contains("Stockholm"), "{regions}");
    let direct = output_of("samkor query", "--project direct");
    assert!(direct.contains("| fixation") && direct.contains("cemented"), "{direct}");
    let verified = output_of("samkor audit verify", "");
    assert!(verified.contains("chain intact"), "{verified}");
    let review = output_of("samkor audit report", "");
    assert!(review.contains("Period: the whole log (2 of 2 records"), "{review}");
    assert!(review.lines().any(|l| l.contains("alice") && l.contains("demo-hip-outcomes")), "{review}");
}
