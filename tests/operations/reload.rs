//! Rule hot reload through the binary, in the layout a Kubernetes ConfigMap mount has
//! (`config.yaml -> ..data/config.yaml`, `..data -> ..<version>`): a valid change is applied
//! while Checks keep flowing, none failing; an invalid one is refused and the last good rules
//! keep answering; SIGHUP reloads; a restart-only change is reported and not applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use heimdall::test_helpers::check_request::CheckRequestBuilder;
use heimdall::test_helpers::heimdall::{ConfigSource, HeimdallCommand, HeimdallProcess};
use tonic::transport::Channel;

const WITHIN: Duration = Duration::from_secs(10);

/// `/stable` is allowed by every version; `/toggled` by version 2 only.
fn rules(toggled_allowed: bool, check_timeout: &str) -> String {
    let toggled = if toggled_allowed { "allow" } else { "deny" };
    format!(
        r#"version: "1"
server:
  check_timeout: {check_timeout}
mechanisms:
  authenticators:
    - id: anonymous
      type: anonymous
  authorizers:
    - id: allow
      type: allow
    - id: deny
      type: deny
rules:
  - id: stable
    match: {{ paths: [/stable] }}
    execute: [ {{ authenticator: anonymous }}, {{ authorizer: allow }} ]
  - id: toggled
    match: {{ paths: [/toggled] }}
    execute: [ {{ authenticator: anonymous }}, {{ authorizer: {toggled} }} ]
"#
    )
}

/// A directory laid out as the kubelet mounts a ConfigMap; [`ConfigMap::publish`] swaps the
/// `..data` symlink to a new version directory, as a ConfigMap update does.
struct ConfigMap {
    dir: tempfile::TempDir,
    version: usize,
}

