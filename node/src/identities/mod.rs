//! The identity column of a node's Parquet files, kept in memory.
//!
//! Every row a scan passes up is checked against the opt-out list, and its
//! identity number becomes a pseudonym or a record key, so every scan reads
//! the identity column, even for a count by sex in one region. That column is
//! most of what such a scan decodes: twelve distinct digits a row, which
//! compress poorly (on a population of 1 M, its decompression alone was a
//! quarter of the one-region query's CPU).
//!
//! A node keeps each file's identity column as string views, 16 bytes a row
//! (an identity number of up to 12 bytes lies inside its view). A scan then
//! asks the Parquet reader for the row's number within its file (a virtual
//! column) and for the file's position among the scan's files (a partition
//! value), and [`Identities::gather`] builds the column the decoder would have
//! given from memory, before the opt-out check, exactly where the decoded
//! column was used ([`crate::table::PseudonymiseExec`]).
//!
//! * **Record keys.** A plan that uses `person` only through its record key
//!   ([`crate::counting`]) asks for the keys instead ([`Identities::record_keys`]):
//!   each row's key is computed the first time a scan asks for its row and
//!   kept beside the identity numbers (8 bytes a row, one pseudonym domain
//!   at a time), so a query repeated, or another query of the project over
//!   the same rows, takes its keys from memory.
//! * **Freshness.** An entry belongs to a file's location, size and time of
//!   change, as listed for the scan (the node lists its files for every
//!   query); a file whose size or time changed is read again before the scan
//!   uses it. That is the assumption DataFusion's cache of Parquet footers
//!   makes too. A row number beyond the entry fails the query.
//! * **Budget.** `identity_cache_mib` in the node's `[node]` section (256 by
//!   default, 0 turns the cache off); the least recently used files leave
//!   first. A scan whose files do not all fit, or a file whose identity
//!   numbers are not all text of at most 12 bytes, decodes the column as
//!   before.
//! * Not for CSV files, PostgreSQL tables or scans on a cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringArrayType, StringViewArray};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::DefaultParquetFileReaderFactory;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::StreamExt;

use crate::counting::RecordKeyer;
use crate::optout::OptOutSet;

mod scan;
pub use scan::{FromCache, without_identity_column};

/// Default budget of a node's cache, in MiB.
pub const DEFAULT_BUDGET_MIB: u64 = 256;

/// One file's identity column as string views, every value inline.
#[derive(Debug)]
pub struct Identities {
    views: ScalarBuffer<u128>,
    nulls: Option<NullBuffer>,
    /// Which rows' persons have not opted out, for the opt-out list it was
    /// computed with (the list's set is shared until the file changes).
    kept: Mutex<Option<(Arc<OptOutSet>, BooleanBuffer)>>,
    /// The record keys of the rows asked for so far, of one pseudonym domain.
    keys: Mutex<Option<Arc<KeyMemo>>>,
}

/// The record keys of a file's rows under one [`RecordKeyer`], each computed
/// the first time its row is asked for. 0 stands for "not yet": a key that
/// is 0 is computed again each time, which changes its cost, not its value.
#[derive(Debug)]
struct KeyMemo {
    keyer: RecordKeyer,
    keys: Box<[AtomicI64]>,
}

impl Identities {
    /// Views of `values` if every value is at most 12 bytes (inline in its view).
    fn of<'a, A: StringArrayType<'a>>(values: A, views: &mut Vec<u128>) -> bool {
        for row in 0..values.len() {
            let value = if values.is_null(row) { "" } else { values.value(row) };
            if value.len() > 12 {
                return false;
            }
            views.push(make_view(value.as_bytes(), 0, 0));
        }
        true
    }

    /// The bytes held for the file, its opt-out bits and record keys included.
    fn bytes(&self) -> usize {
        self.views.len() * 24 + self.nulls.as_ref().map_or(0, |n| n.buffer().len()) + self.views.len().div_ceil(8)
    }

    /// At least the bytes of a file of `rows` rows, nulls included.
    fn bytes_for(rows: usize) -> usize {
        rows.saturating_mul(24).saturating_add(2 * rows.div_ceil(8))
    }

