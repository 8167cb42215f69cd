//! A table or view in the holder's PostgreSQL database as a node source.
//!
//! ```text
//!   DataFusion operators of the sub-query (filter, aggregate, …)     node
//!        │
//!   PseudonymiseExec (crate::table): opt-outs dropped, pnr → pseudonym node
//!        │
//!   PostgresScanExec: one connection per scan, rows → Arrow batches   node
//!        │  SELECT "pnr", "region", … FROM "hip"."operations"
//!        │  WHERE ("op_date" >= $1::date) AND …                       (parameters, no literals)
//!   PostgreSQL                                                        holder's database
//! ```
//!
//! Only projections and row filters run in the database: comparisons, `IN`,
//! `BETWEEN`, `IS [NOT] NULL` and `AND`/`OR`/`NOT` of them, on columns other
//! than the identity number, with the same meaning as in DataFusion (string
//! ordering under `COLLATE "C"`, i.e. byte order, as Arrow compares). They
//! are *inexact*: DataFusion applies them again above the pseudonymiser, so a
//! filter the database cannot take is simply not sent. No aggregate, join or
//! limit is sent: the database would count opted-out persons, whom only the
//! node removes (it never sends the opt-out list, or any identity number, to
//! the database).
//!
//! The connection string comes from an environment variable or a file and is
//! never shown: errors say where it came from, not what it is.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    RecordBatchOptions, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{Between, BinaryExpr, Cast, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::{StreamExt, TryStreamExt};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Row, RowStream};

use super::postgres_tls::{Link, SslMode, TlsFailure, TlsSetupError, take_sslmode, tls_failure};
use crate::config::{ColumnType, PostgresSection, TableConfig};

/// Days from 1970-01-01 (Arrow) to 2000-01-01 (PostgreSQL).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Longest `IN` list sent to the database; longer lists are applied at the node.
const MAX_IN_LIST: usize = 1_000;

/// The node and table an error is about.
#[derive(Debug, Clone)]
pub struct At {
    pub node: String,
    pub table: String,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}, table {}", self.node, self.table)
    }
}

/// Why a PostgreSQL table could not be opened or read. One line naming the
/// node, the table and the problem; never the connection string, never a
/// value of the table.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "{at}: the database connection string is to come from the environment variable {var}, which is not set; set it where the node starts"
    )]
    NoConnectionEnv { at: At, var: String },
    #[error("{at}: cannot read the database connection string from the file {path}: {reason}")]
    ConnectionFile { at: At, path: String, reason: String },
    #[error("{at}: the database connection string from {origin} is not valid: {reason}")]
    ConnectionString { at: At, origin: String, reason: String },
    #[error(
        "{at}: cannot connect to the PostgreSQL database given by {origin}: {reason}; is the database running and reachable from the node?"
    )]
    Connect { at: At, origin: String, reason: String },
    #[error(
        "{at}: the connection string from {origin} asks for sslmode={mode}, which needs `ca_file` (the CA that signed the database server's certificate) in the table's postgres section"
    )]
    NoCaFile { at: At, origin: String, mode: SslMode },
    #[error(
        "{at}: `ca_file` is set but the connection string from {origin} does not ask for TLS; add sslmode=verify-full to it (or remove `ca_file`)"
    )]
    CaWithoutTls { at: At, origin: String },
    #[error(
        "{at}: cannot use the database CA file {path}: {reason}; give the PEM file of the CA that signed the database server's certificate"
    )]
    CaFile { at: At, path: String, reason: String },
    #[error(
        "{at}: the PostgreSQL server given by {origin} does not offer TLS, but the connection string asks for sslmode={mode}; turn on `ssl` in the server's postgresql.conf (with its certificate and key)"
    )]
    ServerWithoutTls { at: At, origin: String, mode: SslMode },
    #[error(
        "{at}: the certificate of the PostgreSQL server given by {origin} is not trusted: {reason}; check that `ca_file` is the CA that signed the server's certificate and that the host in the connection string is named in it"
    )]
    Untrusted { at: At, origin: String, reason: String },
    #[error("{at}: the TLS handshake with the PostgreSQL server given by {origin} failed: {reason}")]
    Handshake { at: At, origin: String, reason: String },
    #[error(
        "{at}: the relation {relation} does not exist in the PostgreSQL database given by {origin}; create it or correct `relation`"
    )]
    NoRelation { at: At, relation: String, origin: String },
    #[error("{at}: the database user may not read {relation} ({reason}); grant it SELECT")]
    NoPrivilege { at: At, relation: String, reason: String },
    #[error("{at}: column {column} is declared in the config but missing from {relation} in the PostgreSQL database")]
    MissingColumn { at: At, column: String, relation: String },
    #[error(
        "{at}: column {column} is declared as {declared} but {relation}.{column} in the PostgreSQL database is {found}"
    )]
    TypeMismatch { at: At, column: String, declared: &'static str, relation: String, found: String },
    #[error(
        "{at}: the connection to the PostgreSQL database was lost during the sub-query ({reason}); nothing more was served"
    )]
    Lost { at: At, reason: String },
    #[error("{at}: the PostgreSQL database failed the scan ({reason})")]
    Database { at: At, reason: String },
}

