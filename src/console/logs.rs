//! Audit logs as the console reads them: verified once, kept in memory,
//! extended by what was appended, filtered per page.
//!
//! A page never waits for a whole chain to be verified if the console has
//! seen the log before: the console verifies every log it shows in the
//! background when it starts and again every [`FULL_VERIFY_EVERY`]
//! ([`LogCache::reverify`]), and a page reads only the records appended since
//! the last read and checks that they continue the chain
//! (`audit::read_appended`). A whole read on a page happens only for a log
//! not read yet, one whose chain was already broken, or one that shrank (then
//! the page shows what the new read finds). An edit in the middle of an
//! intact log shows within [`FULL_VERIFY_EVERY`].
//!
//! ```text
//!  start, then every 60 s ─▶ reverify(path): whole chain, off the page path ─▶ installed
//!  page ─▶ load(path): same size and time ─▶ as kept
//!                      grew, chain intact ─▶ + appended records (verified as continuing the chain)
//!                      otherwise          ─▶ whole chain read on this page
//! ```

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;
use samkor_policies::audit::{self, AuditRecord, Decision, Position, VerifyError};

/// Records shown per page.
pub(crate) const PAGE: usize = 100;

/// How often every log is verified again in full, in the background.
pub(crate) const FULL_VERIFY_EVERY: Duration = Duration::from_secs(60);

/// A log as read and verified.
#[derive(Debug)]
pub(crate) struct Loaded {
    stamp: (u64, SystemTime),
    position: Position,
    /// The good records (all of them when the chain is intact).
    pub(crate) records: Vec<Arc<AuditRecord>>,
    pub(crate) problem: Option<Broken>,
    /// Distinct values, for the filter menus.
    pub(crate) identities: BTreeSet<String>,
    pub(crate) projects: BTreeSet<String>,
    pub(crate) rules: BTreeSet<String>,
}

/// The first problem in a log's chain.
#[derive(Debug)]
pub(crate) struct Broken {
    pub(crate) message: String,
    pub(crate) record: Option<u64>,
    /// The first bad line itself (cut to 4000 characters), for the reviewer.
    pub(crate) line: Option<String>,
}

/// Verified logs by path.
#[derive(Debug, Default)]
pub(crate) struct LogCache {
    slots: Mutex<HashMap<PathBuf, Arc<Slot>>>,
    /// Whole-chain reads so far (pages and background).
    full_reads: AtomicU64,
}

/// One log: its state as last read. The lock also makes pages asking for the
/// same log at once wait for one read instead of each reading it.
#[derive(Debug, Default)]
struct Slot {
    current: Mutex<Option<Arc<Loaded>>>,
}

fn stamp(path: &Path) -> std::io::Result<(u64, SystemTime)> {
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.modified()?))
}

