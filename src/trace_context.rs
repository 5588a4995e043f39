//! W3C trace context in and out: whether OpenTelemetry tracing is on, the parent a decision
//! takes from its caller, and the `traceparent`/`tracestate` heimdall puts on what it sends
//! (gRPC metadata, HTTP headers, NATS headers) — one carrier adapter per transport, here.
//!
//! Everything checks [`enabled`] first: with tracing off (the default) nothing is parsed,
//! created or allocated, and a decision costs what it cost before tracing existed. Parsing is
//! the OpenTelemetry SDK's W3C propagator; a malformed or all-zero `traceparent` yields no
//! parent, so the decision span starts a trace of its own rather than joining a forged one.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prometheus_client::metrics::counter::Counter;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of the pipeline's step events (`tracing::debug!`): the tracing layer records
/// them on the decision span; the log shows them only at `debug`.
pub const STEP_TARGET: &str = "heimdall::step";

/// The W3C header (and gRPC metadata key) carrying the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor trace state.
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Spans the batch exporter dropped because its queue was full; registered as
/// `heimdall_trace_spans_dropped_total` (one process, one exporter: one counter).
static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Whether spans are exported: a single relaxed load, the only cost tracing adds when off.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns span creation and context propagation on; called once the exporter and the tracing
/// layer are installed.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The counter of spans dropped under backpressure.
pub fn spans_dropped() -> &'static Counter {
    &SPANS_DROPPED
}

/// The remote parent in `carrier`, when it holds a well-formed W3C `traceparent`; `None` for
/// an absent, malformed or invalid one.
pub fn extract(carrier: &dyn Extractor) -> Option<Context> {
    if !well_formed(carrier.get(TRACEPARENT)?) {
        return None;
    }
    let context = TraceContextPropagator::new().extract(carrier);
    let span = context.span();
    let parent = span.span_context();
    (parent.is_valid() && parent.is_remote()).then(|| context.clone())
}

/// The W3C shape the SDK's parser does not check by itself (it takes a 31-digit trace id):
/// `version-traceid-parentid-flags` with exactly 2, 32, 16 and 2 lower-case hex digits, version
/// `ff` invalid, nothing after version `00`'s flags and only a `-`-separated part after a later
/// version's.
fn well_formed(traceparent: &str) -> bool {
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut parts = traceparent.splitn(5, '-');
    let (Some(version), Some(trace), Some(span), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let rest = parts.next();
    [(version, 2), (trace, 32), (span, 16), (flags, 2)]
        .iter()
        .all(|(part, len)| part.len() == *len && lower_hex(part))
        && version != "ff"
        && (version != "00" || rest.is_none())
}

/// The remote parent given as `traceparent` and `tracestate` values.
pub fn extract_values(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    extract(&Values {
        traceparent,
        tracestate,
    })
}

/// Writes `span`'s context into `carrier` as `traceparent` (and `tracestate`).
pub fn inject(span: &tracing::Span, carrier: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(&span.context(), carrier);
}

/// A `traceparent` and `tracestate` read from anywhere.
struct Values<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Values<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// gRPC metadata, as tonic hands it over and sends it.
pub struct Metadata<'a>(pub &'a mut tonic::metadata::MetadataMap);

/// Read-only gRPC metadata.
pub struct MetadataRef<'a>(pub &'a tonic::metadata::MetadataMap);

impl Extractor for MetadataRef<'_> {
    /// A key sent twice is ambiguous: W3C requires a single `traceparent`.
    fn get(&self, key: &str) -> Option<&str> {
        let mut values = self.0.get_all(key).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().ok(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// An outbound HTTP request's headers.
pub struct HttpHeaders<'a>(pub &'a mut http::HeaderMap);

impl Injector for HttpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// A NATS message's headers.
pub struct NatsHeaders<'a>(pub &'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_well_formed_traceparent_is_the_parent() {
        let parent = extract_values(VALID, Some("vendor=x")).unwrap();
        let span = parent.span();
        let context = span.span_context();
        assert_eq!(
            context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            context.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(context.trace_state().get("vendor"), Some("x"));
    }

    #[test]
    fn a_malformed_traceparent_is_no_parent() {
        for malformed in [
            "",
            "garbage",
            // Upper case, all-zero ids, a short id, version 0 with extra parts, version ff.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert!(extract_values(malformed, None).is_none(), "{malformed:?}");
        }
    }

    #[test]
    fn a_repeated_traceparent_in_metadata_is_no_parent() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(TRACEPARENT, VALID.parse().unwrap());
        assert!(extract(&MetadataRef(&metadata)).is_some());
        metadata.append(TRACEPARENT, VALID.parse().unwrap());
        assert!(extract(&MetadataRef(&metadata)).is_none());
    }
}