/// How one database column is read into its declared Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Text,
    I16,
    I32,
    I64,
    F32,
    F64,
    Bool,
    Date,
}

impl Reader {
    /// The reader for a declared type and the type found in the database, if they fit.
    fn for_types(declared: ColumnType, found: &Type) -> Option<Reader> {
        use ColumnType as C;
        Some(match (declared, found) {
            (C::Utf8, t) if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(t) => Reader::Text,
            (C::Int32 | C::Int64, t) if *t == Type::INT2 => Reader::I16,
            (C::Int32 | C::Int64, t) if *t == Type::INT4 => Reader::I32,
            (C::Int64, t) if *t == Type::INT8 => Reader::I64,
            (C::Float64, t) if *t == Type::FLOAT4 => Reader::F32,
            (C::Float64, t) if *t == Type::FLOAT8 => Reader::F64,
            (C::Boolean, t) if *t == Type::BOOL => Reader::Bool,
            (C::Date32, t) if *t == Type::DATE => Reader::Date,
            _ => return None,
        })
    }
}

/// A DATE read from the database, as Arrow days since 1970-01-01.
#[derive(Debug, Clone, Copy)]
struct PgDate(i32);

impl<'a> FromSql<'a> for PgDate {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let days = i32::from_be_bytes(raw.try_into().map_err(|_| "a date is 4 bytes")?);
        // ±infinity and dates beyond Arrow's range do not fit a Date32.
        days.checked_add(PG_EPOCH_DAYS).map(PgDate).ok_or_else(|| "date out of range".into())
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
}

/// A query parameter: a literal of a pushed filter. The SQL casts every
/// parameter to its type (`$1::date`), so the database never guesses.
#[derive(Debug, Clone)]
enum Param {
    Text(String),
    I32(i32),
    I64(i64),
    F64(f64),
    Bool(bool),
    Date(i32),
}

impl Param {
    fn pg_type(&self) -> &'static str {
        match self {
            Param::Text(_) => "text",
            Param::I32(_) => "int4",
            Param::I64(_) => "int8",
            Param::F64(_) => "float8",
            Param::Bool(_) => "bool",
            Param::Date(_) => "date",
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Param::Text(_) => Kind::Text,
            Param::I32(_) | Param::I64(_) | Param::F64(_) => Kind::Number,
            Param::Bool(_) => Kind::Bool,
            Param::Date(_) => Kind::Date,
        }
    }
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Text(s) => s.as_str().to_sql(ty, out),
            Param::I32(v) => v.to_sql(ty, out),
            Param::I64(v) => v.to_sql(ty, out),
            Param::F64(v) => v.to_sql(ty, out),
            Param::Bool(v) => v.to_sql(ty, out),
            Param::Date(days) => {
                out.put_i32(days.checked_sub(PG_EPOCH_DAYS).ok_or("date out of range")?);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        // The statement casts each parameter to the type of its value.
        true
    }

    to_sql_checked!();
}

