//! The audit log: tamper-evident, durable, append-only.
//!
//! The coordinator writes one record per query (accepted, refused or failed),
//! each node one record per sub-query. `samkor audit verify|show|report` read
//! it back for the recurring access review.
//!
//! ```text
//!  coordinator / node ── AuditEntry ──▶ AuditLog::append ──▶ seal: seq, time, prev, hash
//!                                             │  one write_all of one line, then fdatasync
//!                                             ▼
//!                                        audit.jsonl  (JSON Lines, one record per line)
//!                                             │
//!  samkor audit verify / show / report ◀── verify() / read_all()
//! ```
//!
//! # Hash chain (exactly what is hashed)
//!
//! A line is the compact `serde_json` serialization of [`AuditRecord`], fields
//! in declaration order, `hash` last, followed by `\n`:
//!
//! ```text
//! {"seq":1,"time":"…",…,"prev":"000…000","hash":"<64 lowercase hex>"}\n
//! ```
//!
//! `hash` is the lowercase hex SHA-256 of the line's bytes with the
//! `,"hash":"<64 hex>"` member removed, i.e. of
//! `{"seq":1,…,"prev":"000…000"}` (no newline). This is the serialized record
//! without `hash`; verification works on the raw bytes, so it does not depend
//! on re-serializing. `prev` is the `hash` of the previous record, 64 zeros
//! ([`GENESIS_HASH`]) for record 1. `seq` counts from 1 and equals the line
//! number.
//!
//! Anyone who can write the file can recompute the whole chain, so the chain
//! proves that nothing was changed *since* a known last hash: keep the
//! `last hash` printed by `samkor audit verify` outside the log (review
//! minutes, another host). Removing records from the end is only visible
//! against such an anchor.
//!
//! # Durability and torn tails
//!
//! [`AuditLog::append`] returns only after `sync_data` (unless
//! [`AuditOptions::sync`] is off, for measurements), so the caller can
//! release an answer knowing its record is on disk. A crash mid-write leaves
//! a torn last line; [`AuditLog::open`] refuses it ([`AuditError::TornTail`])
//! and [`AuditLog::open_recovering`] moves it to `<path>.torn-<unix time>`,
//! truncates to the last good record and audits the recovery itself.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::differencing::Flag;

/// `prev` of the first record: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The rule named by the record that audits a torn-tail recovery.
pub const RULE_TORN_TAIL: &str = "audit.torn_tail";

/// The rule named by a node's second record of a sub-query: written when its
/// result stream ends, with the rows and cells actually released (`accepted`
/// when the stream completed, `failed` when it failed or the caller closed it).
/// The first record, written before any row leaves, is the decision itself.
pub const RULE_STREAM_END: &str = "node.stream_end";

/// The last member of every line, before the 64 hex digits.
const HASH_KEY: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex + `"}`.
const HASH_SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;

/// What happened to the query (or to the log itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Answered; `rows_released` / `cells_released` say how much left.
    Accepted,
    /// Refused by a policy rule (`rule` names it).
    Refused,
    /// Accepted by policy but failed while running; nothing released.
    Failed,
    /// Not a query: the log recovered from a torn tail (rule `audit.torn_tail`).
    Recovered,
}

impl Decision {
    /// The name written in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Accepted => "accepted",
            Decision::Refused => "refused",
            Decision::Failed => "failed",
            Decision::Recovered => "recovered",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the log. Field order is the serialization order and part of
/// the hash rule: do not reorder; `hash` stays last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// 1, 2, 3, … (equals the line number).
    pub seq: u64,
    /// RFC 3339, UTC, microseconds: `2025-03-01T09:15:02.123456Z`.
    pub time: String,
    /// Who wrote the log: `coordinator` or `node:<register>`.
    pub actor: String,
    /// Who asked (certificate subject).
    pub identity: String,
    /// Approved project; empty for direct access.
    pub project: String,
    pub query_id: String,
    pub sql: String,
    /// Hex digest of the plan that ran; may be empty.
    pub plan_digest: String,
    pub registers: Vec<String>,
    /// `register.table.column`.
    pub columns: Vec<String>,
    pub decision: Decision,
    /// The rule that decided (`approval.member`, `disclosure.min_cell`, …);
    /// empty when accepted without note.
    pub rule: String,
    pub reason: String,
    pub rows_released: u64,
    pub cells_released: u64,
    pub cells_suppressed: u64,
    /// Free JSON (disclosure control details), may be `null`.
    pub disclosure: serde_json::Value,
    /// Cells of this answer whose population differs by fewer than k persons
    /// from an earlier answer's (`differencing::Tracker`). Left out of the
    /// line when empty, so records without flags are written (and hashed)
    /// exactly as before the field existed, and older logs parse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differencing: Vec<Flag>,
    /// `hash` of the previous record; [`GENESIS_HASH`] for record 1.
    pub prev: String,
    /// SHA-256 of this line without the `hash` member (see the module docs).
    pub hash: String,
}

