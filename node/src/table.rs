//! Register tables as DataFusion sees them at the node.
//!
//! ```text
//!   SQL from the coordinator
//!        │
//!   DataFusion operators (filter, aggregate, …)      ← see only `person`, never `pnr`
//!        │
//!   PseudonymiseExec: drop opted-out rows (and, for direct access, other
//!                     units' rows), pnr → project pseudonym
//!        │
//!   FilterExec: the query's filters on non-person columns (only rows that
//!               pass are checked and pseudonymised)
//!        │
//!   DataSourceExec (Parquet / CSV, streaming; the same filters prune row
//!                   groups and pages; a Parquet scan reads each row's
//!                   number instead of the identity column when the node
//!                   holds that column in memory, crate::identities)
//! ```
//!
//! [`ServedTable`] is built once at start-up; [`ProjectTable`] binds it to one
//! request's project and opt-out snapshot and is what the query planner sees.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, StringArray, StringArrayType,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::{and, cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, col, lit};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;
use samkor_proto::PERSON_COLUMN;

use crate::access::Refusal;
use crate::config::{FileFormat as ConfigFormat, TableConfig};
use crate::counting::AtTheScan;
use crate::identities::{FromCache, IdentityCache};
use crate::optout::{OptOutSet, pnr_key};
use crate::pseudonym::{ProjectPseudonymiser, same_value};

/// Why a table could not be opened at start-up. Names the table and the path.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("table {table}: no data files match {path}")]
    NoFiles { table: String, path: String },
    #[error("table {table}: cannot read the data files at {path}: {reason}")]
    Unreadable { table: String, path: String, reason: String },
    #[error("table {table}: column {column} is declared in the config but missing from the data files at {path}")]
    MissingColumn { table: String, column: String, path: String },
    #[error("table {table}: column {column} is declared as {declared} but the data files at {path} hold {found}")]
    TypeMismatch { table: String, column: String, declared: &'static str, found: String, path: String },
    #[error(
        "table {table}: declared `one_row_per_person = true`, but {repeated} identity numbers appear in more than one row of the files at {path}; remove the declaration or the repeated rows"
    )]
    NotOnePerPerson { table: String, path: String, repeated: u64 },
    #[error(transparent)]
    Postgres(Box<crate::source::postgres::PostgresError>),
}

/// A table of the register as served: files, declared schema, the person column.
#[derive(Debug)]
pub struct ServedTable {
    pub config: TableConfig,
    /// The rows under the declared schema: files, or a database table.
    inner: Arc<dyn TableProvider>,
    /// The schema clients see: the person column renamed to `person`.
    exposed: SchemaRef,
    person_idx: usize,
    /// The scans run on the holder's cluster ([`crate::cluster`]).
    on_cluster: bool,
    /// Declared and checked to hold one row per person ([`crate::one_per_person`]).
    one_per_person: Option<Arc<crate::one_per_person::Checked>>,
    /// The node's cache of identity columns, for a table of Parquet files
    /// ([`crate::identities`]).
    identities: Option<Arc<IdentityCache>>,
}

fn data_files_exist(path: &str) -> bool {
    let p = std::path::Path::new(path);
    if p.is_dir() {
        return std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false);
    }
    match glob::glob(path) {
        Ok(mut paths) => paths.next().is_some(),
        Err(_) => p.is_file(),
    }
}