/// What a pushed comparison compares: both sides must be of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Bool,
    Date,
}

fn kind_of(t: ColumnType) -> Kind {
    match t {
        ColumnType::Utf8 => Kind::Text,
        ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64 => Kind::Number,
        ColumnType::Boolean => Kind::Bool,
        ColumnType::Date32 => Kind::Date,
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Renders pushable filters as PostgreSQL SQL with numbered parameters.
struct Render<'a> {
    columns: &'a [(String, ColumnType)],
    params: Vec<Param>,
}

impl Render<'_> {
    /// `filter` as SQL, or `None` (and no parameter kept) if it cannot be sent.
    fn filter(&mut self, filter: &Expr) -> Option<String> {
        let saved = self.params.len();
        let sql = self.expr(filter);
        if sql.is_none() {
            self.params.truncate(saved);
        }
        sql
    }

    fn expr(&mut self, e: &Expr) -> Option<String> {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And | Operator::Or => {
                    let word = if *op == Operator::And { "AND" } else { "OR" };
                    Some(format!("({} {word} {})", self.expr(left)?, self.expr(right)?))
                }
                Operator::Eq | Operator::NotEq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                    let ordering = !matches!(op, Operator::Eq | Operator::NotEq);
                    let (l, lk) = self.operand(left, ordering)?;
                    let (r, rk) = self.operand(right, ordering)?;
                    (lk == rk).then(|| format!("({l} {op} {r})"))
                }
                _ => None,
            },
            Expr::Not(inner) => Some(format!("(NOT {})", self.expr(inner)?)),
            Expr::IsNull(inner) => Some(format!("({} IS NULL)", self.operand(inner, false)?.0)),
            Expr::IsNotNull(inner) => Some(format!("({} IS NOT NULL)", self.operand(inner, false)?.0)),
            Expr::Between(Between { expr, negated, low, high }) => {
                let (x, k) = self.operand(expr, true)?;
                let (lo, lk) = self.operand(low, true)?;
                let (hi, hk) = self.operand(high, true)?;
                let not = if *negated { "NOT " } else { "" };
                (k == lk && k == hk).then(|| format!("({x} {not}BETWEEN {lo} AND {hi})"))
            }
            Expr::InList(InList { expr, list, negated }) if !list.is_empty() && list.len() <= MAX_IN_LIST => {
                let (x, k) = self.operand(expr, false)?;
                let mut items = Vec::with_capacity(list.len());
                for item in list {
                    let (v, vk) = self.operand(item, false)?;
                    if vk != k {
                        return None;
                    }
                    items.push(v);
                }
                let not = if *negated { "NOT " } else { "" };
                Some(format!("({x} {not}IN ({}))", items.join(", ")))
            }
            _ => None,
        }
    }

    /// A column, a literal (as a parameter) or a widening cast of a numeric
    /// column. `ordering`: text compares in byte order, as in Arrow.
    fn operand(&mut self, e: &Expr, ordering: bool) -> Option<(String, Kind)> {
        let collate = |sql: String, kind: Kind| {
            if ordering && kind == Kind::Text { format!("{sql} COLLATE \"C\"") } else { sql }
        };
        match e {
            Expr::Column(c) => {
                let (name, t) = self.columns.iter().find(|(name, _)| *name == c.name)?;
                let kind = kind_of(*t);
                Some((collate(quote_ident(name), kind), kind))
            }
            Expr::Literal(value, _) => {
                let param = match value {
                    ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                        Param::Text(s.clone())
                    }
                    ScalarValue::Int8(Some(v)) => Param::I32(i32::from(*v)),
                    ScalarValue::Int16(Some(v)) => Param::I32(i32::from(*v)),
                    ScalarValue::Int32(Some(v)) => Param::I32(*v),
                    ScalarValue::Int64(Some(v)) => Param::I64(*v),
                    ScalarValue::Float32(Some(v)) if v.is_finite() => Param::F64(f64::from(*v)),
                    ScalarValue::Float64(Some(v)) if v.is_finite() => Param::F64(*v),
                    ScalarValue::Boolean(Some(v)) => Param::Bool(*v),
                    ScalarValue::Date32(Some(v)) => Param::Date(*v),
                    _ => return None,
                };
                let kind = param.kind();
                let sql = format!("${}::{}", self.params.len() + 1, param.pg_type());
                self.params.push(param);
                Some((collate(sql, kind), kind))
            }
            Expr::Cast(Cast { expr, field }) => {
                let data_type = field.data_type();
                let Expr::Column(c) = expr.as_ref() else {
                    return None;
                };
                let (name, t) = self.columns.iter().find(|(name, _)| *name == c.name)?;
                let column = quote_ident(name);
                match (t, data_type) {
                    (ColumnType::Utf8, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) => {
                        Some((collate(column, Kind::Text), Kind::Text))
                    }
                    (ColumnType::Int32, DataType::Int32) | (ColumnType::Int64, DataType::Int64) => {
                        Some((column, Kind::Number))
                    }
                    (ColumnType::Int32, DataType::Int64) => Some((format!("CAST({column} AS int8)"), Kind::Number)),
                    (ColumnType::Int32 | ColumnType::Int64, DataType::Float64) => {
                        Some((format!("CAST({column} AS float8)"), Kind::Number))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Describes a database error without quoting data: the SQLSTATE, and the
/// server's message only for classes that speak of objects and connections.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let safe = ["08", "28", "3D", "3F", "42", "53", "57"].iter().any(|class| code.starts_with(class));
            if safe { format!("SQLSTATE {code}: {}", db.message()) } else { format!("SQLSTATE {code}") }
        }
        None => {
            let mut text = e.to_string();
            if let Some(source) = std::error::Error::source(e) {
                let source = source.to_string();
                if !text.contains(&source) {
                    text = format!("{text}: {source}");
                }
            }
            text.lines().next().unwrap_or_default().to_owned()
        }
    }
}

/// Whether a database error means the connection is gone (rather than the query being wrong).
fn is_lost(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => code.code().starts_with("08") || code.code().starts_with("57"),
        None => true,
    }
}

