//! Forward-auth, `/decision`: the decision for gateways without ext_authz (Traefik
//! `forwardAuth`, nginx `auth_request`, Kong), from the original request described in
//! `X-Forwarded-*` headers by a trusted proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use ipnet::IpNet;

use super::response::{copy_headers, denial, request_id};
use crate::canonical::RequestLine;
use crate::decision::{Decision, Denial, ErrorKind};
use crate::engine::Engine;
use crate::metrics::EntryLabels;
use crate::request::{Headers, Peer, RequestView};

/// What forward-auth decides with.
#[derive(Clone)]
pub(crate) struct ForwardAuth {
    pub engine: Arc<Engine>,
    /// Only these peers may describe a request with `X-Forwarded-*` headers.
    pub trusted_proxies: Arc<[IpNet]>,
}

pub(crate) fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    ForwardAuth: FromRef<S>,
{
    Router::new()
        .route("/decision", any(decision))
        .route("/decision/{*rest}", any(decision))
}

fn deny(state: &ForwardAuth, kind: ErrorKind, reason: &str) -> Response {
    state
        .engine
        .metrics()
        .rejected
        .get_or_create(&EntryLabels { entry: "decision" })
        .inc();
    tracing::info!(reason, "forward-auth request refused");
    denial(&Denial::from_kind(kind))
}

/// Forward-auth: the original request is described by `X-Forwarded-Method`, `-Proto`, `-Host`
/// and `-Uri` (trusted only from `server.trusted_proxies`); credentials are the request's own
/// headers. 200 carries the finalizers' headers (`X-User-ID`, `X-User-Roles`) for the gateway
/// to copy upstream; a denial carries its status, headers and body.
async fn decision(
    State(state): State<ForwardAuth>,
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
    let request_id = request_id(&headers);
    let mut view = RequestView::new(&line, proto.unwrap_or("http"), Headers::Http(&headers));
    view.id = &request_id;
    view.peer = Peer {
        address: &peer_address,
        principal: "",
    };
    let decided = state.engine.decide(&view).await;
    match &decided.outcome.decision {
        Decision::Allow(allowed) => {
            let mut out = StatusCode::OK.into_response();
            copy_headers(
                out.headers_mut(),
                allowed
                    .upstream_headers
                    .iter()
                    .chain(allowed.response_headers.iter())
                    .map(|(n, v)| (n.as_ref(), v.as_str())),
            );
            out
        }
        Decision::Deny(response) | Decision::Error(response) => denial(response),
    }
}