    pub fn len(&self) -> usize {
        self.views.len()
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    fn new(views: Vec<u128>, nulls: Option<NullBuffer>) -> Identities {
        Identities { views: ScalarBuffer::from(views), nulls, kept: Mutex::default(), keys: Mutex::default() }
    }

    /// Whether the persons of the file's rows `rows` have not opted out of
    /// `opt_outs`: each row looked up once per version of the list.
    pub fn kept(&self, rows: &Int64Array, opt_outs: &Arc<OptOutSet>) -> Result<BooleanArray> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let bits = match &*kept {
            Some((list, bits)) if Arc::ptr_eq(list, opt_outs) => bits.clone(),
            _ => {
                let all = StringViewArray::try_new(self.views.clone(), Vec::new(), self.nulls.clone())?;
                let bits = crate::table::opt_out_mask(&all, opt_outs)?.values().clone();
                *kept = Some((opt_outs.clone(), bits.clone()));
                bits
            }
        };
        // Rows were checked against the file's length by `gather`.
        let of = |i: usize| usize::try_from(rows.values()[i]).is_ok_and(|r| r < bits.len() && bits.value(r));
        Ok(BooleanArray::new(BooleanBuffer::collect_bool(rows.len(), of), None))
    }

    /// `row` as an index of the file's rows, or the error of a file that changed.
    fn index(&self, row: i64) -> Result<usize> {
        usize::try_from(row).ok().filter(|&r| r < self.views.len()).ok_or_else(|| {
            DataFusionError::Execution(format!(
                "a data file changed while it was read (a row beyond its {} rows); run the query again",
                self.views.len()
            ))
        })
    }

    /// The nulls of the file's rows `rows` (checked by [`Self::index`]).
    fn nulls_of(&self, rows: &Int64Array) -> Option<NullBuffer> {
        let nulls = self.nulls.as_ref().map(|n| {
            NullBuffer::new(BooleanBuffer::collect_bool(rows.len(), |i| n.is_valid(rows.values()[i] as usize)))
        });
        NullBuffer::union(nulls.as_ref(), rows.nulls())
    }

    /// The identity numbers of the file's rows `rows`, in their order.
    pub fn gather(&self, rows: &Int64Array) -> Result<ArrayRef> {
        let mut views = Vec::with_capacity(rows.len());
        for &row in rows.values() {
            views.push(self.views[self.index(row)?]);
        }
        let nulls = self.nulls_of(rows);
        // SAFETY: every view was made by `make_view` from a `&str` of at most
        // 12 bytes (`Identities::of`: inline, no data buffer) and is copied
        // unchanged. `try_new` would check the UTF-8 of every value again in
        // every scan: 8.4 M rows of lmr took 10 % longer.
        Ok(Arc::new(unsafe { StringViewArray::new_unchecked(ScalarBuffer::from(views), Vec::new(), nulls) }))
    }

    /// The record keys of the file's rows `rows` under `keyer`, in their
    /// order: those computed before from memory, the others computed now
    /// (from the identity numbers held) and kept.
    pub fn record_keys(&self, rows: &Int64Array, keyer: &RecordKeyer) -> Result<ArrayRef> {
        let memo = self.memo(keyer);
        let mut keys = Vec::with_capacity(rows.len());
        // Positions in `rows` of valid rows without a key yet, and their rows.
        let (mut missing, mut at) = (Vec::new(), Vec::new());
        for (i, &row) in rows.values().iter().enumerate() {
            let r = self.index(row)?;
            let key = memo.keys[r].load(Ordering::Relaxed);
            if key == 0 && self.nulls.as_ref().is_none_or(|n| n.is_valid(r)) {
                missing.push(i);
                at.push(r);
            }
            keys.push(key);
        }
        if !missing.is_empty() {
            let views: Vec<u128> = at.iter().map(|&r| self.views[r]).collect();
            // SAFETY: views of `Identities::of`, inline and copied unchanged (see `gather`).
            let identities = unsafe { StringViewArray::new_unchecked(ScalarBuffer::from(views), Vec::new(), None) };
            let computed = keyer.keys(&identities)?;
            let computed = computed.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            for ((&i, &r), &key) in missing.iter().zip(&at).zip(computed.values()) {
                keys[i] = key;
                memo.keys[r].store(key, Ordering::Relaxed);
            }
        }
        Ok(Arc::new(Int64Array::new(ScalarBuffer::from(keys), self.nulls_of(rows))))
    }

