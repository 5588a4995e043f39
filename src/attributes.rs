//! Principal attributes from NATS JetStream: business events → one shared durable consumer →
//! the KV bucket (compare-and-swap) → a bounded cache per replica, kept fresh by a KV watch.
//!
//! The write side ([`consumer`]) folds events into one document per principal ([`record`]);
//! the read side ([`store::PrincipalStore`]) answers the `principal_attributes` contextualizer,
//! the Cerbos authorizer's principal and token revocation. [`run`] owns the connection: heimdall
//! starts without NATS, keeps retrying, and reports ready once the consumer and the watch are
//! live. The design and its reasons are in ARCHITECTURE.md.

pub mod consumer;
pub mod event;
pub mod record;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::readiness::BlockReady;
pub use store::{LookupError, PrincipalStore, Snapshot};

/// The `nats` section: where the events come from and where the attributes live.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:port`; several servers separated by commas (`NATS_URL`). Credentials in
    /// the URL (`nats://user:pass@host`) work but are shown as `user:***` in the
    /// configuration dump and in logs.
    #[serde(serialize_with = "crate::redact::serialize_redacted_url")]
    pub url: String,
    /// The connection name the server shows.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<NatsAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTls>,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Deadline of JetStream API calls and KV writes made by the consumer.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Deadline of a KV read on the decision path (a cache miss); keep it well below Envoy's
    /// ext_authz timeout.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lookup_timeout: Duration,
    pub stream: StreamSettings,
    pub consumer: ConsumerSettings,
    pub bucket: BucketSettings,
    pub cache: CacheSettings,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://nats:4222".into(),
            name: "heimdall".into(),
            auth: None,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            lookup_timeout: Duration::from_millis(50),
            stream: StreamSettings::default(),
            consumer: ConsumerSettings::default(),
            bucket: BucketSettings::default(),
            cache: CacheSettings::default(),
        }
    }
}

/// The stream the business events are published on.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    pub name: String,
    /// Subjects whose events update attributes.
    pub subjects: Vec<String>,
    /// The subject of `principal.revoked` events.
    pub revocation_subject: String,
    /// Create the stream (file storage) when it does not exist. When false, heimdall waits for it.
    pub create: bool,
    /// Replicas of a created stream (a NATS cluster).
    pub replicas: usize,
    /// How long a created stream keeps events (0 = forever; the KV holds the state anyway).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: "BUSINESS_EVENTS".into(),
            subjects: vec!["subscription.updated".into(), "usage.updated".into()],
            revocation_subject: "principal.revoked".into(),
            create: true,
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The durable pull consumer every replica shares.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerSettings {
    /// Consume events in this replica. Off: the replica only reads attributes (the others apply).
    pub enabled: bool,
    /// The durable name, the same on every replica.
    pub durable: String,
    /// Messages asked for per pull.
    pub batch: usize,
    /// Events applied concurrently; events of one principal always go to the same worker.
    pub workers: usize,
    /// Unacknowledged events the server lets out at once, over all replicas.
    pub max_ack_pending: i64,
    /// How long the server waits for an ack before redelivering.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ack_wait: Duration,
    /// Largest event accepted; a bigger one is terminated as malformed.
    pub max_event_bytes: usize,
    /// Redelivery delay after a transient failure: doubles per attempt up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            durable: "heimdall".into(),
            batch: 256,
            workers: 16,
            max_ack_pending: 4096,
            ack_wait: Duration::from_secs(30),
            max_event_bytes: 64 * 1024,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The KV bucket holding one document per principal.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BucketSettings {
    pub name: String,
    /// Create the bucket (file storage, history 1) when it does not exist.
    pub create: bool,
    pub replicas: usize,
    /// Largest principal document; an event that would grow one past it is terminated.
    pub max_record_bytes: usize,
}

impl Default for BucketSettings {
    fn default() -> Self {
        Self {
            name: "heimdall_principals".into(),
            create: true,
            replicas: 1,
            max_record_bytes: 256 * 1024,
        }
    }
}

/// The per-replica cache in front of the bucket.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    pub max_principals: u64,
    /// How long an entry serves without a refresh. The watch refreshes entries as they change;
    /// this bounds staleness when the watch cannot (NATS unreachable).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_principals: 100_000,
            ttl: Duration::from_secs(300),
        }
    }
}

/// How heimdall authenticates to NATS; secrets come from files or environment variables only.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsAuth {
    /// A `.creds` file (JWT + nkey seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// An nkey seed (`SU…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

/// A secret value: `{env: NAME}` or `{file: /path}`. Only the name or path is ever shown; an
/// inline value is refused without being quoted.
#[derive(Debug, Clone, Serialize)]
#[serde(into = "SecretSpec")]
pub enum Secret {
    Env(String),
    File(PathBuf),
}

