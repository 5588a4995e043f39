//! The decision engine: picks the rule, runs its pipeline under a deadline, records metrics and
//! the decision log. Both entry points (ext_authz gRPC and `/decision`) call it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::Instrument as _;

use crate::canonical::PathPolicy;
use crate::decision::{Allowed, Decision, ErrorKind, Outcome, StepError};
use crate::metrics::{Metrics, RuleMetrics};
use crate::request::RequestView;
use crate::rules::{NoRule, RuleSet};

/// The label under which requests that matched no rule are counted.
const NO_RULE_LABEL: &str = "<none>";

/// Shared by every request; rules are swapped atomically as a whole.
pub struct Engine {
    rules: ArcSwap<RuleSet>,
    metrics: Metrics,
    no_rule: RuleMetrics,
    check_timeout: Duration,
    rule_extension: Box<str>,
    log_allows: bool,
    router_id: Arc<str>,
    paths: PathPolicy,
    /// `server.remove_client_headers`, lower-case, in [`folded_order`] for binary search.
    remove_client_headers: Box<[Arc<str>]>,
}

/// Counts one decision in progress for as long as it lives.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A decision and the rule that made it.
pub struct Decided {
    pub outcome: Outcome,
    pub rule: Option<Arc<str>>,
}

impl Engine {
    pub fn new(
        rules: RuleSet,
        metrics: Metrics,
        check_timeout: Duration,
        rule_extension: &str,
        log_allows: bool,
        paths: PathPolicy,
        remove_client_headers: &[String],
    ) -> Self {
        let no_rule = metrics.for_rule(NO_RULE_LABEL);
        Self {
            rules: ArcSwap::from_pointee(rules),
            metrics,
            no_rule,
            check_timeout,
            rule_extension: rule_extension.into(),
            log_allows,
            router_id: Arc::from("router"),
            paths,
            remove_client_headers: {
                let mut names: Vec<Arc<str>> = remove_client_headers
                    .iter()
                    .map(|h| Arc::from(h.to_ascii_lowercase()))
                    .collect();
                names.sort_by(|a, b| folded_order(a, b));
                names.dedup();
                names.into()
            },
        }
    }

    /// The metrics handle (for entry points that count their own rejections).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How both entry points canonicalize request paths (`server.paths`).
    pub fn path_policy(&self) -> &PathPolicy {
        &self.paths
    }

    /// Replaces the rule set; requests in flight finish on the old one.
    /// The policy API's authenticator of the serving rules (`api.authenticator`), if named.
    pub fn api_authenticator(&self) -> Option<Arc<crate::mechanisms::Authenticator>> {
        self.rules.load().api_authenticator().cloned()
    }

    pub fn swap_rules(&self, rules: RuleSet) {
        self.rules.store(Arc::new(rules));
    }

