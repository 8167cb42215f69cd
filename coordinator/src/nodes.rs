//! The coordinator's view of the federation: one [`RemoteNode`] per register,
//! with its catalogue once the node has answered.
//!
//! A node that is down at start is reported and retried in the background;
//! its tables appear as soon as its catalogue arrives.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use samkor_proto::client::{NodeClient, NodeEndpoint, NodeError};
use samkor_proto::pb;
use samkor_proto::tls::TlsIdentity;

use crate::config::CoordinatorConfig;

/// A table of a node, as the coordinator plans with it.
#[derive(Debug, Clone)]
pub struct RemoteTableInfo {
    pub name: String,
    pub schema: SchemaRef,
    pub doc: pb::Table,
}

/// One register node.
#[derive(Debug)]
pub struct RemoteNode {
    pub register: String,
    pub client: NodeClient,
    catalogue: RwLock<Option<Arc<NodeCatalogue>>>,
}

/// A node's catalogue, converted for planning.
#[derive(Debug)]
pub struct NodeCatalogue {
    pub raw: pb::Catalogue,
    pub tables: Vec<RemoteTableInfo>,
}

/// The Arrow type of a catalogue column type.
pub fn arrow_type(name: &str) -> Option<DataType> {
    Some(match name {
        "utf8" => DataType::Utf8,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "float64" => DataType::Float64,
        "boolean" => DataType::Boolean,
        "date32" => DataType::Date32,
        _ => return None,
    })
}

impl NodeCatalogue {
    fn from_pb(raw: pb::Catalogue) -> Result<Self, String> {
        let tables = raw
            .tables
            .iter()
            .map(|t| {
                let fields = t
                    .columns
                    .iter()
                    .map(|c| {
                        let dt = arrow_type(&c.data_type).ok_or_else(|| {
                            format!("table {} column {} has unknown type {:?}", t.name, c.name, c.data_type)
                        })?;
                        Ok(Field::new(&c.name, dt, c.nullable))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(RemoteTableInfo { name: t.name.clone(), schema: Arc::new(Schema::new(fields)), doc: t.clone() })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(NodeCatalogue { raw, tables })
    }
}

impl NodeCatalogue {
    /// The node's pseudonym scheme (`hmac-sha256-v1` for nodes that do not say).
    pub fn pseudonym_scheme(&self) -> &str {
        match self.raw.pseudonym_scheme.as_str() {
            "" => "hmac-sha256-v1",
            s => s,
        }
    }
}

impl RemoteNode {
    /// The catalogue, if the node has answered.
    pub fn catalogue(&self) -> Option<Arc<NodeCatalogue>> {
        self.catalogue.read().expect("catalogue lock").clone()
    }

    /// Asks the node for its catalogue and keeps it.
    pub async fn refresh(&self) -> Result<Arc<NodeCatalogue>, NodeError> {
        let raw = self.client.catalogue().await?;
        if raw.register != self.register {
            return Err(NodeError::Protocol {
                node: self.register.clone(),
                reason: format!(
                    "the node at this address serves register {:?}, not {:?}; check the coordinator config",
                    raw.register, self.register
                ),
            });
        }
        let cat = Arc::new(
            NodeCatalogue::from_pb(raw)
                .map_err(|reason| NodeError::Protocol { node: self.register.clone(), reason })?,
        );
        *self.catalogue.write().expect("catalogue lock") = Some(cat.clone());
        Ok(cat)
    }
}

/// All nodes of the federation.
#[derive(Debug)]
pub struct Federation {
    pub nodes: Vec<Arc<RemoteNode>>,
}

impl Federation {
    /// Connects (lazily) to every node of the config.
    pub fn new(config: &CoordinatorConfig, identity: &TlsIdentity) -> Result<Federation, NodeError> {
        let nodes = config
            .nodes
            .iter()
            .map(|n| {
                let endpoint = NodeEndpoint {
                    name: n.register.clone(),
                    addr: n.address.clone(),
                    tls_domain: n.tls_domain.clone(),
                    connect_timeout: Duration::from_secs(config.coordinator.node_connect_timeout_secs),
                };
                Ok(Arc::new(RemoteNode {
                    register: n.register.clone(),
                    client: NodeClient::new(endpoint, identity)?,
                    catalogue: RwLock::new(None),
                }))
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        Ok(Federation { nodes })
    }

    /// Fetches every catalogue concurrently. Nodes that fail are reported and
    /// retried every `retry` in the background until they answer. Returns the
    /// errors of the first round.
    pub async fn discover(self: &Arc<Self>, retry: Duration) -> Vec<NodeError> {
        let rounds = self.nodes.iter().map(|n| async move { (n.clone(), n.refresh().await) });
        let mut errors = Vec::new();
        for (node, result) in futures::future::join_all(rounds).await {
            match result {
                Ok(cat) => {
                    tracing::info!(register = %node.register, tables = cat.tables.len(), "node catalogue loaded")
                }
                Err(e) => {
                    tracing::warn!(register = %node.register, error = %e, "node unavailable at start; retrying in the background");
                    let weak = Arc::downgrade(&node);
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(retry).await;
                            let Some(node) = weak.upgrade() else { break };
                            match node.refresh().await {
                                Ok(_) => {
                                    tracing::info!(register = %node.register, "node is back; its tables are available");
                                    break;
                                }
                                Err(e) => {
                                    tracing::debug!(register = %node.register, error = %e, "node still unavailable")
                                }
                            }
                        }
                    });
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// The nodes' pseudonym schemes (`register scheme, …`) if the nodes that
    /// have answered do not all use the same one: the same person would then
    /// have different pseudonyms in different registers. A catalogue without
    /// a scheme comes from a node older than the field (`hmac-sha256-v1`).
    pub fn pseudonym_scheme_conflict(&self) -> Option<String> {
        let schemes: Vec<(String, String)> = self
            .nodes
            .iter()
            .filter_map(|n| n.catalogue().map(|c| (n.register.clone(), c.pseudonym_scheme().to_owned())))
            .collect();
        let first = schemes.first()?;
        if schemes.iter().all(|(_, s)| *s == first.1) {
            return None;
        }
        Some(schemes.iter().map(|(r, s)| format!("{r} {s}")).collect::<Vec<_>>().join(", "))
    }

    pub fn node(&self, register: &str) -> Option<&Arc<RemoteNode>> {
        self.nodes.iter().find(|n| n.register == register)
    }
}
