//! Node figures: pseudonymisation throughput, scan throughput of a filtered
//! group-by on `lmr`, and the peak memory of a `samkor node` process while it
//! streams a full scan of `lmr` (which should not grow with the table).
//!
//! ```text
//!  (a) ProjectPseudonymiser::pseudonymise on 1M Utf8 identity numbers (one thread), per scheme,
//!      in record batches and as one array; and record keys computed from identity numbers
//!  (b) SELECT atc, count(*), sum(ddd) FROM dispensations WHERE region = 'Skåne' GROUP BY atc
//!      - NodeState::session(project) in this process (DataFusion only)
//!      - an in-process node over Flight + mTLS (NodeClient, as the coordinator calls it)
//!  (c) per size: `samkor synth`, then `samkor node` (child process) streaming
//!      SELECT * FROM dispensations to a client that discards the batches; VmHWM of the node
//! ```
//!
//! Run: `CARGO_TARGET_DIR=/work/target-release cargo bench --bench node`
//! Environment: SAMKOR_BENCH_NODE_PERSONS (comma-separated sizes, default "1000000,10000000";
//! (b) uses the first), SAMKOR_BENCH_RUNS (default 5), SAMKOR_BENCH_PSEUDONYMS (default 1000000),
//! SAMKOR_BENCH_SEED (default 1).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow::array::StringArray;
use common::{mib, ms};
use futures::TryStreamExt;
use samkor_node::pseudonym::{FederationKey, PseudonymScheme};

const PROJECT: &str = "bench";
const SCAN_SQL: &str = "SELECT atc, count(*), sum(ddd) FROM dispensations WHERE region = 'Skåne' GROUP BY atc";
const FULL_SQL: &str = "SELECT * FROM dispensations";
/// Rows per record batch of a node's scans (DataFusion's default batch size).
const BATCH_ROWS: usize = 8192;

/// Rows in the Parquet files of a table directory (from the footers).
fn parquet_rows(dir: &Path) -> anyhow::Result<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut rows = 0;
    let mut files: Vec<_> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files.iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")) {
        let reader = SerializedFileReader::new(std::fs::File::open(f)?)?;
        rows += reader.metadata().file_metadata().num_rows() as u64;
    }
    Ok(rows)
}

fn rate(n: u64, d: Duration) -> String {
    let r = n as f64 / d.as_secs_f64();
    if r >= 1e6 { format!("{:.2} M/s", r / 1e6) } else { format!("{:.0} k/s", r / 1e3) }
}

struct SizeResult {
    persons: u64,
    synth: Duration,
    synth_cmd: String,
    lmr_rows: u64,
    lmr_bytes: u64,
    start: common::Mem,
    before: common::Mem,
    after: common::Mem,
    sampled_max: u64,
    streamed_rows: u64,
    streamed_batches: u64,
    streamed_mem: u64,
    stream_time: Duration,
    hwm_reset: bool,
}

fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let bench_started = Instant::now();
    let sizes: Vec<u64> = std::env::var("SAMKOR_BENCH_NODE_PERSONS")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|s| s.replace('_', "").trim().parse().context("SAMKOR_BENCH_NODE_PERSONS: comma-separated numbers"))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!sizes.is_empty(), "SAMKOR_BENCH_NODE_PERSONS is empty");
    let runs = common::env_u64("SAMKOR_BENCH_RUNS", 5) as usize;
    let n_ids = common::env_u64("SAMKOR_BENCH_PSEUDONYMS", 1_000_000) as usize;
    let seed = common::env_u64("SAMKOR_BENCH_SEED", 1);

    // ── (a) pseudonymisation ──
    eprintln!("(a) pseudonymising {n_ids} identity numbers x {runs} ...");
    let ids: StringArray =
        (0..n_ids as u64).map(|i| Some(format!("{:012}", 194001010000 + i * 7919 % 800_000_000_000))).collect();
    let key = FederationKey::from_bytes(std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11)));
    // The node pseudonymises record batch by record batch; one array of a
    // million rows would also time the page faults of a fresh 32 MB output.
    let batches: Vec<StringArray> =
        (0..n_ids).step_by(BATCH_ROWS).map(|i| ids.slice(i, BATCH_ROWS.min(n_ids - i))).collect();
    let mut schemes = Vec::new();
    for scheme in PseudonymScheme::ALL {
        let pseudonymiser = key.for_project_with(scheme, PROJECT);
        let secret = key.record_key_secret(PROJECT);
        let mut timed: [Vec<Duration>; 3] = Default::default();
        for _ in 0..runs + 1 {
            let t = Instant::now();
            for b in &batches {
                std::hint::black_box(pseudonymiser.pseudonymise(b).map_err(anyhow::Error::msg)?);
            }
            timed[0].push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(pseudonymiser.pseudonymise(&ids).map_err(anyhow::Error::msg)?);
            timed[1].push(t.elapsed());
            let t = Instant::now();
            for b in &batches {
                std::hint::black_box(pseudonymiser.record_keys(&secret, b).map_err(anyhow::Error::msg)?);
            }
            timed[2].push(t.elapsed());
        }
        let medians = timed.map(|mut t| {
            t.remove(0);
            (common::median(&t), common::percentile(&t, 0.0))
        });
        schemes.push((scheme, medians));
    }

    let rt = common::runtime();
    let root = tempfile::Builder::new().prefix("samkor-bench-node-").tempdir()?;
    let mut results = Vec::new();
    let mut scan = None;
    for (i, &persons) in sizes.iter().enumerate() {
        let dir = root.path().join(format!("p{persons}"));
        // ── synth (the CLI, timed) ──
        let synth_cmd = format!("{} synth --out {} --persons {persons} --seed {seed}", common::SAMKOR, dir.display());
        eprintln!("synth: {synth_cmd}");
        let t = Instant::now();
        let status = std::process::Command::new(common::SAMKOR)
            .args([
                "synth",
                "--out",
                dir.to_str().context("utf-8 path")?,
                "--persons",
                &persons.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .status()?;
        let synth = t.elapsed();
        anyhow::ensure!(status.success(), "samkor synth failed: {status}");
        let lmr_dir = dir.join("lmr").join("dispensations");
        let lmr_rows = parquet_rows(&lmr_dir)?;
        let lmr_bytes = common::dir_bytes(&lmr_dir);

        // ── (b) scan throughput, on the first size ──
        if i == 0 {
            eprintln!("(b) node scan on {persons} persons ({lmr_rows} lmr rows) x {runs} ...");
            scan = Some(rt.block_on(scan_bench(&dir, runs, lmr_rows))?);
        }

        // ── (c) memory of a `samkor node` streaming a full scan ──
        eprintln!("(c) full scan through `samkor node` on {persons} persons ...");
        let config = dir.join("lmr").join("node.toml");
        let log = dir.join("node-bench.log");
        let node = common::Server::spawn(
            &["node", "--config", config.to_str().context("utf-8 path")?, "--listen", "127.0.0.1:0"],
            "listening on ",
            &log,
        );
        let start = node.mem();
        let hwm_reset = common::reset_hwm(node.pid());
        let before = node.mem();
        let sampler = common::RssSampler::start(node.pid(), Duration::from_millis(20));
        let t = Instant::now();
        let (streamed_rows, streamed_batches, streamed_mem) = rt.block_on(async {
            let client = common::node_client(&dir, "lmr", &node.addr, "coordinator");
            let mut stream = client.query(PROJECT, FULL_SQL, "bench-full-scan", None).await?;
            let (mut rows, mut batches, mut max_mem) = (0u64, 0u64, 0u64);
            while let Some(b) = stream.try_next().await.map_err(|e| client.stream_error(e))? {
                rows += b.num_rows() as u64;
                batches += 1;
                max_mem = max_mem.max(b.get_array_memory_size() as u64);
            }
            anyhow::Ok((rows, batches, max_mem))
        })?;
        let stream_time = t.elapsed();
        let (sampled_max, _) = sampler.stop();
        let after = node.mem();
        drop(node);
        results.push(SizeResult {
            persons,
            synth,
            synth_cmd,
            lmr_rows,
            lmr_bytes,
            start,
            before,
            after,
            sampled_max,
            streamed_rows,
            streamed_batches,
            streamed_mem,
            stream_time,
            hwm_reset,
        });
        std::fs::remove_dir_all(&dir)?;
    }

    // ── report ──
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("\n══ samkor node benchmark ══ ({cores} cores)");
    println!(
        "(a) pseudonymisation of {n_ids} Utf8 12-digit identity numbers, one thread, median of {runs} runs (best):"
    );
    let what = [
        format!("pseudonyms (32 letters), batches of {BATCH_ROWS} rows"),
        format!("pseudonyms (32 letters), one array of {n_ids} rows"),
        format!("record keys of identity numbers, batches of {BATCH_ROWS}"),
    ];
    for (scheme, medians) in &schemes {
        let default = if *scheme == PseudonymScheme::default() { "  [default]" } else { "" };
        println!("    {}{default}", scheme.name());
        for (label, (median, best)) in what.iter().zip(medians) {
            println!(
                "      {label:<52} {:>7.1} ms = {:>11} ids   (best {:.1} ms = {})",
                ms(*median),
                rate(n_ids as u64, *median),
                ms(*best),
                rate(n_ids as u64, *best),
            );
        }
    }
    if let Some(s) = &scan {
        println!(
            "(b) node scan, {} persons, {} lmr rows in the files ({} visible to the project after opt-outs), median of {runs}:",
            sizes[0], s.rows, s.visible
        );
        println!("    SQL: {SCAN_SQL}");
        println!(
            "    NodeState::session (DataFusion, in process): {:>8.1} ms = {} rows scanned/s ({} groups)",
            ms(s.session),
            rate(s.rows, s.session),
            s.groups
        );
        println!(
            "    in-process node over Flight + mTLS:          {:>8.1} ms = {} rows scanned/s",
            ms(s.flight),
            rate(s.rows, s.flight)
        );
        println!(
            "    same filter+group-by on the raw Parquet, no pseudonymisation (plain DataFusion): {:>8.1} ms = {} rows/s",
            ms(s.raw),
            rate(s.rows, s.raw)
        );
        println!("    SELECT count(*) FROM dispensations in the node session: {:>8.1} ms", ms(s.count));
        println!("    a sub-query's session opened (NodeState::session), median of 50: {:>6.2} ms", ms(s.open));
        println!("    SELECT 1 over Flight + mTLS (a sub-query's fixed cost), median of 50: {:>6.2} ms", ms(s.one));
    }
    println!("(c) `samkor node` (separate process) streaming `{FULL_SQL}` to a client that discards the batches:");
    println!(
        "    {:>10} {:>11} {:>10} {:>8} {:>11} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "persons",
        "lmr rows",
        "Parquet",
        "synth s",
        "stream s",
        "rows/s",
        "RSS start",
        "RSS before",
        "VmHWM after",
        "sampled max"
    );
    for r in &results {
        println!(
            "    {:>10} {:>11} {:>10} {:>8.1} {:>11.1} {:>10} {:>12} {:>12} {:>12} {:>12}",
            r.persons,
            r.lmr_rows,
            format!("{:.0} MiB", r.lmr_bytes as f64 / 1048576.0),
            r.synth.as_secs_f64(),
            r.stream_time.as_secs_f64(),
            rate(r.streamed_rows, r.stream_time),
            mib(r.start.rss_kib),
            mib(r.before.rss_kib),
            mib(r.after.hwm_kib),
            mib(r.sampled_max),
        );
    }
    for r in &results {
        println!(
            "    {} persons: streamed {} rows in {} batches (largest batch {} in memory at the client); VmHWM at start {}{}; synth: {}",
            r.persons,
            r.streamed_rows,
            r.streamed_batches,
            mib(r.streamed_mem / 1024),
            mib(r.start.hwm_kib),
            if r.hwm_reset { ", reset before the scan" } else { " (could not reset)" },
            r.synth_cmd,
        );
    }
    println!("bench wall time: {:.1} s", bench_started.elapsed().as_secs_f64());
    Ok(())
}

struct ScanResult {
    rows: u64,
    visible: u64,
    groups: usize,
    session: Duration,
    flight: Duration,
    raw: Duration,
    count: Duration,
    /// Opening a sub-query's session (no query), median of 50.
    open: Duration,
    /// `SELECT 1` over Flight + mTLS: a sub-query's fixed cost, median of 50.
    one: Duration,
}

async fn scan_bench(dir: &Path, runs: usize, rows: u64) -> anyhow::Result<ScanResult> {
    let config = samkor::federation::node_config(dir, "lmr", true)?;
    let state = samkor_node::NodeState::open(config.clone()).await?;
    let ctx = state.session(&samkor_node::access::Scope::Project(PROJECT.to_owned()), None)?;

    // Count visible rows (after opt-outs).
    let t = Instant::now();
    let counted = ctx.sql("SELECT count(*) FROM dispensations").await?.collect().await?;
    let count = t.elapsed();
    let visible =
        counted[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().context("count type")?.value(0) as u64;

    // Session: plan + execute, as the node service does.
    let session_run = || async {
        let t = Instant::now();
        let ctx = state.session(&samkor_node::access::Scope::Project(PROJECT.to_owned()), None)?;
        let batches = ctx.sql(SCAN_SQL).await?.collect().await?;
        anyhow::Ok((t.elapsed(), batches.iter().map(|b| b.num_rows()).sum::<usize>()))
    };
    let (_, groups) = session_run().await?;
    let mut session = Vec::new();
    for _ in 0..runs {
        session.push(session_run().await?.0);
    }

    let mut open = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        std::hint::black_box(state.session(&samkor_node::access::Scope::Project(PROJECT.to_owned()), None)?);
        open.push(t.elapsed());
    }

    // The same over Flight from an in-process node.
    let node = samkor_node::start(config).await?;
    let client = common::node_client(dir, "lmr", &node.addr.to_string(), "coordinator");
    let flight_run = || async {
        let t = Instant::now();
        let stream = client.query(PROJECT, SCAN_SQL, "bench-scan", None).await?;
        let batches: Vec<_> = stream.try_collect().await.map_err(|e| client.stream_error(e))?;
        std::hint::black_box(batches);
        anyhow::Ok(t.elapsed())
    };
    flight_run().await?;
    let mut flight = Vec::new();
    for _ in 0..runs {
        flight.push(flight_run().await?);
    }
    let mut one = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let stream = client.query(PROJECT, "SELECT 1", "bench-one", None).await?;
        std::hint::black_box(stream.try_collect::<Vec<_>>().await.map_err(|e| client.stream_error(e))?);
        one.push(t.elapsed());
    }
    node.shutdown().await;

    // Reference: the raw files, no pseudonymisation or opt-outs (pnr not read by this query).
    let raw_ctx = datafusion::prelude::SessionContext::new();
    let files = dir.join("lmr").join("dispensations");
    raw_ctx.register_parquet("dispensations", files.to_str().context("utf-8 path")?, Default::default()).await?;
    raw_ctx.sql(SCAN_SQL).await?.collect().await?;
    let mut raw = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        raw_ctx.sql(SCAN_SQL).await?.collect().await?;
        raw.push(t.elapsed());
    }

    Ok(ScanResult {
        rows,
        visible,
        groups,
        session: common::median(&session),
        flight: common::median(&flight),
        raw: common::median(&raw),
        count,
        open: common::median(&open),
        one: common::median(&one),
    })
}
