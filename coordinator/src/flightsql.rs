//! The coordinator's front door: Arrow Flight SQL over mutual TLS.
//!
//! Statement queries (planned once, at GetFlightInfo: the ticket carries a
//! random key to the plan kept here for a minute, redeemable once by the same
//! identity and project), prepared statements (planned once for their schema,
//! re-planned and re-checked when executed) and the catalogue calls
//! (`GetCatalogs`, `GetDbSchemas`, `GetTables`, `GetSqlInfo`). The caller is
//! the common name of its client certificate; the project is the
//! `x-samkor-project` header of each call.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{Action, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::{Stream, TryStreamExt};
use prost::Message;
use samkor_proto::pb::StatementHandle;
use samkor_proto::{headers, ticket, tls};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::disclosure;
use crate::engine::{CATALOG, Engine, Planned, QueryError};
use crate::executor::QueryScope;
use crate::policy::Touched;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use samkor_policies::audit::{AuditEntry, Decision};

/// A computed answer, disclosure control applied.
struct Answer {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    digest: String,
    summary: disclosure::Summary,
    /// Cells of near-identical populations released before in the project.
    flags: Vec<samkor_policies::differencing::Flag>,
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// The Flight SQL service.
#[derive(Clone)]
pub struct CoordinatorService {
    engine: Arc<Engine>,
    sql_info: Arc<SqlInfoData>,
    plans: Arc<PlanCache>,
}

/// A statement planned at GetFlightInfo, waiting for its DoGet.
struct PlannedStatement {
    identity: String,
    project: String,
    sql: String,
    query_id: String,
    span: tracing::Span,
    approval: Arc<samkor_policies::approval::Approval>,
    touched: Arc<std::sync::Mutex<Touched>>,
    planned: Planned,
    created: Instant,
}

/// How a DoGet starts: with the statement planned at GetFlightInfo, or planning afresh in a new scope.
enum Start {
    Planned(Box<PlannedStatement>),
    Fresh(QueryScope),
}

/// Statements planned at GetFlightInfo, by a random 128-bit key that the
/// ticket carries. Bounded ([`PlanCache::CAPACITY`], the oldest dropped
/// first) and expiring ([`PlanCache::TTL`]); a key is redeemed once, and only
/// by the identity and project that planned it, for the same SQL. A ticket
/// whose key is unknown, expired or someone else's is planned afresh, with
/// every check, as if it carried no key.
#[derive(Default)]
struct PlanCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 16], PlannedStatement>>,
}

impl PlanCache {
    const CAPACITY: usize = 256;
    const TTL: Duration = Duration::from_secs(60);

    fn insert(&self, statement: PlannedStatement) -> [u8; 16] {
        let mut key = [0u8; 16];
        if getrandom::fill(&mut key).is_err() {
            // No randomness: do not cache; the ticket plans again at DoGet.
            return [0u8; 16];
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, s| s.created.elapsed() < Self::TTL);
        while entries.len() >= Self::CAPACITY {
            let Some(oldest) = entries.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) else {
                break;
            };
            entries.remove(&oldest);
        }
        entries.insert(key, statement);
        key
    }

    /// The statement under `key` if `caller` planned it for `sql` and it has not expired.
    fn take(&self, key: &[u8], caller: &Caller, sql: &str) -> Option<PlannedStatement> {
        let key: [u8; 16] = key.try_into().ok()?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let s = entries.get(&key)?;
        if s.identity != caller.identity || s.project != caller.project || s.sql != sql {
            return None;
        }
        let s = entries.remove(&key)?;
        (s.created.elapsed() < Self::TTL).then_some(s)
    }
}

impl std::fmt::Debug for CoordinatorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorService").field("engine", &self.engine).finish_non_exhaustive()
    }
}

/// Who is asking, for which project.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: String,
    pub project: String,
    pub traceparent: Option<String>,
}

fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "samkor");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.build().expect("static SqlInfo is valid")
}

impl CoordinatorService {
    pub fn new(engine: Arc<Engine>) -> Self {
        CoordinatorService { engine, sql_info: Arc::new(sql_info()), plans: Arc::default() }
    }

    fn identity<T>(&self, request: &Request<T>) -> Result<String, Status> {
        tls::peer_identity(request)
            .ok_or_else(|| Status::unauthenticated("a client certificate issued by the federation CA is required"))
    }

