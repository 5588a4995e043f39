//! The side port's answers: JSON bodies, refusals (`{"error": …}` with the status of their
//! [`ErrorKind`]), a pipeline's denial, and the request-id policy all three entry points share.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::decision::{Denial, ErrorKind};

/// A JSON answer.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The status of an error kind, from the one table of [`ErrorKind::default_status`].
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.default_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// An answer that is not a decision: a status and a message for the caller, as
/// `{"error": message}`; a 401 carries a bearer challenge (RFC 9110 §15.5.2).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub message: Cow<'static, str>,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A malformed question: 400.
    pub(crate) fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = json(
            self.status,
            &serde_json::json!({ "error": self.message.as_ref() }),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"heimdall\""),
            );
        }
        response
    }
}

/// A pipeline's denial as an HTTP answer: its status, headers and body. A header a handler
/// wrote that HTTP cannot carry is dropped (the rule compiler refuses most at load).
pub(crate) fn denial(response: &Denial) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::FORBIDDEN);
    // An empty body (a redirect) gets no content type rather than text/plain.
    let mut out = if response.body.is_empty() {
        status.into_response()
    } else {
        (status, response.body.clone()).into_response()
    };
    copy_headers(
        out.headers_mut(),
        response
            .headers
            .iter()
            .map(|(n, v)| (n.as_ref(), v.as_str())),
    );
    out
}

/// Inserts `(name, value)` pairs, skipping any HTTP cannot carry.
pub(crate) fn copy_headers<'a>(
    into: &mut HeaderMap,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) {
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            into.insert(name, value);
        }
    }
}

/// The longest `X-Request-Id` taken from a caller; longer ones are replaced, not truncated, so
/// a log never holds half of an attacker's string.
const MAX_REQUEST_ID: usize = 128;

/// The id a request is logged and asked about under: the caller's `X-Request-Id` when it is
/// short visible ASCII (Envoy, gateways and meshes set one), else a fresh `heimdall-<hex>`.
pub(crate) fn request_id(headers: &HeaderMap) -> Cow<'_, str> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(
            || Cow::Owned(format!("heimdall-{:016x}", rand::random::<u64>())),
            Cow::Borrowed,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_keeps_a_well_formed_caller_id_and_replaces_anything_else() {
        let mut headers = HeaderMap::new();
        assert!(request_id(&headers).starts_with("heimdall-"));
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert("x-request-id", HeaderValue::from_static("has space"));
        assert!(request_id(&headers).starts_with("heimdall-"));
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        headers.insert("x-request-id", HeaderValue::try_from(long).unwrap());
        assert!(request_id(&headers).starts_with("heimdall-"));
    }

    #[test]
    fn a_401_refusal_carries_a_bearer_challenge() {
        let response =
            Refusal::new(StatusCode::UNAUTHORIZED, "a bearer token is required").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Bearer realm=\"heimdall\""
        );
        let response = Refusal::bad_request("nope").into_response();
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
