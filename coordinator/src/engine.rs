//! Planning and running one federated query.
//!
//! ```text
//!  SQL ─▶ DataFusion logical plan ─▶ optimizer (DataFusion's rules, then the
//!         FederationOptimizerRule last, so each node gets its sub-plan with
//!         projections, filters, limits and aggregates already pushed down)
//!      ─▶ physical plan: one VirtualExecutionPlan per single-register sub-plan
//!         (SQL to that node), joins and merges at the coordinator
//! ```
//!
//! Each query gets its own session (its project, query id and trace context
//! travel with every sub-query); all sessions share one memory pool, so
//! concurrent queries share memory fairly and spill to disk before failing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::pushdown::PushdownRule;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, SchemaProvider};
use datafusion::common::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::optimizer::Optimizer;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use datafusion_federation::FederatedQueryPlanner;
use datafusion_federation::FederatedTableProviderAdaptor;
use datafusion_federation::sql::{RemoteTable, SQLFederationProvider, SQLTableSource};
use futures::Stream;
use samkor_proto::client::NodeError;

use crate::config::CoordinatorConfig;
use crate::executor::{NodeExecutor, QueryScope};
use crate::nodes::Federation;

/// The catalog name under which registers appear (`samkor.hip.operations`,
/// or simply `hip.operations`).
pub const CATALOG: &str = "samkor";

/// Why a query failed. The display is the one line the user sees.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no project given: set the x-samkor-project header (CLI: --project) to your approved project id")]
    NoProject,
    #[error("project id {0:?} is not valid: use letters, digits, '-', '_' or '.'")]
    BadProject(String),
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Refused(crate::policy::Refusal),
    #[error("the audit log cannot record this query, so nothing is released: {0}")]
    Audit(String),
    #[error("{0}")]
    Node(NodeError),
    #[error(
        "the nodes do not use the same pseudonym scheme ({0}), so the same person would have different pseudonyms in different registers; the holders must set the same `pseudonym_scheme` in every node config (docs/architecture.md, Pseudonyms)"
    )]
    SchemeMismatch(String),
    #[error(
        "the query ran longer than the coordinator's limit of {secs} s (query_timeout_secs); narrow it or ask the operator for a longer limit"
    )]
    Timeout { secs: u64 },
    #[error(
        "the query needs more memory than the coordinator's limit of {limit_mb} MiB (memory_limit_mb), even spilling to disk; aggregate more at the nodes or narrow the query"
    )]
    Memory { limit_mb: u64 },
    #[error("query cancelled")]
    Cancelled,
    #[error("internal error in the coordinator (please report): {0}")]
    Internal(String),
}

impl QueryError {
    /// The gRPC status for this error.
    pub fn to_status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            QueryError::NoProject | QueryError::BadProject(_) | QueryError::Plan(_) => {
                tonic::Status::invalid_argument(msg)
            }
            QueryError::Node(e) => match e {
                NodeError::Unreachable { .. } => tonic::Status::unavailable(msg),
                NodeError::Status { status, .. } => tonic::Status::new(status.code(), msg),
                NodeError::Address { .. } | NodeError::Protocol { .. } => tonic::Status::unavailable(msg),
            },
            QueryError::Refused(_) => tonic::Status::permission_denied(msg),
            QueryError::SchemeMismatch(_) => tonic::Status::failed_precondition(msg),
            QueryError::Audit(_) => tonic::Status::unavailable(msg),
            QueryError::Timeout { .. } => tonic::Status::deadline_exceeded(msg),
            QueryError::Memory { .. } => tonic::Status::resource_exhausted(msg),
            QueryError::Cancelled => tonic::Status::cancelled(msg),
            QueryError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("query timed out after {0} s")]
struct TimedOut(u64);

/// The query engine of the coordinator.
#[derive(Debug)]
pub struct Engine {
    federation: Arc<Federation>,
    approvals: samkor_policies::approval::ApprovalStore,
    audit: samkor_policies::audit::AuditLog,
    direct: crate::direct::DirectAccess,
    catalogued: AtomicU64,
    timeout: Duration,
    memory_limit_mb: u64,
    next_id: AtomicU64,
    /// Off only in benchmarks that measure its cost ([`Engine::measure_without_disclosure_control`]).
    disclosure_control: std::sync::atomic::AtomicBool,
    /// Recent answers per project, to flag near-identical populations (never to refuse).
    differencing: samkor_policies::differencing::Tracker,
    /// The engine itself, for the statistical methods' own federated steps (`crate::methods`).
    me: std::sync::Weak<Engine>,
    /// The sessions every query starts from, built once ([`Templates`]).
    templates: Templates,
}

