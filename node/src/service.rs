//! The node's Arrow Flight service.
//!
//! * `do_action("catalogue")` → the encoded [`pb::Catalogue`](samkor_proto::pb::Catalogue).
//! * `do_get(Ticket = SubQuery)` → the sub-query's result as a stream of record batches.
//!
//! Every call must come over mutual TLS; a sub-query must name a project.
//! Every sub-query decision is appended to the node's audit log
//! ([`crate::audit`]) before the answer is given.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse,
    PollInfo, PutResult, SchemaResult, Ticket,
};
use datafusion::common::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SQLOptions;
use datafusion::sql::sqlparser::parser::ParserError;
use futures::TryStreamExt;
use futures::stream;
use prost::Message;
use samkor_proto::{CATALOGUE_ACTION, headers, ticket, tls};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use samkor_functions::by_person;
use samkor_policies::audit::AuditLog;

use crate::access::{self, Refusal, Scope};
use crate::audit::{AuditedStream, SubQueryRecord};
use crate::state::NodeState;
use crate::table::ColumnsRead;

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Flight service of one node.
#[derive(Debug, Clone)]
pub struct NodeService {
    state: Arc<NodeState>,
    audit: Arc<AuditLog>,
}

/// Why a sub-query did not start.
#[derive(Debug)]
enum NotStarted {
    /// The holder's decision (withheld column, table closed to direct access).
    Refused(Refusal),
    /// The query is wrong or the node cannot serve it now.
    Failed(Status),
}

impl NodeService {
    pub fn new(state: Arc<NodeState>, audit: Arc<AuditLog>) -> Self {
        NodeService { state, audit }
    }

