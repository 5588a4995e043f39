//! The decision path in process: a `CheckRequest` as Envoy sends it → request view → rule
//! lookup → pipeline → decision. Targets: ≤ 60 µs with a cold v4.public verification,
//! ≤ 10 µs with the verified-token cache warm; the principal-attributes row shows what the
//! contextualizer (and the revocation check) add on a warm attribute cache. `cache_hit` compares
//! a hit in the hot path's lookup cache with the same hit in moka, which it replaced.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench setup: a failure is a broken bench"
)]

use criterion::{Criterion, criterion_group, criterion_main};
use heimdall::decision::Decision;
use heimdall::test_helpers::fixtures::ATTRIBUTES;
use heimdall::test_helpers::{bearer_check_request, claims, mint, test_config, test_keys};
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

/// Headers a browser or API client adds besides the token.
const CLIENT_HEADERS: [(&str, &str); 4] = [
    ("accept", "application/json"),
    ("user-agent", "bench/1.0"),
    ("x-request-id", "6f1c2a9e-0d55-4d0b-9d54-8f0c2b7e1a11"),
    ("x-forwarded-proto", "https"),
];

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

    // The shared attributes catalogue's `attributes` rule with a warm attribute cache: the app is
    // built, not served, so its NATS address is never dialled.
    let with_attributes = heimdall::app::build(test_config(ATTRIBUTES), test_keys()).unwrap();
    let store = with_attributes.attributes.clone().unwrap();
    let record = heimdall::attributes::record::PrincipalRecord {
        attributes: serde_json::from_str(
            r#"{"plan": "enterprise", "max_users": 500, "features": ["sso", "audit"], "current_users": 287}"#,
        )
        .unwrap(),
        ..Default::default()
    };
    runtime.block_on(store.insert_for_test(
        "alice",
        heimdall::attributes::Snapshot {
            revision: 7,
            record: Some(std::sync::Arc::new(record)),
        },
    ));
    let attributes_token = mint(
        &with_attributes.keys,
        Purpose::Public,
        &claims("alice", &["user", "editor"]),
    );
    let attributes_engine = with_attributes.engine;

    let mut group = c.benchmark_group("pipeline");
    for (name, path, engine, token) in [
        (
            "v4_public_cold_verify",
            "/cold/documents/42?x=1",
            &engine,
            &token,
        ),
        (
            "v4_public_warm_cache",
            "/warm/documents/42?x=1",
            &engine,
            &token,
        ),
        (
            "cel_authorizer_warm",
            "/cel/documents/42?x=1",
            &engine,
            &token,
        ),
        (
            "cel_and_header_finalizer_warm",
            "/full/documents/42?x=1",
            &engine,
            &token,
        ),
        (
            "attributes_cel_and_header_finalizer_warm",
            "/attributes/documents/42?x=1",
            &attributes_engine,
            &attributes_token,
        ),
    ] {
        let request = bearer_check_request(path, token, &CLIENT_HEADERS);
        // Warm the verified-token cache and prove the decision is an allow.
        let policy = engine.path_policy();
        let line = heimdall::extauthz::request_line(&request, policy).unwrap();
        let view = heimdall::extauthz::view(&request, &line);
        let decided = runtime.block_on(engine.decide(&view));
        assert!(
            matches!(decided.outcome.decision, Decision::Allow(_)),
            "{name}: {:?}",
            decided.outcome.error
        );
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                // The whole entry point: canonical request line, view, decision.
                let line = heimdall::extauthz::request_line(&request, policy).unwrap();
                let view = heimdall::extauthz::view(&request, &line);
                let decided = engine.decide(&view).await;
                let kind = decided.outcome.error.as_ref().map(|e| e.kind);
                std::hint::black_box(heimdall::extauthz::check_response(
                    decided.outcome.decision,
                    kind,
                    decided.rule.as_deref(),
                ))
            });
        });
    }
    group.finish();
}

/// A hit in the hot path's lookup cache (`TtlCache`, on quick_cache) against the same hit in the
/// moka cache it replaced, same keys (BLAKE3 outputs) and values, same run.
fn cache_hit(c: &mut Criterion) {
    use std::sync::Arc;
    use std::time::Duration;

    let keys: Vec<[u8; 32]> = (0..10_000u32)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();
    let ttl = heimdall::ttl_cache::TtlCache::new(100_000);
    let moka = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(Duration::from_secs(300))
        .build();
    for (i, key) in keys.iter().enumerate() {
        ttl.insert(*key, Arc::new(i), Duration::from_secs(300));
        moka.insert(*key, Arc::new(i));
    }
    let mut group = c.benchmark_group("cache_hit");
    let mut cycle = keys.iter().cycle();
    group.bench_function("ttl_cache", |b| {
        b.iter(|| std::hint::black_box(ttl.get(cycle.next().unwrap())));
    });
    group.bench_function("moka_sync", |b| {
        b.iter(|| std::hint::black_box(moka.get(cycle.next().unwrap())));
    });
    group.finish();
}

criterion_group!(benches, pipeline, cache_hit);
criterion_main!(benches);