/// The DataFusion states a query's sessions are cloned from. Building a
/// state registers every built-in function again (the builds at the
/// coordinator were 5 % of the CPU of a count of no rows); a clone copies
/// the registries. A clone shares its template's catalogue list, so
/// each query's session is given its own before anything is registered.
struct Templates {
    /// SQL planning: DataFusion's rules as the coordinator runs them and
    /// the user functions; each query adds its approval's rules.
    planning: datafusion::execution::SessionState,
    /// Execution: joins on pseudonym bytes, DataFusion's rules again and
    /// the pushdown to the nodes.
    execution: datafusion::execution::SessionState,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

impl Templates {
    fn new(runtime: &Arc<RuntimeEnv>) -> Templates {
        let build = |rules| {
            let state = SessionStateBuilder::new()
                .with_config(session_config())
                .with_runtime_env(runtime.clone())
                .with_default_features()
                .with_optimizer_rules(rules)
                .with_query_planner(Arc::new(FederatedQueryPlanner::new()))
                .build();
            let ctx = SessionContext::new_with_state(state);
            samkor_functions::register_user_functions(&ctx);
            ctx.state()
        };
        let mut execution: Vec<Arc<dyn datafusion::optimizer::OptimizerRule + Send + Sync>> =
            vec![Arc::new(crate::joins::JoinOnPseudonymBytes)];
        execution.extend(coordinator_rules());
        execution.push(Arc::new(PushdownRule));
        Templates { planning: build(coordinator_rules()), execution: build(execution) }
    }
}

/// The DataFusion settings of every coordinator session.
fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG, "public")
        .with_create_default_catalog_and_schema(false)
        .with_information_schema(false);
    config.options_mut().execution.parquet.schema_force_view_types = false;
    // A rule that fails (a refusal) fails the query; it is never skipped.
    config.options_mut().optimizer.skip_failed_rules = false;
    config
}

