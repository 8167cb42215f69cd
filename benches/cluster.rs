//! A node in front of a cluster vs the plain Parquet node: the node's
//! filtered group-by on `lmr.dispensations` with its scan on 1, 2 and 3
//! `samkor worker` processes on loopback (node and workers over mutual TLS),
//! median of several runs. On a
//! machine with few cores the workers compete with the node for the same
//! cores, so this measures the cluster's overhead (plans to serialize, rows
//! through gRPC/Arrow IPC), not a speed-up.
//!
//! ```text
//!  samkor synth (SAMKOR_BENCH_CLUSTER_PERSONS persons) ─▶ Parquet ─▶ NodeState (files, in process)
//!                                                          └──────▶ NodeState + [cluster] workers = 1..3
//!  SELECT atc, count(*), sum(ddd) FROM dispensations WHERE region = 'Skåne' GROUP BY atc
//! ```
//!
//! Run: `CARGO_TARGET_DIR=/work/target-release nice -n 15 cargo bench --bench cluster`
//! Environment: SAMKOR_BENCH_CLUSTER_PERSONS (default 1250000, ~10 M dispensations),
//! SAMKOR_BENCH_RUNS (default 3), SAMKOR_BENCH_CLUSTER_DIR (reuse a synth directory;
//! default a temp dir).

mod common;

use std::time::Duration;

use samkor_node::access::Scope;
use samkor_node::{NodeConfig, NodeState};

fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let persons = common::env_u64("SAMKOR_BENCH_CLUSTER_PERSONS", 1_250_000);
    let runs = common::env_u64("SAMKOR_BENCH_RUNS", 3) as usize;
    let tmp = tempfile::tempdir()?;
    let dir = std::env::var("SAMKOR_BENCH_CLUSTER_DIR").map(Into::into).unwrap_or_else(|_| tmp.path().to_owned());
    let node_toml = dir.join("lmr").join("node.toml");
    common::registers_once(&dir, persons)?;
    let certs = dir.join("certs");
    if !certs.join("worker.pem").exists() {
        samkor::certs::init(&certs, &["lmr"], &[])?;
        samkor::certs::issue(&certs, &["worker".to_owned()])?;
    }
    let text = std::fs::read_to_string(&node_toml)?;
    let data = dir.join("lmr").display().to_string();
    let file = |name: &str| certs.join(name).display().to_string();
    let (cert, key, ca) = (file("worker.pem"), file("worker.key"), file("ca.pem"));
    let workers: Vec<common::Server> = (0..3)
        .map(|i| {
            common::Server::spawn(
                &[
                    "worker",
                    "--listen",
                    "127.0.0.1:0",
                    "--data",
                    &data,
                    "--cert",
                    &cert,
                    "--key",
                    &key,
                    "--ca",
                    &ca,
                    "--node",
                    "node-lmr",
                ],
                "listening on ",
                &dir.join(format!("worker-{i}.stderr")),
            )
        })
        .collect();
    common::runtime().block_on(async {
        let mut plain = NodeConfig::parse(&node_toml, &text)?;
        plain.node.audit_log = dir.join("lmr").join("bench-files.jsonl");
        let plain = NodeState::open(plain).await?;
        let ctx = plain.session(&Scope::Project("bench".into()), None)?;
        let rows = ctx.sql("SELECT count(*) FROM dispensations").await?.collect().await?;
        println!(
            "lmr.dispensations: {} rows",
            arrow::util::pretty::pretty_format_batches(&rows)?
                .to_string()
                .lines()
                .nth(3)
                .unwrap_or_default()
                .trim_matches(|c: char| c == '|' || c == ' ')
        );
        println!("query: {}", common::NODE_GROUP_BY);
        let (times, groups) = common::node_group_by_runs(&plain, runs).await?;
        report("parquet", &times, runs, groups);
        for n in 1..=3 {
            let list: Vec<String> = workers[..n].iter().map(|w| format!("\"https://{}\"", w.addr)).collect();
            let with = format!("{text}\n[cluster]\nworkers = [{}]\n", list.join(", "));
            let mut config = NodeConfig::parse(&node_toml, &with)?;
            config.node.audit_log = dir.join("lmr").join(format!("bench-cluster-{n}.jsonl"));
            let state = NodeState::open(config).await?;
            let (times, groups) = common::node_group_by_runs(&state, runs).await?;
            report(&format!("{n} worker{}", if n == 1 { "" } else { "s" }), &times, runs, groups);
        }
        anyhow::Ok(())
    })?;
    Ok(())
}

fn report(name: &str, times: &[Duration], runs: usize, groups: usize) {
    println!(
        "{name:<10} median {:>8.1} ms  min {:>8.1} ms  max {:>8.1} ms  ({runs} runs, {groups} groups)",
        common::ms(times[times.len() / 2]),
        common::ms(times[0]),
        common::ms(times[times.len() - 1])
    );
}
