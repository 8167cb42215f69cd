//! W3C trace context across the federation: the coordinator puts the context
//! of a sub-query's span in the `traceparent` metadata of the node call, the
//! node makes its span a child of it. Without an OpenTelemetry exporter
//! configured the spans have no trace id and nothing is propagated.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The `traceparent` value of `span`, if it belongs to a sampled trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    propagator().inject_context(&context, &mut carrier);
    carrier.remove(crate::headers::TRACEPARENT)
}

/// Makes `span` a child of the remote context in `traceparent`.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(crate::headers::TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = propagator().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}