    /// The caller and project of a call. `fallback_project` is the project
    /// recorded in a statement handle, used when a client does not repeat the header.
    fn caller<T>(&self, request: &Request<T>, fallback_project: Option<&str>) -> Result<Caller, Status> {
        let identity = self.identity(request)?;
        let header = request
            .metadata()
            .get(headers::PROJECT)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let project = match (header, fallback_project) {
            (Some(h), Some(f)) if h != f => {
                return Err(Status::invalid_argument(format!(
                    "the statement was prepared for project {f:?} but this call names project {h:?}"
                )));
            }
            (Some(h), _) => h,
            (None, Some(f)) => f.to_owned(),
            (None, None) => return Err(QueryError::NoProject.to_status()),
        };
        if !crate::direct::is_direct(&project) {
            ticket::validate_project(&project).map_err(|_| QueryError::BadProject(project.clone()).to_status())?;
        }
        let traceparent = request.metadata().get(headers::TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Caller { identity, project, traceparent })
    }

    fn scope(&self, caller: &Caller) -> QueryScope {
        let query_id = self.engine.query_id();
        let span = tracing::info_span!(
            "query",
            query_id = %query_id,
            project = %caller.project,
            identity = %caller.identity,
        );
        if let Some(tp) = &caller.traceparent {
            samkor_proto::trace::set_parent(&span, tp);
        }
        QueryScope {
            project: caller.project.clone(),
            query_id,
            traceparent: caller.traceparent.clone(),
            span,
            direct_unit: None,
        }
    }

    /// Plans `sql` for `caller` (the approval is checked too); a failure is
    /// recorded here, since such a query never reaches DoGet.
    async fn prepare(&self, caller: &Caller, sql: &str) -> Result<PlannedStatement, Status> {
        let scope = self.scope(caller);
        let query_id = scope.query_id.clone();
        let span = scope.span.clone();
        let touched = Arc::new(std::sync::Mutex::new(Touched::default()));
        let planned = async {
            let approval = self.engine.authorize(&caller.identity, &caller.project)?;
            let session = self.engine.session(scope, approval.clone(), touched.clone());
            let planned = self.engine.plan(&session, sql).await?;
            Ok::<_, QueryError>((approval, planned))
        }
        .instrument(span.clone())
        .await;
        match planned {
            Ok((approval, planned)) => Ok(PlannedStatement {
                identity: caller.identity.clone(),
                project: caller.project.clone(),
                sql: sql.to_owned(),
                query_id,
                span,
                approval,
                touched,
                planned,
                created: Instant::now(),
            }),
            Err(e) => {
                // Refused or failed at planning: the query never reaches DoGet, so record it here.
                let mut entry = AuditEntry::new(Decision::Failed, caller.identity.as_str(), query_id.as_str(), sql);
                entry.project = caller.project.clone();
                if let QueryError::Refused(r) = &e {
                    entry.decision = Decision::Refused;
                    entry.rule = r.rule.to_owned();
                }
                entry.reason = e.to_string();
                self.record(entry).map_err(|a| a.to_status())?;
                Err(e.to_status())
            }
        }
    }

    /// Plans `sql` to learn its result schema (the approval is checked too).
    async fn schema_of(&self, caller: &Caller, sql: &str) -> Result<Schema, Status> {
        Ok(self.prepare(caller, sql).await?.planned.schema.as_ref().clone())
    }