impl ConfigMap {
    fn new(contents: &str) -> Self {
        let mut map = Self {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        map.publish(contents);
        std::os::unix::fs::symlink("..data/config.yaml", map.path()).unwrap();
        map
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    fn publish(&mut self, contents: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let root = self.dir.path();
        std::fs::create_dir(root.join(&version)).unwrap();
        std::fs::write(root.join(&version).join("config.yaml"), contents).unwrap();
        std::os::unix::fs::symlink(&version, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if self.version > 1 {
            std::fs::remove_dir_all(root.join(format!("..v{}", self.version - 1))).unwrap();
        }
    }
}

async fn allowed(client: &mut AuthorizationClient<Channel>, path: &str) -> Result<bool, String> {
    let response = client
        .check(CheckRequestBuilder::get(path).build())
        .await
        .map_err(|status| format!("{path}: {status}"))?
        .into_inner();
    Ok(response.status.is_some_and(|s| s.code == 0))
}

async fn wait_for(
    client: &mut AuthorizationClient<Channel>,
    path: &str,
    want_allowed: bool,
) -> bool {
    let deadline = Instant::now() + WITHIN;
    while Instant::now() < deadline {
        if allowed(client, path).await == Ok(want_allowed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn metric(heimdall: &HeimdallProcess, sample: &str) -> f64 {
    heimdall.metric_value(sample).await.unwrap_or(0.0)
}

/// Polls until the samples add up to `at_least` or [`WITHIN`] passes; returns the last sum.
async fn metrics_reach(heimdall: &HeimdallProcess, samples: &[&str], at_least: f64) -> f64 {
    let deadline = Instant::now() + WITHIN;
    loop {
        let mut sum = 0.0;
        for sample in samples {
            sum += metric(heimdall, sample).await;
        }
        if sum >= at_least || Instant::now() >= deadline {
            return sum;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks `/stable` in a loop on 4 connections until stopped; returns (checks, failures).
fn load(
    grpc: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let checks = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (stop, checks) = (Arc::clone(&stop), Arc::clone(&checks));
            workers.push(tokio::spawn(async move {
                let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
                    .await
                    .unwrap();
                let mut failures = Vec::new();
                // Bounded: at most 20 s of checks even if never stopped.
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match allowed(&mut client, "/stable").await {
                        Ok(true) => {}
                        Ok(false) => failures.push("/stable denied".to_owned()),
                        Err(error) => failures.push(error),
                    }
                    checks.fetch_add(1, Ordering::Relaxed);
                }
                failures
            }));
        }
        let mut failures = Vec::new();
        for worker in workers {
            failures.extend(worker.await.unwrap());
        }
        (checks.load(Ordering::Relaxed), failures)
    })
}

fn sighup(heimdall: &HeimdallProcess) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &heimdall.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn log_mentions(heimdall: &HeimdallProcess, needle: &str) -> bool {
    heimdall.log().contains(needle)
}

#[tokio::test]
async fn rules_reload_from_a_configmap_swap_and_sighup_and_bad_files_are_refused() {
    let mut map = ConfigMap::new(&rules(false, "180ms"));
    let heimdall = HeimdallCommand::new(ConfigSource::File(map.path()))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    assert!(
        heimdall.wait_ready(WITHIN).await,
        "{}",
        heimdall.log_tail(30)
    );
    let mut client = AuthorizationClient::connect(format!("http://{}", heimdall.grpc_addr()))
        .await
        .unwrap();
    assert_eq!(allowed(&mut client, "/toggled").await, Ok(false));

    // 1. A valid change, published as a ConfigMap update while Checks flow.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(heimdall.grpc_addr(), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    map.publish(&rules(true, "180ms"));
    assert!(
        wait_for(&mut client, "/toggled", true).await,
        "the swapped ConfigMap was not applied:\n{}",
        heimdall.log_tail(30)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (checks, failures) = traffic.await.unwrap();
    assert!(checks > 50, "too little traffic to mean anything: {checks}");
    assert!(
        failures.is_empty(),
        "{} of {checks} Checks failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        metric(
            &heimdall,
            r#"heimdall_config_reloads_total{trigger="file",outcome="applied"}"#
        )
        .await,
        1.0
    );

    // 2. An invalid change (an unknown authorizer) is refused; version 2 keeps answering.
    map.publish(&rules(true, "180ms").replace("authorizer: allow }", "authorizer: missing }"));
    let refused = r#"heimdall_config_reloads_total{trigger="file",outcome="refused"}"#;
    assert_eq!(
        metrics_reach(&heimdall, &[refused], 1.0).await,
        1.0,
        "{}",
        heimdall.log_tail(30)
    );
    assert_eq!(
        metric(&heimdall, "heimdall_config_last_reload_successful").await,
        0.0
    );
    assert!(log_mentions(&heimdall, "configuration reload refused"));
    assert!(
        log_mentions(&heimdall, "missing"),
        "the refusal must name the problem"
    );
    assert_eq!(allowed(&mut client, "/toggled").await, Ok(true));
    assert_eq!(allowed(&mut client, "/stable").await, Ok(true));
    // A file that is not YAML at all: refused too, the process keeps serving.
    map.publish("rules: [ unterminated\n");
    assert_eq!(
        metrics_reach(&heimdall, &[refused], 2.0).await,
        2.0,
        "{}",
        heimdall.log_tail(30)
    );
    assert_eq!(allowed(&mut client, "/toggled").await, Ok(true));

    // 3. Back to version 1 with a restart-only change: the rules apply on SIGHUP too (the
    // file event may already have done it), the check timeout is reported, not applied.
    map.publish(&rules(false, "150ms"));
    sighup(&heimdall);
    assert!(
        wait_for(&mut client, "/toggled", false).await,
        "{}",
        heimdall.log_tail(30)
    );
    // Whichever came first, the file event or the signal, the signal was answered by a reload.
    let signal_reloads = metrics_reach(
        &heimdall,
        &[
            r#"heimdall_config_reloads_total{trigger="signal",outcome="applied"}"#,
            r#"heimdall_config_reloads_total{trigger="signal",outcome="unchanged"}"#,
        ],
        1.0,
    )
    .await;
    assert!(
        signal_reloads >= 1.0,
        "SIGHUP did not reload:\n{}",
        heimdall.log_tail(30)
    );
    assert_eq!(
        metric(&heimdall, "heimdall_config_last_reload_successful").await,
        1.0
    );
    assert!(heimdall.is_running(), "SIGHUP must not stop heimdall");
    assert!(
        log_mentions(&heimdall, "take effect only at restart") && log_mentions(&heimdall, "server"),
        "{}",
        heimdall.log_tail(30)
    );
}

#[tokio::test]
async fn sighup_without_a_configuration_file_keeps_serving() {
    let heimdall = HeimdallCommand::new(ConfigSource::Embedded)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    assert!(
        heimdall.wait_ready(WITHIN).await,
        "{}",
        heimdall.log_tail(30)
    );
    sighup(&heimdall);
    let deadline = Instant::now() + WITHIN;
    while !log_mentions(&heimdall, "nothing to reload") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        log_mentions(&heimdall, "nothing to reload"),
        "{}",
        heimdall.log_tail(30)
    );
    assert!(heimdall.is_ready().await);
}
