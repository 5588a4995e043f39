//! The decision path in process: a `CheckRequest` as Envoy sends it → request view → rule
//! lookup → pipeline → decision. Targets: ≤ 60 µs with a cold v4.public verification,
//! ≤ 10 µs with the verified-token cache warm.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench setup: a failure is a broken bench"
)]

use std::collections::HashMap;

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use heimdall::pipeline::Decision;
use heimdall::test_helpers::{claims, mint, test_config, test_keys};
use heimdall::tokens::Purpose;

const CONFIG: &str = r#"
version: "1"
mechanisms:
  authenticators:
    - { id: bearer, type: paseto }
    - { id: bearer_uncached, type: paseto, config: { cache: { enabled: false } } }
  authorizers:
    - { id: allow, type: allow }
    - id: editors_read
      type: cel
      config: { expression: '"editor" in subject.roles && request.method == "GET"' }
  finalizers:
    - id: user_headers
      type: header
      config: { headers: { X-User-ID: subject.id, X-User-Roles: subject.roles } }
    - { id: strip, type: remove_headers, config: { headers: [authorization] } }
rules:
  - id: cold
    match: { paths: [/cold/*rest] }
    execute: [ { authenticator: bearer_uncached }, { authorizer: allow } ]
  - id: warm
    match: { paths: [/warm/*rest] }
    execute: [ { authenticator: bearer }, { authorizer: allow } ]
  - id: cel
    match: { paths: [/cel/*rest] }
    execute: [ { authenticator: bearer }, { authorizer: editors_read } ]
  - id: full
    match: { paths: [/full/*rest] }
    execute:
      - { authenticator: bearer }
      - { authorizer: editors_read }
      - { finalizer: user_headers }
      - { finalizer: strip }
"#;

fn check_request(path: &str, token: &str) -> CheckRequest {
    let headers: HashMap<String, String> = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", path),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("user-agent", "bench/1.0"),
        ("x-request-id", "6f1c2a9e-0d55-4d0b-9d54-8f0c2b7e1a11"),
        ("x-forwarded-proto", "https"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain(std::iter::once((
        "authorization".to_owned(),
        format!("Bearer {token}"),
    )))
    .collect();
    let http = HttpRequest {
        id: "6f1c2a9e".into(),
        method: "GET".into(),
        scheme: "https".into(),
        host: "api.example.com".into(),
        path: path.into(),
        protocol: "HTTP/1.1".into(),
        headers,
        ..HttpRequest::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let built = heimdall::app::build(test_config(CONFIG), test_keys()).unwrap();
    let token = mint(
        &built.keys,
        Purpose::Public,
        &claims("alice", &["user", "editor"]),
    );
    let engine = built.engine;

    let mut group = c.benchmark_group("pipeline");
    for (name, path) in [
        ("v4_public_cold_verify", "/cold/documents/42?x=1"),
        ("v4_public_warm_cache", "/warm/documents/42?x=1"),
        ("cel_authorizer_warm", "/cel/documents/42?x=1"),
        ("cel_and_header_finalizer_warm", "/full/documents/42?x=1"),
    ] {
        let request = check_request(path, &token);
        // Warm the verified-token cache and prove the decision is an allow.
        let view = heimdall::extauthz::view(&request).unwrap();
        let decided = runtime.block_on(engine.decide(&view));
        assert!(
            matches!(decided.outcome.decision, Decision::Allow(_)),
            "{name}: {:?}",
            decided.outcome.error
        );
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let view = heimdall::extauthz::view(&request).unwrap();
                let decided = engine.decide(&view).await;
                std::hint::black_box(heimdall::extauthz::check_response(
                    decided.outcome.decision,
                    decided.rule.as_deref(),
                ))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