/// Opens a connection (over TLS when the link says so); the connection task ends with the client.
async fn connect(link: &Link) -> Result<Client, tokio_postgres::Error> {
    match &link.tls {
        None => {
            let (client, connection) = link.config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %describe(&e), "PostgreSQL connection ended");
                }
            });
            Ok(client)
        }
        Some(tls) => {
            let (client, connection) = link.config.connect(tls.clone()).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %describe(&e), "PostgreSQL connection ended");
                }
            });
            Ok(client)
        }
    }
}

/// The error of a failed connection attempt: a TLS problem by name, else [`PostgresError::Connect`].
fn connect_error(at: &At, origin: &str, mode: SslMode, e: &tokio_postgres::Error) -> PostgresError {
    let (at, origin) = (at.clone(), origin.to_owned());
    match tls_failure(e) {
        Some(TlsFailure::ServerWithoutTls) => PostgresError::ServerWithoutTls { at, origin, mode },
        Some(TlsFailure::Untrusted(reason)) => PostgresError::Untrusted { at, origin, reason },
        Some(TlsFailure::Handshake(reason)) => PostgresError::Handshake { at, origin, reason },
        None => PostgresError::Connect { at, origin, reason: describe(e) },
    }
}

/// The database side of a served table, with its declared schema.
pub struct PostgresTable {
    at: At,
    /// The relation as written in the config, for messages.
    relation: String,
    /// The quoted relation for SQL.
    relation_sql: String,
    link: Arc<Link>,
    /// Where the connection string came from, for messages.
    origin: String,
    /// Declared columns, in declared order.
    columns: Vec<(String, ColumnType)>,
    /// Per declared column, how it is read (from the database types found at start-up).
    readers: Vec<Reader>,
    schema: SchemaRef,
}

