//! A register node as a `datafusion-federation` SQL executor: the largest
//! sub-plan that touches only this register is unparsed to SQL and sent to the
//! node in a [`SubQuery`](samkor_proto::pb::SubQuery) ticket.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{PhysicalExpr, SendableRecordBatchStream};
use datafusion::sql::unparser::dialect::Dialect;
use datafusion_federation::sql::SQLExecutor;
use futures::{StreamExt, TryStreamExt};
use samkor_proto::client::NodeError;

use crate::nodes::RemoteNode;

/// What every sub-query of one coordinator query carries.
#[derive(Debug, Clone)]
pub struct QueryScope {
    pub project: String,
    pub query_id: String,
    /// The caller's trace context, used when no exporter is configured here.
    pub traceparent: Option<String>,
    /// The query's span; node sub-queries are its children.
    pub span: tracing::Span,
    /// For a care provider's direct access: its hospital, sent with every
    /// sub-query (`SubQuery.direct_unit`) so that the node filters too.
    pub direct_unit: Option<String>,
}

/// Executes sub-plans on one node for one query.
#[derive(Debug)]
pub struct NodeExecutor {
    node: Arc<RemoteNode>,
    scope: Arc<QueryScope>,
}

impl NodeExecutor {
    pub fn new(node: Arc<RemoteNode>, scope: Arc<QueryScope>) -> Self {
        NodeExecutor { node, scope }
    }
}

fn node_error(e: NodeError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Gives a node's batch the schema the coordinator planned with (names from
/// the plan, types cast where the node chose another representation).
fn conform(node: &str, batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.num_columns() != schema.fields().len() {
        return Err(node_error(NodeError::Protocol {
            node: node.to_owned(),
            reason: format!("returned {} columns where {} were expected", batch.num_columns(), schema.fields().len()),
        }));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}

/// The SQL dialect of sub-queries: DataFusion's, with every identifier quoted
/// (DataFusion's default dialect decides per identifier with a freshly
/// compiled regular expression, which is slow and deep on the stack).
#[derive(Debug)]
pub struct NodeDialect;

impl Dialect for NodeDialect {
    fn identifier_quote_style(&self, _identifier: &str) -> Option<char> {
        Some('"')
    }
}

#[async_trait]
impl SQLExecutor for NodeExecutor {
    fn name(&self) -> &str {
        &self.node.register
    }

    fn compute_context(&self) -> Option<String> {
        Some(self.node.register.clone())
    }

    fn dialect(&self) -> Arc<dyn Dialect> {
        Arc::new(NodeDialect)
    }

    fn execute(
        &self,
        query: &str,
        schema: SchemaRef,
        _filters: &[Arc<dyn PhysicalExpr>],
    ) -> Result<SendableRecordBatchStream> {
        let node = self.node.clone();
        let scope = self.scope.clone();
        let sql = query.to_owned();
        let span = tracing::info_span!(parent: &scope.span, "node_subquery", register = %node.register, query_id = %scope.query_id);
        span.in_scope(|| tracing::info!(sql = %sql, "sub-query sent"));
        let traceparent = samkor_proto::trace::traceparent(&span).or_else(|| scope.traceparent.clone());
        let open = async move {
            let mut sub = samkor_proto::ticket::sub_query(&scope.project, &sql, &scope.query_id);
            sub.direct_unit = scope.direct_unit.clone().unwrap_or_default();
            let stream = node.client.send(&sub, traceparent.as_deref()).await.map_err(node_error)?;
            let client = node.client.clone();
            Ok::<_, DataFusionError>(stream.map_err(move |e| node_error(client.stream_error(e))))
        };
        let register = self.node.register.clone();
        let target = schema.clone();
        let batches = futures::stream::once(tracing::Instrument::instrument(open, span))
            .try_flatten()
            .map(move |b| b.and_then(|b| conform(&register, b, &target)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    async fn table_names(&self) -> Result<Vec<String>> {
        Ok(self.node.catalogue().map(|c| c.tables.iter().map(|t| t.name.clone()).collect()).unwrap_or_default())
    }

    async fn get_table_schema(&self, table_name: &str) -> Result<SchemaRef> {
        self.node
            .catalogue()
            .and_then(|c| c.tables.iter().find(|t| t.name == table_name).map(|t| t.schema.clone()))
            .ok_or_else(|| DataFusionError::Plan(format!("table {}.{table_name} does not exist", self.node.register)))
    }
}
