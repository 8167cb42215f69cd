//! `samkor audit verify | show | report`: reading the audit log back for log
//! follow-up and the recurring access review. Each function returns the text
//! to print; `Err` means the caller exits non-zero.
//!
//! The log itself (format, hash chain, durability) is
//! `samkor_policies::audit`; see `docs/audit.md`.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use comfy_table::{Cell, CellAlignment, Table};
use samkor_policies::audit::{self, AuditContents, AuditRecord, Decision, VerifyError};

/// How far ahead `report` warns about approvals that run out.
const EXPIRY_WARNING_DAYS: i64 = 30;
/// SQL is cut to this many characters in `show`.
const SQL_WIDTH: usize = 60;

/// An approval as the access review needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSummary {
    pub project: String,
    pub title: String,
    pub valid_until: NaiveDate,
}

/// `samkor audit verify FILE`: the summary of an intact chain, or the first
/// bad record.
pub fn verify(file: &Path) -> Result<String, String> {
    match audit::verify(file) {
        Ok(report) => match (report.first_time, report.last_time) {
            (Some(first), Some(last)) => Ok(format!(
                "audit log {}: {} records, chain intact, last hash {}, from {first} to {last}",
                file.display(),
                report.records,
                report.last_hash
            )),
            _ => Ok(format!("audit log {}: 0 records, chain intact (empty log)", file.display())),
        },
        Err(e @ VerifyError::Io { .. }) => Err(e.to_string()),
        Err(e) => Err(format!("audit log {}: {e}", file.display())),
    }
}

/// `samkor audit show FILE [--project P] [--since T]`: one table row per
/// record. `since` is RFC 3339 or `YYYY-MM-DD` (UTC midnight).
pub fn show(file: &Path, project: Option<&str>, since: Option<&str>) -> Result<String, String> {
    let since = since.map(|s| parse_time("--since", s, false)).transpose()?;
    let contents = read(file)?;
    let mut table = Table::new();
    table.set_header(vec![
        "seq",
        "time (UTC)",
        "identity",
        "project",
        "decision",
        "rule",
        "rows",
        "cells",
        "suppressed",
        "SQL",
    ]);
    let mut shown = 0;
    for r in contents.records.iter().filter(|r| is_since(r, since.as_ref())) {
        if project.is_some_and(|p| p != r.project) {
            continue;
        }
        shown += 1;
        table.add_row(vec![
            Cell::new(r.seq).set_alignment(CellAlignment::Right),
            Cell::new(short_time(&r.time)),
            Cell::new(&r.identity),
            Cell::new(&r.project),
            Cell::new(r.decision),
            Cell::new(&r.rule),
            Cell::new(r.rows_released).set_alignment(CellAlignment::Right),
            Cell::new(r.cells_released).set_alignment(CellAlignment::Right),
            Cell::new(r.cells_suppressed).set_alignment(CellAlignment::Right),
            Cell::new(one_line(&r.sql, SQL_WIDTH)),
        ]);
    }
    let mut filters = Vec::new();
    if let Some(p) = project {
        filters.push(format!("project {p:?}"));
    }
    if let Some(s) = since {
        filters.push(format!("since {}", s.format("%Y-%m-%d %H:%M:%S UTC")));
    }
    let filters = if filters.is_empty() { String::new() } else { format!(" ({})", filters.join(", ")) };
    let mut out = format!("audit log {}: {shown} of {} records{filters}\n", file.display(), contents.records.len());
    if shown > 0 {
        out.push_str(&table.to_string());
        out.push('\n');
    }
    if let Some(problem) = &contents.problem {
        out.push_str(&integrity_warning(problem));
    }
    Ok(out)
}

/// `samkor audit report FILE [--since T] [--until T]`: the recurring access
/// review, plain text in headed sections. Without `since`/`until` it covers
/// the whole log; the header says which period it covers.
pub fn report(
    file: &Path,
    since: Option<&str>,
    until: Option<&str>,
    approvals: &[ApprovalSummary],
) -> Result<String, String> {
    report_at(file, Period::parse(since, until)?, approvals, Utc::now().date_naive())
}

