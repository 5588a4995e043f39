//! The `oauth2_introspection` authenticator against the dev OpenID provider's opaque access
//! tokens and its RFC 7662 endpoint, through a real Envoy: an active token maps to the
//! principal; a revoked one is 401 at once without the cache and after the cache's TTL with it
//! (the documented trade-off); missing scope or audience is 401; concurrent requests with one
//! new token make one call; an endpoint that is down or answers garbage is 503, never an allow,
//! and is not cached.

use futures_util::StreamExt as _;
use heimdall::test_helpers::echo::EchoUpstream;
use heimdall::test_helpers::idp::{IdpStack, client_secret_file};
use heimdall::test_helpers::oidc::{OPAQUE_API, OidcProvider, SERVICE_ROLES};
use reqwest::StatusCode;

const ACTIVE: &str = r#"heimdall_introspections_total{mechanism="cached",outcome="active"}"#;

/// The same introspection (endpoint by discovery, client_secret_basic) with its answer cache
/// (`cached`, `/cached/*`) and without (`uncached`, `/api/*`); `garbage` (`/garbage/*`) asks an
/// endpoint that answers 200 with JSON that is no introspection answer.
fn config(provider: &OidcProvider, garbage: &EchoUpstream) -> String {
    let common = format!(
        r#"issuer: "{issuer}"
        client_id: "{client}"
        client_secret: {{file: "{secret}"}}
        token_type: Bearer
        scopes: ["api:read"]
        audience: ["{OPAQUE_API}"]
        claims: {{subject: client_id, roles: roles}}"#,
        issuer = provider.issuer,
        client = provider.client_id,
        secret = client_secret_file().display(),
    );
    format!(
        r#"
version: "1"
mechanisms:
  authenticators:
    - id: cached
      type: oauth2_introspection
      config:
        {common}
    - id: uncached
      type: oauth2_introspection
      config:
        {common}
        cache: {{enabled: false}}
    - id: garbage
      type: oauth2_introspection
      config:
        introspection_url: "http://{echo}/introspect"
  authorizers:
    - id: readers
      type: cel
      config: {{expression: '"reader" in subject.roles'}}
  finalizers:
    - id: user_headers
      type: header
      config: {{headers: {{X-User-ID: subject.id, X-User-Roles: subject.roles}}}}
rules:
  - id: uncached
    match: {{paths: [/api/*rest]}}
    execute:
      - authenticator: uncached
      - authorizer: readers
      - finalizer: user_headers
  - id: cached
    match: {{paths: [/cached/*rest]}}
    execute:
      - authenticator: cached
      - authorizer: readers
  - id: garbage
    match: {{paths: [/garbage/*rest]}}
    execute:
      - authenticator: garbage
      - authorizer: readers
"#,
        echo = garbage.addr,
    )
}

async fn start() -> Option<(IdpStack, EchoUpstream)> {
    let garbage = EchoUpstream::start().await;
    let stack = IdpStack::start(|p| config(p, &garbage)).await?;
    Some((stack, garbage))
}

async fn opaque(stack: &IdpStack, scope: &str, resource: Option<&str>) -> String {
    stack
        .provider
        .client_credentials_token(scope, resource)
        .await
        .unwrap()
}

#[tokio::test]
async fn active_tokens_pass_and_revoked_or_unfit_ones_are_401() {
    let Some((stack, _garbage)) = start().await else {
        return;
    };
    let token = opaque(&stack, "api:read", Some(OPAQUE_API)).await;
    let (status, echoed) = stack.get("/api/items", &token).await;
    assert_eq!(status, StatusCode::OK, "{echoed}");
    assert_eq!(echoed["headers"]["x-user-id"], stack.provider.client_id);
    let roles = echoed["headers"]["x-user-roles"].as_str().unwrap();
    for role in SERVICE_ROLES {
        assert!(roles.contains(role), "{roles}");
    }
    assert_eq!(stack.status("/cached/items", &token).await, StatusCode::OK);

    // Revoked at the provider: inactive at once without the cache; with the cache the answer
    // stands until `cache.max_ttl` (60 s by default) — the price of not asking every time.
    stack.provider.revoke(&token).await.unwrap();
    assert_eq!(
        stack.status("/api/items", &token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(stack.status("/cached/items", &token).await, StatusCode::OK);
    // A fresh token revoked before its first use is refused by both.
    let fresh = opaque(&stack, "api:read", Some(OPAQUE_API)).await;
    stack.provider.revoke(&fresh).await.unwrap();
    assert_eq!(
        stack.status("/cached/items", &fresh).await,
        StatusCode::UNAUTHORIZED
    );

    for (what, token) in [
        (
            "without the api:read scope",
            opaque(&stack, "api:write", Some(OPAQUE_API)).await,
        ),
        (
            "for another audience",
            opaque(
                &stack,
                "api:read",
                Some("http://127.0.0.1/other-opaque-api"),
            )
            .await,
        ),
        (
            "without any audience",
            opaque(&stack, "api:read", None).await,
        ),
        (
            "unknown to the provider",
            "not-a-token-of-the-provider".to_owned(),
        ),
    ] {
        assert_eq!(
            stack.status("/api/items", &token).await,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
    assert_eq!(
        stack
            .metric(r#"heimdall_step_errors_total{mechanism="uncached",kind="authentication"}"#)
            .await,
        5.0
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_new_token_make_one_call() {
    let Some((stack, _garbage)) = start().await else {
        return;
    };
    let token = opaque(&stack, "api:read", Some(OPAQUE_API)).await;
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..20)
        .map(|_| stack.status("/cached/items", &token))
        .buffer_unordered(20)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(stack.metric(ACTIVE).await, 1.0);
}

#[tokio::test]
async fn an_endpoint_down_or_answering_garbage_is_503_and_not_cached() {
    let Some((mut stack, _garbage)) = start().await else {
        return;
    };
    let token = opaque(&stack, "api:read", Some(OPAQUE_API)).await;
    assert_eq!(
        stack.status("/garbage/items", &token).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    stack.provider.stop().await;
    for path in ["/api/items", "/cached/items"] {
        assert_eq!(
            stack.status(path, &token).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}"
        );
    }
    assert_eq!(
        stack
            .metric(r#"heimdall_introspections_total{mechanism="cached",outcome="error"}"#)
            .await,
        1.0
    );
    // Back (it forgot every token): the failure was not cached, the token is now inactive.
    stack.provider.start_again().await;
    assert_eq!(
        stack.status("/cached/items", &token).await,
        StatusCode::UNAUTHORIZED
    );
}
