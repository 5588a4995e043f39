//! The process configuration: one YAML file plus the environment variables of the service
//! heimdall replaces (`PASETO_SYMMETRIC_KEY`, `PORT`, …), which override the file.
//!
//! Every struct refuses unknown fields, so a typo is an error that names the field and line,
//! not a silently ignored setting. With no file at all, the embedded example configuration
//! (`config/heimdall.yaml`) is used.

pub mod jwt_keys;
pub mod mechanisms;
pub mod otel;
pub mod reference;
pub mod remote_call;
pub mod spec;
pub mod tls;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::tokens::{KeyError, Keyring};
use spec::{MechanismsSpec, PipelineSpec, RuleSpec};

/// The configuration compiled into the binary: example rules, no external services.
pub const EMBEDDED: &str = include_str!("../config/heimdall.yaml");

/// The rule format version this build reads.
pub const VERSION: &str = "1";

/// Reads environment variables; tests pass a map instead of touching the process environment.
pub trait Env {
    /// The raw value of `name`, `None` when it is not set.
    fn var_os(&self, name: &str) -> Option<OsString>;

    /// The value of `name` as text: `Ok(None)` when it is not set, an error naming the
    /// variable when its value is not UTF-8. A value heimdall cannot read is refused, never
    /// taken as "not set" (which would, for `PASETO_SYMMETRIC_KEY`, silently swap the key for
    /// a throw-away one); the value itself is never echoed, it may be a secret.
    fn var(&self, name: &str) -> Result<Option<String>, ConfigError> {
        self.var_os(name)
            .map(|value| {
                value.into_string().map_err(|_| ConfigError::EnvNotUnicode {
                    name: name.to_owned(),
                })
            })
            .transpose()
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var_os(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

impl Env for HashMap<String, String> {
    fn var_os(&self, name: &str) -> Option<OsString> {
        self.get(name).map(OsString::from)
    }
}

impl Env for HashMap<String, OsString> {
    fn var_os(&self, name: &str) -> Option<OsString> {
        self.get(name).cloned()
    }
}

/// The environment variables heimdall reads besides those named in the configuration
/// (`tokens.keys[].env`, `nats.auth.*.env`). `Config::load` checks each is readable text.
pub const ENV_VARS: [&str; 13] = [
    "PASETO_SYMMETRIC_KEY",
    "OIDC_ISSUER_URL",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
    "OIDC_REDIRECT_URL",
    "LOGIN_ALLOWED_REDIRECTS",
    "PORT",
    "GRPC_PORT",
    "HEIMDALL_BIND",
    "CERBOS_GRPC_URL",
    "NATS_URL",
    "HEIMDALL_CONFIG",
    "RUST_LOG",
];

/// A configuration that cannot be used, with what and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config in {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("unsupported config version `{0}` (this heimdall reads version \"1\")")]
    Version(String),
    #[error("invalid environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error(
        "environment variable {name} is set but its value is not valid UTF-8 text; heimdall refuses it rather than ignore it"
    )]
    EnvNotUnicode { name: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot read key file `{path}`: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key {index}: environment variable `{name}` is not set")]
    KeyEnv { index: usize, name: String },
    #[error("JWT key {index}: environment variable `{name}` is not set")]
    JwtKeyEnv { index: usize, name: String },
    #[error("invalid setting `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; `"1"`.
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub tokens: TokensConfig,
    /// The Cerbos PDP; absent means no policy engine (unless `CERBOS_GRPC_URL` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cerbos: Option<crate::cerbos::CerbosConfig>,
    /// NATS JetStream principal attributes; absent means none (unless `NATS_URL` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<crate::attributes::NatsConfig>,
    /// The `/check` and `/plan/resources` APIs.
    #[serde(default)]
    pub api: ApiConfig,
    /// OpenID Connect login on the side port; absent means none (unless the `OIDC_*`
    /// variables are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<crate::login::LoginConfig>,
    #[serde(default)]
    pub mechanisms: MechanismsSpec,
    /// The pipeline for requests no rule matches. Without it, they are denied (403).
    #[serde(default)]
    pub default_rule: Option<PipelineSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// OpenTelemetry trace export (OTLP/gRPC); off without an endpoint. The `OTEL_*`
    /// variables override it.
    #[serde(default)]
    pub tracing: otel::TracingConfig,
}

fn default_version() -> String {
    VERSION.to_owned()
}

/// Client-sent headers an upstream could take for heimdall's word or the proxy's: identities
/// (heimdall's own finalizer headers, attribute headers, common auth-proxy headers) and the
/// routing overrides some frameworks honour (`X-Original-URL`, `X-HTTP-Method-Override`, …).
pub const DEFAULT_REMOVED_CLIENT_HEADERS: &[&str] = &[
    "x-user-id",
    "x-user-roles",
    "x-user-plan",
    "x-tenant",
    "x-tenant-id",
    "x-user-email",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-host",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-remote-user",
    "remote-user",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Listeners and request handling.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address both ports bind to.
    pub bind: IpAddr,
    /// ext_authz gRPC port (`GRPC_PORT`).
    pub grpc_port: u16,
    /// HTTP side port (`PORT`).
    pub http_port: u16,
    /// Deadline for one decision; keep it below Envoy's ext_authz timeout.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub check_timeout: Duration,
    /// Peers whose `X-Forwarded-*` headers `/decision` trusts.
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<IpNet>,
    /// The `context_extensions` key that names a rule directly.
    pub rule_extension: String,
    /// After SIGTERM, how long heimdall keeps serving while `/ready` and the gRPC health
    /// service already say it is going away, so load balancers (Kubernetes endpoints, Envoy's
    /// health checks) stop sending before the listeners close. Set it above the health checks'
    /// interval when several replicas sit behind one cluster.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_delay: Duration,
    /// How long in-flight requests may finish once the listeners close (after `drain_delay`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// How often the configuration file is re-read to catch a change no file-system event
    /// reported; events (a write, a rename over it, a ConfigMap's symlink swap) reload at once.
    /// Only `mechanisms`, `rules` and `default_rule` reload (docs/operations.md, "Reloading
    /// rules"); SIGHUP reloads too.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_poll_interval: Duration,
    /// Limits of the ext_authz gRPC listener (docs/security.md, "Listener limits").
    pub grpc: GrpcListenerConfig,
    /// Limits of the HTTP side-port listener (docs/security.md, "Listener limits").
    pub http: HttpListenerConfig,
    /// How request paths are canonicalized (docs/security.md); settings only make it stricter.
    pub paths: crate::canonical::PathPolicy,
    /// Request headers removed from every allowed request before it goes upstream, unless a
    /// finalizer of the rule sets them: identity and routing headers a client may forge.
    pub remove_client_headers: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            grpc_port: 9001,
            http_port: 8080,
            check_timeout: Duration::from_millis(180),
            trusted_proxies: vec![
                IpNet::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                IpNet::from(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            ],
            rule_extension: "heimdall_rule".into(),
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
            reload_poll_interval: Duration::from_secs(10),
            grpc: GrpcListenerConfig::default(),
            http: HttpListenerConfig::default(),
            paths: crate::canonical::PathPolicy::default(),
            remove_client_headers: DEFAULT_REMOVED_CLIENT_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
        }
    }
}

