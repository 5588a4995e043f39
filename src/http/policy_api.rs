//! The side port's policy APIs, in the shapes the service heimdall replaces defined:
//! `POST /check` (may this principal do these actions on these resources?) and
//! `POST /plan/resources` (under which condition may it, so a list endpoint can filter in its
//! query instead of checking every row).
//!
//! The principal is the bearer token's, not the body's: a body principal is only believed when
//! `api.trust_body_principal` is on, for callers trusted to ask about anyone.
//!
//! A question the policy engine refuses as invalid (an empty resource id, an action asked twice,
//! too many resources) is the caller's error, `400`; only an engine that cannot answer is `503`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;

use super::response::{Refusal, json, request_id, status_of};
use crate::attributes::PrincipalStore;
use crate::canonical::RequestLine;
use crate::cerbos::{Cerbos, CerbosError};
use crate::config::ApiConfig;
use crate::decision::ErrorKind;
use crate::engine::Engine;
use crate::mechanisms::{Authenticator, AuthnError};
use crate::policy::{OwnedPrincipal, Plan, PolicyDecisionPoint as _, ResourceCheck, ResourceInput};
use crate::request::{Headers, RequestView};
use crate::subject::enrich;

/// What the policy API asks with.
#[derive(Clone)]
pub(crate) struct PolicyApi {
    /// The policy engine; without one every question is a 503.
    pub cerbos: Option<Arc<Cerbos>>,
    /// The serving rules name the authenticator (`api.authenticator`, reloaded with them).
    pub engine: Arc<Engine>,
    /// Verifies the caller's bearer token when the rules name none: the built-in `paseto` one;
    /// without it (no token key) a question is a 401.
    pub builtin_authenticator: Option<Arc<Authenticator>>,
    /// Principal attributes merged into a token's principal.
    pub attributes: Option<Arc<PrincipalStore>>,
    pub config: ApiConfig,
}

pub(crate) fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    PolicyApi: FromRef<S>,
{
    Router::new()
        .route("/check", post(check))
        .route("/plan/resources", post(plan))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(default)]
    principal: Option<OwnedPrincipal>,
    resources: Vec<CheckResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckResource {
    kind: String,
    id: String,
    #[serde(default)]
    attr: serde_json::Map<String, serde_json::Value>,
    actions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanBody {
    #[serde(default)]
    principal: Option<OwnedPrincipal>,
    resource: PlanResource,
    actions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanResource {
    kind: String,
    #[serde(default)]
    attr: serde_json::Map<String, serde_json::Value>,
}

/// Reads and parses a JSON body: size limit, then serde (unknown and missing fields named).
async fn parse<T: serde::de::DeserializeOwned>(body: Body, limit: usize) -> Result<T, Refusal> {
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Refusal::bad_request(format!("request body is larger than {limit} bytes")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::bad_request(format!("invalid request body: {e}")))
}

/// The answer when the policy engine gave no decision: a question it (or heimdall, before
/// asking) refuses as invalid is the caller's error; anything else is an outage.
fn no_decision(call: &str, error: &CerbosError) -> Refusal {
    if error.is_refusal() {
        tracing::info!(error = %error, "{call}: invalid policy question refused");
        Refusal::new(
            status_of(ErrorKind::BadRequest),
            format!("invalid policy request: {error}"),
        )
    } else {
        tracing::warn!(error = %error, "{call}: no decision from Cerbos");
        Refusal::new(status_of(ErrorKind::Communication), error.to_string())
    }
}

/// Checks a list of actions as Cerbos would, naming the field: `what` is its path.
fn require_actions(actions: &[String], what: &str) -> Result<(), Refusal> {
    require(!actions.is_empty(), || {
        format!("`{what}` must not be empty")
    })?;
    let mut seen = std::collections::HashSet::with_capacity(actions.len());
    for (j, action) in actions.iter().enumerate() {
        require(!action.is_empty(), || {
            format!("`{what}[{j}]` must not be empty")
        })?;
        require(seen.insert(action.as_str()), || {
            format!(
                "`{what}[{j}]` repeats the action `{}`",
                crate::redact::untrusted(action, 64)
            )
        })?;
    }
    Ok(())
}

/// A 400 naming what is wrong unless `ok`; the message is only built when needed.
fn require(ok: bool, message: impl FnOnce() -> String) -> Result<(), Refusal> {
    if ok {
        Ok(())
    } else {
        Err(Refusal::bad_request(message()))
    }
}

/// The principal to ask about: the body's if trusted, else the verified bearer token's.
async fn principal(
    state: &PolicyApi,
    headers: &HeaderMap,
    body_principal: Option<OwnedPrincipal>,
) -> Result<OwnedPrincipal, Refusal> {
    if state.config.trust_body_principal
        && let Some(principal) = body_principal
    {
        require(!principal.id.is_empty(), || {
            "`principal.id` must not be empty".to_owned()
        })?;
        return Ok(principal);
    }
    let authenticator = state
        .engine
        .api_authenticator()
        .or_else(|| state.builtin_authenticator.clone())
        .ok_or_else(|| Refusal::new(StatusCode::UNAUTHORIZED, "no token key is configured"))?;
    let line = RequestLine::internal("POST", "/");
    let view = RequestView::new(&line, "http", Headers::Http(headers));
    match authenticator.authenticate(&view).await {
        Ok(p) => {
            // As the `principal_attributes` contextualizer does: the stored facts win.
            let p = match &state.attributes {
                Some(store) => enrich(&p, &**store)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "principal attributes unavailable");
                        Refusal::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "principal attributes are unavailable",
                        )
                    })?
                    .unwrap_or(p),
                None => p,
            };
            Ok(OwnedPrincipal {
                id: p.id.to_string(),
                roles: p.roles.iter().map(|r| r.to_string()).collect(),
                attr: p.attributes(),
                attributes_revision: p.attributes_revision(),
            })
        }
        Err(AuthnError::NotResponsible) => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required",
        )),
        Err(AuthnError::Failed(e)) if e.kind == ErrorKind::Communication => {
            tracing::warn!(reason = %e.message, "API token could not be checked");
            Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the token cannot be checked right now",
            ))
        }
        Err(AuthnError::Failed(e)) => {
            tracing::info!(reason = %e.message, "API request with an invalid token");
            Err(Refusal::new(StatusCode::UNAUTHORIZED, "invalid token"))
        }
    }
}

