//! The write side: the shared durable pull consumer, and applying each event to its principal's
//! KV document with compare-and-swap.
//!
//! An event is acknowledged only after its KV write succeeded (or it changed nothing). A
//! transient failure is nak'ed with a growing delay and redelivered; an event that can never
//! apply (bad JSON, no principal id, wrong types, too large) is terminated, logged with its
//! stream sequence and counted, and never holds back the events behind it. Events of one
//! principal go to the same worker, so a replica never races itself; replicas that race each
//! other are resolved by the CAS and by the per-attribute sequences of the record.

use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, Message};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::event::{self, Event, EventKind};
use super::record::{PrincipalRecord, kv_key};
use super::{AttributeMetrics, NatsConfig};

/// Compare-and-swap attempts before the event is nak'ed and retried later.
const MAX_CAS_ATTEMPTS: u32 = 16;
/// How often the consumer's lag is read for the metrics.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Consecutive pull errors tolerated before the session is restarted.
const MAX_PULL_ERRORS: u32 = 3;
/// Events queued per worker before the dispatcher waits (back-pressure to the pull).
const WORKER_QUEUE: usize = 64;
/// Queued events a worker takes at once (their events of one principal become one write).
const MAX_COALESCED: usize = 64;
/// Bytes of recently written documents a worker keeps to skip reading them again.
const WRITTEN_BUDGET: usize = 1 << 20;

/// Opens the KV bucket, creating it (file storage, history 1) when configured to.
pub(super) async fn bucket(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> anyhow::Result<kv::Store> {
    let name = &config.bucket.name;
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(get_error) if config.bucket.create => js
            .create_key_value(kv::Config {
                bucket: name.clone(),
                description: "heimdall: principal attributes folded from business events".into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: config.bucket.replicas,
                max_value_size: i32::try_from(config.bucket.max_record_bytes).unwrap_or(i32::MAX),
                ..Default::default()
            })
            .await
            .with_context(|| {
                format!("KV bucket `{name}` cannot be opened ({get_error}) or created")
            }),
        Err(e) => Err(anyhow::anyhow!(
            "KV bucket `{name}`: {e} (nats.bucket.create is off: create it, or turn it on)"
        )),
    }
}

/// Opens the event stream, creating it when configured to.
async fn stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> anyhow::Result<jetstream::stream::Stream> {
    let settings = &config.stream;
    if settings.create {
        js.get_or_create_stream(jetstream::stream::Config {
            name: settings.name.clone(),
            subjects: config.all_subjects(),
            storage: jetstream::stream::StorageType::File,
            num_replicas: settings.replicas,
            max_age: settings.max_age,
            ..Default::default()
        })
        .await
        .with_context(|| format!("stream `{}` cannot be opened or created", settings.name))
    } else {
        js.get_stream(&settings.name).await.with_context(|| {
            format!(
                "stream `{}` (nats.stream.create is off: waiting for it to exist)",
                settings.name
            )
        })
    }
}

/// What a worker needs besides the event.
struct Settings {
    request_timeout: Duration,
    max_record_bytes: usize,
    backoff: Duration,
    max_backoff: Duration,
}

struct Job {
    message: Message,
    event: Event,
    seq: u64,
    delivered: i64,
}

/// A running consumer: the pull stream and the workers applying its events.
pub(super) struct Consumer {
    messages: pull::Stream,
    workers: Vec<mpsc::Sender<Job>>,
    tasks: JoinSet<()>,
    revocation_subject: String,
    max_event_bytes: usize,
    metrics: AttributeMetrics,
}

