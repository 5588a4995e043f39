//! The browser journey of OpenID Connect login, in a real browser (headless Chromium driven by
//! `tests/browser/login-journey.mjs`) through a real Envoy running the shipped `envoy/envoy.yaml`:
//! a protected page sends the browser to heimdall's login (the shipped rules' `login_redirect`),
//! the development provider's login and consent forms follow, heimdall's callback sets the
//! session cookies and sends the browser back to the page, which the upstream serves to alice.
//! Logging out (a form POST to `/auth/logout`) clears the cookies, signs out at the provider, and
//! the page is refused again.
//!
//! The browser reaches nothing beyond loopback: its only proxy is a sinkhole of the journey
//! script that refuses everything (Chromium bypasses proxies for loopback alone).
//!
//! Needs Envoy, node, oidc-provider, Chromium and playwright-core (`make tools`): without one the
//! test is skipped, in CI (`CI=true`) it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed assertion is the finding"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use heimdall::app::Running;
use heimdall::test_helpers::browser::Browser;
use heimdall::test_helpers::echo::EchoUpstream;
use heimdall::test_helpers::envoy::{self, Envoy};
use heimdall::test_helpers::oidc::{self, OidcProvider, OidcProviderOptions, PASSWORD};
use heimdall::test_helpers::process::fresh_dir;
use heimdall::test_helpers::{free_port, heimdall::serve_in_process, test_config, test_keys};
use serde_json::Value;

/// The page the browser starts from and comes back to (the query must survive the journey).
const PAGE: &str = "/api/documents/42?tab=1";
/// The whole journey's bound, browser start included.
const JOURNEY_TIMEOUT: Duration = Duration::from_secs(45);

/// heimdall with the shipped rules and login, on the ports Envoy was told, its public URLs
/// Envoy's.
async fn heimdall(
    issuer: &str,
    grpc: SocketAddr,
    side: SocketAddr,
    envoy_origin: &str,
    secret: &Path,
) -> Running {
    let yaml = format!(
        r#"{rules}
login:
  issuer_url: "{issuer}"
  client_id: heimdall
  client_secret: {{file: "{secret}"}}
  redirect_url: "{envoy_origin}/auth/callback"
  allowed_redirects: ["{envoy_origin}"]
  post_logout_redirect: "{envoy_origin}{PAGE}"
  scopes: [openid, profile, email, roles, offline_access]
  cookies: {{secure: false}}
  timeout: 2s
"#,
        rules = heimdall::config::EMBEDDED,
        secret = secret.display(),
    );
    let mut config = test_config(&yaml);
    config.server.grpc_port = grpc.port();
    config.server.http_port = side.port();
    let (_, running) = serve_in_process(config, test_keys()).await.unwrap();
    running
}

/// A directory of the test's own, removed when dropped (also when an assertion fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        Scratch(fresh_dir("login-browser").unwrap())
    }

    /// The client secret, in a file as an operator would mount it.
    fn secret_file(&self) -> PathBuf {
        let path = self.0.join("client-secret");
        std::fs::write(&path, format!("{}\n", oidc::DEFAULT_CLIENT_SECRET)).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text<'v>(value: &'v Value, pointer: &str) -> &'v str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