impl Engine {
    pub fn new(
        config: &CoordinatorConfig,
        federation: Arc<Federation>,
        approvals: samkor_policies::approval::ApprovalStore,
        audit: samkor_policies::audit::AuditLog,
        direct: crate::direct::DirectAccess,
    ) -> Result<Arc<Engine>, DataFusionError> {
        let limit = config.coordinator.memory_limit_mb;
        let mut disk = DiskManagerBuilder::default();
        if let Some(dir) = &config.coordinator.spill_dir {
            std::fs::create_dir_all(dir)?;
            disk = disk.with_mode(DiskManagerMode::Directories(vec![dir.clone()]));
        }
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new((limit as usize) * 1024 * 1024)))
            .with_disk_manager_builder(disk)
            .build_arc()?;
        Ok(Arc::new_cyclic(|me| Engine {
            me: me.clone(),
            federation,
            approvals,
            audit,
            direct,
            catalogued: AtomicU64::new(u64::MAX),
            timeout: config.query_timeout(),
            memory_limit_mb: limit,
            next_id: AtomicU64::new(1),
            disclosure_control: std::sync::atomic::AtomicBool::new(true),
            differencing: samkor_policies::differencing::Tracker::default(),
            templates: Templates::new(&runtime),
        }))
    }

    pub fn federation(&self) -> &Arc<Federation> {
        &self.federation
    }

    /// The differencing tracker of released aggregate cells.
    pub fn differencing(&self) -> &samkor_policies::differencing::Tracker {
        &self.differencing
    }

    /// Releases exact answers without disclosure control, so that a benchmark
    /// can measure what control costs in one run (`benches/federation.rs`).
    /// No configuration key or request reaches this: only code that holds the
    /// engine of an in-process coordinator.
    #[doc(hidden)]
    pub fn measure_without_disclosure_control(&self, off: bool) {
        self.disclosure_control.store(!off, Ordering::Relaxed);
    }

    /// A fresh query id.
    pub fn query_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        format!("q{t:x}-{n}")
    }

    /// The audit log.
    pub fn audit(&self) -> &samkor_policies::audit::AuditLog {
        &self.audit
    }

    /// The approval store.
    pub fn approvals(&self) -> &samkor_policies::approval::ApprovalStore {
        self.refresh_catalogue();
        &self.approvals
    }

    /// Validates approvals against the live catalogue once every node has
    /// answered (until then only their structure is checked: an approval is
    /// not dropped because a node is briefly down).
    fn refresh_catalogue(&self) {
        let known = self.federation.nodes.iter().filter(|n| n.catalogue().is_some()).count() as u64;
        if known < self.federation.nodes.len() as u64 || self.catalogued.swap(known, Ordering::SeqCst) == known {
            return;
        }
        let mut view = samkor_policies::approval::CatalogueView::default();
        for node in &self.federation.nodes {
            let Some(cat) = node.catalogue() else {
                continue;
            };
            for t in &cat.raw.tables {
                let columns = t
                    .columns
                    .iter()
                    .map(|c| {
                        let info = samkor_policies::approval::ColumnInfo {
                            data_type: c.data_type.clone(),
                            identifying: c.identifying,
                        };
                        (c.name.clone(), info)
                    })
                    .collect();
                view.tables.insert(format!("{}.{}", node.register, t.name), columns);
            }
        }
        self.approvals.set_catalogue(view);
    }

    /// Admits `identity` to `project` today, or says which rule refuses.
    pub fn authorize(
        &self,
        identity: &str,
        project: &str,
    ) -> Result<Arc<samkor_policies::approval::Approval>, QueryError> {
        if crate::direct::is_direct(project) {
            let defaults = self.approvals.defaults();
            return self.direct.authorize(identity, project, &self.federation, defaults).map_err(QueryError::Refused);
        }
        let approval = self.approvals().get(project).map_err(|e| {
            tracing::error!(error = %e, "approvals unreadable");
            QueryError::Internal(format!("the approvals cannot be read: {e}"))
        })?;
        let today = chrono::Utc::now().date_naive();
        crate::policy::admit(approval, identity, project, today).map_err(QueryError::Refused)
    }

    /// The session one query is planned in: the registers whose nodes have
    /// answered, each as a schema of federated tables bound to this query,
    /// with the project's approval enforced by the optimizer.
    pub fn session(
        &self,
        scope: QueryScope,
        approval: Arc<samkor_policies::approval::Approval>,
        touched: Arc<std::sync::Mutex<crate::policy::Touched>>,
    ) -> Session {
        let session = self.session_without_methods(scope.clone(), approval.clone(), touched.clone());
        let env = crate::methods::MethodEnv::new(self.me.clone(), scope, approval, touched);
        crate::methods::register(&session.ctx, env);
        session
    }

    /// A session without the statistical methods: the one their own steps run in.
    pub(crate) fn session_without_methods(
        &self,
        scope: QueryScope,
        approval: Arc<samkor_policies::approval::Approval>,
        touched: Arc<std::sync::Mutex<crate::policy::Touched>>,
    ) -> Session {
        let direct_unit = crate::direct::unit_of(&approval).map(str::to_owned);
        let scope = Arc::new(QueryScope { direct_unit, ..scope });
        let mut state = self.templates.planning.clone();
        state.register_catalog_list(Arc::new(MemoryCatalogProviderList::new()));
        let ctx = SessionContext::new_with_state(state);
        if let Some(rule) = crate::direct::rule_for(&approval) {
            ctx.add_optimizer_rule(rule);
        }
        ctx.add_optimizer_rule(Arc::new(crate::policy::ApprovalRule::new(approval.clone(), touched)));
        let catalog = MemoryCatalogProvider::new();
        let mut facts = crate::disclosure::CatalogueFacts::new();
        for node in &self.federation.nodes {
            let Some(cat) = node.catalogue() else {
                let schema = Arc::new(UnavailableRegister {
                    register: node.register.clone(),
                    addr: node.client.addr().to_owned(),
                });
                catalog.register_schema(&node.register, schema).expect("memory catalog accepts schemas");
                continue;
            };
            for t in &cat.raw.tables {
                let columns = t
                    .columns
                    .iter()
                    .map(|c| {
                        let f = crate::disclosure::ColumnFacts {
                            person: c.person,
                            identifying: c.identifying,
                            magnitude: !c.unit.is_empty(),
                        };
                        (c.name.clone(), f)
                    })
                    .collect();
                facts.insert(format!("{}.{}", node.register, t.name), columns);
            }
            let executor = Arc::new(NodeExecutor::new(node.clone(), scope.clone()));
            let provider = Arc::new(SQLFederationProvider::new(executor));
            let schema: Arc<dyn SchemaProvider> = Arc::new(RegisterSchema::new(&node.register, provider, &cat.tables));
            catalog.register_schema(&node.register, schema).expect("memory catalog accepts schemas");
        }
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        Session { ctx, approval, facts }
    }

    /// Plans `sql` for `project`. Only queries: no DDL, DML or session statements.
    ///
    /// ```text
    ///  SQL ─▶ DataFusion's rules + ApprovalRule (columns, rows, tables)
    ///      ─▶ disclosure::control (output kind, hidden person counts)
    ///      ─▶ JoinOnPseudonymBytes + DataFusion's rules + PushdownRule at
    ///         execution (node sub-queries)
    /// ```
    pub async fn plan(&self, session: &Session, sql: &str) -> Result<Planned, QueryError> {
        self.plan_with(session, sql, true).await
    }

    /// Plans one step of a statistical method whose numbers stay in the
    /// coordinator (`crate::methods`): the approval and the guards against
    /// errors that depend on data apply, disclosure control does not (the
    /// method applies its own rules to what it releases).
    pub(crate) async fn plan_internal(&self, session: &Session, sql: &str) -> Result<Planned, QueryError> {
        self.plan_with(session, sql, false).await
    }

    async fn plan_with(&self, session: &Session, sql: &str, released: bool) -> Result<Planned, QueryError> {
        if let Some(schemes) = self.federation.pseudonym_scheme_conflict() {
            return Err(QueryError::SchemeMismatch(schemes));
        }
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = session
            .ctx
            .sql_with_options(sql, options)
            .await
            .map_err(|e| plan_error(e, sql, &session.approval, self.memory_limit_mb))?;
        // Optimizing applies the approval: a refusal surfaces here, before any node is asked.
        let approved = session.ctx.state().optimize(df.logical_plan()).map_err(|e| self.error(e))?;
        // No expression may fail on a data value: folded, guarded or refused here (crate::infallible).
        let approved = crate::infallible::make_infallible(approved).map_err(|e| self.error(e))?;
        // The answer's schema as planned (a TRY_CAST makes a column nullable).
        let planned_schema = Arc::new(approved.schema().as_arrow().clone());
        let context = crate::disclosure::Context { approval: &session.approval, catalogue: &session.facts };
        let methods = crate::methods::Scans::of(&approved);
        let controlled = if methods.methods > 0 {
            // Statistical methods release only numbers they have put through
            // disclosure control themselves; the query around them may not read registers.
            if methods.registers > 0 {
                return Err(QueryError::Refused(crate::methods::MethodRule::Mixed.refusal(
                    "a statistical method's table cannot be combined with register tables in one query; put the register query inside the method's first argument",
                )));
            }
            crate::disclosure::Controlled { plan: approved, mode: crate::disclosure::Mode::Method }
        } else if released && self.disclosure_control.load(Ordering::Relaxed) {
            crate::disclosure::control(approved, &context).map_err(|e| self.error(e))?
        } else {
            crate::disclosure::Controlled { plan: approved, mode: crate::disclosure::Mode::NoData }
        };
        // Joins on pseudonym bytes first, so that DataFusion's rules drop the
        // text no longer read before the pushdown sends the sides to nodes
        // (the execution template's rules), in this query's catalogue.
        let mut state = self.templates.execution.clone();
        state.register_catalog_list(session.ctx.state_ref().read().catalog_list().clone());
        state.mark_start_execution();
        let schema = Arc::new(crate::disclosure::released_schema(&planned_schema, &controlled.mode, &session.approval));
        Ok(Planned { df: DataFrame::new(state, controlled.plan), mode: controlled.mode, schema })
    }

    /// Plans and starts `sql`; the stream ends with an error if the query
    /// outlives the configured timeout. Dropping the stream cancels the node
    /// sub-queries.
    pub async fn execute(&self, session: &Session, sql: &str) -> Result<Execution, QueryError> {
        let planned = self.plan(session, sql).await?;
        self.start(planned).await
    }

    /// Starts a planned query (see [`Engine::execute`]).
    pub async fn start(&self, planned: Planned) -> Result<Execution, QueryError> {
        let digest = {
            use sha2::Digest;
            let text = planned.df.logical_plan().display_indent().to_string();
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let stream = tokio::time::timeout_at(deadline, planned.df.execute_stream())
            .await
            .map_err(|_| QueryError::Timeout { secs: self.timeout.as_secs() })?
            .map_err(|e| self.error(e))?;
        let stream: SendableRecordBatchStream = Box::pin(Deadline {
            schema: stream.schema(),
            inner: stream,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            secs: self.timeout.as_secs(),
            done: false,
        });
        Ok(Execution { stream, digest, mode: planned.mode })
    }

    /// Classifies a DataFusion error for the user.
    pub fn error(&self, e: DataFusionError) -> QueryError {
        classify(e, self.memory_limit_mb)
    }
}

