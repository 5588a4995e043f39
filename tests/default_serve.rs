//! `heimdall serve` with no configuration at all: it starts on the embedded example rules, logs a
//! demo token, and that token is accepted; SIGTERM stops it cleanly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn starts_without_configuration_and_accepts_its_demo_token() {
    let (grpc, http) = (
        heimdall::test_helpers::free_port(),
        heimdall::test_helpers::free_port(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_heimdall"))
        .arg("serve")
        .env_remove("HEIMDALL_CONFIG")
        .env_remove("PASETO_SYMMETRIC_KEY")
        .env("HEIMDALL_BIND", "127.0.0.1")
        .env("GRPC_PORT", grpc.to_string())
        .env("PORT", http.to_string())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut token, mut serving) = (None, false);
    while !(serving && token.is_some()) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(remaining, lines.next_line())
            .await
            .expect("heimdall did not start in time")
            .unwrap()
            .expect("heimdall exited");
        if let Some(t) = line
            .split_whitespace()
            .find(|w| w.starts_with("v4.public."))
        {
            token = Some(t.to_owned());
        }
        serving |= line.contains("heimdall is serving");
    }
    let token = token.unwrap();

    let http_client = heimdall::test_helpers::http_client();
    let decide = |auth: Option<String>| {
        let mut request = http_client
            .get(format!("http://127.0.0.1:{http}/decision"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "api.example.com")
            .header("x-forwarded-uri", "/api/documents/1");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    let allowed = decide(Some(format!("Bearer {token}"))).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["x-user-id"], "demo-user");
    assert_eq!(decide(None).await.unwrap().status(), 401);

    // SIGTERM: a clean exit within the grace period.
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("no exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
