//! heimdall as a child process (the real `heimdall serve` binary), for tests that must kill an
//! instance (SIGKILL) or stop it (SIGTERM) while it works, which an in-process server cannot do.
//!
//! The configuration is written to a file; the gRPC and HTTP ports are free loopback ports passed
//! through `GRPC_PORT` and `PORT`, with `HEIMDALL_BIND=127.0.0.1`. Its output goes to a log file
//! that stays after the test, for post-mortems. Starting does not wait for readiness: tests that
//! expect a failed start need the process as it is.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::{fail, free_port, log_stdio, unique_id};

/// How often readiness and health are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The bound on one probe of `/ready` or `/health`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The bound on fetching `/metrics`.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful stop (SIGTERM) may take before the process is killed.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Environment variables heimdall reads that the test runner's own environment must not leak into
/// the child; a test sets them explicitly through `env` when it needs them.
const CLEARED_ENV: &[&str] = &[
    "HEIMDALL_CONFIG",
    "PASETO_SYMMETRIC_KEY",
    "CERBOS_GRPC_URL",
    "NATS_URL",
];

/// A `heimdall serve` child process on loopback; killed when dropped (its log file stays).
pub struct HeimdallProcess {
    /// Behind a mutex so that `&self` probes can notice an exit (`try_wait` needs `&mut Child`);
    /// it is only ever locked for a `try_wait`, never across an `.await`. `None` once killed or
    /// terminated.
    child: Mutex<Option<Child>>,
    /// The process id, `None` once killed or terminated.
    pid: Option<u32>,
    grpc: SocketAddr,
    http: SocketAddr,
    /// Holds `config.yaml` and `heimdall.log`.
    dir: PathBuf,
    client: reqwest::Client,
}

impl HeimdallProcess {
    /// Writes `config_yaml` to a file and runs `heimdall serve --config <file>` on free loopback
    /// ports, with `RUST_LOG=info` and then `env` (which may override it). Does not wait for
    /// readiness: see [`HeimdallProcess::wait_ready`]. Panics if the process cannot be spawned.
    pub async fn start(config_yaml: &str, env: &[(&str, &str)]) -> HeimdallProcess {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "heimdall-{}-{}",
            std::process::id(),
            unique_id()
        ));
        // A leftover of an earlier run with the same process id would mix two logs.
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            fail(&format!("create {}: {e}", dir.display()));
        }
        let config = dir.join("config.yaml");
        if let Err(e) = std::fs::write(&config, config_yaml) {
            fail(&format!("write {}: {e}", config.display()));
        }
        let log_path = dir.join("heimdall.log");
        let (log, log_err) = log_stdio(&log_path).unwrap_or_else(|e| fail(&e));
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_heimdall"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            // Relative paths in a test configuration resolve against the repository root.
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        command
            .env("HEIMDALL_BIND", "127.0.0.1")
            .env("GRPC_PORT", grpc.port().to_string())
            .env("PORT", http.port().to_string())
            .env("RUST_LOG", "info");
        for (name, value) in env {
            command.env(name, value);
        }
        let child = match command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => fail(&format!("spawn {}: {e}", env!("CARGO_BIN_EXE_heimdall"))),
        };
        let client = match reqwest::Client::builder().no_proxy().build() {
            Ok(client) => client,
            Err(e) => fail(&format!("HTTP client: {e}")),
        };
        HeimdallProcess {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            grpc,
            http,
            dir,
            client,
        }
    }

    /// Polls `GET /ready` every 50 ms until it answers 200 (`true`), the timeout passes or the
    /// process exits (`false`, at once).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.wait_for("/ready", timeout).await
    }

    /// Polls `GET /health` like [`HeimdallProcess::wait_ready`] polls `/ready`.
    pub async fn wait_healthy(&self, timeout: Duration) -> bool {
        self.wait_for("/health", timeout).await
    }

    /// One probe of `GET /ready` (1 s timeout): whether it answers 200.
    pub async fn is_ready(&self) -> bool {
        self.probe("/ready", PROBE_TIMEOUT).await
    }

    /// One probe of `GET /health` (1 s timeout): whether it answers 200.
    pub async fn is_healthy(&self) -> bool {
        self.probe("/health", PROBE_TIMEOUT).await
    }

    async fn wait_for(&self, path: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.probe(path, left.min(PROBE_TIMEOUT)).await {
                return true;
            }
            tokio::time::sleep(
                POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    async fn probe(&self, path: &str, timeout: Duration) -> bool {
        let url = format!("http://{}{path}", self.http);
        matches!(
            self.client.get(&url).timeout(timeout).send().await,
            Ok(response) if response.status() == reqwest::StatusCode::OK
        )
    }

    /// The Prometheus text of `GET /metrics`. Panics, with the log, if it cannot be fetched.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.http);
        let fetched = async {
            let response = self
                .client
                .get(&url)
                .timeout(METRICS_TIMEOUT)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("status {}", response.status()));
            }
            response.text().await.map_err(|e| e.to_string())
        }
        .await;
        match fetched {
            Ok(text) => text,
            Err(e) => fail(&format!(
                "GET {url}: {e}\n--- {} ---\n{}",
                self.log_path().display(),
                self.log()
            )),
        }
    }

    /// The value of one sample of `GET /metrics`, e.g. `heimdall_requests_total{rule="api"}`:
    /// see [`sample_value`]. `None` if there is no such sample.
    pub async fn metric_value(&self, name_with_labels: &str) -> Option<f64> {
        sample_value(&self.metrics().await, name_with_labels)
    }

    /// Kills heimdall (SIGKILL: no graceful shutdown, nothing flushed) and waits for it to exit.
    /// Returns the exit status, `None` if it was not running.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.take_child()?;
        let _ = child.start_kill();
        child.wait().await.ok()
    }

    /// Stops heimdall gracefully (SIGTERM) and waits at most 10 s for it to exit, then kills it.
    /// Returns the exit status, `None` if it was not running.
    pub async fn terminate(&mut self) -> Option<ExitStatus> {
        let child = self.take_child()?;
        super::terminate(child, TERMINATE_TIMEOUT).await
    }

    /// Whether the process is still running (not exited, killed or terminated).
    pub fn is_running(&self) -> bool {
        match self.child.try_lock() {
            Ok(mut child) => match child.as_mut() {
                Some(running) => matches!(running.try_wait(), Ok(None)),
                None => false,
            },
            // Another probe holds the lock for its own `try_wait`, so the process was not
            // killed or terminated (those need `&mut self`); the next poll looks again.
            Err(_) => true,
        }
    }

    /// The process id, `None` after a kill or terminate.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The ext_authz gRPC address (127.0.0.1).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The HTTP side port address (127.0.0.1): `/health`, `/ready`, `/metrics`, ...
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The configuration file heimdall was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// The log file (stdout and stderr); it stays after the process is dropped.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("heimdall.log")
    }

    /// What heimdall has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn take_child(&mut self) -> Option<Child> {
        self.pid = None;
        self.child.get_mut().take()
    }
}

/// The value of the sample `name_with_labels` in the Prometheus text `text`: the line that starts
/// with exactly `name_with_labels` followed by a space (labels in the order heimdall writes
/// them). A trailing timestamp is ignored. `None` if there is no such line or it does not parse.
pub fn sample_value(text: &str, name_with_labels: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name_with_labels)?.strip_prefix(' '))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}
