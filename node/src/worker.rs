//! `samkor worker`: one of the holder's processes that scan a node's files
//! for it ([`crate::cluster`]). A `datafusion-distributed` worker that
//! accepts only plans of file scans, filters, projections and
//! repartitioning, over files under its `--data` directory.
//!
//! A worker holds no federation key, no opt-out list and no certificate; it
//! never talks to the federation. It listens on loopback or on one address
//! of the holder's private network (never on every interface), plain gRPC:
//! only the holder's node may reach it.

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

/// Starts a worker on `listen` that scans files under `data`.
pub async fn start(listen: SocketAddr, data: &Path) -> Result<RunningWorker, WorkerError> {
    if listen.ip().is_unspecified() {
        return Err(WorkerError::EveryInterface(listen));
    }
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
                    Ok(WorkerPlanRewriteEventResponse::new(ev.plan))
                })
                .build();
            Ok(state)
        }
    });
    let listener = TcpListener::bind(listen).await.map_err(|source| WorkerError::Listen { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| WorkerError::Listen { addr: listen, source })?;
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(
        tonic::transport::Server::builder().add_service(worker.into_worker_server()).serve_with_incoming_shutdown(
            incoming,
            async {
                let _ = rx.await;
            },
        ),
    );
    tracing::info!(%addr, "worker serving");
    Ok(RunningWorker { addr, shutdown: Some(tx), task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_every_interface_and_a_missing_directory() {
        let e = start("0.0.0.0:0".parse().expect("addr"), Path::new("/")).await.expect_err("refused");
        assert!(e.to_string().contains("every interface"), "{e}");
        let e =
            start("127.0.0.1:0".parse().expect("addr"), Path::new("/nonexistent/samkor")).await.expect_err("refused");
        assert!(e.to_string().starts_with("worker: the data directory /nonexistent/samkor: "), "{e}");
    }
}