fn note_values(loaded: &mut Loaded, records: &[Arc<AuditRecord>]) {
    for r in records {
        if !loaded.identities.contains(&r.identity) {
            loaded.identities.insert(r.identity.clone());
        }
        if !loaded.projects.contains(&r.project) {
            loaded.projects.insert(r.project.clone());
        }
        if !loaded.rules.contains(&r.rule) {
            loaded.rules.insert(r.rule.clone());
        }
    }
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> String {
    format!("cannot read audit log {}: {e}", path.display())
}

impl LogCache {
    fn slot(&self, path: &Path) -> Arc<Slot> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).entry(path.to_owned()).or_default().clone()
    }

    /// Whole-chain reads so far.
    #[cfg(test)]
    pub(crate) fn full_reads(&self) -> u64 {
        self.full_reads.load(Ordering::Relaxed)
    }

    /// The log at `path` for a page: as kept if unchanged, extended by the
    /// appended records if it only grew, read whole otherwise. Blocking.
    pub(crate) fn load(&self, path: &Path) -> Result<Arc<Loaded>, String> {
        let slot = self.slot(path);
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(path).map_err(|e| unreadable(path, e))?;
        let loaded = match current.as_ref() {
            Some(l) if l.stamp == now => return Ok(l.clone()),
            // Only grew since an intact read: read and verify what was appended.
            Some(l) if l.problem.is_none() && now.0 >= l.position.len => extend(l, path, now)?,
            _ => self.read_whole(path, now)?,
        };
        let loaded = Arc::new(loaded);
        *current = Some(loaded.clone());
        Ok(loaded)
    }

    /// Verifies the whole chain of `path` again and keeps the result (pages
    /// go on with what they had while this runs). Blocking.
    pub(crate) fn reverify(&self, path: &Path) -> Result<Arc<Loaded>, String> {
        let slot = self.slot(path);
        {
            // Never read yet (the console is starting): pages asking meanwhile wait for this read.
            let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
            if current.is_none() {
                let now = stamp(path).map_err(|e| unreadable(path, e))?;
                let fresh = Arc::new(self.read_whole(path, now)?);
                *current = Some(fresh.clone());
                return Ok(fresh);
            }
        }
        let now = stamp(path).map_err(|e| unreadable(path, e))?;
        let fresh = Arc::new(self.read_whole(path, now)?);
        // Whatever a page read meanwhile continues from this state on the next page.
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    fn read_whole(&self, path: &Path, now: (u64, SystemTime)) -> Result<Loaded, String> {
        self.full_reads.fetch_add(1, Ordering::Relaxed);
        let (contents, position) = audit::read_all_at(path).map_err(|e| e.to_string())?;
        let records: Vec<Arc<AuditRecord>> = contents.records.into_iter().map(Arc::new).collect();
        let mut loaded = Loaded {
            stamp: now,
            position,
            records: Vec::new(),
            problem: contents.problem.map(|p| broken(path, &p)),
            identities: BTreeSet::new(),
            projects: BTreeSet::new(),
            rules: BTreeSet::new(),
        };
        note_values(&mut loaded, &records);
        loaded.records = records;
        Ok(loaded)
    }
}

/// `l` and the records appended to `path` after it.
fn extend(l: &Loaded, path: &Path, now: (u64, SystemTime)) -> Result<Loaded, String> {
    let (more, position) = audit::read_appended(path, &l.position).map_err(|e| e.to_string())?;
    let added: Vec<Arc<AuditRecord>> = more.records.into_iter().map(Arc::new).collect();
    let mut records = Vec::with_capacity(l.records.len() + added.len());
    records.extend(l.records.iter().cloned());
    records.extend(added.iter().cloned());
    let mut loaded = Loaded {
        stamp: now,
        position,
        records,
        problem: more.problem.map(|p| broken(path, &p)),
        identities: l.identities.clone(),
        projects: l.projects.clone(),
        rules: l.rules.clone(),
    };
    note_values(&mut loaded, &added);
    Ok(loaded)
}

fn broken(path: &Path, p: &VerifyError) -> Broken {
    let record = p.record();
    let line = record.and_then(|n| nth_line(path, n));
    Broken { message: describe(p), record, line }
}

fn describe(p: &VerifyError) -> String {
    p.to_string()
}

/// Line `n` (1-based) of the file, lossily decoded and cut.
fn nth_line(path: &Path, n: u64) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    for _ in 0..n {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).ok()? == 0 {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    Some(text.trim_end().chars().take(4000).collect())
}

/// The filters of the audit page (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    pub(crate) from: Option<NaiveDate>,
    pub(crate) to: Option<NaiveDate>,
    pub(crate) identity: Option<String>,
    pub(crate) project: Option<String>,
    pub(crate) outcome: Option<Decision>,
    pub(crate) rule: Option<String>,
    /// `from` and `to` as `YYYY-MM-DD` (set by [`Filter::new`]).
    from_text: Option<String>,
    to_text: Option<String>,
}

pub(crate) fn parse_outcome(s: &str) -> Option<Decision> {
    match s {
        "accepted" => Some(Decision::Accepted),
        "refused" => Some(Decision::Refused),
        "failed" => Some(Decision::Failed),
        "recovered" => Some(Decision::Recovered),
        _ => None,
    }
}

