//! W3C Trace Context: the `traceparent` a request arrives with (or one started at the
//! ingress) travels with its notification through NATS (a message header), and every
//! delivery attempt sends a child of it to the receiver, so one trace id joins the
//! client's request, Herald's log lines and the webhook the receiver gets.
//!
//! With `--otlp-endpoint`, [`Spans`] exports Herald's own spans over OTLP/HTTP: the
//! request (`herald.ingest`), each notification's publish (`herald.publish`, whose id
//! travels in NATS) and each delivery attempt (`herald.deliver`, the parent of the
//! webhook's). A trace Herald starts is then sampled; a caller's flag is kept as it came,
//! and an unsampled trace records nothing. Without the flag no span is ever built.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor};
use opentelemetry_sdk::Resource;

/// The header, in NATS messages and HTTP requests alike.
pub const HEADER: &str = "traceparent";

/// One `traceparent`: a trace, the span that is the parent of the next hop, and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when it is not valid (the caller then starts a
    /// trace of its own, as the specification asks). Versions above 00 are read by their
    /// version-00 prefix; version ff is invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let prefix = value.get(..55)?;
        let rest = &value[55..];
        let mut parts = prefix.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
            return None;
        }
        match version {
            "ff" => return None,
            "00" if !rest.is_empty() => return None,
            _ if !rest.is_empty() && !rest.starts_with('-') => return None,
            _ => {}
        }
        let parent = TraceParent {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parent.trace_id != 0 && parent.span_id != 0).then_some(parent)
    }

    /// A new trace, not sampled.
    pub fn root() -> Self {
        TraceParent {
            trace_id: non_zero(fastrand::u128(..)),
            span_id: non_zero(fastrand::u64(..)),
            flags: 0,
        }
    }

    /// The child of `value` if it is a valid `traceparent`, else a new trace, sampled when
    /// `sample_new` (Herald exports spans); with the parent's span id, if there was one.
    pub fn continue_or_start(value: Option<&str>, sample_new: bool) -> (Self, Option<u64>) {
        match value.and_then(Self::parse) {
            Some(parent) => (parent.child(), Some(parent.span_id)),
            None => {
                let mut root = Self::root();
                root.flags |= SAMPLED * u8::from(sample_new);
                (root, None)
            }
        }
    }

    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The next hop's parent: the same trace and flags, a new span.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: non_zero(fastrand::u64(..)),
            ..*self
        }
    }

    /// The child of `value` if it is a valid `traceparent`, else a new trace.
    pub fn continue_from(value: Option<&str>) -> Self {
        value
            .and_then(Self::parse)
            .map_or_else(Self::root, |parent| parent.child())
    }

    /// The header value (version 00).
    pub fn to_header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The `traceparent` a JetStream message was published with, if any.
    pub fn header_of(message: &async_nats::jetstream::Message) -> Option<&str> {
        let headers = message.headers.as_ref()?;
        headers.get(HEADER).map(|v| v.as_str())
    }

    /// The trace id as log lines and the W3C format write it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

const SAMPLED: u8 = 0x01;

/// Where spans are exported: an OTLP/HTTP (protobuf) traces endpoint.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The full URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
}

/// Herald's span export, cheap to clone. Off (the default) it holds nothing, and every
/// place that could record a span asks [`Spans::clock_for`] before it builds one or reads
/// a clock for it (so an unsampled trace costs nothing either). On, spans queue (bounded: over 2,048 waiting they are dropped, never
/// waited for) and go out in batches from one task.
#[derive(Clone, Default)]
pub struct Spans(Option<Arc<BatchSpanProcessor<Tokio>>>);

/// One finished span.
pub struct Span {
    pub name: &'static str,
    pub kind: SpanKind,
    /// Its trace, its own id and flags.
    pub context: TraceParent,
    pub parent: Option<u64>,
    /// Whether the parent is another process's (the caller, or across NATS).
    pub parent_is_remote: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// Set when the span's work failed.
    pub error: Option<String>,
}

impl Spans {
    /// Starts the export task (on the current tokio runtime).
    pub fn start(config: &OtlpConfig) -> Result<Self, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("--otlp-endpoint: {e}"))?;
        let mut processor = BatchSpanProcessor::builder(exporter, Tokio).build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        );
        Ok(Spans(Some(Arc::new(processor))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The time to start or end a span of `context` at, when that span will be exported
    /// (spans on, trace sampled): callers build no span, and read no clock, otherwise.
    pub fn clock_for(&self, context: &TraceParent) -> Option<SystemTime> {
        (self.is_on() && context.is_sampled()).then(SystemTime::now)
    }

    /// Queues `span` for export if spans are on and its trace is sampled.
    pub fn record(&self, span: Span) {
        let Some(processor) = &self.0 else { return };
        if !span.context.is_sampled() {
            return;
        }
        processor.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from(span.context.trace_id),
                SpanId::from(span.context.span_id),
                TraceFlags::new(span.context.flags),
                false,
                TraceState::default(),
            ),
            parent_span_id: span.parent.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: span.parent_is_remote,
            span_kind: span.kind,
            name: span.name.into(),
            start_time: span.start,
            end_time: span.end,
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: span.error.map_or(Status::Unset, Status::error),
            instrumentation_scope: InstrumentationScope::builder("herald").build(),
        });
    }

    /// Exports what is queued and stops the export task.
    pub async fn shutdown(&self) {
        let Some(processor) = self.0.clone() else {
            return;
        };
        // The SDK blocks the calling thread until its task has flushed.
        let flushed = tokio::task::spawn_blocking(move || processor.shutdown()).await;
        if let Ok(Err(err)) = flushed {
            tracing::warn!(error = %err, "spans not all exported at shutdown");
        }
    }
}

/// An id of all zeros is invalid; the chance is nil, the rule is cheap.
fn non_zero<T: PartialEq + From<u8>>(id: T) -> T {
    if id == T::from(0) {
        T::from(1)
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_round_trips() {
        let t = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.span_id, 0x00f067aa0ba902b7);
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_header(), EXAMPLE);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version is read by its version-00 prefix.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceParent::parse(later).is_some());
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_and_takes_a_new_span() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let child = TraceParent::continue_from(Some(EXAMPLE));
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.span_id, parent.span_id);
        let started = TraceParent::continue_from(Some("garbage"));
        assert_ne!(started.trace_id, parent.trace_id);
        assert_eq!(started.flags, 0, "a trace Herald starts is not sampled");
        assert_eq!(TraceParent::parse(&started.to_header()), Some(started));
    }
}
