//! Loads synthetic registers into a PostgreSQL database and points their
//! node configs at it (`samkor synth --postgres URL`).
//!
//! ```text
//!  OUT/<register>/node.toml ──▶ declared tables and columns
//!  OUT/<register>/<table>/*.parquet ──▶ COPY <register>.<table> FROM STDIN (FORMAT binary)
//!  OUT/<register>/postgres.conn  (the connection string, mode 0600)
//!  OUT/<register>/node.toml: format = "postgres", postgres = { relation, connection_file }
//! ```
//!
//! Each register gets a schema of its own name; tables are dropped and
//! recreated. The Parquet files stay, so the same federation can be served
//! from either.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int32Type, Int64Type};
use bytes::{BufMut, BytesMut};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use samkor_node::config::{ColumnType, FileFormat, NodeConfig};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// The file next to each node config holding the connection string.
pub const CONNECTION_FILE: &str = "postgres.conn";
/// Days from 1970-01-01 (Arrow) to 2000-01-01 (PostgreSQL).
const PG_EPOCH_DAYS: i32 = 10_957;

/// Why loading failed. Never quotes the connection string.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot connect to the PostgreSQL database given by --postgres: {0}")]
    Connect(String),
    #[error("{0}")]
    Config(#[from] samkor_node::config::ConfigError),
    #[error("table {register}.{table}: {reason}")]
    Database { register: String, table: String, reason: String },
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "table {register}.{table} is not read from Parquet files; load the registers straight after `samkor synth`"
    )]
    NotParquet { register: String, table: String },
}

/// Rows loaded into one table.
#[derive(Debug)]
pub struct Loaded {
    pub register: String,
    pub table: String,
    pub rows: u64,
}

fn pg_type(t: ColumnType) -> (Type, &'static str) {
    match t {
        ColumnType::Utf8 => (Type::TEXT, "text"),
        ColumnType::Int32 => (Type::INT4, "int4"),
        ColumnType::Int64 => (Type::INT8, "int8"),
        ColumnType::Float64 => (Type::FLOAT8, "float8"),
        ColumnType::Boolean => (Type::BOOL, "bool"),
        ColumnType::Date32 => (Type::DATE, "date"),
    }
}

