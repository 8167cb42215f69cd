//! A node in front of the holder's own cluster: the scans of its file tables
//! run on `samkor worker` processes ([`crate::worker`]) through
//! `datafusion-distributed`; everything that needs the federation key or the
//! opt-out list stays in the node process.
//!
//! ```text
//!   node process (the only thing the federation talks to, mTLS, audit)
//!     ClusterScanExec: tables=…   (engine failures name node, tables, worker)
//!       DistributedExec                       ← its head stage runs here
//!         … the sub-query's aggregates, joins, filters on `person` …
//!           PseudonymiseExec: opt-outs out, pnr → pseudonym, own unit only
//!             ClusterScanExec: table=… (stream failures name node, table, worker)
//!               NetworkCoalesceExec ◀── gRPC over mutual TLS ──── tasks
//!   worker processes (`samkor worker --data DIR --cert … --node …`) │
//!     CoalescePartitionsExec (one stream per task)                  │
//!       FilterExec: non-person filters of the query                 │
//!         DataSourceExec: a share of the table's Parquet/CSV files ─┘
//! ```
//!
//! [`ScanOnCluster`] is a physical optimizer rule: it places the network
//! boundary directly below each [`PseudonymiseExec`] of a table the holder
//! put on the cluster, after checking that only a file scan, filters,
//! projections and repartitioning lie below it. The distributed planner then
//! only finalises that boundary (it never distributes a plan by itself here:
//! `max_tasks_per_stage = 1`), so the stage the workers get holds no key, no
//! opt-out list, no pseudonym and no aggregate.
//!
//! The node reaches its workers through [`TlsChannels`]: mutual TLS 1.3 with
//! the node's own certificate as client identity and the federation CA as
//! the only trust root; each worker's certificate must carry the host of its
//! `https://` URL, and the worker accepts only the node's certificate name.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_distributed::{
    ChannelResolver, CoordinatorToWorkerMsg, DistributedExt, ExecuteTaskRequest, GetWorkerInfoRequest,
    GetWorkerInfoResponse, NetworkCoalesceExec, SessionStateBuilderExt, SetPlanRequest, WorkerChannel, WorkerResolver,
    WorkerToCoordinatorMsg,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use samkor_proto::tls::TlsIdentity;
use tonic::codegen::http::HeaderMap;
use tonic::transport::{Channel, Endpoint};
use url::Url;

use crate::config::ClusterSection;
use crate::table::PseudonymiseExec;

/// Why the cluster could not be used. Messages name the node, the table and
/// the worker, never a data value.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "node {node}: cluster worker {worker} does not answer ({reason}); start it (`samkor worker --listen {worker} --data DIR --cert … --key … --ca … --node …`) or remove it from [cluster] workers"
    )]
    WorkerDown { node: String, worker: String, reason: String },
    #[error(
        "node {node}: cluster worker {worker} refused the node's connection ({reason}); the node's certificate must come from the CA the worker trusts (--ca) and be named by the worker's --node, and the worker's certificate must come from the federation CA and carry the host the node dials"
    )]
    WorkerRefused { node: String, worker: String, reason: String },
    #[error(
        "node {node}, table {table}: the scan on the holder's cluster failed at {worker}: the worker is down, was lost, or refused the scan; nothing of this sub-query is released (the node's log has the details)"
    )]
    ScanFailed { node: String, table: String, worker: String },
    #[error(
        "node {node}, table {table}: the scan plan holds {operator}, which is never sent to a worker; this is a samkor bug"
    )]
    NotForWorkers { node: String, table: String, operator: String },
}

/// A worker as messages name it: `host:port`.
fn worker_name(url: &Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or_default())
}

/// The holder's workers as configured in `[cluster]`.
#[derive(Debug, Clone)]
pub struct Cluster {
    register: String,
    urls: Vec<Url>,
    /// `host:port` of each worker, for messages.
    workers: Vec<String>,
    channels: TlsChannels,
}

