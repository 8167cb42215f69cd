//! Traces cross the wire: node work is a child of the coordinator's sub-query span.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

use crate::common;

/// One process-wide subscriber exporting to memory (a scoped subscriber would
/// miss spans whose call sites other test threads registered first).
fn exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber of the tests");
        (exporter, provider)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_work_is_a_child_of_the_query_span_across_the_wire() {
    let (exporter, provider) = exporter();
    let fed = common::federation().await;
    let mut client = fed.client("alice", "P-trace").await.expect("connect");
    client
        .query("SELECT o.fixation, count(*) FROM hip.operations o JOIN dors.deaths d ON d.person = o.person GROUP BY 1")
        .await
        .expect("query");
    fed.shutdown().await;
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let is_ours = |s: &opentelemetry_sdk::trace::SpanData| {
        s.attributes.iter().any(|kv| kv.key.as_str() == "project" && kv.value.as_str() == "P-trace")
    };
    // Planning (GetFlightInfo) and execution (DoGet) each run in a query span;
    // the sub-queries belong to the execution.
    let subqueries: Vec<_> = spans.iter().filter(|s| s.name == "node_subquery").collect();
    let query = spans
        .iter()
        .find(|q| {
            q.name == "query" && is_ours(q) && subqueries.iter().any(|s| s.parent_span_id == q.span_context.span_id())
        })
        .expect("a query span with the sub-queries as children");
    let trace = query.span_context.trace_id();
    let subqueries: Vec<_> =
        subqueries.into_iter().filter(|s| s.parent_span_id == query.span_context.span_id()).collect();
    assert_eq!(subqueries.len(), 2, "one sub-query span per node, children of the query span");
    let at_nodes: Vec<_> =
        spans.iter().filter(|s| s.name == "node_execute" && s.span_context.trace_id() == trace).collect();
    assert_eq!(at_nodes.len(), 2, "each node records its part in the same trace");
    for n in at_nodes {
        assert!(
            subqueries.iter().any(|s| s.span_context.span_id() == n.parent_span_id),
            "the node's span is a child of the coordinator's sub-query span (via traceparent)"
        );
    }
}