impl fmt::Debug for PostgresTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connection string.
        f.debug_struct("PostgresTable").field("at", &self.at).field("relation", &self.relation).finish_non_exhaustive()
    }
}

impl PostgresTable {
    /// Reads the connection string, connects, and checks that the relation
    /// holds every declared column with a type that can be served as declared.
    pub async fn open(node: &str, config: &TableConfig, pg: &PostgresSection) -> Result<PostgresTable, PostgresError> {
        let at = At { node: node.to_owned(), table: config.name.clone() };
        let (text, origin) = match (&pg.connection_env, &pg.connection_file) {
            (Some(var), _) => match std::env::var(var) {
                Ok(text) => (text, format!("the environment variable {var}")),
                Err(_) => {
                    return Err(PostgresError::NoConnectionEnv { at, var: var.clone() });
                }
            },
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => (text.trim().to_owned(), format!("the file {}", path.display())),
                Err(e) => {
                    return Err(PostgresError::ConnectionFile {
                        at,
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    });
                }
            },
            (None, None) => {
                return Err(PostgresError::ConnectionString {
                    at,
                    origin: "the config".into(),
                    reason: "neither connection_env nor connection_file is set".into(),
                });
            }
        };
        let (text, mode) = take_sslmode(&text).map_err(|reason| PostgresError::ConnectionString {
            at: at.clone(),
            origin: origin.clone(),
            reason,
        })?;
        let mut connection: tokio_postgres::Config = text.parse().map_err(|e| PostgresError::ConnectionString {
            at: at.clone(),
            origin: origin.clone(),
            reason: describe(&e),
        })?;
        if connection.get_application_name().is_none() {
            connection.application_name(format!("samkor-node {node}"));
        }
        if connection.get_connect_timeout().is_none() {
            connection.connect_timeout(Duration::from_secs(10));
        }
        let (schema_name, name) = pg.relation_parts();
        let relation_sql = match schema_name {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(name)),
            None => quote_ident(name),
        };
        let mode = mode.unwrap_or(SslMode::Disable);
        let link = Link::new(connection, mode, pg.ca_file.as_deref()).map_err(|e| match e {
            TlsSetupError::NoCaFile(mode) => PostgresError::NoCaFile { at: at.clone(), origin: origin.clone(), mode },
            TlsSetupError::CaWithoutTls => PostgresError::CaWithoutTls { at: at.clone(), origin: origin.clone() },
            TlsSetupError::CaFile { path, reason } => PostgresError::CaFile { at: at.clone(), path, reason },
        })?;
        if mode == SslMode::Require && pg.ca_file.is_none() {
            tracing::warn!(node, table = %config.name, "sslmode=require without `ca_file`: the connection to the database is encrypted but the server is not authenticated; give `ca_file` and use sslmode=verify-full");
        }
        let client = connect(&link).await.map_err(|e| connect_error(&at, &origin, mode, &e))?;
        let statement = client.prepare(&format!("SELECT * FROM {relation_sql} LIMIT 0")).await.map_err(|e| match e
            .code()
            .map(|c| c.code())
        {
            Some("42P01" | "3F000") => {
                PostgresError::NoRelation { at: at.clone(), relation: pg.relation.clone(), origin: origin.clone() }
            }
            Some("42501") => {
                PostgresError::NoPrivilege { at: at.clone(), relation: pg.relation.clone(), reason: describe(&e) }
            }
            _ if is_lost(&e) => connect_error(&at, &origin, mode, &e),
            _ => PostgresError::Database { at: at.clone(), reason: describe(&e) },
        })?;
        let mut readers = Vec::with_capacity(config.columns.len());
        for c in &config.columns {
            let Some(found) = statement.columns().iter().find(|f| f.name() == c.name) else {
                return Err(PostgresError::MissingColumn { at, column: c.name.clone(), relation: pg.relation.clone() });
            };
            let Some(reader) = Reader::for_types(c.data_type, found.type_()) else {
                return Err(PostgresError::TypeMismatch {
                    at,
                    column: c.name.clone(),
                    declared: c.data_type.name(),
                    relation: pg.relation.clone(),
                    found: found.type_().name().to_owned(),
                });
            };
            readers.push(reader);
        }
        let schema = Arc::new(Schema::new(
            config.columns.iter().map(|c| Field::new(&c.name, c.data_type.arrow(), true)).collect::<Vec<_>>(),
        ));
        Ok(PostgresTable {
            at,
            relation: pg.relation.clone(),
            relation_sql,
            link: Arc::new(link),
            origin,
            columns: config.columns.iter().map(|c| (c.name.clone(), c.data_type)).collect(),
            readers,
            schema,
        })
    }
}