    /// Appends the decision on a query to the audit log; the answer is
    /// released only once its record is on disk.
    fn record(&self, entry: AuditEntry) -> Result<(), QueryError> {
        self.engine.audit().append(entry).map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, "audit append failed");
            QueryError::Audit(e.to_string())
        })
    }

    fn flight_info(
        &self,
        schema: &Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode the result schema: {e}")))
            .map(|i| i.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    /// Runs a query: checks the approval, computes the whole answer, records
    /// the decision durably in the audit log, then streams the answer.
    /// `prepared` is the statement planned at GetFlightInfo, if the ticket
    /// named one still valid for this caller; otherwise `sql` is planned here.
    async fn run(
        &self,
        caller: Caller,
        sql: String,
        prepared: Option<PlannedStatement>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (schema, batches) = self.answer_prepared(caller, sql, prepared).await?;
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter(batches.into_iter().map(Ok)))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }

    /// The released answer of `sql` for `caller`, exactly as a Flight SQL
    /// query gets it: approval, disclosure control, and the decision on
    /// disk in the audit log before it is returned. The web console's open
    /// comparisons come from here.
    pub async fn answer(&self, caller: Caller, sql: String) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
        self.answer_prepared(caller, sql, None).await
    }

    async fn answer_prepared(
        &self,
        caller: Caller,
        sql: String,
        prepared: Option<PlannedStatement>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
        let (query_id, span, touched, start) = match prepared {
            Some(p) => (p.query_id.clone(), p.span.clone(), p.touched.clone(), Start::Planned(Box::new(p))),
            None => {
                let scope = self.scope(&caller);
                let touched = Arc::new(std::sync::Mutex::new(Touched::default()));
                (scope.query_id.clone(), scope.span.clone(), touched, Start::Fresh(scope))
            }
        };
        let mut entry = AuditEntry::new(Decision::Accepted, caller.identity.as_str(), query_id.as_str(), sql.as_str());
        entry.project = caller.project.clone();
        // The project the approval names: for direct access `direct:<hospital>`, not the header's `direct`.
        let mut approved_project: Option<String> = None;
        let outcome: Result<Answer, QueryError> = async {
            let (approval, planned) = match start {
                Start::Planned(p) => (p.approval, p.planned),
                Start::Fresh(scope) => {
                    let approval = self.engine.authorize(&caller.identity, &caller.project)?;
                    approved_project = Some(approval.project.clone());
                    let session = self.engine.session(scope, approval.clone(), touched.clone());
                    let planned = self.engine.plan(&session, &sql).await?;
                    (approval, planned)
                }
            };
            approved_project = Some(approval.project.clone());
            let execution = self.engine.start(planned).await?;
            let schema = execution.stream.schema();
            let batches: Vec<RecordBatch> = execution.stream.try_collect().await.map_err(|e| self.engine.error(e))?;
            // Disclosure control on the whole answer, before it is recorded and released.
            let mut summary = disclosure::Summary::new(&execution.mode, &approval);
            let mut flags = Vec::new();
            let (schema, batches) = match &execution.mode {
                disclosure::Mode::Aggregate(layout) => {
                    let released = disclosure::release(&batches, &schema, layout, &approval)
                        .await
                        .map_err(|e| self.engine.error(e))?;
                    summary = released.summary;
                    flags = self.engine.differencing().check(
                        &approval.project,
                        &query_id,
                        approval.disclosure.min_cell_persons,
                        &released.prints,
                    );
                    (released.schema, released.batches)
                }
                disclosure::Mode::Microdata | disclosure::Mode::NoData | disclosure::Mode::Method => {
                    if matches!(execution.mode, disclosure::Mode::Method) {
                        summary.count_method_rows(&batches);
                    }
                    let schema = disclosure::annotate(&schema, &summary);
                    let batches = batches
                        .into_iter()
                        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| QueryError::Internal(e.to_string()))?;
                    (schema, batches)
                }
            };
            Ok(Answer { schema, batches, digest: execution.digest, summary, flags })
        }
        .instrument(span.clone())
        .await;
        if let Some(p) = approved_project {
            entry.project = p;
        }
        {
            let t = touched.lock().expect("touched lock");
            entry.registers = t.registers.iter().cloned().collect();
            entry.columns = t.columns.iter().cloned().collect();
        }
        let Answer { schema, batches, digest, summary, flags } = match outcome {
            Ok(answer) => answer,
            Err(e) => {
                span.in_scope(|| tracing::info!(sql = %sql, error = %e, "query not answered"));
                entry.decision = match &e {
                    QueryError::Refused(r) => {
                        entry.rule = r.rule.to_owned();
                        Decision::Refused
                    }
                    _ => Decision::Failed,
                };
                entry.reason = e.to_string();
                self.record(entry).map_err(|a| a.to_status())?;
                return Err(e.to_status());
            }
        };
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let suppressed = summary.cells_withheld();
        let columns = match summary.mode {
            "aggregate" | "method" => schema.fields().len().saturating_sub(1),
            _ => schema.fields().len(),
        };
        entry.plan_digest = digest;
        entry.rows_released = rows as u64;
        entry.cells_released = ((rows * columns) as u64).saturating_sub(suppressed);
        entry.cells_suppressed = suppressed;
        entry.disclosure = serde_json::to_value(&summary).unwrap_or_default();
        entry.differencing = flags;
        self.record(entry).map_err(|e| e.to_status())?;
        span.in_scope(|| tracing::info!(sql = %sql, rows, "query answered"));
        Ok((schema, batches))
    }

    fn one_batch(
        &self,
        schema: datafusion::arrow::datatypes::SchemaRef,
        batch: Result<datafusion::arrow::record_batch::RecordBatch, FlightError>,
    ) -> Response<DoGetStream> {
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async move { batch }))
            .map_err(Status::from);
        Response::new(Box::pin(stream))
    }

    /// The registers and tables the caller's project may see now, with only
    /// the approved columns: (register, table, schema).
    fn tables<T>(&self, request: &Request<T>) -> Result<Vec<(String, String, Arc<Schema>)>, Status> {
        let caller = self.caller(request, None)?;
        let approval = self.engine.authorize(&caller.identity, &caller.project).map_err(|e| e.to_status())?;
        let mut out = Vec::new();
        for node in &self.engine.federation().nodes {
            if let Some(cat) = node.catalogue() {
                for t in &cat.tables {
                    let Some(grant) = approval.grant(&format!("{}.{}", node.register, t.name)) else { continue };
                    let fields: Vec<_> =
                        t.schema.fields().iter().filter(|f| grant.has_column(f.name())).cloned().collect();
                    out.push((node.register.clone(), t.name.clone(), Arc::new(Schema::new(fields))));
                }
            }
        }
        Ok(out)
    }
}

