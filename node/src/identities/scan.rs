//! A Parquet scan that reads row numbers instead of the identity column.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::parquet::arrow::RowNumber;
use datafusion::physical_plan::ExecutionPlan;

use super::{Identities, IdentityCache};
use crate::counting::RecordKeyer;
use crate::optout::OptOutSet;

/// The partition value that numbers a scan's files.
const FILE_COLUMN: &str = "__samkor_file";
/// Parquet's virtual column: a row's number within its file.
const ROW_COLUMN: &str = "__samkor_row_in_file";

/// Where a scan's identity numbers come from instead of its decoder.
#[derive(Debug)]
pub struct FromCache {
    /// The scan's files, in the order of their partition value.
    files: Vec<Arc<Identities>>,
    /// The column of the scan's output that holds the file's number, where
    /// the identity number goes.
    at: usize,
    /// The last column of the scan's output: the row's number in its file.
    row: usize,
    /// Set where the plan uses `person` only through its record key: the
    /// keys, not the identity numbers, take the file's number's place.
    keyed: Option<RecordKeyer>,
    /// The batches as the decoder would have given them.
    restored: SchemaRef,
}

impl FromCache {
    /// Whether [`Self::restore`] gives record keys, not identity numbers.
    pub fn derives(&self) -> bool {
        self.keyed.is_some()
    }

    /// `batch` of the scan with the identity numbers (or their record keys)
    /// in place of the file's number and without the row numbers; and which
    /// of its rows' persons have not opted out of `opt_outs` (if it is not
    /// empty).
    pub fn restore(
        &self,
        batch: &RecordBatch,
        opt_outs: &Arc<OptOutSet>,
    ) -> Result<(RecordBatch, Option<BooleanArray>)> {
        let (files, rows) = (batch.column(self.at), batch.column(self.row));
        let identities = match &self.keyed {
            None => self.each_file(files, rows, |file, rows| file.gather(rows))?,
            Some(keyer) => self.each_file(files, rows, |file, rows| file.record_keys(rows, keyer))?,
        };
        let kept = if opt_outs.is_empty() {
            None
        } else {
            let kept = self.each_file(files, rows, |file, rows| Ok(Arc::new(file.kept(rows, opt_outs)?)))?;
            Some(kept.as_boolean().clone())
        };
        let mut columns: Vec<ArrayRef> = batch.columns()[..self.row].to_vec();
        columns[self.at] = identities;
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok((RecordBatch::try_new_with_options(self.restored.clone(), columns, &options)?, kept))
    }

    /// `per_file` over the rows of each file in a batch, concatenated.
    fn each_file(
        &self,
        files: &ArrayRef,
        rows: &ArrayRef,
        per_file: impl Fn(&Identities, &Int64Array) -> Result<ArrayRef>,
    ) -> Result<ArrayRef> {
        let wrong = || DataFusionError::Internal("a scan's file and row numbers have unexpected types".into());
        let files = files.as_primitive_opt::<UInt32Type>().ok_or_else(wrong)?;
        let rows = rows.as_primitive_opt::<Int64Type>().ok_or_else(wrong)?;
        if files.null_count() > 0 {
            return Err(wrong());
        }
        let file = |f: u32| self.files.get(f as usize).ok_or_else(wrong);
        let values = files.values();
        let Some(&first) = values.first() else { return per_file(file(0)?, rows) };
        if values.iter().all(|&f| f == first) {
            // A batch comes from one file.
            return per_file(file(first)?, rows);
        }
        let mut parts = Vec::new();
        let mut start = 0;
        for end in 1..=values.len() {
            if end == values.len() || values[end] != values[start] {
                parts.push(per_file(file(values[start])?, &rows.slice(start, end - start))?);
                start = end;
            }
        }
        Ok(concat(&parts.iter().map(|p| p.as_ref()).collect::<Vec<_>>())?)
    }
}

