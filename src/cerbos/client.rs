//! The Cerbos client: lazily connected HTTP/2 connections used in turn, a deadline per call,
//! the questions Cerbos would refuse caught before sending, and the decision cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument as _;

use crate::ttl_cache::TtlCache;

use super::convert::{json_map_to_pb, principal_pb, resource_pb};
use super::metrics::{CerbosCall, CerbosMetrics, ValidationSource};
use super::pb::cerbos::effect::v1::Effect;
use super::pb::cerbos::engine::v1 as engine;
use super::pb::cerbos::request::v1 as request;
use super::pb::cerbos::schema::v1::{ValidationError, validation_error::Source};
use super::pb::cerbos::svc::v1::cerbos_service_client::CerbosServiceClient;
use super::{CerbosConfig, CerbosError};
use crate::policy::{
    Plan, PolicyDecisionPoint, PrincipalInput, ResourceCheck, ResourceInput, ResourceResult,
    decision_key,
};

/// The shared client: `cerbos.connections` HTTP/2 connections, each connected lazily (so
/// heimdall starts without Cerbos) and used in turn.
pub struct Cerbos {
    /// Never empty: at least one connection is made.
    channels: Box<[Channel]>,
    next: std::sync::atomic::AtomicUsize,
    timeout: Duration,
    cache: Option<TtlCache<[u8; 32], Arc<[ResourceResult]>>>,
    /// How long a decision stays in `cache`.
    cache_ttl: Duration,
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
/// Action lists up to this long are checked for repeats by comparison, longer ones with a set.
const SMALL_ACTION_LIST: usize = 8;

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
                .tls_config(super::config::tls_config(config.tls.as_ref())?)
                .map_err(|e| CerbosError::Tls(e.to_string()))?;
        }
        let endpoint = endpoint
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        // Each lazily connected channel is its own HTTP/2 connection.
        let channels: Box<[Channel]> = (0..config.connections.max(1))
            .map(|_| endpoint.connect_lazy())
            .collect();
        let cache = (config.cache_entries > 0).then(|| TtlCache::new(config.cache_entries));
        Ok(Self {
            channels,
            next: std::sync::atomic::AtomicUsize::new(0),
            timeout: config.timeout,
            cache,
            cache_ttl: config.cache_ttl,
            metrics,
            default_role: Some(config.default_role.trim().to_owned()).filter(|r| !r.is_empty()),
            max_resources: config.max_resources,
            max_actions: config.max_actions,
        })
    }

    /// The first connection, for health checks.
    pub fn channel(&self) -> Channel {
        self.connection(0).clone()
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "the index is taken modulo the length, and `channels` is never empty"
    )]
    fn connection(&self, i: usize) -> &Channel {
        &self.channels[i % self.channels.len()]
    }

    /// The next connection, in turn.
    fn client(&self) -> CerbosServiceClient<Channel> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CerbosServiceClient::new(self.connection(i).clone())
    }

    fn failed(&self, call: CerbosCall, error: CerbosError) -> CerbosError {
        self.metrics.failed(call, error.kind());
        error
    }

    async fn call<T, F>(&self, call: CerbosCall, future: F) -> Result<T, CerbosError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, future).await;
        self.metrics
            .latency(call)
            .observe(started.elapsed().as_secs_f64());
        let answer = match result {
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
        };
        if let Err(error) = &answer
            && crate::trace_context::enabled()
        {
            // The call's span (see `traced`): the trace shows which call failed and how.
            let span = tracing::Span::current();
            span.record("otel.status_code", "ERROR");
            span.record("error.kind", error.kind().as_str());
        }
        answer
    }
}

