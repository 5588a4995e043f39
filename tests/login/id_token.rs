//! ID-token verification at the callback, against a provider that misbehaves on purpose: a
//! certified provider never signs with a key it does not publish, lets a token expire before
//! sending it, or names another audience or nonce, so this one does, one way per login. The
//! provider here is a few axum routes (discovery, JWKS, token endpoint) signing with test-only
//! RSA keys (`tests/fixtures/oidc/test-rsa-*.pem`); a correctly signed token is accepted, which
//! shows every refusal is the verification's and not the harness's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed assertion is the finding"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use heimdall::test_helpers::{free_port, heimdall::serve_in_process, test_config, test_keys};
use openidconnect::core::{CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey};
use openidconnect::{JsonWebKeyId, PrivateSigningKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How the next ID token is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// Signed with a key the JWKS does not hold, under the published key's id.
    OtherKey,
    /// Signed with a key the JWKS does not hold, under an unknown key id.
    UnknownKey,
    /// `alg: none`, no signature.
    Unsigned,
    Expired,
    OtherAudience,
    OtherIssuer,
    OtherNonce,
    NoNonce,
    /// A payload changed after signing.
    Tampered,
    /// No `id_token` in the token response.
    Missing,
    /// Not a JWT at all.
    Garbage,
}

struct Provider {
    issuer: String,
    published: CoreRsaPrivateSigningKey,
    unpublished: CoreRsaPrivateSigningKey,
    /// The flaw and the nonce the next token answers with.
    next: tokio::sync::Mutex<(Flaw, String)>,
}

fn key(name: &str, kid: &str) -> CoreRsaPrivateSigningKey {
    let pem = std::fs::read_to_string(format!(
        "{}/tests/fixtures/oidc/test-rsa-{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    CoreRsaPrivateSigningKey::from_pem(&pem, Some(JsonWebKeyId::new(kid.to_owned()))).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

impl Provider {
    fn id_token(&self, flaw: Flaw, nonce: String) -> Option<String> {
        let mut claims = json!({
            "iss": self.issuer, "aud": "heimdall", "sub": "alice", "iat": now(),
            "exp": now() + 300, "nonce": nonce, "roles": ["user", "editor"],
        });
        match flaw {
            Flaw::Expired => claims["exp"] = json!(now() - 600),
            Flaw::OtherAudience => claims["aud"] = json!("someone-else"),
            Flaw::OtherIssuer => claims["iss"] = json!("https://evil.example"),
            Flaw::OtherNonce => claims["nonce"] = json!("not-the-nonce"),
            Flaw::NoNonce => {
                claims.as_object_mut().unwrap().remove("nonce");
            }
            Flaw::Missing => return None,
            Flaw::Garbage => return Some("not.a.jwt".to_owned()),
            _ => {}
        }
        let (alg, kid, signer) = match flaw {
            Flaw::Unsigned => ("none", "a", None),
            Flaw::OtherKey => ("RS256", "a", Some(&self.unpublished)),
            Flaw::UnknownKey => ("RS256", "b", Some(&self.unpublished)),
            _ => ("RS256", "a", Some(&self.published)),
        };
        let header = b64(json!({"alg": alg, "kid": kid, "typ": "JWT"})
            .to_string()
            .as_bytes());
        let payload = b64(claims.to_string().as_bytes());
        let input = format!("{header}.{payload}");
        let signature = signer.map_or_else(String::new, |key| {
            b64(&key
                .sign(
                    &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                    input.as_bytes(),
                )
                .unwrap())
        });
        if flaw == Flaw::Tampered {
            claims["sub"] = json!("mallory");
            let payload = b64(claims.to_string().as_bytes());
            return Some(format!("{header}.{payload}.{signature}"));
        }
        Some(format!("{input}.{signature}"))
    }
}

async fn discovery(State(provider): State<Arc<Provider>>) -> Json<Value> {
    let issuer = &provider.issuer;
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn jwks(State(provider): State<Arc<Provider>>) -> Json<Value> {
    Json(json!({ "keys": [provider.published.as_verification_key()] }))
}

async fn token(State(provider): State<Arc<Provider>>) -> Json<Value> {
    let mut answer = json!({"access_token": "at", "token_type": "Bearer", "expires_in": 3600});
    let (flaw, nonce) = provider.next.lock().await.clone();
    if let Some(id_token) = provider.id_token(flaw, nonce) {
        answer["id_token"] = json!(id_token);
    }
    Json(answer)
}

async fn start_provider() -> (Arc<Provider>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let provider = Arc::new(Provider {
        issuer: format!("http://{addr}"),
        published: key("a", "a"),
        unpublished: key("b", "a"),
        next: tokio::sync::Mutex::new((Flaw::None, String::new())),
    });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .with_state(Arc::clone(&provider));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (provider, addr)
}

#[tokio::test]
async fn id_tokens_that_fail_verification_are_refused_and_mint_nothing() {
    let (provider, _) = start_provider().await;
    let port = free_port();
    let yaml = format!(
        r#"{rules}
login:
  issuer_url: "{issuer}"
  client_id: heimdall
  redirect_url: "http://127.0.0.1:{port}/auth/callback"
  cookies: {{secure: false}}
"#,
        rules = heimdall::config::EMBEDDED,
        issuer = provider.issuer,
    );
    let mut config = test_config(&yaml);
    config.server.http_port = port;
    let (_, heimdall) = serve_in_process(config, test_keys()).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    for (flaw, expected, says) in [
        (Flaw::None, StatusCode::OK, ""),
        (
            Flaw::OtherKey,
            StatusCode::UNAUTHORIZED,
            "ID token is not valid",
        ),
        (
            Flaw::UnknownKey,
            StatusCode::UNAUTHORIZED,
            "ID token is not valid",
        ),
        (
            Flaw::Unsigned,
            StatusCode::UNAUTHORIZED,
            "ID token is not valid",
        ),
        (Flaw::Expired, StatusCode::UNAUTHORIZED, "Expired"),
        (Flaw::OtherAudience, StatusCode::UNAUTHORIZED, "audience"),
        (Flaw::OtherIssuer, StatusCode::UNAUTHORIZED, "issuer"),
        (Flaw::OtherNonce, StatusCode::UNAUTHORIZED, "nonce"),
        (Flaw::NoNonce, StatusCode::UNAUTHORIZED, "nonce"),
        (
            Flaw::Tampered,
            StatusCode::UNAUTHORIZED,
            "ID token is not valid",
        ),
        (Flaw::Missing, StatusCode::BAD_GATEWAY, "no id_token"),
        (Flaw::Garbage, StatusCode::BAD_GATEWAY, "token"),
    ] {
        let started = client
            .get(format!("{base}/auth/login"))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), StatusCode::FOUND);
        let location =
            reqwest::Url::parse(started.headers()["location"].to_str().unwrap()).unwrap();
        let param = |name: &str| {
            location
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .unwrap()
        };
        assert_eq!(param("code_challenge_method"), "S256");
        let (state, nonce) = (param("state"), param("nonce"));
        let cookie = started.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        *provider.next.lock().await = (flaw, nonce);
        let answer = client
            .get(format!("{base}/auth/callback?code=c&state={state}"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(status, expected, "{flaw:?}: {body}");
        if flaw == Flaw::None {
            assert!(body["access_token"].as_str().unwrap().starts_with("v4."));
            continue;
        }
        assert!(body.get("access_token").is_none(), "{flaw:?}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{flaw:?}: {error}");
    }
    heimdall.shutdown(Duration::from_secs(1)).await;
}
