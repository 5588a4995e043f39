//! OpenTelemetry tracing end to end: a request through a real Envoy configured with its
//! OpenTelemetry tracer, to heimdall (its binary, exporting over OTLP/gRPC) and a real Cerbos.
//! An OTLP receiver started here (the collector's `TraceService`, on loopback) gets both
//! Envoy's spans and heimdall's: heimdall's decision span must be in Envoy's trace, a child of
//! the span of Envoy's ext_authz call (the context Envoy puts in the gRPC metadata, not the
//! client's `traceparent` header in the `CheckRequest`), carry the rule and the decision, and
//! have the Cerbos call and an HTTP contextualizer's call as children (the remote service
//! receiving a `traceparent` that names heimdall's client span), record the steps as events;
//! heimdall's log lines in the decision carry the trace id.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use heimdall::test_helpers::cerbos::Cerbos;
use heimdall::test_helpers::echo::EchoUpstream;
use heimdall::test_helpers::envoy::{self, Envoy, TemplateValues, replace_exactly};
use heimdall::test_helpers::heimdall::HeimdallProcess;
use heimdall::test_helpers::remote_service::{RemoteService, Reply};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::sync::Mutex;

/// The trace the client starts: Envoy continues it (the `01` flag: sampled).
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// How long the spans may take to arrive (both exporters flush every 50–100 ms here).
const ARRIVAL: Duration = Duration::from_secs(10);

/// A span as received, with the `service.name` of its resource.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

/// The OTLP/gRPC trace receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().await;
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A string attribute's value.
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            Some(any_value::Value::IntValue(i)) => Some(i.to_string()),
            Some(any_value::Value::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the receiver on a free loopback port.
async fn start_receiver() -> (Receiver, SocketAddr) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (receiver, addr)
}

/// One rule: anonymous callers, their plan fetched from `profiles`, may view a public document,
/// as Cerbos decides.
fn heimdall_config(cerbos: &Cerbos, profiles: &RemoteService) -> String {
    format!(
        r#"version: "1"
log: {{ decisions: true }}
# Generous deadlines: a loaded test machine must not turn the decision into a timeout.
server: {{ check_timeout: 1500ms }}
cerbos:
  url: "{}"
  timeout: 500ms
  health_interval: 100ms
mechanisms:
  authenticators:
    - {{ id: anon, type: anonymous }}
  contextualizers:
    - id: profile
      type: http
      config:
        request:
          url: "{}/profiles/{{subject.id}}"
          timeout: 500ms
        attributes:
          plan: response.body.plan
  authorizers:
    - id: public_document
      type: cerbos
      config:
        kind: document
        id: '"doc-1"'
        attr:
          public: 'true'
        actions: '"view"'
rules:
  - id: public_docs
    match: {{ paths: [/docs] }}
    execute:
      - authenticator: anon
      - contextualizer: profile
      - authorizer: public_document
"#,
        cerbos.grpc_url(),
        profiles.base_url()
    )
}

/// The test Envoy configuration with Envoy's OpenTelemetry tracer on: every request sampled,
/// spans sent over gRPC to `collector`, flushed after each span or 100 ms.
fn envoy_config(
    heimdall_grpc: SocketAddr,
    heimdall_http: SocketAddr,
    upstream: SocketAddr,
    collector: SocketAddr,
) -> String {
    let rendered = envoy::render(&TemplateValues {
        admin_port: 0,
        listen_port: 0,
        ext_authz_grpc: heimdall_grpc,
        upstream,
        side_port: heimdall_http,
        timeout_ms: 2000,
    })
    .unwrap();
    let tracer = r#"                use_remote_address: true
                tracing:
                  random_sampling: { value: 100 }
                  provider:
                    name: envoy.tracers.opentelemetry
                    typed_config:
                      "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                      service_name: envoy
                      grpc_service:
                        envoy_grpc: { cluster_name: otlp }
                        timeout: 1s
"#;
    let cluster = format!(
        r#"  clusters:
    - name: otlp
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {{}}
      load_assignment:
        cluster_name: otlp
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: 127.0.0.1, port_value: {} }}
"#,
        collector.port()
    );
    let runtime = r#"layered_runtime:
  layers:
    - name: flush_often
      static_layer:
        tracing.opentelemetry.min_flush_spans: 1
        tracing.opentelemetry.flush_interval_ms: 100
static_resources:
"#;
    let config = replace_exactly(
        &rendered,
        "                use_remote_address: true\n",
        tracer,
        1,
    )
    .unwrap();
    let config = replace_exactly(&config, "  clusters:\n", &cluster, 1).unwrap();
    replace_exactly(&config, "static_resources:\n", runtime, 1).unwrap()
}

