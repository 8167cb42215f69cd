//! Synthetic registers: a deterministic generator of five coherent Swedish-style registers
//! (hip arthroplasty, patient, prescribed drug, cause of death, population) as Parquet, with
//! the `node.toml` and `optout.txt` each node server reads.
//!
//! ```text
//!  seed, persons
//!       │
//!       ▼
//!  model::build ── one sequential pass, one random stream ──► Base (read-only)
//!   persons (birth, sex, region, conditions, death), identity numbers,
//!   hip operations (+ 90-day excess mortality), npr-only hip replacements, opt-outs
//!       │
//!       ├── node.toml + optout.txt per register (main thread)
//!       ▼
//!  task pool (std::thread::scope, one worker per core), one task per file,
//!  each with its own random stream derived from (seed, register, chunk):
//!   hip/operations  hip/prom  npr/inpatient × chunks  lmr/dispensations × chunks
//!   dors/deaths  pop/persons × chunks      ──► OUT/<register>/<table>/part-NNNNN.parquet
//! ```
//!
//! Same `persons` and `seed` give byte-identical files whatever the number of cores, because
//! every file is written by exactly one task from its own stream. The model and its parameters
//! are described in `docs/synthetic-data.md`.

mod dist;
pub mod luhn;
mod model;
pub mod postgres;
mod schema;
mod tables;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use schema::{REGISTER_SPECS, RegisterSpec, TableSpec};

/// What to generate and where.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Output directory; the register directories below it are wiped and recreated.
    pub out: PathBuf,
    /// Number of persons in the population register.
    pub persons: u64,
    /// Seed of all random streams.
    pub seed: u64,
}

/// Rows and files written for one table.
#[derive(Debug)]
pub struct TableSummary {
    pub register: String,
    pub table: String,
    pub rows: u64,
    pub files: usize,
}

/// What [`generate`] wrote.
#[derive(Debug)]
pub struct SynthSummary {
    /// One entry per table, in register order (hip, npr, lmr, dors, pop).
    pub tables: Vec<TableSummary>,
    /// Distinct persons on at least one opt-out list.
    pub opted_out: u64,
}

/// Largest population accepted: serial numbers allow ~1000 persons per birth date.
pub const MAX_PERSONS: u64 = 20_000_000;

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The caller asked for an impossible population size.
    #[error("invalid synth options: persons must be between 1 and {max}, got {persons}")]
    InvalidPersons { persons: u64, max: u64 },
    /// The output directory or a register directory could not be created.
    #[error("cannot create output directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// An existing register directory could not be wiped.
    #[error("cannot remove old register directory {}: {source}", path.display())]
    RemoveDir { path: PathBuf, source: std::io::Error },
    /// A file could not be created.
    #[error("cannot create file {}: {source}", path.display())]
    CreateFile { path: PathBuf, source: std::io::Error },
    /// A text file (node.toml, optout.txt) could not be written.
    #[error("cannot write file {}: {source}", path.display())]
    WriteFile { path: PathBuf, source: std::io::Error },
    /// The Parquet writer failed (usually disk full or I/O).
    #[error("cannot write Parquet file {}: {source}", path.display())]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    /// A bug in the generator: a record batch did not match its table's schema.
    #[error(
        "internal error in the synthetic data generator: batch for table {table} does not match its schema: {source}"
    )]
    BatchSchema { table: &'static str, source: arrow::error::ArrowError },
    /// A bug in the generator: a worker thread panicked.
    #[error("internal error in the synthetic data generator: the worker writing {file} panicked")]
    WorkerPanicked { file: String },
}

