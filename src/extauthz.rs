//! The Envoy ext_authz v3 gRPC service: `CheckRequest` → request view → engine → `CheckResponse`.
//!
//! Allow is an `ok_response` with the headers to set (overwriting), to remove and to add to the
//! response; a denial is a `denied_response`; "heimdall cannot decide" is an `error_response`,
//! so Envoy's `failure_mode_allow` decides (our configurations keep it false: fail closed).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    attribute_context::HttpRequest, check_response::HttpResponse as EnvoyHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tonic::{Request, Response, Status};

use crate::canonical::{PathPolicy, Refusal, RequestLine};
use crate::decision::{Allowed, Decision, Denial, ErrorKind};
use crate::engine::Engine;
use crate::metrics::EntryLabels;
use crate::request::{Headers, Peer, RequestView};

pub use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

/// The ext_authz service.
pub struct ExtAuthz {
    engine: Arc<Engine>,
}

impl ExtAuthz {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

/// Why a `CheckRequest` is not judged: not shaped as Envoy sends it, or a request line with no
/// canonical form. Either way the answer is a 400 denial, never "cannot decide".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    Missing(&'static str),
    Refused(Refusal),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(what) => f.write_str(what),
            Self::Refused(refusal) => refusal.fmt(f),
        }
    }
}

fn http_request(check: &CheckRequest) -> Result<&HttpRequest, Unreadable> {
    check
        .attributes
        .as_ref()
        .ok_or(Unreadable::Missing("CheckRequest has no `attributes`"))?
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .ok_or(Unreadable::Missing(
            "CheckRequest has no `attributes.request.http`",
        ))
}

/// The canonical request line of a `CheckRequest` (see [`crate::canonical`]).
pub fn request_line<'a>(
    check: &'a CheckRequest,
    policy: &PathPolicy,
) -> Result<RequestLine<'a>, Unreadable> {
    let http = http_request(check)?;
    let path = if http.path.is_empty() {
        "/"
    } else {
        http.path.as_str()
    };
    let mut line =
        RequestLine::parse(&http.method, &http.host, path, policy).map_err(Unreadable::Refused)?;
    if line.query.is_empty() && !http.query.is_empty() {
        line.query = &http.query;
    }
    Ok(line)
}

/// The request view over a `CheckRequest` and its canonical line.
pub fn view<'a>(check: &'a CheckRequest, line: &'a RequestLine<'_>) -> RequestView<'a> {
    let Ok(http) = http_request(check) else {
        // `request_line` succeeded on the same message, so this is unreachable; an empty view
        // still decides (no credential, no header) rather than panicking.
        return RequestView::new(line, "", Headers::None);
    };
    let headers = match &http.header_map {
        Some(map) if !map.headers.is_empty() => Headers::List(&map.headers),
        _ => Headers::Map(&http.headers),
    };
    let mut view = RequestView::new(line, &http.scheme, headers);
    view.id = &http.id;
    if let Some(source) = check.attributes.as_ref().and_then(|a| a.source.as_ref()) {
        let address = source
            .address
            .as_ref()
            .and_then(|a| match &a.address {
                Some(
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s),
                ) => Some(s.address.as_str()),
                _ => None,
            })
            .unwrap_or("");
        view.peer = Peer {
            address,
            principal: &source.principal,
        };
    }
    view.context_extensions = check.attributes.as_ref().map(|a| &a.context_extensions);
    view
}

fn header(name: &str, value: String, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    }
}

fn denied(response: Denial) -> DeniedHttpResponse {
    DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(response.status),
        }),
        headers: response
            .headers
            .into_iter()
            .map(|(k, v)| header(&k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
            .collect(),
        body: response.body,
    }
}

