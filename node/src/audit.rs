//! The node's audit trail: every sub-query, served, refused or failed, in the
//! node's own hash-chained log ([`samkor_policies::audit::AuditLog`], the same
//! format as the coordinator's, `docs/audit.md`).
//!
//! ```text
//!   do_get ─▶ refused / failed ──────────▶ one record (refused | failed, rule, reason)
//!          └▶ admitted and planned ──────▶ record 1: accepted (columns read), on disk
//!                │                          before the first batch is sent
//!                ▼
//!             AuditedStream ─ ends ──────▶ record 2: rule node.stream_end, rows and
//!                                          cells released (accepted: completed;
//!                                          failed: failed or closed by the caller)
//! ```
//!
//! Record 1 is durable before any row leaves. Record 2 is written after the
//! rows have left, on a blocking thread: the caller does not wait for its
//! `fdatasync` (0.1–4 ms measured on this virtual disk, depending on other
//! writes) before it sees the end of the stream, and no runtime thread
//! blocks on the disk. Other records may come between a sub-query's two
//! records; they are matched by `query_id`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::record_batch::RecordBatch;
use futures::Stream;
use samkor_policies::audit::{AuditEntry, AuditError, AuditLog, Decision, RULE_STREAM_END};
use tonic::Status;

/// The decision of one sub-query, before the first record is written.
#[derive(Debug, Clone)]
pub struct SubQueryRecord {
    entry: AuditEntry,
}

impl SubQueryRecord {
    /// A record of `caller`'s sub-query `query_id` with `sql`, on this node's `register`.
    pub fn new(caller: &str, query_id: &str, sql: &str, register: &str) -> Self {
        let entry = AuditEntry::new(Decision::Accepted, caller, query_id, sql).registers([register]);
        SubQueryRecord { entry }
    }

    /// The project as the node served it (`direct:<unit>` for direct access).
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.entry.project = project.into();
        self
    }

    /// Columns read, `register.table.column`.
    pub fn columns(mut self, columns: Vec<String>) -> Self {
        self.entry.columns = columns;
        self
    }

    /// A refusal by `rule`.
    pub fn refused(mut self, rule: &str, reason: impl Into<String>) -> AuditEntry {
        self.entry.decision = Decision::Refused;
        self.entry.rule = rule.to_owned();
        self.entry.reason = reason.into();
        self.entry
    }

    /// A failure before anything was released.
    pub fn failed(mut self, reason: impl Into<String>) -> AuditEntry {
        self.entry.decision = Decision::Failed;
        self.entry.reason = reason.into();
        self.entry
    }

    /// The admission, written before the stream is answered.
    pub fn admitted(&self) -> AuditEntry {
        let mut entry = self.entry.clone();
        entry.reason = "sub-query admitted; the rows released are recorded when its stream ends".into();
        entry
    }

    fn ended(&self, decision: Decision, rows: u64, cells: u64, reason: String) -> AuditEntry {
        let mut entry = self.entry.clone().released(rows, cells, 0).rule(RULE_STREAM_END).reason(reason);
        entry.decision = decision;
        entry
    }
}

/// Appends `entry`; an error means the log cannot be trusted to hold the decision.
pub fn append(log: &AuditLog, entry: AuditEntry) -> Result<(), AuditError> {
    log.append(entry).map(|_| ()).inspect_err(|e| tracing::error!(error = %e, "node audit append failed"))
}

/// A sub-query's result stream that records, when it ends, how much it released.
pub struct AuditedStream<S> {
    inner: S,
    log: Arc<AuditLog>,
    record: SubQueryRecord,
    columns: u64,
    rows: u64,
    /// The end record is written (or there was nothing more to write).
    ended: bool,
}

impl<S> std::fmt::Debug for AuditedStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditedStream").field("rows", &self.rows).field("ended", &self.ended).finish_non_exhaustive()
    }
}

