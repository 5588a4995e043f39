//! The HTTP client of every outbound call whose answer heimdall trusts: the OpenID provider, and
//! the services mechanisms ask (JWKS, token introspection, HTTP contextualizers, remote
//! authorizers). Deadlines on the whole exchange, no redirects followed, bounded bodies.

use std::time::Duration;

/// Why an outbound call failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// A pooled HTTP client with one deadline and one body limit; cloning shares the pool.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    timeout: Duration,
    max_body_bytes: usize,
}

impl HttpClient {
    /// A client whose every call (connect, send, read the whole body) ends within `timeout`, and
    /// reads at most `max_body_bytes` of an answer.
    pub fn new(timeout: Duration, max_body_bytes: usize) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // An answer must not steer heimdall to another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("heimdall/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            timeout,
            max_body_bytes,
        })
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request and reads its answer, at most `max_body_bytes` of it. With tracing
    /// on, the call is a client span of the current one, and its context goes out as
    /// `traceparent`.
    pub async fn send(
        &self,
        mut request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, OutboundError> {
        if !crate::trace_context::enabled() {
            return self.exchange(request).await;
        }
        use tracing::Instrument as _;
        use tracing::field::Empty;
        let span = tracing::info_span!(
            "http.client",
            otel.name = %request.method(),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = %request.method(),
            server.address = request.uri().host().unwrap_or_default(),
            http.response.status_code = Empty,
        );
        crate::trace_context::inject(
            &span,
            &mut crate::trace_context::HttpHeaders(request.headers_mut()),
        );
        let answer = self.exchange(request).instrument(span.clone()).await;
        match &answer {
            Ok(response) => {
                span.record("http.response.status_code", response.status().as_u16());
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        answer
    }

    async fn exchange(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, OutboundError> {
        let request = reqwest::Request::try_from(request)
            .map_err(|e| OutboundError::Transport(e.to_string()))?;
        let work = async {
            let mut response = self
                .client
                .execute(request)
                .await
                .map_err(|e| self.transport(&e))?;
            let mut builder = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(&e))? {
                if body.len() + chunk.len() > self.max_body_bytes {
                    return Err(OutboundError::TooLarge(self.max_body_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            builder
                .body(body)
                .map_err(|e| OutboundError::Transport(e.to_string()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| OutboundError::Timeout(self.timeout))?
    }

    fn transport(&self, error: &reqwest::Error) -> OutboundError {
        if error.is_timeout() {
            OutboundError::Timeout(self.timeout)
        } else {
            OutboundError::Transport(error_chain(error))
        }
    }
}

/// The `Authorization` value of a client authenticating with its id and secret (RFC 6749
/// §2.3.1: both halves form-encoded, then HTTP Basic).
pub fn client_basic_credentials(client_id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        encode(client_id),
        encode(secret)
    ));
    format!("Basic {credentials}")
}

/// An error's message with its causes.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        // RFC 6749 §2.3.1: `:` in the id and `+` in the secret are encoded first.
        assert_eq!(
            client_basic_credentials("a:b", "c+d"),
            format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "a%3Ab:c%2Bd")
            )
        );
    }
}
