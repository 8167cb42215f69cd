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

/// The disclosure summary of an answer, from its schema metadata.
fn disclosure(schema: &SchemaRef) -> Option<serde_json::Value> {
    schema.metadata().get(samkor_coordinator::disclosure::METADATA_KEY).and_then(|m| serde_json::from_str(m).ok())
}

/// Index of the per-row marker column of a disclosure-controlled aggregate answer.
fn marker(schema: &SchemaRef) -> Option<usize> {
    let summary = disclosure(schema)?;
    (summary["mode"] == "aggregate").then(|| schema.fields().len().checked_sub(1)).flatten()
}

/// Renders batches as an aligned text table; NULL is shown as `NULL`. In a
/// disclosure-controlled answer, withheld cells show as `..` (as in official
/// statistics) and the marker column is left out; [`footnote`] explains them.
pub fn table(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String, OutputError> {
    let marker = marker(schema);
    let shown = marker.unwrap_or(schema.fields().len());
    let mut table = comfy_table::Table::new();
    table.set_header(schema.fields().iter().take(shown).map(|f| f.name().clone()).collect::<Vec<_>>());
    let options = FormatOptions::default().with_null("NULL");
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OutputError::Encode { format: "table", reason: e.to_string() })?;
        for row in 0..batch.num_rows() {
            let withheld: Vec<String> = match marker {
                Some(m) if !batch.column(m).is_null(row) => {
                    formatters[m].value(row).to_string().split(',').map(str::to_owned).collect()
                }
                _ => Vec::new(),
            };
            let merged = withheld.first().is_some_and(|w| w.starts_with('*'));
            let cells: Vec<comfy_table::Cell> = formatters
                .iter()
                .zip(batch.columns())
                .zip(schema.fields())
                .take(shown)
                .map(|((f, col), field)| {
                    let text = if merged || withheld.iter().any(|w| w == field.name()) {
                        "..".to_owned()
                    } else {
                        f.value(row).to_string()
                    };
                    let cell = comfy_table::Cell::new(text);
                    if col.data_type().is_numeric() {
                        cell.set_alignment(comfy_table::CellAlignment::Right)
                    } else {
                        cell
                    }
                })
                .collect();
            table.add_row(cells);
        }
    }
    Ok(table.to_string())
}

/// What disclosure control did to an answer, in a sentence or two; `None`
/// for answers without disclosure metadata.
pub fn footnote(schema: &SchemaRef) -> Option<String> {
    let s = disclosure(schema)?;
    match s["mode"].as_str()? {
        "aggregate" => {}
        "pseudonymised_microdata" => {
            return Some("pseudonymised microdata: rows keyed by the project pseudonym".into());
        }
        "method" => {
            let k = s["min_cell_persons"].as_u64().unwrap_or(0);
            let rows: Vec<String> = s["withheld"]
                .as_object()
                .map(|m| m.iter().map(|(r, n)| format!("{n} by {r}")).collect())
                .unwrap_or_default();
            let withheld = if rows.is_empty() {
                "none withheld".to_owned()
            } else {
                format!("withheld rows: {}", rows.join(", "))
            };
            return Some(format!(
                "statistical method: computed from released aggregates (at least {k} persons per cell) and the method's rules (docs/statistics.md); {withheld}"
            ));
        }
        _ => return None,
    }
    let k = s["min_cell_persons"].as_u64().unwrap_or(0);
    let mut out = format!("disclosure control: cells count distinct persons; at least {k} per released cell");
    let reasons: Vec<String> =
        s["withheld"].as_object().map(|m| m.iter().map(|(r, n)| format!("{n} {r}")).collect()).unwrap_or_default();
    if reasons.is_empty() {
        out.push_str("; nothing withheld");
    } else {
        out.push_str(&format!("; .. = withheld ({})", reasons.join(", ")));
    }
    if s["groups_withheld"].as_u64().unwrap_or(0) > 0 {
        out.push_str("; groups below the threshold whose keys would identify are merged into the last row");
    }
    match s["round_counts_to"].as_u64() {
        Some(r) if r > 1 => out.push_str(&format!("; counts rounded to multiples of {r}")),
        _ => {}
    }
    Some(out)
}

/// Writes batches in `format` to `out` (a file) or standard output.
pub fn write(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    out: Option<&Path>,
) -> Result<(), OutputError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| OutputError::Io { what: what.clone(), source }
    };
    let target = out.map_or("standard output".to_owned(), |p| p.display().to_string());
    let mut sink: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(io(&target))?)),
        None => Box::new(std::io::stdout().lock()),
    };
    if format != Format::Table
        && let Some(note) = footnote(schema)
    {
        // Files carry the marker column (and Parquet the metadata); say it once on the terminal.
        eprintln!("{note}");
    }
    match format {
        Format::Table => {
            writeln!(sink, "{}", table(schema, batches)?).map_err(io(&target))?;
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            writeln!(sink, "({rows} row{})", if rows == 1 { "" } else { "s" }).map_err(io(&target))?;
            if let Some(note) = footnote(schema) {
                writeln!(sink, "{note}").map_err(io(&target))?;
            }
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
            let encode =
                |e: parquet::errors::ParquetError| OutputError::Encode { format: "Parquet", reason: e.to_string() };
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
