//! Federated vs pooled: the cost of answering through the coordinator and the
//! nodes instead of one DataFusion session over all registers' files.
//!
//! ```text
//!  synth (temp dir, SAMKOR_BENCH_PERSONS persons)
//!    ├─ DuckDB:    python3 duckdb (2 threads) over the same Parquet files, pooled
//!    ├─ pooled:    one local SessionContext (samkor::federation::pooled_session)
//!    ├─ federated: 5 in-process nodes + in-process coordinator, Flight SQL client
//!    ├─ disclosure: the same federated queries with and without disclosure control
//!    └─ memory:    `samkor coordinator` as a child process over the same nodes,
//!                  VmHWM from /proc/<pid>/status around the two-register join
//! ```
//!
//! Run: `CARGO_TARGET_DIR=/work/target-release cargo bench --bench federation`
//! Environment: SAMKOR_BENCH_PERSONS (default 200000), SAMKOR_BENCH_RUNS (timed runs per
//! query and side, default 5; at least as many pairs of runs without and with disclosure
//! control), SAMKOR_BENCH_LATENCY_RUNS (default 200), SAMKOR_BENCH_SEED,
//! SAMKOR_BENCH_EXPLAIN=1 (print the coordinator's plan of each query), SAMKOR_BENCH_KEEP=1
//! (keep the temp dir), SAMKOR_LOG (tracing filter for the in-process servers),
//! SAMKOR_BENCH_PROFILE=N (run only query N, federated, SAMKOR_BENCH_RUNS times: for a profiler;
//! 6-9 are the latency queries; SAMKOR_BENCH_CONTROL=off runs it without disclosure control).

mod common;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow::record_batch::RecordBatch;
use common::{mib, ms};
use futures::TryStreamExt;
use samkor::client::Client;
use samkor::federation::{LocalFederation, LocalOptions};

const PROJECT: &str = "bench";

struct Query {
    name: &'static str,
    kind: Kind,
    sql: &'static str,
    /// The same answer in DuckDB with the person-keyed work disclosure
    /// control needs per cell: persons, a cell key over them (sum of a hash
    /// per person) and, for sums, the two largest per-person totals.
    keyed: &'static str,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Single,
    Join2,
}

impl Kind {
    /// Goal against pooled DataFusion.
    fn goal(self) -> f64 {
        match self {
            Kind::Single => 1.3,
            Kind::Join2 => 2.0,
        }
    }
}

/// Goal against DuckDB pooled (the speed issue's target).
const DUCKDB_GOAL: f64 = 3.0;

/// Runs each query in DuckDB (Python package, 2 threads) over the same
/// Parquet files, pooled in one process with the identity column renamed to
/// `person` (no pseudonymisation, no opt-outs: what pooling would be): one
/// warm-up, then its number of timed runs. Prints DuckDB's version and per
/// query the median and the rows.
const DUCKDB_SCRIPT: &str = r#"
import duckdb, json, statistics, sys, time
spec = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute("SET enable_progress_bar = false")
for t in spec["tables"]:
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{t["schema"]}"')
    con.execute(f'CREATE VIEW "{t["schema"]}"."{t["name"]}" AS SELECT * EXCLUDE ("{t["person"]}"), "{t["person"]}" AS person FROM read_parquet(\'{t["glob"]}\')')
out = []
for q, runs in spec["queries"]:
    rows = con.execute(q).fetchall()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        con.execute(q).fetchall()
        times.append(time.perf_counter() - t0)
    out.append({"median_ms": statistics.median(times) * 1000.0, "rows": len(rows)})
print(json.dumps({"version": duckdb.__version__, "results": out}))
"#;

