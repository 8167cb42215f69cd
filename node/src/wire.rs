//! What leaves the node has the types the catalogue declares: Parquet text
//! is read as string views inside the node (`table`), and a result column of
//! a view type (also inside a list or a struct) is cast back to `Utf8`
//! (`Binary`) before it is sent.

use std::sync::Arc;

use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

/// `data_type` with every view type replaced by its plain form.
fn without_views(data_type: &DataType) -> DataType {
    let field = |f: &Field| f.clone().with_data_type(without_views(f.data_type()));
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(Arc::new(field(f))),
        DataType::LargeList(f) => DataType::LargeList(Arc::new(field(f))),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(Arc::new(field(f)), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(|f| field(f)).collect()),
        DataType::Map(f, sorted) => DataType::Map(Arc::new(field(f)), *sorted),
        other => other.clone(),
    }
}

/// `stream` with its view-typed columns cast to their plain types; the
/// stream itself where it has none.
pub fn declared_types(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let plain: SchemaRef = Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_data_type(without_views(f.data_type())))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ));
    if plain == schema {
        return stream;
    }
    let target = plain.clone();
    let batches = stream.map(move |batch| -> Result<RecordBatch> {
        let batch = batch?;
        let columns = batch
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(target.clone(), columns)?)
    });
    Box::pin(RecordBatchStreamAdapter::new(plain, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringViewArray};
    use futures::TryStreamExt;

    #[tokio::test]
    async fn views_leave_as_plain_strings_and_other_columns_unchanged() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let region: ArrayRef = Arc::new(StringViewArray::from(vec![Some("Skåne"), None]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let batch = RecordBatch::try_new(schema.clone(), vec![region, n]).expect("batch");
        let stream: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter(vec![Ok(batch)])));
        let out = declared_types(stream);
        assert_eq!(out.schema().field(0).data_type(), &DataType::Utf8);
        let batches: Vec<RecordBatch> = out.try_collect().await.expect("batches");
        assert_eq!(batches[0].schema().field(0).data_type(), &DataType::Utf8);
        assert_eq!(batches[0].column(1).data_type(), &DataType::Int64);
        let nested = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8View, true)));
        assert_eq!(without_views(&nested), DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))));
    }
}