/// The period a report covers: `since` inclusive, `until` exclusive; open ends cover the whole log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Period {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl Period {
    /// `--until` as a date includes that whole day.
    pub fn parse(since: Option<&str>, until: Option<&str>) -> Result<Period, String> {
        let since = since.map(|s| parse_time("--since", s, false)).transpose()?;
        let until = until.map(|s| parse_time("--until", s, true)).transpose()?;
        if let (Some(s), Some(u)) = (since, until)
            && u <= s
        {
            return Err(format!(
                "--until ({}) is not after --since ({}): the period is empty",
                u.format("%Y-%m-%d %H:%M:%S UTC"),
                s.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        Ok(Period { since, until })
    }

    fn contains(&self, r: &AuditRecord) -> bool {
        is_since(r, self.since.as_ref()) && self.until.is_none_or(|u| record_time(r).is_none_or(|t| t < u))
    }

    fn describe(&self) -> String {
        let t = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        match (&self.since, &self.until) {
            (None, None) => "the whole log".to_owned(),
            (Some(s), None) => format!("since {}", t(s)),
            (None, Some(u)) => format!("before {}", t(u)),
            (Some(s), Some(u)) => format!("from {} to before {}", t(s), t(u)),
        }
    }
}

#[derive(Debug, Default)]
struct Usage {
    accepted: u64,
    refused: u64,
    failed: u64,
    rows: u64,
    cells: u64,
    suppressed: u64,
    registers: BTreeSet<String>,
}

fn report_at(file: &Path, period: Period, approvals: &[ApprovalSummary], today: NaiveDate) -> Result<String, String> {
    let contents = read(file)?;
    let problem = contents.problem.as_ref().map(|p| p as &dyn std::fmt::Display);
    report_of(file, &contents.records, problem, &period, approvals, today)
}

/// The access review of records already read (`all`: the good records of
/// `file`, `problem`: the chain problem after them), as `report` prints it.
/// The web console passes the records it keeps verified in memory.
pub fn report_of<R: std::borrow::Borrow<AuditRecord>>(
    file: &Path,
    all: &[R],
    problem: Option<&dyn std::fmt::Display>,
    period: &Period,
    approvals: &[ApprovalSummary],
    today: NaiveDate,
) -> Result<String, String> {
    let all: Vec<&AuditRecord> = all.iter().map(Borrow::borrow).collect();
    let records: Vec<&AuditRecord> = all.iter().copied().filter(|r| period.contains(r)).collect();
    let mut usage: BTreeMap<(&str, &str), Usage> = BTreeMap::new();
    let mut refusals: BTreeMap<&str, (u64, BTreeSet<&str>)> = BTreeMap::new();
    let mut events = Vec::new();
    for r in &records {
        if r.decision == Decision::Recovered {
            events.push(*r);
            continue;
        }
        let u = usage.entry((r.identity.as_str(), r.project.as_str())).or_default();
        match r.decision {
            // A node's stream-end record adds the rows released; its sub-query was counted at its decision.
            Decision::Accepted if r.rule == audit::RULE_STREAM_END => {}
            Decision::Accepted => u.accepted += 1,
            Decision::Refused => {
                u.refused += 1;
                let rule = if r.rule.is_empty() { "(no rule named)" } else { r.rule.as_str() };
                let entry = refusals.entry(rule).or_default();
                entry.0 += 1;
                entry.1.insert(r.identity.as_str());
            }
            Decision::Failed => u.failed += 1,
            Decision::Recovered => {}
        }
        u.rows += r.rows_released;
        u.cells += r.cells_released;
        u.suppressed += r.cells_suppressed;
        u.registers.extend(r.registers.iter().cloned());
    }

    let mut out = format!("ACCESS REVIEW: audit log {}\n", file.display());
    let actors: BTreeSet<&str> = all.iter().map(|r| r.actor.as_str()).collect();
    out.push_str(&format!(
        "Period: {} ({} of {} records{})\n",
        period.describe(),
        records.len(),
        all.len(),
        match (records.first(), records.last()) {
            (Some(first), Some(last)) => format!(", {} to {}", short_time(&first.time), short_time(&last.time)),
            _ => String::new(),
        }
    ));
    if !actors.is_empty() {
        out.push_str(&format!("Written by: {}\n", actors.into_iter().collect::<Vec<_>>().join(", ")));
    }
    out.push_str(&format!("Review date: {today}\n"));
    match problem {
        None => out.push_str("Log integrity: chain intact\n"),
        Some(problem) => out.push_str(&integrity_warning(problem)),
    }

    out.push_str("\n== Queries per identity and project ==\n");
    if usage.is_empty() {
        out.push_str("No queries in the period.\n");
    } else {
        let mut table = Table::new();
        table.set_header(vec![
            "identity",
            "project",
            "accepted",
            "refused",
            "failed",
            "rows released",
            "cells released",
            "cells suppressed",
            "registers",
        ]);
        for ((identity, project), u) in &usage {
            let project = if project.is_empty() { "(direct access)" } else { project };
            table.add_row(vec![
                Cell::new(identity),
                Cell::new(project),
                right(u.accepted),
                right(u.refused),
                right(u.failed),
                right(u.rows),
                right(u.cells),
                right(u.suppressed),
                Cell::new(u.registers.iter().cloned().collect::<Vec<_>>().join(", ")),
            ]);
        }
        out.push_str(&table.to_string());
        out.push('\n');
    }

    out.push_str("\n== Refusals by rule ==\n");
    if refusals.is_empty() {
        out.push_str("No refusals in the period.\n");
    } else {
        let mut table = Table::new();
        table.set_header(vec!["rule", "refusals", "identities"]);
        for (rule, (count, identities)) in &refusals {
            table.add_row(vec![
                Cell::new(rule),
                right(*count),
                Cell::new(identities.iter().copied().collect::<Vec<_>>().join("; ")),
            ]);
        }
        out.push_str(&table.to_string());
        out.push('\n');
    }

    out.push_str(&near_identical_populations(&records, &all));

    if !events.is_empty() {
        out.push_str("\n== Log events ==\n");
        for r in events {
            out.push_str(&format!(
                "record {} at {}: {} ({}): {}\n",
                r.seq,
                short_time(&r.time),
                r.decision,
                r.rule,
                r.reason
            ));
        }
    }

    out.push_str(&format!("\n== Approvals expired or expiring within {EXPIRY_WARNING_DAYS} days ==\n"));
    let mut due: Vec<&ApprovalSummary> =
        approvals.iter().filter(|a| (a.valid_until - today).num_days() <= EXPIRY_WARNING_DAYS).collect();
    due.sort_by(|a, b| (a.valid_until, &a.project).cmp(&(b.valid_until, &b.project)));
    if due.is_empty() {
        out.push_str("None.\n");
    } else {
        let mut table = Table::new();
        table.set_header(vec!["project", "title", "valid until", "status", "accepted after expiry"]);
        for a in due {
            let days = (a.valid_until - today).num_days();
            let status = match days {
                d if d < 0 => format!("expired {} days ago", -d),
                0 => "expires today".to_owned(),
                d => format!("expires in {d} days"),
            };
            // Accepted queries dated after the last valid day: a finding for the review.
            let after = all
                .iter()
                .filter(|r| r.decision == Decision::Accepted && r.project == a.project)
                .filter(|r| record_time(r).is_some_and(|t| t.date_naive() > a.valid_until))
                .count();
            table.add_row(vec![
                Cell::new(&a.project),
                Cell::new(&a.title),
                Cell::new(a.valid_until),
                Cell::new(status),
                right(after as u64),
            ]);
        }
        out.push_str(&table.to_string());
        out.push('\n');
    }
    Ok(out)
}

/// The section on differencing flags: answers in the period whose cells
/// describe a population that differs from an earlier answer's by fewer than
/// k persons, with both queries' SQL (the earlier one looked up in the whole
/// log, by project and query id).
fn near_identical_populations(period: &[&AuditRecord], all: &[&AuditRecord]) -> String {
    let mut out = String::from("\n== Near-identical populations ==\n");
    // (record, earlier query id) → person counts (now, earlier) of the flagged cells.
    let mut pairs: BTreeMap<(u64, &str), Vec<(u64, u64)>> = BTreeMap::new();
    let mut flagged: BTreeMap<u64, &AuditRecord> = BTreeMap::new();
    for r in period {
        for f in &r.differencing {
            pairs.entry((r.seq, f.earlier_query_id.as_str())).or_default().push((f.persons, f.earlier_persons));
            flagged.insert(r.seq, r);
        }
    }
    if pairs.is_empty() {
        out.push_str("No answers flagged in the period.\n");
        return out;
    }
    out.push_str(
        "Answers with cells whose persons differ from an earlier answer's by fewer than the project's \
         threshold (not refused; read both queries: docs/disclosure.md, \"Differencing flags\").\n",
    );
    let earlier_sql = |project: &str, query_id: &str| {
        all.iter()
            .find(|r| r.project == project && r.query_id == query_id && r.decision == Decision::Accepted)
            .map_or_else(|| "(not in this log)".to_owned(), |r| one_line(&r.sql, SQL_WIDTH))
    };
    let mut table = Table::new();
    table.set_header(vec![
        "seq",
        "time (UTC)",
        "identity",
        "project",
        "query",
        "earlier query",
        "cells",
        "persons (now / earlier)",
        "SQL",
        "earlier SQL",
    ]);
    for ((seq, earlier), counts) in &pairs {
        let r = flagged[seq];
        let mut persons: Vec<String> = counts.iter().take(3).map(|(n, e)| format!("{n} / {e}")).collect();
        if counts.len() > 3 {
            persons.push("…".to_owned());
        }
        table.add_row(vec![
            right(*seq),
            Cell::new(short_time(&r.time)),
            Cell::new(&r.identity),
            Cell::new(&r.project),
            Cell::new(&r.query_id),
            Cell::new(earlier),
            right(counts.len() as u64),
            Cell::new(persons.join(", ")),
            Cell::new(one_line(&r.sql, SQL_WIDTH)),
            Cell::new(earlier_sql(&r.project, earlier)),
        ]);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    out
}

fn read(file: &Path) -> Result<AuditContents, String> {
    audit::read_all(file).map_err(|e| e.to_string())
}

fn integrity_warning(problem: &dyn std::fmt::Display) -> String {
    format!(
        "WARNING: the log does not verify; only the records before the problem are shown: {problem}. \
         Run `samkor audit verify`.\n"
    )
}

fn right(n: u64) -> Cell {
    Cell::new(n).set_alignment(CellAlignment::Right)
}

/// RFC 3339, or a date meaning midnight UTC at its start (or, with `end_of_day`, at its end).
fn parse_time(flag: &str, s: &str, end_of_day: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) => {
            let d = if end_of_day { d.succ_opt().unwrap_or(d) } else { d };
            Ok(d.and_time(chrono::NaiveTime::MIN).and_utc())
        }
        Err(_) => Err(format!("{flag} {s:?}: expected an RFC 3339 time (2025-03-01T09:00:00Z) or a date (2025-03-01)")),
    }
}

fn record_time(r: &AuditRecord) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&r.time).ok().map(|t| t.with_timezone(&Utc))
}