impl Consumer {
    /// Binds to (or creates) the durable consumer and starts pulling.
    pub(super) async fn start(
        js: &jetstream::Context,
        config: &NatsConfig,
        kv: kv::Store,
        metrics: AttributeMetrics,
    ) -> anyhow::Result<Self> {
        let stream = stream(js, config).await?;
        let settings = &config.consumer;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &settings.durable,
                pull::Config {
                    durable_name: Some(settings.durable.clone()),
                    description: Some(
                        "heimdall: principal attributes, shared by every replica".into(),
                    ),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: settings.ack_wait,
                    // Never give up on an event: a transient failure must not lose it.
                    max_deliver: -1,
                    max_ack_pending: settings.max_ack_pending,
                    filter_subjects: config.all_subjects(),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("durable consumer `{}`", settings.durable))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(settings.batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .with_context(|| format!("pulling from consumer `{}`", settings.durable))?;

        let shared = Arc::new(Settings {
            request_timeout: config.request_timeout,
            max_record_bytes: config.bucket.max_record_bytes,
            backoff: settings.backoff,
            max_backoff: settings.max_backoff,
        });
        let mut tasks = JoinSet::new();
        let mut workers = Vec::with_capacity(settings.workers);
        for _ in 0..settings.workers {
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            workers.push(tx);
            tasks.spawn(work(rx, kv.clone(), Arc::clone(&shared), metrics.clone()));
        }
        tasks.spawn(watch_lag(consumer, metrics.clone()));
        Ok(Self {
            messages,
            workers,
            tasks,
            revocation_subject: config.stream.revocation_subject.clone(),
            max_event_bytes: settings.max_event_bytes,
            metrics,
        })
    }

    /// Pulls and dispatches until the pull stream fails; the workers stop with it.
    pub(super) async fn run(mut self) -> anyhow::Result<()> {
        let mut errors = 0;
        loop {
            tokio::select! {
                next = self.messages.next() => match next {
                    None => anyhow::bail!("the consumer's message stream ended"),
                    Some(Err(e)) => {
                        errors += 1;
                        if errors >= MAX_PULL_ERRORS {
                            anyhow::bail!("pulling events failed {errors} times in a row: {e}");
                        }
                        tracing::warn!(error = %e, "pulling events failed");
                    }
                    Some(Ok(message)) => {
                        errors = 0;
                        self.dispatch(message).await?;
                    }
                },
                Some(ended) = self.tasks.join_next() => {
                    anyhow::bail!("an attribute worker stopped: {ended:?}");
                }
            }
        }
    }

    /// Parses one message; a malformed one is terminated here, a valid one goes to the worker
    /// of its principal.
    async fn dispatch(&mut self, message: Message) -> anyhow::Result<()> {
        let (seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(e) => {
                // Not a JetStream delivery: nothing to apply or acknowledge.
                tracing::warn!(subject = %message.subject, error = %e, "message without JetStream metadata ignored");
                return Ok(());
            }
        };
        let kind = if message.subject.as_str() == self.revocation_subject {
            EventKind::Revocation
        } else {
            EventKind::Attributes
        };
        let event = match event::parse(kind, &message.payload, self.max_event_bytes) {
            Ok(event) => event,
            Err(e) => {
                self.metrics.event("malformed");
                self.metrics
                    .malformed
                    .get_or_create(&super::ReasonLabels { reason: e.label() })
                    .inc();
                tracing::warn!(stream_sequence = seq, subject = %message.subject, error = %e, "malformed event terminated");
                terminate(&message, seq).await;
                return Ok(());
            }
        };
        let mut hasher = std::hash::DefaultHasher::new();
        event.principal.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % self.workers.len() as u64).unwrap_or(0);
        let worker = self.workers.get(index).context("no attribute worker")?;
        worker
            .send(Job {
                message,
                event,
                seq,
                delivered,
            })
            .await
            .map_err(|_| anyhow::anyhow!("an attribute worker stopped"))
    }
}

/// Applies the jobs of one worker. Jobs already queued are taken together, and the events of
/// one principal among them are merged into a single KV write (in delivery order).
async fn work(
    mut jobs: mpsc::Receiver<Job>,
    kv: kv::Store,
    settings: Arc<Settings>,
    metrics: AttributeMetrics,
) {
    let mut written = Written::default();
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_COALESCED);
    while let Some(first) = jobs.recv().await {
        batch.push(first);
        while batch.len() < MAX_COALESCED {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        while !batch.is_empty() {
            // The first job's principal and every later job of the same principal.
            let principal = batch
                .first()
                .map(|j| j.event.principal.clone())
                .unwrap_or_default();
            let (group, rest): (Vec<Job>, Vec<Job>) = batch
                .drain(..)
                .partition(|j| j.event.principal == principal);
            batch = rest;
            apply_group(group, &kv, &settings, &metrics, &mut written).await;
        }
    }
}

