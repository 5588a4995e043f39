//! Writes the generated part of the seed corpora: real tokens (`fuzz/corpus/token`) and encoded
//! `CheckRequest`s (`fuzz/corpus/check_request`). The other corpora are plain text, written by
//! hand. Run from the repository root after a change to the token or request formats:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Tokens are `v4.local`, minted with the fixed test symmetric key, so they keep verifying in
//! every fuzzing process (the test signing key is generated per process, so `v4.public` seeds
//! only exercise the format), and valid for a century. No seed carries the `admin` role: the
//! `check_request` target asserts that nothing opens the `admin` rule.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a developer tool: failing loudly is the point"
)]

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap, HeaderValue, SocketAddress, address,
};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use heimdall::tokens::{Audience, Claims, Keyring, Purpose};
use prost::Message as _;

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn main() {
    let keys = heimdall::test_helpers::test_keys();
    let user = mint(&keys, Purpose::Local, "alice", &["user"]);
    let editor = mint(&keys, Purpose::Local, "bob", &["editor", "user"]);
    write_tokens(&keys, &user);
    write_check_requests(&user, &editor);
}

fn mint(keys: &Keyring, purpose: Purpose, sub: &str, roles: &[&str]) -> String {
    let mut claims = Claims::new(sub, "heimdall", CENTURY);
    claims.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    keys.mint(purpose, &claims).expect("mint")
}

fn write(dir: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(dir);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

/// `token` seeds: a mode byte (0 token, 1 public footer, 2 local footer, 3 claims), then data.
fn write_tokens(keys: &Keyring, user: &str) {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let public = mint(keys, Purpose::Public, "carol", &["user"]);
    let (local_body, _) = user.rsplit_once('.').expect("footer");
    let (public_body, _) = public.rsplit_once('.').expect("footer");
    let tokens = [
        ("local", user.to_owned()),
        ("public", public.clone()),
        ("local-no-footer", local_body.to_owned()),
        ("public-no-footer", public_body.to_owned()),
        ("local-empty-footer", format!("{local_body}.")),
        (
            "local-unknown-kid",
            format!(
                "{local_body}.{}",
                b64(br#"{"kid":"k4.lid.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#)
            ),
        ),
        ("public-short", "v4.public.AAAA".to_owned()),
        ("v2-local", "v2.local.AAAAAAAAAAAAAAAA".to_owned()),
        ("v4-other", "v4.secret.AAAA".to_owned()),
        ("empty-local", "v4.local.".to_owned()),
        ("padded", format!("{public_body}==")),
    ];
    for (name, token) in tokens {
        write("token", name, &[&[0u8], token.as_bytes()].concat());
    }
    let footers: [(&str, &[u8]); 6] = [
        (
            "kid",
            br#"{"kid":"k4.pid.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        ),
        ("kid-number", br#"{"kid":5}"#),
        ("empty-object", b"{}"),
        ("array", b"[]"),
        ("kid-escapes", br#"{"kid":"\u0000\n\u001b[31m"}"#),
        (
            "kid-and-more",
            br#"{"kid":"k4.lid.x","wpk":"k4.local-wrap.pie.x"}"#,
        ),
    ];
    for (name, footer) in footers {
        write(
            "token",
            &format!("public-footer-{name}"),
            &[&[1u8], footer].concat(),
        );
        write(
            "token",
            &format!("local-footer-{name}"),
            &[&[2u8], footer].concat(),
        );
    }
    let mut claims = heimdall::test_helpers::claims("dave", &["user", "editor"]);
    claims.aud = Audience::Many(vec!["api".into(), "web".into()]);
    claims.attr.insert("plan".into(), serde_json::json!("pro"));
    let documents = [
        ("claims", serde_json::to_vec(&claims).expect("claims")),
        (
            "claims-odd-times",
            br#"{"sub":"x","exp":"9999-12-31T23:59:59Z","nbf":"0000-01-01T00:00:00+23:59","iat":"2026-02-30T00:00:00Z","aud":"api","roles":[],"extra":1.5e308}"#.to_vec(),
        ),
        ("claims-empty", b"{}".to_vec()),
    ];
    for (name, document) in documents {
        write("token", name, &[&[3u8], document.as_slice()].concat());
    }
}

/// `check_request` seeds: the requests Envoy sends, for each rule of the embedded configuration.
fn write_check_requests(user: &str, editor: &str) {
    let plain =
        |path: &str, token: &str| heimdall::test_helpers::bearer_check_request(path, token, &[]);
    let mut seeds: Vec<(&str, CheckRequest)> = vec![
        ("public", plain("/public/logo.png", "")),
        ("admin-user", plain("/admin/users", user)),
        ("documents-get", plain("/api/documents/42", user)),
        ("documents-editor", plain("/api/documents/42?x=1", editor)),
        ("default", plain("/anything", user)),
        ("dot-segment", plain("/public/../admin/x", user)),
        ("semicolon", plain("/admin;x/users", user)),
        (
            "browser",
            heimdall::test_helpers::bearer_check_request(
                "/admin/x",
                "v4.local.bad",
                &[("accept", "text/html"), ("x-user-id", "root")],
            ),
        ),
        ("empty", CheckRequest::default()),
    ];

    let mut delete = plain("/api/documents/42", user);
    let http = http_mut(&mut delete);
    http.method = "delete".into();
    seeds.push(("documents-delete-lowercase", delete));

    // `encode_raw_headers: true`: the header list instead of the map, with a duplicate.
    let mut raw = plain("/api/documents", editor);
    let http = http_mut(&mut raw);
    let headers = std::mem::take(&mut http.headers);
    let mut list: Vec<HeaderValue> = headers
        .into_iter()
        .map(|(key, value)| HeaderValue {
            key,
            raw_value: value.into_bytes(),
            ..HeaderValue::default()
        })
        .collect();
    list.push(HeaderValue {
        key: "authorization".into(),
        raw_value: format!("Bearer {user}").into_bytes(),
        ..HeaderValue::default()
    });
    http.header_map = Some(HeaderMap { headers: list });
    seeds.push(("raw-headers-duplicate", raw));

    // A route that names its rule, and the peer's address.
    let mut named = plain("/admin/x", user);
    let attributes = named.attributes.as_mut().expect("attributes");
    attributes
        .context_extensions
        .insert("heimdall_rule".into(), "public".into());
    attributes.source = Some(Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                ..SocketAddress::default()
            })),
        }),
        principal: "spiffe://cluster.local/ns/default/sa/web".into(),
        ..Peer::default()
    });
    seeds.push(("named-rule", named));

    for (name, check) in seeds {
        write("check_request", name, &check.encode_to_vec());
    }
}

fn http_mut(
    check: &mut CheckRequest,
) -> &mut envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest {
    check
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("an HTTP request")
}