impl ServedTable {
    /// Opens a table of node `node`: checks that files (or the database
    /// relation) exist and hold every declared column with the declared type.
    pub async fn open(
        node: &str,
        config: TableConfig,
        state: &dyn Session,
        identities: &Arc<IdentityCache>,
    ) -> Result<ServedTable, TableError> {
        if let Some(pg) = &config.postgres {
            let inner = crate::source::postgres::PostgresTable::open(node, &config, pg)
                .await
                .map_err(|e| TableError::Postgres(Box::new(e)))?;
            return Ok(Self::over(config, Arc::new(inner)));
        }
        let table = config.name.clone();
        let path = config.path.clone();
        if !data_files_exist(&path) {
            return Err(TableError::NoFiles { table, path });
        }
        let unreadable = |e: DataFusionError| TableError::Unreadable {
            table: table.clone(),
            path: path.clone(),
            reason: e.message().lines().next().unwrap_or_default().to_owned(),
        };
        let url = ListingTableUrl::parse(&path).map_err(unreadable)?;
        let (format, ext): (Arc<dyn FileFormat>, &str) = match config.format {
            ConfigFormat::Parquet => (Arc::new(ParquetFormat::default()), ".parquet"),
            ConfigFormat::Csv => (Arc::new(CsvFormat::default().with_has_header(true)), ".csv"),
            ConfigFormat::Postgres => {
                unreachable!("a postgres table has a `postgres` section (checked at config load)")
            }
        };
        let options = ListingOptions::new(format).with_file_extension(ext);
        let found = options.infer_schema(state, &url).await.map_err(unreadable)?;
        for c in &config.columns {
            let field = found.field_with_name(&c.name).map_err(|_| TableError::MissingColumn {
                table: table.clone(),
                column: c.name.clone(),
                path: path.clone(),
            })?;
            // A CSV file is text: a text column reads whatever its cells look
            // like (inference takes 12-digit identity numbers for integers).
            let as_text = config.format == ConfigFormat::Csv && c.data_type == crate::config::ColumnType::Utf8;
            if !as_text && !c.data_type.accepts(field.data_type()) {
                return Err(TableError::TypeMismatch {
                    table: table.clone(),
                    column: c.name.clone(),
                    declared: c.data_type.name(),
                    found: field.data_type().to_string(),
                    path: path.clone(),
                });
            }
        }
        // Parquet text is read as string views: no copy of the bytes out of
        // the decoded pages, and cheaper filters and grouping on them. What
        // leaves the node is cast back to the declared types (`service`).
        let read_as = |c: &crate::config::ColumnConfig| match c.data_type.arrow() {
            DataType::Utf8 if config.format == ConfigFormat::Parquet => DataType::Utf8View,
            other => other,
        };
        let declared = Arc::new(Schema::new(
            config.columns.iter().map(|c| Field::new(&c.name, read_as(c), true)).collect::<Vec<_>>(),
        ));
        let listing = ListingTableConfig::new(url).with_listing_options(options).with_schema(declared);
        let statistics = state.runtime_env().cache_manager.get_file_statistic_cache();
        let inner: Arc<dyn TableProvider> =
            Arc::new(ListingTable::try_new(listing).map_err(unreadable)?.with_cache(statistics));
        let one_per_person = if config.one_row_per_person {
            let checked = crate::one_per_person::Checked::at_start(&table, &path, &config.person_column, inner.clone())
                .await
                .map_err(|failed| match failed {
                    crate::one_per_person::NotChecked::Repeated(repeated) => {
                        TableError::NotOnePerPerson { table: table.clone(), path: path.clone(), repeated }
                    }
                    crate::one_per_person::NotChecked::Unreadable(e) => unreadable(e),
                })?;
            Some(Arc::new(checked))
        } else {
            None
        };
        let identities = (config.format == ConfigFormat::Parquet && identities.enabled()).then(|| identities.clone());
        Ok(ServedTable { one_per_person, identities, ..Self::over(config, inner) })
    }

    /// The table served from `inner`, whose schema is the declared one.
    pub(crate) fn over(config: TableConfig, inner: Arc<dyn TableProvider>) -> ServedTable {
        let declared = inner.schema();
        let person_idx = declared.index_of(&config.person_column).expect("checked at config load");
        let exposed =
            Arc::new(Schema::new(
                declared
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        if i == person_idx {
                            Field::new(PERSON_COLUMN, DataType::Utf8, true)
                        } else {
                            f.as_ref().clone()
                        }
                    })
                    .collect::<Vec<_>>(),
            ));
        ServedTable { config, inner, exposed, person_idx, on_cluster: false, one_per_person: None, identities: None }
    }

    /// The same table, its scans run on the holder's cluster.
    pub fn scanned_on_cluster(mut self) -> ServedTable {
        self.on_cluster = true;
        self
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn exposed_schema(&self) -> SchemaRef {
        self.exposed.clone()
    }

    /// This table as seen by one request of `pseudonymiser`'s project.
    pub fn for_project(
        self: &Arc<Self>,
        pseudonymiser: ProjectPseudonymiser,
        opt_outs: Arc<OptOutSet>,
    ) -> ProjectTable {
        ProjectTable {
            served: self.clone(),
            pseudonymiser,
            opt_outs,
            withheld: Vec::new(),
            direct: None,
            read: None,
            project: String::new(),
            person_as: PersonAs::Pseudonym,
        }
    }
}