fn encode_handle(sql: &str, project: &str) -> Vec<u8> {
    StatementHandle { sql: sql.to_owned(), project: project.to_owned(), plan: Default::default() }.encode_to_vec()
}

fn decode_handle(bytes: &[u8]) -> Result<StatementHandle, Status> {
    StatementHandle::decode(bytes)
        .map_err(|_| Status::invalid_argument("the statement handle is not one this coordinator issued"))
}

#[tonic::async_trait]
impl FlightSqlService for CoordinatorService {
    type FlightService = CoordinatorService;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request, None)?;
        // Planned once: the ticket names the plan kept here, DoGet runs it.
        let prepared = self.prepare(&caller, &query.query).await?;
        let schema = prepared.planned.schema.as_ref().clone();
        let key = self.plans.insert(prepared);
        let handle = StatementHandle { sql: query.query.clone(), project: caller.project.clone(), plan: key.to_vec() };
        let ticket = TicketStatementQuery { statement_handle: handle.encode_to_vec().into() }.as_any().encode_to_vec();
        Ok(Response::new(self.flight_info(&schema, ticket, request.into_inner())?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let handle = decode_handle(&ticket.statement_handle)?;
        let caller = self.caller(&request, Some(&handle.project))?;
        let prepared = self.plans.take(&handle.plan, &caller, &handle.sql).and_then(|p| {
            // The approval may have changed since planning: then plan again.
            let approval = self.engine.authorize(&caller.identity, &caller.project).ok()?;
            Arc::ptr_eq(&approval, &p.approval).then_some(p)
        });
        self.run(caller, handle.sql, prepared).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = self.caller(&request, None)?;
        let schema = self.schema_of(&caller, &query.query).await?;
        let IpcMessage(schema_bytes) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: encode_handle(&query.query, &caller.project).into(),
            dataset_schema: schema_bytes,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles carry their query; nothing is held server-side.
        self.identity(&request)?;
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = decode_handle(&cmd.prepared_statement_handle)?;
        let caller = self.caller(&request, Some(&handle.project))?;
        let schema = self.schema_of(&caller, &handle.sql).await?;
        let ticket = cmd.as_any().encode_to_vec();
        Ok(Response::new(self.flight_info(&schema, ticket, request.into_inner())?))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let handle = decode_handle(&cmd.prepared_statement_handle)?;
        let caller = self.caller(&request, Some(&handle.project))?;
        self.run(caller, handle.sql, None).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.identity(&request)?;
        let schema = query.into_builder().schema();
        Ok(Response::new(self.flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.identity(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        let schema = builder.schema();
        Ok(self.one_batch(schema, builder.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.identity(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(self.flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.identity(&request)?;
        let mut builder = query.into_builder();
        let mut registers: Vec<String> = self.tables(&request)?.into_iter().map(|(r, _, _)| r).collect();
        registers.dedup();
        for r in registers {
            builder.append(CATALOG, r);
        }
        let schema = builder.schema();
        Ok(self.one_batch(schema, builder.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.identity(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(self.flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.identity(&request)?;
        let mut builder = query.into_builder();
        for (register, table, schema) in self.tables(&request)? {
            builder.append(CATALOG, register, table, "TABLE", &schema).map_err(Status::from)?;
        }
        let schema = builder.schema();
        Ok(self.one_batch(schema, builder.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.identity(&request)?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        Ok(Response::new(self.flight_info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.identity(&request)?;
        let builder = query.into_builder(&self.sql_info);
        let schema = builder.schema();
        Ok(self.one_batch(schema, builder.build()))
    }

    async fn do_get_fallback(&self, _request: Request<Ticket>, message: Any) -> Result<Response<DoGetStream>, Status> {
        Err(Status::unimplemented(format!("samkor does not serve {}", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The Flight service type, for building a server.
pub type Service = arrow_flight::flight_service_server::FlightServiceServer<CoordinatorService>;
