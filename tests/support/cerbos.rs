//! A real Cerbos PDP for integration tests.
//!
//! It runs `cerbos server` with the shipped configuration, `infra/cerbos/config.yaml`, and the
//! example policies in `infra/cerbos/policies`, with its gRPC and HTTP listeners moved to free
//! loopback ports (`--set=server.grpcListenAddr=...`). It is ready once its gRPC health service
//! answers `SERVING`. Tests can stop it and start it again on the same ports, and pause it
//! (SIGSTOP) to make calls hang until their deadline. [`Cerbos::start_with`] serves another
//! policy directory (with `_schemas`) and extra settings, e.g. schema enforcement.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{fail, free_port, log_stdio, send_signal, tools, unique_id};

/// How long Cerbos may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The bound on one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The shipped Cerbos configuration, relative to the repository root.
pub const CONFIG: &str = "infra/cerbos/config.yaml";
/// The example policies, relative to the repository root.
pub const POLICIES: &str = "infra/cerbos/policies";

/// The repository root, where Cerbos runs (the shipped configuration's paths are relative to it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running Cerbos PDP on loopback; killed (and its log directory removed) when dropped.
pub struct Cerbos {
    binary: PathBuf,
    child: Option<Child>,
    grpc: SocketAddr,
    http: SocketAddr,
    dir: PathBuf,
    /// The policy directory (relative to the repository root, or absolute).
    policies: PathBuf,
    /// Extra `--set` arguments (TLS, schema enforcement).
    extra_args: Vec<String>,
    /// Whether it serves TLS: readiness is then a TCP connect (the health probe speaks plain
    /// HTTP/2).
    tls: bool,
}

impl Cerbos {
    /// Starts Cerbos on free loopback ports and waits (at most 20 s) until it serves.
    ///
    /// Returns `None` when Cerbos is not installed and the tests do not run in CI (see
    /// [`tools::require`]); panics if Cerbos is installed but does not start, with its log.
    pub async fn start() -> Option<Cerbos> {
        Self::start_with(Path::new(POLICIES), &[]).await
    }

    /// Starts Cerbos with the policies (and `_schemas`) of `policies` and extra `--set=KEY=VALUE`
    /// settings, e.g. `schema.enforcement=reject`; otherwise as [`Cerbos::start`].
    pub async fn start_with(policies: &Path, settings: &[&str]) -> Option<Cerbos> {
        let binary = tools::require("cerbos")?;
        let id = unique_id();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cerbos-{}-{id}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            fail(&format!("create {}: {e}", dir.display()));
        }
        let mut cerbos = Cerbos {
            binary,
            child: None,
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            dir,
            policies: policies.to_path_buf(),
            extra_args: settings.iter().map(|s| format!("--set={s}")).collect(),
            tls: false,
        };
        cerbos.start_again().await;
        Some(cerbos)
    }

    /// Starts Cerbos serving TLS with the given PEM certificate and key.
    pub async fn start_tls(cert: &Path, key: &Path) -> Option<Cerbos> {
        let binary = tools::require("cerbos")?;
        let mut cerbos = Cerbos {
            binary,
            child: None,
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "cerbos-tls-{}-{}",
                std::process::id(),
                unique_id()
            )),
            policies: PathBuf::from(POLICIES),
            extra_args: vec![
                format!("--set=server.tls.cert={}", cert.display()),
                format!("--set=server.tls.key={}", key.display()),
            ],
            tls: true,
        };
        let _ = std::fs::create_dir_all(&cerbos.dir);
        cerbos.start_again().await;
        Some(cerbos)
    }

    /// Starts Cerbos again, on the same ports, after [`Cerbos::stop`]; waits until it serves.
    /// Does nothing if it is running. Panics, with the log, if it does not become ready.
    pub async fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        if let Err(message) = self.spawn_and_wait().await {
            fail(&format!(
                "Cerbos did not become ready: {message}\n--- {} ---\n{}",
                self.log_path().display(),
                self.log()
            ));
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let (log, log_err) = log_stdio(&log_path)?;
        let child = Command::new(&self.binary)
            .arg("server")
            .arg(format!("--config={CONFIG}"))
            .arg(format!("--set=server.grpcListenAddr={}", self.grpc))
            .arg(format!("--set=server.httpListenAddr={}", self.http))
            .arg(format!(
                "--set=storage.disk.directory={}",
                self.policies.display()
            ))
            .args(&self.extra_args)
            .arg("--log-level=warn")
            .current_dir(repo_root())
            .env("CERBOS_NO_TELEMETRY", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Polls the gRPC health service until it answers `SERVING`.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("not probed yet");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("Cerbos exited with {status}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not serving after {}s ({last})",
                    READY_TIMEOUT.as_secs()
                ));
            }
            let probed = if !self.tls {
                probe(self.grpc).await
            } else {
                tokio::net::TcpStream::connect(self.grpc)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            };
            match probed {
                Ok(()) => return Ok(()),
                Err(reason) => last = reason,
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills Cerbos and waits for it to exit; its ports are free afterwards.
    /// [`Cerbos::start_again`] brings it back on the same ports.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Suspends Cerbos (SIGSTOP): connections stay open, calls hang until resumed.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes Cerbos after [`Cerbos::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let Some(pid) = self.pid() else {
            fail(&format!("cannot send {signal}: Cerbos is not running"));
        };
        if let Err(e) = send_signal(pid, signal) {
            fail(&e);
        }
    }

    /// The process id of the running Cerbos, `None` after [`Cerbos::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether Cerbos is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The gRPC address (127.0.0.1), the one heimdall calls.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// `http://GRPC_ADDR`, for a tonic endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The HTTP address (127.0.0.1): `/_cerbos/health` and the JSON API.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// What Cerbos has logged so far (warnings and errors), across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("cerbos.log")
    }
}

impl Drop for Cerbos {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) process.
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One gRPC health check of the whole server (service `""`).
async fn probe(grpc: SocketAddr) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://{grpc}"))
        .map_err(|e| format!("endpoint: {e}"))?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect {grpc}: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| format!("health check: {e}"))?;
    let status = response.into_inner().status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!("health status {status}"))
    }
}
