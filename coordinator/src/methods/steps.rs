//! Running a method's steps: released aggregates (through the same
//! disclosure control as any query) and internal aggregates (numbers that
//! stay in the coordinator), both in the caller's project session.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::{DataFusionError, Result};
use futures::TryStreamExt;
use samkor_policies::approval::Approval;

use crate::disclosure::{self, Mode};
use crate::engine::{Engine, into_datafusion};
use crate::executor::QueryScope;
use crate::policy::Touched;

/// How a method runs its steps: in the federation as the caller
/// ([`MethodEnv`]), or on one pooled session (benchmarks: [`super::Pooled`]).
#[async_trait::async_trait]
pub(crate) trait Steps: Send + Sync {
    /// The columns and types of a query's answer, planned but not run.
    async fn describe(&self, sql: &str) -> Result<SchemaRef>;
    /// An aggregate whose numbers stay in the coordinator.
    async fn internal(&self, sql: &str) -> Result<Table>;
    /// An aggregate released through disclosure control.
    async fn released(&self, sql: &str) -> Result<Table>;
    /// Constants (no register data).
    async fn constant(&self, sql: &str) -> Result<Table>;
    /// Keeps the rows of `sql` for the method's later internal steps when
    /// they come to the coordinator anyway (a join of registers: the nodes
    /// send their rows for it); returns the name to read them by, or None
    /// when the rows stay at the nodes (internal steps are then computed
    /// there, each time).
    async fn keep_rows(&self, sql: &str) -> Result<Option<String>>;
    /// The threshold: persons per released cell.
    fn k(&self) -> f64;
}

/// What a method needs to run its steps as the caller.
#[derive(Debug)]
pub struct MethodEnv {
    engine: Weak<Engine>,
    scope: QueryScope,
    approval: Arc<Approval>,
    touched: Arc<Mutex<Touched>>,
    /// Rows kept at the coordinator for internal steps ([`Steps::keep_rows`]), by name.
    kept: Mutex<Vec<(String, Arc<datafusion::datasource::MemTable>)>>,
}

impl MethodEnv {
    pub fn new(engine: Weak<Engine>, scope: QueryScope, approval: Arc<Approval>, touched: Arc<Mutex<Touched>>) -> Self {
        MethodEnv { engine, scope, approval, touched, kept: Mutex::new(Vec::new()) }
    }

    fn engine(&self) -> Result<Arc<Engine>> {
        self.engine.upgrade().ok_or_else(|| DataFusionError::Internal("the coordinator is shutting down".into()))
    }

    /// A step's session: the caller's project, the approval, the kept rows; no methods.
    fn session(&self, engine: &Engine) -> crate::engine::Session {
        let session = engine.session_without_methods(self.scope.clone(), self.approval.clone(), self.touched.clone());
        for (name, table) in self.kept.lock().expect("kept lock").iter() {
            let _ = register_kept(&session.ctx, name, table.clone());
        }
        session
    }

    async fn run_internal(&self, sql: &str, constants_only: bool) -> Result<Table> {
        let engine = self.engine()?;
        let planned = engine.plan_internal(&self.session(&engine), sql).await.map_err(into_datafusion)?;
        if constants_only && super::Scans::of(planned.df.logical_plan()).registers > 0 {
            return Err(DataFusionError::Plan("it reads register tables".into()));
        }
        let (schema, batches, _) = collect(&engine, planned).await?;
        Table::new(&schema, &batches, None)
    }
}

#[async_trait::async_trait]
impl Steps for MethodEnv {
    async fn describe(&self, sql: &str) -> Result<SchemaRef> {
        let engine = self.engine()?;
        let planned = engine.plan_internal(&self.session(&engine), sql).await.map_err(into_datafusion)?;
        Ok(planned.schema.clone())
    }

    async fn internal(&self, sql: &str) -> Result<Table> {
        self.run_internal(sql, false).await
    }

    /// Suppressed, perturbed and marked as a query of the caller's would be.
    async fn released(&self, sql: &str) -> Result<Table> {
        let engine = self.engine()?;
        let planned = engine.plan(&self.session(&engine), sql).await.map_err(into_datafusion)?;
        let (schema, batches, mode) = collect(&engine, planned).await?;
        let Mode::Aggregate(layout) = &mode else {
            return Err(DataFusionError::Internal("a method's released step is not one aggregate table".into()));
        };
        let released = disclosure::release(&batches, &schema, layout, &self.approval).await?;
        engine.differencing().check(
            &self.approval.project,
            &self.scope.query_id,
            self.approval.disclosure.min_cell_persons,
            &released.prints,
        );
        Table::new(&released.schema, &released.batches, Some(disclosure::WITHHELD_COLUMN))
    }

    /// Refused when the query reads register data (its numbers enter the answer as given).
    async fn constant(&self, sql: &str) -> Result<Table> {
        self.run_internal(sql, true).await
    }