/// The YAML shape of a [`Secret`]: a map with exactly one of the two keys.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
}

impl TryFrom<SecretSpec> for Secret {
    type Error = &'static str;

    fn try_from(spec: SecretSpec) -> Result<Self, Self::Error> {
        match (spec.env, spec.file) {
            (Some(name), None) => Ok(Self::Env(name)),
            (None, Some(path)) => Ok(Self::File(path)),
            _ => Err("a secret needs exactly one of `env` or `file`"),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec: SecretSpec = crate::redact::deserialize_map_only(
            d,
            "a secret as `{env: NAME}` or `{file: PATH}`: inline secrets are not accepted, they would sit in the configuration",
        )?;
        Self::try_from(spec).map_err(serde::de::Error::custom)
    }
}

impl From<Secret> for SecretSpec {
    fn from(secret: Secret) -> Self {
        match secret {
            Secret::Env(name) => Self {
                env: Some(name),
                file: None,
            },
            Secret::File(path) => Self {
                env: None,
                file: Some(path),
            },
        }
    }
}

impl Secret {
    fn read(&self) -> anyhow::Result<String> {
        match self {
            // `std::env::VarError`'s message quotes a non-UTF-8 value: it is not used.
            Self::Env(name) => match std::env::var_os(name) {
                None => anyhow::bail!("environment variable `{name}` is not set"),
                Some(value) => value.into_string().map_err(|_| {
                    anyhow::anyhow!("environment variable `{name}` is not valid UTF-8 text")
                }),
            },
            Self::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .with_context(|| format!("file `{}`", path.display())),
        }
    }
}

/// TLS to NATS; a `tls://` URL or `required: true` turns it on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsTls {
    pub required: bool,
    /// PEM CA for a private PKI (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mTLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl NatsConfig {
    /// Checks what serde cannot; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        let subject_ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && !s.ends_with('.')
                && !s.contains("..")
                && !s.contains(char::is_whitespace)
        };
        match crate::redact::split_credentials(&self.url) {
            Err(message) => return Err(("nats.url", message.to_owned())),
            Ok((_, Some(_))) if self.auth.is_some() => {
                return Err((
                    "nats.url",
                    "carries credentials while `nats.auth` is set: give them in one place".into(),
                ));
            }
            Ok(_) => {}
        }
        let checks: [(&'static str, bool, &str); 10] = [
            ("nats.url", !self.url.trim().is_empty(), "must not be empty"),
            (
                "nats.stream.name",
                name_ok(&self.stream.name),
                "letters, digits, `_` and `-` only",
            ),
            (
                "nats.bucket.name",
                name_ok(&self.bucket.name),
                "letters, digits, `_` and `-` only",
            ),
            (
                "nats.consumer.durable",
                name_ok(&self.consumer.durable),
                "letters, digits, `_` and `-` only",
            ),
            (
                "nats.stream.subjects",
                !self.stream.subjects.is_empty()
                    && self.stream.subjects.iter().all(|s| subject_ok(s)),
                "needs at least one valid subject",
            ),
            (
                "nats.stream.revocation_subject",
                subject_ok(&self.stream.revocation_subject)
                    && !self
                        .stream
                        .subjects
                        .contains(&self.stream.revocation_subject),
                "must be a valid subject that is not also an attribute subject",
            ),
            (
                "nats.consumer.workers",
                (1..=1024).contains(&self.consumer.workers)
                    && self.consumer.batch >= 1
                    && self.consumer.max_ack_pending >= 1,
                "workers 1..=1024; batch and max_ack_pending at least 1",
            ),
            (
                "nats.lookup_timeout",
                !self.lookup_timeout.is_zero()
                    && !self.request_timeout.is_zero()
                    && !self.connect_timeout.is_zero(),
                "timeouts must be positive",
            ),
            (
                "nats.cache.ttl",
                !self.cache.ttl.is_zero() && self.cache.max_principals > 0,
                "ttl and max_principals must be positive",
            ),
            (
                "nats.consumer.ack_wait",
                self.consumer.ack_wait > self.request_timeout * 2,
                "must exceed twice `request_timeout`, or events are redelivered while being applied",
            ),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((field, _, message)) => Err((field, message.to_owned())),
            None => Ok(()),
        }
    }

    /// Every subject the consumer reads.
    pub fn all_subjects(&self) -> Vec<String> {
        let mut subjects = self.stream.subjects.clone();
        subjects.push(self.stream.revocation_subject.clone());
        subjects
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The metrics of the attribute pipeline, registered under `heimdall_attributes_` and
/// `heimdall_nats_`. Labels are fixed words, never a principal.
#[derive(Clone)]
pub struct AttributeMetrics {
    connected: Gauge,
    events: Family<OutcomeLabels, Counter>,
    malformed: Family<ReasonLabels, Counter>,
    cas_conflicts: Counter,
    apply_duration: Histogram,
    consumer_pending: Gauge,
    consumer_ack_pending: Gauge,
    lookups: Family<ResultLabels, Counter>,
    watch_updates: Counter,
    revoked: Counter,
    live: Gauge,
}

impl AttributeMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            connected: Gauge::default(),
            events: Family::default(),
            malformed: Family::default(),
            cas_conflicts: Counter::default(),
            apply_duration: Histogram::new([
                0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
            lookups: Family::default(),
            watch_updates: Counter::default(),
            revoked: Counter::default(),
            live: Gauge::default(),
        };
        let nats = registry.sub_registry_with_prefix("heimdall_nats");
        nats.register(
            "connected",
            "1 while the NATS connection is up",
            metrics.connected.clone(),
        );
        let r = registry.sub_registry_with_prefix("heimdall_attributes");
        r.register(
            "events",
            "Events handled by outcome: applied, skipped (already applied or superseded), malformed (terminated), retried (nak)",
            metrics.events.clone(),
        );
        r.register(
            "malformed_events",
            "Terminated events by reason",
            metrics.malformed.clone(),
        );
        r.register(
            "cas_conflicts",
            "KV writes retried because another writer changed the principal first",
            metrics.cas_conflicts.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "Time to apply one event to the KV bucket",
            metrics.apply_duration.clone(),
        );
        r.register(
            "consumer_pending",
            "Events in the stream not yet delivered to the shared consumer (lag)",
            metrics.consumer_pending.clone(),
        );
        r.register(
            "consumer_ack_pending",
            "Events delivered but not yet acknowledged",
            metrics.consumer_ack_pending.clone(),
        );
        r.register(
            "lookups",
            "Principal lookups on the decision path: hit, miss (read from KV) or error",
            metrics.lookups.clone(),
        );
        r.register(
            "watch_updates",
            "KV changes received by this replica's watch",
            metrics.watch_updates.clone(),
        );
        r.register(
            "revoked_tokens",
            "Tokens rejected because their principal was revoked after they were issued",
            metrics.revoked.clone(),
        );
        r.register(
            "live",
            "1 while the consumer (if enabled) and the KV watch are running",
            metrics.live.clone(),
        );
        metrics
    }

    fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    fn lookup(&self, result: &'static str) {
        self.lookups.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a token rejected by a revocation.
    pub fn revoked_token(&self) {
        self.revoked.inc();
    }
}

/// Connects with the configured options. The client connects in the background and reconnects
/// forever; connection changes go to the log and the `heimdall_nats_connected` gauge.
async fn connect(
    config: &NatsConfig,
    metrics: &AttributeMetrics,
) -> anyhow::Result<async_nats::Client> {
    let connected = metrics.connected.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(&config.name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Quick first retries, then every 2 s: an outage is noticed in metrics, not hammered.
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(100u64.saturating_mul(1 << attempt.min(5)))
                .min(Duration::from_secs(2))
        })
        .event_callback(move |event| {
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        connected.set(1);
                        tracing::info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        connected.set(0);
                        tracing::warn!(
                            "disconnected from NATS; deciding from the cache while reconnecting"
                        );
                    }
                    other => tracing::info!(event = %other, "NATS connection event"),
                }
            }
        });
    // Credentials in the URL go to the client as options, never inside the URL it logs.
    let (servers, url_credentials) = crate::redact::split_credentials(&config.url)
        .map_err(|message| anyhow::anyhow!("nats.url: {message}"))?;
    if let Some(credentials) = url_credentials {
        if config.auth.is_some() {
            anyhow::bail!(
                "nats.url carries credentials and nats.auth is set: give them in one place"
            );
        }
        options = match credentials.password {
            Some(password) => options.user_and_password(credentials.user, password),
            None => options.token(credentials.user),
        };
    }
    if let Some(auth) = &config.auth {
        if let Some(path) = &auth.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("NATS credentials file `{}`", path.display()))?;
        }
        if let Some(seed) = &auth.nkey_seed {
            options = options.nkey(seed.read().context("NATS nkey seed")?);
        }
        if let Some(token) = &auth.token {
            options = options.token(token.read().context("NATS token")?);
        }
        match (&auth.user, &auth.password) {
            (Some(user), Some(password)) => {
                options = options
                    .user_and_password(user.clone(), password.read().context("NATS password")?);
            }
            (None, None) => {}
            _ => anyhow::bail!("nats.auth: `user` and `password` go together"),
        }
    }
    if let Some(tls) = &config.tls {
        options = options.require_tls(tls.required);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => anyhow::bail!("nats.tls: `cert_file` and `key_file` go together"),
        }
    }
    options
        .connect(servers.as_str())
        .await
        .with_context(|| format!("NATS at `{}`", crate::redact::redact_url(&config.url)))
}