/// Limits of the ext_authz gRPC port. Every setting bounds what one peer can hold: memory
/// (message size × streams × connections), file descriptors (connections) or time (timeouts).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcListenerConfig {
    /// Largest gRPC message accepted. An ext_authz `CheckRequest` carries the request headers
    /// (Envoy's `max_request_headers_kb` defaults to 60 KiB) plus at most
    /// `with_request_body.max_request_bytes` of body; 256 KiB holds both with room to spare.
    pub max_message_bytes: usize,
    /// HTTP/2 streams (concurrent checks) one connection may have open; Envoy opens another
    /// connection when it needs more.
    pub max_concurrent_streams: u32,
    /// Open connections; further connections wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// Time from accept until the first request's headers have arrived (HTTP/2 preface,
    /// settings and a HEADERS frame); a connection that takes longer is closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// Interval of HTTP/2 PINGs that detect a dead peer.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keepalive_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 GOAWAY).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Deadline of one call, reading its message included; must exceed `server.check_timeout`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// TLS on this port (docs/operations.md, "TLS and mTLS"); absent: plaintext. With
    /// `client_ca_file`, Envoy must present a client certificate. ALPN offers `h2`. The TLS
    /// handshake counts against `header_read_timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::TlsConfig>,
}

impl Default for GrpcListenerConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 256 * 1024,
            max_concurrent_streams: 100,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// Limits of the HTTP side port (health, readiness, metrics, `/decision`, `/check`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpListenerConfig {
    /// Open connections; further connections wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// Time a request's headers may take to arrive, counted from accept for the first request
    /// and from the end of the previous one for the next; a connection that takes longer is
    /// closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// Deadline of one request, reading its body included; must exceed `server.check_timeout`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// A connection with no request in flight for this long is closed. Keep it above the
    /// idle timeout of the proxies' connection pools, so they close first.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Largest request body on any route; `api.max_body_bytes` limits `/check` and
    /// `/plan/resources` further and may not exceed it.
    pub max_body_bytes: usize,
    /// TLS on this port (docs/operations.md, "TLS and mTLS"); absent: plaintext. ALPN offers
    /// `h2` and `http/1.1`. Kubernetes probes then need `scheme: HTTPS`, and with
    /// `client_ca_file` every caller (probes and scrapers included) needs a client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::TlsConfig>,
}

