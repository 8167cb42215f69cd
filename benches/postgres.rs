//! A register served from PostgreSQL vs from Parquet: the node's filtered
//! group-by on `lmr.dispensations`, in process (DataFusion + the node's
//! pseudonymiser, no network), median of several runs.
//!
//! ```text
//!  samkor synth (SAMKOR_BENCH_PG_PERSONS persons) ─▶ Parquet ─▶ NodeState (files)
//!                                 └─ COPY into PostgreSQL ─▶ NodeState (database)
//!  SELECT atc, count(*), sum(ddd) FROM dispensations WHERE region = 'Skåne' GROUP BY atc
//! ```
//!
//! Run (a PostgreSQL server must be running; the URL is a libpq-style connection string):
//! `SAMKOR_BENCH_PG_URL="host=127.0.0.1 port=55432 user=samkor dbname=postgres" \
//!  CARGO_TARGET_DIR=/work/target-release cargo bench --bench postgres`
//! Environment: SAMKOR_BENCH_PG_PERSONS (default 1250000, ~10 M dispensations),
//! SAMKOR_BENCH_RUNS (default 5), SAMKOR_BENCH_PG_DIR (reuse a synth directory; default a temp dir).

mod common;

use std::time::Instant;

use anyhow::Context as _;
use samkor_node::{NodeConfig, NodeState};

fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let url = std::env::var("SAMKOR_BENCH_PG_URL")
        .context("SAMKOR_BENCH_PG_URL: the connection string of a PostgreSQL database to load into")?;
    let persons = common::env_u64("SAMKOR_BENCH_PG_PERSONS", 1_250_000);
    let runs = common::env_u64("SAMKOR_BENCH_RUNS", 5) as usize;
    let tmp = tempfile::tempdir()?;
    let dir = std::env::var("SAMKOR_BENCH_PG_DIR").map(Into::into).unwrap_or_else(|_| tmp.path().to_owned());
    let rt = common::runtime();
    let node_toml = dir.join("lmr").join("node.toml");
    common::registers_once(&dir, persons)?;
    let files_text = std::fs::read_to_string(&node_toml)?;
    anyhow::ensure!(files_text.contains("format = \"parquet\""), "{} must serve from Parquet", node_toml.display());
    rt.block_on(async {
        let t = Instant::now();
        let loaded = samkor::synth::postgres::load(&dir, &url, &["lmr"]).await?;
        let rows: u64 = loaded.iter().map(|l| l.rows).sum();
        println!("load lmr into PostgreSQL (binary COPY): {rows} rows in {:.1} s", t.elapsed().as_secs_f64());
        let mut files = NodeConfig::parse(&node_toml, &files_text)?;
        files.node.audit_log = dir.join("lmr").join("bench-files.jsonl");
        let mut database = NodeConfig::load(&node_toml)?;
        database.node.audit_log = dir.join("lmr").join("bench-pg.jsonl");
        let files = NodeState::open(files).await?;
        let database = NodeState::open(database).await?;
        println!("query: {}", common::NODE_GROUP_BY);
        for (name, state) in [("parquet", &files), ("postgres", &database)] {
            let (times, groups) = common::node_group_by_runs(state, runs).await?;
            println!(
                "{name:<9} median {:>8.1} ms  min {:>8.1} ms  max {:>8.1} ms  ({runs} runs, {groups} groups)",
                common::ms(times[times.len() / 2]),
                common::ms(times[0]),
                common::ms(times[times.len() - 1])
            );
        }
        std::fs::write(&node_toml, &files_text)?;
        anyhow::Ok(())
    })?;
    Ok(())
}
