//! The read side: principal attributes for the decision path, from a bounded per-replica cache in
//! front of the KV bucket, kept fresh by a KV watch.
//!
//! Every cached entry carries the KV revision it was read at, and an entry is only ever replaced
//! by a newer revision, so a slow read on a cache miss cannot overwrite a fresher value the
//! watch stored meanwhile. Staleness policy: while NATS is reachable an entry is as fresh as the
//! watch (milliseconds); while it is not, cached entries keep serving for at most `cache.ttl`
//! after they were last refreshed, and a principal that is not cached cannot be looked up: the
//! step that needs it fails closed (503).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use moka::ops::compute::Op;
use prometheus_client::metrics::counter::Counter;

use super::NatsConfig;
use super::metrics::{AttributeMetrics, ResultLabels};
use super::record::{PrincipalRecord, kv_key, principal_of_key};

/// A principal's attributes as of one KV revision (0 and no record: the principal has none).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub record: Option<Arc<PrincipalRecord>>,
}

/// Where a principal's stored attributes come from. Callers are generic over it, so the
/// decision path is monomorphic; [`PrincipalStore`] is the implementation.
pub trait AttributeSource: Send + Sync {
    /// The principal's attributes as of the newest revision the source knows.
    fn get(
        &self,
        principal: &str,
    ) -> impl std::future::Future<Output = Result<Snapshot, LookupError>> + Send;
}

impl AttributeSource for PrincipalStore {
    fn get(
        &self,
        principal: &str,
    ) -> impl std::future::Future<Output = Result<Snapshot, LookupError>> + Send {
        PrincipalStore::get(self, principal)
    }
}

/// The lookup counters, resolved once: the decision path only increments them.
struct LookupCounters {
    hit: Counter,
    miss: Counter,
    error: Counter,
}

impl LookupCounters {
    fn new(metrics: &AttributeMetrics) -> Self {
        let counter = |result| {
            metrics
                .lookups
                .get_or_create(&ResultLabels { result })
                .clone()
        };
        Self {
            hit: counter("hit"),
            miss: counter("miss"),
            error: counter("error"),
        }
    }
}

/// Why a principal could not be looked up. The decision path fails closed on every variant.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("the attribute store is not connected yet")]
    NotConnected,
    #[error("the attribute store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the attribute store failed: {0}")]
    Failed(String),
    #[error("the stored attributes of this principal are unreadable: {0}")]
    Corrupt(String),
}

/// Principal attributes for every decision of this replica.
pub struct PrincipalStore {
    cache: moka::future::Cache<Arc<str>, Snapshot>,
    kv: ArcSwapOption<kv::Store>,
    lookup_timeout: Duration,
    metrics: AttributeMetrics,
    lookups: LookupCounters,
    /// The highest KV revision the watch has delivered: where a restarted watch resumes.
    watched: AtomicU64,
    /// Where `principal.revoked` events are published (a logout "everywhere"), once connected.
    revocations: ArcSwapOption<RevocationPublisher>,
}

/// The producer span of a publish on `subject` when tracing is on; its context travels in the
/// message's headers. Off: a disabled span.
fn publish_span(subject: &str) -> tracing::Span {
    if !crate::trace_context::enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "nats.publish",
        otel.name = format_args!("publish {subject}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = subject,
    )
}

/// The JetStream context and subject revocation events are published on.
struct RevocationPublisher {
    js: async_nats::jetstream::Context,
    subject: String,
}

