//! The development OpenID provider (`infra/oidc/dev-provider.mjs`) and the testkit that drives
//! it: discovery, the code flow with PKCE through the headless browser, the ID token's claims,
//! refresh-token rotation and reuse, revocation, RP-initiated logout, and a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use heimdall::test_helpers::free_port;
use heimdall::test_helpers::oidc::{
    HeadlessError, OidcProvider, OidcProviderOptions, SCOPES, login_headless, logout_headless,
};
use openidconnect::{CsrfToken, Nonce, PkceCodeChallenge, PkceCodeVerifier};
use reqwest::{StatusCode, Url};
use serde_json::Value;

/// A browser: keeps cookies, follows no redirects.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The relying party's side: no cookies, no redirects.
fn backend() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The provider logged no internal error.
fn assert_no_server_error(provider: &OidcProvider) {
    let log = provider.log();
    assert!(!log.contains("server error"), "{log}");
}

/// A redirect URI nothing listens on.
fn unused_uri(path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", free_port())
}

async fn provider() -> Option<(OidcProvider, String, String)> {
    let callback = unused_uri("/login/callback");
    let after_logout = unused_uri("/");
    let options = OidcProviderOptions {
        redirect_uris: vec![callback.clone()],
        post_logout_redirect_uris: vec![after_logout.clone()],
        ..OidcProviderOptions::default()
    };
    let provider = OidcProvider::start(options).await?;
    Some((provider, callback, after_logout))
}

/// One authorization request: its URL and what the relying party keeps.
struct Request {
    url: String,
    state: String,
    nonce: String,
    verifier: PkceCodeVerifier,
}