/// A query error as the DataFusion error [`classify`] turns back into it:
/// the steps of a statistical method run inside the outer query's plan.
pub(crate) fn into_datafusion(e: QueryError) -> DataFusionError {
    match e {
        QueryError::Refused(r) => crate::policy::policy_error(r),
        QueryError::Node(n) => DataFusionError::External(Box::new(n)),
        QueryError::Timeout { secs } => DataFusionError::External(Box::new(TimedOut(secs))),
        QueryError::Memory { limit_mb } => {
            DataFusionError::ResourcesExhausted(format!("a method's step needs more than {limit_mb} MiB"))
        }
        QueryError::Plan(m) => DataFusionError::Plan(m),
        QueryError::Internal(m) => DataFusionError::Internal(m),
        other => DataFusionError::Execution(other.to_string()),
    }
}

/// DataFusion's optimizer rules as the coordinator runs them (twice: before
/// and after disclosure control), without common subexpression elimination:
/// its `__common_expr_N` columns travel in node SQL, where the node's own
/// elimination reuses the same names for other expressions.
///
/// Nor the rewrite of a lone `count(DISTINCT x)` into a `GROUP BY x` below
/// the aggregate: disclosure control would see one row per person and could
/// only bound a cell's persons from below (everything merged and withheld);
/// it counts distinct persons itself. The nodes keep the rule.
pub(crate) fn coordinator_rules() -> Vec<Arc<dyn datafusion::optimizer::OptimizerRule + Send + Sync>> {
    const SKIPPED: [&str; 2] = ["common_sub_expression_eliminate", "single_distinct_aggregation_to_group_by"];
    Optimizer::new().rules.into_iter().filter(|r| !SKIPPED.contains(&r.name())).collect()
}

