//! The `jwt` and `paseto` finalizers through a real Envoy: the echo upstream reports the token it
//! received, and an independent verifier (node: the npm package `jose` for JWTs, node's own
//! Ed25519 for PASETO) checks it against heimdall's published keys, as an upstream would.

use std::collections::HashMap;
use std::path::Path;

use heimdall::test_helpers::stack::{Stack, StackBuilder};
use heimdall::test_helpers::token_verifier::{TokenVerifier, jwt_key_file};
use heimdall::test_helpers::{TEST_SYMMETRIC_KEY, claims, mint, test_config};
use heimdall::tokens::{Audience, JwtAlgorithm, Purpose};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `tokens.jwt_keys` are filled in per test; the audience heimdall's own tokens carry differs
/// from the upstream's, so the upstream's token is never a credential heimdall accepts.
const RULES: &str = r#"
version: "1"
tokens:
  issuer: heimdall
  audience: heimdall-tests
  jwt_keys: []
mechanisms:
  authenticators:
    - id: bearer
      type: paseto
  authorizers:
    - id: allow
      type: allow
  finalizers:
    - id: orders_jwt
      type: jwt
      config:
        audience: [orders]
        ttl: 1m
        claims:
          email: subject.attr.email
          roles: subject.roles
          tenant: '"tenant" in subject.attr ? subject.attr.tenant : null'
    - id: orders_paseto
      type: paseto
      config:
        audience: [orders]
        header: x-upstream-token
        scheme: ""
        claims:
          email: subject.attr.email
rules:
  - id: orders
    match: { paths: ["/orders/*rest"] }
    execute:
      - authenticator: bearer
      - authorizer: allow
      - finalizer: orders_jwt
  - id: reports
    match: { paths: ["/reports/*rest"] }
    execute:
      - authenticator: bearer
      - authorizer: allow
      - finalizer: orders_paseto
"#;

/// The stack with `jwt_keys` (PEM files) as heimdall's JWT keys, behind a real Envoy.
async fn stack(jwt_keys: &[&Path]) -> Option<Stack> {
    let keys: Vec<Value> = jwt_keys
        .iter()
        .map(|path| json!({ "file": path.display().to_string() }))
        .collect();
    let rules = RULES.replace("jwt_keys: []", &format!("jwt_keys: {}", Value::from(keys)));
    // The JWT keys as `serve` reads them (`Config::keyring`), plus the test PASETO keys.
    let mut keyring = test_config(&rules)
        .keyring(&HashMap::<String, String>::new())
        .unwrap();
    keyring.add_raw_symmetric(TEST_SYMMETRIC_KEY).unwrap();
    keyring.add_ephemeral_signing_key().unwrap();
    StackBuilder::new(&rules)
        .keys(keyring)
        .envoy()
        .start()
        .await
}

/// A bearer token heimdall accepts, for `sub` with an email.
fn client_token(stack: &Stack, sub: &str) -> String {
    let mut claims = claims(sub, &["user"]);
    claims.aud = Audience::One("heimdall-tests".into());
    claims
        .attr
        .insert("email".into(), format!("{sub}@example.com").into());
    mint(&stack.keys, Purpose::Public, &claims)
}

/// What the upstream received in `header` for `path`, sent through Envoy as `sub`.
async fn received(stack: &Stack, path: &str, sub: &str, header: &str) -> String {
    let envoy = stack.envoy.as_ref().unwrap();
    let response = stack
        .client
        .get(envoy.url(path))
        .bearer_auth(client_token(stack, sub))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path} as {sub}");
    let echoed: Value = response.json().await.unwrap();
    echoed["headers"][header]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream received no `{header}`: {echoed}"))
        .to_owned()
}

async fn upstream_jwt(stack: &Stack, sub: &str) -> String {
    let value = received(stack, "/orders/42", sub, "authorization").await;
    value.strip_prefix("Bearer ").unwrap().to_owned()
}

async fn jwks(stack: &Stack) -> Value {
    let response = stack
        .client
        .get(format!(
            "http://{}/.well-known/jwks.json",
            stack.heimdall.http_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/jwk-set+json"
    );
    response.json().await.unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_upstream_receives_a_jwt_that_jose_verifies_against_the_jwks() {
    let Some(verifier) = TokenVerifier::require() else {
        return;
    };
    let (key, _) = jwt_key_file(JwtAlgorithm::EdDsa);
    let Some(stack) = stack(&[&key]).await else {
        return;
    };
    let token = upstream_jwt(&stack, "alice").await;
    let verified = verifier
        .jwt(&token, stack.heimdall.http_addr, "heimdall", "orders")
        .await
        .unwrap_or_else(|e| panic!("jose refused the upstream's token: {e}"));
    let published = jwks(&stack).await;
    assert_eq!(kids(&published).len(), 1);
    let jwk = &published["keys"][0];
    assert_eq!(
        (&jwk["kty"], &jwk["crv"], &jwk["alg"], &jwk["use"]),
        (
            &json!("OKP"),
            &json!("Ed25519"),
            &json!("EdDSA"),
            &json!("sig")
        )
    );
    assert_eq!(verified.header["alg"], "EdDSA");
    assert_eq!(verified.header["typ"], "JWT");
    assert_eq!(verified.header["kid"], jwk["kid"]);
    let claims = &verified.payload;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], "heimdall");
    assert_eq!(claims["aud"], "orders");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["roles"], json!(["user"]));
    assert!(claims.get("tenant").is_none(), "a null claim is left out");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // Another audience is refused by the verifier: it checks, it does not just decode.
    let err = verifier
        .jwt(&token, stack.heimdall.http_addr, "heimdall", "billing")
        .await
        .unwrap_err();
    assert!(err.contains("aud"), "{err}");
    // The client's own credential never reaches the upstream: the header was replaced.
    assert!(!token.starts_with("v4."));
}