/// What the caller provides; [`AuditLog::append`] adds `seq`, `time`,
/// `actor`, `prev` and `hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub identity: String,
    pub project: String,
    pub query_id: String,
    pub sql: String,
    pub plan_digest: String,
    pub registers: Vec<String>,
    pub columns: Vec<String>,
    pub decision: Decision,
    pub rule: String,
    pub reason: String,
    pub rows_released: u64,
    pub cells_released: u64,
    pub cells_suppressed: u64,
    pub disclosure: serde_json::Value,
    pub differencing: Vec<Flag>,
}

impl AuditEntry {
    /// An entry with the given decision and everything else empty.
    pub fn new(
        decision: Decision,
        identity: impl Into<String>,
        query_id: impl Into<String>,
        sql: impl Into<String>,
    ) -> Self {
        AuditEntry {
            identity: identity.into(),
            project: String::new(),
            query_id: query_id.into(),
            sql: sql.into(),
            plan_digest: String::new(),
            registers: Vec::new(),
            columns: Vec::new(),
            decision,
            rule: String::new(),
            reason: String::new(),
            rows_released: 0,
            cells_released: 0,
            cells_suppressed: 0,
            disclosure: serde_json::Value::Null,
            differencing: Vec::new(),
        }
    }

    pub fn accepted(identity: impl Into<String>, query_id: impl Into<String>, sql: impl Into<String>) -> Self {
        Self::new(Decision::Accepted, identity, query_id, sql)
    }

    pub fn refused(
        identity: impl Into<String>,
        query_id: impl Into<String>,
        sql: impl Into<String>,
        rule: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::new(Decision::Refused, identity, query_id, sql).rule(rule).reason(reason)
    }

    pub fn failed(
        identity: impl Into<String>,
        query_id: impl Into<String>,
        sql: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::new(Decision::Failed, identity, query_id, sql).reason(reason)
    }

    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = project.into();
        self
    }

    pub fn plan_digest(mut self, digest: impl Into<String>) -> Self {
        self.plan_digest = digest.into();
        self
    }

    pub fn registers<S: Into<String>>(mut self, registers: impl IntoIterator<Item = S>) -> Self {
        self.registers = registers.into_iter().map(Into::into).collect();
        self
    }

    pub fn columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.columns = columns.into_iter().map(Into::into).collect();
        self
    }

    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = rule.into();
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Rows and cells released, cells suppressed by disclosure control.
    pub fn released(mut self, rows: u64, cells: u64, cells_suppressed: u64) -> Self {
        self.rows_released = rows;
        self.cells_released = cells;
        self.cells_suppressed = cells_suppressed;
        self
    }

    pub fn disclosure(mut self, disclosure: serde_json::Value) -> Self {
        self.disclosure = disclosure;
        self
    }

    /// Near-identical populations found for this answer.
    pub fn differencing(mut self, flags: Vec<Flag>) -> Self {
        self.differencing = flags;
        self
    }
}

/// The first problem found in a log file. Record numbers are the expected
/// `seq` at that position, which is also the line number (1-based).
/// Messages never quote the contents of a record.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The last line is incomplete (no newline) or does not parse: a crash
    /// mid-write, not necessarily tampering.
    #[error("line {line}: torn record at the end of the file ({bytes} bytes, {why})")]
    TornTail {
        line: u64,
        /// Byte offset where the torn line starts (= length of the good part).
        offset: u64,
        bytes: u64,
        why: String,
    },
    /// A line before the last one does not parse, or its `hash` member is
    /// missing or not where the writer puts it.
    #[error("record {record} (line {line}): not a valid audit record ({why})")]
    Malformed { record: u64, line: u64, why: String },
    #[error(
        "record {record} (line {line}): seq {found} expected {record} (a record was removed, inserted or renumbered)"
    )]
    Seq { record: u64, line: u64, found: u64 },
    #[error("record {record} (line {line}): hash does not match its contents (the record was altered)")]
    Hash { record: u64, line: u64 },
    #[error(
        "record {record} (line {line}): prev does not match the hash of record {} (a record was removed or altered)",
        .record - 1
    )]
    Prev { record: u64, line: u64 },
}

impl VerifyError {
    /// The record (= line) number the problem was found at, if any.
    pub fn record(&self) -> Option<u64> {
        match self {
            VerifyError::Io { .. } => None,
            VerifyError::TornTail { line, .. } => Some(*line),
            VerifyError::Malformed { record, .. }
            | VerifyError::Seq { record, .. }
            | VerifyError::Hash { record, .. }
            | VerifyError::Prev { record, .. } => Some(*record),
        }
    }
}

