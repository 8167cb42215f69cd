//! Nodes in front of the holder's own cluster: `samkor worker` processes on
//! loopback scan the node's Parquet files (`datafusion-distributed`); opt-outs,
//! pseudonyms and aggregates stay at the node. A worker that is missing is a
//! loud failure, never a skip. The correctness matrix and the attack suite
//! run on such a federation too (`matrix.rs`, `disclosure.rs`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use datafusion::physical_plan::displayable;
use samkor_node::access::Scope;
use samkor_node::{NodeConfig, NodeState};
use tokio::io::AsyncBufReadExt;

use crate::common;

const PROJECT: &str = "P-1";

/// `samkor worker` processes, killed when dropped.
#[derive(Debug)]
pub struct Workers {
    children: Vec<tokio::process::Child>,
    pub addrs: Vec<String>,
}

impl Workers {
    /// Starts `n` workers on free loopback ports reading files under `data`;
    /// returns once each has printed the address it listens on.
    pub async fn start(n: usize, data: &Path) -> Workers {
        let mut workers = Workers { children: Vec::new(), addrs: Vec::new() };
        for _ in 0..n {
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_samkor"))
                .args(["worker", "--listen", "127.0.0.1:0", "--data"])
                .arg(data)
                .env("SAMKOR_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("a `samkor worker` process starts");
            let stdout = child.stdout.take().expect("stdout");
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("the worker prints its address")
                .expect("read")
                .expect("a line from the worker (did it fail to start?)");
            let addr =
                line.split_whitespace().find(|w| w.starts_with("127.0.0.1:")).expect("address in the line").to_owned();
            workers.addrs.push(addr);
            workers.children.push(child);
        }
        workers
    }

    /// Kills worker `i` now (a worker lost).
    pub async fn kill(&mut self, i: usize) {
        self.children[i].kill().await.expect("kill the worker");
    }

    /// The `[cluster]` section naming these workers.
    pub fn section(&self) -> String {
        let list: Vec<String> = self.addrs.iter().map(|a| format!("\"{a}\"")).collect();
        format!("\n[cluster]\nworkers = [{}]\n", list.join(", "))
    }
}

/// A private copy of the synthetic federation whose `registers` scan their
/// files on `n` workers each (their own workers, as separate holders would).
pub async fn federation_dir(registers: &[&str], n: usize) -> (tempfile::TempDir, Vec<Workers>) {
    let dir = common::private_copy();
    let mut all = Vec::new();
    for register in registers {
        let workers = Workers::start(n, &dir.path().join(register)).await;
        let path = dir.path().join(register).join("node.toml");
        let mut text = std::fs::read_to_string(&path).expect("node.toml");
        text.push_str(&workers.section());
        std::fs::write(&path, text).expect("node.toml");
        all.push(workers);
    }
    (dir, all)
}

/// The federation of `dir` without perturbation (answers compared exactly).
async fn exact_federation_in(dir: &Path) -> samkor::federation::LocalFederation {
    let options = samkor::federation::LocalOptions { perturbation: false, ..Default::default() };
    samkor::federation::LocalFederation::start(dir, &options).await.expect("federation starts")
}

async fn open(dir: &Path, register: &str) -> NodeState {
    NodeState::open(samkor::federation::node_config(dir, register, true).expect("config"))
        .await
        .expect("the node opens with its workers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_out_person_is_absent_when_workers_scan_the_rows() {
    let (dir, _workers) = federation_dir(&["lmr"], 2).await;
    let out = common::opted_out(dir.path(), "lmr");

    // The raw rows, read straight from the files: a dispensation of an opted-out person.
    let raw = datafusion::prelude::SessionContext::new();
    let files = dir.path().join("lmr").join("dispensations");
    raw.register_parquet("d", files.to_str().expect("path"), Default::default()).await.expect("raw files");
    let batches = raw
        .sql("SELECT arrow_cast(pnr, 'Utf8'), arrow_cast(atc, 'Utf8') FROM d")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("rows");
    let (pnrs, atcs) = (common::strings(&batches, 0), common::strings(&batches, 1));
    let hit = pnrs.iter().position(|p| out.contains(p)).expect("an opted-out person has a dispensation");
    let atc = &atcs[hit];
    let same: BTreeSet<String> = pnrs.iter().zip(&atcs).filter(|(_, a)| *a == atc).map(|(p, _)| p.clone()).collect();
    let kept: Vec<String> = same.iter().filter(|p| !out.contains(*p)).cloned().collect();
    assert!(same.len() > kept.len(), "the files hold the opted-out person's row under the filter");

    let state = open(dir.path(), "lmr").await;
    let ctx = state.session(&Scope::Project(PROJECT.into()), None).expect("session");
    let sql = format!("SELECT DISTINCT person FROM dispensations WHERE atc = '{atc}'");

    // The scan and the filter run on the workers, below the pseudonymiser at the node.
    let plan = ctx.sql(&sql).await.expect("plan").create_physical_plan().await.expect("physical plan");
    let shown = displayable(plan.as_ref()).indent(true).to_string();
    assert!(shown.starts_with("ClusterScanExec: tables=dispensations"), "a distributed plan:\n{shown}");
    let at = |what: &str| shown.find(what).unwrap_or_else(|| panic!("{what} in the plan:\n{shown}"));
    assert!(at("DistributedExec") < at("PseudonymiseExec"), "{shown}");
    let scan = "ClusterScanExec: table=dispensations";
    assert!(at("PseudonymiseExec") < at(scan), "pseudonymiser at the node, above the cluster:\n{shown}");
    assert!(at(scan) < at("NetworkCoalesceExec"), "{shown}");
    assert!(at("NetworkCoalesceExec") < at("DataSourceExec"), "the files are read on the workers:\n{shown}");
    let below = &shown[at("NetworkCoalesceExec")..];
    for kept_at_node in ["PseudonymiseExec", "AggregateExec"] {
        assert!(!below.contains(kept_at_node), "{kept_at_node} never runs on a worker:\n{shown}");
    }

    let batches = ctx.sql(&sql).await.expect("plan").collect().await.expect("answer");
    let served: BTreeSet<String> = common::strings(&batches, 0).into_iter().collect();
    let pseudonyms = |pnrs: &[String]| common::pseudonyms(dir.path(), PROJECT, pnrs);
    assert_eq!(served, pseudonyms(&kept), "exactly the persons who did not opt out, pseudonymised");
    assert!(served.is_disjoint(&pseudonyms(&[pnrs[hit].clone()])), "the opted-out person is absent");

    // Counts (also the persons-only count on identity numbers) exclude the opted-out person.
    let count = format!("SELECT count(DISTINCT person) FROM dispensations WHERE atc = '{atc}'");
    let batches = ctx.sql(&count).await.expect("plan").collect().await.expect("answer");
    assert_eq!(common::rows(&batches), vec![vec![kept.len().to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_federation_answers_through_a_cluster_as_from_files() {
    let (dir, _workers) = federation_dir(&["lmr"], 3).await;
    let sql = "SELECT atc, count(*) AS n, sum(ddd) AS ddd FROM lmr.dispensations WHERE region = 'Skåne' GROUP BY atc";
    let answer = |dir: std::path::PathBuf| async move {
        let fed = exact_federation_in(&dir).await;
        let mut client = fed.client("alice", PROJECT).await.expect("client");
        let (_, b) = client.query(sql).await.expect("answer");
        fed.shutdown().await;
        common::sorted_lines(&b)
    };
    let from_files = answer(common::synth_dir().to_owned()).await;
    let from_cluster = answer(dir.path().to_owned()).await;
    assert!(!from_files.is_empty());
    assert_eq!(from_cluster, from_files);
}

async fn open_error(config: NodeConfig) -> String {
    let e = NodeState::open(config).await.expect_err("the node must not start").to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_down_at_start_stops_the_node() {
    let (dir, mut workers) = federation_dir(&["lmr"], 2).await;
    let down = workers[0].addrs[1].clone();
    workers[0].kill(1).await;
    let e = open_error(samkor::federation::node_config(dir.path(), "lmr", true).expect("config")).await;
    assert!(e.starts_with(&format!("node lmr: cluster worker {down} does not answer")), "{e}");
    assert!(e.contains("samkor worker --listen"), "says what to do: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_lost_after_start_fails_the_subquery_naming_node_table_and_worker() {
    let (dir, mut workers) = federation_dir(&["lmr"], 2).await;
    let fed = exact_federation_in(dir.path()).await;
    let mut client = fed.client("alice", PROJECT).await.expect("client");
    let sql = "SELECT atc, count(*) FROM lmr.dispensations GROUP BY atc";
    client.query(sql).await.expect("answered while both workers run");
    let lost = workers[0].addrs[0].clone();
    workers[0].kill(0).await;
    let e = client.query(sql).await.expect_err("no answer without a worker");
    let text = e.to_string();
    assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e:?}");
    assert!(text.contains("node lmr, table dispensations"), "names node and table: {text}");
    assert!(text.contains(&lost), "names the worker: {text}");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_nothing_outside_its_data_directory() {
    let dir = common::private_copy();
    // The workers may read only the hip directory; lmr's node sends them lmr's files.
    let workers = Workers::start(2, &dir.path().join("hip")).await;
    let path = dir.path().join("lmr").join("node.toml");
    let text = std::fs::read_to_string(&path).expect("node.toml") + &workers.section();
    std::fs::write(&path, text).expect("node.toml");
    let state = open(dir.path(), "lmr").await;
    let ctx = state.session(&Scope::Project(PROJECT.into()), None).expect("session");
    let e = ctx
        .sql("SELECT count(*) FROM dispensations")
        .await
        .expect("plan")
        .collect()
        .await
        .expect_err("the workers refuse files outside their directory");
    let text = e.to_string();
    assert!(text.contains("node lmr, table dispensations: the scan on the holder's cluster failed"), "{text}");
}
