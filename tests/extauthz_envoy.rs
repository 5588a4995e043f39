//! End to end through a real Envoy: HTTP request → Envoy ext_authz → heimdall → echo upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use base64::Engine as _;
use heimdall::app::Running;
use heimdall::test_helpers::echo::EchoUpstream;
use heimdall::test_helpers::envoy::Envoy;
use heimdall::test_helpers::stack::StackBuilder;
use heimdall::test_helpers::{claims, mint, test_keys};
use heimdall::tokens::{Audience, Claims, Keyring, Purpose};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};

use heimdall::test_helpers::fixtures::RULES;
const AUDIENCE: &str = "heimdall-tests";

/// Everything the app logs, so tests can check that a denial names its reason.
fn log_buffer() -> &'static Arc<RwLock<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<RwLock<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(RwLock::new(Vec::new()));
        let writer = LogWriter(Arc::clone(&buffer));
        let _ = tracing_subscriber::fmt()
            .with_env_filter("heimdall=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
}

#[derive(Clone)]
struct LogWriter(Arc<RwLock<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> String {
    String::from_utf8_lossy(&log_buffer().read().unwrap()).into_owned()
}

struct Stack {
    keys: Arc<Keyring>,
    heimdall: Option<Running>,
    envoy: Envoy,
    _echo: EchoUpstream,
    client: reqwest::Client,
}

impl Stack {
    async fn start() -> Option<Self> {
        log_buffer();
        let stack = StackBuilder::new(RULES).envoy().start().await?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Some(Self {
            keys: stack.keys,
            heimdall: Some(stack.heimdall),
            envoy: stack.envoy?,
            _echo: stack.echo,
            client,
        })
    }

    fn token(&self, purpose: Purpose, sub: &str, roles: &[&str]) -> String {
        mint(&self.keys, purpose, &self.claims(sub, roles))
    }

    fn claims(&self, sub: &str, roles: &[&str]) -> Claims {
        let mut c = claims(sub, roles);
        c.aud = Audience::One(AUDIENCE.into());
        c
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, headers).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        self.client
            .request(method, self.envoy.url(path))
            .headers(map)
            .send()
            .await
            .unwrap()
    }
}

async fn echoed_headers(response: reqwest::Response) -> serde_json::Map<String, serde_json::Value> {
    let body: serde_json::Value = response.json().await.unwrap();
    body["headers"].as_object().cloned().unwrap_or_default()
}

#[tokio::test]
async fn valid_tokens_reach_the_upstream_with_user_headers() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    for purpose in [Purpose::Local, Purpose::Public] {
        let token = stack.token(purpose, "alice", &["user", "editor"]);
        let response = stack
            .get(
                "/api/documents/42",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{purpose} token");
        let headers = echoed_headers(response).await;
        assert_eq!(headers["x-user-id"], "alice");
        assert_eq!(headers["x-user-roles"], "user,editor");
        assert!(
            !headers.contains_key("authorization"),
            "the credential is stripped before the upstream"
        );
    }
    // Header names and auth schemes are case-insensitive (RFC 9110): still accepted.
    let token = stack.token(Purpose::Public, "alice", &["user"]);
    let response = stack
        .get(
            "/api/documents/1",
            &[("AUTHORIZATION", &format!("bEaReR {token}"))],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // A spoofed identity header from the client is overwritten, never passed through.
    let response = stack
        .get(
            "/api/documents/1",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-user-id", "mallory"),
            ],
        )
        .await;
    assert_eq!(echoed_headers(response).await["x-user-id"], "alice");
}