/// `listed`, the scan of `table`'s Parquet files with `projection` (of its
/// schema), rebuilt with the table's own file format to read each row's
/// number and file instead of `person_column` (at `at` of the projection), if
/// the cache holds the identity column of every file. With `keyed`, the
/// restored batches hold record keys where the identity numbers were.
#[allow(clippy::too_many_arguments)]
pub async fn without_identity_column(
    state: &dyn Session,
    table: &ListingTable,
    listed: &Arc<dyn ExecutionPlan>,
    cache: &IdentityCache,
    person_column: &str,
    projection: &[usize],
    at: usize,
    keyed: Option<RecordKeyer>,
) -> Result<Option<(Arc<dyn ExecutionPlan>, Arc<FromCache>)>> {
    let Some(scan) = listed.downcast_ref::<DataSourceExec>() else { return Ok(None) };
    let Some(config) = scan.data_source().downcast_ref::<FileScanConfig>() else { return Ok(None) };
    let (groups, metas) = numbered(&config.file_groups);
    let store = state.runtime_env().object_store(&config.object_store_url)?;
    let Some(files) = cache.columns(&store, &metas, person_column).await? else { return Ok(None) };

    let file_schema = table.schema();
    let format = &table.options().format;
    let fields = file_schema.fields().len();
    let table_schema = TableSchema::builder(file_schema)
        .with_table_partition_cols(vec![Arc::new(Field::new(FILE_COLUMN, DataType::UInt32, false))])
        .with_virtual_columns(vec![Arc::new(
            Field::new(ROW_COLUMN, DataType::Int64, false).with_extension_type(RowNumber),
        )])
        .build();
    let mut read: Vec<usize> = projection.to_vec();
    read[at] = fields;
    read.push(fields + 1);
    let config = FileScanConfigBuilder::new(config.object_store_url.clone(), format.file_source(table_schema))
        .with_file_groups(groups)
        .with_projection_indices(Some(read))?
        .build();
    let plan = format.create_physical_plan(state, config).await?;

    let out = plan.schema();
    let row = out.fields().len() - 1;
    let mut restored: Vec<Field> = out.fields()[..row].iter().map(|f| f.as_ref().clone()).collect();
    let person_type = if keyed.is_some() { DataType::Int64 } else { DataType::Utf8View };
    restored[at] = Field::new(person_column, person_type, true);
    let restored = Arc::new(Schema::new(restored));
    Ok(Some((plan, Arc::new(FromCache { files, at, row, keyed, restored }))))
}

/// The groups with each file numbered by a partition value, and the files in
/// that order (a file listed in two groups, as two ranges, has one number).
fn numbered(groups: &[FileGroup]) -> (Vec<FileGroup>, Vec<datafusion::object_store::ObjectMeta>) {
    let mut metas = Vec::new();
    let mut number: HashMap<datafusion::object_store::path::Path, u32> = HashMap::new();
    let groups = groups
        .iter()
        .map(|group| {
            let files = group
                .iter()
                .map(|file| {
                    let n = *number.entry(file.object_meta.location.clone()).or_insert_with(|| {
                        metas.push(file.object_meta.clone());
                        (metas.len() - 1) as u32
                    });
                    file.clone().with_partition_values(vec![ScalarValue::UInt32(Some(n))])
                })
                .collect();
            FileGroup::new(files)
        })
        .collect();
    (groups, metas)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int32Array, StringArray, UInt32Array};

    use super::*;

    fn file(first: u64) -> Arc<Identities> {
        let values = StringArray::from_iter_values((0..10).map(|i| format!("{:012}", first + i)));
        let mut views = Vec::new();
        assert!(Identities::of(&values, &mut views));
        Arc::new(Identities::new(views, None))
    }

    /// A filter above the scan may coalesce the rows of two files into one
    /// batch: each row still takes its own file's identity number.
    #[test]
    fn rows_of_several_files_in_one_batch_take_their_own_files_numbers() {
        let restored = Arc::new(Schema::new(vec![
            Field::new("pnr", DataType::Utf8View, true),
            Field::new("n", DataType::Int32, false),
        ]));
        let cache =
            FromCache { files: vec![file(194001010000), file(195001010000)], at: 0, row: 2, keyed: None, restored };
        let scanned = Arc::new(Schema::new(vec![
            Field::new(FILE_COLUMN, DataType::UInt32, false),
            Field::new("n", DataType::Int32, false),
            Field::new(ROW_COLUMN, DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            scanned,
            vec![
                Arc::new(UInt32Array::from(vec![0, 0, 1, 1, 0])),
                Arc::new(Int32Array::from(vec![1, 2, 3, 4, 5])),
                Arc::new(Int64Array::from(vec![1, 2, 0, 3, 9])),
            ],
        )
        .expect("batch");
        let opted: Arc<OptOutSet> = Arc::new([194001010002u64, 195001010003].into_iter().collect());
        let (restored, kept) = cache.restore(&batch, &opted).expect("restored");
        let numbers: Vec<&str> = restored.column(0).as_string_view().iter().map(Option::unwrap).collect();
        assert_eq!(numbers, ["194001010001", "194001010002", "195001010000", "195001010003", "194001010009"]);
        assert_eq!(
            restored.column(1).as_primitive::<datafusion::arrow::datatypes::Int32Type>().values(),
            &[1, 2, 3, 4, 5]
        );
        let kept: Vec<bool> = kept.expect("a list").iter().map(Option::unwrap).collect();
        assert_eq!(kept, [true, false, true, false, true]);
        let (_, none) = cache.restore(&batch, &Arc::default()).expect("restored");
        assert!(none.is_none(), "an empty list asks nothing");
    }
}
