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

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::canonical::RequestLine;
use crate::decision::ErrorKind;
use crate::http::SideState;
use crate::mechanisms::AuthnError;
use crate::policy::{
    OwnedPrincipal as PrincipalInput, Plan, PolicyDecisionPoint as _, ResourceCheck, ResourceInput,
};
use crate::request::{Headers, RequestView};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(default)]
    principal: Option<PrincipalInput>,
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
    principal: Option<PrincipalInput>,
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

/// An API answer that is not a decision: status and a JSON `{"error": …}`.
fn error(status: StatusCode, message: &str) -> Response {
    let mut response = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"heimdall\""),
        );
    }
    response
}

/// [`error`], boxed for the `Err` side of the handlers' results.
fn refuse(status: StatusCode, message: &str) -> Box<Response> {
    Box::new(error(status, message))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// Reads and parses a JSON body: size limit, then serde (unknown and missing fields named).
async fn parse<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, Box<Response>> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            &format!("request body is larger than {limit} bytes"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            &format!("invalid request body: {e}"),
        )
    })
}

/// The answer when the policy engine gave no decision: a question it (or heimdall, before
/// asking) refuses as invalid is the caller's error; anything else is an outage.
fn no_decision(call: &str, error: &crate::cerbos::CerbosError) -> Box<Response> {
    if error.is_refusal() {
        tracing::info!(error = %error, "{call}: invalid policy question refused");
        refuse(
            status(ErrorKind::BadRequest),
            &format!("invalid policy request: {error}"),
        )
    } else {
        tracing::warn!(error = %error, "{call}: no decision from Cerbos");
        refuse(status(ErrorKind::Communication), &error.to_string())
    }
}

/// The status of an error kind, from the one table of [`ErrorKind::default_status`].
fn status(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.default_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Checks a list of actions as Cerbos would, naming the field: `what` is its path.
fn require_actions(actions: &[String], what: &str) -> Result<(), Box<Response>> {
    require(!actions.is_empty(), &format!("`{what}` must not be empty"))?;
    let mut seen = std::collections::HashSet::with_capacity(actions.len());
    for (j, action) in actions.iter().enumerate() {
        require(
            !action.is_empty(),
            &format!("`{what}[{j}]` must not be empty"),
        )?;
        require(
            seen.insert(action.as_str()),
            &format!(
                "`{what}[{j}]` repeats the action `{}`",
                crate::redact::untrusted(action, 64)
            ),
        )?;
    }
    Ok(())
}

fn require(ok: bool, message: &str) -> Result<(), Box<Response>> {
    if ok {
        Ok(())
    } else {
        Err(refuse(StatusCode::BAD_REQUEST, message))
    }
}

/// The principal to ask about: the body's if trusted, else the verified bearer token's.
async fn principal(
    state: &SideState,
    headers: &HeaderMap,
    body_principal: Option<PrincipalInput>,
) -> Result<PrincipalInput, Box<Response>> {
    if state.api.trust_body_principal
        && let Some(principal) = body_principal
    {
        require(!principal.id.is_empty(), "`principal.id` must not be empty")?;
        return Ok(principal);
    }
    let authenticator = state
        .api_authenticator
        .as_ref()
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "no token key is configured"))?;
    let line = RequestLine::internal("POST", "/");
    let view = RequestView::new(&line, "http", Headers::Http(headers));
    match authenticator.authenticate(&view).await {
        Ok(p) => {
            let mut principal = PrincipalInput {
                id: p.id.to_string(),
                roles: p.roles.iter().map(|r| r.to_string()).collect(),
                attr: p.attributes.clone(),
                attributes_revision: 0,
            };
            // As the `principal_attributes` contextualizer does: the stored facts win.
            if let Some(store) = &state.attributes {
                let snapshot = store.get(&principal.id).await.map_err(|e| {
                    tracing::warn!(error = %e, "principal attributes unavailable");
                    refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "principal attributes are unavailable",
                    )
                })?;
                if snapshot.merge_into(&mut principal.attr) {
                    principal.attributes_revision = snapshot.revision;
                }
            }
            Ok(principal)
        }
        Err(AuthnError::NotResponsible) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required",
        )),
        Err(AuthnError::Failed(e)) if e.kind == crate::decision::ErrorKind::Communication => {
            tracing::warn!(reason = %e.message, "API token could not be checked");
            Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the token cannot be checked right now",
            ))
        }
        Err(AuthnError::Failed(e)) => {
            tracing::info!(reason = %e.message, "API request with an invalid token");
            Err(refuse(StatusCode::UNAUTHORIZED, "invalid token"))
        }
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || format!("heimdall-{:016x}", rand::random::<u64>()),
            str::to_owned,
        )
}

fn effect_name(allowed: bool) -> &'static str {
    if allowed {
        "EFFECT_ALLOW"
    } else {
        "EFFECT_DENY"
    }
}

/// The configured policy engine, or 503.
fn policy_engine(
    state: &SideState,
) -> Result<&std::sync::Arc<crate::cerbos::Cerbos>, Box<Response>> {
    state.cerbos.as_ref().ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no policy engine is configured (set CERBOS_GRPC_URL)",
        )
    })
}

/// A handler's answer, decision or refusal.
fn respond(result: Result<Response, Box<Response>>) -> Response {
    result.unwrap_or_else(|refusal| *refusal)
}

/// `POST /check`: 200 when every action of every resource is allowed, 403 otherwise.
pub async fn check(State(state): State<SideState>, headers: HeaderMap, body: Body) -> Response {
    respond(check_inner(&state, &headers, body).await)
}

async fn check_inner(
    state: &SideState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Box<Response>> {
    let cerbos = policy_engine(state)?;
    let body: CheckBody = parse(body, state.api.max_body_bytes).await?;
    require(!body.resources.is_empty(), "`resources` must not be empty")?;
    for (i, r) in body.resources.iter().enumerate() {
        require(
            !r.kind.is_empty(),
            &format!("`resources[{i}].kind` must not be empty"),
        )?;
        require(
            !r.id.is_empty(),
            &format!("`resources[{i}].id` must not be empty"),
        )?;
        require_actions(&r.actions, &format!("resources[{i}].actions"))?;
    }
    let principal = principal(state, headers, body.principal).await?;
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
        .check(&request_id(headers), &principal.as_input(), &checks)
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
pub async fn plan(State(state): State<SideState>, headers: HeaderMap, body: Body) -> Response {
    respond(plan_inner(&state, &headers, body).await)
}

async fn plan_inner(
    state: &SideState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Box<Response>> {
    let cerbos = policy_engine(state)?;
    let body: PlanBody = parse(body, state.api.max_body_bytes).await?;
    require(
        !body.resource.kind.is_empty(),
        "`resource.kind` must not be empty",
    )?;
    require_actions(&body.actions, "actions")?;
    let principal = principal(state, headers, body.principal).await?;
    let resource = ResourceInput {
        kind: body.resource.kind,
        id: String::new(),
        attr: body.resource.attr,
    };
    let plan = cerbos
        .plan(
            &request_id(headers),
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
