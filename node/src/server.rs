//! Starting and stopping a node server.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use samkor_proto::tls;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use samkor_policies::audit::AuditLog;

use crate::config::NodeConfig;
use crate::service::NodeService;
use crate::state::{NodeState, StartError};

/// Largest gRPC message a node accepts or sends.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A node that is serving. Dropping it does not stop it; call [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    pub addr: SocketAddr,
    pub state: Arc<NodeState>,
    /// The node's audit log.
    pub audit: Arc<AuditLog>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningNode {
    /// Stops accepting calls, lets running calls finish, and waits.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Stops at once: in-flight streams are cut (for tests of node failure).
    pub fn kill(self) {
        self.task.abort();
    }

    /// Waits until the server stops (e.g. forever, for `samkor node`).
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        match self.task.await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}

/// Checks everything and starts serving. On error nothing is listening.
pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
    tls::install_crypto_provider();
    let identity = config.tls.load()?;
    let server_tls = identity.server_config()?;
    let listen = config.node.listen;
    let audit = Arc::new(open_audit(&config)?);
    let state = Arc::new(NodeState::open(config).await?);
    let listener = TcpListener::bind(listen).await.map_err(|source| StartError::Listen { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: listen, source })?;
    let service = FlightServiceServer::new(NodeService::new(state.clone(), audit.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = tls::incoming(listener, server_tls);
    let task = tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
        incoming,
        async {
            let _ = rx.await;
        },
    ));
    tracing::info!(register = %state.register(), %addr, "node serving over mutual TLS 1.3");
    Ok(RunningNode { addr, state, audit, shutdown: Some(tx), task })
}

/// Opens (creating if needed) the node's audit log; a torn last record is set
/// aside and its recovery recorded, a broken chain stops the node.
fn open_audit(config: &NodeConfig) -> Result<AuditLog, StartError> {
    let path = &config.node.audit_log;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StartError::AuditDir { path: dir.to_owned(), source })?;
    }
    let (log, recovery) = AuditLog::open_recovering(path, format!("node:{}", config.node.register))?;
    if let Some(r) = recovery {
        tracing::warn!(
            line = r.line,
            bytes = r.bytes,
            quarantine = %r.quarantine.display(),
            "the audit log ended in a torn record; it was set aside and the recovery recorded"
        );
    }
    Ok(log)
}