/// Runs the attribute pipeline until the process stops: connect, set up the stream, bucket and
/// consumer, then consume and watch; any failure is logged and retried with back-off. `ready`
/// is released the first time the consumer and the watch are both live.
pub async fn run(config: NatsConfig, store: Arc<PrincipalStore>, ready: BlockReady) {
    let metrics = store.metrics().clone();
    let mut ready = Some(ready);
    let mut delay = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let client = loop {
        match connect(&config, &metrics).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot set up the NATS connection; retrying");
                tokio::time::sleep(delay.next()).await;
            }
        }
    };
    let mut js = jetstream::new(client);
    js.set_timeout(config.request_timeout);
    let mut attempt: u32 = 0;
    loop {
        let session = session(&config, &js, &store, &mut ready, &mut delay);
        let error = session.await;
        metrics.live.set(0);
        attempt = attempt.saturating_add(1);
        // The first failures are expected while NATS starts; say so quietly, then loudly.
        if attempt <= 3 {
            tracing::info!(error = %format!("{error:#}"), "attribute pipeline not running yet; retrying");
        } else {
            tracing::warn!(error = %format!("{error:#}"), attempt, "attribute pipeline stopped; retrying");
        }
        tokio::time::sleep(delay.next()).await;
    }
}

/// One connected session: returns only when something broke.
async fn session(
    config: &NatsConfig,
    js: &jetstream::Context,
    store: &Arc<PrincipalStore>,
    ready: &mut Option<BlockReady>,
    delay: &mut Backoff,
) -> anyhow::Error {
    let result: anyhow::Result<()> = async {
        let kv = consumer::bucket(js, config).await?;
        store.attach(kv.clone());
        let watch = store.start_watch(&kv).await?;
        let consumer = if config.consumer.enabled {
            Some(consumer::Consumer::start(js, config, kv, store.metrics().clone()).await?)
        } else {
            None
        };
        if let Some(ready) = ready.take() {
            tracing::info!(
                stream = %config.stream.name,
                bucket = %config.bucket.name,
                consuming = config.consumer.enabled,
                "attribute pipeline live"
            );
            drop(ready);
        } else {
            tracing::info!("attribute pipeline live again");
        }
        store.metrics().live.set(1);
        delay.reset();
        match consumer {
            Some(consumer) => tokio::select! {
                result = store.follow(watch) => result,
                result = consumer.run() => result,
            },
            None => store.follow(watch).await,
        }
    }
    .await;
    match result {
        Ok(()) => anyhow::anyhow!("the attribute pipeline ended"),
        Err(e) => e,
    }
}

