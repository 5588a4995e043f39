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
use std::time::Duration;

use tokio::process::Command;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::process::{ManagedProcess, fail, fresh_dir};
use super::{free_port, tools};

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
    tools::repo_root()
}

/// A running Cerbos PDP on loopback; killed (and its log directory removed) when dropped.
pub struct Cerbos {
    binary: PathBuf,
    process: Option<ManagedProcess>,
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
        Some(
            Self::start_binary(binary, policies, settings)
                .await
                .unwrap_or_else(|e| fail(&e)),
        )
    }

    /// Starts the Cerbos `binary` as [`Cerbos::start_with`] does; `Err` (with its log) when it
    /// does not become ready.
    pub async fn start_binary(
        binary: PathBuf,
        policies: &Path,
        settings: &[&str],
    ) -> Result<Cerbos, String> {
        let mut cerbos = Cerbos {
            binary,
            process: None,
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            dir: fresh_dir("cerbos")?,
            policies: policies.to_path_buf(),
            extra_args: settings.iter().map(|s| format!("--set={s}")).collect(),
            tls: false,
        };
        cerbos.try_start_again().await?;
        Ok(cerbos)
    }

    /// Starts Cerbos serving TLS with the given PEM certificate and key.
    pub async fn start_tls(cert: &Path, key: &Path) -> Option<Cerbos> {
        let binary = tools::require("cerbos")?;
        let mut cerbos = Cerbos {
            binary,
            process: None,
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            dir: fresh_dir("cerbos-tls").unwrap_or_else(|e| fail(&e)),
            policies: PathBuf::from(POLICIES),
            extra_args: vec![
                format!("--set=server.tls.cert={}", cert.display()),
                format!("--set=server.tls.key={}", key.display()),
            ],
            tls: true,
        };
        cerbos.start_again().await;
        Some(cerbos)
    }

    /// Starts Cerbos again, on the same ports, after [`Cerbos::stop`]; waits until it serves.
    /// Does nothing if it is running. Panics, with the log, if it does not become ready.
    pub async fn start_again(&mut self) {
        if let Err(e) = self.try_start_again().await {
            fail(&e);
        }
    }

    async fn try_start_again(&mut self) -> Result<(), String> {
        if self.process.is_some() {
            return Ok(());
        }
        let mut command = Command::new(&self.binary);
        command
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
            .env("CERBOS_NO_TELEMETRY", "1");
        let process = ManagedProcess::spawn("cerbos", &mut command, &self.log_path())?;
        let (grpc, tls) = (self.grpc, self.tls);
        let ready = process
            .wait_ready(READY_TIMEOUT, POLL_INTERVAL, || async move {
                if tls {
                    // The health probe speaks plain HTTP/2: a TCP connect has to do.
                    tokio::net::TcpStream::connect(grpc)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                } else {
                    probe(grpc).await
                }
            })
            .await;
        match ready {
            Ok(()) => {
                self.process = Some(process);
                Ok(())
            }
            Err(e) => Err(process.with_log(&format!("Cerbos did not become ready: {e}"))),
        }
    }

    /// Kills Cerbos and waits for it to exit; its ports are free afterwards.
    /// [`Cerbos::start_again`] brings it back on the same ports.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
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
        let sent = match &self.process {
            Some(process) => process.signal(signal),
            None => Err(format!("cannot send {signal}: Cerbos is not running")),
        };
        if let Err(e) = sent {
            fail(&e);
        }
    }

    /// The process id of the running Cerbos, `None` after [`Cerbos::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ManagedProcess::pid)
    }

    /// Whether Cerbos is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
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

    /// The log file; it is removed with Cerbos.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("cerbos.log")
    }
}

impl Drop for Cerbos {
    fn drop(&mut self) {
        // Dropping the process kills it (SIGKILL also ends a paused one) before its directory goes.
        drop(self.process.take());
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
