//! `samkor worker`: one of the holder's processes that scan a node's files
//! for it ([`crate::cluster`]). A `datafusion-distributed` worker that
//! accepts only plans of file scans, filters, projections and
//! repartitioning, over files under its `--data` directory.
//!
//! A worker holds no federation key and no opt-out list; it never talks to
//! the federation. It listens on loopback or on one address of the holder's
//! private network (never on every interface), over mutual TLS 1.3 only:
//! its own certificate from the federation CA, and a client certificate
//! required that chains to that CA and whose name is one of the holder's
//! nodes (`--node`). Without those it does not start: there is no plain
//! gRPC mode.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DistributedExt, Worker, WorkerPlanRewriteEvent, WorkerPlanRewriteEventResponse, WorkerQueryContext,
};
use samkor_proto::tls::{self, TlsError, TlsFiles};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why a worker could not start. One line, naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(
        "worker: --listen {0} would listen on every interface; give the loopback or private-network address the node reaches it on"
    )]
    EveryInterface(SocketAddr),
    #[error("worker: the data directory {}: {source}; give the directory holding the node's data files", path.display())]
    Data { path: PathBuf, source: std::io::Error },
    #[error("worker: cannot listen on {addr}: {source}; is another worker running there?")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(
        "worker: no {missing}: a worker serves only over mutual TLS; give --cert and --key (its certificate from the federation CA, carrying the host the node dials), --ca (the federation CA) and --node (the certificate name of the holder's node, e.g. node-lmr)"
    )]
    NoTls { missing: &'static str },
    #[error("worker: {0}")]
    Tls(#[from] TlsError),
}

/// How a worker is started (`samkor worker`).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Loopback or one address of the holder's private network.
    pub listen: SocketAddr,
    /// The directory holding the node's data files.
    pub data: PathBuf,
    /// The worker's certificate and key, and the federation CA.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// Certificate names of the nodes that may send it plans.
    pub nodes: Vec<String>,
}

impl WorkerOptions {
    /// The TLS files, or which of them (or `--node`) is missing.
    fn tls(&self) -> Result<TlsFiles, WorkerError> {
        let missing = |missing| WorkerError::NoTls { missing };
        let cert = self.cert.clone().ok_or(missing("--cert"))?;
        let key = self.key.clone().ok_or(missing("--key"))?;
        let ca = self.ca.clone().ok_or(missing("--ca"))?;
        if self.nodes.iter().all(|n| n.trim().is_empty()) {
            return Err(missing("--node"));
        }
        Ok(TlsFiles { cert, key, ca })
    }
}

/// Admits a call only from a client certificate naming one of the holder's
/// nodes (the TLS handshake already required it to chain to the federation CA).
#[derive(Debug, Clone)]
struct NodesOnly(Arc<Vec<String>>);

impl tonic::service::Interceptor for NodesOnly {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match tls::peer_identity(&request) {
            Some(name) if self.0.contains(&name) => Ok(request),
            Some(name) => {
                tracing::warn!(client = %name, "a call from a certificate that is not the holder's node refused");
                Err(tonic::Status::permission_denied(format!(
                    "worker: the certificate {name} is not one of the holder's nodes ({}); only they may send plans (--node)",
                    self.0.join(", ")
                )))
            }
            None => Err(tonic::Status::unauthenticated(
                "worker: no client certificate; the holder's node must connect over mutual TLS",
            )),
        }
    }
}

/// Why a worker refused a plan (in its log and, through the node, the node's log).
#[derive(Debug, thiserror::Error)]
pub enum PlanRefusal {
    #[error("worker: a plan reads {file}, outside its data directory {}", data.display())]
    OutsideData { file: String, data: PathBuf },
    #[error("worker: a plan reads from {store}; a worker reads local files only")]
    NotLocal { store: String },
    #[error("worker: a plan holds {0}; a worker runs file scans, filters and projections only")]
    Operator(String),
}

/// Operators a worker runs. Everything else in a decoded plan is refused.
const ALLOWED: [&str; 8] = [
    "DataSourceExec",
    "CoalescePartitionsExec",
    "FilterExec",
    "ProjectionExec",
    "RepartitionExec",
    "CoalesceBatchesExec",
    "CooperativeExec",
    "DistributedLeafExec",
];