fn duckdb(dir: &std::path::Path, queries: &[(&str, usize)]) -> Result<(String, Vec<(Duration, usize)>), String> {
    use std::io::Write as _;
    let mut tables = Vec::new();
    for register in samkor::federation::REGISTERS {
        let config = samkor::federation::node_config(dir, register, true).map_err(|e| e.to_string())?;
        for t in &config.tables {
            let glob = if std::path::Path::new(&t.path).is_absolute() {
                t.path.clone()
            } else {
                dir.join(register).join(&t.path).display().to_string()
            };
            tables
                .push(serde_json::json!({"schema": register, "name": t.name, "person": t.person_column, "glob": glob}));
        }
    }
    let spec = serde_json::json!({"tables": tables, "queries": queries});
    let mut child = std::process::Command::new("python3")
        .args(["-c", DUCKDB_SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    child.stdin.take().expect("piped").write_all(spec.to_string().as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "python3 duckdb failed ({}): {}; install it with `python3 -m pip install duckdb`",
            out.status,
            err.lines().last().unwrap_or_default()
        ));
    }
    // The JSON is the last line (anything DuckDB prints before it is not).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).map_err(|e| e.to_string())?;
    let results = v["results"]
        .as_array()
        .ok_or("no results")?
        .iter()
        .map(|r| {
            (
                Duration::from_secs_f64(r["median_ms"].as_f64().unwrap_or(0.0) / 1000.0),
                r["rows"].as_u64().unwrap_or(0) as usize,
            )
        })
        .collect();
    Ok((v["version"].as_str().unwrap_or("?").to_owned(), results))
}

/// The queries of the speed issue's table, in its order.
const QUERIES: &[Query] = &[
    Query {
        name: "lmr: Skåne, by ATC, count + sum(ddd)",
        kind: Kind::Single,
        sql: "SELECT atc, count(*) AS dispensations, round(sum(ddd), 1) AS ddd
FROM lmr.dispensations WHERE region = 'Skåne' GROUP BY atc ORDER BY atc",
        keyed: "WITH pp AS (SELECT atc, person, count(*) AS n, sum(ddd) AS s
  FROM lmr.dispensations WHERE region = 'Skåne' GROUP BY atc, person)
SELECT atc, sum(n) AS dispensations, round(sum(s), 1) AS ddd, count(*) AS persons,
       sum(hash(person)) AS cell_key, max(abs(s), 2) AS top2
FROM pp GROUP BY atc ORDER BY atc",
    },
    Query {
        name: "lmr: distinct persons by region",
        kind: Kind::Single,
        sql: "SELECT region, count(DISTINCT person) AS persons FROM lmr.dispensations GROUP BY region ORDER BY region",
        keyed: "WITH pp AS (SELECT region, person FROM lmr.dispensations GROUP BY region, person)
SELECT region, count(*) AS persons, sum(hash(person)) AS cell_key FROM pp GROUP BY region ORDER BY region",
    },
    Query {
        name: "hip: by region, count + avg(bmi)",
        kind: Kind::Single,
        sql: "SELECT region, count(*) AS operations, round(avg(bmi), 2) AS mean_bmi
FROM hip.operations GROUP BY region ORDER BY region",
        keyed: "WITH pp AS (SELECT region, person, count(*) AS n, sum(bmi) AS s, count(bmi) AS nb
  FROM hip.operations GROUP BY region, person)
SELECT region, sum(n) AS operations, round(sum(s) / sum(nb), 2) AS mean_bmi, count(*) AS persons,
       count(*) FILTER (WHERE nb > 0) AS persons_bmi, sum(hash(person)) AS cell_key, max(abs(s), 2) AS top2
FROM pp GROUP BY region ORDER BY region",
    },
    Query {
        name: "hip ⋈ dors: 90-day deaths by fixation",
        kind: Kind::Join2,
        sql: "SELECT o.fixation, count(*) AS operations,
       sum(CASE WHEN d.death_date <= o.op_date + INTERVAL '90 days' THEN 1 ELSE 0 END) AS deaths_90d
FROM hip.operations o LEFT JOIN dors.deaths d ON d.person = o.person
GROUP BY o.fixation ORDER BY o.fixation",
        keyed: "WITH pp AS (
  SELECT o.fixation, o.person, count(*) AS n,
         sum(CASE WHEN d.death_date <= o.op_date + INTERVAL '90 days' THEN 1 ELSE 0 END) AS s
  FROM hip.operations o LEFT JOIN dors.deaths d ON d.person = o.person
  GROUP BY o.fixation, o.person)
SELECT fixation, sum(n) AS operations, sum(s) AS deaths_90d, count(*) AS persons,
       count(*) FILTER (WHERE s > 0) AS persons_dead, sum(hash(person)) AS cell_key, max(s, 2) AS top2
