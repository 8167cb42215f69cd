//! Shared fixtures: one synthetic federation per test run, servers per test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use samkor::federation::{LocalFederation, LocalOptions, REGISTERS};

/// Persons in the test federation: enough for meaningful groups, small enough for debug builds.
pub const PERSONS: u64 = 8_000;
pub const SEED: u64 = 7;
/// Users with certificates in the test federation (`dora` is the care
/// provider of the synthetic directory, bound to a hospital; `erik` is bound to none).
pub const USERS: [&str; 5] = ["alice", "bob", "carol", "dora", "erik"];

fn generate(dir: &Path) {
    samkor::certs::init(&dir.join("certs"), &REGISTERS, &USERS).expect("development certificates");
    samkor::certs::write_federation_key(&dir.join("federation.key")).expect("federation key");
    samkor::synth::generate(&samkor::synth::SynthOptions { out: dir.to_owned(), persons: PERSONS, seed: SEED })
        .expect("synthetic registers");
    for project in ["P-1", "P-2", "matrix", "P-python", "P-trace"] {
        samkor::federation::write_full_approval(dir, project, &["alice"], &["aggregate", "pseudonymised_microdata"])
            .expect("approval");
    }
    for (name, text) in governance_approvals() {
        std::fs::write(dir.join("approvals").join(format!("{name}.toml")), text).expect("approval");
    }
}

/// A narrow approval: two tables, few columns, operations 2012–2016 only.
fn narrow(project: &str, members: &str, from: &str, until: &str, outputs: &str) -> String {
    format!(
        r#"project = "{project}"
title = "Governance test"
ethics_reference = "Dnr 2026-04711-01"
ethics_authority = "Etikprövningsmyndigheten"
principal_investigator = "{members}"
members = ["{members}"]
purpose = "Test the enforcement of approvals."
valid_from = {from}
valid_until = {until}
outputs = [{outputs}]

[[tables]]
table = "hip.operations"
columns = ["person", "op_date", "fixation", "region", "hospital"]
  [[tables.rows]]
  column = "op_date"
  from = 2012-01-01
  until = 2016-12-31

[[tables]]
table = "dors.deaths"
columns = ["person", "death_date"]
"#
    )
}

fn governance_approvals() -> Vec<(&'static str, String)> {
    vec![
        ("G-narrow", narrow("G-narrow", "alice", "2020-01-01", "2099-12-31", "\"aggregate\"")),
        ("G-micro", narrow("G-micro", "alice", "2020-01-01", "2099-12-31", "\"aggregate\", \"pseudonymised_microdata\"")),
        ("G-expired", narrow("G-expired", "alice", "2020-01-01", "2021-12-31", "\"aggregate\"")),
        ("G-future", narrow("G-future", "alice", "2099-01-01", "2099-12-31", "\"aggregate\"")),
        ("G-bob", narrow("G-bob", "bob", "2020-01-01", "2099-12-31", "\"aggregate\"")),
    ]
}

/// The synthetic federation shared by all tests (read-only: copy it before changing files).
pub fn synth_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("samkor-it-").tempdir().expect("tempdir").keep();
        generate(&dir);
        dir
    })
}

/// A private copy of the synthetic federation, for tests that change files.
pub fn private_copy() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("samkor-it-copy-").tempdir().expect("tempdir");
    copy_dir(synth_dir(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A second, unrelated CA with a user certificate: never trusted by the federation.
pub fn rogue_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("samkor-rogue-").tempdir().expect("tempdir").keep();
        samkor::certs::init(&dir, &[], &["mallory", "coordinator-impostor"]).expect("rogue certificates");
        dir
    })
}

/// Starts all five nodes and a coordinator on the shared data.
pub async fn federation() -> LocalFederation {
    federation_with(&LocalOptions::default()).await
}

pub async fn federation_with(options: &LocalOptions) -> LocalFederation {
    LocalFederation::start(synth_dir(), options).await.expect("federation starts")
}

/// Renders batches as sorted lines, for order-insensitive comparison.
pub fn sorted_lines(batches: &[arrow::record_batch::RecordBatch]) -> Vec<String> {
    let text = arrow::util::pretty::pretty_format_batches(batches).expect("format").to_string();
    let mut lines: Vec<String> = text.lines().skip(3).filter(|l| !l.starts_with('+')).map(str::to_owned).collect();
    lines.sort();
    lines
}

/// A client straight to a node (bypassing the coordinator) with `user`'s
/// certificate from `dir` (`"coordinator"` for the coordinator's own).
pub fn node_client(dir: &Path, user: &str, node: &samkor_node::RunningNode) -> samkor_proto::client::NodeClient {
    let identity = samkor::federation::identity_files(dir, user).load().expect("identity");
    let endpoint = samkor_proto::client::NodeEndpoint {
        name: node.state.register().to_owned(),
        addr: node.addr.to_string(),
        tls_domain: "localhost".into(),
        connect_timeout: std::time::Duration::from_secs(5),
    };
    samkor_proto::client::NodeClient::new(endpoint, &identity).expect("client")
}
