//! Cerbos, the policy decision point: the gRPC client heimdall calls (`CheckResources`,
//! `PlanResources`), with a deadline per call, a bounded decision cache and metrics.
//!
//! The rest of heimdall speaks in the types of this module ([`PrincipalInput`], [`ResourceInput`],
//! [`Plan`]); only this file knows the generated protobuf types, so another policy engine is one
//! new module behind the same seam.

pub mod pb;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use pb::cerbos::effect::v1::Effect;
use pb::cerbos::engine::v1 as engine;
use pb::cerbos::request::v1 as request;
use pb::cerbos::schema::v1::{ValidationError, validation_error::Source};
use pb::cerbos::svc::v1::cerbos_service_client::CerbosServiceClient;

/// How heimdall reaches Cerbos.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CerbosConfig {
    /// `host:port` or `http(s)://host:port` of the PDP's gRPC API (`CERBOS_GRPC_URL`).
    /// Credentials in the URL are shown as `user:***` in the configuration dump and in logs.
    #[serde(serialize_with = "crate::redact::serialize_redacted_url")]
    pub url: String,
    /// Deadline of one call; keep it below Envoy's ext_authz timeout.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Decision cache: entries and lifetime (0 entries disables it).
    pub cache_entries: u64,
    /// HTTP/2 connections to the PDP, used in turn: one connection serializes every call's
    /// frames on one TCP stream under load.
    pub connections: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub cache_ttl: Duration,
    /// How often readiness probes the PDP's health.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub health_interval: Duration,
    /// TLS to the PDP. An `https://` URL turns it on with the system's roots; this section adds
    /// a private CA, a client certificate (mTLS) or the name to verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<CerbosTls>,
    /// The role a principal without roles is asked about as (Cerbos refuses a principal with
    /// none). Empty: such a principal is denied without asking Cerbos.
    pub default_role: String,
    /// Most resources in one `CheckResources` call, and most actions per resource: the PDP's
    /// `server.requestLimits` (both 50 by default). More is refused before it reaches Cerbos.
    pub max_resources: usize,
    pub max_actions: usize,
}

/// TLS settings for the connection to Cerbos.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CerbosTls {
    /// PEM file of the CA that signed the PDP's certificate (default: the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for a PDP that requires mTLS.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// The name the PDP's certificate must carry (default: the URL's host).
    pub server_name: Option<String>,
}

impl Default for CerbosConfig {
    fn default() -> Self {
        Self {
            url: "cerbos:3593".into(),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            cache_entries: 100_000,
            connections: 4,
            cache_ttl: Duration::from_secs(30),
            health_interval: Duration::from_secs(2),
            tls: None,
            default_role: DEFAULT_ROLE.into(),
            max_resources: 50,
            max_actions: 50,
        }
    }
}

/// The role of a principal without roles unless `cerbos.default_role` says otherwise.
pub const DEFAULT_ROLE: &str = "anonymous";

/// Why a call to Cerbos produced no decision. Every variant denies; [`CerbosError::is_refusal`]
/// tells a question that is invalid (a denial) from a PDP that could not answer (an outage).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CerbosError {
    /// heimdall would not send the question: Cerbos would refuse it (no roles, an empty
    /// resource id, duplicate actions, too many resources).
    #[error("invalid policy question: {0}")]
    Invalid(String),
    #[error("invalid Cerbos address `{0}`")]
    Address(String),
    #[error("Cerbos TLS: {0}")]
    Tls(String),
    #[error("Cerbos did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Cerbos is unreachable: {0}")]
    Unavailable(String),
    #[error("Cerbos refused the request: {0}")]
    Rejected(String),
    #[error("Cerbos answered something unusable: {0}")]
    Malformed(String),
}

impl CerbosError {
    /// Whether the question itself was refused (by heimdall or by Cerbos), as opposed to
    /// Cerbos being unreachable, late or broken. A refusal is a denial: retrying, or letting
    /// the request through because "the PDP failed", would be wrong.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::Rejected(_))
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Address(_) => "address",
            Self::Tls(_) => "tls",
            Self::Timeout(_) => "timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Rejected(_) => "rejected",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// The principal of a check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalInput {
    pub id: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub attr: serde_json::Map<String, serde_json::Value>,
    /// The KV revision of the stored attributes in `attr` (0: none); joins the decision cache
    /// key. Never read from a request body.
    #[serde(skip)]
    pub attributes_revision: u64,
}