#[tokio::test]
async fn missing_credentials_get_a_challenge_or_a_login_redirect() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let response = stack.get("/api/documents/42", &[]).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"heimdall\""
    );
    assert_eq!(
        response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .count(),
        1,
        "one challenge"
    );

    let response = stack
        .get(
            "/api/documents/42?view=full",
            &[("accept", "text/html,application/xhtml+xml")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap();
    let original = format!(
        "http://{}/api/documents/42?view=full",
        stack.envoy.listen_addr()
    );
    let encoded: String = url_encode(&original);
    assert_eq!(location, format!("/auth/login?redirect_uri={encoded}"));

    // A public route needs no credential.
    assert_eq!(
        stack.get("/public/logo.png", &[]).await.status(),
        StatusCode::OK
    );
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn tamper_payload(token: &str) -> String {
    // Flip one character in the middle of the payload part: still base64url, no longer signed.
    let mut bytes = token.as_bytes().to_vec();
    let i = "v4.public.".len() + 20;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn tamper_footer(token: &str) -> String {
    let (body, footer) = token.rsplit_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut footer: serde_json::Value =
        serde_json::from_slice(&b64.decode(footer).unwrap()).unwrap();
    footer["extra"] = serde_json::json!(1);
    format!("{body}.{}", b64.encode(footer.to_string()))
}

#[tokio::test]
async fn invalid_credentials_are_refused_with_a_logged_reason() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };

    let mut expired = stack.claims("alice", &["user"]);
    expired.exp = Some(rfc(now - Duration::from_secs(600)));
    let mut not_yet = stack.claims("alice", &["user"]);
    not_yet.nbf = Some(rfc(now + Duration::from_secs(600)));
    let mut wrong_issuer = stack.claims("alice", &["user"]);
    wrong_issuer.iss = Some("someone-else".into());
    let mut wrong_audience = stack.claims("alice", &["user"]);
    wrong_audience.aud = Audience::One("another-api".into());
    let other_keys = test_keys(); // same local key, different signing key
    let mut stranger = Keyring::default();
    stranger
        .add_raw_symmetric(b"another-32-byte-key-for-strangr!")
        .unwrap();
    let public = stack.token(Purpose::Public, "alice", &["user"]);
    let local = stack.token(Purpose::Local, "alice", &["user"]);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            mint(&stack.keys, Purpose::Public, &expired),
            "token expired at",
        ),
        (
            "not yet valid",
            mint(&stack.keys, Purpose::Public, &not_yet),
            "token is not valid before",
        ),
        (
            "wrong issuer",
            mint(&stack.keys, Purpose::Local, &wrong_issuer),
            "issuer `someone-else` is not accepted",
        ),
        (
            "wrong audience",
            mint(&stack.keys, Purpose::Public, &wrong_audience),
            "audience does not include `heimdall-tests`",
        ),
        (
            "unknown signing key",
            mint(&other_keys, Purpose::Public, &stack.claims("alice", &[])),
            "unknown key id",
        ),
        (
            "unknown local key",
            mint(&stranger, Purpose::Local, &stack.claims("alice", &[])),
            "unknown key id",
        ),
        (
            "tampered payload",
            tamper_payload(&public),
            "does not verify",
        ),
        ("tampered footer", tamper_footer(&public), "does not verify"),
        (
            "v3 token",
            "v3.public.eyJzdWIiOiJhIn0".into(),
            "unsupported token version `v3.public`",
        ),
        (
            "v2 token",
            "v2.local.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            "unsupported token version `v2.local`",
        ),
        ("garbage", "not-a-token".into(), "not a PASETO token"),
        // Under Envoy's 60 KB header limit, over heimdall's 8 KB token limit.
        (
            "50 KB",
            format!("v4.public.{}", "A".repeat(50 * 1024)),
            "over the limit of 8192",
        ),
    ];
    for (name, token, reason) in &cases {
        let response = stack
            .get(
                "/api/documents/1",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert!(logs().contains(reason), "{name}: log lacks `{reason}`");
    }

    // 100 KB: Envoy refuses the headers itself (431) before heimdall is asked; heimdall's own
    // refusal of such a token over gRPC is in the decision corpus.
    let huge = format!("Bearer v4.public.{}", "A".repeat(100 * 1024));
    let status = stack
        .get("/api/documents/1", &[("authorization", &huge)])
        .await
        .status();
    assert!(
        status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE || status == StatusCode::UNAUTHORIZED,
        "100 KB: {status}"
    );

    // The purpose is pinned per rule through a config override.
    let response = stack
        .get(
            "/only-public/x",
            &[("authorization", &format!("Bearer {local}"))],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(logs().contains("`v4.local` token where only `v4.public` tokens are accepted"));
    let response = stack
        .get(
            "/only-local/x",
            &[("authorization", &format!("Bearer {public}"))],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(logs().contains("`v4.public` token where only `v4.local` tokens are accepted"));
    assert_eq!(
        stack
            .get(
                "/only-public/x",
                &[("authorization", &format!("Bearer {public}"))]
            )
            .await
            .status(),
        StatusCode::OK
    );

    // Header shapes: duplicated (Envoy joins them with a comma), scheme without token, another scheme.
    let bearer = format!("Bearer {public}");
    let response = stack
        .get(
            "/api/documents/1",
            &[("authorization", &bearer), ("authorization", &bearer)],
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "duplicated header"
    );
    assert_eq!(
        stack
            .get("/api/documents/1", &[("authorization", "Bearer")])
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        stack
            .get(
                "/api/documents/1",
                &[("authorization", "Basic YWxpY2U6c2VjcmV0")]
            )
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(logs().contains("no credential found"));

    // Still serving after all of that.
    assert_eq!(
        stack
            .get("/api/documents/1", &[("authorization", &bearer)])
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn authorization_decisions() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let user = format!("Bearer {}", stack.token(Purpose::Public, "bob", &["user"]));
    let editor = format!(
        "Bearer {}",
        stack.token(Purpose::Public, "erin", &["user", "editor"])
    );
    let admin = format!("Bearer {}", stack.token(Purpose::Local, "root", &["admin"]));

    // CEL authorizer: only editors write.
    assert_eq!(
        stack
            .send(
                reqwest::Method::PUT,
                "/api/documents/7",
                &[("authorization", &user)]
            )
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        stack
            .send(
                reqwest::Method::PUT,
                "/api/documents/7",
                &[("authorization", &editor)]
            )
            .await
            .status(),
        StatusCode::OK
    );

    // Envoy names the rule through context_extensions for /admin/.
    assert_eq!(
        stack
            .get("/admin/settings", &[("authorization", &user)])
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        stack
            .get("/admin/settings", &[("authorization", &admin)])
            .await
            .status(),
        StatusCode::OK
    );

    // Path captures and token attributes in CEL, and a generic error handler.
    let mut c = stack.claims("tina", &["user"]);
    c.attr.insert("tenant".into(), "acme".into());
    c.attr.insert("plan".into(), "pro".into());
    let tenant = format!("Bearer {}", mint(&stack.keys, Purpose::Public, &c));
    let ok = stack
        .client
        .get(stack.envoy.url("/t/acme/reports"))
        .header("host", "eu.tenants.test")
        .header("authorization", &tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let denied = stack
        .client
        .get(stack.envoy.url("/t/globex/reports"))
        .header("host", "eu.tenants.test")
        .header("authorization", &tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(denied.headers()["x-denied-rule"], "tenants");
    assert_eq!(denied.text().await.unwrap(), "no tea for tina");

    // A token from a cookie; a finalizer adds a header to the response the client gets.
    let session = stack.token(Purpose::Public, "carol", &["user"]);
    let response = stack
        .get(
            "/app/home",
            &[("cookie", &format!("theme=dark; heimdall_token={session}"))],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-session-subject"], "carol");

    // No rule matches (and there is no default rule): denied, with the reason logged.
    assert_eq!(
        stack
            .get("/nowhere", &[("authorization", &admin)])
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert!(logs().contains("no rule matches GET"));
}

#[tokio::test]
async fn envoy_fails_closed_when_heimdall_is_gone() {
    let Some(mut stack) = Stack::start().await else {
        return;
    };
    let token = format!(
        "Bearer {}",
        stack.token(Purpose::Public, "alice", &["user"])
    );
    assert_eq!(
        stack
            .get("/api/documents/1", &[("authorization", &token)])
            .await
            .status(),
        StatusCode::OK
    );
    stack
        .heimdall
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(2))
        .await;
    assert_eq!(
        stack
            .get("/api/documents/1", &[("authorization", &token)])
            .await
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        stack.get("/healthz", &[]).await.status(),
        StatusCode::OK,
        "the health route does not call heimdall"
    );
}