/// One file to write.
#[derive(Debug, Clone)]
struct Task {
    register: usize,
    table: &'static TableSpec,
    kind: TaskKind,
    part: usize,
    persons: std::ops::Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskKind {
    HipOperations,
    HipProm,
    NprInpatient,
    LmrDispensations,
    DorsDeaths,
    PopPersons,
}

fn chunks(n: usize, size: usize) -> Vec<std::ops::Range<usize>> {
    (0..n.div_ceil(size).max(1)).map(|c| c * size..((c + 1) * size).min(n)).collect()
}

/// Tasks, biggest first (for load balance; the output does not depend on the order).
fn plan(n: usize) -> Vec<Task> {
    let mut tasks = Vec::new();
    let mut per_chunk = |register, table, kind, size| {
        for (part, persons) in chunks(n, size).into_iter().enumerate() {
            tasks.push(Task { register, table, kind, part, persons });
        }
    };
    per_chunk(2, &schema::LMR_DISPENSATIONS, TaskKind::LmrDispensations, tables::LMR_CHUNK);
    per_chunk(1, &schema::NPR_INPATIENT, TaskKind::NprInpatient, tables::NPR_CHUNK);
    per_chunk(4, &schema::POP_PERSONS, TaskKind::PopPersons, tables::POP_CHUNK);
    tasks.push(Task { register: 0, table: &schema::HIP_PROM, kind: TaskKind::HipProm, part: 0, persons: 0..n });
    tasks.push(Task {
        register: 0,
        table: &schema::HIP_OPERATIONS,
        kind: TaskKind::HipOperations,
        part: 0,
        persons: 0..n,
    });
    tasks.push(Task { register: 3, table: &schema::DORS_DEATHS, kind: TaskKind::DorsDeaths, part: 0, persons: 0..n });
    tasks
}

fn run_task(task: &Task, base: &model::Base, out: &Path, seed: u64) -> Result<u64, SynthError> {
    let dir = out.join(REGISTER_SPECS[task.register].name).join(task.table.name);
    let mut sink = tables::PartSink::create(&dir, task.part, task.table)?;
    // Stream 1..=5 per register; chunk = part, offset per table within a register.
    let stream = task.register as u64 + 1;
    let table_no =
        REGISTER_SPECS[task.register].tables.iter().position(|t| t.name == task.table.name).unwrap_or(0) as u64;
    let mut rng = dist::stream_rng(seed, stream, (table_no << 32) | task.part as u64);
    match task.kind {
        TaskKind::HipOperations => tables::hip_operations(base, &mut sink)?,
        TaskKind::HipProm => tables::hip_prom(base, &mut rng, &mut sink)?,
        TaskKind::NprInpatient => tables::npr_inpatient(base, task.persons.clone(), task.part, &mut rng, &mut sink)?,
        TaskKind::LmrDispensations => tables::lmr_dispensations(base, task.persons.clone(), &mut rng, &mut sink)?,
        TaskKind::DorsDeaths => tables::dors_deaths(base, &mut sink)?,
        TaskKind::PopPersons => tables::pop_persons(base, task.persons.clone(), &mut rng, &mut sink)?,
    }
    sink.close()
}

/// Generates all five registers below `opts.out`.
///
/// Each register directory (`hip`, `npr`, `lmr`, `dors`, `pop`) is wiped and recreated; other
/// content of `opts.out` (certificates, the federation key) is left alone.
pub fn generate(opts: &SynthOptions) -> Result<SynthSummary, SynthError> {
    if opts.persons == 0 || opts.persons > MAX_PERSONS {
        return Err(SynthError::InvalidPersons { persons: opts.persons, max: MAX_PERSONS });
    }
    let out = opts.out.as_path();
    std::fs::create_dir_all(out).map_err(|source| SynthError::CreateDir { path: out.to_path_buf(), source })?;
    for reg in &REGISTER_SPECS {
        let dir = out.join(reg.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| SynthError::RemoveDir { path: dir.clone(), source })?;
        }
        for t in reg.tables {
            let tdir = dir.join(t.name);
            std::fs::create_dir_all(&tdir).map_err(|source| SynthError::CreateDir { path: tdir.clone(), source })?;
        }
    }

    let base = model::build(opts.persons, opts.seed);

    for (i, reg) in REGISTER_SPECS.iter().enumerate() {
        let dir = out.join(reg.name);
        write_text(&dir.join("node.toml"), &node_toml(reg, opts))?;
        write_text(&dir.join("optout.txt"), &optout_txt(reg, &base, &base.optouts[i]))?;
    }

    write_text(&out.join("directory.toml"), &directory_toml())?;

    let tasks = plan(base.persons.len());
    let results: Vec<Mutex<Option<Result<u64, SynthError>>>> = tasks.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, tasks.len());
    let panicked = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(task) = tasks.get(i) else { break };
                        let res = run_task(task, &base, out, opts.seed);
                        if let Ok(mut slot) = results[i].lock() {
                            *slot = Some(res);
                        }
                    }
                })
            })
            .collect();
        let failed: Vec<bool> = handles.into_iter().map(|h| h.join().is_err()).collect();
        failed.contains(&true)
    });

    let mut summary: Vec<TableSummary> = REGISTER_SPECS
        .iter()
        .flat_map(|reg| {
            reg.tables.iter().map(|t| TableSummary {
                register: reg.name.to_string(),
                table: t.name.to_string(),
                rows: 0,
                files: 0,
            })
        })
        .collect();
    for (task, slot) in tasks.iter().zip(results) {
        let file = || {
            out.join(REGISTER_SPECS[task.register].name)
                .join(task.table.name)
                .join(format!("part-{:05}.parquet", task.part))
                .display()
                .to_string()
        };
        let res = slot.into_inner().ok().flatten();
        let rows = match res {
            Some(r) => r?,
            None => {
                debug_assert!(panicked);
                return Err(SynthError::WorkerPanicked { file: file() });
            }
        };
        let entry =
            summary.iter_mut().find(|s| s.register == REGISTER_SPECS[task.register].name && s.table == task.table.name);
        if let Some(e) = entry {
            e.rows += rows;
            e.files += 1;
        }
    }

    let mut all: Vec<u32> = base.optouts.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    Ok(SynthSummary { tables: summary, opted_out: all.len() as u64 })
}