/// One cell on its way into the database.
#[derive(Debug)]
enum Cell<'a> {
    Null,
    Text(&'a str),
    I32(i32),
    I64(i64),
    F64(f64),
    Bool(bool),
    Date(i32),
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Text(s) => s.to_sql(ty, out),
            Cell::I32(v) => v.to_sql(ty, out),
            Cell::I64(v) => v.to_sql(ty, out),
            Cell::F64(v) => v.to_sql(ty, out),
            Cell::Bool(v) => v.to_sql(ty, out),
            Cell::Date(d) => {
                out.put_i32(d - PG_EPOCH_DAYS);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn cell(column: &ArrayRef, t: ColumnType, row: usize) -> Cell<'_> {
    if column.is_null(row) {
        return Cell::Null;
    }
    match t {
        ColumnType::Utf8 => Cell::Text(column.as_string::<i32>().value(row)),
        ColumnType::Int32 => Cell::I32(column.as_primitive::<Int32Type>().value(row)),
        ColumnType::Int64 => Cell::I64(column.as_primitive::<Int64Type>().value(row)),
        ColumnType::Float64 => Cell::F64(column.as_primitive::<Float64Type>().value(row)),
        ColumnType::Boolean => Cell::Bool(column.as_boolean().value(row)),
        ColumnType::Date32 => Cell::Date(column.as_primitive::<Date32Type>().value(row)),
    }
}

/// Loads the tables of `registers` from the synth directory `dir` into the
/// database at `url` and rewrites their node configs to serve from it.
pub async fn load(dir: &Path, url: &str, registers: &[&str]) -> Result<Vec<Loaded>, LoadError> {
    let config: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| LoadError::Connect(e.to_string()))?;
    let (mut client, connection) =
        config.connect(tokio_postgres::NoTls).await.map_err(|e| LoadError::Connect(one_line(&e)))?;
    let connection = tokio::spawn(connection);
    let mut loaded = Vec::new();
    for register in registers {
        let node_toml = dir.join(register).join("node.toml");
        let node = NodeConfig::load(&node_toml)?;
        for table in &node.tables {
            let db = |e: tokio_postgres::Error| LoadError::Database {
                register: (*register).to_owned(),
                table: table.name.clone(),
                reason: one_line(&e),
            };
            if table.format != FileFormat::Parquet {
                return Err(LoadError::NotParquet { register: (*register).to_owned(), table: table.name.clone() });
            }
            let columns: Vec<String> =
                table.columns.iter().map(|c| format!("\"{}\" {}", c.name, pg_type(c.data_type).1)).collect();
            let names: Vec<String> = table.columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
            let relation = format!("\"{register}\".\"{}\"", table.name);
            let tx = client.transaction().await.map_err(db)?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{register}\"; DROP TABLE IF EXISTS {relation}; CREATE TABLE {relation} ({});",
                columns.join(", ")
            ))
            .await
            .map_err(db)?;
            let sink = tx
                .copy_in(&format!("COPY {relation} ({}) FROM STDIN (FORMAT binary)", names.join(", ")))
                .await
                .map_err(db)?;
            let types: Vec<Type> = table.columns.iter().map(|c| pg_type(c.data_type).0).collect();
            let writer = BinaryCopyInWriter::new(sink, &types);
            let mut writer: Pin<Box<BinaryCopyInWriter>> = Box::pin(writer);
            let mut files: Vec<PathBuf> = glob::glob(&table.path)
                .map_err(|e| LoadError::Read { path: table.path.clone().into(), reason: e.to_string() })?
                .filter_map(Result::ok)
                .collect();
            files.sort();
            for file in files {
                let read = |reason: String| LoadError::Read { path: file.clone(), reason };
                let f = std::fs::File::open(&file).map_err(|e| read(e.to_string()))?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(f)
                    .and_then(|b| b.build())
                    .map_err(|e| read(e.to_string()))?;
                for batch in reader {
                    let batch = batch.map_err(|e| read(e.to_string()))?;
                    let arrays: Vec<ArrayRef> = table
                        .columns
                        .iter()
                        .map(|c| {
                            let a =
                                batch.column_by_name(&c.name).ok_or_else(|| read(format!("no column {}", c.name)))?;
                            let want =
                                if c.data_type == ColumnType::Utf8 { DataType::Utf8 } else { c.data_type.arrow() };
                            arrow::compute::cast(a, &want).map_err(|e| read(e.to_string()))
                        })
                        .collect::<Result<_, _>>()?;
                    for row in 0..batch.num_rows() {
                        let cells: Vec<Cell<'_>> =
                            arrays.iter().zip(&table.columns).map(|(a, c)| cell(a, c.data_type, row)).collect();
                        writer.as_mut().write_raw(cells.iter()).await.map_err(db)?;
                    }
                }
            }
            let rows = writer.as_mut().finish().await.map_err(db)?;
            tx.batch_execute(&format!("ANALYZE {relation}")).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            loaded.push(Loaded { register: (*register).to_owned(), table: table.name.clone(), rows });
        }
        serve_from_postgres(dir, register, url)?;
    }
    drop(client);
    let _ = connection.await;
    Ok(loaded)
}

/// Points `register`'s node config at its schema in the database and writes
/// the connection string next to it, readable by its owner only.
pub fn serve_from_postgres(dir: &Path, register: &str, url: &str) -> Result<(), LoadError> {
    let reg_dir = dir.join(register);
    let conn = reg_dir.join(CONNECTION_FILE);
    write_private(&conn, url).map_err(|source| LoadError::Write { path: conn.clone(), source })?;
    let path = reg_dir.join("node.toml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| LoadError::Read { path: path.clone(), reason: e.to_string() })?;
    let node = NodeConfig::parse(&path, &text)?;
    let mut out = text;
    for table in &node.tables {
        let files = format!("format = \"parquet\"\npath = \"{}/*.parquet\"\n", table.name);
        let database = format!(
            "format = \"postgres\"\npostgres = {{ relation = \"{register}.{}\", connection_file = \"{CONNECTION_FILE}\" }}\n",
            table.name
        );
        out = out.replacen(&files, &database, 1);
    }
    // The node checks that statement on files only.
    let out =
        out.replace("# Checked by the node at start and whenever the files change.\none_row_per_person = true\n", "");
    std::fs::write(&path, out).map_err(|source| LoadError::Write { path: path.clone(), source })
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(f, "{text}")
}

fn one_line(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    };
    text.lines().next().unwrap_or_default().to_owned()
}