/// Direct access of one reporting unit: only its own rows leave the scan.
#[derive(Debug, Clone)]
pub struct DirectRows {
    /// The unit, as written in the unit column.
    pub unit: String,
    /// The table's unit column, if the holder opened the table for direct access.
    pub column: Option<String>,
    /// The tables the holder opened, for the refusal message.
    pub open: Vec<String>,
}

/// The columns the scans of one sub-query read (`table.column`), for the audit log.
#[derive(Debug, Default)]
pub struct ColumnsRead(Mutex<BTreeSet<String>>);

impl ColumnsRead {
    fn add<'a>(&self, table: &str, columns: impl IntoIterator<Item = &'a str>) {
        let mut read = self.0.lock().unwrap_or_else(|p| p.into_inner());
        read.extend(columns.into_iter().map(|c| format!("{table}.{c}")));
    }

    /// Everything recorded so far, sorted.
    pub fn list(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// A served table bound to one project: the provider the node's planner sees.
#[derive(Debug, Clone)]
pub struct ProjectTable {
    served: Arc<ServedTable>,
    pseudonymiser: ProjectPseudonymiser,
    opt_outs: Arc<OptOutSet>,
    /// Columns the holder does not release to this project.
    withheld: Vec<String>,
    /// Set for a care provider's direct access.
    direct: Option<DirectRows>,
    /// Where the scans record the columns they read.
    read: Option<Arc<ColumnsRead>>,
    /// The project named in refusals.
    project: String,
    /// What `person` holds in the scans.
    person_as: PersonAs,
}

/// What `person` holds in a project table's scans ([`crate::counting`]).
#[derive(Debug, Clone)]
enum PersonAs {
    /// The project pseudonym.
    Pseudonym,
    /// The identity number, which never leaves the node: the plan only
    /// counts persons.
    Identity,
    /// The record key or the pseudonym's bytes: the plan uses `person` only
    /// through them. The table's schema, which says so.
    Derived(AtTheScan, SchemaRef),
}

impl ProjectTable {
    /// Withholds `columns` from `project`: reading one fails the sub-query.
    pub fn withholding(mut self, project: &str, columns: Vec<String>) -> Self {
        self.project = project.to_owned();
        self.withheld = columns;
        self
    }

    /// Restricts the table to one unit's own rows (direct access); a table
    /// without a unit column refuses every scan.
    pub fn direct(mut self, rows: DirectRows) -> Self {
        self.direct = Some(rows);
        self
    }

    /// The same table for a plan that only counts persons
    /// ([`crate::counting`]): its scans emit the identity number as `person`.
    pub fn counting_persons_only(&self) -> ProjectTable {
        ProjectTable { person_as: PersonAs::Identity, ..self.clone() }
    }

    /// The same table for a plan that uses `person` only through its record
    /// key or its pseudonym's bytes ([`crate::counting`]): its scans emit
    /// `at` as `person`.
    pub fn deriving_persons(&self, at: AtTheScan) -> ProjectTable {
        let exposed = &self.served.exposed;
        let fields: Vec<Field> = exposed
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| match i == self.served.person_idx {
                true => Field::new(f.name(), at.data_type(), true),
                false => f.as_ref().clone(),
            })
            .collect();
        let schema = Arc::new(Schema::new_with_metadata(fields, exposed.metadata().clone()));
        ProjectTable { person_as: PersonAs::Derived(at, schema), ..self.clone() }
    }

    /// Records the columns every scan reads in `read`.
    pub fn recording(mut self, read: Arc<ColumnsRead>) -> Self {
        self.read = Some(read);
        self
    }

    /// Whether every row of this table is a different person now (declared,
    /// and checked against the files as they are; [`crate::one_per_person`]).
    /// Scans on a cluster are not covered.
    pub async fn rows_are_distinct_persons(&self) -> bool {
        match &self.served.one_per_person {
            Some(checked) if !self.served.on_cluster => checked.holds().await,
            _ => false,
        }
    }
}

fn references_person(e: &Expr) -> bool {
    e.column_refs().iter().any(|c| c.name == PERSON_COLUMN)
}