    /// Adds to an allow's removals the `server.remove_client_headers` the client actually sent,
    /// except those the rule's finalizers set (whatever order Envoy applies sets and removals
    /// in). Most requests send none of them, so most allows grow by nothing. The request's few
    /// headers are looked up in the sorted list, rather than every listed name hashed into the
    /// request's map.
    fn remove_client_headers(&self, req: &RequestView<'_>, allowed: &mut Allowed) {
        if self.remove_client_headers.is_empty() {
            return;
        }
        req.headers.for_each_name(|sent| {
            let Ok(found) = self
                .remove_client_headers
                .binary_search_by(|listed| folded_order(listed, sent))
            else {
                return;
            };
            let Some(name) = self.remove_client_headers.get(found) else {
                return;
            };
            let set = allowed
                .upstream_headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name));
            if !set
                && !allowed
                    .remove_headers
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name))
            {
                allowed.remove_headers.push(Arc::clone(name));
            }
        });
    }

    /// Selects the rule and runs its pipeline under `server.check_timeout`; a timeout, no rule
    /// or a refused `context_extensions` rule name are decisions too, counted and logged.
    pub async fn decide(&self, req: &RequestView<'_>) -> Decided {
        self.decide_within(req, None).await
    }

    /// [`Engine::decide`] as part of the caller's trace: `parent` is the trace context the
    /// caller sent beside the request (Envoy's ext_authz span, from the gRPC metadata);
    /// without one, the request's own `traceparent` header. Ignored when tracing is off.
    pub async fn decide_within(
        &self,
        req: &RequestView<'_>,
        parent: Option<opentelemetry::Context>,
    ) -> Decided {
        let span = if crate::trace_context::enabled() {
            decision_span(req, parent)
        } else {
            // Debug level: at info a formatting subscriber renders the span's fields for every
            // check (about 4% of CPU under load), and the decision log lines carry `rule.id`
            // themselves.
            tracing::debug_span!("check", request.id = %req.id, rule.id = tracing::field::Empty)
        };
        // A handle to record the rule into: `Span::current()` would ask the subscriber on every
        // Check, even when the span is disabled.
        let record = span.clone();
        self.decide_inner(req, &record).instrument(span).await
    }

    async fn decide_inner(&self, req: &RequestView<'_>, span: &tracing::Span) -> Decided {
        let started = Instant::now();
        self.metrics.in_flight.inc();
        // Decremented on drop too: a Check whose client went away is cancelled mid-way.
        let _in_flight = InFlight(&self.metrics.in_flight);
        let rules = self.rules.load();
        let named = req
            .context_extensions
            .and_then(|ext| ext.get(&*self.rule_extension))
            .map(String::as_str);
        let (outcome, rule, rule_metrics) =
            match rules.select(named, req.method, req.host, req.path) {
                Ok(selected) => {
                    span.record("rule.id", &*selected.rule.id);
                    let outcome = match tokio::time::timeout(
                        self.check_timeout,
                        selected.rule.pipeline.execute(req, &selected.captures),
                    )
                    .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => Outcome::from_error(StepError::new(
                            ErrorKind::Communication,
                            &selected.rule.id,
                            format!(
                                "no decision within the deadline of {:?}",
                                self.check_timeout
                            ),
                        )),
                    };
                    (
                        outcome,
                        Some(Arc::clone(&selected.rule.id)),
                        &selected.rule.metrics,
                    )
                }
                Err(no_rule) => {
                    let message = match no_rule {
                        NoRule::NoMatch => {
                            format!("no rule matches {} {}{}", req.method, req.host, req.path)
                        }
                        NoRule::UnknownRule(name) => format!(
                            "context_extensions `{}` names unknown rule `{name}`",
                            self.rule_extension
                        ),
                    };
                    (
                        Outcome::from_error(StepError::new(
                            ErrorKind::NoRule,
                            &self.router_id,
                            message,
                        )),
                        None,
                        &self.no_rule,
                    )
                }
            };
        let mut outcome = outcome;
        if let Decision::Allow(allowed) = &mut outcome.decision {
            self.remove_client_headers(req, allowed);
        }
        let elapsed = started.elapsed();
        rule_metrics.duration.observe(elapsed.as_secs_f64());
        let rule_id = rule.as_deref().unwrap_or(NO_RULE_LABEL);
        if crate::trace_context::enabled() {
            record_outcome(span, &outcome);
        }
        match &outcome.decision {
            Decision::Allow(_) => {
                rule_metrics.allow.inc();
                if self.log_allows {
                    tracing::info!(
                        rule.id = rule_id,
                        decision = "allow",
                        method = req.method,
                        host = req.host,
                        path = req.path,
                        "request allowed"
                    );
                }
            }
            Decision::Deny(response) | Decision::Error(response) => {
                let is_error = matches!(outcome.decision, Decision::Error(_));
                let counter = if is_error {
                    &rule_metrics.error
                } else {
                    &rule_metrics.deny
                };
                counter.inc();
                if let Some(error) = &outcome.error {
                    self.metrics.step_error(&error.mechanism, error.kind);
                    tracing::info!(
                        rule.id = rule_id,
                        decision = if is_error { "error" } else { "deny" },
                        status = response.status,
                        error.kind = error.kind.as_str(),
                        error.mechanism = &*error.mechanism,
                        reason = %error.message,
                        method = req.method,
                        host = req.host,
                        path = req.path,
                        "request denied"
                    );
                }
            }
        }
        Decided { outcome, rule }
    }
}

