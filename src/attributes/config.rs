//! The `nats` configuration section: stream, consumer, bucket, cache, authentication (secrets
//! from files or environment variables only) and TLS, and its validation.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

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
    pub(crate) fn read(&self) -> anyhow::Result<String> {
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
}
