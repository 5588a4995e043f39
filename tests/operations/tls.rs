//! TLS and mTLS on the ext_authz port: real Envoy (envoy/envoy-mtls.yaml) decides through
//! heimdall over mTLS; clients without a certificate, with one of another CA, or speaking
//! plaintext are refused at the handshake; certificates reload from a Secret-style symlink swap
//! and on SIGHUP, and broken files leave the old certificate serving.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use heimdall::test_helpers::echo::EchoUpstream;
use heimdall::test_helpers::envoy::{Envoy, render_shipped, replace_exactly};
use heimdall::test_helpers::fixtures::merge_yaml;
use heimdall::test_helpers::heimdall::{
    ConfigSource, HeimdallCommand, HeimdallProcess, start_heimdall,
};
use heimdall::test_helpers::tls::{IssuedCert, SecretDir, TestCa, alert_of, handshake};
use heimdall::test_helpers::tools;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls::AlertDescription;

const SHIPPED_MTLS: &str = include_str!("../../envoy/envoy-mtls.yaml");
/// Where envoy/envoy-mtls.yaml expects Envoy's files.
const ENVOY_TLS_DIR: &str = "/etc/envoy/heimdall-tls/";
/// Two rules: `/public/…` allowed to anyone, `/api/documents` only with a PASETO token.
const RULES_YAML: &str = r#"
version: "1"
mechanisms:
  authenticators:
    - { id: bearer, type: paseto }
    - { id: anonymous, type: anonymous }
  authorizers:
    - { id: allow, type: allow }