/// Exponential back-off between `min` and `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    fn next(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_checks_name_fields() {
        assert!(NatsConfig::default().validate().is_ok());
        let mut config = NatsConfig::default();
        config.bucket.name = "has.dot".into();
        assert_eq!(config.validate().unwrap_err().0, "nats.bucket.name");
        let mut config = NatsConfig::default();
        config.stream.revocation_subject = "usage.updated".into();
        assert_eq!(
            config.validate().unwrap_err().0,
            "nats.stream.revocation_subject"
        );
        let mut config = NatsConfig::default();
        config.consumer.ack_wait = Duration::from_secs(1);
        assert_eq!(config.validate().unwrap_err().0, "nats.consumer.ack_wait");
    }

    #[test]
    fn secrets_show_only_where_they_come_from() {
        let auth = NatsAuth {
            token: Some(Secret::Env("NATS_TOKEN".into())),
            ..NatsAuth::default()
        };
        let yaml = serde_yaml_ng::to_string(&auth).unwrap();
        assert_eq!(yaml, "token:\n  env: NATS_TOKEN\n");
        let parsed: NatsAuth =
            serde_yaml_ng::from_str("password: {file: /run/secrets/nats}\nuser: heimdall\n")
                .unwrap();
        assert!(matches!(parsed.password, Some(Secret::File(_))));
        let err = serde_yaml_ng::from_str::<NatsAuth>("token: {env: A, file: /b}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one of"), "{err}");
    }

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let seen: Vec<u128> = (0..4).map(|_| b.next().as_millis()).collect();
        assert_eq!(seen, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next().as_millis(), 100);
    }
}