fn authorization_request(provider: &OidcProvider, redirect_uri: &str) -> Request {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let state = CsrfToken::new_random().secret().clone();
    let nonce = Nonce::new_random().secret().clone();
    let url = Url::parse_with_params(
        &provider.authorization_endpoint(),
        [
            ("response_type", "code"),
            ("client_id", provider.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", SCOPES),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap();
    Request {
        url: url.into(),
        state,
        nonce,
        verifier,
    }
}

fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}

/// The claims of a JWT, unverified.
fn payload(jwt: &str) -> Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS in compact form: {jwt}");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

/// POSTs a token request authenticated with client_secret_basic.
async fn token(provider: &OidcProvider, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = backend()
        .post(provider.token_endpoint())
        .basic_auth(&provider.client_id, Some(&provider.client_secret))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Logs in as `user` and exchanges the code: the token response.
async fn log_in(
    provider: &OidcProvider,
    browser: &reqwest::Client,
    callback: &str,
    user: &str,
) -> Value {
    let request = authorization_request(provider, callback);
    let redirect = login_headless(browser, &request.url, user).await.unwrap();
    assert!(redirect.as_str().starts_with(callback), "{redirect}");
    assert_eq!(
        query(&redirect, "state").as_deref(),
        Some(request.state.as_str())
    );
    let code = query(&redirect, "code").unwrap_or_else(|| panic!("no code: {redirect}"));
    let (status, tokens) = token(
        provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", callback),
            ("code_verifier", request.verifier.secret()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(
        payload(tokens["id_token"].as_str().unwrap())["nonce"],
        request.nonce.as_str()
    );
    tokens
}

#[tokio::test]
async fn discovery_names_the_testkit_endpoints() {
    let Some((provider, _, _)) = provider().await else {
        return;
    };
    let discovery: Value = backend()
        .get(provider.discovery_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], provider.issuer.as_str());
    for (field, url) in [
        ("authorization_endpoint", provider.authorization_endpoint()),
        ("token_endpoint", provider.token_endpoint()),
        ("userinfo_endpoint", provider.userinfo_endpoint()),
        ("jwks_uri", provider.jwks_uri()),
        ("revocation_endpoint", provider.revocation_endpoint()),
        ("end_session_endpoint", provider.end_session_endpoint()),
    ] {
        assert_eq!(discovery[field], url.as_str(), "{field}");
    }
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    let scopes = discovery["scopes_supported"].as_array().unwrap();
    for scope in SCOPES.split(' ') {
        assert!(scopes.iter().any(|s| s == scope), "{scope} in {scopes:?}");
    }
}

#[tokio::test]
async fn code_flow_with_pkce_brings_the_claims_and_rotating_refresh_tokens() {
    let Some((provider, callback, _)) = provider().await else {
        return;
    };
    let browser = browser();
    let request = authorization_request(&provider, &callback);
    let redirect = login_headless(&browser, &request.url, "alice")
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", provider.log()));
    assert!(redirect.as_str().starts_with(&callback), "{redirect}");
    assert_eq!(
        query(&redirect, "state").as_deref(),
        Some(request.state.as_str())
    );
    assert_eq!(
        query(&redirect, "iss").as_deref(),
        Some(provider.issuer.as_str())
    );
    let code = query(&redirect, "code").unwrap_or_else(|| panic!("no code: {redirect}"));

    // The code needs the PKCE verifier.
    let (status, body) = token(
        &provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &callback),
            (
                "code_verifier",
                "a-verifier-of-sufficient-length-but-the-wrong-one-0123456789",
            ),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");

    // A fresh code (single sign-on now: no login form), exchanged with the right verifier.
    let tokens = log_in(&provider, &browser, &callback, "alice").await;
    for field in ["id_token", "access_token", "refresh_token"] {
        assert!(tokens[field].is_string(), "{field} in {tokens}");
    }
    assert_eq!(tokens["token_type"], "Bearer");
    let id_token = payload(tokens["id_token"].as_str().unwrap());
    assert_eq!(id_token["iss"], provider.issuer.as_str());
    assert_eq!(id_token["aud"], provider.client_id.as_str());
    assert_eq!(id_token["sub"], "alice");
    assert_eq!(id_token["roles"], serde_json::json!(["user", "editor"]));
    assert_eq!(id_token["name"], "Alice Example");
    assert_eq!(id_token["email"], "alice@example.com");
    assert_eq!(id_token["email_verified"], true);

    // Userinfo with the access token.
    let userinfo: Value = backend()
        .get(provider.userinfo_endpoint())
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["sub"], "alice");
    assert_eq!(userinfo["roles"], serde_json::json!(["user", "editor"]));

    // A refresh works once and hands out a new refresh token ...
    let first = tokens["refresh_token"].as_str().unwrap();
    let (status, refreshed) = token(
        &provider,
        &[("grant_type", "refresh_token"), ("refresh_token", first)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let second = refreshed["refresh_token"].as_str().unwrap();
    assert_ne!(second, first);
    assert!(refreshed["access_token"].is_string());
    assert_eq!(
        payload(refreshed["id_token"].as_str().unwrap())["roles"],
        serde_json::json!(["user", "editor"])
    );

    // ... and the old one is refused afterwards.
    let (status, reused) = token(
        &provider,
        &[("grant_type", "refresh_token"), ("refresh_token", first)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reused}");
    assert_eq!(reused["error"], "invalid_grant");

    // The reuse revoked the grant: the refresh token that replaced it is gone too.
    let (status, after_reuse) = token(
        &provider,
        &[("grant_type", "refresh_token"), ("refresh_token", second)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{after_reuse}");
    assert_eq!(after_reuse["error"], "invalid_grant");
    assert_no_server_error(&provider);
}

#[tokio::test]
async fn an_unknown_user_gets_no_code_and_a_known_one_still_can() {
    let Some((provider, callback, _)) = provider().await else {
        return;
    };
    let browser = browser();
    let request = authorization_request(&provider, &callback);
    let refused = login_headless(&browser, &request.url, "mallory").await;
    assert_eq!(
        refused,
        Err(HeadlessError::LoginRefused("mallory".into())),
        "{}",
        provider.log()
    );

    // The same browser, with the refused session's cookie, signs in as bob.
    let tokens = log_in(&provider, &browser, &callback, "bob").await;
    let id_token = payload(tokens["id_token"].as_str().unwrap());
    assert_eq!(id_token["sub"], "bob");
    assert_eq!(id_token["roles"], serde_json::json!(["user"]));
    assert_no_server_error(&provider);
}

#[tokio::test]
async fn requests_without_pkce_or_with_a_foreign_redirect_uri_are_refused() {
    let Some((provider, callback, _)) = provider().await else {
        return;
    };
    let browser = browser();
    let without_pkce = Url::parse_with_params(
        &provider.authorization_endpoint(),
        [
            ("response_type", "code"),
            ("client_id", provider.client_id.as_str()),
            ("redirect_uri", callback.as_str()),
            ("scope", "openid"),
            ("state", "s1"),
        ],
    )
    .unwrap();
    let redirect = login_headless(&browser, without_pkce.as_str(), "alice")
        .await
        .unwrap();
    assert!(redirect.as_str().starts_with(&callback), "{redirect}");
    assert_eq!(
        query(&redirect, "error").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(query(&redirect, "state").as_deref(), Some("s1"));
    assert_eq!(query(&redirect, "code"), None);

    // An unregistered redirect URI is never redirected to: the provider shows an error page.
    let foreign = authorization_request(&provider, &unused_uri("/elsewhere"));
    match login_headless(&browser, &foreign.url, "alice").await {
        Err(HeadlessError::Failed(message)) => {
            assert!(message.contains("redirect_uri"), "{message}");
        }
        other => panic!("expected an error page, got {other:?}"),
    }

    // The token endpoint wants the client's secret.
    let response = backend()
        .post(provider.token_endpoint())
        .basic_auth(&provider.client_id, Some("wrong"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revocation_ends_a_refresh_token() {
    let Some((provider, callback, _)) = provider().await else {
        return;
    };
    let tokens = log_in(&provider, &browser(), &callback, "alice").await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let response = backend()
        .post(provider.revocation_endpoint())
        .basic_auth(&provider.client_id, Some(&provider.client_secret))
        .form(&[("token", refresh), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = token(
        &provider,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn logout_signs_out_and_revokes_the_grant() {
    let Some((provider, callback, after_logout)) = provider().await else {
        return;
    };
    let browser = browser();
    let tokens = log_in(&provider, &browser, &callback, "alice").await;

    // Single sign-on: a second authorization goes straight back with a code.
    let again = authorization_request(&provider, &callback);
    let redirect = login_headless(&browser, &again.url, "ignored")
        .await
        .unwrap();
    assert!(query(&redirect, "code").is_some(), "{redirect}");

    let end_session = Url::parse_with_params(
        &provider.end_session_endpoint(),
        [
            ("id_token_hint", tokens["id_token"].as_str().unwrap()),
            ("post_logout_redirect_uri", after_logout.as_str()),
            ("state", "bye"),
        ],
    )
    .unwrap();
    let landed = logout_headless(&browser, end_session.as_str())
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", provider.log()));
    assert!(landed.as_str().starts_with(&after_logout), "{landed}");
    assert_eq!(query(&landed, "state").as_deref(), Some("bye"));

    // The grant is gone with the session, and the next authorization asks for a login again.
    let (status, body) = token(
        &provider,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        login_headless(&browser, &again.url, "mallory").await,
        Err(HeadlessError::LoginRefused("mallory".into()))
    );

    // Without a post-logout redirect URI the browser ends on the provider's own page.
    log_in(&provider, &browser, &callback, "bob").await;
    let landed = logout_headless(&browser, &provider.end_session_endpoint())
        .await
        .unwrap();
    assert!(landed.as_str().starts_with(&provider.issuer), "{landed}");
    assert_no_server_error(&provider);
}

#[tokio::test]
async fn offline_access_granted_with_prompt_consent_outlives_the_logout() {
    let Some((provider, callback, _)) = provider().await else {
        return;
    };
    let browser = browser();
    let request = authorization_request(&provider, &callback);
    let url = format!("{}&prompt=consent", request.url);
    let redirect = login_headless(&browser, &url, "alice").await.unwrap();
    let code = query(&redirect, "code").unwrap_or_else(|| panic!("no code: {redirect}"));
    let (status, tokens) = token(
        &provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &callback),
            ("code_verifier", request.verifier.secret()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(
        tokens["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "offline_access"),
        "{tokens}"
    );

    let landed = logout_headless(&browser, &provider.end_session_endpoint())
        .await
        .unwrap();
    assert!(landed.as_str().starts_with(&provider.issuer), "{landed}");
    let (status, body) = token(
        &provider,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_no_server_error(&provider);
}

#[tokio::test]
async fn a_stopped_provider_refuses_connections_and_comes_back_on_the_same_issuer() {
    let Some((mut provider, callback, _)) = provider().await else {
        return;
    };
    let issuer = provider.issuer.clone();
    provider.stop().await;
    assert!(!provider.is_running());
    assert!(
        backend()
            .get(provider.discovery_url())
            .send()
            .await
            .unwrap_err()
            .is_connect()
    );
    provider.start_again().await;
    assert_eq!(provider.issuer, issuer);
    log_in(&provider, &browser(), &callback, "alice").await;
}