/// A record whose time does not parse is kept: never hide records from a review.
fn is_since(r: &AuditRecord, since: Option<&DateTime<Utc>>) -> bool {
    match (since, record_time(r)) {
        (Some(since), Some(t)) => t >= *since,
        _ => true,
    }
}

fn short_time(time: &str) -> String {
    match DateTime::parse_from_rfc3339(time) {
        Ok(t) => t.with_timezone(&Utc).format("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => time.to_owned(),
    }
}

/// Whitespace collapsed to single spaces, cut to `width` characters with `…`.
fn one_line(sql: &str, width: usize) -> String {
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= width {
        return flat;
    }
    let mut cut: String = flat.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use samkor_policies::audit::{AuditEntry, AuditLog};
    use samkor_policies::differencing::Flag;

    fn sample_log(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&path, "coordinator").expect("open");
        let anna = "CN=Anna Analytiker";
        let bo = "CN=Bo Biostatistiker";
        log.append(
            AuditEntry::accepted(
                anna,
                "q1",
                "SELECT kommun,\n   count(*)\nFROM lisa.person GROUP BY kommun ORDER BY kommun LIMIT 100",
            )
            .project("P-1")
            .registers(["lisa"])
            .released(290, 580, 4),
        )
        .expect("append");
        log.append(
            AuditEntry::refused(anna, "q2", "SELECT * FROM par.vtf", "approval.column", "column not approved")
                .project("P-1"),
        )
        .expect("append");
        log.append(
            AuditEntry::refused(bo, "q3", "SELECT count(*) FROM dors.dodsorsak", "approval.member", "not a member")
                .project("P-2"),
        )
        .expect("append");
        log.append(AuditEntry::accepted(bo, "q4", "SELECT 1").registers(["par", "lisa"]).released(1, 1, 0))
            .expect("append");
        path
    }

    #[test]
    fn verify_summarises_or_names_the_bad_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sample_log(dir.path());
        let ok = verify(&path).expect("intact");
        assert!(ok.contains(": 4 records, chain intact, last hash "), "{ok}");
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.windows(6).position(|w| w == b"par.vt").expect("sql of record 2");
        bytes[at] = b'q';
        std::fs::write(&path, bytes).expect("tamper");
        let err = verify(&path).expect_err("tampered");
        assert!(err.ends_with("record 2 (line 2): hash does not match its contents (the record was altered)"), "{err}");
        assert!(verify(&dir.path().join("missing.jsonl")).is_err());
    }

    #[test]
    fn show_filters_and_shortens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sample_log(dir.path());
        let all = show(&path, None, None).expect("show");
        assert!(all.starts_with(&format!("audit log {}: 4 of 4 records\n", path.display())), "{all}");
        assert!(all.contains("SELECT kommun, count(*) FROM lisa.person GROUP BY kommun OR…"), "{all}");
        let p1 = show(&path, Some("P-1"), Some("2000-01-01")).expect("show");
        assert!(p1.contains("2 of 4 records (project \"P-1\", since 2000-01-01 00:00:00 UTC)"), "{p1}");
        assert!(p1.contains("approval.column") && !p1.contains("approval.member"), "{p1}");
        let none = show(&path, None, Some("2999-01-01T00:00:00+01:00")).expect("show");
        assert!(none.contains("0 of 4 records"), "{none}");
        assert!(show(&path, None, Some("last tuesday")).is_err());
    }

    #[test]
    fn report_has_usage_refusals_and_expiring_approvals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sample_log(dir.path());
        let today = Utc::now().date_naive();
        let approvals = [
            ApprovalSummary {
                project: "P-1".into(),
                title: "Dödlighet efter stroke".into(),
                valid_until: today - chrono::Days::new(3),
            },
            ApprovalSummary {
                project: "P-2".into(),
                title: "Läkemedel och fall".into(),
                valid_until: today + chrono::Days::new(10),
            },
            ApprovalSummary {
                project: "P-3".into(),
                title: "Långt fram".into(),
                valid_until: today + chrono::Days::new(400),
            },
        ];
        let text = report_at(&path, Period::parse(Some("2000-01-01"), None).expect("period"), &approvals, today)
            .expect("report");
        for heading in [
            "== Queries per identity and project ==",
            "== Refusals by rule ==",
            "== Approvals expired or expiring within 30 days ==",
            "Log integrity: chain intact",
        ] {
            assert!(text.contains(heading), "{heading} missing in\n{text}");
        }
        let row = text.lines().find(|l| l.contains("CN=Anna Analytiker") && l.contains("P-1")).expect("anna row");
        let cells: Vec<&str> = row.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(cells, ["CN=Anna Analytiker", "P-1", "1", "1", "0", "290", "580", "4", "lisa"]);
        let direct = text.lines().find(|l| l.contains("(direct access)")).expect("direct access row");
        assert!(direct.contains("lisa, par"), "{direct}");
        assert!(text.lines().any(|l| l.contains("approval.member") && l.contains("CN=Bo Biostatistiker")), "{text}");
        assert!(text.contains("expired 3 days ago") && text.contains("expires in 10 days"), "{text}");
        assert!(!text.contains("P-3"), "{text}");
        let later =
            report_at(&path, Period::parse(Some("2999-01-01"), None).expect("period"), &[], today).expect("report");
        assert!(later.contains("No queries in the period.") && later.contains("None."), "{later}");
    }

    #[test]
    fn report_lists_near_identical_populations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sample_log(dir.path());
        let today = Utc::now().date_naive();
        let quiet =
            report_at(&path, Period::parse(Some("2000-01-01"), None).expect("period"), &[], today).expect("report");
        assert!(quiet.contains("== Near-identical populations ==\nNo answers flagged in the period.\n"), "{quiet}");

        let log = AuditLog::open(&path, "coordinator").expect("reopen");
        let flag =
            |cell, persons, earlier_persons| Flag { cell, persons, earlier_query_id: "q1".into(), earlier_persons };
        log.append(
            AuditEntry::accepted(
                "CN=Anna Analytiker",
                "q5",
                "SELECT kommun, avg(inkomst) FROM lisa.person WHERE id <> 7 GROUP BY kommun",
            )
            .project("P-1")
            .registers(["lisa"])
            .released(290, 580, 4)
            .differencing(vec![flag(3, 39, 40), flag(8, 120, 121)]),
        )
        .expect("append");
        drop(log);
        let text =
            report_at(&path, Period::parse(Some("2000-01-01"), None).expect("period"), &[], today).expect("report");
        let section = text.split("== Near-identical populations ==").nth(1).expect("section");
        let row = section.lines().find(|l| l.contains("q5")).expect("flagged answer row");
        let cells: Vec<&str> = row.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(cells[0], "5");
        assert_eq!(&cells[2..8], ["CN=Anna Analytiker", "P-1", "q5", "q1", "2", "39 / 40, 120 / 121"]);
        assert!(cells[8].starts_with("SELECT kommun, avg(inkomst) FROM lisa.person"), "{row}");
        assert!(cells[9].starts_with("SELECT kommun, count(*) FROM lisa.person"), "{row}");
        assert!(section.contains("not refused"), "{section}");
        // Outside the period: not listed.
        let later =
            report_at(&path, Period::parse(Some("2999-01-01"), None).expect("period"), &[], today).expect("report");
        assert!(later.contains("No answers flagged in the period."), "{later}");
    }

    #[test]
    fn report_covers_the_whole_log_unless_given_a_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sample_log(dir.path());
        let whole = report(&path, None, None, &[]).expect("report without a period");
        let header = whole.lines().nth(1).expect("period line");
        assert!(header.starts_with("Period: the whole log (4 of 4 records, "), "{whole}");
        let today = Utc::now().date_naive();
        let until = report(&path, None, Some(&today.to_string()), &[]).expect("report");
        assert!(until.lines().nth(1).expect("period").starts_with("Period: before "), "{until}");
        assert!(until.contains("(4 of 4 records"), "--until a date includes that day: {until}");
        let before = report(&path, Some("2000-01-01"), Some("2000-06-01T00:00:00Z"), &[]).expect("report");
        assert!(
            before.contains("Period: from 2000-01-01 00:00:00 UTC to before 2000-06-01 00:00:00 UTC (0 of 4 records)"),
            "{before}"
        );
        let empty = report(&path, Some("2025-03-02"), Some("2025-03-01"), &[]).expect_err("until before since");
        assert!(empty.contains("--until") && empty.contains("not after --since"), "{empty}");
        let bad = report(&path, None, Some("yesterday"), &[]).expect_err("bad time");
        assert!(bad.starts_with("--until \"yesterday\": expected"), "{bad}");
    }

    #[test]
    fn one_line_collapses_and_cuts_on_characters() {
        assert_eq!(one_line("SELECT  a,\n\tb", 60), "SELECT a, b");
        assert_eq!(one_line("åäöåäöåäö", 5), "åäöå…");
    }
}
