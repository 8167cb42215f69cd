//! Starting and stopping a node server.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use samkor_proto::tls;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
    let state = Arc::new(NodeState::open(config).await?);
    let listener = TcpListener::bind(listen).await.map_err(|source| StartError::Listen { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: listen, source })?;
    let service = FlightServiceServer::new(NodeService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = tls::incoming(listener, server_tls);
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }),
    );
    tracing::info!(register = %state.register(), %addr, "node serving over mutual TLS 1.3");
    Ok(RunningNode { addr, state, shutdown: Some(tx), task })
}