impl Default for HttpListenerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_body_bytes: 1024 * 1024,
            tls: None,
        }
    }
}

/// The `/check` and `/plan/resources` APIs of the side port.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The id of an authenticator in `mechanisms.authenticators` that verifies the callers'
    /// bearer tokens, with that mechanism's sources, issuers, audience, leeway, cache and
    /// revocation check. Unset: a built-in `paseto` authenticator with the `tokens` settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authenticator: Option<String>,
    /// Use the principal of the request body instead of the bearer token's. Only for callers that
    /// are trusted to speak for any principal (service-to-service, behind network policy): anyone
    /// who can reach the port can then ask about anyone.
    pub trust_body_principal: bool,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            authenticator: None,
            trust_body_principal: false,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// An `EnvFilter` directive (`info`, `heimdall=debug`); `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
    /// Log every decision at info (denials are always logged at info).
    pub decisions: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Plain,
            decisions: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Plain,
    Json,
}

/// heimdall's own tokens.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// `iss` of minted tokens, and the issuer authenticators accept by default.
    pub issuer: String,
    /// `aud` of minted tokens and required by authenticators by default (none when unset).
    pub audience: Option<String>,
    /// Lifetime of minted tokens.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Keys as PASERK, inline, from a file or from an environment variable. The first
    /// `k4.local` and the first `k4.secret` key mint; every key verifies.
    pub keys: Vec<KeySource>,
    /// Keys of the JWTs the `jwt` finalizer mints for upstreams (PEM). The first private key
    /// signs; every key is published at `/.well-known/jwks.json`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_keys: Vec<jwt_keys::JwtKeySource>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            issuer: "heimdall".into(),
            audience: None,
            ttl: Duration::from_secs(3600),
            keys: Vec::new(),
            jwt_keys: Vec::new(),
        }
    }
}

/// Where a PASERK key comes from: `{env: NAME}`, `{file: /path}` or, for a public key only,
/// `{paserk: "k4.public.…"}`. Secret keys (`k4.local`, `k4.secret`) are refused inline: a
/// configuration file is not a secret store (it is in a ConfigMap, a repository, a support
/// bundle), and a parse error must not be able to quote the key.
#[derive(Debug, Clone)]
pub enum KeySource {
    Paserk(String),
    File(PathBuf),
    Env(String),
}

/// The YAML shape of a [`KeySource`]: a map with exactly one of the three keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySourceSpec {
    paserk: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
}

impl TryFrom<KeySourceSpec> for KeySource {
    type Error = &'static str;

    fn try_from(spec: KeySourceSpec) -> Result<Self, Self::Error> {
        match (spec.paserk, spec.file, spec.env) {
            (Some(p), None, None) if p.trim().starts_with("k4.public.") => Ok(Self::Paserk(p)),
            // Whatever it is, it is not shown: it may be a secret key.
            (Some(_), None, None) => Err(INLINE_KEY_REFUSED),
            (None, Some(f), None) => Ok(Self::File(f)),
            (None, None, Some(e)) => Ok(Self::Env(e)),
            _ => Err("a key needs exactly one of `paserk`, `file` or `env`"),
        }
    }
}

const INLINE_KEY_REFUSED: &str = "an inline `paserk` must be a public key (`k4.public.…`); give a secret key (`k4.local.…`, `k4.secret.…`) as `{env: NAME}` or `{file: PATH}` so it stays out of the configuration";

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec: KeySourceSpec = crate::redact::deserialize_map_only(
            d,
            "a key: a map with one of `env: NAME`, `file: PATH` or `paserk: k4.public.…`; give a secret key as `{env: NAME}` or `{file: PATH}`",
        )?;
        Self::try_from(spec).map_err(serde::de::Error::custom)
    }
}

impl Serialize for KeySource {
    /// Never writes key material: an inline secret shows as its PASERK type only.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            Self::Paserk(p) if p.starts_with("k4.public.") => map.serialize_entry("paserk", p)?,
            // Only a well-formed secret prefix is kept; anything else may be the raw secret.
            Self::Paserk(p) => {
                let shown = ["k4.local.", "k4.secret."]
                    .into_iter()
                    .find(|prefix| p.starts_with(prefix))
                    .unwrap_or("");
                map.serialize_entry("paserk", &format!("{shown}<redacted>"))?
            }
            Self::File(path) => map.serialize_entry("file", path)?,
            Self::Env(name) => map.serialize_entry("env", name)?,
        }
        map.end()
    }
}

