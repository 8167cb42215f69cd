//! The node's Arrow Flight service.
//!
//! * `do_action("catalogue")` → the encoded [`pb::Catalogue`](samkor_proto::pb::Catalogue).
//! * `do_get(Ticket = SubQuery)` → the sub-query's result as a stream of record batches.
//!
//! Every call must come over mutual TLS; a sub-query must name a project.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use datafusion::common::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::prelude::SQLOptions;
use futures::stream;
use futures::TryStreamExt;
use prost::Message;
use samkor_proto::{CATALOGUE_ACTION, headers, ticket, tls};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::state::NodeState;

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Flight service of one node.
#[derive(Debug, Clone)]
pub struct NodeService {
    state: Arc<NodeState>,
}

impl NodeService {
    pub fn new(state: Arc<NodeState>) -> Self {
        NodeService { state }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<String, Status> {
        tls::peer_identity(request)
            .ok_or_else(|| Status::unauthenticated("a client certificate issued by the federation CA is required"))
    }

    /// Plans and starts a sub-query; errors here concern the query itself and
    /// may be shown to the caller (they name tables and columns, not data).
    async fn start(&self, project: &str, sql: &str) -> Result<SendableRecordBatchStream, Status> {
        let ctx = self.state.session(project).map_err(|e| {
            tracing::error!(error = %e, "opt-out list unusable; refusing to serve");
            Status::unavailable(format!(
                "node {} cannot serve data right now: its opt-out list is unusable; the holder has been alerted",
                self.state.register()
            ))
        })?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = ctx.sql_with_options(sql, options).await.map_err(|e| plan_error(self.state.register(), e))?;
        df.execute_stream().await.map_err(|e| plan_error(self.state.register(), e))
    }
}

/// A planning error: about the query, safe to return.
fn plan_error(register: &str, e: DataFusionError) -> Status {
    if let Some(w) = find_withheld(&e) {
        return Status::permission_denied(format!("node {register}: {w}"));
    }
    let e = e.find_root();
    let text = e.message().lines().next().unwrap_or_default().to_owned();
    match e {
        DataFusionError::ResourcesExhausted(_) => {
            Status::resource_exhausted(format!("node {register}: the sub-query exceeds the node's memory limit: {text}"))
        }
        DataFusionError::Internal(_) => Status::internal(format!("node {register}: internal error: {text}")),
        DataFusionError::SQL(err, _) if matches!(**err, ParserError::RecursionLimitExceeded) => {
            Status::invalid_argument(format!("node {register}: the query is nested too deeply"))
        }
        _ => Status::invalid_argument(format!("node {register}: {text}")),
    }
}

fn find_withheld(e: &DataFusionError) -> Option<&crate::table::Withheld> {
    match e {
        DataFusionError::External(inner) => inner.downcast_ref(),
        DataFusionError::Context(_, inner) => find_withheld(inner),
        DataFusionError::Shared(inner) => find_withheld(inner),
        _ => None,
    }
}

/// An error while the sub-query runs. Execution errors can quote data values
/// (a failed cast prints the cell), so the caller gets the kind of failure and
/// the query id; the details stay in the node's log.
fn run_error(register: &str, query_id: &str, e: &DataFusionError) -> Status {
    tracing::warn!(query_id, error = %e, "sub-query failed while running");
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(format!(
            "node {register}: sub-query {query_id} exceeded the node's memory limit"
        )),
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
        let traceparent = request
            .metadata()
            .get(headers::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let sub = ticket::decode(&request.get_ref().ticket).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let register = self.state.register().to_owned();
        let access = &self.state.config.access;
        if !access.coordinators.iter().any(|c| c == &caller) {
            tracing::warn!(%caller, "sub-query from an identity that is not a coordinator refused");
            return Err(Status::permission_denied(format!(
                "refused by rule holder.caller: node {register} answers sub-queries from the federation's coordinator only, not from {caller}"
            )));
        }
        if !access.serves(&sub.project) {
            return Err(Status::permission_denied(format!(
                "refused by rule holder.project: the holder of {register} does not serve project {}",
                sub.project
            )));
        }
        let span = tracing::info_span!(
            "node_execute",
            register = %register,
            query_id = %sub.query_id,
            project = %sub.project,
            caller = %caller,
            traceparent = %traceparent,
        );
        if !traceparent.is_empty() {
            samkor_proto::trace::set_parent(&span, &traceparent);
        }
        let stream = self.start(&sub.project, &sub.sql).instrument(span.clone()).await.inspect_err(|s| {
            span.in_scope(|| tracing::info!(sql = %sub.sql, error = %s.message(), "sub-query refused"));
        })?;
        span.in_scope(|| tracing::info!(sql = %sub.sql, "sub-query started"));
        let query_id = sub.query_id.clone();
        let guard = self.state.track();
        let batches = stream.map_err(move |e| FlightError::Tonic(Box::new(run_error(&register, &query_id, &e))));
        let flight = FlightDataEncoderBuilder::new()
            .build(batches)
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