/// A resource of a check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResourceInput {
    pub kind: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub attr: serde_json::Map<String, serde_json::Value>,
}

/// One resource and the actions asked about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceCheck {
    pub resource: ResourceInput,
    pub actions: Vec<String>,
}

/// The effects Cerbos decided for one resource, by action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceResult {
    pub id: String,
    pub kind: String,
    pub actions: BTreeMap<String, bool>,
}

impl ResourceResult {
    /// Whether every action is allowed (and there is at least one).
    pub fn all_allowed(&self) -> bool {
        !self.actions.is_empty() && self.actions.values().all(|allowed| *allowed)
    }
}

/// A query plan for listing resources.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    AlwaysAllowed,
    AlwaysDenied,
    /// Allowed where the condition holds: the expression tree, as JSON in Cerbos's own shape
    /// (`{"expression": {"operator": …, "operands": […]}}`), and a readable rendering.
    Conditional {
        tree: serde_json::Value,
        expression: String,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    call: &'static str,
    kind: ErrorKindLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValidationLabels {
    call: &'static str,
    source: ErrorKindLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ErrorKindLabel(&'static str);

impl EncodeLabelValue for ErrorKindLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        encoder.write_str(self.0)
    }
}

/// Cerbos metrics: call latency, errors by kind, schema validation errors, decision cache hits
/// and misses.
#[derive(Clone)]
pub struct CerbosMetrics {
    latency: Family<CallLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    validation_errors: Family<ValidationLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    ])
}

impl CerbosMetrics {
    /// Registers under `heimdall_cerbos_`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            latency: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            validation_errors: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("heimdall_cerbos");
        r.register(
            "call_duration_seconds",
            "Cerbos call latency by call",
            metrics.latency.clone(),
        );
        r.register(
            "errors",
            "Failed Cerbos calls by call and kind",
            metrics.errors.clone(),
        );
        r.register(
            "validation_errors",
            "Schema validation errors Cerbos reported in its answers, by call and source",
            metrics.validation_errors.clone(),
        );
        r.register(
            "decision_cache_hits",
            "CheckResources answered from the decision cache",
            metrics.cache_hits.clone(),
        );
        r.register(
            "decision_cache_misses",
            "CheckResources sent to Cerbos",
            metrics.cache_misses.clone(),
        );
        metrics
    }
}

/// The shared client: one HTTP/2 channel, connected lazily, so heimdall starts without Cerbos.
pub struct Cerbos {
    clients: Box<[CerbosServiceClient<Channel>]>,
    next: std::sync::atomic::AtomicUsize,
    channel: Channel,
    timeout: Duration,
    cache: Option<moka::sync::Cache<[u8; 32], Arc<[ResourceResult]>>>,
    metrics: CerbosMetrics,
    /// `cerbos.default_role`, `None` when empty.
    default_role: Option<String>,
    max_resources: usize,
    max_actions: usize,
}

/// Most validation errors logged for one answer; the metric counts them all.
const LOGGED_VALIDATION_ERRORS: usize = 10;
/// The largest request Cerbos receives by default (`server.advanced.grpc.maxRecvMsgSizeBytes`):
/// a bigger one is refused here, as Cerbos would refuse it with a status that reads like an outage.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most characters of an untrusted value (an id, an action, a Cerbos message) in a message.
const SHOWN_CHARS: usize = 64;