fn write_text(path: &Path, text: &str) -> Result<(), SynthError> {
    std::fs::write(path, text).map_err(|source| SynthError::WriteFile { path: path.to_path_buf(), source })
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The coordinator's port in a synth directory; the nodes listen on the next
/// five (hip, npr, lmr, dors, pop).
pub const BASE_PORT: u16 = 47100;

/// The ports of a synth directory's nodes with the coordinator on `base_port`, in register order.
pub fn ports(base_port: u16) -> Vec<(&'static str, u16)> {
    REGISTER_SPECS.iter().map(|r| (r.name, base_port + (r.port - BASE_PORT))).collect()
}

/// Moves the nodes of the synth directory `out` to listen on `base_port + 1…5`
/// (a second federation on one machine, or tests); the coordinator's config
/// is the caller's, with `base_port`.
pub fn move_ports(out: &Path, base_port: u16) -> Result<(), SynthError> {
    for reg in &REGISTER_SPECS {
        let path = out.join(reg.name).join("node.toml");
        let text =
            std::fs::read_to_string(&path).map_err(|source| SynthError::WriteFile { path: path.clone(), source })?;
        let port = base_port + (reg.port - BASE_PORT);
        write_text(&path, &text.replacen(&listen_line(reg.port), &listen_line(port), 1))?;
    }
    Ok(())
}

fn listen_line(port: u16) -> String {
    format!("listen = \"127.0.0.1:{port}\"")
}

/// The node configuration of `reg`; paths are relative to the file's directory.
fn node_toml(reg: &RegisterSpec, opts: &SynthOptions) -> String {
    let mut s = String::new();
    let name = reg.name;
    // `write!` to a String cannot fail.
    let _ = writeln!(
        s,
        "# Synthetic register written by samkor synth (persons = {}, seed = {}). No real persons.\n",
        opts.persons, opts.seed
    );
    let _ = writeln!(s, "[node]");
    let _ = writeln!(s, "register = {}", toml_str(name));
    let _ = writeln!(s, "holder = {}", toml_str(reg.holder));
    let _ = writeln!(s, "description = {}", toml_str(reg.description));
    let _ = writeln!(s, "{}", listen_line(reg.port));
    let _ = writeln!(s, "pseudonym_key_file = \"../federation.key\"");
    let _ = writeln!(s, "opt_out_file = \"optout.txt\"");
    let _ = writeln!(s, "audit_log = \"audit.jsonl\"");
    let _ = writeln!(
        s,
        "# MiB for the Parquet files' identity columns held in memory (16 bytes a row; 0: decoded in every scan)."
    );
    let _ = writeln!(s, "identity_cache_mib = {}\n", samkor_node::identities::DEFAULT_BUDGET_MIB);
    if !reg.direct_access.is_empty() {
        let _ = writeln!(s, "[access]");
        let _ =
            writeln!(s, "# Tables open to care providers for their own reported rows, with the reporting-unit column.");
        let tables: Vec<String> = reg.direct_access.iter().map(|(t, c)| format!("{t} = {}", toml_str(c))).collect();
        let _ = writeln!(s, "direct_access = {{ {} }}\n", tables.join(", "));
    }
    let _ = writeln!(s, "[tls]");
    let _ = writeln!(s, "cert = \"../certs/node-{name}.pem\"");
    let _ = writeln!(s, "key = \"../certs/node-{name}.key\"");
    let _ = writeln!(s, "ca = \"../certs/ca.pem\"");
    for t in reg.tables {
        let _ = writeln!(s, "\n[[tables]]");
        let _ = writeln!(s, "name = {}", toml_str(t.name));
        let _ = writeln!(s, "description = {}", toml_str(t.description));
        let _ = writeln!(s, "format = \"parquet\"");
        let _ = writeln!(s, "path = {}", toml_str(&format!("{}/*.parquet", t.name)));
        let _ = writeln!(s, "person_column = \"pnr\"");
        if t.one_row_per_person {
            let _ = writeln!(s, "# Checked by the node at start and whenever the files change.");
            let _ = writeln!(s, "one_row_per_person = true");
        }
        for c in t.columns {
            let _ = writeln!(s, "\n  [[tables.columns]]");
            let _ = writeln!(s, "  name = {}", toml_str(c.name));
            let _ = writeln!(s, "  type = \"{}\"", c.ty.toml_name());
            let _ = writeln!(s, "  description = {}", toml_str(c.description));
            if let Some(u) = c.unit {
                let _ = writeln!(s, "  unit = {}", toml_str(u));
            }
            if let Some(cs) = c.code_system {
                let _ = writeln!(s, "  code_system = {}", toml_str(cs));
            }
            if c.identifying {
                let _ = writeln!(s, "  identifying = true");
            }
        }
    }
    s
}

/// Care providers of the synthetic federation with direct access to their own
/// hospital's data: (certificate name, hospital index in the synthetic model).
const CARE_PROVIDERS: [(&str, usize); 1] = [("dora", 1)];

/// The certificate names of the synthetic care providers (`samkor synth` makes their certificates).
pub fn care_providers() -> Vec<&'static str> {
    CARE_PROVIDERS.iter().map(|(identity, _)| *identity).collect()
}

