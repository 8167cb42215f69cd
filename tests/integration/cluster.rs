//! Nodes in front of the holder's own cluster: `samkor worker` processes on
//! loopback scan the node's Parquet and CSV files (`datafusion-distributed`)
//! over mutual TLS with the federation's certificates; opt-outs, pseudonyms
//! and aggregates stay at the node. A worker that is missing, lost, hung or
//! refusing is a loud failure, never a skip. The correctness matrix and the
//! attack suite run on such a federation too (`matrix.rs`, `disclosure.rs`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use datafusion::physical_plan::displayable;
use samkor_node::access::Scope;
use samkor_node::{NodeConfig, NodeState};
use tokio::io::AsyncBufReadExt;

use crate::common;

const PROJECT: &str = "P-1";

/// Certificate name of the workers of the test federations (issued from the
/// federation CA into each private copy's `certs`).
const WORKER_CERT: &str = "worker";

/// `samkor worker` processes, killed when dropped.
#[derive(Debug)]
pub struct Workers {
    children: Vec<tokio::process::Child>,
    /// Each worker's log (standard error), when started with [`Workers::start_logging`].
    logs: Vec<Option<tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>>>,
    pub addrs: Vec<String>,
}

impl Workers {
    /// Starts `n` workers on free loopback ports reading files under `data`,
    /// serving over mutual TLS with a certificate from the federation CA of
    /// `fed` to the node of `data`'s register only; returns once each has
    /// printed the address it listens on.
    pub async fn start(n: usize, fed: &Path, data: &Path) -> Workers {
        Self::spawn(n, fed, data, &register_of(data), "warn").await
    }

    /// As [`Workers::start`], for the node of `register` (not `data`'s).
    pub async fn start_for(n: usize, fed: &Path, data: &Path, register: &str) -> Workers {
        Self::spawn(n, fed, data, register, "warn").await
    }

    /// As [`Workers::start`], logging at `info` to a pipe [`Workers::wait_for_log`] reads.
    pub async fn start_logging(n: usize, fed: &Path, data: &Path) -> Workers {
        Self::spawn(n, fed, data, &register_of(data), "info").await
    }