impl Filter {
    pub(crate) fn new(
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
        identity: Option<String>,
        project: Option<String>,
        outcome: Option<Decision>,
        rule: Option<String>,
    ) -> Filter {
        let text = |d: Option<NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
        Filter { from_text: text(from), to_text: text(to), from, to, identity, project, outcome, rule }
    }

    /// Whether a record passes. Days are compared on the record's UTC date;
    /// a record whose time does not parse is kept (never hide records from a review).
    pub(crate) fn matches(&self, r: &AuditRecord) -> bool {
        // RFC 3339 UTC dates sort as text: compare the first ten characters, no parsing.
        let day = r.time.get(..10).filter(|d| d.as_bytes().get(4) == Some(&b'-'));
        if let (Some(from), Some(day)) = (&self.from_text, day)
            && day < from.as_str()
        {
            return false;
        }
        if let (Some(to), Some(day)) = (&self.to_text, day)
            && day > to.as_str()
        {
            return false;
        }
        self.identity.as_ref().is_none_or(|i| *i == r.identity)
            && self.project.as_ref().is_none_or(|p| *p == r.project)
            && self.outcome.is_none_or(|o| o == r.decision)
            && self.rule.as_ref().is_none_or(|x| *x == r.rule)
    }
}

/// The records passing `filter`, newest first, page `page` (0-based), and how many passed.
pub(crate) fn select<'a>(loaded: &'a Loaded, filter: &Filter, page: usize) -> (Vec<&'a AuditRecord>, usize) {
    let mut matched = 0usize;
    let skip = page * PAGE;
    let mut out = Vec::with_capacity(PAGE);
    for r in loaded.records.iter().rev() {
        if filter.matches(r) {
            if matched >= skip && out.len() < PAGE {
                out.push(r.as_ref());
            }
            matched += 1;
        }
    }
    (out, matched)
}