impl Cerbos {
    /// Builds the client; nothing is sent until the first call.
    pub fn new(config: &CerbosConfig, metrics: CerbosMetrics) -> Result<Self, CerbosError> {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        // Cerbos's gRPC API takes no credentials in its URL: userinfo is dropped rather than
        // sent in `:authority` or kept where a transport error could show it.
        let (bare, _) = crate::redact::split_credentials(&config.url).map_err(|_| {
            CerbosError::Address(crate::redact::redact_url(&config.url).into_owned())
        })?;
        let url = if bare.contains("://") {
            bare
        } else {
            format!("{scheme}://{bare}")
        };
        let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|_| {
            CerbosError::Address(crate::redact::redact_url(&config.url).into_owned())
        })?;
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(tls_config(config.tls.as_ref())?)
                .map_err(|e| CerbosError::Tls(e.to_string()))?;
        }
        let endpoint = endpoint
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        // Each lazily connected channel is its own HTTP/2 connection.
        let channels: Vec<Channel> = (0..config.connections.max(1))
            .map(|_| endpoint.connect_lazy())
            .collect();
        let channel = channels.first().cloned().ok_or_else(|| {
            CerbosError::Address(crate::redact::redact_url(&config.url).into_owned())
        })?;
        let cache = (config.cache_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.cache_entries)
                .time_to_live(config.cache_ttl)
                .build()
        });
        Ok(Self {
            clients: channels.into_iter().map(CerbosServiceClient::new).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
            channel,
            timeout: config.timeout,
            cache,
            metrics,
            default_role: Some(config.default_role.trim().to_owned()).filter(|r| !r.is_empty()),
            max_resources: config.max_resources,
            max_actions: config.max_actions,
        })
    }

    /// The channel, for health checks.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The next connection, in turn.
    fn client(&self) -> CerbosServiceClient<Channel> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // `clients` is never empty (at least one connection is made).
        self.clients
            .get(i % self.clients.len().max(1))
            .or(self.clients.first())
            .cloned()
            .unwrap_or_else(|| CerbosServiceClient::new(self.channel.clone()))
    }

    fn failed(&self, call: &'static str, error: CerbosError) -> CerbosError {
        self.metrics
            .errors
            .get_or_create(&ErrorLabels {
                call,
                kind: ErrorKindLabel(error.label()),
            })
            .inc();
        error
    }

    async fn call<T, F>(&self, call: &'static str, future: F) -> Result<T, CerbosError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, future).await;
        self.metrics
            .latency
            .get_or_create(&CallLabels { call })
            .observe(started.elapsed().as_secs_f64());
        match result {
            Err(_) => Err(self.failed(call, CerbosError::Timeout(self.timeout))),
            Ok(Err(status)) => {
                let error = match status.code() {
                    // The PDP answered that this question is invalid (Cerbos validates every
                    // request and answers `InvalidArgument`): a refusal, not an outage.
                    tonic::Code::InvalidArgument
                    | tonic::Code::OutOfRange
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::NotFound => CerbosError::Rejected(crate::redact::untrusted(
                        status.message(),
                        4 * SHOWN_CHARS,
                    )),
                    tonic::Code::DeadlineExceeded => CerbosError::Timeout(self.timeout),
                    _ => {
                        CerbosError::Unavailable(format!("{}: {}", status.code(), status.message()))
                    }
                };
                Err(self.failed(call, error))
            }
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// `CheckResources`: the effect of each action on each resource. Answers come from the
    /// decision cache when an identical question (principal, roles, attributes, resources and
    /// actions, all part of the key) was answered within the cache TTL.
    pub async fn check(
        &self,
        request_id: &str,
        principal: &PrincipalInput,
        resources: &[ResourceCheck],
    ) -> Result<Arc<[ResourceResult]>, CerbosError> {
        let principal = self
            .principal(principal)
            .and_then(|p| self.validate_checks(resources).map(|()| p))
            .map_err(|e| self.failed("check_resources", e))?;
        let principal = principal.as_ref();
        let key = self.cache.as_ref().map(|_| cache_key(principal, resources));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(hit) = cache.get(key) {
                self.metrics.cache_hits.inc();
                return Ok(hit);
            }
            self.metrics.cache_misses.inc();
        }
        let message = request::CheckResourcesRequest {
            request_id: request_id.to_owned(),
            principal: Some(principal_pb(principal)),
            resources: resources
                .iter()
                .map(|r| request::check_resources_request::ResourceEntry {
                    actions: r.actions.clone(),
                    resource: Some(resource_pb(&r.resource)),
                })
                .collect(),
            ..Default::default()
        };
        self.check_size("check_resources", &message)?;
        let mut client = self.client();
        let response = self
            .call("check_resources", client.check_resources(message))
            .await?;
        let results: Arc<[ResourceResult]> = resources
            .iter()
            .zip(response.results.iter())
            .map(|(asked, result)| {
                let actions = asked
                    .actions
                    .iter()
                    .map(|action| {
                        let effect = result
                            .actions
                            .get(action)
                            .copied()
                            .and_then(|e| Effect::try_from(e).ok());
                        (action.clone(), effect == Some(Effect::Allow))
                    })
                    .collect();
                ResourceResult {
                    id: asked.resource.id.clone(),
                    kind: asked.resource.kind.clone(),
                    actions,
                }
            })
            .collect();
        // Results are matched to questions by position; a reordered or foreign answer is refused.
        let mismatched = response
            .results
            .iter()
            .zip(resources)
            .any(|(result, asked)| {
                result
                    .resource
                    .as_ref()
                    .is_some_and(|r| r.id != asked.resource.id || r.kind != asked.resource.kind)
            });
        if mismatched {
            return Err(self.failed(
                "check_resources",
                CerbosError::Malformed("results do not match the resources asked about".into()),
            ));
        }
        if results.len() != resources.len() {
            return Err(self.failed(
                "check_resources",
                CerbosError::Malformed(format!(
                    "{} results for {} resources",
                    results.len(),
                    resources.len()
                )),
            ));
        }
        let invalid = response
            .results
            .iter()
            .zip(results.iter())
            .flat_map(|(result, decided)| {
                result
                    .validation_errors
                    .iter()
                    .map(move |error| (decided, error))
            });
        let reported = self.report_validation("check_resources", request_id, invalid);
        // An answer with validation errors is not cached: each such request is logged and
        // counted, so operators see how often it happens.
        if let (Some(cache), Some(key), 0) = (&self.cache, key, reported) {
            cache.insert(key, Arc::clone(&results));
        }
        Ok(results)
    }

    /// `PlanResources`: the condition under which `principal` may do `actions` on resources of a kind.
    pub async fn plan(
        &self,
        request_id: &str,
        principal: &PrincipalInput,
        resource: &ResourceInput,
        actions: &[String],
    ) -> Result<Plan, CerbosError> {
        let principal = self
            .principal(principal)
            .and_then(|p| {
                if resource.kind.is_empty() {
                    return Err(CerbosError::Invalid("the resource kind is empty".into()));
                }
                self.validate_actions(actions, "the plan").map(|()| p)
            })
            .map_err(|e| self.failed("plan_resources", e))?;
        let message = request::PlanResourcesRequest {
            request_id: request_id.to_owned(),
            principal: Some(principal_pb(&principal)),
            resource: Some(engine::plan_resources_input::Resource {
                kind: resource.kind.clone(),
                attr: json_map_to_pb(&resource.attr),
                ..Default::default()
            }),
            actions: actions.to_vec(),
            ..Default::default()
        };
        self.check_size("plan_resources", &message)?;
        let mut client = self.client();
        let response = self
            .call("plan_resources", client.plan_resources(message))
            .await?;
        if !response.validation_errors.is_empty() {
            let plan = ResourceResult {
                id: String::new(),
                kind: resource.kind.clone(),
                actions: BTreeMap::new(),
            };
            let invalid = response.validation_errors.iter().map(|e| (&plan, e));
            self.report_validation("plan_resources", request_id, invalid);
        }
        let filter = response.filter.ok_or_else(|| {
            self.failed("plan_resources", CerbosError::Malformed("no filter".into()))
        })?;
        use engine::plan_resources_filter::Kind;
        match Kind::try_from(filter.kind) {
            Ok(Kind::AlwaysAllowed) => Ok(Plan::AlwaysAllowed),
            Ok(Kind::AlwaysDenied) => Ok(Plan::AlwaysDenied),
            Ok(Kind::Conditional) => {
                let condition = filter.condition.ok_or_else(|| {
                    self.failed(
                        "plan_resources",
                        CerbosError::Malformed("conditional filter without condition".into()),
                    )
                })?;
                Ok(Plan::Conditional {
                    tree: operand_json(&condition),
                    expression: render_operand(&condition),
                })
            }
            _ => Err(self.failed(
                "plan_resources",
                CerbosError::Malformed(format!("unknown filter kind {}", filter.kind)),
            )),
        }
    }
}

