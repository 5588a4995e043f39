//! The shipped Envoy configurations are valid for the pinned Envoy, the test harness runs the same
//! ext_authz settings as `envoy/envoy.yaml`, that setup fails closed, and a replica stopped behind it
//! drains without failing a request.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup is a failed test"
)]

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
    for expected in [
        "envoy.yaml",
        "envoy-mtls.yaml",
        "sidecar.yaml",
        "front-proxy.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "envoy/{expected} is missing (found {names:?})"
        );
    }
    // envoy/envoy-mtls.yaml reads certificate files Envoy checks in validate mode: it is
    // validated as shipped, but with its directory pointing at generated ones.
    let tls_files = EnvoyTlsFiles::generate();
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            if text.contains(ENVOY_TLS_DIR) {
                Envoy::validate(&tls_files.substitute(file, &text)).err()
            } else {
                Envoy::validate(file).err()
            }
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Where envoy/envoy-mtls.yaml expects Envoy's client certificate, key and heimdall's CA.
const ENVOY_TLS_DIR: &str = "/etc/envoy/heimdall-tls/";

/// Generated `tls.crt`, `tls.key` and `ca.crt` for the configurations that name
/// [`ENVOY_TLS_DIR`].
struct EnvoyTlsFiles {
    dir: PathBuf,
}

impl EnvoyTlsFiles {
    fn generate() -> Self {
        use heimdall::test_helpers::tls::{TestCa, temp_dir};
        let dir = temp_dir("envoy-tls-files");
        let ca = TestCa::new("validate CA");
        let client = ca.client_cert("envoy");
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join("tls.crt"), &client.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &client.key_pem).unwrap();
        Self { dir }
    }

    /// `file`'s text with [`ENVOY_TLS_DIR`] replaced by the generated files' directory, written
    /// next to them.
    fn substitute(&self, file: &Path, text: &str) -> PathBuf {
        let path = self.dir.join(file.file_name().unwrap());
        let text = text.replace(ENVOY_TLS_DIR, &format!("{}/", self.dir.display()));
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// envoy/envoy-mtls.yaml is envoy/envoy.yaml plus TLS on the `heimdall` cluster, nothing else:
/// the ext_authz settings stay the tested ones.
#[test]
fn the_mtls_config_is_the_local_stack_config_with_tls_to_heimdall() {
    let read = |name: &str| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo().join("envoy").join(name)).unwrap())
            .unwrap()
    };
    let (mut mtls, plain) = (read("envoy-mtls.yaml"), read("envoy.yaml"));
    let clusters = mtls["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap();
    let heimdall = clusters
        .iter_mut()
        .find(|c| c["name"] == "heimdall")
        .unwrap()
        .as_mapping_mut()
        .unwrap();
    let tls = heimdall.remove("transport_socket").unwrap();
    assert_eq!(
        tls["typed_config"]["common_tls_context"]["alpn_protocols"][0],
        "h2"
    );
    assert!(tls["typed_config"]["common_tls_context"]["tls_certificates"].is_sequence());
    assert!(
        tls["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"].is_mapping()
    );
    assert_eq!(
        mtls, plain,
        "envoy-mtls.yaml differs from envoy.yaml beyond the TLS block"
    );
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
    let (errors, stats) = envoy.stat("http.ingress.ext_authz.error").await;
    let errors = errors.unwrap_or_else(|| panic!("no ext_authz error counter in:\n{stats}"));
    assert!(errors >= 3, "ext_authz errors: {errors}\n{stats}");
}

/// heimdall replicas that Envoy sees healthy, from the admin `/clusters` output.
async fn healthy_heimdall_hosts(client: &reqwest::Client, envoy: &Envoy) -> Vec<String> {
    let Ok(response) = client.get(envoy.admin_url("/clusters")).send().await else {
        return Vec::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|line| line.strip_prefix("heimdall::"))
        .filter_map(|line| line.strip_suffix("::health_flags::healthy"))
        .map(str::to_owned)
        .collect()
}

/// A rolling restart the way Kubernetes does it: two replicas behind the shipped Envoy
/// configuration (with its gRPC health check), one gets SIGTERM under load. It drains
/// (`/ready` 503, gRPC health NOT_SERVING for `server.drain_delay`), Envoy moves to the other
/// replica, the in-flight Checks finish, and it exits 0. No request may fail.
#[tokio::test]
async fn a_replica_stopped_under_load_fails_no_request() {
    use heimdall::test_helpers::heimdall::HeimdallProcess;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    let Some(_) = tools::require("envoy") else {
        return;
    };
    let config =
        heimdall::config::EMBEDDED.replacen("server:\n", "server:\n  drain_delay: 2s\n", 1);
    assert_ne!(
        config,
        heimdall::config::EMBEDDED,
        "no `server:` section to extend"
    );
    let mut leaving = HeimdallProcess::start(&config, &[]).await;
    let staying = HeimdallProcess::start(&config, &[]).await;
    for replica in [&leaving, &staying] {
        assert!(
            replica.wait_ready(Duration::from_secs(20)).await,
            "{}",
            replica.log_tail(20)
        );
    }
    let echo = EchoUpstream::start().await;
    let shipped = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let rendered = envoy::render_shipped(&shipped, leaving.grpc_addr(), echo.addr).unwrap();
    // The shipped cluster has one endpoint; the second replica joins it.
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&rendered).unwrap();
    let clusters = value["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap();
    let cluster = clusters
        .iter_mut()
        .find(|c| c["name"].as_str() == Some("heimdall"))
        .unwrap();
    let endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        .as_sequence_mut()
        .unwrap();
    let mut second = endpoints[0].clone();
    second["endpoint"]["address"]["socket_address"]["port_value"] =
        serde_yaml_ng::Value::from(staying.grpc_addr().port());
    endpoints.push(second);
    let Some(envoy) = Envoy::start_rendered(serde_yaml_ng::to_string(&value).unwrap()).await else {
        return;
    };
    let client = heimdall::test_helpers::http_client();
    let deadline = Instant::now() + Duration::from_secs(15);
    while healthy_heimdall_hosts(&client, &envoy).await.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "Envoy never saw both replicas healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), envoy.url("/public/drain"));
            let (stop, ok, failed, failures) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&failures),
            );
            tokio::spawn(async move {
                // Bounded: the loop ends when the test says so, at most 30 s from now.
                let end = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    match client.get(&url).send().await {
                        Ok(response) if response.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let what = match other {
                                Ok(response) => format!("status {}", response.status()),
                                Err(e) => format!("transport: {e}"),
                            };
                            failures.lock().await.push(what);
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = ok.load(Ordering::Relaxed);
    let stopped_at = Instant::now();
    let status = leaving.terminate().await.expect("the replica was running");
    let took = stopped_at.elapsed();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let failures = failures.lock().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the restart, first: {:?}\nEnvoy: {:?}\nreplica log:\n{}",
        failed.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed),
        failures.first(),
        healthy_heimdall_hosts(&client, &envoy).await,
        leaving.log_tail(20)
    );
    assert!(
        before > 0 && ok.load(Ordering::Relaxed) > before,
        "no load was sent"
    );
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_secs(2),
        "stopped after {took:?}, before the drain delay was over"
    );
    let log = leaving.log();
    assert!(log.contains("draining"), "{log}");
    assert!(staying.is_ready().await);
}
