//! OpenTelemetry trace export: the OTLP/gRPC exporter, the SDK's batch span processor on the
//! tokio runtime, the sampler and resource from the `tracing` section, the `tracing` layer that
//! turns heimdall's spans into OpenTelemetry spans, and a bounded shutdown.
//!
//! A decision never waits for export: a finished span is queued with a non-blocking send, and
//! past `tracing.max_queue_size` queued spans it is dropped and counted
//! (`heimdall_trace_spans_dropped_total`). The SDK counts its drops only for a log line at
//! shutdown, so [`BoundedQueue`] keeps the count itself: it admits a span only while fewer
//! than the queue size are waiting (the exporter wrapper, [`Dequeued`], takes spans off the
//! count as their batch leaves), so the SDK's own queue never overflows and every drop is seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};

use crate::config::otel::{Sampler, TracingConfig};

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry exporter: {0}")]
pub struct TracingError(String);

/// The installed tracer: its provider, shut down (bounded) at exit.
pub struct Tracing {
    provider: SdkTracerProvider,
    shutdown_timeout: Duration,
}

/// Room in the SDK's queue beyond the spans [`BoundedQueue`] admits, for its control
/// messages (flush, shutdown), so that they never take a span's place.
const CONTROL_MESSAGES: usize = 4;

/// The tracer for `config`, or `None` when tracing is off (no endpoint): then no exporter,
/// processor or connection exists at all. Must run inside the tokio runtime, where the batch
/// processor's task runs.
pub fn build(config: &TracingConfig) -> Result<Option<(Tracing, SdkTracer)>, TracingError> {
    let Some(endpoint) = config
        .endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    else {
        return Ok(None);
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(config.export_timeout);
    if endpoint.starts_with("https://") {
        exporter =
            exporter.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
    }
    let exporter = exporter
        .build()
        .map_err(|e| TracingError(crate::outbound::error_chain(&e)))?;
    let waiting = Arc::new(AtomicUsize::new(0));
    let batches = BatchSpanProcessor::builder(
        Dequeued {
            inner: exporter,
            waiting: Arc::clone(&waiting),
        },
        opentelemetry_sdk::runtime::Tokio,
    )
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue_size.saturating_add(CONTROL_MESSAGES))
            .with_max_export_batch_size(config.max_export_batch_size)
            .with_scheduled_delay(config.schedule_delay)
            .with_max_export_timeout(config.export_timeout)
            .build(),
    )
    .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BoundedQueue {
            inner: batches,
            waiting,
            limit: config.max_queue_size,
        })
        .with_sampler(sampler(config))
        .with_resource(
            Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    let tracer = provider.tracer("heimdall");
    Ok(Some((
        Tracing {
            provider,
            shutdown_timeout: config.shutdown_timeout,
        },
        tracer,
    )))
}

fn sampler(config: &TracingConfig) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler as Sdk;
    let ratio = Sdk::TraceIdRatioBased(config.ratio);
    match config.sampler {
        Sampler::AlwaysOn => Sdk::AlwaysOn,
        Sampler::AlwaysOff => Sdk::AlwaysOff,
        Sampler::Traceidratio => ratio,
        Sampler::ParentbasedAlwaysOn => Sdk::ParentBased(Box::new(Sdk::AlwaysOn)),
        Sampler::ParentbasedAlwaysOff => Sdk::ParentBased(Box::new(Sdk::AlwaysOff)),
        Sampler::ParentbasedTraceidratio => Sdk::ParentBased(Box::new(ratio)),
    }
}

impl Tracing {
    /// Sends what is queued and closes the exporter, waiting at most `tracing.shutdown_timeout`
    /// (with no collector listening, the SDK alone would wait for its export deadline).
    pub async fn shutdown(self) {
        let timeout = self.shutdown_timeout;
        let provider = self.provider;
        // The SDK blocks the calling thread until its batch task answers: off the runtime's
        // workers, and abandoned (the task ends with the runtime) once the time is up.
        let closing = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout));
        match tokio::time::timeout(timeout, closing).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "trace export did not shut down cleanly"),
            Ok(Err(error)) => tracing::warn!(%error, "trace export shutdown failed"),
            Err(_) => tracing::warn!(
                ?timeout,
                "trace export shutdown timed out; spans still queued are lost"
            ),
        }
    }
}

/// Admits a finished span to the batch processor only while fewer than `limit` are waiting;
/// otherwise drops and counts it. Never blocks.
#[derive(Debug)]
struct BoundedQueue<P> {
    inner: P,
    waiting: Arc<AtomicUsize>,
    limit: usize,
}

impl<P: SpanProcessor> SpanProcessor for BoundedQueue<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // The batch processor ignores spans that are not sampled: they never wait.
        if span.span_context.is_sampled()
            && self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limit
        {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            crate::trace_context::spans_dropped().inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, taking each batch's spans off [`BoundedQueue`]'s count as it leaves.
#[derive(Debug)]
struct Dequeued<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Dequeued<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let sent = batch.len();
        let _ = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(sent))
            });
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _};

    #[test]
    fn no_exporter_without_an_endpoint() {
        // No runtime here: with tracing off nothing needs one, nothing is built.
        assert!(build(&TracingConfig::default()).unwrap().is_none());
        let blank = TracingConfig {
            endpoint: Some("  ".into()),
            ..TracingConfig::default()
        };
        assert!(build(&blank).unwrap().is_none());
    }

    #[tokio::test]
    async fn shutdown_is_bounded_without_a_collector() {
        // A port nothing listens on: export fails or hangs, shutdown must not.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let config = TracingConfig {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            shutdown_timeout: Duration::from_millis(300),
            ..TracingConfig::default()
        };
        let (tracing, tracer) = build(&config).unwrap().unwrap();
        tracer.start("queued").end();
        let started = std::time::Instant::now();
        tracing.shutdown().await;
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // Nothing leaves the queue (no export happens before shutdown): the third span waits
        // behind a limit of two, so it is dropped and counted.
        let waiting = Arc::new(AtomicUsize::new(0));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BoundedQueue {
                inner: opentelemetry_sdk::trace::SimpleSpanProcessor::new(NeverLeaves),
                waiting: Arc::clone(&waiting),
                limit: 2,
            })
            .build();
        let tracer = provider.tracer("test");
        let before = crate::trace_context::spans_dropped().get();
        for _ in 0..3 {
            tracer.start("span").end();
        }
        assert_eq!(waiting.load(Ordering::Acquire), 2);
        assert!(crate::trace_context::spans_dropped().get() > before);
    }

    /// An exporter that keeps nothing and, unwrapped by [`Dequeued`], never lowers the count.
    #[derive(Debug)]
    struct NeverLeaves;

    impl SpanExporter for NeverLeaves {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Ok(())
        }
    }
}