/// The gRPC request for `message` and, when tracing is on, the client span of the call, whose
/// context goes to Cerbos as `traceparent` metadata. Off: the bare request and a disabled span.
fn traced<M>(call: CerbosCall, message: M) -> (tonic::Request<M>, tracing::Span) {
    let mut request = tonic::Request::new(message);
    if !crate::trace_context::enabled() {
        return (request, tracing::Span::none());
    }
    let method = match call {
        CerbosCall::CheckResources => "CheckResources",
        CerbosCall::PlanResources => "PlanResources",
    };
    let span = tracing::info_span!(
        "cerbos",
        otel.name = format_args!("cerbos.svc.v1.CerbosService/{method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "cerbos.svc.v1.CerbosService",
        rpc.method = method,
        error.kind = tracing::field::Empty,
    );
    crate::trace_context::inject(
        &span,
        &mut crate::trace_context::Metadata(request.metadata_mut()),
    );
    (request, span)
}

impl PolicyDecisionPoint for Cerbos {
    type Error = CerbosError;

    /// `CheckResources`: the effect of each action on each resource. Answers come from the
    /// decision cache when an identical question (principal, roles, attributes, resources and
    /// actions, all part of the key) was answered within the cache TTL.
    async fn check(
        &self,
        request_id: &str,
        principal: &PrincipalInput<'_>,
        resources: &[ResourceCheck],
    ) -> Result<Arc<[ResourceResult]>, CerbosError> {
        const CALL: CerbosCall = CerbosCall::CheckResources;
        let principal = self
            .principal(principal)
            .and_then(|p| self.validate_checks(resources).map(|()| p))
            .map_err(|e| self.failed(CALL, e))?;
        let principal = &principal;
        let key = self
            .cache
            .as_ref()
            .map(|_| decision_key(principal, resources));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(hit) = cache.get(key) {
                self.metrics.cache_hit();
                return Ok(hit);
            }
            self.metrics.cache_miss();
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
        self.check_size(CALL, &message)?;
        let mut client = self.client();
        let (request, span) = traced(CALL, message);
        let response = self
            .call(CALL, client.check_resources(request))
            .instrument(span)
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
                CALL,
                CerbosError::Malformed("results do not match the resources asked about".into()),
            ));
        }
        if results.len() != resources.len() {
            return Err(self.failed(
                CALL,
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
        let reported = self.report_validation(CALL, request_id, invalid);
        // An answer with validation errors is not cached: each such request is logged and
        // counted, so operators see how often it happens.
        if let (Some(cache), Some(key), 0) = (&self.cache, key, reported) {
            cache.insert(key, Arc::clone(&results), self.cache_ttl);
        }
        Ok(results)
    }

    /// `PlanResources`: the condition under which `principal` may do `actions` on resources of a kind.
    async fn plan(
        &self,
        request_id: &str,
        principal: &PrincipalInput<'_>,
        resource: &ResourceInput,
        actions: &[String],
    ) -> Result<Plan, CerbosError> {
        const CALL: CerbosCall = CerbosCall::PlanResources;
        let principal = self
            .principal(principal)
            .and_then(|p| {
                if resource.kind.is_empty() {
                    return Err(CerbosError::Invalid("the resource kind is empty".into()));
                }
                self.validate_actions(actions, || "the plan".to_owned())
                    .map(|()| p)
            })
            .map_err(|e| self.failed(CALL, e))?;
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
        self.check_size(CALL, &message)?;
        let mut client = self.client();
        let (request, span) = traced(CALL, message);
        let response = self
            .call(CALL, client.plan_resources(request))
            .instrument(span)
            .await?;
        if !response.validation_errors.is_empty() {
            let plan = ResourceResult {
                id: String::new(),
                kind: resource.kind.clone(),
                actions: BTreeMap::new(),
            };
            let invalid = response.validation_errors.iter().map(|e| (&plan, e));
            self.report_validation(CALL, request_id, invalid);
        }
        let filter = response
            .filter
            .ok_or_else(|| self.failed(CALL, CerbosError::Malformed("no filter".into())))?;
        super::plan::plan_of(filter).map_err(|e| self.failed(CALL, e))
    }
}

impl Cerbos {
    /// The principal as Cerbos accepts it: each role once, in its first position, empty names
    /// dropped; [`CerbosConfig::default_role`] for a principal left without any. Copies
    /// references only: the default role is borrowed from `self`.
    fn principal<'x, 'p: 'x>(
        &'x self,
        principal: &PrincipalInput<'p>,
    ) -> Result<PrincipalInput<'x>, CerbosError> {
        if principal.id.is_empty() {
            return Err(CerbosError::Invalid("the principal's id is empty".into()));
        }
        // Roles are a handful: a scan of those kept beats hashing them; a long list (a token
        // can carry many) is deduplicated with a set, so the work stays linear.
        const SCANNED: usize = 16;
        let mut roles: SmallVec<[&'x str; 4]> = SmallVec::new();
        if principal.roles.len() <= SCANNED {
            for role in principal.roles.iter().map(|role| -> &'x str { role }) {
                if !role.is_empty() && !roles.contains(&role) {
                    roles.push(role);
                }
            }
        } else {
            let mut seen = std::collections::HashSet::with_capacity(principal.roles.len());
            roles.extend(
                principal
                    .roles
                    .iter()
                    .map(|role| -> &'x str { role })
                    .filter(|role| !role.is_empty() && seen.insert(*role)),
            );
        }
        if roles.is_empty() {
            let role = self.default_role.as_deref().ok_or_else(|| {
                CerbosError::Invalid(format!(
                    "principal `{}` has no roles and `cerbos.default_role` is empty",
                    crate::redact::untrusted(principal.id, SHOWN_CHARS)
                ))
            })?;
            roles.push(role);
        }
        Ok(PrincipalInput {
            id: principal.id,
            roles,
            attr: principal.attr,
            attributes_revision: principal.attributes_revision,
        })
    }

    /// Refuses a message larger than Cerbos receives (attributes copied from a large request).
    fn check_size(
        &self,
        call: CerbosCall,
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
            // Rendered only for an error message: a valid check (every Check, with a decision
            // cache hit too) formats nothing.
            let place = || {
                let kind = crate::redact::untrusted(&check.resource.kind, SHOWN_CHARS);
                format!("resource {i} (`{kind}`)")
            };
            if check.resource.kind.is_empty() {
                return Err(CerbosError::Invalid(format!(
                    "resource {i}: the kind is empty"
                )));
            }
            if check.resource.id.is_empty() {
                return Err(CerbosError::Invalid(format!(
                    "{}: the id is empty",
                    place()
                )));
            }
            self.validate_actions(&check.actions, place)?;
        }
        Ok(())
    }

    /// Actions Cerbos accepts: at least one, at most `cerbos.max_actions`, none empty, none twice.
    /// `place` names where they come from, in an error message.
    fn validate_actions(
        &self,
        actions: &[String],
        place: impl Fn() -> String,
    ) -> Result<(), CerbosError> {
        if actions.is_empty() {
            return Err(CerbosError::Invalid(format!("{}: no action", place())));
        }
        if actions.len() > self.max_actions {
            return Err(CerbosError::Invalid(format!(
                "{}: {} actions, more than `cerbos.max_actions` ({})",
                place(),
                actions.len(),
                self.max_actions
            )));
        }
        // A Check asks about one to a few actions: comparing with the earlier ones costs less
        // than building a set on every call. A long list (the `/check` API takes it from the
        // caller, up to `cerbos.max_actions`) gets the set, so the cost stays linear.
        let mut seen = (actions.len() > SMALL_ACTION_LIST)
            .then(|| std::collections::HashSet::with_capacity(actions.len()));
        for (j, action) in actions.iter().enumerate() {
            if action.is_empty() {
                return Err(CerbosError::Invalid(format!(
                    "{}: action {j} is empty",
                    place()
                )));
            }
            let repeated = match seen.as_mut() {
                Some(seen) => !seen.insert(action.as_str()),
                None => actions
                    .get(..j)
                    .is_some_and(|earlier| earlier.contains(action)),
            };
            if repeated {
                return Err(CerbosError::Invalid(format!(
                    "{}: action `{}` is asked twice",
                    place(),
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
        call: CerbosCall,
        request_id: &str,
        errors: impl Iterator<Item = (&'a ResourceResult, &'a ValidationError)>,
    ) -> usize {
        let mut count = 0;
        for (result, error) in errors {
            let source = match Source::try_from(error.source) {
                Ok(Source::Principal) => ValidationSource::Principal,
                Ok(Source::Resource) => ValidationSource::Resource,
                _ => ValidationSource::Unspecified,
            };
            self.metrics.validation_error(call, source);
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
                    call = call.as_str(),
                    request_id = %crate::redact::untrusted(request_id, SHOWN_CHARS),
                    resource.kind = %crate::redact::untrusted(&result.kind, SHOWN_CHARS),
                    resource.id = %crate::redact::untrusted(&result.id, SHOWN_CHARS),
                    source = source.as_str(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cerbos::CerbosMetrics;
    use crate::policy::OwnedPrincipal;
    use prometheus_client::registry::Registry;

    fn client(default_role: &str) -> Cerbos {
        let mut registry = Registry::default();
        let config = CerbosConfig {
            url: "127.0.0.1:1".into(),
            default_role: default_role.into(),
            ..CerbosConfig::default()
        };
        Cerbos::new(&config, CerbosMetrics::new(&mut registry)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn principal(roles: &[&str]) -> OwnedPrincipal {
        OwnedPrincipal {
            id: "alice".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..OwnedPrincipal::default()
        }
    }

    #[tokio::test]
    async fn roles_are_sent_once_and_a_roleless_principal_gets_the_default_role() {
        let cerbos = client("anonymous");
        let clean = principal(&["user", "editor"]);
        assert_eq!(cerbos.principal(&clean.as_input()), Ok(clean.as_input()));
        let sent = |roles: &[&str]| {
            let asked = principal(roles);
            cerbos
                .principal(&asked.as_input())
                .map(|p| p.roles.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(
            sent(&["user", "", "user", "editor"]),
            Ok(vec!["user".to_owned(), "editor".to_owned()])
        );
        // A long list takes the set path: same answer, order kept.
        let many: Vec<String> = (0..40).map(|i| format!("r{}", i % 20)).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let expected: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
        assert_eq!(sent(&many), Ok(expected));
        assert_eq!(sent(&[]), Ok(vec!["anonymous".to_owned()]));
        assert_eq!(sent(&[""]), Ok(vec!["anonymous".to_owned()]));
        let strict = client(" ");
        assert_eq!(
            strict
                .principal(&principal(&[]).as_input())
                .map(|p| p.roles.len()),
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
        // Long action lists are checked with a set, short ones by comparison: both find repeats.
        let long: Vec<String> = (0..12).map(|i| format!("action-{i}")).collect();
        let mut repeated: Vec<&str> = long.iter().map(String::as_str).collect();
        assert!(cerbos.validate_checks(&[check("a", &repeated)]).is_ok());
        repeated.push("action-3");
        assert_eq!(
            refused(&[check("a", &repeated)]),
            "resource 0 (`document`): action `action-3` is asked twice"
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
}