impl Cerbos {
    /// The principal as Cerbos accepts it: each role once, in its first position, empty names
    /// dropped; [`CerbosConfig::default_role`] for a principal left without any. Borrowed when
    /// nothing changes, which is the common case.
    fn principal<'p>(
        &self,
        principal: &'p PrincipalInput,
    ) -> Result<std::borrow::Cow<'p, PrincipalInput>, CerbosError> {
        use std::borrow::Cow;
        if principal.id.is_empty() {
            return Err(CerbosError::Invalid("the principal's id is empty".into()));
        }
        let mut seen = std::collections::HashSet::with_capacity(principal.roles.len());
        let clean = principal
            .roles
            .iter()
            .all(|role| !role.is_empty() && seen.insert(role.as_str()));
        if clean && !principal.roles.is_empty() {
            return Ok(Cow::Borrowed(principal));
        }
        let mut roles = dedup_roles(&principal.roles);
        if roles.is_empty() {
            let role = self.default_role.clone().ok_or_else(|| {
                CerbosError::Invalid(format!(
                    "principal `{}` has no roles and `cerbos.default_role` is empty",
                    crate::redact::untrusted(&principal.id, SHOWN_CHARS)
                ))
            })?;
            roles.push(role);
        }
        Ok(Cow::Owned(PrincipalInput {
            roles,
            ..principal.clone()
        }))
    }

    /// Refuses a message larger than Cerbos receives (attributes copied from a large request).
    fn check_size(
        &self,
        call: &'static str,
        message: &impl prost::Message,
    ) -> Result<(), CerbosError> {
        let size = message.encoded_len();
        if size > MAX_MESSAGE_BYTES {
            return Err(self.failed(
                call,
                CerbosError::Invalid(format!(
                    "the question is {size} bytes, more than the {MAX_MESSAGE_BYTES} Cerbos receives"
                )),
            ));
        }
        Ok(())
    }

    /// What Cerbos would refuse in a `CheckResources` question, found before sending it.
    fn validate_checks(&self, resources: &[ResourceCheck]) -> Result<(), CerbosError> {
        if resources.is_empty() {
            return Err(CerbosError::Invalid("no resource to check".into()));
        }
        if resources.len() > self.max_resources {
            return Err(CerbosError::Invalid(format!(
                "{} resources in one check, more than `cerbos.max_resources` ({})",
                resources.len(),
                self.max_resources
            )));
        }
        for (i, check) in resources.iter().enumerate() {
            let kind = crate::redact::untrusted(&check.resource.kind, SHOWN_CHARS);
            if check.resource.kind.is_empty() {
                return Err(CerbosError::Invalid(format!(
                    "resource {i}: the kind is empty"
                )));
            }
            if check.resource.id.is_empty() {
                return Err(CerbosError::Invalid(format!(
                    "resource {i} (`{kind}`): the id is empty"
                )));
            }
            self.validate_actions(&check.actions, &format!("resource {i} (`{kind}`)"))?;
        }
        Ok(())
    }

    /// Actions Cerbos accepts: at least one, at most `cerbos.max_actions`, none empty, none twice.
    fn validate_actions(&self, actions: &[String], place: &str) -> Result<(), CerbosError> {
        if actions.is_empty() {
            return Err(CerbosError::Invalid(format!("{place}: no action")));
        }
        if actions.len() > self.max_actions {
            return Err(CerbosError::Invalid(format!(
                "{place}: {} actions, more than `cerbos.max_actions` ({})",
                actions.len(),
                self.max_actions
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(actions.len());
        for (j, action) in actions.iter().enumerate() {
            if action.is_empty() {
                return Err(CerbosError::Invalid(format!(
                    "{place}: action {j} is empty"
                )));
            }
            if !seen.insert(action.as_str()) {
                return Err(CerbosError::Invalid(format!(
                    "{place}: action `{}` is asked twice",
                    crate::redact::untrusted(action, SHOWN_CHARS)
                )));
            }
        }
        Ok(())
    }

    /// Logs and counts the schema validation errors of an answer. With schema enforcement
    /// `warn` Cerbos decided anyway; with `reject` it denied every action, and this log is the
    /// only place that says why. Returns how many there were.
    fn report_validation<'a>(
        &self,
        call: &'static str,
        request_id: &str,
        errors: impl Iterator<Item = (&'a ResourceResult, &'a ValidationError)>,
    ) -> usize {
        let mut count = 0;
        for (result, error) in errors {
            let source = match Source::try_from(error.source) {
                Ok(Source::Principal) => "principal",
                Ok(Source::Resource) => "resource",
                _ => "unspecified",
            };
            self.metrics
                .validation_errors
                .get_or_create(&ValidationLabels {
                    call,
                    source: ErrorKindLabel(source),
                })
                .inc();
            if count < LOGGED_VALIDATION_ERRORS {
                // With `reject`, every action is denied; with `warn`, the policies decided.
                let decision = if result.actions.is_empty() {
                    "plan"
                } else if result.actions.values().any(|allowed| *allowed) {
                    "allowed"
                } else {
                    "denied"
                };
                tracing::warn!(
                    call,
                    request_id = %crate::redact::untrusted(request_id, SHOWN_CHARS),
                    resource.kind = %crate::redact::untrusted(&result.kind, SHOWN_CHARS),
                    resource.id = %crate::redact::untrusted(&result.id, SHOWN_CHARS),
                    source,
                    path = %crate::redact::untrusted(&error.path, 4 * SHOWN_CHARS),
                    reason = %crate::redact::untrusted(&error.message, 4 * SHOWN_CHARS),
                    decision,
                    "Cerbos schema validation failed"
                );
            }
            count += 1;
        }
        count
    }
}

/// `roles` without empty names and repeats, in first-seen order.
pub fn dedup_roles(roles: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(roles.len());
    roles
        .iter()
        .filter(|role| !role.is_empty() && seen.insert(role.as_str()))
        .cloned()
        .collect()
}

/// The client TLS settings: system roots unless a CA file is given, optional client identity.
fn tls_config(tls: Option<&CerbosTls>) -> Result<tonic::transport::ClientTlsConfig, CerbosError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| CerbosError::Tls(format!("cannot read `{}`: {e}", path.display())))
    };
    let mut config = ClientTlsConfig::new();
    let Some(tls) = tls else {
        return Ok(config.with_native_roots());
    };
    config = match &tls.ca_file {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => config.with_native_roots(),
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?))
        }
        (None, None) => {}
        _ => {
            return Err(CerbosError::Tls(
                "`cert_file` and `key_file` go together".into(),
            ));
        }
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