#[async_trait]
impl TableProvider for PostgresTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.columns.len()).collect(),
        };
        let mut render = Render { columns: &self.columns, params: Vec::new() };
        let conditions: Vec<String> = filters.iter().filter_map(|f| render.filter(f)).collect();
        let select = if wanted.is_empty() {
            // Only the row count is needed.
            "NULL".to_owned()
        } else {
            wanted.iter().map(|&i| quote_ident(&self.columns[i].0)).collect::<Vec<_>>().join(", ")
        };
        let mut sql = format!("SELECT {select} FROM {}", self.relation_sql);
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        let schema = Arc::new(self.schema.project(&wanted)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(PostgresScanExec {
            at: self.at.clone(),
            link: self.link.clone(),
            origin: self.origin.clone(),
            sql,
            params: Arc::new(render.params),
            readers: wanted.iter().map(|&i| self.readers[i]).collect(),
            columns: wanted.iter().map(|&i| self.columns[i].clone()).collect(),
            relation: self.relation.clone(),
            schema,
            properties,
        }))
    }
}

/// Runs one `SELECT` in the database and turns its rows into record batches.
#[derive(Debug)]
pub struct PostgresScanExec {
    at: At,
    link: Arc<Link>,
    origin: String,
    /// The statement sent, with `$n` parameters.
    sql: String,
    params: Arc<Vec<Param>>,
    readers: Vec<Reader>,
    /// The projected declared columns.
    columns: Vec<(String, ColumnType)>,
    relation: String,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl PostgresScanExec {
    /// The statement sent to the database (parameters as `$n`).
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

impl DisplayAs for PostgresScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresScanExec: sql={}, parameters={}", self.sql, self.params.len())
    }
}

impl ExecutionPlan for PostgresScanExec {
    fn name(&self) -> &str {
        "PostgresScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal("PostgresScanExec has no children".into()));
        }
        Ok(self)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "PostgresScanExec has one partition, not {}",
                partition + 1
            )));
        }
        let scan = Scan {
            at: self.at.clone(),
            link: self.link.clone(),
            origin: self.origin.clone(),
            sql: self.sql.clone(),
            params: self.params.clone(),
            readers: self.readers.clone(),
            columns: self.columns.clone(),
            relation: self.relation.clone(),
            schema: self.schema.clone(),
            batch_size: context.session_config().batch_size().max(1),
        };
        let stream = futures::stream::once(scan.start()).map_ok(Running::batches).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream)))
    }
}

/// One execution of a scan, before it has connected.
struct Scan {
    at: At,
    link: Arc<Link>,
    origin: String,
    sql: String,
    params: Arc<Vec<Param>>,
    readers: Vec<Reader>,
    columns: Vec<(String, ColumnType)>,
    relation: String,
    schema: SchemaRef,
    batch_size: usize,
}