/// Checks a decoded plan: allowed operators only, every file under `data`.
fn check_plan(plan: &Arc<dyn ExecutionPlan>, data: &Path) -> Result<()> {
    let refuse = |r: PlanRefusal| DataFusionError::External(Box::new(r));
    plan.apply(|p| {
        if !ALLOWED.contains(&p.name()) {
            return Err(refuse(PlanRefusal::Operator(p.name().to_owned())));
        }
        if let Some(source) = p.downcast_ref::<DataSourceExec>() {
            let Some(files) = source.data_source().downcast_ref::<FileScanConfig>() else {
                return Err(refuse(PlanRefusal::Operator("a data source other than files".into())));
            };
            let store = files.object_store_url.as_str();
            if store != "file:///" {
                return Err(refuse(PlanRefusal::NotLocal { store: store.to_owned() }));
            }
            for group in &files.file_groups {
                for file in group.files() {
                    let path = Path::new("/").join(file.object_meta.location.as_ref());
                    let inside = path.starts_with(data)
                        && !path.components().any(|c| matches!(c, std::path::Component::ParentDir));
                    if !inside {
                        return Err(refuse(PlanRefusal::OutsideData {
                            file: path.display().to_string(),
                            data: data.to_owned(),
                        }));
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map(|_| ())
}

/// A worker that is serving.
#[derive(Debug)]
pub struct RunningWorker {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningWorker {
    /// Stops accepting calls and waits.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops.
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        match self.task.await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}

/// Starts a worker that scans files under `options.data`, over mutual TLS.
pub async fn start(options: &WorkerOptions) -> Result<RunningWorker, WorkerError> {
    let listen = options.listen;
    if listen.ip().is_unspecified() {
        return Err(WorkerError::EveryInterface(listen));
    }
    let tls_files = options.tls()?;
    tls::install_crypto_provider();
    let server_tls = tls_files.load()?.server_config()?;
    let nodes =
        NodesOnly(Arc::new(options.nodes.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect()));
    let data = &options.data;
    let data = std::fs::canonicalize(data).map_err(|source| WorkerError::Data { path: data.to_owned(), source })?;
    if !data.is_dir() {
        return Err(WorkerError::Data {
            path: data,
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let data = Arc::new(data);
    let worker = Worker::from_session_builder(move |ctx: WorkerQueryContext| {
        let data = Arc::clone(&data);
        async move {
            let state: SessionState = ctx
                .builder
                .with_distributed_worker_plan_rewrite_handler(move |ev: WorkerPlanRewriteEvent<'_>| {
                    check_plan(&ev.plan, &data).inspect_err(|e| tracing::warn!(error = %e, "plan refused"))?;
                    tracing::info!("scan plan accepted");
                    Ok(WorkerPlanRewriteEventResponse::new(ev.plan))
                })
                .build();
            Ok(state)
        }
    });
    let listener = TcpListener::bind(listen).await.map_err(|source| WorkerError::Listen { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| WorkerError::Listen { addr: listen, source })?;
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = tls::incoming(listener, server_tls);
    let service = tonic::service::interceptor::InterceptedService::new(worker.into_worker_server(), nodes);
    let task = tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
        incoming,
        async {
            let _ = rx.await;
        },
    ));
    tracing::info!(%addr, "worker serving over mutual TLS 1.3");
    Ok(RunningWorker { addr, shutdown: Some(tx), task })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(listen: &str, data: &str, dir: &Path) -> WorkerOptions {
        WorkerOptions {
            listen: listen.parse().expect("addr"),
            data: PathBuf::from(data),
            cert: Some(dir.join("w.pem")),
            key: Some(dir.join("w.key")),
            ca: Some(dir.join("ca.pem")),
            nodes: vec!["node-lmr".into()],
        }
    }

    #[tokio::test]
    async fn refuses_every_interface_a_missing_directory_and_no_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(dir.path().join("w.pem"), ca.cert.pem()).expect("write");
        std::fs::write(dir.path().join("w.key"), ca.signing_key.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).expect("write");
        let e = start(&options("0.0.0.0:0", "/", dir.path())).await.expect_err("refused");
        assert!(e.to_string().contains("every interface"), "{e}");
        let e = start(&options("127.0.0.1:0", "/nonexistent/samkor", dir.path())).await.expect_err("refused");
        assert!(e.to_string().starts_with("worker: the data directory /nonexistent/samkor: "), "{e}");
        for (i, missing) in ["--cert", "--key", "--ca", "--node"].into_iter().enumerate() {
            let mut o = options("127.0.0.1:0", "/", dir.path());
            match i {
                0 => o.cert = None,
                1 => o.key = None,
                2 => o.ca = None,
                _ => o.nodes = vec![],
            }
            let e = start(&o).await.expect_err("no plain gRPC").to_string();
            assert!(e.starts_with(&format!("worker: no {missing}: a worker serves only over mutual TLS")), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let mut o = options("127.0.0.1:0", "/", dir.path());
        o.key = Some(dir.path().join("absent.key"));
        let e = start(&o).await.expect_err("unreadable key").to_string();
        assert!(e.starts_with("worker: cannot read key file ") && e.contains("absent.key"), "{e}");
        let w = start(&options("127.0.0.1:0", "/", dir.path())).await.expect("starts with TLS files and a node name");
        w.shutdown().await;
    }
}
