//! The shipped Envoy configurations are valid for the pinned Envoy, the test harness runs the same
//! ext_authz settings as `envoy/envoy.yaml`, and that setup fails closed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use heimdall::test_helpers::echo::EchoUpstream;
use heimdall::test_helpers::envoy::{self, Envoy, EnvoyOptions, TemplateValues};
use heimdall::test_helpers::{free_port, tools};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `envoy/*.yaml` (the Istio resources under envoy/istio/ are not Envoy configurations).
fn shipped_configs() -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo().join("envoy"))? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The configuration's meaning, without comments and blank lines.
fn without_comments(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| match line.find(" #") {
            Some(at) if !line.trim_start().starts_with('#') => line[..at].trim_end(),
            _ => line.trim_end(),
        })
        .filter(|line| !line.is_empty() && !line.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_shipped_envoy_config_is_valid() {
    if tools::require("envoy").is_none() {
        return;
    }
    let files = shipped_configs().unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["envoy.yaml", "sidecar.yaml", "front-proxy.yaml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "envoy/{expected} is missing (found {names:?})"
        );
    }
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| Envoy::validate(file).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn test_template_is_the_local_stack_config() {
    let rendered = envoy::render(&TemplateValues {
        admin_port: 9901,
        listen_port: 10000,
        ext_authz_grpc: SocketAddr::from(([127, 0, 0, 1], 9001)),
        upstream: SocketAddr::from(([127, 0, 0, 1], 8081)),
        side_port: SocketAddr::from(([127, 0, 0, 1], 8080)),
        timeout_ms: 250,
    })
    .unwrap();
    let shipped = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let (rendered, shipped) = (without_comments(&rendered), without_comments(&shipped));
    if let Some((i, (r, s))) = rendered
        .iter()
        .zip(&shipped)
        .enumerate()
        .find(|(_, (r, s))| r != s)
    {
        panic!(
            "tests/fixtures/envoy-test.yaml.tmpl and envoy/envoy.yaml differ at meaningful line {}:\n  template: {r}\n  envoy.yaml: {s}",
            i + 1
        );
    }
    assert_eq!(
        rendered.len(),
        shipped.len(),
        "tests/fixtures/envoy-test.yaml.tmpl and envoy/envoy.yaml differ in length"
    );
}

#[test]
fn rendered_test_config_is_valid() {
    if tools::require("envoy").is_none() {
        return;
    }
    let rendered = envoy::render(&TemplateValues {
        admin_port: 0,
        listen_port: 0,
        ext_authz_grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
        upstream: SocketAddr::from(([127, 0, 0, 1], free_port())),
        side_port: SocketAddr::from(([127, 0, 0, 1], free_port())),
        timeout_ms: 100,
    })
    .unwrap();
    assert!(rendered.contains("timeout: 0.1s"), "{rendered}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("envoy-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("envoy-test.yaml");
    std::fs::write(&file, rendered).unwrap();
    let result = Envoy::validate(&file);
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap();
}

#[tokio::test]
async fn echo_upstream_reports_the_request() {
    let echo = EchoUpstream::start().await;
    let client = heimdall::test_helpers::http_client();
    let body: serde_json::Value = client
        .post(echo.url("/some/path?q=1"))
        .header("X-Thing", "a")
        .header("x-thing", "b")
        .body("ignored")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/some/path?q=1");
    assert_eq!(body["headers"]["x-thing"], "a, b");
}

#[tokio::test]
async fn envoy_fails_closed_when_heimdall_is_unreachable() {
    let echo = EchoUpstream::start().await;
    // A port nothing listens on: every ext_authz call fails to connect.
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let Some(envoy) = Envoy::start(EnvoyOptions {
        ext_authz_grpc: closed,
        upstream: echo.addr,
        timeout_ms: 250,
    })
    .await
    else {
        return;
    };
    assert!(envoy.listen_addr().ip().is_loopback());
    let client = heimdall::test_helpers::http_client();

    for path in ["/anything", "/admin/users", "/"] {
        let response = client.get(envoy.url(path)).send().await.unwrap();
        assert_eq!(
            response.status(),
            503,
            "{path} must be refused while heimdall is unreachable"
        );
    }

    let health = client.get(envoy.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "/healthz is never authorized");
    assert_eq!(health.text().await.unwrap(), "ok\n");

    // Encoded slashes are refused before any check, so they cannot dodge a path rule.
    let escaped = client
        .get(envoy.url("/admin%2Fusers"))
        .send()
        .await
        .unwrap();
    assert_eq!(escaped.status(), 400);

    // The refusals came from the ext_authz filter failing, not from anything else.
    let stats = client
        .get(envoy.admin_url("/stats?filter=ext_authz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("http.ingress.ext_authz.error: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ext_authz error counter in:\n{stats}"));
    assert!(errors >= 3, "ext_authz errors: {errors}\n{stats}");
}