FROM pp GROUP BY fixation ORDER BY fixation",
    },
    Query {
        name: "npr ⋈ hip: coverage 2023",
        kind: Kind::Join2,
        sql: "WITH npr_hip AS (
  SELECT person, hospital, admit_date FROM npr.inpatient
  WHERE procedure IN ('NFB29', 'NFB39', 'NFB49', 'NFB59') AND date_part('year', admit_date) = 2023
)
SELECT n.hospital, count(*) AS npr_episodes, count(o.op_id) AS found_in_hip
FROM npr_hip n LEFT JOIN hip.operations o
  ON o.person = n.person AND o.hospital = n.hospital
 AND o.op_date BETWEEN n.admit_date AND n.admit_date + INTERVAL '1 day'
GROUP BY n.hospital ORDER BY n.hospital",
        keyed: "WITH npr_hip AS (
  SELECT person, hospital, admit_date FROM npr.inpatient
  WHERE procedure IN ('NFB29', 'NFB39', 'NFB49', 'NFB59') AND date_part('year', admit_date) = 2023
), pp AS (
  SELECT n.hospital, n.person, count(*) AS n, count(o.op_id) AS f
  FROM npr_hip n LEFT JOIN hip.operations o
    ON o.person = n.person AND o.hospital = n.hospital
   AND o.op_date BETWEEN n.admit_date AND n.admit_date + INTERVAL '1 day'
  GROUP BY n.hospital, n.person)
SELECT hospital, sum(n) AS npr_episodes, sum(f) AS found_in_hip, count(*) AS persons,
       count(*) FILTER (WHERE f > 0) AS persons_found, sum(hash(person)) AS cell_key
FROM pp GROUP BY hospital ORDER BY hospital",
    },
];

/// The join whose coordinator memory is measured.
const MEMORY_QUERY: usize = 3;

const SMALL_POP: &str = "SELECT count(*) FROM pop.persons";
const SMALL_REGION: &str =
    "SELECT sex, count(*) AS persons FROM pop.persons WHERE region = 'Skåne' GROUP BY sex ORDER BY sex";
/// [`SMALL_REGION`] in DuckDB with its person-keyed work: a cell key over the
/// persons of each cell (pop holds one row per person, so its rows are its persons).
const SMALL_REGION_KEYED: &str = "SELECT sex, count(*) AS persons, sum(hash(person)) AS cell_key FROM pop.persons
WHERE region = 'Skåne' GROUP BY sex ORDER BY sex";
const SMALL_JOIN: &str = "SELECT count(*) AS n FROM hip.operations h JOIN dors.deaths d ON d.person = h.person";
/// A query whose node reads almost nothing: the fixed cost of a federated answer.
const SMALL_EMPTY: &str = "SELECT count(*) AS n FROM hip.operations WHERE op_date < DATE '1900-01-01'";

/// One federated run, split into planning (GetFlightInfo) and execution (DoGet to the last batch).
struct FedRun {
    total: Duration,
    plan: Duration,
    batches: Vec<RecordBatch>,
}

async fn federated(client: &mut Client, sql: &str) -> anyhow::Result<FedRun> {
    let t = Instant::now();
    let flight = client.flight_sql();
    let info = flight.execute(sql.to_owned(), None).await.map_err(Client::stream_error)?;
    let plan = t.elapsed();
    let ticket = info.endpoint.first().and_then(|e| e.ticket.clone()).context("no ticket")?;
    let stream = flight.do_get(ticket).await.map_err(Client::stream_error)?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(Client::stream_error)?;
    Ok(FedRun { total: t.elapsed(), plan, batches })
}

async fn pooled(ctx: &datafusion::prelude::SessionContext, sql: &str) -> anyhow::Result<(Duration, Vec<RecordBatch>)> {
    let t = Instant::now();
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok((t.elapsed(), batches))
}

/// Pairs of runs that measure the cost of disclosure control take at least
/// this long per query (more pairs for quick queries, whose ratios scatter most).
const CONTROL_BUDGET: Duration = Duration::from_secs(3);
/// Pairs per query at most.
const CONTROL_MAX_PAIRS: usize = 60;