impl Cluster {
    /// The cluster of `section`, reached with the node's own TLS identity.
    pub fn new(register: &str, section: &ClusterSection, identity: &TlsIdentity) -> Cluster {
        let urls = section.worker_urls();
        let timeout = Duration::from_secs(section.worker_timeout_secs);
        Cluster {
            register: register.to_owned(),
            workers: urls.iter().map(worker_name).collect(),
            urls,
            channels: TlsChannels::new(identity, timeout),
        }
    }

    fn urls(&self) -> Vec<Url> {
        self.urls.clone()
    }

    /// Asks every worker for its info over mutual TLS: a node whose workers
    /// are not all there, or refuse its certificate, does not start.
    pub async fn check_workers(&self) -> Result<(), ClusterError> {
        let wait = self.channels.timeout * 2;
        for (worker, url) in self.workers.iter().zip(&self.urls) {
            let (node, worker) = (self.register.clone(), worker.clone());
            let silent = || format!("no answer within {} s", wait.as_secs());
            let mut client = match tokio::time::timeout(wait, self.channels.get_worker_client_for_url(url)).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) if is_tls_refusal(&e) => {
                    return Err(ClusterError::WorkerRefused { node, worker, reason: one_line(&e) });
                }
                Ok(Err(e)) => return Err(ClusterError::WorkerDown { node, worker, reason: one_line(&e) }),
                Err(_) => return Err(ClusterError::WorkerDown { node, worker, reason: silent() }),
            };
            match tokio::time::timeout(wait, client.get_worker_info(GetWorkerInfoRequest {})).await {
                Ok(Ok(_)) => {}
                // Connected, then refused: under TLS 1.3 a worker checks the node's
                // certificate after the node's side of the handshake is done, and
                // closes the connection (or answers PermissionDenied) on the first call.
                Ok(Err(e)) => return Err(ClusterError::WorkerRefused { node, worker, reason: one_line(&e) }),
                Err(_) => return Err(ClusterError::WorkerDown { node, worker, reason: silent() }),
            }
        }
        Ok(())
    }

    /// Tasks per scan: one per worker, at least two (datafusion-distributed
    /// folds a one-task stage back into the node; two tasks on one worker
    /// keep the scan there).
    fn tasks(&self) -> usize {
        self.workers.len().max(2)
    }

    /// Adds the distributed planner and [`ScanOnCluster`] to a node session.
    fn session_builder(&self, builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
        let mut builder = builder
            .with_physical_optimizer_rule(Arc::new(ScanOnCluster { cluster: self.clone() }))
            .with_distributed_worker_resolver(StaticWorkers(self.urls()))
            .with_distributed_channel_resolver(self.channels.clone())
            .with_distributed_planner()
            // Never distribute a plan on its own: only the boundaries ScanOnCluster places.
            .with_distributed_max_tasks_per_stage(1)?
            .with_distributed_metrics_collection(false)?;
        let distributed = builder.query_planner().take().expect("with_distributed_planner sets a query planner");
        Ok(builder.with_query_planner(Arc::new(ClusterPlanner { distributed, cluster: self.clone() })))
    }
}

