//! The testkit shared by integration tests and benches (feature `testing`): key material, tokens,
//! configurations, Envoy-shaped requests, and the real components (Envoy, NATS, Cerbos, nginx,
//! heimdall itself) run as managed processes on loopback.
//!
//! Every address it hands out or connects to is on loopback, and every wait is bounded. A real
//! component is found with [`tools::require`]: outside CI a missing one skips the test, in CI
//! (`CI=true`) it fails it.

pub mod browser;
pub mod cerbos;
pub mod check_request;
pub mod echo;
pub mod envoy;
pub mod fixtures;
pub mod heimdall;
pub mod idp;
pub mod jws;
pub mod nats;
pub mod nginx;
pub mod noop;
pub mod oidc;
pub mod ports;
pub mod process;
pub mod remote_service;
pub mod stack;
pub mod tls;
pub mod token_verifier;
pub mod tools;

use std::time::Duration;

use crate::config::{Config, Origin};
use crate::tokens::{Claims, Keyring, Purpose};

pub use check_request::CheckRequestBuilder;
pub use ports::free_port;
pub use process::{fail, http_client, unique_id};

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
/// with `Authorization: Bearer <token>` and `headers` (lower-case names) besides: the
/// [`CheckRequestBuilder`] defaults.
pub fn bearer_check_request(
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    CheckRequestBuilder::get(path)
        .bearer(token)
        .headers(headers)
        .build()
}
