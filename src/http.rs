//! The HTTP side port: health, readiness, metrics, the public PASETO keys and `/decision`
//! (forward-auth for gateways without ext_authz: Traefik `forwardAuth`, nginx `auth_request`,
//! Kong). It never shares a listener with ext_authz, so a scrape cannot delay a decision.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use ipnet::IpNet;
use prometheus_client::registry::Registry;

use crate::canonical::RequestLine;
use crate::decision::{Decision, Denial, ErrorKind};
use crate::engine::Engine;
use crate::metrics::EntryLabels;
use crate::readiness::Readiness;
use crate::request::{Headers, Peer, RequestView};
use crate::tokens::Keyring;

/// What the side port serves from.
#[derive(Clone)]
pub struct SideState {
    pub engine: Arc<Engine>,
    pub readiness: Readiness,
    pub registry: Arc<Registry>,
    pub keys: Arc<Keyring>,
    pub trusted_proxies: Arc<[IpNet]>,
    pub cerbos: Option<Arc<crate::cerbos::Cerbos>>,
    pub api_authenticator: Option<Arc<crate::mechanisms::Authenticator>>,
    /// Principal attributes merged into a token's principal by `/check` and `/plan/resources`.
    pub attributes: Option<Arc<crate::attributes::PrincipalStore>>,
    pub api: crate::config::ApiConfig,
}

/// The side-port router (tests drive it with `oneshot`).
pub fn router(state: SideState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/.well-known/paseto-keys", get(paseto_keys))
        .route("/check", post(crate::api::check))
        .route("/plan/resources", post(crate::api::plan))
        .route("/decision", any(decision))
        .route("/decision/{*rest}", any(decision))
        .with_state(state)
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

async fn ready(State(state): State<SideState>) -> Response {
    let pending = state.readiness.pending();
    if pending.is_empty() {
        json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready", "waiting_for": pending }),
        )
    }
}

async fn metrics(State(state): State<SideState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn paseto_keys(State(state): State<SideState>) -> Response {
    let keys: Vec<_> = state
        .keys
        .public_keys()
        .map(|(kid, paserk)| serde_json::json!({ "kid": kid, "paserk": paserk }))
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "keys": keys }))
}

fn to_response(response: &Denial) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::FORBIDDEN);
    // An empty body (a redirect) gets no content type rather than text/plain.
    let mut out = if response.body.is_empty() {
        status.into_response()
    } else {
        (status, response.body.clone()).into_response()
    };
    for (name, value) in &response.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_ref()),
            HeaderValue::try_from(value.as_str()),
        ) {
            out.headers_mut().insert(name, value);
        }
    }
    out
}

fn deny(state: &SideState, kind: ErrorKind, reason: &str) -> Response {
    state
        .engine
        .metrics()
        .rejected
        .get_or_create(&EntryLabels { entry: "decision" })
        .inc();
    tracing::info!(reason, "forward-auth request refused");
    to_response(&Denial::from_kind(kind))
}

/// Forward-auth: the original request is described by `X-Forwarded-Method`, `-Proto`, `-Host`
/// and `-Uri` (trusted only from `server.trusted_proxies`); credentials are the request's own
/// headers. 200 carries the finalizers' headers (`X-User-ID`, `X-User-Roles`) for the gateway
/// to copy upstream; a denial carries its status, headers and body.
async fn decision(
    State(state): State<SideState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let peer_ip = peer.ip().to_canonical();
    if !state
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&peer_ip))
    {
        return deny(
            &state,
            ErrorKind::Authorization,
            "peer is not in server.trusted_proxies",
        );
    }
    let get = |name: &str| -> Result<Option<&str>, ()> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v.to_str().map(Some).map_err(|_| ()),
            // A forwarded header sent twice is ambiguous, so a spoofing attempt: refuse it.
            (Some(_), Some(_)) => Err(()),
        }
    };
    let (Ok(method), Ok(proto), Ok(host), Ok(uri)) = (
        get("x-forwarded-method"),
        get("x-forwarded-proto"),
        get("x-forwarded-host"),
        get("x-forwarded-uri"),
    ) else {
        return deny(
            &state,
            ErrorKind::BadRequest,
            "an X-Forwarded-* header is repeated or not valid UTF-8",
        );
    };
    let (Some(method), Some(host)) = (method, host) else {
        return deny(
            &state,
            ErrorKind::BadRequest,
            "X-Forwarded-Method and X-Forwarded-Host are required",
        );
    };
    let uri = uri.unwrap_or("/");
    let line = match RequestLine::parse(method, host, uri, state.engine.path_policy()) {
        Ok(line) => line,
        Err(refusal) => return deny(&state, ErrorKind::BadRequest, &refusal.to_string()),
    };
    let peer_address = peer_ip.to_string();
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut view = RequestView::new(&line, proto.unwrap_or("http"), Headers::Http(&headers));
    view.id = request_id;
    view.peer = Peer {
        address: &peer_address,
        principal: "",
    };
    let decided = state.engine.decide(&view).await;
    match &decided.outcome.decision {
        Decision::Allow(allowed) => {
            let mut out = StatusCode::OK.into_response();
            for (name, value) in allowed
                .upstream_headers
                .iter()
                .chain(allowed.response_headers.iter())
            {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::try_from(&**name),
                    HeaderValue::try_from(value.as_str()),
                ) {
                    out.headers_mut().insert(name, value);
                }
            }
            out
        }
        Decision::Deny(response) | Decision::Error(response) => to_response(response),
    }
}