/// The cookie `name` of a phase's `cookies`, if the browser holds it.
fn cookie<'v>(phase: &'v Value, name: &str) -> Option<&'v Value> {
    phase["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

fn cookie_names(phase: &Value) -> Vec<&str> {
    phase["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// The main frame's navigations of a phase, as `METHOD URL STATUS [-> LOCATION]`.
fn visited(phase: &Value) -> Vec<String> {
    phase["visited"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let mut line = format!("{} {} {}", text(v, "/method"), text(v, "/url"), v["status"]);
            if let Some(location) = v["location"].as_str() {
                line.push_str(" -> ");
                line.push_str(location);
            }
            line
        })
        .collect()
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
async fn a_browser_logs_in_through_envoy_and_out_again() {
    let Some(browser) = Browser::require() else {
        return;
    };
    let started = std::time::Instant::now();

    // Envoy first, on a port of its own choosing, pointed at the ports heimdall will take: the
    // provider must know Envoy's callback before it starts, and heimdall the provider.
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let side = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let upstream = EchoUpstream::start().await;
    let shipped = std::fs::read_to_string(
        heimdall::test_helpers::tools::repo_root().join("envoy/envoy.yaml"),
    )
    .unwrap();
    let config = envoy::render_shipped_with_side_port(&shipped, grpc, side, upstream.addr).unwrap();
    let Some(envoy) = Envoy::start_rendered(config).await else {
        return;
    };
    let origin = envoy.url("");
    let page = envoy.url(PAGE);

    let mut provider_options = OidcProviderOptions::with_redirect_uri(&envoy.url("/auth/callback"));
    provider_options.post_logout_redirect_uris = vec![page.clone()];
    let Some(provider) = OidcProvider::start(provider_options).await else {
        return;
    };
    let scratch = Scratch::new();
    let _heimdall = heimdall(
        &provider.issuer,
        grpc,
        side,
        &origin,
        &scratch.secret_file(),
    )
    .await;

    let journey_started = std::time::Instant::now();
    let journey = browser
        .run(
            "login-journey.mjs",
            &[
                ("START_URL", page.as_str()),
                ("LOGIN_USER", "alice"),
                ("LOGIN_PASSWORD", PASSWORD),
            ],
            JOURNEY_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- envoy ---\n{}\n--- provider ---\n{}",
                envoy.log(),
                provider.log()
            )
        });
    let journey_took = journey_started.elapsed();
    let login = &journey["login"];
    let logout = &journey["logout"];
    let login_path = format!("{origin}/auth/login?redirect_uri={}", urlencode(&page));

    // The page was refused, the browser sent to heimdall's login and on to the provider.
    let steps = visited(login);
    assert_eq!(
        steps.first().map(String::as_str),
        Some(format!("GET {page} 302 -> {login_path}").as_str()),
        "{steps:#?}"
    );
    assert!(
        steps.get(1).is_some_and(|s| s.starts_with(&format!(
            "GET {login_path} 302 -> {}/auth?",
            provider.issuer
        ))),
        "{steps:#?}"
    );
    assert!(
        steps.iter().any(
            |s| s.starts_with(&format!("GET {origin}/auth/callback?code="))
                && s.ends_with(&format!("302 -> {page}"))
        ),
        "{steps:#?}"
    );

    // It is back on the page it started from, served by the upstream to alice.
    assert_eq!(text(login, "/url"), page, "{steps:#?}");
    assert_eq!(login["status"], 200);
    assert_eq!(text(login, "/content_type"), "application/json");
    let echo = &login["echo"];
    assert_eq!(text(echo, "/method"), "GET");
    assert_eq!(text(echo, "/path"), PAGE);
    assert_eq!(text(echo, "/headers/x-user-id"), "alice", "{echo:#}");
    let roles = text(echo, "/headers/x-user-roles");
    assert!(
        roles.contains("user") && roles.contains("editor"),
        "{roles}"
    );
    assert!(echo["headers"].get("authorization").is_none(), "{echo:#}");
    // The session cookie is the credential: the upstream gets the browser's other cookies only.
    let upstream_cookies = echo["headers"]["cookie"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !upstream_cookies.iter().any(|c| c == "heimdall_session"),
        "the access token reached the upstream: {echo:#}"
    );

    // The session cookie: HttpOnly, SameSite=Lax, for the whole site (plain HTTP here).
    let session = cookie(login, "heimdall_session")
        .unwrap_or_else(|| panic!("no session cookie: {:?}", cookie_names(login)));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");
    assert_eq!(session["path"], "/", "{session}");
    assert_eq!(session["secure"], false, "{session}");
    assert!(
        text(session, "/value_prefix").starts_with("v4."),
        "{session}"
    );
    // The refresh cookie goes to /auth only, so never to the upstream.
    let refresh = cookie(login, "heimdall_refresh")
        .unwrap_or_else(|| panic!("no refresh cookie: {:?}", cookie_names(login)));
    assert_eq!(refresh["path"], "/auth", "{refresh}");
    assert_eq!(refresh["httpOnly"], true, "{refresh}");
    assert_eq!(refresh["sameSite"], "Lax", "{refresh}");
    assert_eq!(text(refresh, "/value_prefix"), "v4.local.", "{refresh}");
    let sent: Vec<&str> = login["sent_to_start"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(sent.contains(&"heimdall_session"), "{sent:?}");
    assert!(!sent.contains(&"heimdall_refresh"), "{sent:?}");
    // The login's own cookie is gone once the callback ran.
    assert!(
        !cookie_names(login)
            .iter()
            .any(|n| n.starts_with("heimdall_login_")),
        "{:?}",
        cookie_names(login)
    );

    // Logout: the cookies are cleared, the provider signs alice out and sends the browser back
    // to the page, which is refused again: heimdall's login, the provider's login form.
    let steps = visited(logout);
    assert!(
        steps.first().is_some_and(|s| s.starts_with(&format!(
            "POST {origin}/auth/logout 302 -> {}/session/end?",
            provider.issuer
        ))),
        "{steps:#?}"
    );
    assert!(
        steps.contains(&format!("GET {page} 302 -> {login_path}")),
        "{steps:#?}"
    );
    assert_eq!(logout["login_form"], true);
    assert!(
        text(logout, "/url").starts_with(&format!("{}/interaction/", provider.issuer)),
        "{steps:#?}"
    );
    // Of heimdall's cookies only the state of the login just started is left.
    let left: Vec<&str> = cookie_names(logout)
        .into_iter()
        .filter(|n| n.starts_with("heimdall_"))
        .collect();
    assert!(
        matches!(left.as_slice(), [state] if state.starts_with("heimdall_login_")),
        "heimdall's cookies after the logout: {left:?}"
    );
    // The upstream served the page once (and, as the shipped rules let anyone, whatever
    // `/favicon.ico` requests Chromium makes by itself); after the logout it was not asked.
    assert!(upstream.received() >= 1);

    // Nothing of the journey went through the browser's sinkhole proxy (loopback bypasses it);
    // what did is what Chromium fetches by itself, refused there.
    let blocked: Vec<&str> = journey["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        !blocked.iter().any(|u| u.contains("127.0.0.1")),
        "{blocked:?}"
    );

    eprintln!(
        "browser {} journey in {journey_took:?} (whole test {:?}); refused beyond loopback: {blocked:?}",
        text(&journey, "/browser"),
        started.elapsed()
    );
    drop(provider);
}
