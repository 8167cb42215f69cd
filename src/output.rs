//! Writing query results: an aligned table for people, CSV, JSON or Parquet for programs.

use std::io::Write;
use std::path::Path;

use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Output formats of `samkor query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

/// Why results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("cannot encode the result as {format}: {reason}")]
    Encode { format: &'static str, reason: String },
    #[error("parquet output needs --out FILE")]
    ParquetNeedsFile,
}

/// Renders batches as an aligned text table; NULL is shown as `NULL`.
pub fn table(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String, OutputError> {
    let mut table = comfy_table::Table::new();
    table.set_header(schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>());
    let options = FormatOptions::default().with_null("NULL");
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OutputError::Encode { format: "table", reason: e.to_string() })?;
        for row in 0..batch.num_rows() {
            let cells: Vec<comfy_table::Cell> = formatters
                .iter()
                .zip(batch.columns())
                .map(|(f, col)| {
                    let cell = comfy_table::Cell::new(f.value(row).to_string());
                    if col.data_type().is_numeric() { cell.set_alignment(comfy_table::CellAlignment::Right) } else { cell }
                })
                .collect();
            table.add_row(cells);
        }
    }
    Ok(table.to_string())
}

/// Writes batches in `format` to `out` (a file) or standard output.
pub fn write(format: Format, schema: &SchemaRef, batches: &[RecordBatch], out: Option<&Path>) -> Result<(), OutputError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| OutputError::Io { what: what.clone(), source }
    };
    let target = out.map_or("standard output".to_owned(), |p| p.display().to_string());
    let mut sink: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(io(&target))?)),
        None => Box::new(std::io::stdout().lock()),
    };
    match format {
        Format::Table => {
            writeln!(sink, "{}", table(schema, batches)?).map_err(io(&target))?;
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            writeln!(sink, "({rows} row{})", if rows == 1 { "" } else { "s" }).map_err(io(&target))?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut sink);
            for b in batches {
                w.write(b).map_err(|e| OutputError::Encode { format: "CSV", reason: e.to_string() })?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut sink);
            for b in batches {
                w.write(b).map_err(|e| OutputError::Encode { format: "JSON", reason: e.to_string() })?;
            }
            w.finish().map_err(|e| OutputError::Encode { format: "JSON", reason: e.to_string() })?;
            drop(w);
            writeln!(sink).map_err(io(&target))?;
        }
        Format::Parquet => {
            let Some(path) = out else { return Err(OutputError::ParquetNeedsFile) };
            drop(sink);
            let file = std::fs::File::create(path).map_err(io(&target))?;
            let encode = |e: parquet::errors::ParquetError| OutputError::Encode { format: "Parquet", reason: e.to_string() };
            let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).map_err(encode)?;
            for b in batches {
                w.write(b).map_err(encode)?;
            }
            w.close().map_err(encode)?;
            return Ok(());
        }
    }
    sink.flush().map_err(io(&target))
}