/// Finds our own error types inside DataFusion's wrappers.
pub fn classify(e: DataFusionError, memory_limit_mb: u64) -> QueryError {
    fn find(e: &DataFusionError) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match e {
            DataFusionError::External(inner) => Some(inner.as_ref()),
            DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => find(inner),
            DataFusionError::Shared(inner) => find(inner),
            DataFusionError::Collection(errors) => errors.first().and_then(find),
            DataFusionError::ArrowError(inner, _) => match inner.as_ref() {
                datafusion::arrow::error::ArrowError::ExternalError(x) => Some(x.as_ref()),
                _ => None,
            },
            _ => None,
        }
    }
    if let Some(inner) = find(&e) {
        if let Some(node) = inner.downcast_ref::<NodeError>() {
            return QueryError::Node(clone_node_error(node));
        }
        if let Some(r) = inner.downcast_ref::<crate::policy::Refusal>() {
            return QueryError::Refused(r.clone());
        }
        if let Some(t) = inner.downcast_ref::<TimedOut>() {
            return QueryError::Timeout { secs: t.0 };
        }
        if let Some(df) = inner.downcast_ref::<DataFusionError>() {
            return classify(df.clone_shallow(), memory_limit_mb);
        }
    }
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => QueryError::Memory { limit_mb: memory_limit_mb },
        DataFusionError::Internal(m) => QueryError::Internal(m.clone()),
        _ => QueryError::Plan(user_message(&e)),
    }
}