impl<S> AuditedStream<S> {
    /// Wraps `inner`, whose batches have `columns` columns.
    pub fn new(inner: S, log: Arc<AuditLog>, record: SubQueryRecord, columns: usize) -> Self {
        AuditedStream { inner, log, record, columns: columns as u64, rows: 0, ended: false }
    }

    fn end(&mut self, decision: Decision, reason: String) {
        if self.ended {
            return;
        }
        self.ended = true;
        let entry = self.record.ended(decision, self.rows, self.rows * self.columns, reason);
        // The rows have left already; a failure here is logged (and makes the log refuse further sub-queries).
        let log = self.log.clone();
        let write = move || {
            let _ = append(&log, entry);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(write)),
            Err(_) => write(),
        }
    }
}

impl<S> Stream for AuditedStream<S>
where
    S: Stream<Item = Result<RecordBatch, Status>> + Unpin,
{
    type Item = Result<RecordBatch, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let item = Pin::new(&mut self.inner).poll_next(cx);
        match &item {
            Poll::Ready(Some(Ok(batch))) => self.rows += batch.num_rows() as u64,
            Poll::Ready(Some(Err(status))) => {
                let reason = format!("failed after {} rows: {}", self.rows, status.message());
                self.end(Decision::Failed, reason);
            }
            Poll::Ready(None) => {
                let reason = format!("stream completed: {} rows", self.rows);
                self.end(Decision::Accepted, reason);
            }
            Poll::Pending => {}
        }
        item
    }
}

impl<S> Drop for AuditedStream<S> {
    fn drop(&mut self) {
        let reason = format!("the caller closed the stream after {} rows", self.rows);
        self.end(Decision::Failed, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int32Array;
    use futures::StreamExt;

    fn batch(rows: i32) -> RecordBatch {
        RecordBatch::try_from_iter([("n", Arc::new(Int32Array::from_iter_values(0..rows)) as _)]).expect("batch")
    }

    /// The log's records once it has `n` (end records are written in the background).
    async fn written(path: &std::path::Path, n: usize) -> Vec<samkor_policies::audit::AuditRecord> {
        for _ in 0..500 {
            let records = samkor_policies::audit::read_all(path).expect("read").records;
            if records.len() >= n {
                return records;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the log did not reach {n} records");
    }

    #[tokio::test]
    async fn records_the_rows_when_the_stream_ends_however_it_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open(&path, "node:hip").expect("log"));
        let record = SubQueryRecord::new("coordinator", "q1", "SELECT n FROM t", "hip").project("P-1");
        append(&log, record.admitted()).expect("admission");
        let complete = futures::stream::iter(vec![Ok(batch(3)), Ok(batch(4))]);
        let rows: Vec<_> = AuditedStream::new(complete, log.clone(), record.clone(), 1).collect().await;
        assert_eq!(rows.len(), 2);
        let failing = futures::stream::iter(vec![Ok(batch(2)), Err(Status::internal("node hip: sub-query q1 failed"))]);
        let _: Vec<_> = AuditedStream::new(failing, log.clone(), record.clone(), 1).collect().await;
        let mut closed =
            AuditedStream::new(futures::stream::iter(vec![Ok(batch(5)), Ok(batch(6))]), log.clone(), record, 1);
        closed.next().await.expect("one batch").expect("ok");
        drop(closed);
        let records = written(&path, 4).await;
        // The admission first; the end records in the order their streams' writes got the log.
        let mut ends: Vec<_> = records.iter().map(|r| (r.decision, r.rule.as_str(), r.rows_released)).collect();
        ends[1..].sort_by_key(|e| e.2);
        assert_eq!(
            ends,
            vec![
                (Decision::Accepted, "", 0),
                (Decision::Failed, RULE_STREAM_END, 2),
                (Decision::Failed, RULE_STREAM_END, 5),
                (Decision::Accepted, RULE_STREAM_END, 7),
            ]
        );
        let closed = records.iter().find(|r| r.rows_released == 5).expect("the closed stream's record");
        assert!(closed.reason.contains("closed the stream after 5 rows"), "{}", closed.reason);
        samkor_policies::audit::verify(&path).expect("chain intact");
    }
}