/// Why a log cannot be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "audit log {path} is already open for writing (by this or another process); \
         one writer per file keeps the chain intact"
    )]
    Locked { path: PathBuf },
    #[error(
        "audit log {path}: line {line} (record {record}) is a torn record at the end of the file \
         ({bytes} bytes, {why}); nothing was changed. Inspect it, then open the log with \
         recovery, which moves it to a quarantine file and continues the chain"
    )]
    TornTail {
        path: PathBuf,
        /// Line number of the torn bytes.
        line: u64,
        /// The record number the torn line would have had (= `line`).
        record: u64,
        bytes: u64,
        why: String,
    },
    #[error("audit log {path} does not verify, refusing to append to a broken chain: {source}")]
    Broken {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
    #[error("audit log {path} is unusable after an earlier failure ({reason}); restart to re-open and verify it")]
    Unusable { path: PathBuf, reason: String },
    #[error("internal error (a samkor bug): cannot encode an audit record: {0}")]
    Encode(#[source] serde_json::Error),
}

/// How an [`AuditLog`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// `sync_data` after every append before returning (default `true`).
    /// Turn off only to measure.
    pub sync: bool,
    /// Quarantine a torn tail instead of refusing to open (default `false`).
    pub recover_torn_tail: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions { sync: true, recover_torn_tail: false }
    }
}

/// What [`AuditLog::open_recovering`] did with a torn tail.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// Line number the torn bytes were at.
    pub line: u64,
    pub bytes: u64,
    /// `<path>.torn-<unix time>`, holding exactly the torn bytes.
    pub quarantine: PathBuf,
    /// The `recovered` record appended to the log.
    pub record: AuditRecord,
}

/// Summary of a log that verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// `hash` of the last record ([`GENESIS_HASH`] for an empty log).
    pub last_hash: String,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
}

/// The good records of a log and the first problem after them, if any.
#[derive(Debug)]
pub struct AuditContents {
    /// Every record before the first problem (all of them when `problem` is `None`).
    pub records: Vec<AuditRecord>,
    /// A torn tail or a chain break; never [`VerifyError::Io`].
    pub problem: Option<VerifyError>,
}

/// An open audit log; one writer per file (an exclusive advisory lock is
/// held while it is open). `append` is safe to call from many threads.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    actor: String,
    options: AuditOptions,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: File,
    seq: u64,
    last_hash: String,
    /// Bytes of good records in the file.
    len: u64,
    /// Set when a failed write could not be rolled back or a sync failed.
    unusable: Option<String>,
}

impl AuditLog {
    /// Opens or creates the log at `path` for `actor` (`coordinator`,
    /// `node:<register>`), verifying the whole chain. Refuses a torn tail
    /// ([`AuditError::TornTail`]) and a broken chain ([`AuditError::Broken`]).
    pub fn open(path: impl AsRef<Path>, actor: impl Into<String>) -> Result<AuditLog, AuditError> {
        Self::open_with(path, actor, AuditOptions::default()).map(|(log, _)| log)
    }

    /// Like [`open`](Self::open), but a torn tail is moved to
    /// `<path>.torn-<unix time>`, the log truncated to the last good record
    /// and a `recovered` record (rule `audit.torn_tail`) appended.
    pub fn open_recovering(
        path: impl AsRef<Path>,
        actor: impl Into<String>,
    ) -> Result<(AuditLog, Option<Recovery>), AuditError> {
        let options = AuditOptions { recover_torn_tail: true, ..AuditOptions::default() };
        Self::open_with(path, actor, options)
    }

    /// [`open`](Self::open) with explicit options; the recovery is `Some`
    /// only with `recover_torn_tail` and a torn tail.
    pub fn open_with(
        path: impl AsRef<Path>,
        actor: impl Into<String>,
        options: AuditOptions,
    ) -> Result<(AuditLog, Option<Recovery>), AuditError> {
        let path = path.as_ref().to_path_buf();
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| AuditError::Io { path, action, source }
        };
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io("open"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(AuditError::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(io("lock")(e)),
        }
        let (scan, problem) = scan(BufReader::new(&file), |_| {}).map_err(io("read"))?;
        if scan.len == 0 && problem.is_none() && options.sync {
            // Possibly just created: make the directory entry durable too.
            sync_dir(&path).map_err(io("sync the directory of"))?;
        }
        let torn = match problem {
            None => None,
            Some(VerifyError::TornTail { line, bytes, why, .. }) if !options.recover_torn_tail => {
                return Err(AuditError::TornTail { path, line, record: line, bytes, why });
            }
            Some(VerifyError::TornTail { line, offset, why, .. }) => Some((line, offset, why)),
            Some(VerifyError::Io { source, .. }) => return Err(io("read")(source)),
            Some(source) => return Err(AuditError::Broken { path, source }),
        };
        let mut recovery = None;
        if let Some((line, offset, why)) = &torn {
            let (quarantine, bytes) =
                quarantine_tail(&path, &mut file, *offset).map_err(io("quarantine the torn tail of"))?;
            recovery = Some((*line, bytes, quarantine, why.clone()));
        }
        let log = AuditLog {
            actor: actor.into(),
            options,
            state: Mutex::new(State {
                file,
                seq: scan.records,
                last_hash: scan.last_hash,
                len: scan.len,
                unusable: None,
            }),
            path,
        };
        let recovery = match recovery {
            None => None,
            Some((line, bytes, quarantine, why)) => {
                let reason = format!(
                    "torn record at line {line} ({bytes} bytes, {why}) moved to {}; \
                     log truncated to record {} and the chain continues from it",
                    quarantine.display(),
                    line - 1
                );
                let entry = AuditEntry::new(Decision::Recovered, "", "", "").rule(RULE_TORN_TAIL).reason(reason);
                let record = log.append(entry)?;
                Some(Recovery { line, bytes, quarantine, record })
            }
        };
        Ok((log, recovery))
    }