    /// The memo of `keyer`'s keys; one of another domain is replaced.
    fn memo(&self, keyer: &RecordKeyer) -> Arc<KeyMemo> {
        let mut memo = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match &*memo {
            Some(held) if held.keyer.same(keyer) => held.clone(),
            _ => {
                let keys = (0..self.views.len()).map(|_| AtomicI64::new(0)).collect();
                let fresh = Arc::new(KeyMemo { keyer: keyer.clone(), keys });
                *memo = Some(fresh.clone());
                fresh
            }
        }
    }
}

/// What the cache holds for one column of one file.
#[derive(Debug)]
struct Entry {
    /// The file as listed when it was read (size and time of change).
    listed: ObjectMeta,
    /// `None`: the file's identity numbers cannot be held as inline views.
    identities: Option<Arc<Identities>>,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Held {
    /// By file and column (two tables may read other columns of one file).
    files: HashMap<(Path, String), Entry>,
    bytes: usize,
    clock: u64,
}

impl Held {
    /// The entry of `meta` if it is for the file as listed now.
    fn fresh(&mut self, meta: &ObjectMeta, column: &str) -> Option<&mut Entry> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.files.get_mut(&(meta.location.clone(), column.to_owned()))?;
        if entry.listed.size != meta.size || entry.listed.last_modified != meta.last_modified {
            return None;
        }
        entry.last_used = clock;
        Some(entry)
    }

    fn remove(&mut self, key: &(Path, String)) {
        if let Some(old) = self.files.remove(key) {
            self.bytes -= old.identities.map_or(0, |i| i.bytes());
        }
    }

    /// Makes room for `bytes` within `budget`, least recently used first.
    fn room(&mut self, bytes: usize, budget: usize) -> bool {
        if bytes > budget {
            return false;
        }
        while self.bytes + bytes > budget {
            let Some(oldest) = self
                .files
                .iter()
                .filter(|(_, e)| e.identities.is_some())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(p, _)| p.clone())
            else {
                return false;
            };
            self.remove(&oldest);
        }
        true
    }
}

/// The identity columns of a node's Parquet files, within a budget.
#[derive(Debug)]
pub struct IdentityCache {
    budget: usize,
    held: Mutex<Held>,
    /// One reader at a time: two scans that miss the same file read it once.
    reading: tokio::sync::Mutex<()>,
}