fn effect_name(allowed: bool) -> &'static str {
    if allowed {
        "EFFECT_ALLOW"
    } else {
        "EFFECT_DENY"
    }
}

/// The configured policy engine, or 503.
fn policy_engine(state: &PolicyApi) -> Result<&Arc<Cerbos>, Refusal> {
    state.cerbos.as_ref().ok_or_else(|| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no policy engine is configured (set CERBOS_GRPC_URL)",
        )
    })
}

/// `POST /check`: 200 when every action of every resource is allowed, 403 otherwise.
async fn check(
    State(state): State<PolicyApi>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let cerbos = policy_engine(&state)?;
    let body: CheckBody = parse(body, state.config.max_body_bytes).await?;
    require(!body.resources.is_empty(), || {
        "`resources` must not be empty".to_owned()
    })?;
    for (i, r) in body.resources.iter().enumerate() {
        require(!r.kind.is_empty(), || {
            format!("`resources[{i}].kind` must not be empty")
        })?;
        require(!r.id.is_empty(), || {
            format!("`resources[{i}].id` must not be empty")
        })?;
        require_actions(&r.actions, &format!("resources[{i}].actions"))?;
    }
    let principal = principal(&state, &headers, body.principal).await?;
    let checks: Vec<ResourceCheck> = body
        .resources
        .into_iter()
        .map(|r| ResourceCheck {
            resource: ResourceInput {
                kind: r.kind,
                id: r.id,
                attr: r.attr,
            },
            actions: r.actions,
        })
        .collect();
    let results = cerbos
        .check(&request_id(&headers), &principal.as_input(), &checks)
        .await
        .map_err(|e| no_decision("/check", &e))?;
    let all_allowed = results.iter().all(|r| r.all_allowed());
    let mut answers: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let actions: serde_json::Map<String, serde_json::Value> = r
                .actions
                .iter()
                .map(|(a, allowed)| (a.clone(), effect_name(*allowed).into()))
                .collect();
            serde_json::json!({ "resourceId": r.id, "actions": actions })
        })
        .collect();
    let body = if answers.len() == 1 {
        answers.swap_remove(0)
    } else {
        serde_json::Value::Array(answers)
    };
    Ok(json(
        if all_allowed {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        },
        &body,
    ))
}

/// `POST /plan/resources`: the filter for listing resources of a kind.
async fn plan(
    State(state): State<PolicyApi>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let cerbos = policy_engine(&state)?;
    let body: PlanBody = parse(body, state.config.max_body_bytes).await?;
    require(!body.resource.kind.is_empty(), || {
        "`resource.kind` must not be empty".to_owned()
    })?;
    require_actions(&body.actions, "actions")?;
    let principal = principal(&state, &headers, body.principal).await?;
    let resource = ResourceInput {
        kind: body.resource.kind,
        id: String::new(),
        attr: body.resource.attr,
    };
    let plan = cerbos
        .plan(
            &request_id(&headers),
            &principal.as_input(),
            &resource,
            &body.actions,
        )
        .await
        .map_err(|e| no_decision("/plan/resources", &e))?;
    let filter = match plan {
        Plan::AlwaysAllowed => serde_json::json!({ "kind": "KIND_ALWAYS_ALLOWED" }),
        Plan::AlwaysDenied => serde_json::json!({ "kind": "KIND_ALWAYS_DENIED" }),
        Plan::Conditional { tree, expression } => serde_json::json!({
            "kind": "KIND_CONDITIONAL",
            "condition": { "expression": expression, "tree": tree },
        }),
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "filter": filter }),
    ))
}
