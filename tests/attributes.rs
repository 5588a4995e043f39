//! Principal attributes from a real NATS server with JetStream, applied by real heimdall
//! processes: the fold of many concurrent events, crashes of NATS and of a heimdall instance,
//! poison events, and readiness.
//!
//! The expected state is computed here by an independent fold of the published events in stream
//! order (the sequence each publish acknowledgement reports), and compared with what heimdall
//! wrote to the KV bucket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use heimdall::test_helpers::heimdall::HeimdallProcess;
use heimdall::test_helpers::nats::NatsServer;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

const STREAM: &str = "BUSINESS_EVENTS";
const BUCKET: &str = "heimdall_principals";
const DURABLE: &str = "heimdall";
const ATTRIBUTE_NAMES: [&str; 6] = ["plan", "seats", "region", "beta", "tier", "quota"];

/// heimdall's shipped configuration plus `NATS_URL`: the defaults are what is tested.
fn heimdall_env(nats: &NatsServer) -> Vec<(String, String)> {
    vec![
        ("NATS_URL".into(), nats.url()),
        ("RUST_LOG".into(), "heimdall=info".into()),
    ]
}

async fn start_heimdall(nats: &NatsServer) -> HeimdallProcess {
    let env = heimdall_env(nats);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    HeimdallProcess::start(heimdall::config::EMBEDDED, &env).await
}

async fn wait_ready(instance: &HeimdallProcess) {
    assert!(
        instance.wait_ready(Duration::from_secs(20)).await,
        "heimdall did not become ready:\n{}",
        instance.log()
    );
}

/// One published event and what it means for the fold.
#[derive(Clone, Debug)]
struct Published {
    principal: String,
    seq: u64,
    change: Change,
}

#[derive(Clone, Debug)]
enum Change {
    /// Name → value (`null` removes), one per name.
    Set(Vec<(String, Value)>),
    NotBefore(OffsetDateTime),
}

/// An event for `principal`: a few attributes, sometimes removed, sometimes at the top level,
/// sometimes nested; now and then a revocation.
fn random_event(rng: &mut StdRng, principal: &str) -> (String, Value, Change) {
    if rng.random_ratio(1, 50) {
        let not_before = OffsetDateTime::UNIX_EPOCH
            + Duration::from_secs(1_700_000_000 + rng.random_range(0..1_000_000));
        let text = not_before
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        return (
            "principal.revoked".into(),
            json!({"user_id": principal, "not_before": text}),
            Change::NotBefore(not_before),
        );
    }
    let mut top = Map::new();
    let mut nested = Map::new();
    let mut changes = Vec::new();
    let count = rng.random_range(1..=3);
    for name in ATTRIBUTE_NAMES.iter().take(count.max(1)) {
        let name = if rng.random_bool(0.5) {
            *name
        } else {
            ATTRIBUTE_NAMES[rng.random_range(0..ATTRIBUTE_NAMES.len())]
        };
        if changes.iter().any(|(n, _): &(String, Value)| n == name) {
            continue;
        }
        let value = match rng.random_range(0..10) {
            0..=1 => Value::Null,
            2..=5 => json!(rng.random_range(0..1000)),
            6..=8 => json!(format!("v{}", rng.random_range(0..50))),
            _ => json!([rng.random_range(0..5), "x"]),
        };
        if rng.random_bool(0.5) {
            top.insert(name.to_owned(), value.clone());
        } else {
            nested.insert(name.to_owned(), value.clone());
        }
        changes.push((name.to_owned(), value));
    }
    let id_field = if rng.random_bool(0.8) {
        "user_id"
    } else {
        "principal_id"
    };
    let subject = if rng.random_bool(0.5) {
        "subscription.updated"
    } else {
        "usage.updated"
    };
    let mut payload = top;
    payload.insert(id_field.into(), json!(principal));
    if !nested.is_empty() || rng.random_bool(0.2) {
        payload.insert("attributes".into(), Value::Object(nested));
    }
    (subject.into(), Value::Object(payload), Change::Set(changes))
}

fn principal_name(index: usize) -> String {
    // Every tenth id needs escaping in a KV key.
    if index.is_multiple_of(10) {
        format!("member.{index}@example.com")
    } else {
        format!("user-{index}")
    }
}