impl IdentityCache {
    pub fn new(budget_mib: u64) -> IdentityCache {
        IdentityCache {
            budget: usize::try_from(budget_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
            held: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.held().bytes
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The identity columns of `files` (as listed for a scan), read into the
    /// cache where missing; `None` if one of them cannot be held.
    pub async fn columns(
        &self,
        store: &Arc<dyn ObjectStore>,
        files: &[ObjectMeta],
        column: &str,
    ) -> Result<Option<Vec<Arc<Identities>>>> {
        if let Some(all) = self.held_now(files, column) {
            return Ok(all);
        }
        let _reading = self.reading.lock().await;
        let mut missing = Vec::new();
        let mut bytes = 0;
        for meta in files {
            let held = self.held().fresh(meta, column).map(|e| e.identities.as_ref().map(|i| i.bytes()));
            match held {
                Some(Some(held)) => bytes += held,
                Some(None) => return Ok(None),
                None => {
                    let opened = open(store, meta).await?;
                    bytes += Identities::bytes_for(rows(&opened));
                    missing.push((meta, opened));
                }
            }
        }
        if bytes > self.budget {
            // The scan's files do not fit together: decoded, not read twice.
            return Ok(None);
        }
        for (meta, opened) in missing {
            let identities = read(opened, meta, column).await?.map(Arc::new);
            // A file that changed while it was read is not kept: the scan
            // decodes it, and the next one reads it again.
            let now = store.head(&meta.location).await?;
            if now.size == meta.size && now.last_modified == meta.last_modified {
                self.insert(meta, column, identities);
            }
        }
        Ok(self.held_now(files, column).flatten())
    }

    /// `Some` if every file has a fresh entry: the columns, or `None` if one
    /// cannot be held.
    fn held_now(&self, files: &[ObjectMeta], column: &str) -> Option<Option<Vec<Arc<Identities>>>> {
        let mut held = self.held();
        let mut all = Vec::with_capacity(files.len());
        for meta in files {
            match &held.fresh(meta, column)?.identities {
                Some(identities) => all.push(identities.clone()),
                None => return Some(None),
            }
        }
        Some(Some(all))
    }

    fn insert(&self, meta: &ObjectMeta, column: &str, identities: Option<Arc<Identities>>) {
        let mut held = self.held();
        let key = (meta.location.clone(), column.to_owned());
        held.remove(&key);
        let bytes = identities.as_ref().map_or(0, |i| i.bytes());
        let identities = identities.filter(|_| held.room(bytes, self.budget));
        if identities.is_none() && bytes > 0 {
            // Did not fit: decoded in each scan; asked again when it changes.
            tracing::debug!(file = %meta.location, bytes, "identity column beyond the cache's budget");
        }
        held.bytes += identities.as_ref().map_or(0, |i| i.bytes());
        let clock = held.clock;
        held.files.insert(key, Entry { listed: meta.clone(), identities, last_used: clock });
    }
}

/// A Parquet file opened for reading: its footer is read.
type Opened = ParquetRecordBatchStreamBuilder<Box<dyn AsyncFileReader>>;

async fn open(store: &Arc<dyn ObjectStore>, meta: &ObjectMeta) -> Result<Opened> {
    let file = PartitionedFile::from(meta.clone());
    // (`AsyncFileReader` is `Send` itself.)
    let reader: Box<dyn AsyncFileReader> = DefaultParquetFileReaderFactory::new(store.clone()).create_reader(
        0,
        file,
        None,
        &ExecutionPlanMetricsSet::new(),
    )?;
    Ok(ParquetRecordBatchStreamBuilder::new(reader).await?)
}

fn rows(opened: &Opened) -> usize {
    usize::try_from(opened.metadata().file_metadata().num_rows()).unwrap_or(usize::MAX / 32)
}

/// Reads `column` of the Parquet file `meta`; `None` if a value is longer
/// than 12 bytes, or the column is not text.
async fn read(builder: Opened, meta: &ObjectMeta, column: &str) -> Result<Option<Identities>> {
    let rows = rows(&builder);
    let mask = ProjectionMask::columns(builder.parquet_schema(), [column]);
    let mut stream = builder.with_projection(mask).with_batch_size(64 * 1024).build()?;
    let mut views = Vec::with_capacity(rows);
    let mut nulls: Vec<bool> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let Some(values) = batch.columns().first() else { return Ok(None) };
        let inline = match values.data_type() {
            DataType::Utf8 => Identities::of(values.as_string::<i32>(), &mut views),
            DataType::LargeUtf8 => Identities::of(values.as_string::<i64>(), &mut views),
            DataType::Utf8View => Identities::of(values.as_string_view(), &mut views),
            _ => false,
        };
        if !inline {
            return Ok(None);
        }
        if values.null_count() > 0 || !nulls.is_empty() {
            nulls.resize(views.len() - values.len(), true);
            nulls.extend((0..values.len()).map(|i| values.is_valid(i)));
        }
    }
    if views.len() != rows {
        return Err(DataFusionError::Execution(format!(
            "{}: read {} identity numbers of {rows} rows",
            meta.location,
            views.len()
        )));
    }
    let nulls = (!nulls.is_empty()).then(|| NullBuffer::from(nulls));
    Ok(Some(Identities::new(views, nulls)))
}

#[cfg(test)]
mod tests;