/// `{env: NAME}`, `{file: PATH}` or `{paserk: "k4.public.…"}`: exactly one key.
impl schemars::JsonSchema for KeySource {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KeySource".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let one = |key: &str, description: &str| {
            serde_json::json!({
                "type": "object",
                "properties": { key: { "type": "string", "description": description } },
                "required": [key],
                "additionalProperties": false
            })
        };
        schemars::json_schema!({
            "description": "A PASERK key: from an environment variable, a file, or inline when it is a public key.",
            "oneOf": [
                one("env", "An environment variable holding the PASERK."),
                one("file", "A file holding the PASERK."),
                one("paserk", "A public key inline (`k4.public.…`); secret keys are refused inline."),
            ]
        })
    }
}

/// `{env: NAME}` or `{file: PATH}` (written here: the type's serde is hand-made).
impl schemars::JsonSchema for crate::attributes::Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A secret: from an environment variable or a file, never inline.",
            "oneOf": [
                { "type": "object", "properties": { "env": { "type": "string" } }, "required": ["env"], "additionalProperties": false },
                { "type": "object", "properties": { "file": { "type": "string" } }, "required": ["file"], "additionalProperties": false }
            ]
        })
    }
}

/// The JSON Schema of the configuration file (`heimdall schema`).
pub fn schema() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Config>()
}

/// Where the configuration came from, for messages.
#[derive(Debug, Clone)]
pub enum Origin {
    Embedded,
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("the embedded default configuration"),
            Self::File(p) => write!(f, "`{}`", p.display()),
        }
    }
}

impl Config {
    /// Parses YAML; errors carry the origin and serde's line/column.
    pub fn parse(text: &str, origin: &Origin) -> Result<Self, ConfigError> {
        let config: Self = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        if config.version != VERSION {
            return Err(ConfigError::Version(config.version));
        }
        Ok(config)
    }