/// The one line a user reads for a mistake in the query: DataFusion's
/// message without Rust debug formatting, backtraces or line breaks, with
/// the position in the SQL where DataFusion knows it. Never a data value:
/// cast and parse errors of values are named, not quoted.
pub fn user_message(e: &DataFusionError) -> String {
    use datafusion::arrow::error::ArrowError;
    use datafusion::common::SchemaError;
    use datafusion::sql::sqlparser::parser::ParserError;
    let text = match e.find_root() {
        DataFusionError::SQL(parser, _) => match parser.as_ref() {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => format!("SQL syntax error: {m}"),
            ParserError::RecursionLimitExceeded => "SQL syntax error: the query is nested too deeply".to_owned(),
        },
        DataFusionError::SchemaError(schema, _) => match schema.as_ref() {
            SchemaError::FieldNotFound { field, .. } => format!("column {} not found", field.quoted_flat_name()),
            other => other.to_string(),
        },
        DataFusionError::ArrowError(arrow, _) => match arrow.as_ref() {
            ArrowError::CastError(_) | ArrowError::ParseError(_) => {
                "a value cannot be converted to the type the query \
                asks for (the value is not shown); check the CASTs and the types compared"
                    .to_owned()
            }
            ArrowError::DivideByZero => "division by zero".to_owned(),
            other => other.to_string(),
        },
        DataFusionError::NotImplemented(m) => format!("not supported: {m}"),
        DataFusionError::Plan(m) => match unknown_table(m) {
            Some(table) => format!("table {table} not found"),
            None => m.clone(),
        },
        other => other.message().into_owned(),
    };
    with_position(e, one_line(&text))
}

/// Adds where in the SQL the error is, when DataFusion knows and the message does not say.
fn with_position(e: &DataFusionError, line: String) -> String {
    with_position_of(e.diagnostic().and_then(|d| d.span).filter(|s| s.start.line > 0).map(|s| s.start), line)
}

fn with_position_of(at: Option<datafusion::common::Location>, mut line: String) -> String {
    if let Some(at) = at
        && !line.contains("Line: ")
    {
        line.push_str(&format!(" at Line: {}, Column: {}", at.line, at.column));
    }
    line
}

