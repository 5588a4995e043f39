//! OpenID Connect login (`tests/login/`) against a real, certified provider (npm `oidc-provider`, started by the
//! test on loopback with refresh-token rotation, revocation and RP-initiated logout): the code
//! flow headless (following the provider's login and consent forms), the contract's JSON, the
//! browser's cookies and redirect, the minted token accepted by ext_authz, every rejection,
//! refresh (ten at once, with rotation), logout, and a provider that is down, slow or answering
//! garbage.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed assertion is the finding"
)]

// One test binary for all of login (each binary links the whole crate): the provider testkit,
// ID-token verification against a provider that signs wrongly, and the browser journey.
mod browser;
mod id_token;
mod provider;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use heimdall::app::Running;
use heimdall::test_helpers::oidc::{OidcProvider, OidcProviderOptions, login_headless};
use heimdall::test_helpers::{
    CheckRequestBuilder, free_port, heimdall::serve_in_process, test_config, test_keys,
};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, LOCATION, SET_COOKIE};
use serde_json::Value;

/// heimdall with login pointed at `issuer`, on `port`, browsers allowed back to itself.
async fn heimdall(issuer: &str, port: u16, extra: &str) -> Running {
    heimdall_with(issuer, port, extra, |_| {}).await
}

async fn heimdall_with(
    issuer: &str,
    port: u16,
    extra: &str,
    configure: impl FnOnce(&mut heimdall::config::Config),
) -> Running {
    let yaml = format!(
        r#"{rules}
login:
  issuer_url: "{issuer}"
  client_id: heimdall
  client_secret: {{file: "{secret}"}}
  redirect_url: "http://127.0.0.1:{port}/auth/callback"
  allowed_redirects: ["http://127.0.0.1:{port}/api/"]
  scopes: [openid, profile, email, roles, offline_access]
  cookies: {{secure: false}}
  refresh_grace: 2s
  timeout: 700ms
{extra}"#,
        rules = heimdall::config::EMBEDDED,
        secret = secret_file().display(),
    );
    let mut config = test_config(&yaml);
    config.server.http_port = port;
    configure(&mut config);
    let (_, running) = serve_in_process(config, test_keys()).await.unwrap();
    running
}

/// The client secret, in a file as an operator would mount it.
fn secret_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("heimdall-oidc-secret-{}", std::process::id()));
    std::fs::write(&path, "heimdall-dev-secret\n").unwrap();
    path
}

struct Setup {
    provider: OidcProvider,
    heimdall: Running,
    base: String,
}

async fn setup() -> Option<Setup> {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let provider = OidcProvider::start(OidcProviderOptions::with_redirect_uri(&format!(
        "{base}/auth/callback"
    )))
    .await?;
    let heimdall = heimdall(&provider.issuer, port, "").await;
    Some(Setup {
        provider,
        heimdall,
        base,
    })
}

/// A browser: keeps cookies, follows no redirect.
fn new_browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location in {response:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Logs in as `user` with `browser` from `login_url` and returns heimdall's callback URL.
async fn through_provider(browser: &reqwest::Client, login_url: &str, user: &str) -> String {
    let started = browser.get(login_url).send().await.unwrap();
    assert_eq!(started.status(), StatusCode::FOUND, "{login_url}");
    login_headless(browser, &location(&started), user)
        .await
        .unwrap()
        .to_string()
}

/// A JSON client's login as alice up to the provider's redirect back: the login's cookie
/// (`name=value`) and heimdall's callback URL with `code` and `state`.
async fn login_at_provider(base: &str) -> (String, reqwest::Url) {
    let browser = new_browser();
    let started = browser
        .get(format!("{base}/auth/login"))
        .send()
        .await
        .unwrap();
    let state_cookie = set_cookies(&started)[0]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let callback = login_headless(&browser, &location(&started), "alice")
        .await
        .unwrap();
    (state_cookie, callback)
}

/// A JSON client's whole login: the contract's JSON.
async fn login_json(setup: &Setup, user: &str) -> Value {
    let browser = new_browser();
    let callback = through_provider(&browser, &format!("{}/auth/login", setup.base), user).await;
    let answer = browser.get(&callback).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    answer.json().await.unwrap()
}

async fn check(grpc: SocketAddr, path: &str, token: &str) -> Option<String> {
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let request = CheckRequestBuilder::get(path).bearer(token).build();
    let answer = client.check(request).await.unwrap().into_inner();
    match answer.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-user-id")
            .map(|h| h.value.clone()),
        _ => None,
    }
}