fn principal_pb(p: &PrincipalInput) -> engine::Principal {
    engine::Principal {
        id: p.id.clone(),
        roles: p.roles.clone(),
        attr: json_map_to_pb(&p.attr),
        ..Default::default()
    }
}

fn resource_pb(r: &ResourceInput) -> engine::Resource {
    engine::Resource {
        kind: r.kind.clone(),
        id: r.id.clone(),
        attr: json_map_to_pb(&r.attr),
        ..Default::default()
    }
}

/// The decision cache key: a BLAKE3 hash of every input of the decision. `serde_json` maps are
/// ordered, so equal questions hash equally; any changed attribute changes the key.
fn cache_key(principal: &PrincipalInput, resources: &[ResourceCheck]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&principal.attributes_revision.to_le_bytes());
    let resources: Vec<_> = resources
        .iter()
        .map(|r| (&r.resource, &r.actions))
        .collect();
    // Serializing these types cannot fail (string keys, finite JSON values).
    let _ = serde_json::to_writer(HashWriter(&mut hasher), &(principal, resources));
    *hasher.finalize().as_bytes()
}

struct HashWriter<'a>(&'a mut blake3::Hasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON → `google.protobuf.Value`.
pub fn json_to_pb(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_pb).collect(),
        }),
        J::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: json_map_to_pb(map).into_iter().collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn json_map_to_pb(
    map: &serde_json::Map<String, serde_json::Value>,
) -> std::collections::HashMap<String, prost_types::Value> {
    map.iter()
        .map(|(k, v)| (k.clone(), json_to_pb(v)))
        .collect()
}