    /// Seals `entry` into the next record, writes it as one line with one
    /// `write_all` and (by default) `sync_data`s before returning it.
    ///
    /// A failed write is rolled back (the file truncated to the last good
    /// record). A failed sync, or a failed rollback, makes the log unusable:
    /// every later append fails, so the caller refuses queries rather than
    /// answering without a durable record.
    pub fn append(&self, entry: AuditEntry) -> Result<AuditRecord, AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Unusable {
            path: self.path.clone(),
            reason: "a thread panicked while appending".to_owned(),
        })?;
        if let Some(reason) = &state.unusable {
            return Err(AuditError::Unusable { path: self.path.clone(), reason: reason.clone() });
        }
        let mut record = AuditRecord {
            seq: state.seq + 1,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            actor: self.actor.clone(),
            identity: entry.identity,
            project: entry.project,
            query_id: entry.query_id,
            sql: entry.sql,
            plan_digest: entry.plan_digest,
            registers: entry.registers,
            columns: entry.columns,
            decision: entry.decision,
            rule: entry.rule,
            reason: entry.reason,
            rows_released: entry.rows_released,
            cells_released: entry.cells_released,
            cells_suppressed: entry.cells_suppressed,
            disclosure: entry.disclosure,
            differencing: entry.differencing,
            prev: state.last_hash.clone(),
            hash: String::new(),
        };
        let line = seal(&mut record)?;
        if let Err(source) = state.file.write_all(&line) {
            let len = state.len;
            if let Err(e) = state.file.set_len(len) {
                state.unusable = Some(format!("a failed append could not be rolled back: {e}"));
            }
            return Err(AuditError::Io { path: self.path.clone(), action: "append a record to", source });
        }
        if self.options.sync
            && let Err(source) = state.file.sync_data()
        {
            let len = state.len;
            let _ = state.file.set_len(len);
            state.unusable = Some(format!("sync failed: {source}"));
            return Err(AuditError::Io { path: self.path.clone(), action: "sync", source });
        }
        state.seq = record.seq;
        state.len += line.len() as u64;
        state.last_hash.clone_from(&record.hash);
        Ok(record)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// `seq` of the last record written (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.state.lock().map(|s| s.seq).unwrap_or_else(|p| p.into_inner().seq)
    }

    /// `hash` of the last record written ([`GENESIS_HASH`] for an empty log).
    pub fn last_hash(&self) -> String {
        match self.state.lock() {
            Ok(s) => s.last_hash.clone(),
            Err(p) => p.into_inner().last_hash.clone(),
        }
    }
}

/// Checks the whole file: every line parses, `seq` counts 1, 2, 3, …,
/// `hash` recomputes and `prev` is the previous `hash`. Returns the first
/// problem. Verifying a log that is being written may report a torn tail if
/// it catches a line mid-write.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, VerifyError> {
    let path = path.as_ref();
    let (scan, problem) = scan_file(path, |_| {})?;
    match problem {
        Some(problem) => Err(problem),
        None => Ok(VerifyReport {
            records: scan.records,
            last_hash: scan.last_hash,
            first_time: scan.first_time,
            last_time: scan.last_time,
        }),
    }
}

/// Reads the good records and reports (does not fail on) a torn tail or a
/// chain break after them. Fails only when the file cannot be read.
pub fn read_all(path: impl AsRef<Path>) -> Result<AuditContents, VerifyError> {
    let mut records = Vec::new();
    let (_, problem) = scan_file(path.as_ref(), |r| records.push(r))?;
    Ok(AuditContents { records, problem })
}

/// Where the good part of a log ended when it was last read: enough to read
/// and verify only what was appended since ([`read_appended`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Records in the good part (the last `seq`).
    pub records: u64,
    /// `hash` of the last good record ([`GENESIS_HASH`] for none).
    pub last_hash: String,
    /// Bytes of the good part.
    pub len: u64,
}

impl Position {
    /// The start of a log.
    pub fn start() -> Position {
        Position { records: 0, last_hash: GENESIS_HASH.to_owned(), len: 0 }
    }
}

/// Reads and verifies the records appended after `from` (a position an
/// earlier read returned), continuing its chain: what [`read_all`] would
/// return after `from`, without reading the part before it again. Returns
/// the new records (with the first problem after them) and the new position.
/// A log that was truncated or rewritten before `from` is reported as a
/// problem at the record where the chain no longer continues.
pub fn read_appended(path: impl AsRef<Path>, from: &Position) -> Result<(AuditContents, Position), VerifyError> {
    let path = path.as_ref();
    let io = |source| VerifyError::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(from.len)).map_err(io)?;
    let start = Scan {
        records: from.records,
        last_hash: from.last_hash.clone(),
        len: from.len,
        first_time: None,
        last_time: None,
    };
    let mut records = Vec::new();
    let (scan, problem) = scan_from(BufReader::new(file), start, |r| records.push(r)).map_err(io)?;
    let position = Position { records: scan.records, last_hash: scan.last_hash, len: scan.len };
    Ok((AuditContents { records, problem }, position))
}