#[async_trait]
impl TableProvider for ProjectTable {
    fn schema(&self) -> SchemaRef {
        match &self.person_as {
            PersonAs::Derived(_, schema) => schema.clone(),
            PersonAs::Pseudonym | PersonAs::Identity => self.served.exposed.clone(),
        }
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters on other columns run below the pseudonymiser (Exact): they
        // prune files, row groups and pages, a filter right above the scan
        // drops the rows that fail, and only the rows that pass are checked
        // against the opt-out list and pseudonymised. Filters on the person
        // only make sense on pseudonyms, so they run above it.
        Ok(filters
            .iter()
            .map(|f| {
                if references_person(f) {
                    TableProviderFilterPushDown::Unsupported
                } else {
                    TableProviderFilterPushDown::Exact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let person_idx = self.served.person_idx;
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.served.exposed.fields().len()).collect(),
        };
        let table = &self.served.config.name;
        let refuse = |r: Refusal| DataFusionError::External(Box::new(r));
        let mut inner_filters: Vec<Expr> =
            filters.iter().filter(|f| !references_person(f)).map(|f| unnormalize_col(f.clone())).collect();
        // Columns only the pushed filters read: read below the pseudonymiser,
        // checked and recorded like projected ones, never returned.
        let mut filtered: Vec<usize> = Vec::new();
        for f in &inner_filters {
            for c in f.column_refs() {
                let idx = self.served.exposed.index_of(&c.name)?;
                if !wanted.contains(&idx) && !filtered.contains(&idx) {
                    filtered.push(idx);
                }
            }
        }
        for i in wanted.iter().chain(&filtered) {
            let name = self.served.exposed.field(*i).name();
            if self.withheld.iter().any(|w| w == name) {
                return Err(refuse(Refusal::Withheld {
                    table: table.clone(),
                    column: name.clone(),
                    project: self.project.clone(),
                }));
            }
        }
        // Direct access: the unit column is read and compared below the
        // pseudonymiser, whatever the query asked; other units' rows never
        // reach an operator of the query.
        let unit = match &self.direct {
            None => None,
            Some(DirectRows { column: None, open, .. }) => {
                return Err(refuse(Refusal::DirectTable { table: table.clone(), open: open.clone() }));
            }
            Some(DirectRows { column: Some(column), unit, .. }) => {
                let idx = self.served.exposed.index_of(column)?;
                inner_filters.push(col(column.as_str()).eq(lit(unit.as_str())));
                Some((idx, unit.clone()))
            }
        };
        if let Some(read) = &self.read {
            read.add(table, wanted.iter().chain(&filtered).map(|i| self.served.exposed.field(*i).name().as_str()));
        }
        let mut inner_projection = wanted.clone();
        let mut position = |idx: usize| match inner_projection.iter().position(|&i| i == idx) {
            Some(pos) => pos,
            None => {
                inner_projection.push(idx);
                inner_projection.len() - 1
            }
        };
        let pnr_pos = position(person_idx);
        let unit = unit.map(|(idx, unit)| (position(idx), unit));
        for idx in &filtered {
            position(*idx);
        }
        // No limit below: opted-out rows are removed above the scan.
        let mut input = self.served.inner.scan(state, Some(&inner_projection), &inner_filters, None).await?;
        let mut from_cache = None;
        let listing = self.served.inner.downcast_ref::<ListingTable>();
        if let Some((cache, listing)) = self.served.identities.as_ref().zip(listing).filter(|_| !self.served.on_cluster)
        {
            let person_column = &self.served.config.person_column;
            let rebuilt = crate::identities::without_identity_column(
                state,
                listing,
                &input,
                cache,
                person_column,
                &inner_projection,
                pnr_pos,
                match &self.person_as {
                    PersonAs::Derived(AtTheScan::RecordKey(keyer), _) => Some(keyer.clone()),
                    _ => None,
                },
            )
            .await?;
            if let Some((scan, identities)) = rebuilt {
                (input, from_cache) = (scan, Some(identities));
            }
        }
        if let Some(predicate) = conjunction(inner_filters) {
            // The scan prunes with the filters but may pass rows that fail
            // them; this filter is what makes the pushdown exact.
            let input_schema = DFSchema::try_from(input.schema())?;
            let predicate = state.create_physical_expr(predicate, &input_schema)?;
            input = Arc::new(FilterExec::try_new(predicate, input)?);
        }
        let schema = Arc::new(self.schema().project(&wanted)?);
        let person_out = wanted.iter().position(|&i| i == person_idx);
        Ok(Arc::new(
            PseudonymiseExec::new(
                input,
                schema,
                pnr_pos,
                person_out,
                unit,
                self.pseudonymiser.clone(),
                self.opt_outs.clone(),
            )
            .person_as(self.person_as.clone())
            .on_cluster(self.served.on_cluster.then(|| table.clone()))
            .identities_from(from_cache),
        ))
    }
}

/// Drops opted-out persons (and for direct access every row of another
/// unit) and replaces the identity number by the project pseudonym, batch by
/// batch, directly above the file scan.
#[derive(Debug)]
pub struct PseudonymiseExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    /// Position of the identity-number column in the input.
    pnr_pos: usize,
    /// Position of `person` in the output, if it is projected.
    person_out: Option<usize>,
    /// Direct access: position of the unit column in the input, and the unit kept.
    unit: Option<(usize, String)>,
    pseudonymiser: ProjectPseudonymiser,
    opt_outs: Arc<OptOutSet>,
    /// What `person` holds in the output.
    person_as: PersonAs,
    /// The table whose scan below runs on the holder's cluster ([`crate::cluster`]).
    cluster_table: Option<String>,
    /// The scan below reads row numbers, the identity numbers come from the
    /// node's cache ([`crate::identities`]).
    from_cache: Option<Arc<FromCache>>,
    properties: Arc<PlanProperties>,
}

impl PseudonymiseExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
        pnr_pos: usize,
        person_out: Option<usize>,
        unit: Option<(usize, String)>,
        pseudonymiser: ProjectPseudonymiser,
        opt_outs: Arc<OptOutSet>,
    ) -> Self {
        let partitions = input.properties().partitioning.partition_count();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        PseudonymiseExec {
            input,
            schema,
            pnr_pos,
            person_out,
            unit,
            pseudonymiser,
            opt_outs,
            person_as: PersonAs::Pseudonym,
            cluster_table: None,
            from_cache: None,
            properties,
        }
    }

    fn person_as(mut self, person_as: PersonAs) -> Self {
        self.person_as = person_as;
        self
    }

    fn on_cluster(mut self, table: Option<String>) -> Self {
        self.cluster_table = table;
        self
    }

    fn identities_from(mut self, from_cache: Option<Arc<FromCache>>) -> Self {
        self.from_cache = from_cache;
        self
    }

    /// The table whose scan (below this operator) runs on the holder's cluster.
    pub fn scanned_on_cluster(&self) -> Option<&str> {
        self.cluster_table.as_deref()
    }

    /// The scan below.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for PseudonymiseExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PseudonymiseExec: project={}, person={}, opted_out={}{}",
            self.pseudonymiser.project(),
            match (self.person_out, &self.person_as) {
                (None, _) => "not projected".to_owned(),
                (Some(p), PersonAs::Pseudonym) => format!("column {p}"),
                (Some(p), PersonAs::Identity) => format!("identity number (counted only) in column {p}"),
                (Some(p), PersonAs::Derived(at, _)) => format!("{} (at the scan) in column {p}", at.describe()),
            },
            self.opt_outs.len(),
            self.unit.as_ref().map_or(String::new(), |(pos, _)| format!(", own unit only (input column {pos})"))
        )?;
        if self.from_cache.is_some() {
            write!(f, ", identity numbers from memory by row number")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for PseudonymiseExec {
    fn name(&self) -> &str {
        "PseudonymiseExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("PseudonymiseExec takes one child".into()));
        }
        Ok(Arc::new(
            PseudonymiseExec::new(
                children.swap_remove(0),
                self.schema.clone(),
                self.pnr_pos,
                self.person_out,
                self.unit.clone(),
                self.pseudonymiser.clone(),
                self.opt_outs.clone(),
            )
            .person_as(self.person_as.clone())
            .on_cluster(self.cluster_table.clone())
            .identities_from(self.from_cache.clone()),
        ))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = self.schema.clone();
        let (pnr_pos, person_out) = (self.pnr_pos, self.person_out);
        let unit = self.unit.clone();
        let pseudonymiser = self.pseudonymiser.clone();
        let opt_outs = self.opt_outs.clone();
        let out_schema = schema.clone();
        let person_as = self.person_as.clone();
        let from_cache = self.from_cache.clone();
        let stream = input.map(move |batch| {
            let (batch, kept) = match &from_cache {
                Some(cache) => cache.restore(&batch?, &opt_outs)?,
                None => (batch?, None),
            };
            let person = match &person_as {
                PersonAs::Pseudonym => Person::Pseudonym(&pseudonymiser),
                PersonAs::Identity => Person::Identity,
                PersonAs::Derived(at, _) => Person::Derived(at, from_cache.as_ref().is_some_and(|c| c.derives())),
            };
            transform(
                &batch,
                &out_schema,
                pnr_pos,
                person_out,
                unit.as_ref(),
                person,
                kept.map_or(Keep::Check(&opt_outs), Keep::Known),
            )
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// What `person` holds in the output of [`PseudonymiseExec`].
#[derive(Debug, Clone, Copy)]
enum Person<'a> {
    Pseudonym(&'a ProjectPseudonymiser),
    /// The identity number, for a plan that only counts persons.
    Identity,
    /// The record key or the pseudonym's bytes, for a plan that uses the
    /// person only through them; `true`: the batch holds them already (record
    /// keys from the node's memory, [`FromCache::derives`]).
    Derived(&'a AtTheScan, bool),
}

/// The rows whose persons have not opted out.
enum Keep<'a> {
    /// Looked up in the list, row by row.
    Check(&'a OptOutSet),
    /// Already known ([`crate::identities`]).
    Known(BooleanArray),
}

/// The per-batch work of [`PseudonymiseExec`].
fn transform(
    batch: &RecordBatch,
    schema: &SchemaRef,
    pnr_pos: usize,
    person_out: Option<usize>,
    unit: Option<&(usize, String)>,
    person: Person<'_>,
    opted_out: Keep<'_>,
) -> Result<RecordBatch> {
    let mut keep = match opted_out {
        Keep::Known(kept) => Some(kept),
        Keep::Check(opt_outs) if !opt_outs.is_empty() => Some(opt_out_mask(batch.column(pnr_pos).as_ref(), opt_outs)?),
        Keep::Check(_) => None,
    };
    if let Some((pos, unit)) = unit {
        // A row whose unit is null belongs to no unit: it is dropped.
        let own = string_mask(batch.column(*pos).as_ref(), "unit", |v| v == Some(unit.as_str()))?;
        keep = Some(match keep {
            Some(k) => and(&k, &own)?,
            None => own,
        });
    }
    let batch = match keep {
        Some(keep) if keep.true_count() != keep.len() => filter_record_batch(batch, &keep)?,
        _ => batch.clone(),
    };
    let columns = (0..schema.fields().len())
        .map(|i| {
            if Some(i) == person_out {
                match person {
                    Person::Pseudonym(p) => {
                        p.pseudonymise(batch.column(pnr_pos).as_ref()).map_err(DataFusionError::Execution)
                    }
                    Person::Identity => identity_as_utf8(batch.column(pnr_pos)),
                    Person::Derived(_, true) => Ok(batch.column(pnr_pos).clone()),
                    Person::Derived(at, false) => at.compute(batch.column(pnr_pos).as_ref()),
                }
            } else {
                Ok(batch.column(i).clone())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}

/// The identity column as `Utf8` (the type `person` is declared with). From
/// string views, a short value (up to 12 bytes: an identity number) is
/// copied out of its view, not looked up through the view's buffer.
fn identity_as_utf8(column: &ArrayRef) -> Result<ArrayRef> {
    let Some(views) = column.as_string_view_opt() else {
        return Ok(cast(column, &DataType::Utf8)?);
    };
    let mut bytes: Vec<u8> = Vec::with_capacity(views.len() * 12);
    let mut offsets: Vec<i32> = Vec::with_capacity(views.len() + 1);
    offsets.push(0);
    for (row, &view) in views.views().iter().enumerate() {
        let len = view as u32 as usize;
        if views.is_valid(row) {
            let inline = view.to_le_bytes();
            match len {
                // A constant length: copied from registers, not by `memcpy`.
                12 => bytes.extend_from_slice(&inline[4..16]),
                0..=11 => bytes.extend_from_slice(&inline[4..4 + len]),
                _ => bytes.extend_from_slice(views.value(row).as_bytes()),
            }
        }
        let Ok(end) = i32::try_from(bytes.len()) else {
            return Ok(cast(column, &DataType::Utf8)?);
        };
        offsets.push(end);
    }
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    Ok(Arc::new(StringArray::try_new(offsets, Buffer::from(bytes), views.nulls().cloned())?))
}

/// True for every row whose person has not opted out (a null or malformed
/// identity number is nobody's). A row with the value of the row before
/// takes its answer: a register sorted by person looks each person up once.
pub(crate) fn opt_out_mask(column: &dyn Array, opt_outs: &OptOutSet) -> Result<BooleanArray> {
    let (mut last, mut kept): (Option<&str>, bool) = (None, true);
    string_mask(column, "person", |v| {
        let v = v.unwrap_or_default();
        if !last.is_some_and(|l| same_value(l.as_bytes(), v.as_bytes())) {
            kept = pnr_key(v).is_none_or(|k| !opt_outs.contains(&k));
            last = Some(v);
        }
        kept
    })
}

/// `keep(value)` for every row of a string column, in order (`what` names
/// the column in errors).
fn string_mask<'a>(
    column: &'a dyn Array,
    what: &str,
    keep: impl FnMut(Option<&'a str>) -> bool,
) -> Result<BooleanArray> {
    fn mask<'a, A: StringArrayType<'a>>(values: A, mut keep: impl FnMut(Option<&'a str>) -> bool) -> BooleanArray {
        let bits = BooleanBuffer::collect_bool(values.len(), |row| {
            keep(if values.is_null(row) { None } else { Some(values.value(row)) })
        });
        BooleanArray::new(bits, None)
    }
    Ok(match column.data_type() {
        DataType::Utf8 => mask(column.as_string::<i32>(), keep),
        DataType::LargeUtf8 => mask(column.as_string::<i64>(), keep),
        DataType::Utf8View => mask(column.as_string_view(), keep),
        other => {
            return Err(DataFusionError::Execution(format!("the {what} column has type {other}, expected a string")));
        }
    })
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, LargeStringArray, StringViewArray};

    use super::*;

    #[test]
    fn opted_out_rows_are_dropped_in_runs_and_alone_in_every_string_type() {
        let opt_outs: OptOutSet = [194001010001u64, 194001010003].into_iter().collect();
        // (value, kept): runs of one person across an opt-out, the hyphenated
        // form, a null, malformed and empty values.
        let rows: &[(Option<&str>, bool)] = &[
            (Some("194001010001"), false),
            (Some("194001010001"), false),
            (Some("194001010002"), true),
            (Some("194001010002"), true),
            (Some("194001010001"), false),
            (Some("19400101-0003"), false),
            (Some("194001010003"), false),
            (None, true),
            (Some("19400101000x"), true),
            (Some(""), true),
            (Some("194001010004"), true),
        ];
        let values: Vec<Option<&str>> = rows.iter().map(|r| r.0).collect();
        let want: Vec<bool> = rows.iter().map(|r| r.1).collect();
        let columns: [ArrayRef; 3] = [
            Arc::new(StringArray::from(values.clone())),
            Arc::new(LargeStringArray::from(values.clone())),
            Arc::new(StringViewArray::from(values)),
        ];
        for column in columns {
            let mask = opt_out_mask(column.as_ref(), &opt_outs).expect("a string column");
            assert_eq!(mask.iter().map(|v| v.expect("no nulls")).collect::<Vec<_>>(), want, "{}", column.data_type());
        }
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        let err = opt_out_mask(numbers.as_ref(), &opt_outs).expect_err("not a string");
        assert!(err.to_string().contains("person column has type Int64"), "{err}");
    }

    #[test]
    fn identity_numbers_leave_string_views_as_the_same_strings() {
        // Short (inline) and long values, nulls, empty strings, and a slice.
        let values: Vec<Option<String>> = (0..100)
            .map(|i| match i % 7 {
                0 => None,
                1 => Some(String::new()),
                2 => Some(format!("a value longer than twelve bytes {i}")),
                _ => Some(format!("{:012}", 194001010000u64 + i)),
            })
            .collect();
        let views: ArrayRef = Arc::new(StringViewArray::from(values.clone()));
        let want: ArrayRef = Arc::new(StringArray::from(values.clone()));
        assert_eq!(identity_as_utf8(&views).expect("views").as_ref(), want.as_ref());
        let sliced = identity_as_utf8(&views.slice(3, 50)).expect("a slice");
        assert_eq!(sliced.as_ref(), want.slice(3, 50).as_ref());
        assert_eq!(identity_as_utf8(&want).expect("already Utf8").as_ref(), want.as_ref());
    }
}
