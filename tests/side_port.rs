//! The HTTP side port: health, readiness, metrics, public keys and forward-auth `/decision`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::time::Duration;

use heimdall::test_helpers::{claims, mint, test_config, test_keys};
use heimdall::tokens::{Audience, Purpose};
use reqwest::StatusCode;

const RULES: &str = include_str!("fixtures/rules.yaml");

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn health_ready_metrics_and_keys() {
    let built = heimdall::app::build(test_config(RULES), test_keys()).unwrap();
    let keys = std::sync::Arc::clone(&built.keys);
    let blocker = built.readiness.block("test dependency");
    let running = built.serve().await.unwrap();
    let base = format!("http://{}", running.http_addr);
    let http = client();

    assert_eq!(
        http.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let not_ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = not_ready.json().await.unwrap();
    assert_eq!(body["waiting_for"], serde_json::json!(["test dependency"]));
    drop(blocker);
    assert_eq!(
        http.get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // A decision through /decision shows up in the metrics, labelled by rule.
    let mut c = claims("alice", &["user"]);
    c.aud = Audience::One("heimdall-tests".into());
    let token = mint(&keys, Purpose::Public, &c);
    let allowed = http
        .get(format!("{base}/decision"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "api.example.com")
        .header("x-forwarded-uri", "/api/documents/3?x=1")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(allowed.headers()["x-user-id"], "alice");
    assert_eq!(allowed.headers()["x-user-roles"], "user");

    let denied = http
        .post(format!("{base}/decision"))
        .header("x-forwarded-method", "PUT")
        .header("x-forwarded-host", "api.example.com")
        .header("x-forwarded-uri", "/api/documents/3")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);

    let unauthenticated = http
        .get(format!("{base}/decision"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-host", "api.example.com")
        .header("x-forwarded-uri", "/api/documents/3")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    assert!(unauthenticated.headers().contains_key("www-authenticate"));

    let missing = http.get(format!("{base}/decision")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"heimdall_check_decisions_total{rule="documents",decision="allow"} 1"#,
        r#"heimdall_check_decisions_total{rule="documents",decision="deny"} 2"#,
        r#"heimdall_step_errors_total{mechanism="bearer",kind="authentication"} 1"#,
        r#"heimdall_step_errors_total{mechanism="editors_may_write",kind="authorization"} 1"#,
        r#"heimdall_check_rejected_total{entry="decision"} 1"#,
        "heimdall_check_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(line), "metrics lack `{line}`:\n{metrics}");
    }
    assert!(
        !metrics.contains("alice"),
        "a principal id must never be a label"
    );

    let published: serde_json::Value = http
        .get(format!("{base}/.well-known/paseto-keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let published = published["keys"].as_array().unwrap();
    assert_eq!(
        published.len(),
        1,
        "one public key; the local key is never published"
    );
    assert!(
        published[0]["paserk"]
            .as_str()
            .unwrap()
            .starts_with("k4.public.")
    );
    assert!(published[0]["kid"].as_str().unwrap().starts_with("k4.pid."));
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn decision_refuses_untrusted_peers() {
    let mut config = test_config(RULES);
    config.server.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    let running = heimdall::app::build(config, test_keys())
        .unwrap()
        .serve()
        .await
        .unwrap();
    let response = client()
        .get(format!("http://{}/decision", running.http_addr))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-host", "api.example.com")
        .header("x-forwarded-uri", "/public/x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "forwarded headers from an untrusted peer are not believed"
    );
    running.shutdown(Duration::from_secs(2)).await;
}

/// Rules whose decisions cover every outcome: `open` allows, `closed` denies and `broken` fails
/// (its header finalizer reads an attribute an anonymous subject does not have: an internal
/// error, so `decision="error"`).
const OUTCOME_RULES: &str = r#"
version: "1"
mechanisms:
  authenticators:
    - id: anonymous
      type: anonymous
  authorizers:
    - id: allow
      type: allow
    - id: deny
      type: deny
  finalizers:
    - id: tenant_header
      type: header
      config:
        headers:
          X-Tenant: subject.attr.tenant
rules:
  - id: open
    match: { paths: [/open] }
    execute: [ { authenticator: anonymous }, { authorizer: allow } ]
  - id: closed
    match: { paths: [/closed] }
    execute: [ { authenticator: anonymous }, { authorizer: deny } ]
  - id: broken
    match: { paths: [/broken] }
    execute:
      - authenticator: anonymous
      - authorizer: allow
      - finalizer: tenant_header
"#;

/// Runs `promtool check metrics` on `exposition`; promtool's complaints are the error.
fn promtool_check_metrics(promtool: &std::path::Path, exposition: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    let Some(promtool) = heimdall::test_helpers::tools::require("promtool") else {
        return;
    };
    let running = heimdall::app::build(test_config(OUTCOME_RULES), test_keys())
        .unwrap()
        .serve()
        .await
        .unwrap();
    let base = format!("http://{}", running.http_addr);
    let http = client();
    for (path, status) in [
        ("/open", StatusCode::OK),
        ("/closed", StatusCode::FORBIDDEN),
        ("/broken", StatusCode::INTERNAL_SERVER_ERROR),
        ("/nowhere", StatusCode::FORBIDDEN),
    ] {
        let response = http
            .get(format!("{base}/decision"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "api.example.com")
            .header("x-forwarded-uri", path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    // Without an Accept header (as curl and promtool fetch it): the Prometheus text format.
    let served = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Prometheus asks for OpenMetrics and gets it.
    let openmetrics = http
        .get(format!("{base}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        openmetrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(openmetrics.text().await.unwrap().ends_with("# EOF\n"));
    running.shutdown(Duration::from_secs(2)).await;
    for sample in [
        r#"heimdall_check_decisions_total{rule="open",decision="allow"} 1"#,
        r#"heimdall_check_decisions_total{rule="closed",decision="deny"} 1"#,
        r#"heimdall_check_decisions_total{rule="broken",decision="error"} 1"#,
        r#"heimdall_step_errors_total{mechanism="tenant_header",kind="internal"} 1"#,
    ] {
        assert!(
            served.contains(sample),
            "metrics lack `{sample}`:\n{served}"
        );
    }
    if let Err(complaints) = promtool_check_metrics(&promtool, &served) {
        panic!("promtool check metrics on /metrics:\n{complaints}\n--- /metrics:\n{served}");
    }

    // The Cerbos and attribute families appear only when those are configured: check them too.
    let mut registry = prometheus_client::registry::Registry::default();
    let _cerbos = heimdall::cerbos::CerbosMetrics::new(&mut registry);
    let _attributes = heimdall::attributes::AttributeMetrics::new(&mut registry);
    let mut optional = String::new();
    prometheus_client::encoding::text::encode(&mut optional, &registry).unwrap();
    let optional = heimdall::metrics::to_prometheus_text(&optional);
    if let Err(complaints) = promtool_check_metrics(&promtool, &optional) {
        panic!(
            "promtool check metrics on the Cerbos and attribute families:\n{complaints}\n---\n{optional}"
        );
    }
}
