//! Helpers shared by the benchmark binaries (`benches/federation.rs`,
//! `benches/node.rs`): timing statistics, `/proc` memory readings and child
//! `samkor` processes whose listening address is read from their stdout.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The `samkor` binary built alongside the benchmarks.
pub(crate) const SAMKOR: &str = env!("CARGO_BIN_EXE_samkor");

/// A multi-threaded tokio runtime (the same kind `samkor` itself uses).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// Logs to stderr when `SAMKOR_LOG` is set (e.g. `SAMKOR_LOG=samkor_coordinator=info` shows the sub-queries).
pub(crate) fn init_tracing() {
    if let Ok(filter) = std::env::var("SAMKOR_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// An environment variable parsed as a number, underscores allowed.
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.replace('_', "").trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Milliseconds of a duration.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of some durations.
pub(crate) fn median(v: &[Duration]) -> Duration {
    percentile(v, 50.0)
}

/// Nearest-rank percentile.
pub(crate) fn percentile(v: &[Duration], p: f64) -> Duration {
    percentile_by(v, p, Duration::cmp)
}

/// Nearest-rank percentile in the order `cmp` (`f64::total_cmp` for ratios).
pub(crate) fn percentile_by<T: Copy>(v: &[T], p: f64, cmp: impl FnMut(&T, &T) -> std::cmp::Ordering) -> T {
    assert!(!v.is_empty(), "no samples");
    let mut s = v.to_vec();
    s.sort_by(cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Times one future.
pub(crate) async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let r = f.await;
    (r, t.elapsed())
}

/// Memory figures of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mem {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

impl Mem {
    pub(crate) fn of(pid: u32) -> Mem {
        // Empty (all zero) once the process has gone.
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Mem { rss_kib: field("VmRSS:"), hwm_kib: field("VmHWM:") }
    }
}

/// KiB as MiB text.
pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Resets a process's peak RSS (`VmHWM`) to its current RSS. Returns false where not allowed.
pub(crate) fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A `samkor` child process (node or coordinator), killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Runs `samkor <args>` with stderr to `stderr_file` and waits for the stdout line
    /// containing `marker` followed by the address (`... on 127.0.0.1:1234 ...`).
    #[expect(clippy::zombie_processes, reason = "the child is returned in a Server, whose drop kills and waits for it")]
    pub(crate) fn spawn(args: &[&str], marker: &str, stderr_file: &Path) -> Server {
        let stderr = std::fs::File::create(stderr_file).expect("stderr file");
        let mut child = Command::new(SAMKOR)
            .args(args)
            .env("SAMKOR_LOG", std::env::var("SAMKOR_CHILD_LOG").unwrap_or_else(|_| "warn,samkor=info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn samkor");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        loop {
            line.clear();
            let read = stdout.read_line(&mut line);
            if !matches!(read, Ok(n) if n > 0) {
                // Reaped before the panic, whether it ended or its stdout failed.
                let _ = child.kill();
                let status = child.wait().expect("wait");
                let log = std::fs::read_to_string(stderr_file).unwrap_or_default();
                let why = match read {
                    Err(e) => format!("reading its output failed: {e}"),
                    Ok(_) => "its output ended".to_owned(),
                };
                panic!("samkor {args:?} did not start listening ({why}; {status}):\n{log}");
            }
            if let Some(rest) = line.split(marker).nth(1) {
                let addr = rest.split_whitespace().next().expect("address after marker").to_owned();
                return Server { child, addr, _stdout: stdout };
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn mem(&self) -> Mem {
        Mem::of(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples a process's RSS every `every` until stopped; returns (max RSS KiB, samples).
pub(crate) struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, usize)>>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = 0;
            let mut n = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(Mem::of(pid).rss_kib);
                n += 1;
                std::thread::sleep(every);
            }
            (max, n)
        });
        RssSampler { stop, handle: Some(handle) }
    }

    pub(crate) fn stop(mut self) -> (u64, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().expect("running").join().expect("sampler thread")
    }
}

/// Total size in bytes of the files below `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                total += dir_bytes(&e.path());
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

/// Generates a synthetic federation into `dir` like `samkor synth` (certificates for
/// `alice`, a federation key, the five registers, an approval of `project` for `alice`); returns the summary and the seconds taken.
pub(crate) fn synth(dir: &Path, persons: u64, seed: u64, project: &str) -> (samkor::synth::SynthSummary, Duration) {
    let t = Instant::now();
    samkor::certs::init(&dir.join("certs"), &samkor::federation::REGISTERS, &["alice"]).expect("certificates");
    samkor::certs::write_federation_key(&dir.join("federation.key")).expect("federation key");
    let summary = samkor::synth::generate(&samkor::synth::SynthOptions { out: dir.to_owned(), persons, seed })
        .expect("synthetic registers");
    // The coordinator answers only approved projects: approve everything for `project`, aggregates only.
    samkor::federation::write_full_approval(dir, project, &["alice"], &["aggregate"], true).expect("approval");
    (summary, t.elapsed())
}

/// The five registers (and a federation key) in `dir`, generated once: a
/// directory kept between runs (`SAMKOR_BENCH_*_DIR`) is reused as it is.
pub(crate) fn registers_once(dir: &Path, persons: u64) -> anyhow::Result<()> {
    if dir.join("lmr").join("node.toml").exists() {
        return Ok(());
    }
    samkor::certs::write_federation_key(&dir.join("federation.key"))?;
    let t = Instant::now();
    samkor::synth::generate(&samkor::synth::SynthOptions { out: dir.to_owned(), persons, seed: 1 })?;
    println!("synth {persons} persons: {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Loads a TLS identity (`coordinator`, `alice`, ...) of a synth directory.
pub(crate) fn identity(dir: &Path, name: &str) -> samkor_proto::tls::TlsIdentity {
    samkor::federation::identity_files(dir, name).load().expect("TLS identity")
}

/// A client of one node, presenting `who`'s certificate.
pub(crate) fn node_client(dir: &Path, register: &str, addr: &str, who: &str) -> samkor_proto::client::NodeClient {
    samkor_proto::tls::install_crypto_provider();
    let endpoint = samkor_proto::client::NodeEndpoint {
        name: register.to_owned(),
        addr: addr.to_owned(),
        tls_domain: "localhost".to_owned(),
        connect_timeout: Duration::from_secs(10),
    };
    samkor_proto::client::NodeClient::new(endpoint, &identity(dir, who)).expect("node client")
}

/// Renders batches as sorted text lines, for order-insensitive comparison.
pub(crate) fn sorted_lines(batches: &[arrow::record_batch::RecordBatch]) -> Vec<String> {
    let text = arrow::util::pretty::pretty_format_batches(batches).expect("format").to_string();
    let mut lines: Vec<String> = text.lines().skip(3).filter(|l| !l.starts_with('+')).map(str::to_owned).collect();
    lines.sort();
    lines
}

/// A disclosure-controlled answer without its `withheld` marker column, and
/// the number of cells it withheld.
pub(crate) fn released(batches: &[arrow::record_batch::RecordBatch]) -> (Vec<arrow::record_batch::RecordBatch>, usize) {
    let mut withheld = 0;
    let out = batches
        .iter()
        .map(|b| {
            let schema = b.schema();
            if schema.fields().last().is_none_or(|f| f.name() != "withheld") {
                return b.clone();
            }
            let marks = b.column(schema.fields().len() - 1);
            withheld += marks
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .map(|m| m.iter().flatten().map(|s| s.split(',').count()).sum::<usize>())
                .unwrap_or(0);
            b.project(&(0..schema.fields().len() - 1).collect::<Vec<_>>()).expect("project")
        })
        .collect();
    (out, withheld)
}

/// The node's filtered group-by that the source benchmarks time (`benches/postgres.rs`, `benches/cluster.rs`).
pub(crate) const NODE_GROUP_BY: &str =
    "SELECT atc, count(*), sum(ddd) FROM dispensations WHERE region = 'Skåne' GROUP BY atc";

/// Runs [`NODE_GROUP_BY`] `runs` times in a fresh project session of the node: the sorted times and the groups.
pub(crate) async fn node_group_by_runs(
    state: &samkor_node::NodeState,
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut times = Vec::new();
    let mut groups = 0;
    for _ in 0..runs {
        let ctx = state.session(&samkor_node::access::Scope::Project("bench".into()), None)?;
        let t = std::time::Instant::now();
        let batches = ctx.sql(NODE_GROUP_BY).await?.collect().await?;
        times.push(t.elapsed());
        groups = batches.iter().map(|b| b.num_rows()).sum();
    }
    times.sort();
    Ok((times, groups))
}