async fn refresh(client: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    client
        .post(format!("{base}/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_code_flow_mints_a_token_that_ext_authz_accepts_with_the_mapped_roles() {
    let Some(setup) = setup().await else { return };
    let session = login_json(&setup, "alice").await;
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 3600);
    let access = session["access_token"].as_str().unwrap();
    assert!(access.starts_with("v4."), "{session}");
    assert!(
        session["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("v4.local.")
    );

    // The paseto authenticator takes it unchanged, with alice's roles (an editor may PUT).
    let grpc = setup.heimdall.grpc_addr;
    assert_eq!(
        check(grpc, "/api/documents/42", access).await.as_deref(),
        Some("alice")
    );
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let put = CheckRequestBuilder::new("PUT", "/api/documents/42")
        .bearer(access)
        .build();
    let answer = client.check(put).await.unwrap().into_inner();
    assert!(matches!(
        answer.http_response,
        Some(HttpResponse::OkResponse(_))
    ));

    // bob is a user, not an editor: his PUT is refused.
    let bob = login_json(&setup, "bob").await;
    let put = CheckRequestBuilder::new("PUT", "/api/documents/42")
        .bearer(bob["access_token"].as_str().unwrap())
        .build();
    let answer = client.check(put).await.unwrap().into_inner();
    assert!(matches!(
        answer.http_response,
        Some(HttpResponse::DeniedResponse(_))
    ));
    drop(setup.provider);
}

#[tokio::test]
async fn a_browser_gets_cookies_and_goes_back_where_it_started() {
    let Some(setup) = setup().await else { return };
    let browser = new_browser();
    let back_to = format!("{}/api/documents/42?tab=1", setup.base);
    let login_url = format!(
        "{}/auth/login?redirect_uri={}",
        setup.base,
        urlencode(&back_to)
    );
    let started = browser.get(&login_url).send().await.unwrap();
    let state_cookie = set_cookies(&started).join("\n");
    assert!(
        state_cookie.contains("heimdall_login_")
            && state_cookie.contains("HttpOnly")
            && state_cookie.contains("SameSite=Lax")
            && state_cookie.contains("Path=/auth/callback"),
        "{state_cookie}"
    );
    let callback = login_headless(&browser, &location(&started), "alice")
        .await
        .unwrap();
    let answer = browser.get(callback.as_str()).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FOUND);
    assert_eq!(location(&answer), back_to);
    let cookies = set_cookies(&answer);
    let session = cookies
        .iter()
        .find(|c| c.starts_with("heimdall_session="))
        .expect("session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("Path=/"),
        "{session}"
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("heimdall_refresh=v4.local.") && c.contains("Path=/auth"))
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("heimdall_login_") && c.contains("Max-Age=0")),
        "the login's cookie is cleared: {cookies:?}"
    );
    // The session cookie is what the `bearer` authenticator of the shipped rules reads.
    let token = session
        .trim_start_matches("heimdall_session=")
        .split(';')
        .next()
        .unwrap();
    let mut client = AuthorizationClient::connect(format!("http://{}", setup.heimdall.grpc_addr))
        .await
        .unwrap();
    let request = CheckRequestBuilder::get("/api/documents/42")
        .header("cookie", &format!("theme=dark; heimdall_session={token}"))
        .build();
    let answer = client.check(request).await.unwrap().into_inner();
    assert!(
        matches!(answer.http_response, Some(HttpResponse::OkResponse(_))),
        "{answer:?}"
    );

    // The browser refreshes with its cookie alone (it is sent to /auth only) and gets new ones.
    let answer = browser
        .post(format!("{}/auth/refresh", setup.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let renewed = set_cookies(&answer);
    assert!(
        renewed
            .iter()
            .any(|c| c.starts_with("heimdall_session=v4.")),
        "{renewed:?}"
    );
    assert!(
        renewed
            .iter()
            .any(|c| c.starts_with("heimdall_refresh=v4.local."))
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn open_redirects_are_refused_before_the_provider_is_asked() {
    let Some(setup) = setup().await else { return };
    let client = new_browser();
    for target in [
        "https://evil.example/".to_owned(),
        "//evil.example/".to_owned(),
        "/\\evil.example".to_owned(),
        format!(
            "{}/api@evil.example",
            setup.base.replace("http://", "http://x:y@")
        ),
        format!("{}/public/x", setup.base),
        format!("{}.evil.example/api/", setup.base),
        "javascript:alert(1)".to_owned(),
        format!("{}/api/%0d%0aSet-Cookie:x=y", setup.base),
    ] {
        let answer = client
            .get(format!(
                "{}/auth/login?redirect_uri={}",
                setup.base,
                urlencode(&target)
            ))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        // `%0d%0a` stays percent-encoded in the path: an allowed URL, and no header injection.
        if target.contains("%0d%0a") {
            assert_eq!(status, StatusCode::FOUND);
            assert!(!set_cookies(&answer).iter().any(|c| c.starts_with("x=")));
            continue;
        }
        let body: Value = answer.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{target}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("redirect_uri"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn callbacks_without_a_valid_login_are_refused_and_get_no_token() {
    let Some(setup) = setup().await else { return };
    let base = &setup.base;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // No state at all; a state heimdall never issued; no cookie for the state.
    for (query, status) in [
        ("code=x", StatusCode::BAD_REQUEST),
        ("code=x&state=a%3Bb", StatusCode::BAD_REQUEST),
        (
            "code=x&state=abcdefghijklmnopqrstuv",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let answer = plain
            .get(format!("{base}/auth/callback?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{query}");
        let body: Value = answer.json().await.unwrap();
        assert!(body.get("access_token").is_none());
    }

    // A real login's code and cookie, replayed: the first callback succeeds, the second is
    // refused by the provider (codes are single-use).
    let (state_cookie, callback) = login_at_provider(base).await;
    let first = plain
        .get(callback.as_str())
        .header("cookie", &state_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let replay = plain
        .get(callback.as_str())
        .header("cookie", &state_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let body: Value = replay.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("refused the authorization code"),
        "{body}"
    );

    // A mismatched state (same cookie name, another value) and a tampered cookie.
    let (state_cookie, callback) = login_at_provider(base).await;
    let state: String = callback
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let code: String = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let forged_state = format!("{}X", &state[..state.len() - 1]);
    let answer = plain
        .get(format!(
            "{base}/auth/callback?code={code}&state={forged_state}"
        ))
        .header("cookie", &state_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("`state` does not match"),
        "{body}"
    );
    let (name, value) = state_cookie.split_once('=').unwrap();
    let flipped = if value.ends_with('A') { 'B' } else { 'A' };
    let tampered = format!("{name}={}{flipped}", &value[..value.len() - 1]);
    let answer = plain
        .get(callback.as_str())
        .header("cookie", &tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("login cookie is not valid"),
        "{body}"
    );

    // An error the provider returned (the user declined) is a refusal, and clears the cookie.
    let answer = plain
        .get(format!(
            "{base}/auth/callback?error=access_denied&error_description=user%20declined&state={state}"
        ))
        .header("cookie", &state_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookies(&answer).iter().any(|c| c.contains("Max-Age=0")));
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("access_denied"),
        "{body}"
    );
}

#[tokio::test]
async fn ten_concurrent_refreshes_all_succeed_and_a_rotated_token_is_refused_afterwards() {
    let Some(setup) = setup().await else { return };
    let session = login_json(&setup, "alice").await;
    let envelope = session["refresh_token"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    let answers =
        futures_util::future::join_all((0..10).map(|_| refresh(&client, &setup.base, &envelope)))
            .await;
    let mut fresh = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = answer.json().await.unwrap();
        fresh.push(body);
    }
    let new_envelope = fresh[0]["refresh_token"].as_str().unwrap().to_owned();
    assert!(
        fresh
            .iter()
            .all(|b| b["refresh_token"] == fresh[0]["refresh_token"])
    );
    assert_ne!(new_envelope, envelope);
    let access = fresh[0]["access_token"].as_str().unwrap();
    assert_eq!(
        check(setup.heimdall.grpc_addr, "/api/documents/1", access)
            .await
            .as_deref(),
        Some("alice")
    );
    // The new one works.
    assert_eq!(
        refresh(&client, &setup.base, &new_envelope).await.status(),
        StatusCode::OK
    );
    // After the grace period the old envelope's provider token has been rotated away: refused
    // (and the provider, seeing a rotated token reused, revokes the whole grant).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let answer = refresh(&client, &setup.base, &envelope).await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    let body: Value = answer.json().await.unwrap();
    assert!(body.get("access_token").is_none());
    // Garbage and an access token are not refresh tokens.
    for bad in ["v4.local.garbage", access, ""] {
        assert_eq!(
            refresh(&client, &setup.base, bad).await.status(),
            StatusCode::UNAUTHORIZED,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn logout_revokes_the_refresh_token_and_names_the_end_session_url() {
    let Some(setup) = setup().await else { return };
    let session = login_json(&setup, "alice").await;
    let envelope = session["refresh_token"].as_str().unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = client
        .post(format!("{}/auth/logout", setup.base))
        .header(ACCEPT, "application/json")
        .json(&serde_json::json!({ "refresh_token": envelope }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(
        set_cookies(&answer)
            .iter()
            .any(|c| c.starts_with("heimdall_session=;") && c.contains("Max-Age=0"))
    );
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["logged_out"], true);
    assert_eq!(body["revoked"], true, "{body}");
    assert!(
        body["end_session_url"]
            .as_str()
            .unwrap()
            .starts_with(&setup.provider.issuer)
    );
    // The provider revoked it: refreshing is refused.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = refresh(&client, &setup.base, envelope).await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);

    // A browser is sent to the provider's end-session endpoint.
    let answer = client
        .post(format!("{}/auth/logout", setup.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FOUND);
    assert!(location(&answer).contains("client_id=heimdall"));
}

#[tokio::test]
async fn a_provider_that_is_down_slow_or_answering_garbage_gives_502_or_504_and_no_token() {
    let Some(mut setup) = setup().await else {
        return;
    };
    let session = login_json(&setup, "alice").await;
    let envelope = session["refresh_token"].as_str().unwrap().to_owned();
    setup.provider.stop().await;
    let client = reqwest::Client::new();
    let answer = refresh(&client, &setup.base, &envelope).await;
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
    let body: Value = answer.json().await.unwrap();
    assert!(body.get("access_token").is_none());
    assert!(
        body["error"].as_str().unwrap().contains("OpenID provider"),
        "{body}"
    );

    // Garbage: a server that answers every request with a non-JSON 200.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = garbage.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\nconnection: close\r\n\r\n<html>!!!")
                    .await;
            });
        }
    });
    // Slow: accepts and never answers.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let _slow_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = slow.accept().await {
            held.push(stream);
        }
    });
    for (issuer, status) in [
        (format!("http://{garbage_addr}"), StatusCode::BAD_GATEWAY),
        (format!("http://{slow_addr}"), StatusCode::GATEWAY_TIMEOUT),
    ] {
        let port = free_port();
        let heimdall = heimdall(&issuer, port, "").await;
        let started = std::time::Instant::now();
        let answer = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/auth/login"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{issuer}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let body: Value = answer.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("discovery"),
            "{body}"
        );
        heimdall.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn logging_out_everywhere_refuses_the_access_tokens_already_issued() {
    let Some(nats) = heimdall::test_helpers::nats::NatsServer::start().await else {
        return;
    };
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let Some(provider) = OidcProvider::start(OidcProviderOptions::with_redirect_uri(&format!(
        "{base}/auth/callback"
    )))
    .await
    else {
        return;
    };
    let url = nats.url();
    let heimdall = heimdall_with(&provider.issuer, port, "", move |config| {
        config.nats = Some(heimdall::attributes::NatsConfig {
            url,
            ..Default::default()
        });
    })
    .await;
    let setup = Setup {
        provider,
        heimdall,
        base,
    };
    let session = login_json(&setup, "alice").await;
    let access = session["access_token"].as_str().unwrap();
    let grpc = setup.heimdall.grpc_addr;
    assert_eq!(
        check(grpc, "/api/documents/7", access).await.as_deref(),
        Some("alice")
    );
    // Tokens carry whole seconds: a revocation at the same second as the login would not
    // cover it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("{}/auth/logout?everywhere=true", setup.base))
        .header(ACCEPT, "application/json")
        .json(&serde_json::json!({ "refresh_token": session["refresh_token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["everywhere"], true, "{body}");
    // The event goes through the stream, the consumer and the KV watch: bounded wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if check(grpc, "/api/documents/7", access).await.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old token still passes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without a refresh token there is no one to log out everywhere.
    let answer = client
        .post(format!("{}/auth/logout?everywhere=true", setup.base))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn userinfo_claims_are_mapped_when_configured_and_counted_in_metrics() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let Some(provider) = OidcProvider::start(OidcProviderOptions::with_redirect_uri(&format!(
        "{base}/auth/callback"
    )))
    .await
    else {
        return;
    };
    let extra = "  userinfo: true\n  claims: {subject: sub, roles: roles, attributes: {email: email, name: name}}\n";
    let heimdall = heimdall(&provider.issuer, port, extra).await;
    let setup = Setup {
        provider,
        heimdall,
        base,
    };
    let session = login_json(&setup, "bob").await;
    let token = session["access_token"].as_str().unwrap();
    // The minted token carries the mapped attributes: `heimdall token inspect` would show them;
    // here the ext_authz path accepts it as bob.
    assert_eq!(
        check(setup.heimdall.grpc_addr, "/api/documents/3", token)
            .await
            .as_deref(),
        Some("bob")
    );
    // v4.public: the claims are signed, not encrypted — read them.
    use base64::Engine as _;
    let body = token
        .strip_prefix("v4.public.")
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let signed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    let claims: Value = serde_json::from_slice(&signed[..signed.len() - 64]).unwrap();
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["roles"], serde_json::json!(["user"]));
    assert_eq!(claims["attr"]["email"], "bob@example.com", "{claims}");
    assert_eq!(claims["attr"]["name"], "Bob Example", "{claims}");
    let metrics = reqwest::get(format!("{}/metrics", setup.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"heimdall_login_requests_total{endpoint="callback",outcome="ok"} 1"#),
        "{metrics}"
    );
}