    /// Records `entry`; if the log cannot take it, nothing may be released.
    fn record(&self, entry: samkor_policies::audit::AuditEntry) -> Result<(), Status> {
        crate::audit::append(&self.audit, entry).map_err(|e| {
            Status::unavailable(format!(
                "node {}: the audit log cannot record this sub-query, so nothing is released: {e}",
                self.state.register()
            ))
        })
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<String, Status> {
        tls::peer_identity(request)
            .ok_or_else(|| Status::unauthenticated("a client certificate issued by the federation CA is required"))
    }

    /// Plans and starts a sub-query; errors here concern the query itself and
    /// may be shown to the caller (they name tables and columns, not data).
    async fn start(
        &self,
        scope: &Scope,
        sql: &str,
        read: Arc<ColumnsRead>,
    ) -> Result<SendableRecordBatchStream, NotStarted> {
        let ctx = self.state.session(scope, Some(read)).map_err(|e| {
            tracing::error!(error = %e, "opt-out list unusable; refusing to serve");
            NotStarted::Failed(Status::unavailable(format!(
                "node {} cannot serve data right now: its opt-out list is unusable; the holder has been alerted",
                self.state.register()
            )))
        })?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = ctx.sql_with_options(sql, options).await.map_err(|e| plan_error(self.state.register(), e))?;
        let (state, plan) = df.into_parts();
        // Rows of tables holding one row per person: a cell's persons are its
        // rows (before the next rewrite, which may make the record keys columns).
        let distinct = crate::one_per_person::distinct_person_tables(&plan).await;
        let plan = crate::one_per_person::count_persons_by_rows(plan, &distinct)
            .map_err(|e| plan_error(self.state.register(), e))?;
        // Persons only counted: the identity numbers are counted, never pseudonymised or sent.
        let on_identity = self.state.identity_functions(scope);
        let plan = crate::counting::count_on_identity_numbers(plan, &on_identity)
            .map_err(|e| plan_error(self.state.register(), e))?;
        // Sums of doubles rounded once: the same however the rows are read and split.
        let plan = crate::exact_sums::exact_float_sums(plan).map_err(|e| plan_error(self.state.register(), e))?;
        let physical = state.create_physical_plan(&plan).await.map_err(|e| plan_error(self.state.register(), e))?;
        // Persons split by record key before partial aggregates over them:
        // partial states are summaries, not lists (samkor_functions::by_person).
        let by_person::Split { plan: physical, task, .. } =
            by_person::partition_persons(physical, &state).map_err(|e| plan_error(self.state.register(), e))?;
        tracing::debug!(plan = %datafusion::physical_plan::displayable(physical.as_ref()).indent(false), "sub-query planned");
        let stream = datafusion::physical_plan::execute_stream(physical, task)
            .map_err(|e| plan_error(self.state.register(), e))?;
        Ok(crate::wire::declared_types(stream))
    }

    /// The refusal of a sub-query, recorded, as the caller sees it.
    fn refuse(&self, record: SubQueryRecord, refusal: &Refusal) -> Status {
        let message = format!("node {}: {refusal}", self.state.register());
        tracing::info!(rule = refusal.rule(), "sub-query refused");
        if let Err(audit) = self.record(record.refused(refusal.rule(), refusal.to_string())) {
            return audit;
        }
        Status::permission_denied(message)
    }
}

/// A planning error: a holder's refusal, or about the query and safe to return.
fn plan_error(register: &str, e: DataFusionError) -> NotStarted {
    if let Some(r) = find_refusal(&e) {
        return NotStarted::Refused(r.clone());
    }
    NotStarted::Failed(plan_status(register, e))
}

fn plan_status(register: &str, e: DataFusionError) -> Status {
    let e = e.find_root();
    let text = match e {
        // Not `ParserError("…")`: DataFusion's message of a parser error is its debug form.
        DataFusionError::SQL(err, _) => err.to_string(),
        other => other.message().lines().next().unwrap_or_default().to_owned(),
    };
    match e {
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(format!(
            "node {register}: the sub-query exceeds the node's memory limit: {text}"
        )),
        DataFusionError::Internal(_) => Status::internal(format!("node {register}: internal error: {text}")),
        DataFusionError::SQL(err, _) if matches!(**err, ParserError::RecursionLimitExceeded) => {
            Status::invalid_argument(format!("node {register}: the query is nested too deeply"))
        }
        _ => Status::invalid_argument(format!("node {register}: {text}")),
    }
}

fn find_refusal(e: &DataFusionError) -> Option<&Refusal> {
    match e {
        DataFusionError::External(inner) => inner.downcast_ref(),
        DataFusionError::Context(_, inner) => find_refusal(inner),
        DataFusionError::Shared(inner) => find_refusal(inner),
        _ => None,
    }
}

/// An error while the sub-query runs. Execution errors can quote data values
/// (a failed cast prints the cell), so the caller gets the kind of failure and
/// the query id; the details stay in the node's log.
fn run_error(register: &str, query_id: &str, e: &DataFusionError) -> Status {
    tracing::warn!(query_id, error = %e, "sub-query failed while running");
    // A database source's own errors name the node, table and problem and never quote a value.
    if let DataFusionError::External(inner) = e.find_root()
        && let Some(pg) = inner.downcast_ref::<crate::source::postgres::PostgresError>()
    {
        return Status::unavailable(format!("{pg} (sub-query {query_id})"));
    }
    // The holder's cluster: node, table and worker are named, the cause stays in the log.
    if let DataFusionError::External(inner) = e.find_root()
        && let Some(cluster) = inner.downcast_ref::<crate::cluster::ClusterError>()
    {
        return Status::unavailable(format!("{cluster} (sub-query {query_id})"));
    }
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(format!(
            "node {register}: sub-query {query_id} exceeded the node's memory limit"
        )),
        // The query's mistake, not the node's: say so, without the value.
        DataFusionError::ArrowError(e, _)
            if matches!(
                e.as_ref(),
                arrow::error::ArrowError::CastError(_)
                    | arrow::error::ArrowError::ParseError(_)
                    | arrow::error::ArrowError::DivideByZero
            ) =>
        {
            Status::invalid_argument(format!(
                "node {register}: a value cannot be converted to the type the query asks for, or is divided by \
                 zero (the value is not shown); check the CASTs and the types compared (sub-query {query_id})"
            ))
        }
        _ => Status::internal(format!(
            "node {register}: sub-query {query_id} failed while running; the node's log has the details under that id"
        )),
    }
}