/// `google.protobuf.Value` → JSON.
pub fn pb_to_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers come back as integers, as callers sent them.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(pb_to_json).collect())
        }
        Some(Kind::StructValue(st)) => {
            let mut fields: Vec<_> = st.fields.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.clone(), pb_to_json(v)))
                    .collect(),
            )
        }
    }
}

/// An operand in Cerbos's JSON shape.
fn operand_json(operand: &engine::plan_resources_filter::expression::Operand) -> serde_json::Value {
    use engine::plan_resources_filter::expression::operand::Node;
    match &operand.node {
        Some(Node::Value(v)) => serde_json::json!({ "value": pb_to_json(v) }),
        Some(Node::Variable(name)) => serde_json::json!({ "variable": name }),
        Some(Node::Expression(e)) => serde_json::json!({
            "expression": { "operator": e.operator, "operands": e.operands.iter().map(operand_json).collect::<Vec<_>>() }
        }),
        None => serde_json::Value::Null,
    }
}

/// Cerbos's operators as the readable infix form callers turn into queries, with precedence
/// (higher binds tighter) and whether the operator is associative.
fn infix(operator: &str) -> Option<(&'static str, u8, bool)> {
    Some(match operator {
        "or" => ("||", 1, true),
        "and" => ("&&", 2, true),
        "eq" => ("==", 3, false),
        "ne" => ("!=", 3, false),
        "lt" => ("<", 3, false),
        "le" => ("<=", 3, false),
        "gt" => (">", 3, false),
        "ge" => (">=", 3, false),
        "in" => ("in", 3, false),
        "add" => ("+", 4, true),
        "sub" => ("-", 4, false),
        "mult" => ("*", 5, true),
        "div" => ("/", 5, false),
        "mod" => ("%", 5, false),
        _ => return None,
    })
}