impl PrincipalStore {
    pub fn new(config: &NatsConfig, metrics: AttributeMetrics) -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(config.cache.max_principals)
                .time_to_live(config.cache.ttl)
                .build(),
            kv: ArcSwapOption::empty(),
            lookup_timeout: config.lookup_timeout,
            lookups: LookupCounters::new(&metrics),
            metrics,
            watched: AtomicU64::new(0),
            revocations: ArcSwapOption::empty(),
        }
    }

    /// Publishes revocation events with `js` on `subject` from now on.
    pub fn attach_publisher(&self, js: async_nats::jetstream::Context, subject: String) {
        self.revocations
            .store(Some(Arc::new(RevocationPublisher { js, subject })));
    }

    /// Publishes `principal.revoked` for `principal` with `not_before` now, and waits for the
    /// stream's acknowledgement (bounded by `within`): every replica then refuses the
    /// principal's tokens issued before it.
    pub async fn publish_revocation(
        &self,
        principal: &str,
        within: Duration,
    ) -> Result<(), String> {
        let publisher = self
            .revocations
            .load_full()
            .ok_or("not connected to NATS yet")?;
        let not_before = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(|e| e.to_string())?
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| e.to_string())?;
        let event = serde_json::json!({ "user_id": principal, "not_before": not_before });
        let span = publish_span(&publisher.subject);
        let publish = async {
            let subject = publisher.subject.clone();
            let payload = event.to_string().into();
            let acknowledged = if crate::trace_context::enabled() {
                let mut headers = async_nats::HeaderMap::new();
                crate::trace_context::inject(
                    &span,
                    &mut crate::trace_context::NatsHeaders(&mut headers),
                );
                publisher
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await
            } else {
                publisher.js.publish(subject, payload).await
            };
            acknowledged
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        tracing::Instrument::instrument(tokio::time::timeout(within, publish), span.clone())
            .await
            .map_err(|_| format!("no acknowledgement within {within:?}"))?
            .map(|_| ())
    }

    pub fn metrics(&self) -> &AttributeMetrics {
        &self.metrics
    }

    /// Uses `kv` for reads on a cache miss from now on.
    pub fn attach(&self, kv: kv::Store) {
        self.kv.store(Some(Arc::new(kv)));
    }

    /// The principal's attributes: from the cache, or read from the bucket under the lookup
    /// deadline. A principal without a document is a snapshot without a record.
    pub async fn get(&self, principal: &str) -> Result<Snapshot, LookupError> {
        if let Some(snapshot) = self.cache.get(principal).await {
            self.lookups.hit.inc();
            return Ok(snapshot);
        }
        match self.fetch(principal).await {
            Ok(snapshot) => {
                self.lookups.miss.inc();
                Ok(snapshot)
            }
            Err(e) => {
                self.lookups.error.inc();
                Err(e)
            }
        }
    }

    async fn fetch(&self, principal: &str) -> Result<Snapshot, LookupError> {
        let kv = self.kv.load_full().ok_or(LookupError::NotConnected)?;
        let entry = tokio::time::timeout(self.lookup_timeout, kv.entry(kv_key(principal)))
            .await
            .map_err(|_| LookupError::Timeout(self.lookup_timeout))?
            .map_err(|e| LookupError::Failed(e.to_string()))?;
        let snapshot = match entry {
            Some(entry) => decode(&entry)?,
            None => Snapshot::default(),
        };
        Ok(self.upsert(Arc::from(principal), snapshot).await)
    }

    /// Stores `snapshot` unless the cache holds a newer revision; returns what the cache holds.
    async fn upsert(&self, principal: Arc<str>, snapshot: Snapshot) -> Snapshot {
        let mut kept = snapshot.clone();
        self.cache
            .entry(principal)
            .and_compute_with(|existing| {
                let op = match existing {
                    Some(current) if current.value().revision >= snapshot.revision => {
                        kept = current.into_value();
                        Op::Nop
                    }
                    _ => Op::Put(snapshot),
                };
                std::future::ready(op)
            })
            .await;
        kept
    }

    /// Starts watching the bucket: from the revision after the last one a watch delivered, so
    /// nothing written while no watch ran is missed; or, when no watch has delivered anything
    /// yet, from now, dropping whatever was cached without a watch to keep it fresh.
    pub(super) async fn start_watch(&self, kv: &kv::Store) -> anyhow::Result<kv::Watch> {
        let resume = self.watched.load(Ordering::Acquire);
        let watch = if resume == 0 {
            kv.watch_all().await
        } else {
            kv.watch_all_from_revision(resume + 1).await
        }
        .map_err(|e| anyhow::anyhow!("KV watch on `{}`: {e}", kv.name))?;
        if resume == 0 {
            self.cache.invalidate_all();
        }
        Ok(watch)
    }

    /// Applies the watch's updates to the cache until the watch fails.
    pub(super) async fn follow(&self, mut watch: kv::Watch) -> anyhow::Result<()> {
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| anyhow::anyhow!("KV watch: {e}"))?;
            self.metrics.watch_updates.inc();
            self.watched.fetch_max(entry.revision, Ordering::AcqRel);
            let Some(principal) = principal_of_key(&entry.key) else {
                tracing::warn!(key = %entry.key, "KV key that heimdall did not write; ignored");
                continue;
            };
            match decode(&entry) {
                Ok(snapshot) => {
                    self.upsert(Arc::from(principal), snapshot).await;
                }
                Err(e) => {
                    // Nothing trustworthy to cache: the next lookup reads (and reports) it.
                    tracing::error!(key = %entry.key, revision = entry.revision, error = %e, "unreadable principal document");
                    self.cache.invalidate(principal.as_str()).await;
                }
            }
        }
        Err(anyhow::anyhow!("the KV watch ended"))
    }

    /// Test and benchmark support: puts a snapshot in the cache as the watch would.
    #[cfg(any(test, feature = "testing"))]
    pub async fn insert_for_test(&self, principal: &str, snapshot: Snapshot) {
        self.upsert(Arc::from(principal), snapshot).await;
    }
}

/// A KV entry as a snapshot: a document, or no record for a delete or purge marker.
fn decode(entry: &kv::Entry) -> Result<Snapshot, LookupError> {
    match entry.operation {
        kv::Operation::Put => serde_json::from_slice::<PrincipalRecord>(&entry.value)
            .map(|record| Snapshot {
                revision: entry.revision,
                record: Some(Arc::new(record)),
            })
            .map_err(|e| LookupError::Corrupt(e.to_string())),
        kv::Operation::Delete | kv::Operation::Purge => Ok(Snapshot {
            revision: entry.revision,
            record: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> PrincipalStore {
        let metrics = AttributeMetrics::new(&mut prometheus_client::registry::Registry::default());
        PrincipalStore::new(&NatsConfig::default(), metrics)
    }

    fn snapshot(revision: u64, plan: &str) -> Snapshot {
        let mut record = PrincipalRecord::default();
        record
            .attributes
            .insert("plan".into(), serde_json::Value::from(plan));
        Snapshot {
            revision,
            record: Some(Arc::new(record)),
        }
    }

    #[tokio::test]
    async fn an_older_revision_never_replaces_a_newer_one() {
        let store = store();
        store.insert_for_test("u1", snapshot(5, "new")).await;
        let kept = store.upsert(Arc::from("u1"), snapshot(4, "old")).await;
        assert_eq!(kept.revision, 5);
        let got = store.get("u1").await.unwrap();
        assert_eq!(got.revision, 5);
        store.insert_for_test("u1", snapshot(6, "newer")).await;
        assert_eq!(store.get("u1").await.unwrap().revision, 6);
    }

    #[tokio::test]
    async fn a_miss_without_a_bucket_fails_closed() {
        let store = store();
        assert_eq!(
            store.get("u1").await.unwrap_err(),
            LookupError::NotConnected
        );
    }
}