/// The cost of disclosure control on one query.
struct ControlCost {
    name: &'static str,
    /// Medians of the runs without and with it.
    off: Duration,
    on: Duration,
    /// Quartiles (25, 50, 75 %) of the pairs' ratios with / without.
    ratios: [f64; 3],
    pairs: usize,
}

/// Runs `q` without and with disclosure control in pairs, the order
/// alternating, after a warm-up pair: a pair's two runs see the same state of
/// a noisy machine, so their ratio scatters less than a ratio of two medians
/// taken minutes apart.
async fn control_cost(
    engine: &samkor_coordinator::engine::Engine,
    client: &mut Client,
    q: &Query,
    runs: usize,
) -> anyhow::Result<ControlCost> {
    let (mut on, mut off, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut timed = Duration::ZERO;
    for i in 0.. {
        let mut pair = [Duration::ZERO; 2];
        for controlled in if i % 2 == 0 { [true, false] } else { [false, true] } {
            engine.measure_without_disclosure_control(!controlled);
            pair[usize::from(controlled)] = federated(client, q.sql).await?.total;
        }
        if i == 0 {
            continue;
        }
        off.push(pair[0]);
        on.push(pair[1]);
        ratios.push(pair[1].as_secs_f64() / pair[0].as_secs_f64().max(1e-9));
        timed += pair[0] + pair[1];
        if ratios.len() >= runs && (timed >= CONTROL_BUDGET || ratios.len() >= CONTROL_MAX_PAIRS) {
            break;
        }
    }
    engine.measure_without_disclosure_control(false);
    let quartile = |p: f64| common::percentile_by(&ratios, p, f64::total_cmp);
    Ok(ControlCost {
        name: q.name,
        off: common::median(&off),
        on: common::median(&on),
        ratios: [quartile(25.0), quartile(50.0), quartile(75.0)],
        pairs: ratios.len(),
    })
}

fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let persons = common::env_u64("SAMKOR_BENCH_PERSONS", 200_000);
    let seed = common::env_u64("SAMKOR_BENCH_SEED", 1);
    let runs = common::env_u64("SAMKOR_BENCH_RUNS", 5) as usize;
    let latency_runs = common::env_u64("SAMKOR_BENCH_LATENCY_RUNS", 200) as usize;
    let explain = std::env::var("SAMKOR_BENCH_EXPLAIN").is_ok_and(|v| v == "1");
    let profile = std::env::var("SAMKOR_BENCH_PROFILE").ok().map(|v| v.parse::<usize>()).transpose()?;
    let bench_started = Instant::now();

    let tmp = tempfile::Builder::new().prefix("samkor-bench-fed-").tempdir()?;
    let dir = tmp.path().to_owned();
    eprintln!("synthesising {persons} persons into {} ...", dir.display());
    let (summary, synth_time) = common::synth(&dir, persons, seed, PROJECT);
    let parquet_bytes: u64 = samkor::federation::REGISTERS.iter().map(|r| common::dir_bytes(&dir.join(r))).sum();

    eprintln!("DuckDB (python3, 2 threads) on the same Parquet files ...");
    // Per query: the query, then its person-keyed form; then the small answer, both ways.
    let duck_queries: Vec<(&str, usize)> = QUERIES
        .iter()
        .flat_map(|q| [(q.sql, runs), (q.keyed, runs)])
        .chain([(SMALL_REGION, latency_runs), (SMALL_REGION_KEYED, latency_runs)])
        .collect();
    let duck = if profile.is_some() { Err("not run when profiling".to_owned()) } else { duckdb(&dir, &duck_queries) };
    let duck_at = |i: usize| duck.as_ref().ok().and_then(|(_, r)| r.get(i)).map(|(d, _)| *d);
    let rt = common::runtime();
    let mut out = String::new();
    use std::fmt::Write as _;
    rt.block_on(async {
        let fed = LocalFederation::start(&dir, &LocalOptions::default()).await?;
        let mut client = fed.client("alice", PROJECT).await?;
        let ctx = samkor::federation::pooled_session(&dir, PROJECT).await?;

        if let Some(qi) = profile {
            // Only one query, federated, for a profiler: no comparison, no report.
            let extra = [SMALL_REGION, SMALL_POP, SMALL_JOIN, SMALL_EMPTY]
                .map(|sql| Query { name: "latency query", kind: Kind::Single, sql, keyed: sql });
            let q = QUERIES
                .iter()
                .chain(&extra)
                .nth(qi.wrapping_sub(1))
                .context("SAMKOR_BENCH_PROFILE: a query number from 1 (6-9: the latency queries)")?;
            let control_off = std::env::var("SAMKOR_BENCH_CONTROL").is_ok_and(|v| v == "off");
            fed.coordinator.engine.measure_without_disclosure_control(control_off);
            eprintln!("profiling query {qi}: {} x {runs}{} ...", q.name, if control_off { ", disclosure control off" } else { "" });
            if explain {
                let (_, plan) = client.query(&format!("EXPLAIN {}", q.sql)).await?;
                println!("── EXPLAIN {} (coordinator)\n{}", q.name, arrow::util::pretty::pretty_format_batches(&plan)?);
            }
            for _ in 0..runs {
                let r = federated(&mut client, q.sql).await?;
                eprintln!("  {:.1} ms", ms(r.total));
            }
            return Ok(());
        }
        // ── federated vs pooled ──
        let mut rows = Vec::new();
        for (qi, q) in QUERIES.iter().enumerate() {
            eprintln!("query {}: {} ...", qi + 1, q.name);
            if explain {
                let (_, plan) = client.query(&format!("EXPLAIN {}", q.sql)).await?;
                println!("── EXPLAIN {} (coordinator)\n{}", q.name, arrow::util::pretty::pretty_format_batches(&plan)?);
            }
            // Warm-up (file metadata, connections), and the answers to compare.
            let (_, pooled_batches) = pooled(&ctx, q.sql).await?;
            let fed_run = federated(&mut client, q.sql).await?;
            let (released, withheld) = common::released(&fed_run.batches);
            // Equal when nothing was withheld; otherwise the count of withheld cells is shown.
            let agree = if withheld == 0 {
                (common::sorted_lines(&pooled_batches) == common::sorted_lines(&released)).to_string()
            } else {
                format!("{withheld} withheld")
            };
            let result_rows: usize = fed_run.batches.iter().map(|b| b.num_rows()).sum();
            let (mut p, mut f, mut fp) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..runs {
                // Interleaved, alternating which side goes first.
                if i % 2 == 0 {
                    p.push(pooled(&ctx, q.sql).await?.0);
                    let r = federated(&mut client, q.sql).await?;
                    f.push(r.total);
                    fp.push(r.plan);
                } else {
                    let r = federated(&mut client, q.sql).await?;
                    f.push(r.total);
                    fp.push(r.plan);
                    p.push(pooled(&ctx, q.sql).await?.0);
                }
            }
            rows.push((q, common::median(&p), common::median(&f), common::median(&fp), result_rows, agree));
        }

        // ── the cost of disclosure control: the same federated query with and without it ──
        let mut control = Vec::new();
        for q in QUERIES {
            eprintln!("disclosure control: {} ...", q.name);
            control.push(control_cost(&fed.coordinator.engine, &mut client, q, runs).await?);
        }

        // ── end-to-end latency of small aggregates ──
        let mut latency = Vec::new();
        for (name, sql) in [
            ("pop: one region, by sex (1 node)", SMALL_REGION),
            ("count(*) pop.persons (1 node)", SMALL_POP),
            ("count over hip ⋈ dors (2 nodes)", SMALL_JOIN),
            ("hip: a count of no rows (fixed cost)", SMALL_EMPTY),
        ] {
            eprintln!("latency: {name} x {latency_runs} ...");
            for _ in 0..5 {
                client.query(sql).await?;
            }
            let mut samples = Vec::with_capacity(latency_runs);
            for _ in 0..latency_runs {
                let t = Instant::now();
                client.query(sql).await?;
                samples.push(t.elapsed());
            }
            let mut pooled_samples = Vec::with_capacity(latency_runs);
            for _ in 0..latency_runs {
                pooled_samples.push(pooled(&ctx, sql).await?.0);
            }
            latency.push((name, samples, pooled_samples));
        }

        // ── coordinator memory: a separate `samkor coordinator` over the in-process nodes ──
        eprintln!("coordinator memory ...");
        let addresses: Vec<(String, String)> =
            fed.nodes.iter().map(|n| (n.state.register().to_owned(), n.addr.to_string())).collect();
        let options = LocalOptions::default();
        let toml = samkor::federation::coordinator_toml("127.0.0.1:0", &addresses, &options);
        let config = dir.join("coordinator-bench.toml");
        std::fs::write(&config, toml)?;
        let log = dir.join("coordinator-bench.log");
        let coord = common::Server::spawn(
            &["coordinator", "--config", config.to_str().context("utf-8 path")?],
            "serving Flight SQL on ",
            &log,
        );
        let started_mem = coord.mem();
        let identity = common::identity(&dir, "alice");
        let mut c2 = Client::connect(&coord.addr, &identity, PROJECT).await?;
        c2.query(SMALL_POP).await?;
        let baseline = coord.mem();
        let reset = common::reset_hwm(coord.pid());
        let before = coord.mem();
        let log_offset = std::fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
        let mq = &QUERIES[MEMORY_QUERY];
        let sampler = common::RssSampler::start(coord.pid(), Duration::from_millis(5));
        let run = federated(&mut c2, mq.sql).await?;
        let (sampled_max, samples) = sampler.stop();
        let after = coord.mem();
        let shipped = sub_queries(&log, log_offset);
        drop(coord);

        // ── report ──
        let counts: Vec<String> =
            summary.tables.iter().map(|t| format!("{}.{} {}", t.register, t.table, t.rows)).collect();
        writeln!(out, "\n══ samkor federation benchmark ══")?;
        writeln!(out, "persons: {persons} (seed {seed}); synth {:.1} s, {:.1} MiB Parquet, {} opt-outs", synth_time.as_secs_f64(), parquet_bytes as f64 / 1048576.0, summary.opted_out)?;
        writeln!(out, "rows: {}", counts.join(", "))?;
        writeln!(out, "machine: {} cores; runs per query and side: {runs} (+1 warm-up), median shown; plan = GetFlightInfo part of federated", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))?;
        match &duck {
            Ok((version, _)) => writeln!(out, "DuckDB {version} (python3, threads = 2), same Parquet files pooled, identity column as `person`, no opt-outs; median of {runs} after a warm-up")?,
            Err(e) => writeln!(out, "DuckDB not measured: {e}")?,
        }
        writeln!(out, "federated = disclosure control on, through the Flight SQL client (GetFlightInfo + DoGet)")?;
        writeln!(
            out,
            "\n{:<40} {:>9} {:>9} {:>9} {:>12} {:>9} {:>8} {:>10} {:>8} {:>10} {:>8} {:>5} {:>6}",
            "query", "DuckDB ms", "keyed ms", "pooled ms", "federated ms", "(plan ms)", "/pooled", "goal", "/DuckDB", "goal", "/keyed", "rows", "same"
        )?;
        for (i, (q, p, f, fp, n, agree)) in rows.iter().enumerate() {
            let ratio = ms(*f) / ms(*p).max(1e-9);
            let goal = format!("≤{}x {}", q.kind.goal(), if ratio <= q.kind.goal() { "ok" } else { "MISS" });
            let (dms, dratio, dgoal) = match duck_at(2 * i) {
                Some(d) => {
                    let r = ms(*f) / ms(d).max(1e-9);
                    (format!("{:.1}", ms(d)), format!("{r:.2}x"), format!("≤{DUCKDB_GOAL}x {}", if r <= DUCKDB_GOAL { "ok" } else { "MISS" }))
                }
                None => ("-".into(), "-".into(), "-".into()),
            };
            let (kms, kratio) = match duck_at(2 * i + 1) {
                Some(k) => (format!("{:.1}", ms(k)), format!("{:.2}x", ms(*f) / ms(k).max(1e-9))),
                None => ("-".into(), "-".into()),
            };
            writeln!(out, "{:<40} {:>9} {:>9} {:>9.1} {:>12.1} {:>9.1} {:>7.2}x {:>10} {:>8} {:>10} {:>8} {:>5} {:>6}", q.name, dms, kms, ms(*p), ms(*f), ms(*fp), ratio, goal, dratio, dgoal, kratio, n, agree)?;
        }
        writeln!(
            out,
            "\ndisclosure control (same federated query without and with it, run in pairs, the order alternating; \
             at least {runs} pairs, more while a query's pairs take under {} s, up to {CONTROL_MAX_PAIRS}):",
            CONTROL_BUDGET.as_secs()
        )?;
        writeln!(out, "{:<40} {:>12} {:>12} {:>7} {:>15} {:>6}", "query", "without ms", "with ms", "ratio", "p25-p75", "pairs")?;
        for c in &control {
            let spread = format!("{:.2}-{:.2}x", c.ratios[0], c.ratios[2]);
            writeln!(
                out,
                "{:<40} {:>12.1} {:>12.1} {:>6.2}x {:>15} {:>6}",
                c.name,
                ms(c.off),
                ms(c.on),
                c.ratios[1],
                spread,
                c.pairs
            )?;
        }
        writeln!(out, "ratio = median over the pairs of with / without (a pair shares the machine's state); p25-p75 its spread")?;
        writeln!(out, "goals: single-register aggregate within 1.3x of pooled, two-register join within 2x; every query within {DUCKDB_GOAL}x of DuckDB; disclosure control ≤ 1.5x")?;
        writeln!(out, "keyed = the same answer in DuckDB with the person-keyed work of disclosure control per cell (persons, a cell key: sum of a hash per person, the two largest per-person totals of a sum)")?;
        writeln!(out, "\nend-to-end latency, {latency_runs} runs each (federated through the coordinator / pooled):")?;
        for (name, s, ps) in &latency {
            writeln!(out, "  {:<34} federated p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms | pooled p50 {:>6.2} ms  p99 {:>6.2} ms",
                name, ms(common::percentile(s, 50.0)), ms(common::percentile(s, 99.0)), ms(common::percentile(s, 100.0)),
                ms(common::percentile(ps, 50.0)), ms(common::percentile(ps, 99.0)))?;
        }
        let n = QUERIES.len();
        if let (Some(d), Some(k)) = (duck_at(2 * n), duck_at(2 * n + 1)) {
            writeln!(out, "  {:<34} DuckDB median {:>6.2} ms, keyed {:>6.2} ms (in process, no client)", "pop: one region, by sex", ms(d), ms(k))?;
        }
        writeln!(out, "\ncoordinator memory (separate `samkor coordinator` process, in-process nodes), query: {}", mq.name)?;
        writeln!(out, "  after start:               RSS {}  VmHWM {}", mib(started_mem.rss_kib), mib(started_mem.hwm_kib))?;
        writeln!(out, "  baseline (after warm-up):  RSS {}  VmHWM {}", mib(baseline.rss_kib), mib(baseline.hwm_kib))?;
        writeln!(out, "  before join{}: RSS {}  VmHWM {}", if reset { " (HWM reset)" } else { "            " }, mib(before.rss_kib), mib(before.hwm_kib))?;
        writeln!(out, "  after join:                RSS {}  VmHWM {}  (sampled max RSS {} over {samples} samples)", mib(after.rss_kib), mib(after.hwm_kib), mib(sampled_max))?;
        writeln!(out, "  join peak over baseline:   {}   ({:.1} ms, {} result rows)", mib(after.hwm_kib.saturating_sub(before.rss_kib)), ms(run.total), run.batches.iter().map(|b| b.num_rows()).sum::<usize>())?;
        if !shipped.is_empty() {
            writeln!(out, "  sub-queries sent by the coordinator for it:")?;
            for s in &shipped {
                writeln!(out, "    {s}")?;
            }
        }
        fed.shutdown().await;
        anyhow::Ok(())
    })?;
    print!("{out}");
    println!("bench wall time: {:.1} s", bench_started.elapsed().as_secs_f64());
    if std::env::var("SAMKOR_BENCH_KEEP").is_ok_and(|v| v == "1") {
        println!("kept {}", tmp.keep().display());
    }
    Ok(())
}

/// The `sub-query sent` lines of the coordinator's log after `offset` (register and SQL).
fn sub_queries(log: &std::path::Path, offset: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let text = strip_ansi(text.get(offset..).unwrap_or_default());
    text.lines()
        .filter(|l| l.contains("sub-query sent"))
        .filter_map(|l| {
            let reg = l.split("register=").nth(1)?.split_whitespace().next()?;
            let sql = l.split("sql=").nth(1)?;
            Some(format!("{reg}: {sql}"))
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