/// Backtraces cut off, whitespace (and line breaks) collapsed.
fn one_line(text: &str) -> String {
    let text = text.split(DataFusionError::BACK_TRACE_SEP).next().unwrap_or_default();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The table of DataFusion's "table 'samkor.hip.x' not found", as the user names it (`hip.x`).
fn unknown_table(message: &str) -> Option<&str> {
    let name = message.strip_prefix("table '")?.split_once("' not found")?.0;
    let name = name.strip_prefix(CATALOG).and_then(|n| n.strip_prefix('.')).unwrap_or(name);
    Some(name.strip_prefix("public.").unwrap_or(name))
}

/// The tables behind the aliases of `sql` (`o` → `hip.operations`); empty if it does not parse.
fn table_aliases(sql: &str) -> std::collections::HashMap<String, String> {
    use datafusion::sql::sqlparser::ast::{TableFactor, Visit, Visitor};
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    #[derive(Default)]
    struct Aliases(std::collections::HashMap<String, String>);
    impl Visitor for Aliases {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> std::ops::ControlFlow<()> {
            if let TableFactor::Table { name, alias: Some(alias), .. } = t {
                let name = name.to_string();
                let name = name.strip_prefix(&format!("{CATALOG}.")).unwrap_or(&name).to_owned();
                self.0.insert(alias.name.value.clone(), name);
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut aliases = Aliases::default();
    if let Ok(statements) = Parser::parse_sql(&GenericDialect {}, sql) {
        let _ = statements.visit(&mut aliases);
    }
    aliases.0
}

/// A table as the user names it: `hip.operations`, not `samkor.hip.operations`.
fn user_table(r: &datafusion::common::TableReference) -> String {
    match r {
        datafusion::common::TableReference::Full { schema, table, .. } => format!("{schema}.{table}"),
        other => other.to_string(),
    }
}

/// A planning error with what the project may use instead: its tables for
/// an unknown table, the columns for an unknown column. Only names the
/// approval grants are shown, as `GetTables` shows them.
fn plan_error(
    e: DataFusionError,
    sql: &str,
    approval: &samkor_policies::approval::Approval,
    memory_limit_mb: u64,
) -> QueryError {
    use datafusion::common::SchemaError;
    let position = e.diagnostic().and_then(|d| d.span).filter(|s| s.start.line > 0).map(|s| s.start);
    let hint = match e.find_root() {
        DataFusionError::SchemaError(schema, _) => match schema.as_ref() {
            SchemaError::FieldNotFound { field, valid_fields } => {
                let aliases = table_aliases(sql);
                let granted = |c: &datafusion::common::Column| {
                    let table = c.relation.as_ref().map(|r| {
                        aliases
                            .get(r.table())
                            .cloned()
                            .filter(|_| r.schema().is_none())
                            .unwrap_or_else(|| user_table(r))
                    });
                    match table.as_deref().and_then(|t| approval.grant(t)) {
                        Some(grant) => grant.has_column(&c.name),
                        // A derived table or CTE: names the approval grants somewhere.
                        None => approval.tables.iter().any(|g| g.has_column(&c.name)),
                    }
                };
                let shown: Vec<_> = valid_fields.iter().filter(|c| granted(c)).collect();
                let relations: std::collections::BTreeSet<String> =
                    shown.iter().filter_map(|c| c.relation.as_ref().map(user_table)).collect();
                let (place, names): (String, Vec<String>) = if relations.len() <= 1 {
                    let place = relations.first().filter(|t| t.contains('.')).map(|t| format!(" in {t}"));
                    (place.unwrap_or_default(), shown.iter().map(|c| c.name.clone()).collect())
                } else {
                    let qualified = |c: &&datafusion::common::Column| {
                        c.relation.as_ref().map_or(c.name.clone(), |r| format!("{}.{}", user_table(r), c.name))
                    };
                    (String::new(), shown.iter().map(qualified).collect())
                };
                let mut m = with_position_of(position, format!("column {} not found{place}", field.quoted_flat_name()));
                if !names.is_empty() {
                    m.push_str(&format!("; valid columns: {}", names.join(", ")));
                }
                Some(m)
            }
            _ => None,
        },
        DataFusionError::Plan(m) => unknown_table(m).map(|t| {
            let mut tables: Vec<String> = approval.tables.iter().map(|g| g.qualified_name()).collect();
            tables.sort();
            let head = with_position_of(position, format!("table {t} not found"));
            format!("{head}; the tables of project {}: {}", approval.project, tables.join(", "))
        }),
        _ => None,
    };
    match (hint, classify(e, memory_limit_mb)) {
        (Some(m), QueryError::Plan(_)) => QueryError::Plan(m),
        (_, other) => other,
    }
}

fn clone_node_error(e: &NodeError) -> NodeError {
    match e {
        NodeError::Address { node, addr, reason } => {
            NodeError::Address { node: node.clone(), addr: addr.clone(), reason: reason.clone() }
        }
        NodeError::Unreachable { node, addr, reason } => {
            NodeError::Unreachable { node: node.clone(), addr: addr.clone(), reason: reason.clone() }
        }
        NodeError::Status { node, status } => NodeError::Status {
            node: node.clone(),
            status: Box::new(tonic::Status::new(status.code(), status.message())),
        },
        NodeError::Protocol { node, reason } => NodeError::Protocol { node: node.clone(), reason: reason.clone() },
    }
}

trait CloneShallow {
    fn clone_shallow(&self) -> DataFusionError;
}

impl CloneShallow for DataFusionError {
    fn clone_shallow(&self) -> DataFusionError {
        match self.find_root() {
            DataFusionError::ResourcesExhausted(m) => DataFusionError::ResourcesExhausted(m.clone()),
            DataFusionError::Internal(m) => DataFusionError::Internal(m.clone()),
            other => DataFusionError::Plan(user_message(other)),
        }
    }
}

/// One query's planning session: its catalogue, approval and the catalogue's disclosure facts.
pub struct Session {
    pub ctx: SessionContext,
    pub approval: Arc<samkor_policies::approval::Approval>,
    pub facts: crate::disclosure::CatalogueFacts,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("project", &self.approval.project).finish_non_exhaustive()
    }
}

/// A planned query: the plan to run, how its answer is released and the schema the client sees.
#[derive(Debug)]
pub struct Planned {
    pub df: DataFrame,
    pub mode: crate::disclosure::Mode,
    pub schema: SchemaRef,
}

/// A running query.
pub struct Execution {
    pub stream: SendableRecordBatchStream,
    pub digest: String,
    pub mode: crate::disclosure::Mode,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execution").field("digest", &self.digest).field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// The tables of one register, bound to one query. Each table keeps its
/// coordinator name (`hip.operations`) as its remote name too, so the SQL sent
/// to a node uses the names the optimizer's aliases were built from.
#[derive(Debug)]
struct RegisterSchema {
    tables: Vec<(String, Arc<SQLTableSource>)>,
}

impl RegisterSchema {
    fn new(register: &str, provider: Arc<SQLFederationProvider>, tables: &[crate::nodes::RemoteTableInfo]) -> Self {
        let tables = tables
            .iter()
            .filter_map(|t| {
                let reference = format!("{register}.{}", t.name).as_str().try_into().ok()?;
                let remote = Arc::new(RemoteTable::new(reference, t.schema.clone()));
                Some((t.name.clone(), Arc::new(SQLTableSource::new_with_table(provider.clone(), remote))))
            })
            .collect();
        RegisterSchema { tables }
    }
}

#[async_trait::async_trait]
impl SchemaProvider for RegisterSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.iter().map(|(n, _)| n.clone()).collect()
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        Ok(self.tables.iter().find(|(n, _)| n == name).map(|(_, s)| {
            Arc::new(FederatedTableProviderAdaptor::new(s.clone())) as Arc<dyn datafusion::catalog::TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.iter().any(|(n, _)| n == name)
    }
}

/// The schema of a register whose node has not answered yet: naming one of
/// its tables says so, instead of "table not found".
#[derive(Debug)]
struct UnavailableRegister {
    register: String,
    addr: String,
}

#[async_trait::async_trait]
impl SchemaProvider for UnavailableRegister {
    fn table_names(&self) -> Vec<String> {
        Vec::new()
    }

    async fn table(
        &self,
        _name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        Err(DataFusionError::External(Box::new(NodeError::Unreachable {
            node: self.register.clone(),
            addr: self.addr.clone(),
            reason: "it has not answered since the coordinator started (retrying in the background)".into(),
        })))
    }

    fn table_exist(&self, _name: &str) -> bool {
        true
    }
}

/// Ends a query stream with a timeout error at the deadline.
struct Deadline {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    sleep: Pin<Box<tokio::time::Sleep>>,
    secs: u64,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<RecordBatch, DataFusionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(TimedOut(self.secs))))));
        }
        self.inner.as_mut().poll_next(cx)
    }
}