/// The near-identical-population flags of a record, for the audit page.
///
/// NEAR-IDENTICAL POPULATION FLAGS: disclosure control is getting an optional
/// field on audit records that flags answers whose population is nearly
/// identical to an earlier answer's (differencing). Until that field exists
/// this reads the same information from the record's `disclosure` object
/// (`near_identical`, a list or a string) if present; once the field lands,
/// read it here and nowhere else: the page and its filter use this function.
pub(crate) fn near_identical(r: &AuditRecord) -> Option<String> {
    let v = r.disclosure.get("near_identical")?;
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.is_empty() => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) if a.is_empty() => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use samkor_policies::audit::{AuditEntry, AuditLog};

    #[test]
    fn filters_pages_and_reloads_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open(&path, "coordinator").expect("open");
        for i in 0..250 {
            let e = if i % 10 == 0 {
                AuditEntry::refused("bob", format!("q{i}"), "SELECT 1", "approval.member", "not a member")
                    .project("P-2")
            } else {
                AuditEntry::accepted("alice", format!("q{i}"), "SELECT 1").project("P-1")
            };
            log.append(e).expect("append");
        }
        let cache = LogCache::default();
        let loaded = cache.load(&path).expect("load");
        assert_eq!(loaded.records.len(), 250);
        assert!(loaded.problem.is_none());
        assert_eq!(loaded.identities.iter().collect::<Vec<_>>(), ["alice", "bob"]);
        let (page, n) = select(&loaded, &Filter::default(), 0);
        assert_eq!((page.len(), n, page[0].seq), (PAGE, 250, 250), "newest first");
        let (page, _) = select(&loaded, &Filter::default(), 2);
        assert_eq!((page.len(), page[0].seq), (50, 50));
        let refused = Filter::new(None, None, None, None, Some(Decision::Refused), None);
        let (page, n) = select(&loaded, &refused, 0);
        assert_eq!(n, 25);
        assert!(page.iter().all(|r| r.identity == "bob" && r.rule == "approval.member"));
        let future = Filter::new(NaiveDate::from_ymd_opt(2999, 1, 1), None, None, None, None, None);
        assert_eq!(select(&loaded, &future, 0).1, 0);
        assert!(Arc::ptr_eq(&loaded, &cache.load(&path).expect("cached")), "unchanged file is not re-read");
        log.append(AuditEntry::accepted("carol", "q", "SELECT 2")).expect("append");
        let grown = cache.load(&path).expect("reloaded");
        assert_eq!(grown.records.len(), 251);
        assert!(grown.identities.contains("carol") && grown.problem.is_none());
        assert_eq!(grown.records.last().expect("last").seq, 251);
    }

    fn write(path: &Path, n: u64) {
        let options = samkor_policies::audit::AuditOptions { sync: false, ..Default::default() };
        let (log, _) = AuditLog::open_with(path, "coordinator", options).expect("open");
        for i in 0..n {
            log.append(AuditEntry::accepted("alice", format!("q{i}"), "SELECT 1")).expect("append");
        }
    }

    #[test]
    fn pages_read_a_log_whole_once_then_only_what_was_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.jsonl");
        write(&path, 300);
        let cache = LogCache::default();
        let warmed = cache.reverify(&path).expect("verified at start");
        assert_eq!((cache.full_reads(), warmed.records.len()), (1, 300));
        assert!(Arc::ptr_eq(&warmed, &cache.load(&path).expect("page")), "the page gets what was verified");
        write(&path, 5);
        let grown = cache.load(&path).expect("page after appends");
        assert_eq!((cache.full_reads(), grown.records.len()), (1, 305), "only the appended records were read");
        assert!(grown.problem.is_none());
        // A log that shrank is read whole on the page.
        let text = std::fs::read_to_string(&path).expect("read");
        let kept: String = text.lines().take(200).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, kept).expect("truncate");
        let shrunk = cache.load(&path).expect("page after truncation");
        assert_eq!((cache.full_reads(), shrunk.records.len()), (2, 200));
    }

    #[test]
    fn the_background_verification_finds_an_edit_an_appended_read_cannot_see() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.jsonl");
        write(&path, 50);
        let cache = LogCache::default();
        cache.reverify(&path).expect("verified at start");
        // Same length, one record altered in the middle.
        let text = std::fs::read_to_string(&path).expect("read").replacen("\"q20\"", "\"qX0\"", 1);
        std::fs::write(&path, text).expect("tamper");
        let page = cache.load(&path).expect("page");
        assert!(page.problem.is_none() && page.records.len() == 50, "nothing appended: the page keeps what it had");
        let again = cache.reverify(&path).expect("verified again");
        assert_eq!(again.problem.as_ref().and_then(|b| b.record), Some(21), "the edit is found");
        let page = cache.load(&path).expect("page");
        assert!(Arc::ptr_eq(&page, &again), "pages now show the broken chain");
        assert_eq!(page.records.len(), 20);
    }

    #[test]
    fn pages_asking_for_one_log_at_once_share_one_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.jsonl");
        write(&path, 3000);
        let cache = LogCache::default();
        let start = std::sync::Barrier::new(4);
        let loaded: Vec<Arc<Loaded>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        cache.load(&path).expect("page")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert_eq!(cache.full_reads(), 1, "one whole read for four pages");
        assert!(loaded.iter().all(|l| Arc::ptr_eq(l, &loaded[0])));
    }

    #[test]
    fn a_broken_chain_names_and_shows_the_first_bad_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open(&path, "coordinator").expect("open");
        for i in 0..5 {
            log.append(AuditEntry::accepted("alice", format!("q{i}"), "SELECT 1")).expect("append");
        }
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read").replacen("\"q2\"", "\"qX\"", 1);
        std::fs::write(&path, text).expect("tamper");
        let loaded = LogCache::default().load(&path).expect("load");
        assert_eq!(loaded.records.len(), 2);
        let broken = loaded.problem.as_ref().expect("broken");
        assert_eq!(broken.record, Some(3));
        assert!(broken.message.contains("record 3 (line 3)"), "{}", broken.message);
        assert!(broken.line.as_deref().is_some_and(|l| l.contains("\"qX\"")));
    }
}