/// A node session whose scans of the cluster's tables run on the workers.
pub fn session(cluster: &Cluster, config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionContext {
    let builder = SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features();
    let state = cluster.session_builder(builder).expect("constant distributed settings are valid").build();
    SessionContext::new_with_state(state)
}

/// An error and its causes on one line.
fn one_line(e: &DataFusionError) -> String {
    e.to_string().lines().map(str::trim).filter(|l| !l.is_empty() && *l != "caused by").collect::<Vec<_>>().join(": ")
}

/// Whether a failure to reach a worker is the TLS handshake or the worker's
/// refusal of the node's certificate (rather than a worker that is not there).
fn is_tls_refusal(e: &DataFusionError) -> bool {
    let text = format!("{e:?} {e}").to_lowercase();
    ["certificate", "handshake", "permission denied", "permissiondenied", "unknownissuer", "alert", "invalid peer"]
        .iter()
        .any(|w| text.contains(w))
}

/// Connections to the workers over mutual TLS 1.3: the node's own
/// certificate and key as client identity, the federation CA as the only
/// trust root, and the `https://` URL's host as the name the worker's
/// certificate must carry. One channel per worker, made on first use and
/// reused by every query (tonic reconnects it after a failure); a worker
/// that does not complete a connection or answer keep-alive pings within
/// the timeout is lost.
#[derive(Clone)]
pub struct TlsChannels {
    identity: Arc<TlsIdentity>,
    timeout: Duration,
    channels: Arc<Mutex<HashMap<Url, Arc<tokio::sync::OnceCell<Channel>>>>>,
}

impl fmt::Debug for TlsChannels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsChannels").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl TlsChannels {
    pub fn new(identity: &TlsIdentity, timeout: Duration) -> TlsChannels {
        TlsChannels { identity: Arc::new(identity.clone()), timeout, channels: Arc::default() }
    }

    async fn connect(&self, url: &Url) -> Result<Channel, DataFusionError> {
        let worker = worker_name(url);
        if url.scheme() != "https" {
            return Err(DataFusionError::Configuration(format!(
                "worker {worker}: the node reaches workers over mutual TLS only (https://), not {}",
                url.scheme()
            )));
        }
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let failed = |what: &str, e: &dyn std::error::Error| {
            let mut reason = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                reason.push_str(": ");
                reason.push_str(&s.to_string());
                source = s.source();
            }
            DataFusionError::Execution(format!("worker {worker}: {what}: {reason}"))
        };
        let half = (self.timeout / 2).max(Duration::from_secs(1));
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| failed("invalid URL", &e))?
            .tls_config(self.identity.client_config(host))
            .map_err(|e| failed("TLS configuration", &e))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(half)
            .keep_alive_timeout(half)
            .keep_alive_while_idle(true);
        endpoint.connect().await.map_err(|e| failed("cannot connect", &e))
    }
}

#[async_trait::async_trait]
impl ChannelResolver for TlsChannels {
    async fn get_worker_client_for_url(&self, url: &Url) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        let cell = Arc::clone(self.channels.lock().expect("channel map").entry(url.clone()).or_default());
        // A failed connection leaves the cell empty: the next call tries again.
        let channel = cell.get_or_try_init(|| self.connect(url)).await?.clone();
        let client = datafusion_distributed::grpc::create_worker_client(
            datafusion_distributed::grpc::BoxCloneSyncChannel::new(channel),
        );
        Ok(Box::new(NamedWorker { inner: client, worker: worker_name(url) }))
    }
}

/// A worker client whose failures name the worker (the engine's own errors
/// of a lost connection do not).
struct NamedWorker {
    inner: Box<dyn WorkerChannel>,
    worker: String,
}

impl NamedWorker {
    fn named(worker: &str) -> impl Fn(DataFusionError) -> DataFusionError + Send + Sync + 'static {
        let context = format!("worker {worker}");
        move |e| DataFusionError::Context(context.clone(), Box::new(e))
    }
}

#[async_trait::async_trait]
impl WorkerChannel for NamedWorker {
    async fn coordinator_channel(
        &mut self,
        headers: HeaderMap,
        set_plan_request: SetPlanRequest,
        c2w_stream: BoxStream<'static, CoordinatorToWorkerMsg>,
        metrics: ExecutionPlanMetricsSet,
        task_ctx: &Arc<TaskContext>,
    ) -> Result<BoxStream<'static, Result<WorkerToCoordinatorMsg>>> {
        let named = Self::named(&self.worker);
        let stream = self
            .inner
            .coordinator_channel(headers, set_plan_request, c2w_stream, metrics, task_ctx)
            .await
            .map_err(&named)?;
        Ok(stream.map(move |m| m.map_err(&named)).boxed())
    }

    async fn execute_task(
        &mut self,
        headers: HeaderMap,
        request: ExecuteTaskRequest,
        metrics: ExecutionPlanMetricsSet,
        task_ctx: &Arc<TaskContext>,
    ) -> Result<Vec<BoxStream<'static, Result<RecordBatch>>>> {
        let streams =
            self.inner.execute_task(headers, request, metrics, task_ctx).await.map_err(Self::named(&self.worker))?;
        Ok(streams
            .into_iter()
            .map(|s| {
                let named = Self::named(&self.worker);
                s.map(move |b| b.map_err(&named)).boxed()
            })
            .collect())
    }

    async fn get_worker_info(&mut self, request: GetWorkerInfoRequest) -> Result<GetWorkerInfoResponse> {
        self.inner.get_worker_info(request).await.map_err(Self::named(&self.worker))
    }
}