fn ok(allowed: Allowed) -> OkHttpResponse {
    OkHttpResponse {
        headers: allowed
            .upstream_headers
            .into_iter()
            .map(|(k, v)| header(&k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
            .collect(),
        headers_to_remove: allowed
            .remove_headers
            .iter()
            .map(|h| h.to_string())
            .collect(),
        response_headers_to_add: allowed
            .response_headers
            .into_iter()
            .map(|(k, v)| header(&k, v, HeaderAppendAction::AppendIfExistsOrAdd))
            .collect(),
        ..OkHttpResponse::default()
    }
}

/// `dynamic_metadata` naming the rule, for Envoy access logs (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:rule)%`).
fn rule_metadata(rule: Option<&str>) -> Option<Struct> {
    let rule = rule?;
    let value = ProtoValue {
        kind: Some(Kind::StringValue(rule.to_owned())),
    };
    Some(Struct {
        fields: std::iter::once(("rule".to_owned(), value)).collect(),
    })
}

/// The `CheckResponse` for a decision by `rule`; `kind` is the error that led to a denial.
/// Takes the decision by value: its strings move into the response instead of being copied.
///
/// The gRPC code follows the error kind, not the HTTP status an error handler chose: a login
/// redirect (302) for a missing token is still `UNAUTHENTICATED`.
pub fn check_response(
    decision: Decision,
    kind: Option<ErrorKind>,
    rule: Option<&str>,
) -> CheckResponse {
    let (code, http) = match decision {
        Decision::Allow(allowed) => (tonic::Code::Ok, EnvoyHttpResponse::OkResponse(ok(allowed))),
        Decision::Deny(response) => {
            let code = if kind == Some(ErrorKind::Authentication) {
                tonic::Code::Unauthenticated
            } else {
                tonic::Code::PermissionDenied
            };
            (code, EnvoyHttpResponse::DeniedResponse(denied(response)))
        }
        Decision::Error(response) => (
            tonic::Code::Unavailable,
            EnvoyHttpResponse::ErrorResponse(denied(response)),
        ),
    };
    CheckResponse {
        status: Some(RpcStatus {
            code: code as i32,
            ..RpcStatus::default()
        }),
        http_response: Some(http),
        dynamic_metadata: rule_metadata(rule),
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Envoy's ext_authz client sends its own span's context as gRPC metadata: the parent
        // of the decision span (the request's headers are the fallback, in the engine).
        let parent = if crate::trace_context::enabled() {
            crate::trace_context::extract(&crate::trace_context::MetadataRef(request.metadata()))
        } else {
            None
        };
        let check = request.into_inner();
        let line = match request_line(&check, self.engine.path_policy()) {
            Ok(line) => line,
            Err(unreadable) => {
                // Deny with 400 rather than erroring (an error is "cannot decide", which
                // `failure_mode_allow` would turn into an allow), and say why in the log.
                self.engine
                    .metrics()
                    .rejected
                    .get_or_create(&EntryLabels { entry: "ext_authz" })
                    .inc();
                tracing::info!(reason = %unreadable, "CheckRequest refused");
                let response = Denial::from_kind(ErrorKind::BadRequest);
                return Ok(Response::new(check_response(
                    Decision::Deny(response),
                    Some(ErrorKind::BadRequest),
                    None,
                )));
            }
        };
        let view = view(&check, &line);
        let decided = self.engine.decide_within(&view, parent).await;
        let kind = decided.outcome.error.as_ref().map(|e| e.kind);
        Ok(Response::new(check_response(
            decided.outcome.decision,
            kind,
            decided.rule.as_deref(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(response: &CheckResponse) -> tonic::Code {
        tonic::Code::from_i32(response.status.as_ref().map_or(-1, |s| s.code))
    }

    #[test]
    fn the_grpc_code_follows_the_error_kind_not_the_http_status() {
        // A login redirect for a missing token is still "unauthenticated".
        let redirect = Denial {
            status: 302,
            headers: vec![("location".into(), "/login".to_owned())],
            body: String::new(),
        };
        let response = check_response(
            Decision::Deny(redirect),
            Some(ErrorKind::Authentication),
            Some("web"),
        );
        assert_eq!(code(&response), tonic::Code::Unauthenticated);
        assert!(matches!(
            response.http_response,
            Some(EnvoyHttpResponse::DeniedResponse(ref d)) if d.status.as_ref().map(|s| s.code) == Some(302)
        ));

        let forbidden = Denial::from_kind(ErrorKind::Authorization);
        let response = check_response(
            Decision::Deny(forbidden),
            Some(ErrorKind::Authorization),
            None,
        );
        assert_eq!(code(&response), tonic::Code::PermissionDenied);
        assert!(response.dynamic_metadata.is_none());

        let unavailable = Denial::from_kind(ErrorKind::Communication);
        let response = check_response(
            Decision::Error(unavailable),
            Some(ErrorKind::Communication),
            None,
        );
        assert_eq!(code(&response), tonic::Code::Unavailable);
        assert!(matches!(
            response.http_response,
            Some(EnvoyHttpResponse::ErrorResponse(_))
        ));
    }

    /// `server.remove_client_headers` are found whatever case the client spelled them in and
    /// however Envoy sent the headers, once each; a header the rule's finalizer sets is
    /// overwritten, not removed.
    #[tokio::test]
    async fn client_sent_identity_headers_are_removed_in_any_spelling() {
        use crate::test_helpers::{CheckRequestBuilder, claims, embedded_config, mint, test_keys};
        let keys = test_keys();
        let token = mint(
            &keys,
            crate::tokens::Purpose::Local,
            &claims("alice", &["user"]),
        );
        let built = crate::app::build(embedded_config(), keys).unwrap();
        let service = ExtAuthz::new(built.engine);
        let removals = |response: CheckResponse| match response.http_response {
            Some(EnvoyHttpResponse::OkResponse(ok)) => {
                let mut removed = ok.headers_to_remove;
                removed.sort();
                removed
            }
            other => panic!("not allowed: {other:?}"),
        };
        for raw in [false, true] {
            let public = CheckRequestBuilder::get("/public/index.html")
                .header("X-Forwarded-User", "mallory")
                .header("x-forwarded-user", "mallory-again")
                .header("X-AUTH-REQUEST-EMAIL", "m@example.com")
                .header("accept", "text/html")
                .raw_headers(raw)
                .build();
            let answer = service.check(Request::new(public)).await.unwrap();
            let removed = removals(answer.into_inner());
            assert!(
                removed.iter().any(|h| h == "x-forwarded-user")
                    && removed.iter().any(|h| h == "x-auth-request-email"),
                "raw {raw}: {removed:?}"
            );
            let mut unique = removed.clone();
            unique.dedup();
            assert_eq!(unique, removed, "each name once");
            assert!(!removed.iter().any(|h| h == "accept"));

            let documents = CheckRequestBuilder::get("/api/documents/42")
                .bearer(&token)
                .header("X-User-Id", "mallory")
                .raw_headers(raw)
                .build();
            let answer = service.check(Request::new(documents)).await.unwrap();
            let removed = removals(answer.into_inner());
            assert!(
                !removed.iter().any(|h| h == "x-user-id"),
                "set, not removed: {removed:?}"
            );
        }
    }

    /// The login's session cookie is a credential: the shipped rules take it out of the
    /// `Cookie` header the upstream receives and keep the other cookies.
    #[tokio::test]
    async fn the_session_cookie_never_reaches_the_upstream() {
        use crate::test_helpers::{CheckRequestBuilder, claims, embedded_config, mint, test_keys};
        let keys = test_keys();
        let token = mint(
            &keys,
            crate::tokens::Purpose::Local,
            &claims("alice", &["user"]),
        );
        let built = crate::app::build(embedded_config(), keys).unwrap();
        let service = ExtAuthz::new(built.engine);
        for (cookies, expected) in [
            (
                format!("theme=dark; heimdall_session={token}; lang=en"),
                Some("theme=dark; lang=en"),
            ),
            (format!("heimdall_session={token}"), None),
            // Spellings around the name: spaces, a repeat, an empty value, look-alike names
            // (cookie names are case-sensitive, so `Heimdall_Session` is another cookie).
            (
                format!(
                    " heimdall_session = {token} ;heimdall_session=x; heimdall_session2=y;Heimdall_Session=z;;"
                ),
                Some("heimdall_session2=y; Heimdall_Session=z"),
            ),
        ] {
            let request = CheckRequestBuilder::get("/api/documents/42")
                .header("cookie", &cookies)
                .build();
            let answer = service.check(Request::new(request)).await.unwrap();
            let Some(EnvoyHttpResponse::OkResponse(ok)) = answer.into_inner().http_response else {
                panic!("not allowed with the session cookie: {cookies}");
            };
            let sent = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "cookie")
                .map(|h| h.value.as_str());
            assert_eq!(sent, expected, "{cookies}");
            assert_eq!(
                ok.headers_to_remove.iter().any(|h| h == "cookie"),
                expected.is_none()
            );
        }
    }

    #[test]
    fn an_allow_sets_overwrites_removes_and_names_the_rule() {
        let mut allowed = Allowed::default();
        allowed.set_header(&Arc::from("x-user-id"), "alice".to_owned());
        allowed.remove_header(&Arc::from("authorization"));
        let response = check_response(Decision::Allow(allowed), None, Some("documents"));
        assert_eq!(code(&response), tonic::Code::Ok);
        let Some(EnvoyHttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not an ok response: {response:?}");
        };
        let header = ok.headers.first().and_then(|h| h.header.as_ref()).unwrap();
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            ("x-user-id", "alice")
        );
        assert_eq!(
            ok.headers.first().map(|h| h.append_action),
            Some(HeaderAppendAction::OverwriteIfExistsOrAdd as i32)
        );
        assert_eq!(ok.headers_to_remove, vec!["authorization".to_owned()]);
        let rule = response
            .dynamic_metadata
            .and_then(|m| m.fields.get("rule").cloned())
            .and_then(|v| v.kind);
        assert_eq!(rule, Some(Kind::StringValue("documents".to_owned())));
    }
}