/// Publishes with a message id, retrying (the server deduplicates by id) until acknowledged.
async fn publish(js: &jetstream::Context, subject: &str, msg_id: &str, payload: Vec<u8>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let attempt = async {
            js.publish_with_headers(subject.to_owned(), headers, payload.clone().into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(ack)) => return ack.sequence,
            Ok(Err(e)) if Instant::now() > deadline => panic!("publish {msg_id}: {e}"),
            Err(_) if Instant::now() > deadline => panic!("publish {msg_id}: timed out"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Publishes `total` random events over `principals` principals from `publishers` concurrent
/// tasks; `progress` counts acknowledged events.
async fn publish_events(
    js: jetstream::Context,
    total: usize,
    principals: usize,
    publishers: usize,
    seed: u64,
    progress: Arc<AtomicUsize>,
) -> Vec<Published> {
    let mut tasks = Vec::new();
    for publisher in 0..publishers {
        let js = js.clone();
        let progress = Arc::clone(&progress);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed + publisher as u64);
            let mut published = Vec::new();
            for n in (publisher..total).step_by(publishers) {
                let principal = principal_name(rng.random_range(0..principals));
                let (subject, payload, change) = random_event(&mut rng, &principal);
                let seq = publish(
                    &js,
                    &subject,
                    &format!("event-{seed}-{n}"),
                    serde_json::to_vec(&payload).unwrap(),
                )
                .await;
                progress.fetch_add(1, Ordering::Relaxed);
                published.push(Published {
                    principal,
                    seq,
                    change,
                });
            }
            published
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// What each principal's document must hold: the attributes and the latest `not_before`, and
/// the bounds of its `seq` (the highest applied sequence: at least that of the last attribute
/// event, at most that of the last event; where in between depends on the order revocations
/// were applied in, which is not the stream's).
#[derive(Debug, Default, PartialEq)]
struct Expected {
    attributes: Map<String, Value>,
    not_before: Option<OffsetDateTime>,
    last_attribute_seq: u64,
    last_seq: u64,
}

fn fold(mut events: Vec<Published>) -> BTreeMap<String, Expected> {
    events.sort_by_key(|e| e.seq);
    let seqs: std::collections::BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs.len(),
        events.len(),
        "two events share a stream sequence"
    );
    let mut state: BTreeMap<String, Expected> = BTreeMap::new();
    for event in events {
        let expected = state.entry(event.principal).or_default();
        expected.last_seq = event.seq;
        match event.change {
            Change::Set(changes) => {
                for (name, value) in changes {
                    if value.is_null() {
                        expected.attributes.remove(&name);
                    } else {
                        expected.attributes.insert(name, value);
                    }
                }
                expected.last_attribute_seq = event.seq;
            }
            Change::NotBefore(at) => {
                if expected.not_before.is_none_or(|current| at > current) {
                    expected.not_before = Some(at);
                }
            }
        }
    }
    state
}

/// Waits (bounded) until the shared consumer has delivered and seen acknowledged everything.
async fn wait_drained(js: &jetstream::Context, last_seq: u64, instances: &[&HeimdallProcess]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut consumer: PullConsumer = loop {
        match js.get_stream(STREAM).await {
            Ok(stream) => match stream.get_consumer(DURABLE).await {
                Ok(consumer) => break consumer,
                Err(e) => assert!(Instant::now() < deadline, "consumer: {e}"),
            },
            Err(e) => assert!(Instant::now() < deadline, "stream: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        if let Ok(info) = consumer.info().await
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.ack_floor.stream_sequence >= last_seq
        {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = instances.iter().map(|i| i.log()).collect();
            panic!(
                "events not drained in time: {:?}\n{}",
                consumer.info().await.ok(),
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Compares every principal's KV document with the expected fold.
async fn assert_kv_matches(js: &jetstream::Context, expected: &BTreeMap<String, Expected>) {
    let kv = js.get_key_value(BUCKET).await.unwrap();
    for (principal, want) in expected {
        let key = heimdall::attributes::record::kv_key(principal);
        let bytes = kv
            .get(key.as_str())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no document for {principal}"));
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        let attributes = doc["attributes"].as_object().cloned().unwrap_or_default();
        assert_eq!(attributes, want.attributes, "attributes of {principal}");
        let not_before = doc["not_before"].as_str().map(|s| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
        });
        assert_eq!(not_before, want.not_before, "not_before of {principal}");
        let seq = doc["seq"].as_u64().unwrap();
        assert!(
            (want.last_attribute_seq..=want.last_seq).contains(&seq),
            "seq of {principal}: {seq} not in {}..={}",
            want.last_attribute_seq,
            want.last_seq
        );
    }
}

async fn js_of(nats: &NatsServer) -> jetstream::Context {
    let mut js = jetstream::new(nats.client().await);
    js.set_timeout(Duration::from_secs(2));
    js
}

/// Waits until the stream exists (heimdall creates it).
async fn wait_stream(js: &jetstream::Context) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.get_stream(STREAM).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "heimdall did not create the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// NATS and one ready heimdall on the shipped defaults, with the stream it created; `None`
/// when nats-server is not installed (outside CI).
async fn one_instance() -> Option<(NatsServer, HeimdallProcess, jetstream::Context)> {
    let nats = NatsServer::start().await?;
    let instance = start_heimdall(&nats).await;
    wait_ready(&instance).await;
    let js = js_of(&nats).await;
    wait_stream(&js).await;
    Some((nats, instance, js))
}

fn metric(text: &str, name: &str) -> f64 {
    heimdall::test_helpers::heimdall::sample_value(text, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_from_concurrent_publishers_fold_exactly_once() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let a = start_heimdall(&nats).await;
    let b = start_heimdall(&nats).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    let js = js_of(&nats).await;
    wait_stream(&js).await;

    let started = Instant::now();
    let events = publish_events(js.clone(), 10_000, 100, 8, 1, Arc::default()).await;
    let last = events.iter().map(|e| e.seq).max().unwrap();
    wait_drained(&js, last, &[&a, &b]).await;
    let elapsed = started.elapsed();
    let expected = fold(events);
    assert_eq!(expected.len(), 100);
    assert_kv_matches(&js, &expected).await;

    // Both instances took part, and between them handled every event once or skipped it.
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let outcome = |m: &str, o: &str| {
        metric(
            m,
            &format!("heimdall_attributes_events_total{{outcome=\"{o}\"}}"),
        )
    };
    let applied_a = outcome(&ma, "applied");
    let applied_b = outcome(&mb, "applied");
    assert!(
        applied_a > 0.0 && applied_b > 0.0,
        "a: {applied_a}, b: {applied_b}"
    );
    let handled: f64 = ["applied", "skipped"]
        .iter()
        .map(|o| outcome(&ma, o) + outcome(&mb, o))
        .sum();
    assert!(handled >= 10_000.0, "handled {handled}");
    assert_eq!(outcome(&ma, "malformed") + outcome(&mb, "malformed"), 0.0);
    eprintln!(
        "10,000 events by 2 instances: drained in {elapsed:?}; applied a={applied_a} b={applied_b}; CAS conflicts a={} b={}",
        metric(&ma, "heimdall_attributes_cas_conflicts_total"),
        metric(&mb, "heimdall_attributes_cas_conflicts_total"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_and_instance_crashes_mid_stream_lose_and_repeat_nothing() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let mut a = start_heimdall(&nats).await;
    let b = start_heimdall(&nats).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    let js = js_of(&nats).await;
    wait_stream(&js).await;

    let progress = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn(publish_events(
        js.clone(),
        10_000,
        100,
        8,
        2,
        Arc::clone(&progress),
    ));
    let wait_for = |count: usize| {
        let progress = Arc::clone(&progress);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while progress.load(Ordering::Relaxed) < count {
                assert!(Instant::now() < deadline, "publishing stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(3_000).await;
    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart().await;
    wait_for(6_000).await;
    a.kill().await;
    let events = publishing.await.unwrap();
    let last = events.iter().map(|e| e.seq).max().unwrap();
    let js = js_of(&nats).await;
    wait_drained(&js, last, &[&b]).await;
    let expected = fold(events);
    assert_kv_matches(&js, &expected).await;
    let mb = b.metrics().await;
    assert!(
        metric(&mb, "heimdall_attributes_events_total{outcome=\"applied\"}") > 0.0,
        "{}",
        b.log()
    );
    assert_eq!(metric(&mb, "heimdall_nats_connected"), 1.0);
    assert!(b.is_ready().await, "the survivor stays ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_terminated_and_counted_without_blocking_the_good_ones() {
    let Some((_nats, instance, js)) = one_instance().await else {
        return;
    };

    let payloads: [(&str, &[u8]); 7] = [
        ("subscription.updated", br#"{"user_id": "user123", "plan": "enterprise", "attributes": {"max_users": 500, "features": ["sso", "audit", "priority_support"]}}"#),
        ("usage.updated", b"{not json"),
        ("usage.updated", br#"{"attributes": {"current_users": 1}}"#),
        ("usage.updated", br#"{"user_id": "user123", "attributes": [1, 2]}"#),
        ("principal.revoked", br#"{"user_id": "user123", "not_before": "last tuesday"}"#),
        ("usage.updated", br#"{"user_id": "user123", "attributes": {"current_users": 287, "storage_used_gb": 1250, "api_calls_today": 45000}}"#),
        ("subscription.updated", br#"{"user_id": "user123", "attributes": {"max_users": null}}"#),
    ];
    let mut last = 0;
    for (n, (subject, payload)) in payloads.iter().enumerate() {
        last = publish(&js, subject, &format!("poison-{n}"), payload.to_vec()).await;
    }
    wait_drained(&js, last, &[&instance]).await;

    let kv = js.get_key_value(BUCKET).await.unwrap();
    let doc: Value = serde_json::from_slice(&kv.get("user123").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        doc["attributes"],
        json!({"plan": "enterprise", "features": ["sso", "audit", "priority_support"],
               "current_users": 287, "storage_used_gb": 1250, "api_calls_today": 45000})
    );
    let m = instance.metrics().await;
    assert_eq!(
        metric(
            &m,
            "heimdall_attributes_events_total{outcome=\"malformed\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(&m, "heimdall_attributes_events_total{outcome=\"applied\"}"),
        3.0
    );
    for (reason, count) in [
        ("not_json_object", 1.0),
        ("principal", 1.0),
        ("attributes", 1.0),
        ("revocation", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("heimdall_attributes_malformed_events_total{{reason=\"{reason}\"}}")
            ),
            count,
            "{reason}"
        );
    }
    // Logged with the stream sequence; the payload itself is not logged.
    let log = instance.log();
    assert!(
        log.contains("malformed event terminated") && log.contains("stream_sequence=2"),
        "{log}"
    );
    assert!(!log.contains("last tuesday"), "{log}");
}

/// A forward-auth decision (`/decision`) for a v4.local token of `sub`, signed with the test key
/// the instance gets through `PASETO_SYMMETRIC_KEY`.
async fn decide(instance: &HeimdallProcess, sub: &str) -> reqwest::StatusCode {
    let keys = heimdall::test_helpers::test_keys();
    let token = heimdall::test_helpers::mint(
        &keys,
        heimdall::tokens::Purpose::Local,
        &heimdall::test_helpers::claims(sub, &["user"]),
    );
    heimdall::test_helpers::http_client()
        .get(format!("http://{}/decision", instance.http_addr()))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-host", "api.example.com")
        .header("x-forwarded-uri", "/api/documents/1")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_nats_serves_then_ready_by_itself() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    nats.stop().await;
    let key = String::from_utf8(heimdall::test_helpers::TEST_SYMMETRIC_KEY.to_vec()).unwrap();
    let mut env = heimdall_env(&nats);
    env.push(("PASETO_SYMMETRIC_KEY".into(), key));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let instance = HeimdallProcess::start(heimdall::config::EMBEDDED, &env).await;
    assert!(instance.wait_healthy(Duration::from_secs(10)).await);
    // NATS is down: alive, serving, but not ready.
    for _ in 0..10 {
        assert!(!instance.is_ready().await, "ready without NATS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(&instance.metrics().await, "heimdall_nats_connected"),
        0.0
    );
    nats.restart().await;
    wait_ready(&instance).await;
    let m = instance.metrics().await;
    assert_eq!(metric(&m, "heimdall_nats_connected"), 1.0);
    assert_eq!(metric(&m, "heimdall_attributes_live"), 1.0);
    // Every token is checked against revocations: this looks "carol" up (and caches her).
    assert_eq!(decide(&instance, "carol").await, reqwest::StatusCode::OK);

    // NATS down again: the instance stays ready and says in its metrics that it is
    // disconnected. Cached principals are still decided; one that is not cached cannot be
    // checked for revocation, so it fails closed.
    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(instance.is_ready().await);
    assert_eq!(
        metric(&instance.metrics().await, "heimdall_nats_connected"),
        0.0
    );
    assert_eq!(decide(&instance, "carol").await, reqwest::StatusCode::OK);
    assert_eq!(
        decide(&instance, "erin").await,
        reqwest::StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        metric(
            &instance.metrics().await,
            "heimdall_attributes_lookups_total{result=\"error\"}"
        ) >= 1.0
    );

    // Back: the uncached principal is decided again, without a restart.
    nats.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while decide(&instance, "erin").await != reqwest::StatusCode::OK {
        assert!(Instant::now() < deadline, "{}", instance.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_stream_it_may_not_create() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let config = format!(
        "{}\nnats:\n  url: {}\n  stream:\n    create: false\n",
        heimdall::config::EMBEDDED,
        nats.url()
    );
    let instance = HeimdallProcess::start(&config, &[]).await;
    assert!(instance.wait_healthy(Duration::from_secs(10)).await);
    let js = js_of(&nats).await;
    for _ in 0..10 {
        assert!(!instance.is_ready().await, "ready without its stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(js.get_stream(STREAM).await.is_err(), "heimdall created it");
    let defaults = heimdall::attributes::NatsConfig::default();
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: defaults.all_subjects(),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_ready(&instance).await;
    assert!(
        instance.log().contains("nats.stream.create is off"),
        "the wait is explained in the log:\n{}",
        instance.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_until_it_applies_and_nothing_is_dropped() {
    let Some((_nats, instance, js)) = one_instance().await else {
        return;
    };
    // Someone else wrote this principal's key: heimdall will not guess what to keep, so the
    // event waits (nak, back-off) instead of overwriting or being dropped.
    let kv = js.get_key_value(BUCKET).await.unwrap();
    kv.put("mallory", "not a heimdall document".into())
        .await
        .unwrap();
    let seq = publish(
        &js,
        "subscription.updated",
        "transient-1",
        br#"{"user_id": "mallory", "plan": "pro"}"#.to_vec(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &instance.metrics().await,
        "heimdall_attributes_events_total{outcome=\"retried\"}",
    ) < 2.0
    {
        assert!(Instant::now() < deadline, "{}", instance.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        instance.log().contains("stored document is unreadable"),
        "{}",
        instance.log()
    );
    // The operator removes the foreign value: the next redelivery applies the event.
    kv.delete("mallory").await.unwrap();
    wait_drained(&js, seq, &[&instance]).await;
    let doc: Value = serde_json::from_slice(&kv.get("mallory").await.unwrap().unwrap()).unwrap();
    assert_eq!(doc["attributes"], json!({"plan": "pro"}));
    assert_eq!(doc["seq"], json!(seq));
}

/// The NATS test harness itself (`heimdall::test_helpers::nats`): a JetStream stream stored on file
/// survives a crash (SIGKILL) and restart of the server on the same port and store directory,
/// which the tests of heimdall's NATS support rely on.
mod nats_harness {
    use std::time::Duration;

    use async_nats::jetstream::{self, stream};
    use heimdall::test_helpers::nats::NatsServer;

    #[tokio::test]
    async fn nats_server_restarts_with_its_streams() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let Some(mut nats) = NatsServer::start().await else {
                return;
            };
            let port = nats.port();
            let js = jetstream::new(nats.client().await);
            js.get_or_create_stream(stream::Config {
                name: "T".to_owned(),
                subjects: vec!["t.>".to_owned()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("create stream T");
            for i in 0..3 {
                // The first await sends the message, the second waits for JetStream's ack.
                js.publish(format!("t.{i}"), format!("message {i}").into())
                    .await
                    .expect("publish")
                    .await
                    .expect("publish ack");
            }

            nats.kill().await;
            assert!(!nats.is_running());
            nats.restart().await;
            assert_eq!(nats.port(), port, "restarted on another port");

            let js = jetstream::new(nats.client().await);
            let info = js
                .get_stream("T")
                .await
                .expect("stream T after the restart")
                .get_info()
                .await
                .expect("stream T info");
            assert_eq!(
                info.state.messages,
                3,
                "messages of T after the restart\n--- NATS log ---\n{}",
                nats.log()
            );
        })
        .await
        .expect("the test did not finish within 60 s");
    }
}