fn external(e: PostgresError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl Scan {
    async fn start(self) -> Result<Running> {
        let at = &self.at;
        let client =
            connect(&self.link).await.map_err(|e| external(connect_error(at, &self.origin, self.link.mode, &e)))?;
        let query_error = |e: tokio_postgres::Error| {
            external(if is_lost(&e) {
                PostgresError::Lost { at: at.clone(), reason: describe(&e) }
            } else {
                PostgresError::Database { at: at.clone(), reason: describe(&e) }
            })
        };
        let statement = client.prepare(&self.sql).await.map_err(query_error)?;
        // The relation may have changed since the node started: read what it holds now.
        let mut readers = Vec::with_capacity(self.columns.len());
        for ((name, declared), column) in self.columns.iter().zip(statement.columns()) {
            let Some(reader) = Reader::for_types(*declared, column.type_()) else {
                return Err(external(PostgresError::TypeMismatch {
                    at: at.clone(),
                    column: name.clone(),
                    declared: declared.name(),
                    relation: self.relation.clone(),
                    found: column.type_().name().to_owned(),
                }));
            };
            readers.push(reader);
        }
        let params = self.params.clone();
        let rows = client.query_raw(&statement, params.iter().map(|p| p as &dyn ToSql)).await.map_err(query_error)?;
        let mut scan = self;
        scan.readers = readers;
        Ok(Running { scan, _client: client, rows: Box::pin(rows), done: false })
    }
}

/// A scan whose rows are arriving.
struct Running {
    scan: Scan,
    /// Keeps the connection open while rows arrive.
    _client: Client,
    rows: Pin<Box<RowStream>>,
    done: bool,
}

/// An Arrow builder for one declared column.
enum Builder {
    Utf8(StringBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    Date32(Date32Builder),
}

impl Builder {
    fn new(t: ColumnType, capacity: usize) -> Builder {
        match t {
            ColumnType::Utf8 => Builder::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
            ColumnType::Int32 => Builder::Int32(Int32Builder::with_capacity(capacity)),
            ColumnType::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
            ColumnType::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
            ColumnType::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Date32 => Builder::Date32(Date32Builder::with_capacity(capacity)),
        }
    }

    fn append(&mut self, row: &Row, i: usize, reader: Reader) -> Result<(), tokio_postgres::Error> {
        match (self, reader) {
            (Builder::Utf8(b), Reader::Text) => b.append_option(row.try_get::<_, Option<&str>>(i)?),
            (Builder::Int32(b), Reader::I16) => b.append_option(row.try_get::<_, Option<i16>>(i)?.map(i32::from)),
            (Builder::Int32(b), Reader::I32) => b.append_option(row.try_get::<_, Option<i32>>(i)?),
            (Builder::Int64(b), Reader::I16) => b.append_option(row.try_get::<_, Option<i16>>(i)?.map(i64::from)),
            (Builder::Int64(b), Reader::I32) => b.append_option(row.try_get::<_, Option<i32>>(i)?.map(i64::from)),
            (Builder::Int64(b), Reader::I64) => b.append_option(row.try_get::<_, Option<i64>>(i)?),
            (Builder::Float64(b), Reader::F32) => b.append_option(row.try_get::<_, Option<f32>>(i)?.map(f64::from)),
            (Builder::Float64(b), Reader::F64) => b.append_option(row.try_get::<_, Option<f64>>(i)?),
            (Builder::Boolean(b), Reader::Bool) => b.append_option(row.try_get::<_, Option<bool>>(i)?),
            (Builder::Date32(b), Reader::Date) => b.append_option(row.try_get::<_, Option<PgDate>>(i)?.map(|d| d.0)),
            // Readers are chosen for the declared type in `PostgresTable::open`.
            _ => unreachable!("reader chosen for another declared type"),
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Utf8(mut b) => Arc::new(b.finish()),
            Builder::Int32(mut b) => Arc::new(b.finish()),
            Builder::Int64(mut b) => Arc::new(b.finish()),
            Builder::Float64(mut b) => Arc::new(b.finish()),
            Builder::Boolean(mut b) => Arc::new(b.finish()),
            Builder::Date32(mut b) => Arc::new(b.finish()),
        }
    }
}

impl Running {
    fn batches(self) -> impl futures::Stream<Item = Result<RecordBatch>> + Send {
        futures::stream::try_unfold(self, |mut run| async move {
            if run.done {
                return Ok(None);
            }
            let size = run.scan.batch_size;
            let mut builders: Vec<Builder> = run.scan.columns.iter().map(|(_, t)| Builder::new(*t, size)).collect();
            let mut n = 0;
            while n < size {
                match run.rows.next().await {
                    Some(Ok(row)) => {
                        for (i, (b, reader)) in builders.iter_mut().zip(&run.scan.readers).enumerate() {
                            b.append(&row, i, *reader).map_err(|e| {
                                // A value the declared type cannot hold: name the column, not the value.
                                external(PostgresError::Database {
                                    at: run.scan.at.clone(),
                                    reason: format!(
                                        "a value of column {} cannot be read as {}: {}",
                                        run.scan.columns[i].0,
                                        run.scan.columns[i].1.name(),
                                        describe(&e)
                                    ),
                                })
                            })?;
                        }
                        n += 1;
                    }
                    Some(Err(e)) => {
                        run.done = true;
                        let at = run.scan.at.clone();
                        return Err(external(if is_lost(&e) {
                            PostgresError::Lost { at, reason: describe(&e) }
                        } else {
                            PostgresError::Database { at, reason: describe(&e) }
                        }));
                    }
                    None => {
                        run.done = true;
                        break;
                    }
                }
            }
            if n == 0 {
                return Ok(None);
            }
            let columns: Vec<ArrayRef> = builders.into_iter().map(Builder::finish).collect();
            let options = RecordBatchOptions::new().with_row_count(Some(n));
            let batch = RecordBatch::try_new_with_options(run.scan.schema.clone(), columns, &options)?;
            Ok(Some((batch, run)))
        })
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn render(e: Expr) -> (Option<String>, usize) {
        let columns = vec![
            ("pnr".to_owned(), ColumnType::Utf8),
            ("region".to_owned(), ColumnType::Utf8),
            ("age".to_owned(), ColumnType::Int32),
            ("op_date".to_owned(), ColumnType::Date32),
        ];
        let mut r = Render { columns: &columns, params: Vec::new() };
        let sql = r.filter(&e);
        (sql, r.params.len())
    }

    #[test]
    fn filters_become_parameterised_sql() {
        assert_eq!(render(col("region").eq(lit("Skåne"))), (Some("(\"region\" = $1::text)".into()), 1));
        assert_eq!(
            render(col("region").lt(lit("S"))),
            (Some("(\"region\" COLLATE \"C\" < $1::text COLLATE \"C\")".into()), 1)
        );
        assert_eq!(
            render(col("age").between(lit(60), lit(70)).and(col("op_date").is_not_null())),
            (Some("((\"age\" BETWEEN $1::int4 AND $2::int4) AND (\"op_date\" IS NOT NULL))".into()), 2)
        );
        assert_eq!(
            render(col("region").in_list(vec![lit("a"), lit("b")], true)),
            (Some("(\"region\" NOT IN ($1::text, $2::text))".into()), 2)
        );
    }

    #[test]
    fn what_cannot_mean_the_same_in_the_database_is_not_sent() {
        // Mixed kinds, functions, LIKE, unknown columns and nulls stay at the node; no parameter is left behind.
        assert_eq!(render(col("region").eq(lit(3))), (None, 0));
        assert_eq!(render(col("region").like(lit("S%"))), (None, 0));
        assert_eq!(render(col("age").eq(lit(1)).and(col("person").eq(lit("x")))), (None, 0));
        assert_eq!(render(col("age").eq(lit(ScalarValue::Int32(None)))), (None, 0));
        assert_eq!(render(col("age").eq(lit(1)).or(col("age") + lit(1))), (None, 0));
    }
}