/// Applies the events of one principal together; if that is refused as too large, each one
/// alone, so only the event that cannot fit is terminated.
async fn apply_group(
    group: Vec<Job>,
    kv: &kv::Store,
    settings: &Settings,
    metrics: &AttributeMetrics,
    written: &mut Written,
) {
    let started = Instant::now();
    let events: Vec<(u64, &Event)> = group.iter().map(|j| (j.seq, &j.event)).collect();
    let result = apply(kv, &events, settings, metrics, written).await;
    metrics
        .apply_duration
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(outcomes) => {
            for (job, outcome) in group.iter().zip(outcomes) {
                metrics.event(outcome);
                // A lost ack means a redelivery, which the record's sequences turn into a skip.
                if let Err(e) = job.message.ack().await {
                    tracing::debug!(stream_sequence = job.seq, error = %e, "ack not sent; the event will be redelivered and skipped");
                }
            }
        }
        Err(ApplyError::Permanent(_)) if group.len() > 1 => {
            for job in group {
                Box::pin(apply_group(vec![job], kv, settings, metrics, written)).await;
            }
        }
        Err(ApplyError::Permanent(reason)) => {
            for job in &group {
                metrics.event("malformed");
                metrics
                    .malformed
                    .get_or_create(&super::ReasonLabels {
                        reason: "too_large",
                    })
                    .inc();
                tracing::warn!(stream_sequence = job.seq, error = %reason, "event cannot be applied; terminated");
                terminate(&job.message, job.seq).await;
            }
        }
        Err(ApplyError::Transient(reason)) => {
            for job in &group {
                metrics.event("retried");
                let delay = redelivery_delay(settings, job.delivered);
                tracing::warn!(stream_sequence = job.seq, attempt = job.delivered, retry_in = ?delay, error = %reason, "event not applied; will be redelivered");
                if let Err(e) = job.message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::debug!(stream_sequence = job.seq, error = %e, "nak not sent; redelivery after ack_wait");
                }
            }
        }
    }
}

/// The documents this worker wrote last, with their revisions, so the next event of the same
/// principal needs no KV read: the write's compare-and-swap still catches any other writer, and
/// then the document is read afresh. A stale copy can only make an event look not yet applied
/// (sequences only grow), never the reverse. Bounded by [`WRITTEN_BUDGET`] bytes.
#[derive(Default)]
struct Written {
    /// Key → document, its revision, and its encoded size.
    records: std::collections::HashMap<String, (PrincipalRecord, u64, usize)>,
    bytes: usize,
}

impl Written {
    fn take(&mut self, key: &str) -> Option<(PrincipalRecord, u64, usize)> {
        let taken = self.records.remove(key)?;
        self.bytes = self.bytes.saturating_sub(taken.2);
        Some(taken)
    }

    fn keep(&mut self, key: String, record: PrincipalRecord, revision: u64, size: usize) {
        if size > WRITTEN_BUDGET / 16 {
            return;
        }
        if self.bytes + size > WRITTEN_BUDGET {
            // Cheaper than tracking recency, and correct: a forgotten document is read again.
            self.records.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.records.insert(key, (record, revision, size));
    }
}

async fn terminate(message: &Message, seq: u64) {
    if let Err(e) = message.ack_with(AckKind::Term).await {
        // Redelivered later and terminated again: nothing is lost either way.
        tracing::debug!(stream_sequence = seq, error = %e, "term not sent");
    }
}

/// `backoff × 2^(attempt-1)`, at most `max_backoff`.
fn redelivery_delay(settings: &Settings, delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    settings
        .backoff
        .saturating_mul(1u32 << exponent)
        .min(settings.max_backoff)
}

/// A failure that may pass: `what` failed with `error`.
fn transient(what: &str, error: String) -> ApplyError {
    ApplyError::Transient(format!("{what}: {error}"))
}

#[derive(Debug)]
enum ApplyError {
    /// Will never succeed: terminate.
    Permanent(String),
    /// May succeed later: nak.
    Transient(String),
}

/// Merges events of one principal (in delivery order) into its document: start from the copy
/// this worker wrote last or read the document, merge, write with compare-and-swap on its
/// revision, and start over from a fresh read on a conflict. Returns each event's outcome label.
async fn apply(
    kv: &kv::Store,
    events: &[(u64, &Event)],
    settings: &Settings,
    metrics: &AttributeMetrics,
    written: &mut Written,
) -> Result<Vec<&'static str>, ApplyError> {
    let Some((_, first)) = events.first() else {
        return Ok(Vec::new());
    };
    let key = kv_key(&first.principal);
    let deadline = settings.request_timeout;
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (mut record, revision, stored_size) = match written.take(&key) {
            Some((record, revision, size)) => (record, Some(revision), size),
            None => read(kv, &key, deadline).await?,
        };
        let outcomes: Vec<&'static str> = events
            .iter()
            .map(|(seq, event)| {
                if record.apply(*seq, &event.change) {
                    "applied"
                } else {
                    "skipped"
                }
            })
            .collect();
        if !outcomes.contains(&"applied") {
            if let Some(revision) = revision {
                written.keep(key, record, revision, stored_size);
            }
            return Ok(outcomes);
        }
        record.updated_at = Some(time::OffsetDateTime::now_utc());
        let bytes =
            serde_json::to_vec(&record).map_err(|e| transient("encoding", e.to_string()))?;
        let size = bytes.len();
        if size > settings.max_record_bytes {
            return Err(ApplyError::Permanent(format!(
                "the principal's document would be {size} bytes, over nats.bucket.max_record_bytes ({})",
                settings.max_record_bytes
            )));
        }
        let write = async {
            match revision {
                Some(revision) => kv
                    .update(key.as_str(), bytes.into(), revision)
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                None => kv.create(key.as_str(), bytes.into()).await.map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            }
        };
        match tokio::time::timeout(deadline, write).await {
            Ok(Ok(new_revision)) => {
                written.keep(key, record, new_revision, size);
                return Ok(outcomes);
            }
            Ok(Err((true, _))) => {
                metrics.cas_conflicts.inc();
            }
            Ok(Err((false, e))) => return Err(transient("KV write", e)),
            Err(_) => {
                return Err(transient(
                    "KV write",
                    format!("no answer within {deadline:?}"),
                ));
            }
        }
    }
    Err(ApplyError::Transient(format!(
        "{MAX_CAS_ATTEMPTS} compare-and-swap conflicts in a row"
    )))
}