impl RecordBatchStream for Deadline {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::{Column, Diagnostic, Location, SchemaError, Span};
    use datafusion::sql::sqlparser::parser::ParserError;

    fn plan_message(e: DataFusionError) -> String {
        match classify(e, 1) {
            QueryError::Plan(m) => m,
            other => panic!("not a planning error: {other:?}"),
        }
    }

    #[test]
    fn parser_errors_read_as_text_with_their_position() {
        let e = DataFusionError::SQL(
            Box::new(ParserError::ParserError("Expected: an SQL statement, found: SELEC at Line: 1, Column: 1".into())),
            Some(String::new()),
        );
        assert_eq!(plan_message(e), "SQL syntax error: Expected: an SQL statement, found: SELEC at Line: 1, Column: 1");
        let deep = DataFusionError::SQL(Box::new(ParserError::RecursionLimitExceeded), None);
        assert_eq!(plan_message(deep), "SQL syntax error: the query is nested too deeply");
    }

    #[test]
    fn other_kinds_are_one_line_without_debug_formatting() {
        let missing = DataFusionError::SchemaError(
            Box::new(SchemaError::FieldNotFound {
                field: Box::new(Column::new(Some("o"), "nope")),
                valid_fields: vec![Column::new(Some("o"), "person")],
            }),
            Box::new(Some("\n\nbacktrace: at somewhere".into())),
        );
        assert_eq!(plan_message(missing), "column o.nope not found");
        let context = DataFusionError::Context(
            "while planning".into(),
            Box::new(DataFusionError::NotImplemented("GROUPING SETS with\nthis shape".into())),
        );
        assert_eq!(plan_message(context), "not supported: GROUPING SETS with this shape");
        let at = |line, column| Location { line, column };
        let diagnosed = DataFusionError::Plan("table 'samkor.hip.nope' not found".into())
            .with_diagnostic(Diagnostic::new_error("table not found", Some(Span::new(at(2, 6), at(2, 13)))));
        assert_eq!(plan_message(diagnosed), "table hip.nope not found at Line: 2, Column: 6");
        let cast = DataFusionError::ArrowError(
            Box::new(datafusion::arrow::error::ArrowError::CastError("Cannot cast string 'Mölndal' to Int32".into())),
            None,
        );
        let text = plan_message(cast);
        assert!(text.contains("value is not shown") && !text.contains("Mölndal"), "{text}");
    }

    #[test]
    fn aliases_name_their_tables() {
        let aliases =
            table_aliases("SELECT o.x FROM hip.operations o JOIN samkor.dors.deaths AS d ON d.person = o.person");
        assert_eq!(aliases.get("o").map(String::as_str), Some("hip.operations"));
        assert_eq!(aliases.get("d").map(String::as_str), Some("dors.deaths"));
        assert!(table_aliases("SELEC").is_empty());
    }
}
