//! The `jwt` authenticator against the dev OpenID provider's JWT access tokens, through a real
//! Envoy: valid tokens map to the principal; expired, foreign-audience, foreign-issuer,
//! unsigned, HMAC-with-the-public-key, foreign-key and tampered tokens are 401; a key rotation at
//! the provider is picked up without restart; a provider down with no keys is 503; a flood of
//! unknown `kid`s costs at most one or two fetches.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use heimdall::test_helpers::idp::IdpStack;
use heimdall::test_helpers::jws;
use heimdall::test_helpers::oidc::{JWT_API, OidcProvider};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SHORT_LIVED_API: &str = "http://127.0.0.1/short-lived/api";
const OTHER_API: &str = "http://127.0.0.1/other-api";
const FETCHES_OK: &str = r#"heimdall_jwks_fetches_total{mechanism="idp",outcome="ok"}"#;
const FETCHES_ERROR: &str = r#"heimdall_jwks_fetches_total{mechanism="idp",outcome="error"}"#;
const AUTHN_ERRORS: &str = r#"heimdall_step_errors_total{mechanism="idp",kind="authentication"}"#;

/// `idp` (discovery from the issuer) on `/api/*`, and `wrong_issuer` (the provider's keys, but
/// another expected issuer) on `/wrong-issuer/*`; `extra` is appended to `idp`'s config.
fn config(provider: &OidcProvider, extra: &str) -> String {
    format!(
        r#"
version: "1"
mechanisms:
  authenticators:
    - id: idp
      type: jwt
      config:
        issuer: "{issuer}"
        audience: ["{JWT_API}", "{SHORT_LIVED_API}"]
        leeway: 0s
        claims: {{subject: sub, roles: roles, attributes: {{client: client_id}}}}
        {extra}
    - id: wrong_issuer
      type: jwt
      config:
        issuer: "http://127.0.0.1:1"
        jwks_url: "{jwks}"
        audience: ["{JWT_API}"]
  authorizers:
    - id: readers
      type: cel
      config: {{expression: '"reader" in subject.roles'}}
  finalizers:
    - id: user_headers
      type: header
      config: {{headers: {{X-User-ID: subject.id, X-User-Client: subject.attr.client}}}}
rules:
  - id: api
    match: {{paths: [/api/*rest]}}
    execute:
      - authenticator: idp
      - authorizer: readers
      - finalizer: user_headers
  - id: wrong_issuer
    match: {{paths: [/wrong-issuer/*rest]}}
    execute:
      - authenticator: wrong_issuer
      - authorizer: readers
"#,
        issuer = provider.issuer,
        jwks = provider.jwks_uri(),
    )
}

async fn token(stack: &IdpStack, resource: &str) -> String {
    stack
        .provider
        .client_credentials_token("api:read", Some(resource))
        .await
        .unwrap()
}

#[tokio::test]
async fn valid_tokens_pass_with_their_principal_and_forgeries_are_401() {
    let Some(stack) = IdpStack::start(|p| config(p, "")).await else {
        return;
    };
    let valid = token(&stack, JWT_API).await;
    let (status, echoed) = stack.get("/api/items", &valid).await;
    assert_eq!(status, StatusCode::OK, "{echoed}");
    assert_eq!(echoed["headers"]["x-user-id"], stack.provider.client_id);
    assert_eq!(echoed["headers"]["x-user-client"], stack.provider.client_id);
    // A second token is verified with the keys in memory.
    let second = token(&stack, JWT_API).await;
    assert_eq!(stack.status("/api/items", &second).await, StatusCode::OK);
    assert_eq!(stack.metric(FETCHES_OK).await, 1.0);

    let (header, claims) = jws::decode(&valid).unwrap();
    let kid = header["kid"].as_str().unwrap();
    let jwks: Value = stack
        .stack
        .client
        .get(stack.provider.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_jwk = &jwks["keys"][0];
    let mut as_bob = claims.clone();
    as_bob["sub"] = json!("bob");
    let n = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        public_jwk["n"].as_str().unwrap(),
    )
    .unwrap();
    let forgeries = [
        ("alg none", jws::unsigned(kid, &claims)),
        (
            "HS256 keyed with the public JWK",
            jws::hs256(public_jwk.to_string().as_bytes(), kid, &claims).unwrap(),
        ),
        (
            "HS256 keyed with the public modulus",
            jws::hs256(&n, kid, &claims).unwrap(),
        ),
        (
            "a foreign key under the provider's kid",
            jws::rs256_foreign(kid, &claims).unwrap(),
        ),
        (
            "a foreign key under its own kid",
            jws::rs256_foreign("attacker-key", &claims).unwrap(),
        ),
        (
            "claims swapped under a real signature",
            jws::with_claims(&valid, &as_bob).unwrap(),
        ),
        ("another audience", token(&stack, OTHER_API).await),
        ("not a JWT", "opaque-looking-token".to_owned()),
    ];
    for (what, forged) in &forgeries {
        assert_eq!(
            stack.status("/api/items", forged).await,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
    assert_eq!(
        stack.metric(AUTHN_ERRORS).await,
        forgeries.len() as f64,
        "every refusal is an authentication error"
    );
    // The foreign kid asked for at most one more fetch (rate limited to one per 10 s).
    assert!(stack.metric(FETCHES_OK).await <= 2.0);

    // Valid signature, other expected issuer.
    assert_eq!(
        stack.status("/wrong-issuer/items", &valid).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        stack
            .metric(r#"heimdall_step_errors_total{mechanism="wrong_issuer",kind="authentication"}"#)
            .await,
        1.0
    );

    // Expired: the provider's 2-second tokens, with no leeway; accepted (and cached) while
    // valid, refused once `exp` passed.
    let short = token(&stack, SHORT_LIVED_API).await;
    assert_eq!(stack.status("/api/items", &short).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        stack.status("/api/items", &short).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_provider_down_is_503_and_its_new_keys_are_used_without_restart() {
    let Some(mut stack) = IdpStack::start(|p| config(p, "min_refresh_interval: 1s")).await else {
        return;
    };
    let before = token(&stack, JWT_API).await;
    stack.provider.stop().await;
    // No key was ever fetched: the provider being down is a Communication error, never an allow.
    assert_eq!(
        stack.status("/api/items", &before).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(stack.metric(FETCHES_ERROR).await, 1.0);
    assert_eq!(
        stack
            .metric(r#"heimdall_step_errors_total{mechanism="idp",kind="communication"}"#)
            .await,
        1.0
    );

    // Back with new signing keys (a rotation); heimdall is not restarted.
    stack.provider.start_again().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = token(&stack, JWT_API).await;
    assert_ne!(
        jws::decode(&after).unwrap().0["kid"],
        jws::decode(&before).unwrap().0["kid"]
    );
    assert_eq!(stack.status("/api/items", &after).await, StatusCode::OK);
    assert_eq!(stack.metric(FETCHES_OK).await, 1.0);
    // The token of the retired key is refused.
    assert_eq!(
        stack.status("/api/items", &before).await,
        StatusCode::UNAUTHORIZED
    );

    // Another rotation while heimdall holds keys: the unknown kid fetches once more.
    stack.provider.stop().await;
    stack.provider.start_again().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = token(&stack, JWT_API).await;
    assert_eq!(stack.status("/api/items", &rotated).await, StatusCode::OK);
    assert_eq!(stack.metric(FETCHES_OK).await, 2.0);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_at_most_two_fetches() {
    let Some(stack) = IdpStack::start(|p| config(p, "min_refresh_interval: 5s")).await else {
        return;
    };
    let valid = token(&stack, JWT_API).await;
    assert_eq!(stack.status("/api/items", &valid).await, StatusCode::OK);
    assert_eq!(stack.metric(FETCHES_OK).await, 1.0);
    let (_, claims) = jws::decode(&valid).unwrap();
    // Past the interval: the first unknown kid may fetch again, the rest must not.
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let forged: Vec<String> = (0..200)
        .map(|i| {
            jws::rs256_foreign(
                &format!("random-kid-{i}-{}", rand::random::<u64>()),
                &claims,
            )
        })
        .collect::<Result<_, _>>()
        .unwrap();
    let started = Instant::now();
    let statuses: Vec<StatusCode> = futures_util::stream::iter(&forged)
        .map(|t| stack.status("/api/items", t))
        .buffer_unordered(25)
        .collect()
        .await;
    let took = started.elapsed();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    let refetches = stack.metric(FETCHES_OK).await + stack.metric(FETCHES_ERROR).await - 1.0;
    // One fetch for the first unknown kid, then at most one per 5 s of flood.
    let bound = (1.0 + (took.as_secs_f64() / 5.0).floor()).max(2.0);
    assert!(
        (1.0..=bound).contains(&refetches),
        "{refetches} fetches for 200 unknown kids in {took:?}"
    );
    // The valid token still passes.
    assert_eq!(stack.status("/api/items", &valid).await, StatusCode::OK);
}