/// Like [`read_all`], also returning the position after the good part.
pub fn read_all_at(path: impl AsRef<Path>) -> Result<(AuditContents, Position), VerifyError> {
    read_appended(path, &Position::start())
}

fn scan_file(path: &Path, each: impl FnMut(AuditRecord)) -> Result<(Scan, Option<VerifyError>), VerifyError> {
    let io = |source| VerifyError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    scan(BufReader::new(file), each).map_err(io)
}

#[derive(Debug)]
struct Scan {
    records: u64,
    last_hash: String,
    /// Bytes of good records.
    len: u64,
    first_time: Option<String>,
    last_time: Option<String>,
}

/// Walks the lines, stopping at the first problem; `Scan` describes the good
/// part before it.
fn scan(reader: impl BufRead, each: impl FnMut(AuditRecord)) -> io::Result<(Scan, Option<VerifyError>)> {
    let start = Scan { records: 0, last_hash: GENESIS_HASH.to_owned(), len: 0, first_time: None, last_time: None };
    scan_from(reader, start, each)
}

/// [`scan`] continuing after a known good part (`start`: its records, last hash and length).
fn scan_from(
    mut reader: impl BufRead,
    mut scan: Scan,
    mut each: impl FnMut(AuditRecord),
) -> io::Result<(Scan, Option<VerifyError>)> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok((scan, None));
        }
        let line = scan.records + 1;
        let offset = scan.len;
        let torn = |why: String| VerifyError::TornTail { line, offset, bytes: n as u64, why };
        let Some(text) = buf.strip_suffix(b"\n") else {
            return Ok((scan, Some(torn("no newline at the end".to_owned()))));
        };
        let record: AuditRecord = match serde_json::from_slice(text) {
            Ok(record) => record,
            Err(e) => {
                let why = describe_json_error(&e);
                let at_end = reader.fill_buf()?.is_empty();
                let problem = if at_end { torn(why) } else { VerifyError::Malformed { record: line, line, why } };
                return Ok((scan, Some(problem)));
            }
        };
        if record.seq != line {
            return Ok((scan, Some(VerifyError::Seq { record: line, line, found: record.seq })));
        }
        let Some((body, stored)) = split_hash(text) else {
            let why = "the hash is not the last member".to_owned();
            return Ok((scan, Some(VerifyError::Malformed { record: line, line, why })));
        };
        if body_hash(body).as_bytes() != stored {
            return Ok((scan, Some(VerifyError::Hash { record: line, line })));
        }
        if record.prev != scan.last_hash {
            return Ok((scan, Some(VerifyError::Prev { record: line, line })));
        }
        scan.records = line;
        scan.len += n as u64;
        scan.last_hash = record.hash.clone();
        if scan.first_time.is_none() {
            scan.first_time = Some(record.time.clone());
        }
        scan.last_time = Some(record.time.clone());
        each(record);
    }
}

/// Category and column only: serde messages can quote values from the SQL.
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not JSON",
        Category::Eof => "JSON that ends early",
        Category::Data => "JSON but not an audit record",
    };
    format!("{what} at column {}", e.column())
}

/// Splits a line (without `\n`) into the bytes before `,"hash":"…"` and the
/// 64 stored hash bytes.
fn split_hash(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let body_len = text.len().checked_sub(HASH_SUFFIX_LEN)?;
    let (body, suffix) = text.split_at(body_len);
    let stored = suffix.strip_prefix(HASH_KEY)?.strip_suffix(b"\"}")?;
    Some((body, stored))
}

/// SHA-256 of `body` + `}`: the record serialized without its `hash` member.
fn body_hash(body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    hex::encode(hasher.finalize())
}

/// Fills `record.hash` and returns its line, `\n` included.
fn seal(record: &mut AuditRecord) -> Result<Vec<u8>, AuditError> {
    record.hash = GENESIS_HASH.to_owned(); // placeholder of the right length
    let mut line = serde_json::to_vec(record).map_err(AuditError::Encode)?;
    let hash = match split_hash(&line) {
        Some((body, _)) => body_hash(body),
        None => {
            let e = <serde_json::Error as serde::ser::Error>::custom("hash is not the last member");
            return Err(AuditError::Encode(e));
        }
    };
    let end = line.len() - 2;
    line[end - 64..end].copy_from_slice(hash.as_bytes());
    line.push(b'\n');
    record.hash = hash;
    Ok(line)
}