/// A readable rendering: `request.resource.attr.owner == "user123" || request.resource.attr.public == true`.
fn render_operand(operand: &engine::plan_resources_filter::expression::Operand) -> String {
    render_in(operand, None)
}

/// Renders `operand` inside a parent infix operator (`parent`: its name and precedence),
/// parenthesizing only where precedence requires it.
fn render_in(
    operand: &engine::plan_resources_filter::expression::Operand,
    parent: Option<(&str, u8)>,
) -> String {
    use engine::plan_resources_filter::expression::operand::Node;
    match &operand.node {
        Some(Node::Value(v)) => pb_to_json(v).to_string(),
        Some(Node::Variable(name)) => name.clone(),
        Some(Node::Expression(e)) => match (
            e.operator.as_str(),
            infix(&e.operator),
            e.operands.as_slice(),
        ) {
            ("not", _, [one]) => format!("!{}", render_in(one, Some(("not", 6)))),
            (name, Some((symbol, precedence, associative)), operands @ [_, _, ..]) => {
                let text = operands
                    .iter()
                    .map(|o| render_in(o, Some((name, precedence))))
                    .collect::<Vec<_>>()
                    .join(&format!(" {symbol} "));
                let needs_parens = match parent {
                    Some((parent_name, parent_precedence)) => {
                        precedence < parent_precedence
                            || (precedence == parent_precedence
                                && !(associative && parent_name == name))
                    }
                    None => false,
                };
                if needs_parens {
                    format!("({text})")
                } else {
                    text
                }
            }
            (name, _, operands) => format!(
                "{name}({})",
                operands
                    .iter()
                    .map(|o| render_in(o, None))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => "null".into(),
    }
}

/// Reports the PDP's health into readiness: `cerbos` blocks `/ready` until the PDP answers
/// `SERVING`, and again whenever it stops answering.
pub async fn watch_health(
    channel: Channel,
    readiness: crate::readiness::Readiness,
    interval: Duration,
    timeout: Duration,
) {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut blocker = Some(readiness.block("cerbos"));
    loop {
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        let serving = matches!(
            tokio::time::timeout(timeout.max(Duration::from_millis(500)), client.check(request)).await,
            Ok(Ok(response)) if response.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        match (serving, blocker.is_some()) {
            (true, true) => {
                tracing::info!("Cerbos is serving");
                blocker = None;
            }
            (false, false) => {
                tracing::warn!("Cerbos stopped answering its health check");
                blocker = Some(readiness.block("cerbos"));
            }
            _ => {}
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::plan_resources_filter::Expression;
    use engine::plan_resources_filter::expression::Operand;
    use engine::plan_resources_filter::expression::operand::Node;

    fn var(name: &str) -> Operand {
        Operand {
            node: Some(Node::Variable(name.into())),
        }
    }
    fn val(v: serde_json::Value) -> Operand {
        Operand {
            node: Some(Node::Value(json_to_pb(&v))),
        }
    }
    fn op(operator: &str, operands: Vec<Operand>) -> Operand {
        Operand {
            node: Some(Node::Expression(Expression {
                operator: operator.into(),
                operands,
            })),
        }
    }

    #[test]
    fn renders_plans_readably_with_needed_parentheses_only() {
        let owner = op(
            "eq",
            vec![var("request.resource.attr.owner"), val("user123".into())],
        );
        let public = op(
            "eq",
            vec![var("request.resource.attr.public"), val(true.into())],
        );
        let either = op("or", vec![owner.clone(), public.clone()]);
        assert_eq!(
            render_operand(&either),
            r#"request.resource.attr.owner == "user123" || request.resource.attr.public == true"#
        );
        let both = op(
            "and",
            vec![
                either.clone(),
                op(
                    "not",
                    vec![op(
                        "eq",
                        vec![var("request.resource.attr.status"), val("draft".into())],
                    )],
                ),
            ],
        );
        assert_eq!(
            render_operand(&both),
            r#"(request.resource.attr.owner == "user123" || request.resource.attr.public == true) && !(request.resource.attr.status == "draft")"#
        );
        let listed = op(
            "in",
            vec![
                var("request.resource.attr.dept"),
                val(serde_json::json!(["eng", "ops"])),
            ],
        );
        assert_eq!(
            render_operand(&listed),
            r#"request.resource.attr.dept in ["eng","ops"]"#
        );
    }

    fn client(default_role: &str) -> Cerbos {
        let mut registry = Registry::default();
        let config = CerbosConfig {
            url: "127.0.0.1:1".into(),
            default_role: default_role.into(),
            ..CerbosConfig::default()
        };
        Cerbos::new(&config, CerbosMetrics::new(&mut registry)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn principal(roles: &[&str]) -> PrincipalInput {
        PrincipalInput {
            id: "alice".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..PrincipalInput::default()
        }
    }

    #[tokio::test]
    async fn roles_are_sent_once_and_a_roleless_principal_gets_the_default_role() {
        let cerbos = client("anonymous");
        let clean = principal(&["user", "editor"]);
        assert!(matches!(
            cerbos.principal(&clean),
            Ok(std::borrow::Cow::Borrowed(_))
        ));
        let sent = |roles: &[&str]| cerbos.principal(&principal(roles)).map(|p| p.roles.clone());
        assert_eq!(
            sent(&["user", "", "user", "editor"]),
            Ok(vec!["user".to_owned(), "editor".to_owned()])
        );
        assert_eq!(sent(&[]), Ok(vec!["anonymous".to_owned()]));
        assert_eq!(sent(&[""]), Ok(vec!["anonymous".to_owned()]));
        let strict = client(" ");
        assert_eq!(
            strict.principal(&principal(&[])).map(|p| p.roles.clone()),
            Err(CerbosError::Invalid(
                "principal `alice` has no roles and `cerbos.default_role` is empty".into()
            ))
        );
    }

    #[tokio::test]
    async fn questions_cerbos_would_refuse_are_named() {
        let cerbos = client("anonymous");
        let check = |id: &str, actions: &[&str]| ResourceCheck {
            resource: ResourceInput {
                kind: "document".into(),
                id: id.into(),
                ..ResourceInput::default()
            },
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        };
        let refused = |checks: &[ResourceCheck]| match cerbos.validate_checks(checks) {
            Err(CerbosError::Invalid(message)) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(&[check("", &["view"])]),
            "resource 0 (`document`): the id is empty"
        );
        assert_eq!(
            refused(&[check("a", &["view", "view"])]),
            "resource 0 (`document`): action `view` is asked twice"
        );
        assert_eq!(
            refused(&[check("a", &["view", "\u{1b}[2J"]), check("b", &[])]),
            "resource 1 (`document`): no action"
        );
        assert_eq!(
            refused(&[check("a", &["x\u{1b}", "x\u{1b}"])]),
            "resource 0 (`document`): action `x\\u{1b}` is asked twice"
        );
        let many: Vec<ResourceCheck> = (0..51).map(|i| check(&i.to_string(), &["view"])).collect();
        assert!(refused(&many).contains("51 resources"));
        assert!(cerbos.validate_checks(&many[..50]).is_ok());
        let error = CerbosError::Invalid(String::new());
        assert!(error.is_refusal());
        assert!(CerbosError::Rejected(String::new()).is_refusal());
        assert!(!CerbosError::Unavailable(String::new()).is_refusal());
        assert!(!CerbosError::Timeout(Duration::from_millis(1)).is_refusal());
    }

    #[test]
    fn values_round_trip_between_json_and_protobuf() {
        let value =
            serde_json::json!({"n": 500, "f": 2.5, "s": "x", "b": true, "l": [1, "a"], "z": null});
        assert_eq!(pb_to_json(&json_to_pb(&value)), value);
    }
}