    /// Loads `path`, or the embedded default when `None`, then applies the environment.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<(Self, Origin), ConfigError> {
        let (text, origin) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                (text, Origin::File(path.to_owned()))
            }
            None => (EMBEDDED.to_owned(), Origin::Embedded),
        };
        let mut config = Self::parse(&text, &origin)?;
        config.apply_env(env)?;
        config.validate()?;
        Ok((config, origin))
    }

    /// Applies `PORT`, `GRPC_PORT`, `HEIMDALL_BIND`, `CERBOS_GRPC_URL`, `NATS_URL`, the `OIDC_*` and
    /// the `OTEL_*` variables (see [`otel::OTEL_ENV_VARS`]), after
    /// checking that every variable of [`ENV_VARS`] that is set holds UTF-8 text.
    pub fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        for name in ENV_VARS {
            // `HEIMDALL_CONFIG` is a path, which need not be UTF-8.
            if name != "HEIMDALL_CONFIG" {
                env.var(name)?;
            }
        }
        if let Some(bind) = env.var("HEIMDALL_BIND")? {
            self.server.bind = bind.trim().parse().map_err(|_| ConfigError::Env {
                name: "HEIMDALL_BIND",
                message: format!("`{bind}` is not an IP address"),
            })?;
        }
        if let Some(port) = env.var("PORT")? {
            self.server.http_port = parse_port("PORT", &port)?;
        }
        if let Some(url) = env.var("CERBOS_GRPC_URL")?.filter(|u| !u.trim().is_empty()) {
            self.cerbos.get_or_insert_with(Default::default).url = url.trim().to_owned();
        }
        if let Some(url) = env.var("NATS_URL")?.filter(|u| !u.trim().is_empty()) {
            self.nats.get_or_insert_with(Default::default).url = url.trim().to_owned();
        }
        if let Some(port) = env.var("GRPC_PORT")? {
            self.server.grpc_port = parse_port("GRPC_PORT", &port)?;
        }
        self.apply_login_env(env)?;
        self.tracing.apply_env(env)
    }

    /// `OIDC_ISSUER_URL`, `OIDC_CLIENT_ID`, `OIDC_CLIENT_SECRET` and `OIDC_REDIRECT_URL` turn
    /// login on together (or override a `login` section field by field);
    /// `LOGIN_ALLOWED_REDIRECTS` sets the allow-list.
    fn apply_login_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        let read = |name: &'static str| -> Result<Option<String>, ConfigError> {
            Ok(env
                .var(name)?
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()))
        };
        let issuer = read("OIDC_ISSUER_URL")?;
        let client_id = read("OIDC_CLIENT_ID")?;
        let secret = read("OIDC_CLIENT_SECRET")?
            .map(|_| crate::attributes::Secret::Env("OIDC_CLIENT_SECRET".into()));
        let redirect = read("OIDC_REDIRECT_URL")?;
        let allowed = read("LOGIN_ALLOWED_REDIRECTS")?.map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        let login = match self.login.take() {
            Some(mut login) => {
                login.issuer_url = issuer.unwrap_or(login.issuer_url);
                login.client_id = client_id.unwrap_or(login.client_id);
                login.client_secret = secret.or(login.client_secret);
                login.redirect_url = redirect.unwrap_or(login.redirect_url);
                Some(login)
            }
            None => match (issuer, client_id, secret, redirect) {
                (None, None, None, None) => None,
                (Some(issuer_url), Some(client_id), Some(secret), Some(redirect_url)) => {
                    let mut login =
                        crate::login::LoginConfig::new(issuer_url, client_id, redirect_url);
                    login.client_secret = Some(secret);
                    Some(login)
                }
                (issuer, client_id, secret, redirect) => {
                    let missing: Vec<&str> = [
                        ("OIDC_ISSUER_URL", issuer.is_none()),
                        ("OIDC_CLIENT_ID", client_id.is_none()),
                        ("OIDC_CLIENT_SECRET", secret.is_none()),
                        ("OIDC_REDIRECT_URL", redirect.is_none()),
                    ]
                    .into_iter()
                    .filter_map(|(name, missing)| missing.then_some(name))
                    .collect();
                    return Err(ConfigError::Env {
                        name: "OIDC_ISSUER_URL",
                        message: format!(
                            "login needs all four OIDC_* variables (or a `login` section); missing: {}",
                            missing.join(", ")
                        ),
                    });
                }
            },
        };
        self.login = login.map(|mut login| {
            if let Some(allowed) = allowed {
                login.allowed_redirects = allowed;
            }
            login
        });
        Ok(())
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.paths.max_length == 0 {
            return Err(ConfigError::Invalid {
                field: "server.paths.max_length",
                message: "must be positive".into(),
            });
        }
        if let Some(bad) = self
            .server
            .remove_client_headers
            .iter()
            .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(ConfigError::Invalid {
                field: "server.remove_client_headers",
                message: format!("{:?} is not a header name", bad),
            });
        }
        if self.server.check_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                field: "server.check_timeout",
                message: "must be positive".into(),
            });
        }
        if self.server.reload_poll_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                field: "server.reload_poll_interval",
                message: "must be at least 1s (file-system events reload at once; the poll only \
                          catches what they miss)"
                    .into(),
            });
        }
        self.validate_listeners()?;
        if self.tokens.ttl.is_zero() || self.tokens.ttl > crate::tokens::MAX_TTL {
            return Err(ConfigError::Invalid {
                field: "tokens.ttl",
                message: format!(
                    "must be positive and at most {} days",
                    crate::tokens::MAX_TTL.as_secs() / 86_400
                ),
            });
        }
        if self.tokens.issuer.is_empty() {
            return Err(ConfigError::Invalid {
                field: "tokens.issuer",
                message: "must not be empty".into(),
            });
        }
        if let Some(nats) = &self.nats {
            nats.validate()
                .map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        }
        if let Some(login) = &self.login {
            login
                .validate()
                .map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        }
        self.tracing
            .validate()
            .map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        Ok(())
    }

    /// The listener limits: nothing zero, and request deadlines longer than a decision's.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        let invalid =
            |field: &'static str, message: String| ConfigError::Invalid { field, message };
        let positive: [(&'static str, bool); 13] = [
            (
                "server.grpc.max_message_bytes",
                server.grpc.max_message_bytes == 0,
            ),
            (
                "server.grpc.max_concurrent_streams",
                server.grpc.max_concurrent_streams == 0,
            ),
            (
                "server.grpc.max_connections",
                server.grpc.max_connections == 0,
            ),
            (
                "server.grpc.header_read_timeout",
                server.grpc.header_read_timeout.is_zero(),
            ),
            (
                "server.grpc.keepalive_interval",
                server.grpc.keepalive_interval.is_zero(),
            ),
            (
                "server.grpc.keepalive_timeout",
                server.grpc.keepalive_timeout.is_zero(),
            ),
            (
                "server.grpc.idle_timeout",
                server.grpc.idle_timeout.is_zero(),
            ),
            (
                "server.grpc.request_timeout",
                server.grpc.request_timeout.is_zero(),
            ),
            (
                "server.http.max_connections",
                server.http.max_connections == 0,
            ),
            (
                "server.http.header_read_timeout",
                server.http.header_read_timeout.is_zero(),
            ),
            (
                "server.http.request_timeout",
                server.http.request_timeout.is_zero(),
            ),
            (
                "server.http.idle_timeout",
                server.http.idle_timeout.is_zero(),
            ),
            (
                "server.http.max_body_bytes",
                server.http.max_body_bytes == 0,
            ),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err(invalid(field, "must be positive".into()));
        }
        // The semaphore that enforces the caps holds at most this many permits.
        let most = tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize);
        for (field, value) in [
            ("server.grpc.max_connections", server.grpc.max_connections),
            ("server.http.max_connections", server.http.max_connections),
        ] {
            if value > most {
                return Err(invalid(field, format!("{value} is more than {most}")));
            }
        }
        for (field, value) in [
            ("server.grpc.request_timeout", server.grpc.request_timeout),
            ("server.http.request_timeout", server.http.request_timeout),
        ] {
            if value <= server.check_timeout {
                return Err(invalid(
                    field,
                    format!(
                        "{} must be longer than server.check_timeout ({}), or decisions are cut off",
                        humantime::format_duration(value),
                        humantime::format_duration(server.check_timeout)
                    ),
                ));
            }
        }
        // HTTP/2 settings values are 31-bit; hyper would clamp larger ones silently.
        if server.grpc.max_concurrent_streams > i32::MAX as u32 {
            return Err(invalid(
                "server.grpc.max_concurrent_streams",
                format!(
                    "{} is more than {}",
                    server.grpc.max_concurrent_streams,
                    i32::MAX
                ),
            ));
        }
        if self.api.max_body_bytes > server.http.max_body_bytes {
            return Err(invalid(
                "api.max_body_bytes",
                format!(
                    "{} is more than server.http.max_body_bytes ({}), which caps every side-port body",
                    self.api.max_body_bytes, server.http.max_body_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Builds the key ring: `PASETO_SYMMETRIC_KEY` (exactly 32 bytes) first, then `tokens.keys`.
    pub fn keyring(&self, env: &dyn Env) -> Result<Keyring, ConfigError> {
        let mut ring = Keyring::default();
        if let Some(raw) = env.var("PASETO_SYMMETRIC_KEY")? {
            ring.add_raw_symmetric(raw.as_bytes())?;
        }
        for (index, source) in self.tokens.keys.iter().enumerate() {
            let text = match source {
                KeySource::Paserk(p) => p.clone(),
                KeySource::File(path) => {
                    std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                        path: path.clone(),
                        source,
                    })?
                }
                KeySource::Env(name) => env.var(name)?.ok_or_else(|| ConfigError::KeyEnv {
                    index,
                    name: name.clone(),
                })?,
            };
            ring.add_paserk(&text, index)?;
        }
        for (index, source) in self.tokens.jwt_keys.iter().enumerate() {
            let text = match &source.material {
                jwt_keys::JwtKeyMaterial::Pem(pem) => pem.clone(),
                jwt_keys::JwtKeyMaterial::File(path) => {
                    std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                        path: path.clone(),
                        source,
                    })?
                }
                jwt_keys::JwtKeyMaterial::Env(name) => {
                    env.var(name)?.ok_or_else(|| ConfigError::JwtKeyEnv {
                        index,
                        name: name.clone(),
                    })?
                }
            };
            ring.add_jwt_pem(&text, index, source.algorithm)?;
        }
        Ok(ring)
    }

    /// The configuration as YAML with secrets redacted, for the startup log.
    pub fn redacted_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|e| format!("<config cannot be shown: {e}>"))
    }
}