/// Waits until `found` finds what it looks for in the spans received so far.
async fn wait_for<T>(
    receiver: &Receiver,
    what: &str,
    found: impl Fn(&[Received]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        {
            let spans = receiver.spans.lock().await;
            if let Some(result) = found(&spans) {
                return result;
            }
            if Instant::now() > deadline {
                let seen: Vec<_> = spans
                    .iter()
                    .map(|r| format!("{}: {} ({})", r.service, r.span.name, hex(&r.span.span_id)))
                    .collect();
                panic!("{what} did not arrive within {ARRIVAL:?}; received: {seen:#?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_joins_envoys_trace_and_its_cerbos_call_is_its_child() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let (receiver, collector) = start_receiver().await;
    let echo = EchoUpstream::start().await;
    let profiles =
        RemoteService::start(|_| Reply::json(200, &serde_json::json!({ "plan": "gold" }))).await;
    let endpoint = format!("http://{collector}");
    let heimdall = HeimdallProcess::start(
        &heimdall_config(&cerbos, &profiles),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "heimdall"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    assert!(
        heimdall.wait_ready(Duration::from_secs(20)).await,
        "heimdall not ready:\n{}",
        heimdall.log_tail(40)
    );
    let Some(envoy) = Envoy::start_rendered(envoy_config(
        heimdall.grpc_addr(),
        heimdall.http_addr(),
        echo.addr,
        collector,
    ))
    .await
    else {
        return;
    };

    // The client sends a `traceparent` of its own: it reaches heimdall inside the
    // `CheckRequest`'s headers too, so a parent taken from there would be the client's span.
    let response = reqwest::Client::new()
        .get(envoy.url("/docs"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", heimdall.log_tail(20));

    let decision = wait_for(&receiver, "heimdall's decision span", |spans| {
        spans
            .iter()
            .find(|r| r.service == "heimdall" && r.span.name == "heimdall.decision")
            .map(|r| r.span.clone())
    })
    .await;
    assert_eq!(
        hex(&decision.trace_id),
        CLIENT_TRACE,
        "Envoy's (the client's) trace"
    );
    assert_eq!(decision.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(&decision.attributes, "rule.id").as_deref(),
        Some("public_docs")
    );
    assert_eq!(
        attribute(&decision.attributes, "decision").as_deref(),
        Some("allow")
    );

    // Its parent is the span of Envoy's ext_authz call: a client span Envoy exported.
    let parent = wait_for(&receiver, "Envoy's ext_authz span", |spans| {
        spans
            .iter()
            .find(|r| r.service == "envoy" && r.span.span_id == decision.parent_span_id)
            .map(|r| r.span.clone())
    })
    .await;
    assert_ne!(hex(&decision.parent_span_id), CLIENT_SPAN);
    assert_eq!(parent.trace_id, decision.trace_id);
    assert_eq!(
        parent.kind,
        SpanKind::Client as i32,
        "the ext_authz call: {}",
        parent.name
    );

    // The Cerbos call is the decision's child.
    let cerbos_call = wait_for(&receiver, "heimdall's Cerbos span", |spans| {
        spans
            .iter()
            .find(|r| {
                r.service == "heimdall"
                    && r.span.name == "cerbos.svc.v1.CerbosService/CheckResources"
            })
            .map(|r| r.span.clone())
    })
    .await;
    assert_eq!(cerbos_call.trace_id, decision.trace_id);
    assert_eq!(cerbos_call.parent_span_id, decision.span_id);
    assert_eq!(cerbos_call.kind, SpanKind::Client as i32);

    // So is the HTTP contextualizer's call, whose context the service received.
    let http_call = wait_for(&receiver, "heimdall's HTTP client span", |spans| {
        spans
            .iter()
            .find(|r| r.service == "heimdall" && r.span.name == "GET")
            .map(|r| r.span.clone())
    })
    .await;
    assert_eq!(http_call.parent_span_id, decision.span_id);
    assert_eq!(http_call.kind, SpanKind::Client as i32);
    let received = profiles.received().await;
    let sent = received
        .first()
        .and_then(|r| r.headers.get("traceparent"))
        .expect("the profile service received a traceparent");
    assert_eq!(
        sent,
        &format!("00-{CLIENT_TRACE}-{}-01", hex(&http_call.span_id))
    );

    // Each step that ran is an event of the decision span.
    let steps: Vec<(String, String)> = decision
        .events
        .iter()
        .filter(|e| e.name == "step")
        .map(|e| {
            (
                attribute(&e.attributes, "step.kind").unwrap_or_default(),
                attribute(&e.attributes, "step.outcome").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("authenticator".to_owned(), "accepted".to_owned()),
            ("contextualizer".to_owned(), "done".to_owned()),
            ("authorizer".to_owned(), "allowed".to_owned()),
        ]
    );

    // The decision's log line carries the trace id; nothing was dropped.
    assert!(
        heimdall
            .log()
            .lines()
            .any(|line| line.contains("request allowed")
                && line.contains(&format!("trace_id={CLIENT_TRACE}"))),
        "{}",
        heimdall.log_tail(20)
    );
    assert_eq!(
        heimdall
            .metric_value("heimdall_trace_spans_dropped_total")
            .await,
        Some(0.0)
    );
}