/// Copies the bytes from `offset` to the end into a new `<path>.torn-<unix
/// time>` (synced), then truncates the log to `offset` (synced).
fn quarantine_tail(path: &Path, file: &mut File, offset: u64) -> io::Result<(PathBuf, u64)> {
    let mut torn = Vec::new();
    file.seek(SeekFrom::Start(offset))?;
    file.read_to_end(&mut torn)?;
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut attempt = 0u32;
    let (quarantine, mut out) = loop {
        let mut name = OsString::from(path.as_os_str());
        name.push(format!(".torn-{secs}"));
        if attempt > 0 {
            name.push(format!("-{attempt}"));
        }
        let candidate = PathBuf::from(name);
        match OpenOptions::new().write(true).create_new(true).open(&candidate) {
            Ok(out) => break (candidate, out),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    out.write_all(&torn)?;
    out.sync_all()?;
    sync_dir(&quarantine)?;
    // Only now that the bytes are safe elsewhere.
    file.set_len(offset)?;
    file.sync_all()?;
    Ok((quarantine, torn.len() as u64))
}

/// Makes a new directory entry for `path` durable (Unix; a no-op elsewhere).
fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    const ACTOR: &str = "coordinator";

    fn entry(i: u64) -> AuditEntry {
        AuditEntry::accepted(
            "CN=Anna Analytiker",
            format!("q-{i}"),
            format!("SELECT kommun, count(*) FROM lisa.person WHERE ar = {i} GROUP BY kommun"),
        )
        .project("P-2024-017")
        .plan_digest("ab12")
        .registers(["lisa"])
        .columns(["lisa.person.kommun", "lisa.person.ar"])
        .released(290, 580, 3)
        .disclosure(serde_json::json!({"min_cell": 5, "suppressed": 3}))
    }

    fn write_log(path: &Path, n: u64) {
        let log = AuditLog::open(path, ACTOR).expect("open a new log");
        for i in 1..=n {
            log.append(entry(i)).expect("append");
        }
    }

    fn lines(path: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(path).expect("read log");
        bytes.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
    }

    fn write_lines(path: &Path, lines: &[Vec<u8>]) {
        std::fs::write(path, lines.concat()).expect("rewrite log");
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack.windows(needle.len()).position(|w| w == needle).expect("needle in line")
    }

    #[test]
    fn chain_verifies_after_1000_appends_and_continues_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 1000);
        let report = verify(&path).expect("1000 records verify");
        assert_eq!(report.records, 1000);
        let log = AuditLog::open(&path, ACTOR).expect("reopen");
        assert_eq!(log.last_seq(), 1000);
        assert_eq!(log.last_hash(), report.last_hash);
        let r = log.append(entry(1001)).expect("append after reopen");
        assert_eq!(r.seq, 1001);
        assert_eq!(r.prev, report.last_hash);
        log.append(entry(1002)).expect("append after reopen");
        drop(log);
        let report = verify(&path).expect("chain continues across reopen");
        assert_eq!(report.records, 1002);
        assert!(report.first_time.expect("first time") <= report.last_time.expect("last time"));
    }

    #[test]
    fn hash_is_sha256_of_the_line_without_its_hash_member() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 2);
        let lines = lines(&path);
        let first = std::str::from_utf8(&lines[0]).expect("utf-8");
        assert!(first.starts_with("{\"seq\":1,\"time\":\""), "{first}");
        assert!(first.contains(&format!(",\"prev\":\"{GENESIS_HASH}\",\"hash\":\"")), "{first}");
        // Recompute independently: cut the hash member out of the text.
        let (without, rest) = first.split_once(",\"hash\":\"").expect("hash member");
        let stored = &rest[..64];
        assert_eq!(&rest[64..], "\"}\n");
        let expected = hex::encode(Sha256::digest(format!("{without}}}").as_bytes()));
        assert_eq!(stored, expected);
        // And it is the next record's prev.
        let second: AuditRecord = serde_json::from_slice(&lines[1]).expect("record 2");
        assert_eq!(second.prev, stored);
        let record: AuditRecord = serde_json::from_str(first).expect("record 1");
        assert_eq!(record.time.len(), "2025-03-01T09:15:02.123456Z".len());
        assert!(record.time.ends_with('Z'));
        assert_eq!(record.disclosure, serde_json::json!({"min_cell": 5, "suppressed": 3}));
    }

    #[test]
    fn differencing_flags_are_recorded_and_records_without_them_keep_their_old_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, ACTOR).expect("open");
        let flag = Flag { cell: 1, persons: 39, earlier_query_id: "q-1".into(), earlier_persons: 40 };
        log.append(entry(1)).expect("append");
        log.append(entry(2).differencing(vec![flag.clone()])).expect("append");
        drop(log);
        let lines = lines(&path);
        let first = std::str::from_utf8(&lines[0]).expect("utf-8");
        assert!(!first.contains("differencing"), "{first}");
        assert!(first.contains(r#""disclosure":{"min_cell":5,"suppressed":3},"prev":""#), "{first}");
        let second = std::str::from_utf8(&lines[1]).expect("utf-8");
        assert!(
            second.contains(
                r#","differencing":[{"cell":1,"persons":39,"earlier_query_id":"q-1","earlier_persons":40}],"prev":""#
            ),
            "{second}"
        );
        assert_eq!(verify(&path).expect("verifies").records, 2);
        let contents = read_all(&path).expect("read");
        assert_eq!(contents.records[0].differencing, []);
        assert_eq!(contents.records[1].differencing, [flag]);
    }

    #[test]
    fn reading_what_was_appended_continues_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 10);
        let (first, at) = read_all_at(&path).expect("read");
        assert_eq!((first.records.len(), at.records), (10, 10));
        let log = AuditLog::open(&path, ACTOR).expect("reopen");
        log.append(entry(11)).expect("append");
        log.append(entry(12)).expect("append");
        drop(log);
        let (more, at2) = read_appended(&path, &at).expect("read the tail");
        assert!(more.problem.is_none());
        assert_eq!(more.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [11, 12]);
        assert_eq!(at2.len, std::fs::metadata(&path).expect("meta").len());
        let (none, at3) = read_appended(&path, &at2).expect("nothing new");
        assert!(none.records.is_empty() && at3 == at2);
        // A tail that does not continue the chain it claims to follow is a problem, not records.
        let forged = Position { last_hash: "f".repeat(64), ..at };
        let (bad, _) = read_appended(&path, &forged).expect("read");
        assert!(matches!(bad.problem, Some(VerifyError::Prev { record: 11, .. })), "{:?}", bad.problem);
    }

    #[test]
    fn empty_log_verifies_with_no_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        drop(AuditLog::open(&path, ACTOR).expect("create"));
        let report = verify(&path).expect("empty log verifies");
        assert_eq!(
            report,
            VerifyReport { records: 0, last_hash: GENESIS_HASH.to_owned(), first_time: None, last_time: None }
        );
        assert!(matches!(verify(dir.path().join("missing")), Err(VerifyError::Io { .. })));
    }

    #[test]
    fn flipped_byte_in_sql_names_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 30);
        let mut lines = lines(&path);
        let at = find(&lines[16], b"GROUP BY");
        lines[16][at] ^= 0x01; // 'G' -> 'F'
        write_lines(&path, &lines);
        let e = verify(&path).expect_err("altered sql is detected");
        assert!(matches!(e, VerifyError::Hash { record: 17, line: 17 }), "{e:?}");
        assert_eq!(e.to_string(), "record 17 (line 17): hash does not match its contents (the record was altered)");
        match AuditLog::open(&path, ACTOR) {
            Err(AuditError::Broken { source: VerifyError::Hash { record: 17, .. }, .. }) => {}
            other => panic!("open must refuse a broken chain: {other:?}"),
        }
        let contents = read_all(&path).expect("readable");
        assert_eq!(contents.records.len(), 16);
        assert!(matches!(contents.problem, Some(VerifyError::Hash { record: 17, .. })));
    }

    #[test]
    fn flipped_byte_in_hash_field_names_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 30);
        for flip in [0x01u8, 0x20] {
            let mut lines = lines(&path);
            let at = find(&lines[16], b",\"hash\":\"") + 9 + 10;
            lines[16][at] ^= flip;
            let tampered = dir.path().join(format!("tampered-{flip}.jsonl"));
            write_lines(&tampered, &lines);
            let e = verify(&tampered).expect_err("altered hash is detected");
            assert_eq!(e.record(), Some(17), "{e}");
            assert!(e.to_string().starts_with("record 17 (line 17): "), "{e}");
        }
    }

    #[test]
    fn deleted_record_is_found_at_its_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 30);
        for n in [1usize, 17, 29] {
            let mut lines = lines(&path);
            lines.remove(n - 1);
            let cut = dir.path().join(format!("cut-{n}.jsonl"));
            write_lines(&cut, &lines);
            let e = verify(&cut).expect_err("deleted record is detected");
            assert_eq!(e.record(), Some(n as u64), "{e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "record {n} (line {n}): seq {} expected {n} (a record was removed, inserted or renumbered)",
                    n + 1
                )
            );
        }
    }

    #[test]
    fn altered_and_rehashed_record_breaks_the_next_prev() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 30);
        let mut lines = lines(&path);
        let mut record: AuditRecord = serde_json::from_slice(&lines[16]).expect("record 17");
        record.rows_released = 0;
        lines[16] = seal(&mut record).expect("reseal");
        write_lines(&path, &lines);
        let e = verify(&path).expect_err("rehashed record is detected");
        assert!(matches!(e, VerifyError::Prev { record: 18, line: 18 }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "record 18 (line 18): prev does not match the hash of record 17 (a record was removed or altered)"
        );
    }

    #[test]
    fn unparseable_line_in_the_middle_is_a_break_not_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 5);
        let mut lines = lines(&path);
        lines[2] = b"{\"seq\":3,\"sql\":\"SELECT secret\n".to_vec();
        write_lines(&path, &lines);
        let e = verify(&path).expect_err("garbage is detected");
        assert!(matches!(e, VerifyError::Malformed { record: 3, line: 3, .. }), "{e:?}");
        assert!(!e.to_string().contains("secret"), "messages never quote contents: {e}");
        assert!(matches!(AuditLog::open_recovering(&path, ACTOR), Err(AuditError::Broken { .. })));
    }

    #[test]
    fn torn_tail_is_refused_then_quarantined_and_audited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 20);
        let whole = std::fs::read(&path).expect("read");
        let torn_len = whole.len() - 10;
        std::fs::write(&path, &whole[..torn_len]).expect("tear the last line");
        let last_start = whole[..whole.len() - 1].iter().rposition(|b| *b == b'\n').expect("line 19 end") + 1;

        let e = verify(&path).expect_err("torn tail is detected");
        assert!(matches!(e, VerifyError::TornTail { line: 20, .. }), "{e:?}");
        assert!(e.to_string().starts_with("line 20: torn record at the end of the file ("), "{e}");

        let contents = read_all(&path).expect("read_all reports without failing");
        assert_eq!(contents.records.len(), 19);
        assert!(matches!(contents.problem, Some(VerifyError::TornTail { line: 20, .. })));

        match AuditLog::open(&path, ACTOR) {
            Err(AuditError::TornTail { line: 20, record: 20, bytes, .. }) => {
                assert_eq!(bytes as usize, torn_len - last_start);
            }
            other => panic!("open must refuse a torn tail: {other:?}"),
        }
        assert_eq!(std::fs::read(&path).expect("read"), &whole[..torn_len], "a refused open changes nothing");

        let (log, recovery) = AuditLog::open_recovering(&path, ACTOR).expect("recover");
        let recovery = recovery.expect("a recovery happened");
        assert_eq!(recovery.line, 20);
        assert_eq!(std::fs::read(&recovery.quarantine).expect("quarantine"), &whole[last_start..torn_len]);
        assert!(recovery.quarantine.to_string_lossy().contains("audit.jsonl.torn-"));
        let r = &recovery.record;
        assert_eq!((r.seq, r.decision, r.rule.as_str()), (20, Decision::Recovered, RULE_TORN_TAIL));
        assert!(r.reason.contains(&format!("{} bytes", recovery.bytes)), "{}", r.reason);
        assert!(r.reason.contains(&recovery.quarantine.display().to_string()), "{}", r.reason);
        log.append(entry(21)).expect("append after recovery");
        drop(log);
        let report = verify(&path).expect("verifies after recovery");
        assert_eq!(report.records, 21);
        let (_, again) = AuditLog::open_recovering(&path, ACTOR).expect("reopen");
        assert!(again.is_none(), "nothing to recover the second time");
    }

    #[test]
    fn complete_but_unparseable_last_line_is_torn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 3);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(b"{\"seq\":4,\"ti\n");
        std::fs::write(&path, &bytes).expect("append garbage");
        assert!(matches!(verify(&path), Err(VerifyError::TornTail { line: 4, .. })));
        assert!(matches!(AuditLog::open(&path, ACTOR), Err(AuditError::TornTail { line: 4, .. })));
        let (_, recovery) = AuditLog::open_recovering(&path, ACTOR).expect("recover");
        assert_eq!(recovery.expect("recovered").record.seq, 4);
        assert_eq!(verify(&path).expect("verifies").records, 4);
    }

    #[test]
    fn record_is_visible_when_append_returns_and_one_writer_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, ACTOR).expect("open");
        let record = log.append(entry(1)).expect("append");
        // No buffering in user space: a reader sees the record right away.
        let contents = read_all(&path).expect("read");
        assert_eq!(contents.records, vec![record.clone()]);
        assert!(contents.problem.is_none());
        assert!(matches!(AuditLog::open(&path, ACTOR), Err(AuditError::Locked { .. })));
        drop(log);
        let log = AuditLog::open(&path, ACTOR).expect("reopen after the writer closed");
        assert_eq!((log.last_seq(), log.last_hash()), (1, record.hash));
    }

    #[test]
    fn concurrent_appends_keep_seq_and_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open(&path, ACTOR).expect("open"));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    (0..250).map(|i| log.append(entry(t * 1000 + i)).expect("append").seq).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let seqs = t.join().expect("thread");
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq strictly increasing per thread");
            all.extend(seqs);
        }
        all.sort_unstable();
        assert_eq!(all, (1..=1000).collect::<Vec<_>>());
        assert_eq!(verify(&path).expect("chain valid").records, 1000);
    }

    /// `cargo test -p samkor-policies --release audit::tests::append_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement, prints µs per append"]
    fn append_cost() {
        let dir = tempfile::tempdir().expect("tempdir");
        for sync in [true, false] {
            let path = dir.path().join(format!("audit-{sync}.jsonl"));
            let options = AuditOptions { sync, ..AuditOptions::default() };
            let (log, _) = AuditLog::open_with(&path, ACTOR, options).expect("open");
            let n = 2000;
            let start = Instant::now();
            for i in 0..n {
                log.append(entry(i)).expect("append");
            }
            let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
            let bytes = std::fs::metadata(&path).expect("meta").len() / n;
            println!("sync={sync}: {n} appends, {us:.1} µs/append, {bytes} bytes/record");
            assert_eq!(verify(&path).expect("verifies").records, n);
        }
    }
}