/// The distributed planner, and above its `DistributedExec` a
/// [`ClusterScanExec`] for the failures that the distributed engine reports
/// there rather than through the scan's stream (a worker refusing a plan,
/// or not reachable when the plan is sent).
#[derive(Debug)]
struct ClusterPlanner {
    distributed: Arc<dyn QueryPlanner + Send + Sync>,
    cluster: Cluster,
}

#[async_trait::async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.distributed.create_physical_plan(logical_plan, session_state).await?;
        let mut tables = Vec::new();
        plan.apply(|p| {
            if let Some(scan) = p.downcast_ref::<ClusterScanExec>()
                && !tables.contains(&scan.table)
            {
                tables.push(scan.table.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if tables.is_empty() {
            return Ok(plan);
        }
        let mut above = ClusterScanExec::new(plan, &self.cluster, &tables.join(", "));
        above.engine_errors_only = true;
        Ok(Arc::new(above))
    }
}

/// Whether an error that reached the node's plan came from the distributed
/// engine or a worker (rather than from the node's own operators).
fn from_cluster(e: &DataFusionError, workers: &[String]) -> bool {
    match e.find_root() {
        DataFusionError::External(inner) => {
            inner.downcast_ref::<crate::source::postgres::PostgresError>().is_none()
                && inner.downcast_ref::<crate::access::Refusal>().is_none()
        }
        other => {
            let text = other.to_string();
            text.contains("Distributed DataFusion") || workers.iter().any(|w| names(&text, w))
        }
    }
}

/// Whether `text` names `worker` (`host:port`, not the prefix of a longer port).
fn names(text: &str, worker: &str) -> bool {
    text.match_indices(worker).any(|(i, _)| !text[i + worker.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// The configured workers, as URLs.
#[derive(Debug, Clone)]
struct StaticWorkers(Vec<Url>);

impl WorkerResolver for StaticWorkers {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.0.clone())
    }
}

/// Places the network boundary below every [`PseudonymiseExec`] of a table
/// scanned on the cluster (see the module documentation).
#[derive(Debug)]
pub struct ScanOnCluster {
    cluster: Cluster,
}

/// What may run on a worker: a file scan and row-wise operators that neither
/// combine rows nor see anything but the table's own columns.
fn check_for_workers(plan: &Arc<dyn ExecutionPlan>, node: &str, table: &str) -> Result<()> {
    plan.apply(|p| {
        let allowed = p.is::<FilterExec>()
            || p.is::<ProjectionExec>()
            || p.is::<RepartitionExec>()
            || p.downcast_ref::<DataSourceExec>()
                .is_some_and(|d| d.data_source().downcast_ref::<FileScanConfig>().is_some());
        if allowed {
            Ok(TreeNodeRecursion::Continue)
        } else {
            Err(DataFusionError::External(Box::new(ClusterError::NotForWorkers {
                node: node.to_owned(),
                table: table.to_owned(),
                operator: p.name().to_owned(),
            })))
        }
    })
    .map(|_| ())
}

impl PhysicalOptimizerRule for ScanOnCluster {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let mut placed = false;
        let plan = plan
            .transform_up(|node| {
                let Some(p) = node.downcast_ref::<PseudonymiseExec>() else {
                    return Ok(Transformed::no(node));
                };
                let Some(table) = p.scanned_on_cluster() else {
                    return Ok(Transformed::no(node));
                };
                let input = Arc::clone(p.input());
                check_for_workers(&input, &self.cluster.register, table)?;
                let partitions = input.output_partitioning().partition_count();
                // One partition per task: whatever the files' split into tasks
                // gives each worker, it streams one partition back.
                let gathered: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(input));
                let boundary = NetworkCoalesceExec::try_new(gathered, self.cluster.tasks(), 1)?;
                let mut scan: Arc<dyn ExecutionPlan> =
                    Arc::new(ClusterScanExec::new(Arc::new(boundary), &self.cluster, table));
                // The operators above were planned for the scan's partition count
                // (a single partition may feed an aggregate or join that reads only
                // partition 0): give them that count again.
                if partitions == 1 {
                    scan = Arc::new(CoalescePartitionsExec::new(scan));
                } else if scan.output_partitioning().partition_count() != partitions {
                    scan = Arc::new(RepartitionExec::try_new(scan, Partitioning::RoundRobinBatch(partitions))?);
                }
                placed = true;
                let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
                Ok(Transformed::yes(Arc::clone(&node).replace_children(vec![scan], options)?))
            })?
            .data;
        // DistributedExec runs its plan as one partition.
        if placed && plan.output_partitioning().partition_count() > 1 {
            return Ok(Arc::new(CoalescePartitionsExec::new(plan)));
        }
        Ok(plan)
    }

    fn name(&self) -> &str {
        "samkor_scan_on_cluster"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Above the network boundary, at the node: turns a failure of the
/// cluster's part into a [`ClusterError::ScanFailed`] naming node, table
/// and worker (the cause, which may quote a value, goes to the node's log).
#[derive(Debug)]
pub struct ClusterScanExec {
    input: Arc<dyn ExecutionPlan>,
    register: String,
    table: String,
    workers: Vec<String>,
    /// Above `DistributedExec`: only errors of the distributed engine or a
    /// worker are turned into [`ClusterError::ScanFailed`]; the node's own
    /// (a cast the query asked for, memory) pass unchanged.
    engine_errors_only: bool,
}

impl ClusterScanExec {
    fn new(input: Arc<dyn ExecutionPlan>, cluster: &Cluster, table: &str) -> Self {
        ClusterScanExec {
            input,
            register: cluster.register.clone(),
            table: table.to_owned(),
            workers: cluster.workers.clone(),
            engine_errors_only: false,
        }
    }
}

impl DisplayAs for ClusterScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.engine_errors_only { "tables" } else { "table" };
        write!(f, "ClusterScanExec: {what}={}, workers=[{}]", self.table, self.workers.join(", "))
    }
}

impl ExecutionPlan for ClusterScanExec {
    fn name(&self) -> &str {
        "ClusterScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("ClusterScanExec takes one child".into()));
        }
        Ok(Arc::new(ClusterScanExec {
            input: children.swap_remove(0),
            register: self.register.clone(),
            table: self.table.clone(),
            workers: self.workers.clone(),
            engine_errors_only: self.engine_errors_only,
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let failed = {
            let (register, table, workers) = (self.register.clone(), self.table.clone(), self.workers.clone());
            let engine_errors_only = self.engine_errors_only;
            move |e: DataFusionError| -> DataFusionError {
                if let DataFusionError::External(inner) = e.find_root()
                    && inner.downcast_ref::<ClusterError>().is_some()
                {
                    return e;
                }
                if engine_errors_only && !from_cluster(&e, &workers) {
                    return e;
                }
                let text = e.to_string();
                let worker = workers
                    .iter()
                    .find(|w| names(&text, &format!("worker {w}")))
                    .or_else(|| workers.iter().find(|w| names(&text, w)))
                    .map(|w| format!("worker {w}"))
                    .unwrap_or_else(|| format!("one of its workers ({})", workers.join(", ")));
                tracing::warn!(register, table, %worker, error = %e, "scan on the cluster failed");
                DataFusionError::External(Box::new(ClusterError::ScanFailed {
                    node: register.clone(),
                    table: table.clone(),
                    worker,
                }))
            }
        };
        let input = self.input.execute(partition, context).map_err(&failed)?;
        let schema = input.schema();
        let stream = input.map(move |b| b.map_err(&failed));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