    async fn keep_rows(&self, sql: &str) -> Result<Option<String>> {
        let engine = self.engine()?;
        let planned = engine.plan_internal(&self.session(&engine), sql).await.map_err(into_datafusion)?;
        let joined = datafusion::common::tree_node::TreeNode::exists(planned.df.logical_plan(), |p| {
            Ok(matches!(p, datafusion::logical_expr::LogicalPlan::Join(_)))
        })?;
        if !joined {
            return Ok(None);
        }
        let (schema, batches, _) = collect(&engine, planned).await?;
        let table = Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![batches])?);
        let mut kept = self.kept.lock().expect("kept lock");
        let name = format!("samkor_kept_rows_{}", kept.len());
        kept.push((name.clone(), table));
        Ok(Some(name))
    }

    fn k(&self) -> f64 {
        f64::from(self.approval.disclosure.min_cell_persons.max(1))
    }
}

/// Registers kept rows under a bare name (the session's default schema,
/// created if missing; approvals name register tables, never these).
pub(super) fn register_kept(
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
    table: Arc<datafusion::datasource::MemTable>,
) -> Result<()> {
    use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
    let catalog = ctx
        .catalog(crate::engine::CATALOG)
        .ok_or_else(|| DataFusionError::Internal("the session has no samkor catalog".into()))?;
    let schema = match catalog.schema("public") {
        Some(s) => s,
        None => {
            let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
            catalog.register_schema("public", s.clone())?;
            s
        }
    };
    schema.register_table(name.to_owned(), table)?;
    Ok(())
}

/// Runs a planned step to its end: its schema, batches and release mode.
async fn collect(engine: &Engine, planned: crate::engine::Planned) -> Result<(SchemaRef, Vec<RecordBatch>, Mode)> {
    let execution = engine.start(planned).await.map_err(into_datafusion)?;
    let schema = execution.stream.schema();
    let batches: Vec<RecordBatch> = execution.stream.try_collect().await?;
    Ok((schema, batches, execution.mode))
}

/// One row of a step's answer, by column name: text keys and numbers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    pub(crate) text: BTreeMap<String, Option<String>>,
    pub(crate) num: BTreeMap<String, Option<f64>>,
    /// The withheld columns (released steps), or None.
    pub(crate) withheld: Option<String>,
}

impl Row {
    pub(crate) fn key(&self, name: &str) -> Option<&str> {
        self.text.get(name).and_then(|v| v.as_deref())
    }

    pub(crate) fn number(&self, name: &str) -> Option<f64> {
        self.num.get(name).copied().flatten()
    }

    /// The merged row of groups below the threshold (keys withheld).
    pub(crate) fn is_merged(&self) -> bool {
        self.withheld.as_deref().is_some_and(|w| w.starts_with('*'))
    }
}

/// A step's answer.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) rows: Vec<Row>,
}

impl Table {
    pub(super) fn new(schema: &SchemaRef, batches: &[RecordBatch], marker: Option<&str>) -> Result<Table> {
        let mut rows = Vec::new();
        let options = FormatOptions::default();
        for b in batches {
            let mut part: Vec<Row> = (0..b.num_rows()).map(|_| Row::default()).collect();
            for (i, field) in schema.fields().iter().enumerate() {
                let array = b.column(i);
                if marker.is_some_and(|m| field.name().starts_with(m)) {
                    let text = cast(array, &DataType::Utf8)?;
                    let text = text.as_string::<i32>();
                    for (r, row) in part.iter_mut().enumerate() {
                        row.withheld = (!text.is_null(r)).then(|| text.value(r).to_owned());
                    }
                    continue;
                }
                let formatter = ArrayFormatter::try_new(array.as_ref(), &options)?;
                let numbers = numbers(array);
                for (r, row) in part.iter_mut().enumerate() {
                    let text = (!array.is_null(r)).then(|| formatter.value(r).to_string());
                    row.text.insert(field.name().clone(), text);
                    row.num.insert(field.name().clone(), numbers.as_ref().and_then(|n| n[r]));
                }
            }
            rows.extend(part);
        }
        Ok(Table { rows })
    }

    /// The first row's number (single-row aggregates).
    pub(crate) fn scalar(&self, name: &str) -> Option<f64> {
        self.rows.first().and_then(|r| r.number(name))
    }
}

fn numbers(array: &ArrayRef) -> Option<Vec<Option<f64>>> {
    let t = array.data_type();
    if !(t.is_numeric() || *t == DataType::Boolean) {
        return None;
    }
    let f = cast(array, &DataType::Float64).ok()?;
    let f = f.as_primitive::<Float64Type>();
    Some((0..f.len()).map(|r| (!f.is_null(r)).then(|| f.value(r))).collect())
}
