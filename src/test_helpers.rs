//! Helpers for integration tests and benches (feature `testing`): key material, tokens and an
//! in-process heimdall on loopback ports.

use std::time::Duration;

use crate::config::{Config, Origin};
use crate::tokens::{Claims, Keyring, Purpose};

/// The symmetric key tests use (32 bytes).
pub const TEST_SYMMETRIC_KEY: &[u8; 32] = b"heimdall-test-key-0123456789abcd";

/// A key ring with [`TEST_SYMMETRIC_KEY`] and a fresh Ed25519 signing key.
pub fn test_keys() -> Keyring {
    let mut keys = Keyring::default();
    // Both cannot fail: the key is 32 bytes and generation uses the OS RNG.
    let _ = keys.add_raw_symmetric(TEST_SYMMETRIC_KEY);
    let _ = keys.add_ephemeral_signing_key();
    keys
}

/// Parses a YAML configuration and binds it to free loopback ports.
pub fn test_config(yaml: &str) -> Config {
    let mut config = Config::parse(yaml, &Origin::Embedded)
        .unwrap_or_else(|e| unreachable_config(&e.to_string()));
    config.server.bind = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    config.server.grpc_port = 0;
    config.server.http_port = 0;
    config
}

/// The embedded configuration on free loopback ports.
pub fn embedded_config() -> Config {
    test_config(crate::config::EMBEDDED)
}

#[expect(
    clippy::panic,
    reason = "test helper: a fixture that does not parse is a broken test"
)]
fn unreachable_config(message: &str) -> Config {
    panic!("test configuration does not parse: {message}")
}

/// Claims for `sub` with `roles`, valid for a minute, issued by `heimdall`.
pub fn claims(sub: &str, roles: &[&str]) -> Claims {
    let mut claims = Claims::new(sub, "heimdall", Duration::from_secs(60));
    claims.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    claims
}

/// Mints a token or panics (tests only).
#[expect(clippy::panic, reason = "test helper")]
pub fn mint(keys: &Keyring, purpose: Purpose, claims: &Claims) -> String {
    keys.mint(purpose, claims)
        .unwrap_or_else(|e| panic!("mint: {e}"))
}

/// The `CheckRequest` Envoy's HTTP ext_authz filter sends for `GET https://api.example.com<path>`
/// with `Authorization: Bearer <token>` and `headers` (lower-case names) besides.
pub fn bearer_check_request(
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let authorization = format!("Bearer {token}");
    let headers = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", path),
        (":scheme", "https"),
        ("authorization", authorization.as_str()),
    ]
    .iter()
    .chain(headers)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "6f1c2a9e".into(),
                    method: "GET".into(),
                    scheme: "https".into(),
                    host: "api.example.com".into(),
                    path: path.into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}