#[tokio::test]
async fn an_unchanged_subject_gets_the_cached_token_and_another_subject_its_own() {
    let (key, _) = jwt_key_file(JwtAlgorithm::Es256);
    let Some(stack) = stack(&[&key]).await else {
        return;
    };
    let first = upstream_jwt(&stack, "alice").await;
    // A fresh client token (new jti, new iat) for the same subject: the same upstream token.
    let second = upstream_jwt(&stack, "alice").await;
    assert_eq!(first, second, "same subject and claims: signed once");
    let bob = upstream_jwt(&stack, "bob").await;
    assert_ne!(bob, first);
    let header = jsonwebtoken::decode_header(&bob).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let payload: Value =
        serde_json::from_slice(&base64_url(bob.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(payload["sub"], "bob");
}

fn base64_url(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// Rotation as the docs describe it: the new key first (it signs), the old one after it (still
/// published), across a restart. Tokens of both verify against the new JWK Set.
#[tokio::test]
async fn after_a_rotation_new_tokens_use_the_new_key_and_old_tokens_still_verify() {
    let Some(verifier) = TokenVerifier::require() else {
        return;
    };
    let (old_key, _) = jwt_key_file(JwtAlgorithm::EdDsa);
    let (new_key, _) = jwt_key_file(JwtAlgorithm::Es256);
    let Some(before) = stack(&[&old_key]).await else {
        return;
    };
    let old_token = upstream_jwt(&before, "alice").await;
    let old_kid = kids(&jwks(&before).await).remove(0);
    drop(before);

    let Some(after) = stack(&[&new_key, &old_key]).await else {
        return;
    };
    let published = kids(&jwks(&after).await);
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(published[1], old_kid, "a key keeps its kid across restarts");
    let new_token = upstream_jwt(&after, "alice").await;
    let side_port = after.heimdall.http_addr;
    let new = verifier
        .jwt(&new_token, side_port, "heimdall", "orders")
        .await
        .unwrap_or_else(|e| panic!("the new key's token: {e}"));
    assert_eq!(new.header["kid"], published[0].as_str());
    assert_eq!(new.header["alg"], "ES256");
    let old = verifier
        .jwt(&old_token, side_port, "heimdall", "orders")
        .await
        .unwrap_or_else(|e| panic!("the old key's token after the rotation: {e}"));
    assert_eq!(old.header["kid"], old_kid.as_str());
    assert_eq!(old.payload["sub"], "alice");
}

#[tokio::test]
async fn the_upstream_receives_a_paseto_token_verified_independently() {
    let Some(verifier) = TokenVerifier::require() else {
        return;
    };
    let (key, _) = jwt_key_file(JwtAlgorithm::EdDsa);
    let Some(stack) = stack(&[&key]).await else {
        return;
    };
    let token = received(&stack, "/reports/q3", "carol", "x-upstream-token").await;
    assert!(token.starts_with("v4.public."), "{token}");
    let verified = verifier
        .paseto(&token, stack.heimdall.http_addr, "heimdall", "orders")
        .await
        .unwrap_or_else(|e| panic!("the upstream's PASETO token: {e}"));
    assert_eq!(verified.payload["sub"], "carol");
    assert_eq!(verified.payload["email"], "carol@example.com");
    assert!(
        verified.header["kid"]
            .as_str()
            .is_some_and(|k| k.starts_with("k4.pid."))
    );
    // The verifier checks the signature: one changed character of the claims is refused.
    let mut tampered = token.clone().into_bytes();
    let at = "v4.public.".len() + 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let err = verifier
        .paseto(
            &String::from_utf8(tampered).unwrap(),
            stack.heimdall.http_addr,
            "heimdall",
            "orders",
        )
        .await
        .unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
    // Replayed at heimdall, the upstream's token is no credential: wrong audience.
    let replayed = stack
        .client
        .get(stack.envoy.as_ref().unwrap().url("/reports/q3"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::UNAUTHORIZED);
}
