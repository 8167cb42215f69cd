//! Starting and stopping the coordinator.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use samkor_proto::client::NodeError;
use samkor_proto::tls;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::CoordinatorConfig;
use crate::engine::Engine;
use crate::flightsql::CoordinatorService;
use crate::nodes::Federation;

const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("cannot set up the query engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Approvals(#[from] samkor_policies::approval::ApprovalError),
    #[error("{0}")]
    Audit(#[from] samkor_policies::audit::AuditError),
    #[error("{0}")]
    Directory(#[from] samkor_policies::directory::DirectoryError),
    #[error("cannot listen on {addr}: {source}; is another coordinator running there? choose another `listen` address")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// A running coordinator.
#[derive(Debug)]
pub struct RunningCoordinator {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    /// Nodes that did not answer at start (they are retried in the background).
    pub unavailable_at_start: Vec<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningCoordinator {
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Loads TLS, contacts the nodes, and starts serving Flight SQL.
pub async fn start(config: CoordinatorConfig) -> Result<RunningCoordinator, StartError> {
    tls::install_crypto_provider();
    let identity = config.tls.load()?;
    let server_tls = identity.server_config()?;
    let listener = TcpListener::bind(config.coordinator.listen)
        .await
        .map_err(|source| StartError::Listen { addr: config.coordinator.listen, source })?;
    let addr =
        listener.local_addr().map_err(|source| StartError::Listen { addr: config.coordinator.listen, source })?;
    let federation = Arc::new(Federation::new(&config, &identity)?);
    let retry = std::time::Duration::from_secs(config.coordinator.node_retry_secs);
    let unavailable_at_start: Vec<String> = federation
        .discover(retry)
        .await
        .into_iter()
        .map(|e| {
            eprintln!("samkor coordinator: {e}");
            e.to_string()
        })
        .collect();
    let approvals =
        samkor_policies::approval::ApprovalStore::open(&config.governance.approvals_dir, config.disclosure.defaults())?;
    if let Some(parent) = config.governance.audit_log.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StartError::Engine(format!("cannot create {}: {e}", parent.display())))?;
    }
    let (audit, recovery) =
        samkor_policies::audit::AuditLog::open_recovering(&config.governance.audit_log, "coordinator")?;
    if let Some(r) = recovery {
        eprintln!(
            "samkor coordinator: the audit log ended in a torn record; it was set aside and the recovery recorded: {r:?}"
        );
    }
    let directory = config.governance.directory.as_deref().map(samkor_policies::DirectoryStore::open).transpose()?;
    let direct = crate::direct::DirectAccess::new(directory);
    let engine =
        Engine::new(&config, federation, approvals, audit, direct).map_err(|e| StartError::Engine(e.to_string()))?;
    for problem in engine.approvals().problems() {
        eprintln!("samkor coordinator: approval not loaded: {problem}");
    }
    let service = FlightServiceServer::new(CoordinatorService::new(engine.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
        tls::incoming(listener, server_tls),
        async {
            let _ = rx.await;
        },
    ));
    tracing::info!(%addr, "coordinator serving Flight SQL over mutual TLS 1.3");
    Ok(RunningCoordinator { addr, engine, unavailable_at_start, shutdown: Some(tx), task })
}