/// The hospital a synthetic care provider is bound to.
pub fn care_provider_hospital(identity: &str) -> Option<&'static str> {
    CARE_PROVIDERS.iter().find(|(i, _)| *i == identity).map(|(_, h)| model::hospital(*h).name)
}

/// The coordinator's care-provider directory of the synthetic federation.
fn directory_toml() -> String {
    let mut s = String::from(
        "# Care providers with direct access to the data their own hospital reported (samkor synth; synthetic).\n\
         # identity: the certificate's common name; hospital: the reporting unit as written in the registers.\n",
    );
    for (identity, h) in CARE_PROVIDERS {
        let _ = writeln!(
            s,
            "\n[[providers]]\nidentity = {}\nhospital = {}",
            toml_str(identity),
            toml_str(model::hospital(h).name)
        );
    }
    s
}

fn optout_txt(reg: &RegisterSpec, base: &model::Base, persons: &[u32]) -> String {
    let mut s = format!(
        "# Opt-outs for the {} register: persons who refused registration or asked for erasure.\n\
         # One 12-digit personal identity number per line. Synthetic data.\n",
        reg.name
    );
    for &p in persons {
        s.push_str(base.pnr(p as usize));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, StringArray};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::collections::{HashMap, HashSet};
    use std::sync::OnceLock;

    /// A generated data set shared by the coherence tests (generated once per test binary).
    struct Fixture {
        dir: tempfile::TempDir,
        summary: SynthSummary,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let summary = generate(&SynthOptions { out: dir.path().to_path_buf(), persons: 40_000, seed: 7 })
                .expect("generation of 40 000 persons succeeds");
            Fixture { dir, summary }
        })
    }

    fn read(out: &Path, register: &str, table: &str) -> Vec<RecordBatch> {
        let dir = out.join(register).join(table);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("table dir exists")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no parquet files in {}", dir.display());
        files
            .iter()
            .flat_map(|f| {
                let file = std::fs::File::open(f).expect("open parquet");
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .expect("parquet reader")
                    .build()
                    .expect("reader")
                    .map(|b| b.expect("batch"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
        b.column_by_name(name)
            .unwrap_or_else(|| panic!("column {name}"))
            .as_any()
            .downcast_ref::<T>()
            .unwrap_or_else(|| panic!("type of column {name}"))
    }

    fn strs(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
        batches
            .iter()
            .flat_map(|b| {
                let a = col::<StringArray>(b, name);
                (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i).to_string())).collect::<Vec<_>>()
            })
            .collect()
    }

    fn dates(batches: &[RecordBatch], name: &str) -> Vec<Option<i32>> {
        batches
            .iter()
            .flat_map(|b| {
                let a = col::<Date32Array>(b, name);
                (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect::<Vec<_>>()
            })
            .collect()
    }

    fn pnrs(batches: &[RecordBatch]) -> Vec<String> {
        strs(batches, "pnr").into_iter().map(|p| p.expect("pnr never null")).collect()
    }

    fn deaths(out: &Path) -> HashMap<String, i32> {
        let d = read(out, "dors", "deaths");
        pnrs(&d).into_iter().zip(dates(&d, "death_date")).map(|(p, d)| (p, d.expect("death date"))).collect()
    }

    #[test]
    fn luhn_known_numbers() {
        assert!(luhn::is_valid("191212121212"), "the public test number 19121212-1212");
        assert_eq!(luhn::check_digit("121212121"), 2);
        assert_eq!(luhn::check_digit("811218987"), 6, "811218-9876");
        assert!(luhn::is_valid("198112189876"));
        assert!(!luhn::is_valid("191212121213"), "wrong check digit");
        assert!(!luhn::is_valid("191213321212"), "no 32nd day");
        assert!(!luhn::is_valid("19121212121"), "11 digits");
        assert!(!luhn::is_valid("19121212-1212"), "separator");
    }

    #[test]
    fn pnrs_are_valid_unique_and_agree_with_sex_and_birth_date() {
        let f = fixture();
        let pop = read(f.dir.path(), "pop", "persons");
        let p = pnrs(&pop);
        assert_eq!(p.len(), 40_000);
        let unique: HashSet<&String> = p.iter().collect();
        assert_eq!(unique.len(), p.len(), "pnr unique per person");
        let sex = strs(&pop, "sex");
        let birth = dates(&pop, "birth_date");
        for ((pnr, sex), birth) in p.iter().zip(sex).zip(birth) {
            assert!(luhn::is_valid(pnr), "invalid pnr {pnr}");
            let odd = (pnr.as_bytes()[10] - b'0') % 2 == 1;
            assert_eq!(sex.as_deref(), Some(if odd { "M" } else { "F" }), "{pnr}");
            let d = model::date_of(birth.expect("birth date"));
            assert_eq!(&pnr[..8], d.format("%Y%m%d").to_string(), "birth date in pnr");
        }
        // Every pnr in every other table is a person.
        for (reg, table) in
            [("hip", "operations"), ("hip", "prom"), ("npr", "inpatient"), ("lmr", "dispensations"), ("dors", "deaths")]
        {
            for q in pnrs(&read(f.dir.path(), reg, table)) {
                assert!(unique.contains(&q), "{reg}.{table} has a pnr not in pop");
            }
        }
    }

    #[test]
    fn generation_is_deterministic() {
        let a = tempfile::tempdir().expect("temp dir");
        let b = tempfile::tempdir().expect("temp dir");
        let opts = |d: &tempfile::TempDir| SynthOptions { out: d.path().to_path_buf(), persons: 2000, seed: 42 };
        generate(&opts(&a)).expect("first run");
        generate(&opts(&b)).expect("second run");
        let mut compared = 0;
        for reg in &REGISTER_SPECS {
            let mut files = vec![PathBuf::from(reg.name).join("node.toml"), PathBuf::from(reg.name).join("optout.txt")];
            for t in reg.tables {
                for e in std::fs::read_dir(a.path().join(reg.name).join(t.name)).expect("dir") {
                    files.push(PathBuf::from(reg.name).join(t.name).join(e.expect("entry").file_name()));
                }
            }
            for f in files {
                let x = std::fs::read(a.path().join(&f)).expect("read a");
                let y = std::fs::read(b.path().join(&f)).unwrap_or_else(|_| panic!("{} missing in run 2", f.display()));
                assert!(x == y, "{} differs between runs", f.display());
                compared += 1;
            }
        }
        assert!(compared >= 16);
        // A different seed gives different data.
        let c = tempfile::tempdir().expect("temp dir");
        generate(&SynthOptions { out: c.path().to_path_buf(), persons: 2000, seed: 43 }).expect("third run");
        let f = Path::new("pop/persons/part-00000.parquet");
        assert_ne!(std::fs::read(a.path().join(f)).expect("a"), std::fs::read(c.path().join(f)).expect("c"));
    }

    #[test]
    fn summary_matches_files_and_register_sizes_are_plausible() {
        let f = fixture();
        let rows = |reg: &str, t: &str| read(f.dir.path(), reg, t).iter().map(|b| b.num_rows() as u64).sum::<u64>();
        for s in &f.summary.tables {
            assert_eq!(s.rows, rows(&s.register, &s.table), "{}.{}", s.register, s.table);
            assert!(s.files >= 1);
        }
        let get = |t: &str| f.summary.tables.iter().find(|s| s.table == t).expect("table").rows as f64;
        let n = 40_000.0;
        assert!((300.0..1500.0).contains(&get("operations")), "hip ops {}", get("operations"));
        assert!((5.0 * n..12.0 * n).contains(&get("dispensations")), "lmr {}", get("dispensations"));
        assert!((1.0 * n..4.0 * n).contains(&get("inpatient")), "npr {}", get("inpatient"));
        assert!((0.05 * n..0.25 * n).contains(&get("deaths")), "deaths {}", get("deaths"));
        assert!(f.summary.opted_out > 0);
    }

    #[test]
    fn every_hip_operation_has_a_patient_register_episode() {
        let f = fixture();
        let hip = read(f.dir.path(), "hip", "operations");
        let npr = read(f.dir.path(), "npr", "inpatient");
        let mut eps: HashMap<(String, String), Vec<(i32, String)>> = HashMap::new();
        for ((p, h), (a, pr)) in pnrs(&npr)
            .into_iter()
            .zip(strs(&npr, "hospital"))
            .zip(dates(&npr, "admit_date").into_iter().zip(strs(&npr, "procedure")))
        {
            if let Some(pr) = pr {
                eps.entry((p, h.expect("hospital"))).or_default().push((a.expect("admit"), pr));
            }
        }
        let fix = strs(&hip, "fixation");
        let code = |f: &str| match f {
            "cemented" => "NFB49",
            "uncemented" => "NFB29",
            "hybrid" => "NFB39",
            "reverse_hybrid" => "NFB59",
            other => panic!("unknown fixation {other}"),
        };
        let ops = pnrs(&hip);
        assert!(ops.len() > 100);
        for (i, ((p, h), d)) in ops.iter().zip(strs(&hip, "hospital")).zip(dates(&hip, "op_date")).enumerate() {
            let d = d.expect("op date");
            let want = code(fix[i].as_deref().expect("fixation"));
            let found = eps
                .get(&(p.clone(), h.clone().expect("hospital")))
                .is_some_and(|v| v.iter().any(|(a, pr)| (d - 1..=d).contains(a) && pr == want));
            assert!(found, "hip op {i} has no npr episode with {want}");
        }
    }

    #[test]
    fn coverage_per_hospital_is_realistic() {
        let f = fixture();
        let hip = read(f.dir.path(), "hip", "operations");
        let npr = read(f.dir.path(), "npr", "inpatient");
        let in_hip: HashSet<(String, String, i32)> = pnrs(&hip)
            .into_iter()
            .zip(strs(&hip, "hospital"))
            .zip(dates(&hip, "op_date"))
            .map(|((p, h), d)| (p, h.expect("hospital"), d.expect("date")))
            .collect();
        let mut per: HashMap<String, (u32, u32)> = HashMap::new();
        for (((p, h), a), pr) in pnrs(&npr)
            .into_iter()
            .zip(strs(&npr, "hospital"))
            .zip(dates(&npr, "admit_date"))
            .zip(strs(&npr, "procedure"))
        {
            if !matches!(pr.as_deref(), Some("NFB29" | "NFB39" | "NFB49" | "NFB59")) {
                continue;
            }
            let (h, a) = (h.expect("hospital"), a.expect("admit"));
            let found = in_hip.contains(&(p.clone(), h.clone(), a)) || in_hip.contains(&(p, h.clone(), a + 1));
            let e = per.entry(h).or_default();
            e.0 += 1;
            e.1 += u32::from(found);
        }
        let big: Vec<_> = per.iter().filter(|(_, (n, _))| *n >= 50).collect();
        assert!(big.len() >= 3, "too few hospitals with >= 50 episodes: {}", big.len());
        for (h, (n, found)) in big {
            let c = f64::from(*found) / f64::from(*n);
            assert!((0.85..=1.0).contains(&c), "coverage of {h} is {c:.3} ({found}/{n})");
        }
        let (n, found) = per.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
        let c = f64::from(found) / f64::from(n);
        assert!((0.90..0.97).contains(&c), "national coverage {c:.3}");
    }

    #[test]
    fn no_event_after_death() {
        let f = fixture();
        let death = deaths(f.dir.path());
        let check = |reg: &str, table: &str, column: &str| {
            let b = read(f.dir.path(), reg, table);
            let mut checked = 0;
            for (p, d) in pnrs(&b).iter().zip(dates(&b, column)) {
                if let (Some(dd), Some(d)) = (death.get(p), d) {
                    assert!(d <= *dd, "{reg}.{table}.{column} after death");
                    checked += 1;
                }
            }
            assert!(checked > 0, "{reg}.{table}.{column}: no events of persons who died");
        };
        check("hip", "operations", "op_date");
        check("hip", "operations", "reop_date");
        check("hip", "prom", "survey_date");
        check("npr", "inpatient", "admit_date");
        check("npr", "inpatient", "discharge_date");
        check("lmr", "dispensations", "disp_date");
        // Dates within the window, discharge not before admission.
        let npr = read(f.dir.path(), "npr", "inpatient");
        let (lo, hi) = (model::start_day() - 1, model::end_day());
        for (a, d) in dates(&npr, "admit_date").into_iter().zip(dates(&npr, "discharge_date")) {
            let (a, d) = (a.expect("admit"), d.expect("discharge"));
            assert!(a <= d && a >= lo && d <= hi);
        }
    }

    #[test]
    fn hip_register_values_are_plausible() {
        let f = fixture();
        let hip = read(f.dir.path(), "hip", "operations");
        let mut reop = 0;
        let mut n = 0;
        let mut cemented = 0;
        for b in &hip {
            let r = col::<BooleanArray>(b, "reoperation");
            let rd = col::<Date32Array>(b, "reop_date");
            let asa = col::<Int32Array>(b, "asa");
            let ids = col::<Int64Array>(b, "op_id");
            let fix = col::<StringArray>(b, "fixation");
            for i in 0..b.num_rows() {
                assert_eq!(r.value(i), rd.is_valid(i), "reop_date set iff reoperation");
                assert!((1..=4).contains(&asa.value(i)));
                assert!(ids.value(i) > 0);
                reop += usize::from(r.value(i));
                cemented += usize::from(fix.value(i) == "cemented");
                n += 1;
            }
        }
        let reop_share = reop as f64 / n as f64;
        assert!((0.01..0.08).contains(&reop_share), "reoperation share {reop_share}");
        let cem = cemented as f64 / n as f64;
        assert!((0.45..0.8).contains(&cem), "cemented share {cem}");
        let lmr = read(f.dir.path(), "lmr", "dispensations");
        for b in &lmr {
            assert!(col::<Float64Array>(b, "ddd").values().iter().all(|d| *d > 0.0), "ddd > 0");
        }
    }

    #[test]
    fn ninety_day_mortality_after_hip_replacement_is_higher_for_asa_3_and_4() {
        let f = fixture();
        let death = deaths(f.dir.path());
        let hip = read(f.dir.path(), "hip", "operations");
        let asa: Vec<i32> = hip.iter().flat_map(|b| col::<Int32Array>(b, "asa").values().to_vec()).collect();
        let mut n = [0u32; 2];
        let mut dead = [0u32; 2];
        for ((p, d), a) in pnrs(&hip).iter().zip(dates(&hip, "op_date")).zip(asa) {
            let (d, g) = (d.expect("op date"), usize::from(a >= 3));
            n[g] += 1;
            dead[g] += u32::from(death.get(p).is_some_and(|dd| *dd - d <= 90));
        }
        let rate = |g: usize| f64::from(dead[g]) / f64::from(n[g]);
        let all = f64::from(dead[0] + dead[1]) / f64::from(n[0] + n[1]);
        assert!((0.004..0.04).contains(&all), "90-day mortality {all:.4}");
        assert!(rate(1) > 2.0 * rate(0), "ASA 3-4 {:.4} vs ASA 1-2 {:.4}", rate(1), rate(0));
    }

    #[test]
    fn prom_improves_after_one_year() {
        let f = fixture();
        let prom = read(f.dir.path(), "hip", "prom");
        let survey = strs(&prom, "survey");
        let eq: Vec<f64> = prom.iter().flat_map(|b| col::<Float64Array>(b, "eq5d_index").values().to_vec()).collect();
        let mean = |s: &str| {
            let v: Vec<f64> =
                survey.iter().zip(&eq).filter(|(x, _)| x.as_deref() == Some(s)).map(|(_, e)| *e).collect();
            assert!(v.len() > 50, "too few {s} surveys");
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (pre, post) = (mean("preop"), mean("1y"));
        assert!(post > pre + 0.2, "preop {pre:.3} 1y {post:.3}");
        let sat = prom.iter().flat_map(|b| {
            let a = col::<Int32Array>(b, "satisfaction");
            (0..a.len()).map(|i| a.is_valid(i)).collect::<Vec<_>>()
        });
        for (s, valid) in survey.iter().zip(sat) {
            assert_eq!(s.as_deref() == Some("1y"), valid, "satisfaction only at 1y");
        }
    }

    #[test]
    fn opted_out_persons_exist_in_the_data() {
        let f = fixture();
        let pop: HashSet<String> = pnrs(&read(f.dir.path(), "pop", "persons")).into_iter().collect();
        let hip: HashSet<String> = pnrs(&read(f.dir.path(), "hip", "operations")).into_iter().collect();
        let mut lists = Vec::new();
        for reg in &REGISTER_SPECS {
            let text = std::fs::read_to_string(f.dir.path().join(reg.name).join("optout.txt")).expect("optout.txt");
            let list: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
            for p in &list {
                assert!(luhn::is_valid(p) && pop.contains(*p), "{}: opt-out {p} is not a person", reg.name);
            }
            lists.push(list.into_iter().map(str::to_string).collect::<HashSet<_>>());
        }
        assert!(lists[0].len() >= 60, "about 0.3 % opt out of hip: {}", lists[0].len());
        assert!(lists[0].iter().any(|p| hip.contains(p)), "some hip patient opted out of hip");
        assert!(lists[0].intersection(&lists[1]).count() >= 1, "some persons are on several lists");
    }

    #[test]
    fn node_toml_describes_the_parquet_files() {
        let f = fixture();
        for reg in &REGISTER_SPECS {
            let dir = f.dir.path().join(reg.name);
            let text = std::fs::read_to_string(dir.join("node.toml")).expect("node.toml");
            let v: toml::Value = toml::from_str(&text).expect("node.toml parses");
            assert_eq!(v["node"]["register"].as_str(), Some(reg.name));
            assert_eq!(v["node"]["listen"].as_str(), Some(format!("127.0.0.1:{}", reg.port).as_str()));
            assert_eq!(v["tls"]["cert"].as_str(), Some(format!("../certs/node-{}.pem", reg.name).as_str()));
            let tables = v["tables"].as_array().expect("tables");
            assert_eq!(tables.len(), reg.tables.len());
            for t in tables {
                let name = t["name"].as_str().expect("table name");
                let batches = read(&dir, "", name);
                let schema = batches[0].schema();
                let cols = t["columns"].as_array().expect("columns");
                assert_eq!(cols.len(), schema.fields().len(), "{name}: every column listed");
                for (c, field) in cols.iter().zip(schema.fields()) {
                    assert_eq!(c["name"].as_str(), Some(field.name().as_str()));
                    let ty = match field.data_type() {
                        arrow::datatypes::DataType::Utf8 => "utf8",
                        arrow::datatypes::DataType::Int32 => "int32",
                        arrow::datatypes::DataType::Int64 => "int64",
                        arrow::datatypes::DataType::Float64 => "float64",
                        arrow::datatypes::DataType::Boolean => "boolean",
                        arrow::datatypes::DataType::Date32 => "date32",
                        other => panic!("unexpected type {other}"),
                    };
                    assert_eq!(c["type"].as_str(), Some(ty), "{name}.{}", field.name());
                    assert!(c["description"].as_str().is_some_and(|d| !d.is_empty()));
                }
                assert_eq!(t["person_column"].as_str(), Some("pnr"));
            }
        }
        let pop = std::fs::read_to_string(f.dir.path().join("pop/node.toml")).expect("pop node.toml");
        let v: toml::Value = toml::from_str(&pop).expect("parses");
        let birth = v["tables"][0]["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .find(|c| c["name"].as_str() == Some("birth_date"))
            .cloned();
        assert_eq!(birth.and_then(|b| b["identifying"].as_bool()), Some(true));
    }

    #[test]
    fn existing_register_dirs_are_wiped_and_other_content_kept() {
        let d = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(d.path().join("hip/operations")).expect("mkdir");
        std::fs::write(d.path().join("hip/operations/part-00099.parquet"), b"stale").expect("stale file");
        std::fs::write(d.path().join("federation.key"), b"key").expect("key");
        generate(&SynthOptions { out: d.path().to_path_buf(), persons: 300, seed: 1 }).expect("generate");
        assert!(!d.path().join("hip/operations/part-00099.parquet").exists(), "stale file removed");
        assert!(d.path().join("hip/operations/part-00000.parquet").exists());
        assert_eq!(std::fs::read(d.path().join("federation.key")).expect("key kept"), b"key");
    }

    #[test]
    fn unwritable_output_dir_is_reported_with_its_path() {
        let d = tempfile::tempdir().expect("temp dir");
        let blocker = d.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").expect("file");
        let out = blocker.join("out");
        let err =
            generate(&SynthOptions { out: out.clone(), persons: 10, seed: 1 }).expect_err("cannot write below a file");
        assert!(matches!(err, SynthError::CreateDir { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot create output directory"), "{msg}");
        assert!(msg.contains(&out.display().to_string()), "{msg}");
    }

    #[test]
    fn invalid_person_count_is_refused() {
        let d = tempfile::tempdir().expect("temp dir");
        let err = generate(&SynthOptions { out: d.path().to_path_buf(), persons: 0, seed: 1 }).expect_err("0 persons");
        assert_eq!(err.to_string(), "invalid synth options: persons must be between 1 and 20000000, got 0");
    }

    /// `cargo test --release --lib synth::tests::bench_1m -- --ignored --nocapture`
    /// (`SAMKOR_SYNTH_BENCH_PERSONS` overrides the 1 000 000 persons).
    #[test]
    #[ignore = "benchmark; run in release mode"]
    fn bench_1m() {
        let persons =
            std::env::var("SAMKOR_SYNTH_BENCH_PERSONS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
        let d = tempfile::tempdir().expect("temp dir");
        let t0 = std::time::Instant::now();
        let s = generate(&SynthOptions { out: d.path().to_path_buf(), persons, seed: 2024 }).expect("generate");
        let secs = t0.elapsed().as_secs_f64();
        let total: u64 = s.tables.iter().map(|t| t.rows).sum();
        println!("synth: {persons} persons, {total} rows in {secs:.2} s");
        for t in &s.tables {
            println!("  {}.{}: {} rows in {} file(s)", t.register, t.table, t.rows, t.files);
        }
        println!("  opted out: {}", s.opted_out);
    }
}
