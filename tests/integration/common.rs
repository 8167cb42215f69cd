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
        samkor::federation::write_full_approval(
            dir,
            project,
            &["alice"],
            &["aggregate", "pseudonymised_microdata"],
            true,
        )
        .expect("approval");
    }
    // Disclosure-control projects of the attack suite (tests/disclosure/).
    samkor::federation::write_full_approval(dir, "D-agg", &["alice"], &["aggregate"], false).expect("approval");
    samkor::federation::write_full_approval(
        dir,
        "D-micro",
        &["alice"],
        &["aggregate", "pseudonymised_microdata"],
        false,
    )
    .expect("approval");
    samkor::federation::write_full_approval(dir, "D-minmax", &["alice"], &["aggregate"], true).expect("approval");
    let strict = samkor::federation::full_approval_toml(dir, "D-round", &["alice"], &["aggregate"], false)
        .expect("approval")
        .replacen("\n[[tables]]", "\n[disclosure]\nmin_cell_persons = 10\nround_counts_to = 5\n\n[[tables]]", 1);
    std::fs::write(dir.join("approvals").join("D-round.toml"), strict).expect("approval");
    std::fs::write(dir.join("approvals").join("D-general.toml"), GENERALISED).expect("approval");
    for (name, text) in governance_approvals() {
        std::fs::write(dir.join("approvals").join(format!("{name}.toml")), text).expect("approval");
    }
}

/// Pseudonymised microdata with generalisations: birth date to year, admission to month, diagnosis to 3 characters.
const GENERALISED: &str = r#"project = "D-general"
title = "Generalised microdata"
ethics_reference = "Dnr 2026-04712-01"
ethics_authority = "Etikprövningsmyndigheten"
principal_investigator = "alice"
purpose = "Test generalisations of microdata."
valid_from = 2020-01-01
valid_until = 2099-12-31
outputs = ["aggregate", "pseudonymised_microdata"]

[[tables]]
table = "pop.persons"
columns = ["person", "birth_date", "sex", "region"]
generalise = { birth_date = "year" }

[[tables]]
table = "npr.inpatient"
columns = ["person", "admit_date", "main_dx", "hospital"]
generalise = { admit_date = "month", main_dx = "code3" }
"#;

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
        (
            "G-micro",
            narrow("G-micro", "alice", "2020-01-01", "2099-12-31", "\"aggregate\", \"pseudonymised_microdata\""),
        ),
        ("G-expired", narrow("G-expired", "alice", "2020-01-01", "2021-12-31", "\"aggregate\"")),
        ("G-future", narrow("G-future", "alice", "2099-01-01", "2099-12-31", "\"aggregate\"")),
        ("G-bob", narrow("G-bob", "bob", "2020-01-01", "2099-12-31", "\"aggregate\"")),
    ]
}

/// A new directory for a fixture shared by the tests of this process, removed
/// when the process exits: a `TempDir` in a static is never dropped, so the
/// directory would stay behind after every run.
pub fn shared_temp_dir(prefix: &str) -> PathBuf {
    static DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_all() {
        let dirs = std::mem::take(&mut *DIRS.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    // SAFETY: `remove_all` is an `extern "C" fn()` that does not unwind
    // (a poisoned lock is taken as is, removal errors are ignored).
    AT_EXIT.call_once(|| assert_eq!(unsafe { libc::atexit(remove_all) }, 0, "atexit"));
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir").keep();
    DIRS.lock().unwrap_or_else(|p| p.into_inner()).push(dir.clone());
    dir
}

/// The synthetic federation shared by all tests (read-only: copy it before changing files).
pub fn synth_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = shared_temp_dir("samkor-it-");
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
        let dir = shared_temp_dir("samkor-rogue-");
        samkor::certs::init(&dir, &[], &["mallory", "coordinator-impostor"]).expect("rogue certificates");
        dir
    })
}

/// Starts all five nodes and a coordinator on the shared data.
pub async fn federation() -> LocalFederation {
    federation_with(&LocalOptions::default()).await
}

/// A federation without the cell-key perturbation, for tests that compare
/// released cells with the exact pooled answer.
pub async fn exact_federation() -> LocalFederation {
    federation_with(&LocalOptions { perturbation: false, ..LocalOptions::default() }).await
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

/// Rows of an answer as text cells (nulls as `NULL`).
pub fn rows(batches: &[arrow::record_batch::RecordBatch]) -> Vec<Vec<String>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let f: Vec<_> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("format")).collect();
        for r in 0..b.num_rows() {
            out.push(f.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    out
}

/// A disclosure-controlled answer next to the exact pooled one: each
/// released row (keyed by its first column) must equal the pooled row on
/// every cell that was not withheld; withheld cells show as `..` on both
/// sides. Returns the two sides, sorted, for `assert_eq!`.
pub fn released_vs_pooled(
    got: &[arrow::record_batch::RecordBatch],
    pooled: &[arrow::record_batch::RecordBatch],
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let names: Vec<String> = got[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names.last().map(String::as_str), Some("withheld"), "a disclosure-controlled answer");
    let mut fed = Vec::new();
    let mut want = Vec::new();
    let pooled = rows(pooled);
    for mut row in rows(got) {
        let mark = row.pop().expect("marker column");
        assert!(!mark.starts_with('*'), "no group of this answer is below the threshold");
        let withheld: Vec<&str> = if mark == "NULL" { vec![] } else { mark.split(',').collect() };
        let mask = |r: &mut Vec<String>| {
            for (i, cell) in r.iter_mut().enumerate() {
                if withheld.contains(&names[i].as_str()) {
                    *cell = "..".into();
                }
            }
        };
        let mut p =
            pooled.iter().find(|p| p[0] == row[0]).cloned().unwrap_or_else(|| panic!("no pooled row for {row:?}"));
        mask(&mut row);
        mask(&mut p);
        fed.push(row);
        want.push(p);
    }
    assert_eq!(fed.len(), pooled.len(), "one released row per pooled row");
    fed.sort();
    want.sort();
    (fed, want)
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

/// The identity numbers on a register's opt-out list.
pub fn opted_out(dir: &Path, register: &str) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(dir.join(register).join("optout.txt"))
        .expect("opt-out list")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The values of a text column over batches.
pub fn strings(batches: &[arrow::record_batch::RecordBatch], col: usize) -> Vec<String> {
    use arrow::array::{Array, AsArray};
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column(col).as_string::<i32>();
            (0..a.len()).map(|i| a.value(i).to_owned()).collect::<Vec<_>>()
        })
        .collect()
}

/// The project pseudonyms of identity numbers, under the federation key in `dir`.
pub fn pseudonyms(dir: &Path, project: &str, pnrs: &[String]) -> std::collections::BTreeSet<String> {
    use arrow::array::{Array, AsArray, StringArray};
    let key = samkor_node::pseudonym::FederationKey::load(&dir.join("federation.key")).expect("key");
    let a = key.for_project(project).pseudonymise(&StringArray::from(pnrs.to_vec())).expect("pseudonyms");
    let a = a.as_string::<i32>();
    (0..a.len()).map(|i| a.value(i).to_owned()).collect()
}

/// An audit log's records once it holds at least `n` (a node writes the
/// record of a stream's end in the background, after the rows have left).
pub async fn audit_records(path: &Path, n: usize) -> Vec<samkor_policies::audit::AuditRecord> {
    for _ in 0..500 {
        let records = samkor_policies::audit::read_all(path).expect("the log reads").records;
        if records.len() >= n {
            return records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{} did not reach {n} records", path.display());
}