#[tonic::async_trait]
impl FlightService for NodeService {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;
    type DoExchangeStream = Stream<FlightData>;

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let traceparent =
            request.metadata().get(headers::TRACEPARENT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let register = self.state.register().to_owned();
        let sub = match ticket::decode(&request.get_ref().ticket) {
            Ok(sub) => sub,
            Err(e) => {
                let record = SubQueryRecord::new(&caller, "", "", &register);
                self.record(record.failed(format!("malformed ticket: {e}")))?;
                return Err(Status::invalid_argument(e.to_string()));
            }
        };
        let record = SubQueryRecord::new(&caller, &sub.query_id, &sub.sql, &register);
        let scope = match access::admit(&self.state.config.access, &register, &caller, &sub) {
            Ok(scope) => scope,
            Err(refusal) => {
                if refusal.rule() == "holder.caller" {
                    tracing::warn!(%caller, "sub-query from an identity that is not a coordinator refused");
                }
                return Err(self.refuse(record.project(sub.project.clone()), &refusal));
            }
        };
        let record = record.project(scope.audit_project());
        let span = tracing::info_span!(
            "node_execute",
            register = %register,
            query_id = %sub.query_id,
            project = %scope.audit_project(),
            caller = %caller,
            traceparent = %traceparent,
        );
        if !traceparent.is_empty() {
            samkor_proto::trace::set_parent(&span, &traceparent);
        }
        let read = Arc::new(ColumnsRead::default());
        let started = self.start(&scope, &sub.sql, read.clone()).instrument(span.clone()).await;
        let record = record.columns(read.list().into_iter().map(|c| format!("{register}.{c}")).collect());
        let stream = match started {
            Ok(stream) => stream,
            Err(NotStarted::Refused(refusal)) => return Err(span.in_scope(|| self.refuse(record, &refusal))),
            Err(NotStarted::Failed(status)) => {
                span.in_scope(|| tracing::info!(sql = %sub.sql, error = %status.message(), "sub-query not started"));
                self.record(record.failed(status.message()))?;
                return Err(status);
            }
        };
        // The decision is on disk before the first batch can leave.
        self.record(record.admitted())?;
        span.in_scope(|| tracing::info!(sql = %sub.sql, "sub-query started"));
        let query_id = sub.query_id.clone();
        let guard = self.state.track();
        let columns = stream.schema().fields().len();
        let batches = stream.map_err(move |e| run_error(&register, &query_id, &e));
        let audited = AuditedStream::new(batches, self.audit.clone(), record, columns);
        let flight = FlightDataEncoderBuilder::new()
            .build(audited.map_err(|status| FlightError::Tonic(Box::new(status))))
            .map_err(move |e| {
                let _running = &guard;
                match e {
                    FlightError::Tonic(status) => *status,
                    other => Status::internal(other.to_string()),
                }
            });
        Ok(Response::new(Box::pin(flight)))
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        self.caller(&request)?;
        let action = request.into_inner();
        if action.r#type != CATALOGUE_ACTION {
            return Err(Status::invalid_argument(format!(
                "unknown action {:?}; this node offers {CATALOGUE_ACTION:?}",
                action.r#type
            )));
        }
        let body = self.state.catalogue().encode_to_vec();
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(stream::once(async { Ok(result) }))))
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        self.caller(&request)?;
        let action = ActionType {
            r#type: CATALOGUE_ACTION.to_owned(),
            description: "The register's tables, columns, types and their documentation (samkor.v1.Catalogue)".into(),
        };
        Ok(Response::new(Box::pin(stream::once(async { Ok(action) }))))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(unsupported("handshake (authentication is by client certificate)"))
    }

    async fn list_flights(&self, _request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(unsupported("list_flights (use the catalogue action)"))
    }

    async fn get_flight_info(&self, _request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        Err(unsupported("get_flight_info (send a samkor.v1.SubQuery ticket to do_get)"))
    }

    async fn poll_flight_info(&self, _request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(unsupported("poll_flight_info"))
    }

    async fn get_schema(&self, _request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        Err(unsupported("get_schema (use the catalogue action)"))
    }

    async fn do_put(&self, _request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(unsupported("do_put (nodes are read-only)"))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(unsupported("do_exchange"))
    }
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!("a samkor node does not offer {what}"))
}