rules:
  - id: public
    match: { paths: [/public/*rest], methods: [GET] }
    execute: [{ authenticator: anonymous }, { authorizer: allow }]
  - id: documents
    match: { paths: [/api/documents] }
    execute: [{ authenticator: bearer }, { authorizer: allow }]
"#;
/// `server.grpc.header_read_timeout` of the tests' heimdall.
const HEADER_READ_TIMEOUT_MS: u64 = 500;
/// How long a reload may take to show.
const RELOAD_WITHIN: Duration = Duration::from_secs(10);

/// heimdall's test rules with the gRPC port on TLS from `secret`'s files, and a short
/// header-read deadline (which bounds the handshake too).
async fn heimdall_with_tls(secret: &SecretDir, client_ca: bool) -> HeimdallProcess {
    let ca_line = if client_ca {
        format!(
            "\n        client_ca_file: {}",
            secret.path("ca.crt").display()
        )
    } else {
        String::new()
    };
    let overlay = format!(
        "server:\n  grpc:\n    header_read_timeout: {HEADER_READ_TIMEOUT_MS}ms\n    tls:\n        cert_file: {}\n        key_file: {}{ca_line}\n",
        secret.path("tls.crt").display(),
        secret.path("tls.key").display(),
    );
    let config = merge_yaml(RULES_YAML, &overlay).unwrap();
    let key = std::str::from_utf8(heimdall::test_helpers::TEST_SYMMETRIC_KEY).unwrap();
    let command = HeimdallCommand::new(ConfigSource::Yaml(config))
        .env("RUST_LOG", "info")
        .env("PASETO_SYMMETRIC_KEY", key);
    start_heimdall(&command, "heimdall (TLS)").await.unwrap()
}

fn server_files<'a>(ca: &'a str, server: &'a IssuedCert) -> [(&'a str, &'a str); 3] {
    [
        ("ca.crt", ca),
        ("tls.crt", &server.cert_pem),
        ("tls.key", &server.key_pem),
    ]
}

/// Polls `condition` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn envoy_decides_through_heimdall_over_mtls_and_other_clients_are_refused() {
    if tools::require("envoy").is_none() {
        return;
    }
    let ca = TestCa::new("heimdall test CA");
    let server = ca.server_cert();
    let mut secret = SecretDir::new("tls-mtls");
    secret.publish(&server_files(&ca.cert_pem(), &server));
    let heimdall = heimdall_with_tls(&secret, true).await;

    // Envoy's own files: its client certificate and the CA of heimdall's.
    let envoy_client = ca.client_cert("envoy");
    let envoy_dir = heimdall::test_helpers::tls::temp_dir("tls-envoy");
    std::fs::write(envoy_dir.join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(envoy_dir.join("tls.crt"), &envoy_client.cert_pem).unwrap();
    std::fs::write(envoy_dir.join("tls.key"), &envoy_client.key_pem).unwrap();
    let echo = EchoUpstream::start().await;
    let rendered = render_shipped(SHIPPED_MTLS, heimdall.grpc_addr(), echo.addr).unwrap();
    let rendered = replace_exactly(
        &rendered,
        ENVOY_TLS_DIR,
        &format!("{}/", envoy_dir.display()),
        3,
    )
    .unwrap();
    let envoy = Envoy::start_rendered(rendered).await.unwrap();
    let client = heimdall::test_helpers::http_client();

    let allowed = client.get(envoy.url("/public/hello")).send().await.unwrap();
    assert_eq!(allowed.status(), 200, "{}", envoy.log());
    let echoed: serde_json::Value = allowed.json().await.unwrap();
    assert_eq!(echoed["path"], "/public/hello");
    // No token on a bearer rule: heimdall's 401, not the 503 of a failed ext_authz call.
    let denied = client
        .get(envoy.url("/api/documents"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401, "{}", heimdall.log_tail(20));
    let (handshakes, stats) = envoy.stat("cluster.heimdall.ssl.handshake").await;
    let handshakes = handshakes.unwrap_or(0);
    assert!(
        handshakes >= 1,
        "Envoy made no TLS handshake to heimdall: {stats}"
    );

    let grpc = heimdall.grpc_addr();
    // A certificate of heimdall's CA: accepted, HTTP/2 negotiated, heimdall's certificate served.
    let good = handshake(grpc, &ca, Some(&ca.client_cert("tester")))
        .await
        .unwrap();
    assert_eq!(good.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(good.peer_cert, server.der);

    let none = handshake(grpc, &ca, None).await.unwrap_err();
    assert_eq!(
        alert_of(&none),
        Some(AlertDescription::CertificateRequired),
        "{none}"
    );
    let rogue = TestCa::new("another CA");
    let foreign = handshake(grpc, &ca, Some(&rogue.client_cert("intruder")))
        .await
        .unwrap_err();
    assert_eq!(
        alert_of(&foreign),
        Some(AlertDescription::UnknownCA),
        "{foreign}"
    );

    let answer = plaintext_http2(grpc).await;
    // At most a TLS alert record (content type 21), never an HTTP/2 frame.
    assert!(
        answer.first().is_none_or(|b| *b == 21),
        "plaintext got an answer: {answer:?}"
    );
    // A client that starts a handshake and stalls: closed at the header-read deadline.
    let started = Instant::now();
    let stalled = stalled_handshake(grpc).await;
    let held = started.elapsed();
    assert!(stalled.is_empty(), "a stalled handshake got {stalled:?}");
    assert!(
        held >= Duration::from_millis(HEADER_READ_TIMEOUT_MS - 100)
            && held < Duration::from_secs(3),
        "a stalled handshake held its connection for {held:?}"
    );

    let failures = heimdall
        .metric_value(r#"heimdall_tls_handshake_failures_total{listener="grpc"}"#)
        .await
        .unwrap_or(0.0);
    assert!(failures >= 4.0, "handshake failures counted: {failures}");
}

/// Sends a TLS record header announcing a ClientHello, then nothing; returns what comes back
/// before heimdall closes the connection (bounded).
async fn stalled_handshake(addr: SocketAddr) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff])
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("heimdall closes a stalled handshake")
        .ok();
    answer
}

/// Sends the HTTP/2 preface in plaintext and returns what comes back before the connection
/// closes (bounded).
async fn plaintext_http2(addr: SocketAddr) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the TLS port closes a plaintext connection")
        .ok();
    answer
}

#[tokio::test]
async fn certificates_reload_on_change_and_sighup_and_broken_files_keep_the_old_one() {
    let ca = TestCa::new("heimdall reload CA");
    let first = ca.server_cert();
    let mut secret = SecretDir::new("tls-reload");
    secret.publish(&server_files(&ca.cert_pem(), &first));
    let heimdall = heimdall_with_tls(&secret, false).await;
    let grpc = heimdall.grpc_addr();
    let served = || async { handshake(grpc, &ca, None).await.unwrap().peer_cert };
    let metric = |name: &'static str| {
        let heimdall = &heimdall;
        async move { heimdall.metric_value(name).await.unwrap_or(0.0) }
    };
    const EXPIRY: &str = r#"heimdall_tls_certificate_expiry_timestamp_seconds{listener="grpc"}"#;
    const SUCCESS: &str = r#"heimdall_tls_reloads_total{listener="grpc",outcome="success"}"#;
    const FAILURE: &str = r#"heimdall_tls_reloads_total{listener="grpc",outcome="failure"}"#;
    assert_eq!(served().await, first.der);
    assert_eq!(metric(EXPIRY).await, first.not_after as f64);

    // A rotation as the kubelet writes it: a new ..data, all files at once.
    let second = ca.server_cert();
    secret.publish(&server_files(&ca.cert_pem(), &second));
    assert!(
        eventually(RELOAD_WITHIN, || async { served().await == second.der }).await,
        "the new certificate is not served: {}",
        heimdall.log_tail(20)
    );
    assert_eq!(metric(EXPIRY).await, second.not_after as f64);
    assert_eq!(metric(SUCCESS).await, 1.0);

    // SIGHUP reloads the same files again.
    let pid = rustix::process::Pid::from_raw(heimdall.pid().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    assert!(eventually(RELOAD_WITHIN, || async { metric(SUCCESS).await == 2.0 }).await);

    // A certificate with another certificate's key: refused, counted, the old one serves.
    let third = ca.server_cert();
    secret.publish(&[
        ("ca.crt", &ca.cert_pem()),
        ("tls.crt", &third.cert_pem),
        ("tls.key", &second.key_pem),
    ]);
    assert!(
        eventually(RELOAD_WITHIN, || async { metric(FAILURE).await == 1.0 }).await,
        "the broken files were not refused: {}",
        heimdall.log_tail(20)
    );
    assert_eq!(served().await, second.der);
    assert_eq!(metric(EXPIRY).await, second.not_after as f64);
    assert!(
        heimdall.log().contains("does not match the certificate"),
        "{}",
        heimdall.log_tail(20)
    );
}