fn parse_port(name: &'static str, value: &str) -> Result<u16, ConfigError> {
    value.trim().parse::<u16>().map_err(|_| ConfigError::Env {
        name,
        message: format!("`{value}` is not a port number"),
    })
}

/// Shared, immutable configuration.
pub type SharedConfig = Arc<Config>;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_config_loads() {
        let (config, origin) = Config::load(None, &env(&[])).unwrap();
        assert!(matches!(origin, Origin::Embedded));
        assert!(!config.rules.is_empty());
    }

    #[test]
    fn env_overrides_ports() {
        let (config, _) =
            Config::load(None, &env(&[("PORT", "18080"), ("GRPC_PORT", "19001")])).unwrap();
        assert_eq!(
            (config.server.http_port, config.server.grpc_port),
            (18080, 19001)
        );
        let (config, _) = Config::load(None, &env(&[("HEIMDALL_BIND", "127.0.0.1")])).unwrap();
        assert_eq!(config.server.bind.to_string(), "127.0.0.1");
        assert!(Config::load(None, &env(&[("HEIMDALL_BIND", "localhost")])).is_err());
        let err = Config::load(None, &env(&[("PORT", "http")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid environment variable PORT: `http` is not a port number"
        );
    }

    /// The four `OIDC_*` variables turn login on together; a partial set names what is
    /// missing; `LOGIN_ALLOWED_REDIRECTS` is a comma-separated list; bad URLs name the field.
    #[test]
    fn oidc_variables_turn_login_on_together() {
        let all = [
            ("OIDC_ISSUER_URL", "https://idp.example.com/"),
            ("OIDC_CLIENT_ID", "heimdall"),
            ("OIDC_CLIENT_SECRET", "s3cret"),
            ("OIDC_REDIRECT_URL", "https://app.example.com/auth/callback"),
            (
                "LOGIN_ALLOWED_REDIRECTS",
                " https://app.example.com , https://docs.example.com/x/ ,",
            ),
        ];
        let (config, _) = Config::load(None, &env(&all)).unwrap();
        let login = config.login.unwrap();
        assert_eq!(login.issuer_url, "https://idp.example.com/");
        assert_eq!(
            login.allowed_redirects,
            ["https://app.example.com", "https://docs.example.com/x/"]
        );
        assert!(matches!(
            login.client_secret,
            Some(crate::attributes::Secret::Env(ref name)) if name == "OIDC_CLIENT_SECRET"
        ));
        // The secret's value never appears in the configuration.
        assert!(!format!("{login:?}").contains("s3cret"));

        let (config, _) = Config::load(None, &env(&[])).unwrap();
        assert!(config.login.is_none());
        let err = Config::load(None, &env(&all[..2])).unwrap_err().to_string();
        assert!(
            err.contains("missing: OIDC_CLIENT_SECRET, OIDC_REDIRECT_URL"),
            "{err}"
        );
        let mut bad = all;
        bad[3] = ("OIDC_REDIRECT_URL", "not a url");
        let err = Config::load(None, &env(&bad)).unwrap_err().to_string();
        assert!(err.contains("login.redirect_url"), "{err}");
        bad[3] = ("OIDC_REDIRECT_URL", "https://app.example.com/auth/callback");
        bad[4] = ("LOGIN_ALLOWED_REDIRECTS", "//evil.example");
        let err = Config::load(None, &env(&bad)).unwrap_err().to_string();
        assert!(err.contains("login.allowed_redirects"), "{err}");
    }

    #[test]
    fn old_example_key_is_refused_with_its_length() {
        let (config, _) = Config::load(None, &env(&[])).unwrap();
        let err = config
            .keyring(&env(&[(
                "PASETO_SYMMETRIC_KEY",
                "change-this-to-32-byte-secret!!",
            )]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "PASETO_SYMMETRIC_KEY must be exactly 32 bytes, got 31"
        );
    }

    #[test]
    fn token_lifetime_is_bounded() {
        let mut config = Config::parse("version: \"1\"\n", &Origin::Embedded).unwrap();
        config.tokens.ttl = Duration::from_secs(100_000_000 * 365 * 24 * 3600);
        let err = config.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid setting `tokens.ttl`: must be positive and at most 366 days"
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_a_location() {
        let err = Config::parse(
            "version: \"1\"\nserver:\n  grpc_prot: 1\n",
            &Origin::Embedded,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `grpc_prot`"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = Config::parse("version: \"2\"\n", &Origin::Embedded)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported config version `2`"), "{err}");
    }

    #[test]
    fn key_sources_are_maps() {
        let config = Config::parse("version: \"1\"\ntokens:\n  keys:\n    - env: A\n    - file: /k\n    - paserk: k4.public.x\n", &Origin::Embedded).unwrap();
        assert!(matches!(
            config.tokens.keys.as_slice(),
            [KeySource::Env(_), KeySource::File(_), KeySource::Paserk(_)]
        ));
        let err = Config::parse(
            "version: \"1\"\ntokens:\n  keys:\n    - { env: A, file: /k }\n",
            &Origin::Embedded,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("exactly one of"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut config = Config::parse("version: \"1\"\n", &Origin::Embedded).unwrap();
        config.tokens.keys.push(KeySource::Paserk(
            "k4.local.c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI".into(),
        ));
        let yaml = config.redacted_yaml();
        assert!(yaml.contains("k4.local.<redacted>"), "{yaml}");
        assert!(!yaml.contains("c2VjcmV0"), "{yaml}");
    }

    #[test]
    fn listener_limits_default_and_are_validated_by_name() {
        let load = |server: &str| {
            Config::parse(
                &format!("version: \"1\"\nserver:\n{server}"),
                &Origin::Embedded,
            )
            .and_then(|c| c.validate().map(|()| c))
        };
        let config = load("  grpc: { max_message_bytes: 65536, idle_timeout: 1m }\n").unwrap();
        assert_eq!(config.server.grpc.max_message_bytes, 65536);
        assert_eq!(config.server.grpc.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.server.grpc.max_connections, 1024);
        assert_eq!(config.server.http.max_body_bytes, 1024 * 1024);
        for (server, expected) in [
            (
                "  grpc: { max_connections: 0 }\n",
                "`server.grpc.max_connections`: must be positive",
            ),
            (
                "  http: { idle_timeout: 0s }\n",
                "`server.http.idle_timeout`: must be positive",
            ),
            (
                "  grpc: { request_timeout: 180ms }\n",
                "`server.grpc.request_timeout`: 180ms must be longer than server.check_timeout (180ms)",
            ),
            (
                "  http: { request_timeout: 100ms }\n",
                "`server.http.request_timeout`",
            ),
            (
                "  http: { max_body_bytes: 1000 }\n",
                "`api.max_body_bytes`: 65536 is more than server.http.max_body_bytes (1000)",
            ),
            (
                "  grpc: { max_concurrent_streams: 4294967295 }\n",
                "`server.grpc.max_concurrent_streams`",
            ),
            (
                "  grpc: { max_mesage_bytes: 1 }\n",
                "unknown field `max_mesage_bytes`",
            ),
        ] {
            let err = load(server).unwrap_err().to_string();
            assert!(err.contains(expected), "{server}: {err}");
        }
    }

    /// A secret written where heimdall does not take one is refused without being quoted.
    #[test]
    fn inline_secrets_are_refused_and_never_echoed() {
        const SECRET: &str = "k4.secret.c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI";
        for yaml in [
            format!("version: \"1\"\ntokens:\n  keys:\n    - paserk: {SECRET}\n"),
            format!("version: \"1\"\ntokens:\n  keys:\n    - {SECRET}\n"),
            "version: \"1\"\ntokens:\n  keys:\n    - paserk: k4.local.c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI\n".into(),
            "version: \"1\"\ntokens:\n  keys:\n    - 12345678901234567890\n".into(),
            "version: \"1\"\nnats:\n  auth:\n    token: c2VjcmV0c2VjcmV0\n".into(),
            "version: \"1\"\nnats:\n  auth:\n    user: heimdall\n    password: c2VjcmV0c2VjcmV0\n".into(),
            "version: \"1\"\nnats:\n  auth:\n    nkey_seed: SUc2VjcmV0c2VjcmV0\n".into(),
            "version: \"1\"\nnats:\n  auth:\n    password: 12345678901234567890\n".into(),
            "version: \"1\"\nnats:\n  auth:\n    token: [c2VjcmV0c2VjcmV0]\n".into(),
        ] {
            let err = Config::parse(&yaml, &Origin::Embedded)
                .unwrap_err()
                .to_string();
            assert!(!err.contains("c2VjcmV0"), "{err}");
            assert!(!err.contains("1234567890"), "{err}");
            assert!(
                err.contains("`{env: NAME}` or `{file: PATH}`") || err.contains("`env`"),
                "{err}"
            );
            assert!(err.contains("line"), "{err}");
        }
        // A public key inline is fine.
        let config = Config::parse(
            "version: \"1\"\ntokens:\n  keys:\n    - paserk: k4.public.x\n",
            &Origin::Embedded,
        )
        .unwrap();
        assert_eq!(config.tokens.keys.len(), 1);
    }

    #[test]
    fn non_utf8_environment_values_are_refused_by_name() {
        use std::os::unix::ffi::OsStringExt as _;
        let (config, _) = Config::load(None, &env(&[])).unwrap();
        for name in [
            "PASETO_SYMMETRIC_KEY",
            "PORT",
            "NATS_URL",
            "CERBOS_GRPC_URL",
            "RUST_LOG",
        ] {
            let bad: HashMap<String, OsString> = [(
                name.to_owned(),
                OsString::from_vec(b"0123456789abcdef0123456789abcde\xff".to_vec()),
            )]
            .into();
            let err = match Config::load(None, &bad) {
                Err(e) => e,
                // PASETO_SYMMETRIC_KEY is read when the key ring is built.
                Ok((config, _)) => config.keyring(&bad).unwrap_err(),
            };
            assert!(matches!(err, ConfigError::EnvNotUnicode { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(name), "{message}");
            assert!(!message.contains("0123456789"), "{message}");
        }
        let key_env: HashMap<String, OsString> =
            [("MY_KEY".to_owned(), OsString::from_vec(vec![0x80]))].into();
        let mut config = config;
        config.tokens.keys = vec![KeySource::Env("MY_KEY".into())];
        let err = config.keyring(&key_env).unwrap_err().to_string();
        assert!(err.contains("MY_KEY"), "{err}");
    }

    #[test]
    fn the_dump_hides_url_credentials() {
        let (config, _) = Config::load(
            None,
            &env(&[
                ("NATS_URL", "nats://heimdall:n4ts-pass@127.0.0.1:4222"),
                ("CERBOS_GRPC_URL", "http://pdp:c3rbos-pass@127.0.0.1:3593"),
            ]),
        )
        .unwrap();
        let yaml = config.redacted_yaml();
        assert!(
            !yaml.contains("n4ts-pass") && !yaml.contains("c3rbos-pass"),
            "{yaml}"
        );
        assert!(
            yaml.contains("nats://heimdall:***@127.0.0.1:4222"),
            "{yaml}"
        );
        assert!(yaml.contains("http://pdp:***@127.0.0.1:3593"), "{yaml}");
        // The configuration itself keeps the credentials: NATS needs them.
        assert!(config.nats.unwrap().url.contains("n4ts-pass"));
    }
}
