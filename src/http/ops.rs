//! Operations endpoints: `/health`, `/ready`, `/metrics`, and the public keys of the tokens
//! heimdall mints: `/.well-known/paseto-keys` and `/.well-known/jwks.json`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use super::response::json;
use crate::readiness::Readiness;
use crate::tokens::Keyring;

/// What the operations endpoints read.
#[derive(Clone)]
pub(crate) struct Ops {
    pub readiness: Readiness,
    pub registry: Arc<Registry>,
    pub keys: Arc<Keyring>,
}

pub(crate) fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Ops: FromRef<S>,
{
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/.well-known/paseto-keys", get(paseto_keys))
        .route("/.well-known/jwks.json", get(jwks))
}

async fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

async fn ready(State(ops): State<Ops>) -> Response {
    let pending = ops.readiness.pending();
    if pending.is_empty() {
        json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready", "waiting_for": pending }),
        )
    }
}

/// The exposition format follows `Accept`: OpenMetrics for a scraper that asks for it (Prometheus
/// does), the Prometheus text format otherwise (`curl`, `promtool check metrics`, older agents).
async fn metrics(State(ops): State<Ops>, headers: HeaderMap) -> Response {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &ops.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::to_prometheus_text(&body),
        )
            .into_response()
    }
}

async fn paseto_keys(State(ops): State<Ops>) -> Response {
    let keys: Vec<_> = ops
        .keys
        .public_keys()
        .map(|(kid, paserk)| serde_json::json!({ "kid": kid, "paserk": paserk }))
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "keys": keys }))
}

/// The JWT keys as an RFC 7517 JWK Set: the signing key and the ones still published.
async fn jwks(State(ops): State<Ops>) -> Response {
    let mut response = json(StatusCode::OK, &ops.keys.jwt().jwks());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/jwk-set+json"),
    );
    response
}