/// The principal's stored document, its revision (`None`: the key never existed) and its size.
async fn read(
    kv: &kv::Store,
    key: &str,
    deadline: Duration,
) -> Result<(PrincipalRecord, Option<u64>, usize), ApplyError> {
    let entry = tokio::time::timeout(deadline, kv.entry(key))
        .await
        .map_err(|_| transient("KV read", format!("no answer within {deadline:?}")))?
        .map_err(|e| transient("KV read", e.to_string()))?;
    Ok(match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let record: PrincipalRecord = serde_json::from_slice(&entry.value).map_err(|e| {
                // Someone else wrote this key: heimdall will not guess what to keep.
                transient(
                    "stored document is unreadable (fix or delete the KV key)",
                    e.to_string(),
                )
            })?;
            (record, Some(entry.revision), entry.value.len())
        }
        Some(marker) => (PrincipalRecord::default(), Some(marker.revision), 0),
        None => (PrincipalRecord::default(), None, 0),
    })
}

/// Reads the consumer's lag into the metrics until the session ends.
async fn watch_lag(mut consumer: PullConsumer, metrics: AttributeMetrics) {
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    loop {
        tick.tick().await;
        match consumer.info().await {
            Ok(info) => {
                metrics
                    .consumer_pending
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                metrics
                    .consumer_ack_pending
                    .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::debug!(error = %e, "consumer info unavailable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_copies_stay_within_their_budget() {
        let mut written = Written::default();
        written.keep("a".into(), PrincipalRecord::default(), 3, 100);
        assert_eq!(written.take("a").map(|(_, rev, _)| rev), Some(3));
        assert!(written.take("a").is_none(), "taken copies are gone");
        // Too big to keep at all.
        written.keep("big".into(), PrincipalRecord::default(), 1, WRITTEN_BUDGET);
        assert!(written.take("big").is_none());
        // Filling the budget starts over instead of growing.
        for n in 0..40 {
            written.keep(
                format!("k{n}"),
                PrincipalRecord::default(),
                n,
                WRITTEN_BUDGET / 32,
            );
        }
        assert!(written.bytes <= WRITTEN_BUDGET);
        assert!(written.records.len() < 40);
    }

    #[test]
    fn redelivery_backs_off_to_a_cap() {
        let settings = Settings {
            request_timeout: Duration::from_secs(1),
            max_record_bytes: 1,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(2),
        };
        let delays: Vec<u128> = [1, 2, 3, 4, 5, 100]
            .into_iter()
            .map(|d| redelivery_delay(&settings, d).as_millis())
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 2000, 2000]);
        assert_eq!(redelivery_delay(&settings, 0).as_millis(), 250);
    }
}
