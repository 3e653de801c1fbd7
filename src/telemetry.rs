//! Structured logging with `tracing` (human-readable text by default, JSON lines when `log.format = "json"`),
//! traces exported over OTLP when `telemetry.otlp_endpoint` is set, and Prometheus metrics ([`metrics`]).
//!
//! Spans: `http` for each request (method, path, request id, user id, and the order id a checkout placed), `entity`
//! for each message an entity actor handles (kind, entity id), a child of the span the message was sent from, and
//! `effect` for each side effect an entity runs (a saga step, a charge), a child of the message that called for it.
//! So a checkout is one trace: the request, the order actor, each saga step and the product, coupon, payment and
//! cart actors it calls. In cluster mode a request forwarded to the node hosting an entity carries the trace in a
//! `traceparent` Kafka header ([`traceparent`], [`continue_trace`]), and that node's spans join it.

pub mod metrics;

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Config;

/// Flushes and stops the trace exporter when dropped (at the end of `main`), so the last spans are sent.
pub struct Traces(Option<SdkTracerProvider>);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("commercex: flushing traces: {error}");
            }
        }
    }
}

/// Installs the global subscriber (`RUST_LOG` overrides `log.level`) and, with `telemetry.otlp_endpoint` set, the
/// OTLP/HTTP trace exporter (protobuf, to `{endpoint}/v1/traces`). A second call installs nothing.
pub fn init(config: &Config) -> anyhow::Result<Traces> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let fmt = tracing_subscriber::fmt::layer();
    let fmt = if config.log.format == "json" { fmt.json().boxed() } else { fmt.boxed() };
    // The log level filters the log only: the exported spans are this crate's, whatever is logged.
    let fmt = fmt.with_filter(filter);
    let endpoint = config.telemetry.otlp_endpoint.trim_end_matches('/');
    let provider = if endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()?;
        let resource = Resource::builder()
            .with_service_name("commercex")
            .with_attribute(opentelemetry::KeyValue::new("service.instance.id", config.node_id()))
            .build();
        Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
    };
    let traces = provider.as_ref().map(|p| {
        let spans = Targets::new().with_target("commercex", Level::INFO);
        tracing_opentelemetry::layer().with_tracer(p.tracer("commercex")).with_filter(spans)
    });
    let installed = tracing_subscriber::registry().with(fmt).with(traces).try_init().is_ok();
    Ok(Traces(provider.filter(|_| installed)))
}

/// The header that carries a trace between processes (W3C Trace Context), on forwarded cluster requests.
pub const TRACEPARENT: &str = "traceparent";

/// The W3C `traceparent` of the current span, when traces are exported and the span is in one.
pub fn traceparent() -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&Span::current().context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span a `traceparent` names, so work done for another process joins its trace.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A span continued from another process's `traceparent` is in that process's trace.
    #[test]
    fn a_trace_crosses_processes_through_traceparent() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(traceparent(), None, "no span, nothing to carry");
            let sender = tracing::info_span!("sender");
            let header = sender.in_scope(traceparent).expect("a traceparent");
            let sent = sender.context().span().span_context().clone();
            assert_eq!(header, format!("00-{}-{}-01", sent.trace_id(), sent.span_id()));

            let receiver = tracing::info_span!("receiver");
            continue_trace(&receiver, Some(&header));
            let received = receiver.context().span().span_context().clone();
            assert_eq!(received.trace_id(), sent.trace_id());
            assert_ne!(received.span_id(), sent.span_id());

            let unrelated = tracing::info_span!("unrelated");
            continue_trace(&unrelated, Some("not a traceparent"));
            assert_ne!(unrelated.context().span().span_context().trace_id(), sent.trace_id());
        });
    }
}
