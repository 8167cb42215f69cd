//! A client of one register node: catalogue and sub-queries over mutual TLS.

use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, Ticket};
use futures::TryStreamExt;
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::tls::TlsIdentity;
use crate::{CATALOGUE_ACTION, headers, pb, ticket};

/// Why a node call failed. Names the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node} at {addr}: invalid address: {reason}")]
    Address { node: String, addr: String, reason: String },
    #[error("node {node} at {addr} is unreachable: {reason}; check that it runs and retry")]
    Unreachable { node: String, addr: String, reason: String },
    #[error("{}", status_message(node, status))]
    Status { node: String, status: Box<tonic::Status> },
    #[error("node {node}: {reason}")]
    Protocol { node: String, reason: String },
}

/// The node's own message (it names the node already, or gets its name in front), not tonic's debug-like display.
fn status_message(node: &str, status: &tonic::Status) -> String {
    let message = status.message();
    if message.starts_with(&format!("node {node}")) {
        message.to_owned()
    } else if message.is_empty() {
        format!("node {node}: {} (no message)", status.code().description())
    } else {
        format!("node {node}: {message}")
    }
}

impl NodeError {
    /// The gRPC status of a refusal or failure reported by the node itself.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            NodeError::Status { status, .. } => Some(status),
            NodeError::Address { .. } | NodeError::Unreachable { .. } | NodeError::Protocol { .. } => None,
        }
    }
}

/// How to reach a node.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    /// The node's name (its register) for messages.
    pub name: String,
    /// `host:port`.
    pub addr: String,
    /// The name the node's certificate must carry (defaults to `localhost`).
    pub tls_domain: String,
    pub connect_timeout: Duration,
}

/// A connection to one node.
#[derive(Debug, Clone)]
pub struct NodeClient {
    endpoint: NodeEndpoint,
    channel: Channel,
}

impl NodeClient {
    /// Prepares a lazily connecting channel: nothing is sent until the first call.
    pub fn new(endpoint: NodeEndpoint, identity: &TlsIdentity) -> Result<NodeClient, NodeError> {
        let address =
            |reason: String| NodeError::Address { node: endpoint.name.clone(), addr: endpoint.addr.clone(), reason };
        let channel = Endpoint::from_shared(format!("https://{}", endpoint.addr))
            .map_err(|e| address(e.to_string()))?
            .tls_config(identity.client_config(&endpoint.tls_domain))
            .map_err(|e| address(e.to_string()))?
            .connect_timeout(endpoint.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(NodeClient { endpoint, channel })
    }

    pub fn name(&self) -> &str {
        &self.endpoint.name
    }

    /// `host:port` of the node.
    pub fn addr(&self) -> &str {
        &self.endpoint.addr
    }

    fn flight(&self) -> FlightClient {
        FlightClient::new(self.channel.clone())
    }

    fn error(&self, e: FlightError) -> NodeError {
        let node = self.endpoint.name.clone();
        match e {
            FlightError::Tonic(status) => {
                // Connection failures come from the transport (the status has a
                // source); a status the node sent itself has none.
                let transport = std::error::Error::source(status.as_ref()).is_some();
                if transport
                    && matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal)
                {
                    NodeError::Unreachable {
                        node,
                        addr: self.endpoint.addr.clone(),
                        reason: status.message().to_owned(),
                    }
                } else {
                    NodeError::Status { node, status }
                }
            }
            other => NodeError::Protocol { node, reason: other.to_string() },
        }
    }

    /// The node's catalogue.
    pub async fn catalogue(&self) -> Result<pb::Catalogue, NodeError> {
        let mut flight = self.flight();
        let action = Action { r#type: CATALOGUE_ACTION.to_owned(), body: Default::default() };
        let bodies: Vec<_> = flight
            .do_action(action)
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        let body = bodies.first().ok_or_else(|| NodeError::Protocol {
            node: self.endpoint.name.clone(),
            reason: "the catalogue action returned nothing".into(),
        })?;
        pb::Catalogue::decode(body.as_ref()).map_err(|e| NodeError::Protocol {
            node: self.endpoint.name.clone(),
            reason: format!("malformed catalogue: {e}"),
        })
    }

    /// Runs a sub-query for `project`; the stream yields the node's record batches.
    pub async fn query(
        &self,
        project: &str,
        sql: &str,
        query_id: &str,
        traceparent: Option<&str>,
    ) -> Result<FlightRecordBatchStream, NodeError> {
        self.send(&ticket::sub_query(project, sql, query_id), traceparent).await
    }

    /// Sends a sub-query as it is (e.g. one for direct access, with `direct_unit` set).
    pub async fn send(
        &self,
        sub: &pb::SubQuery,
        traceparent: Option<&str>,
    ) -> Result<FlightRecordBatchStream, NodeError> {
        let mut flight = self.flight();
        if let Some(tp) = traceparent {
            flight.add_header(headers::TRACEPARENT, tp).map_err(|e| self.error(e))?;
        }
        let ticket = Ticket { ticket: sub.encode_to_vec().into() };
        flight.do_get(ticket).await.map_err(|e| self.error(e))
    }

    /// Maps an error from a record batch stream of this node.
    pub fn stream_error(&self, e: FlightError) -> NodeError {
        self.error(e)
    }
}