    async fn spawn(n: usize, fed: &Path, data: &Path, register: &str, log: &str) -> Workers {
        let certs = fed.join("certs");
        if !certs.join(format!("{WORKER_CERT}.pem")).exists() {
            samkor::certs::issue(&certs, &[WORKER_CERT.to_owned()])
                .expect("a worker certificate from the federation CA");
        }
        let mut workers = Workers { children: Vec::new(), logs: Vec::new(), addrs: Vec::new() };
        for _ in 0..n {
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_samkor"))
                .args(["worker", "--listen", "127.0.0.1:0", "--data"])
                .arg(data)
                .arg("--cert")
                .arg(certs.join(format!("{WORKER_CERT}.pem")))
                .arg("--key")
                .arg(certs.join(format!("{WORKER_CERT}.key")))
                .arg("--ca")
                .arg(certs.join("ca.pem"))
                .args(["--node", &samkor::certs::node_name(register)])
                .env("SAMKOR_LOG", log)
                .stdout(std::process::Stdio::piped())
                .stderr(if log == "warn" { std::process::Stdio::inherit() } else { std::process::Stdio::piped() })
                .kill_on_drop(true)
                .spawn()
                .expect("a `samkor worker` process starts");
            workers.logs.push(child.stderr.take().map(|e| tokio::io::BufReader::new(e).lines()));
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

    /// Stops worker `i` (SIGSTOP): its connections stay open, it answers nothing.
    pub fn hang(&self, i: usize) {
        let pid = self.children[i].id().expect("the worker runs").to_string();
        let status = std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill -STOP");
        assert!(status.success(), "the worker is stopped");
    }

    /// Waits until worker `i` (started with [`Workers::start_logging`]) logs a line holding `needle`.
    pub async fn wait_for_log(&mut self, i: usize, needle: &str) {
        let log = self.logs[i].as_mut().expect("a worker started with start_logging");
        while let Some(line) = log.next_line().await.expect("read the worker's log") {
            if line.contains(needle) {
                return;
            }
        }
        panic!("worker {i} ended without logging {needle:?}");
    }

    /// The `[cluster]` section naming these workers.
    pub fn section(&self) -> String {
        let list: Vec<String> = self.addrs.iter().map(|a| format!("\"https://{a}\"")).collect();
        format!("\n[cluster]\nworkers = [{}]\n", list.join(", "))
    }
}

/// The register whose files lie in `data` (its directory name).
fn register_of(data: &Path) -> String {
    data.file_name().expect("a register directory").to_string_lossy().into_owned()
}

/// A private copy of the synthetic federation whose `registers` scan their
/// files on `n` workers each (their own workers, as separate holders would).
pub async fn federation_dir(registers: &[&str], n: usize) -> (tempfile::TempDir, Vec<Workers>) {
    let dir = common::private_copy();
    let mut all = Vec::new();
    for register in registers {
        let workers = Workers::start(n, dir.path(), &dir.path().join(register)).await;
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

/// The node splits Skåne's persons by record key beside a float sum and a
/// mean: each partial takes its rows in an order fixed by the data, and the
/// sum is exact, so repeating the query gives the same bits every time (with
/// rows handed on as they arrived, a sum's last bits changed from run to run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_repeated_gives_the_same_float_answers() {
    let sql = "SELECT atc, count(*) AS n, sum(ddd) AS ddd, avg(ddd) AS mean FROM lmr.dispensations \
               WHERE region = 'Skåne' GROUP BY atc";
    let fed = exact_federation_in(common::synth_dir()).await;
    let mut client = fed.client("alice", PROJECT).await.expect("client");
    let mut answers = Vec::new();
    for _ in 0..4 {
        let (_, b) = client.query(sql).await.expect("answer");
        answers.push(common::sorted_lines(&b));
    }
    fed.shutdown().await;
    assert!(answers[0].len() > 10, "{:?}", answers[0]);
    for (i, a) in answers.iter().enumerate().skip(1) {
        assert_eq!(a, &answers[0], "run {i} differs from the first");
    }
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
    let workers = Workers::start_for(2, dir.path(), &dir.path().join("hip"), "lmr").await;
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

/// A node config of `dir`'s `register` whose `[cluster]` is `workers` plus `extra` lines.
fn with_cluster(dir: &Path, register: &str, workers: &Workers, extra: &str) {
    let path = dir.join(register).join("node.toml");
    let text = std::fs::read_to_string(&path).expect("node.toml") + &workers.section() + extra;
    std::fs::write(&path, text).expect("node.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_admits_only_the_holders_node_with_a_federation_certificate() {
    let dir = common::private_copy();
    let workers = Workers::start(1, dir.path(), &dir.path().join("lmr")).await;
    with_cluster(dir.path(), "lmr", &workers, "");
    let worker = &workers.addrs[0];
    let config = || samkor::federation::node_config(dir.path(), "lmr", true).expect("config");

    // The node presents a certificate of another CA (it trusts the federation CA, so
    // the handshake fails at the worker): the node does not start, naming the worker.
    let mut rogue = config();
    rogue.tls.cert = common::rogue_dir().join("mallory.pem");
    rogue.tls.key = common::rogue_dir().join("mallory.key");
    let e = open_error(rogue).await;
    assert!(e.starts_with(&format!("node lmr: cluster worker {worker} refused the node's connection")), "{e}");

    // A certificate of the federation CA that is not the holder's node (a researcher's).
    let mut alice = config();
    alice.tls.cert = dir.path().join("certs").join("alice.pem");
    alice.tls.key = dir.path().join("certs").join("alice.key");
    let e = open_error(alice).await;
    assert!(e.starts_with(&format!("node lmr: cluster worker {worker} refused the node's connection")), "{e}");
    assert!(e.contains("the certificate alice is not one of the holder's nodes (node-lmr)"), "{e}");

    // No client certificate at all: the TLS handshake is refused before any call.
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(dir.path().join("certs/ca.pem")).expect("ca"));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{worker}"))
        .expect("endpoint")
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost"))
        .expect("tls")
        .connect_lazy();
    let Err(e) = arrow_flight::FlightClient::new(channel).do_action(arrow_flight::Action::new("anything", "")).await
    else {
        panic!("a client without a certificate gets nothing");
    };
    let text = format!("{e:?}");
    // Refused at the TLS layer (the connection is closed), not by a gRPC answer
    // (`Unimplemented` for the call, or the worker's own `Unauthenticated`).
    assert!(text.contains("tonic::transport::Error(Transport"), "refused before any call: {text}");
    assert!(!text.contains("Unimplemented") && !text.contains("Unauthenticated"), "{text}");

    // The node with its own certificate is admitted and answers through the worker.
    let state = NodeState::open(config()).await.expect("the node opens with its worker");
    let ctx = state.session(&Scope::Project(PROJECT.into()), None).expect("session");
    let rows = ctx.sql("SELECT count(*) FROM dispensations").await.expect("plan").collect().await.expect("answer");
    assert_ne!(common::rows(&rows), vec![vec!["0".to_owned()]]);
}

#[test]
fn a_worker_without_certificates_does_not_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_samkor"))
        .args(["worker", "--listen", "127.0.0.1:0", "--data"])
        .arg(common::synth_dir().join("lmr"))
        .env("SAMKOR_LOG", "warn")
        .output()
        .expect("samkor worker runs");
    assert_eq!(out.status.code(), Some(1), "refused, not serving plain gRPC");
    assert!(out.stdout.is_empty(), "never says it listens");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("samkor: worker: no --cert: a worker serves only over mutual TLS;"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_plain_http_worker_refuses_to_start() {
    let dir = common::private_copy();
    let workers = Workers::start(1, dir.path(), &dir.path().join("lmr")).await;
    let worker = &workers.addrs[0];
    let path = dir.path().join("lmr").join("node.toml");
    let text =
        std::fs::read_to_string(&path).expect("node.toml") + &format!("\n[cluster]\nworkers = [\"http://{worker}\"]\n");
    std::fs::write(&path, text).expect("node.toml");
    let e = samkor::federation::node_config(dir.path(), "lmr", true).expect_err("refused at config load").to_string();
    assert!(e.contains(&format!("[cluster] worker \"http://{worker}\" is plain http://")), "{e}");
    assert!(e.contains("mutual TLS only"), "says why and what to do: {e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_in_the_middle_of_a_scan_fails_the_query_naming_node_table_and_worker() {
    let dir = common::private_copy();
    // A long scan: the register's file many times over.
    let files = dir.path().join("lmr").join("dispensations");
    for i in 1..=60 {
        std::fs::copy(files.join("part-00000.parquet"), files.join(format!("part-{:05}.parquet", 10_000 + i)))
            .expect("copy");
    }
    let mut workers = Workers::start_logging(2, dir.path(), &dir.path().join("lmr")).await;
    with_cluster(dir.path(), "lmr", &workers, "");
    let fed = exact_federation_in(dir.path()).await;
    let mut client = fed.client("alice", PROJECT).await.expect("client");
    let query = tokio::spawn(async move {
        client.query("SELECT atc, count(DISTINCT person) AS persons FROM lmr.dispensations GROUP BY atc").await
    });
    // The worker has its scan plan: the query is running on it.
    workers.wait_for_log(0, "scan plan accepted").await;
    let lost = workers.addrs[0].clone();
    workers.kill(0).await;
    let e = query.await.expect("the query task").expect_err("no answer, not part of one, when a worker is lost");
    let text = e.to_string();
    assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e:?}");
    assert!(text.contains("node lmr, table dispensations"), "names node and table: {text}");
    assert!(text.contains(&format!("worker {lost}")), "names the worker: {text}");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_fails_the_scan_naming_it() {
    let dir = common::private_copy();
    let workers = Workers::start(2, dir.path(), &dir.path().join("lmr")).await;
    with_cluster(dir.path(), "lmr", &workers, "worker_timeout_secs = 2\n");
    let state = open(dir.path(), "lmr").await;
    // Stopped: its connections stay open, it answers nothing.
    workers.hang(0);
    let ctx = state.session(&Scope::Project(PROJECT.into()), None).expect("session");
    let answer = ctx.sql("SELECT atc, count(*) FROM dispensations GROUP BY atc").await.expect("plan").collect();
    // A guard only (the node's own limit is worker_timeout_secs): a hang would fail here.
    let e = tokio::time::timeout(Duration::from_secs(120), answer)
        .await
        .expect("the node gives up on a hung worker by itself")
        .expect_err("no answer from a hung worker");
    let text = e.to_string();
    assert!(text.contains("node lmr, table dispensations: the scan on the holder's cluster failed"), "{text}");
    assert!(text.contains(&format!("worker {}", workers.addrs[0])), "names the hung worker: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_table_is_scanned_on_the_workers_as_at_the_node() {
    let dir = common::private_copy();
    // The register's dispensations as CSV files, identity numbers included.
    let raw = datafusion::prelude::SessionContext::new();
    let parquet = dir.path().join("lmr").join("dispensations");
    raw.register_parquet("d", parquet.to_str().expect("path"), Default::default()).await.expect("raw files");
    let batches = raw
        .sql("SELECT arrow_cast(pnr, 'Utf8') AS pnr, arrow_cast(atc, 'Utf8') AS atc, ddd FROM d")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("rows");
    let csv = dir.path().join("lmr").join("refills");
    std::fs::create_dir_all(&csv).expect("mkdir");
    for (i, chunk) in batches.chunks(batches.len().div_ceil(3)).enumerate() {
        let file = std::fs::File::create(csv.join(format!("part-{i}.csv"))).expect("csv file");
        let mut writer = arrow::csv::Writer::new(file);
        for b in chunk {
            writer.write(b).expect("csv");
        }
    }
    let table = "\n[[tables]]\nname = \"refills\"\nformat = \"csv\"\npath = \"refills/*.csv\"\nperson_column = \"pnr\"\n\
                 columns = [{ name = \"pnr\", type = \"utf8\", identifying = true }, { name = \"atc\", type = \"utf8\" }, \
                 { name = \"ddd\", type = \"float64\" }]\n";
    let path = dir.path().join("lmr").join("node.toml");
    let text = std::fs::read_to_string(&path).expect("node.toml") + table;
    std::fs::write(&path, text).expect("node.toml");
    let sql =
        "SELECT atc, count(*) AS n, count(DISTINCT person) AS persons, min(ddd), max(ddd) FROM refills GROUP BY atc";
    let answer = |state: NodeState| async move {
        let ctx = state.session(&Scope::Project(PROJECT.into()), None).expect("session");
        let plan = ctx.sql(sql).await.expect("plan").create_physical_plan().await.expect("physical plan");
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        let batches = ctx.sql(sql).await.expect("plan").collect().await.expect("answer");
        (shown, common::sorted_lines(&batches))
    };
    let (at_node, from_files) = answer(open(dir.path(), "lmr").await).await;
    assert!(!at_node.contains("NetworkCoalesceExec"), "{at_node}");
    let workers = Workers::start(2, dir.path(), &dir.path().join("lmr")).await;
    with_cluster(dir.path(), "lmr", &workers, "");
    let (on_workers, from_cluster) = answer(open(dir.path(), "lmr").await).await;
    let at = |what: &str| on_workers.find(what).unwrap_or_else(|| panic!("{what} in the plan:\n{on_workers}"));
    assert!(at("PseudonymiseExec") < at("ClusterScanExec: table=refills"), "{on_workers}");
    assert!(at("NetworkCoalesceExec") < at("DataSourceExec"), "the CSV files are read on the workers:\n{on_workers}");
    assert!(on_workers[at("DataSourceExec")..].contains("csv"), "{on_workers}");
    assert!(!from_files.is_empty());
    assert_eq!(from_cluster, from_files);
}