/// The span of one decision when tracing is on: an OpenTelemetry server span whose parent is
/// `parent`, else the request's `traceparent` (a malformed or repeated one is no parent: the
/// span starts a trace). Its `trace_id` field puts the trace id on every log line written
/// inside the decision.
fn decision_span(req: &RequestView<'_>, parent: Option<opentelemetry::Context>) -> tracing::Span {
    use crate::request::HeaderLookup;
    use crate::trace_context::{TRACEPARENT, TRACESTATE, extract_values};
    use opentelemetry::trace::TraceContextExt as _;
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        "heimdall.decision",
        otel.kind = "server",
        otel.status_code = Empty,
        request.id = %req.id,
        rule.id = Empty,
        decision = Empty,
        http.response.status_code = Empty,
        error.kind = Empty,
        error.mechanism = Empty,
        trace_id = Empty,
    );
    let parent = parent.or_else(|| match req.headers.get_unique(TRACEPARENT) {
        HeaderLookup::One(traceparent) => extract_values(traceparent, req.headers.get(TRACESTATE)),
        HeaderLookup::Absent | HeaderLookup::Ambiguous => None,
    });
    if let Some(parent) = parent {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// The decision's attributes on its span.
fn record_outcome(span: &tracing::Span, outcome: &Outcome) {
    let (decision, status) = match &outcome.decision {
        Decision::Allow(_) => ("allow", None),
        Decision::Deny(response) => ("deny", Some(response.status)),
        Decision::Error(response) => {
            // heimdall could not decide: the one outcome that is an error of the span.
            span.record("otel.status_code", "ERROR");
            ("error", Some(response.status))
        }
    };
    span.record("decision", decision);
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    if let Some(error) = &outcome.error {
        span.record("error.kind", error.kind.as_str());
        span.record("error.mechanism", &*error.mechanism);
    }
}

/// Header names by length, then ASCII case-insensitively: a total order in which a name sent in
/// any case finds its lower-case entry, and most comparisons end at the length.
fn folded_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| {
        a.bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;
    use crate::test_helpers::CheckRequestBuilder;
    use opentelemetry::trace::{TraceContextExt as _, TraceId};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    /// The trace id of the decision span for a request with `traceparents` (raw header lines,
    /// so a header can be sent twice), under a subscriber with the OpenTelemetry layer.
    fn decision_trace(traceparents: &[&str]) -> TraceId {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        let subscriber = crate::telemetry::traced_subscriber(
            LogFormat::Plain,
            tracing_subscriber::EnvFilter::new("off"),
            false,
            std::io::sink,
            tracer,
        );
        let mut builder = CheckRequestBuilder::get("/").raw_headers(true);
        for traceparent in traceparents {
            builder = builder.header("traceparent", traceparent);
        }
        let check = builder.build();
        let line = crate::extauthz::request_line(&check, &PathPolicy::default()).unwrap();
        let view = crate::extauthz::view(&check, &line);
        tracing::subscriber::with_default(subscriber, || {
            decision_span(&view, None)
                .context()
                .span()
                .span_context()
                .trace_id()
        })
    }

    #[test]
    fn a_well_formed_traceparent_header_is_the_parent() {
        let joined = decision_trace(&[&format!("00-{TRACE}-00f067aa0ba902b7-01")]);
        assert_eq!(joined, TraceId::from_hex(TRACE).unwrap());
    }

    #[test]
    fn a_malformed_or_repeated_traceparent_starts_a_trace_of_its_own() {
        let valid = format!("00-{TRACE}-00f067aa0ba902b7-01");
        for traceparents in [
            vec![format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase())],
            vec![format!("00-{TRACE}-0000000000000000-01")],
            vec![format!("00-{TRACE}-00f067aa0ba902b7")],
            vec![valid.clone(), valid.clone()],
        ] {
            let refs: Vec<&str> = traceparents.iter().map(String::as_str).collect();
            let root = decision_trace(&refs);
            assert_ne!(root, TraceId::INVALID, "{traceparents:?}");
            assert_ne!(root, TraceId::from_hex(TRACE).unwrap(), "{traceparents:?}");
        }
    }
}
