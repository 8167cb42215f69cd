//! A method's answer as one Arrow batch.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};

/// One cell of a method's answer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Text(Option<String>),
    Num(Option<f64>),
    Int(Option<i64>),
}

impl Value {
    pub(super) fn text(s: impl Into<String>) -> Value {
        Value::Text(Some(s.into()))
    }

    /// A number; NaN and ±∞ are not numbers a method releases.
    pub(super) fn num(x: Option<f64>) -> Value {
        Value::Num(x.filter(|x| x.is_finite()))
    }
}

/// A schema of nullable columns: `("unit", Utf8)`, … and the `withheld` column last.
pub(super) fn schema(columns: &[(&str, DataType)]) -> SchemaRef {
    let mut fields: Vec<Field> = columns.iter().map(|(n, t)| Field::new(*n, t.clone(), true)).collect();
    fields.push(Field::new(crate::disclosure::WITHHELD_COLUMN, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Builds the batch; each row holds one value per column before `withheld`,
/// then the withheld text.
pub(super) fn batch(schema: &SchemaRef, rows: Vec<(Vec<Value>, Option<String>)>) -> Result<RecordBatch> {
    let fields = schema.fields();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
    for (c, field) in fields.iter().enumerate().take(fields.len() - 1) {
        let cell = |r: &(Vec<Value>, Option<String>)| r.0.get(c).cloned();
        let array: ArrayRef = match field.data_type() {
            DataType::Utf8 => Arc::new(
                rows.iter()
                    .map(|r| match cell(r) {
                        Some(Value::Text(t)) => t,
                        _ => None,
                    })
                    .collect::<StringArray>(),
            ),
            DataType::Float64 => Arc::new(
                rows.iter()
                    .map(|r| match cell(r) {
                        Some(Value::Num(x)) => x,
                        Some(Value::Int(i)) => i.map(|i| i as f64),
                        _ => None,
                    })
                    .collect::<Float64Array>(),
            ),
            DataType::Int64 => Arc::new(
                rows.iter()
                    .map(|r| match cell(r) {
                        Some(Value::Int(i)) => i,
                        _ => None,
                    })
                    .collect::<Int64Array>(),
            ),
            other => return Err(DataFusionError::Internal(format!("a method's column of type {other}"))),
        };
        columns.push(array);
    }
    columns.push(Arc::new(rows.iter().map(|r| r.1.clone()).collect::<StringArray>()));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Orders rows by their first (text) column, rows without one last.
pub(super) fn sort_by_first(rows: &mut [(Vec<Value>, Option<String>)]) {
    rows.sort_by_cached_key(|r| match r.0.first() {
        Some(Value::Text(Some(s))) => (0, s.clone()),
        _ => (1, String::new()),
    });
}
