//! A real NATS server with JetStream for integration tests.
//!
//! It runs `nats-server -js` with a file store in its own directory under the test target's
//! temporary directory, its client and monitoring listeners on free loopback ports. It is ready
//! once the monitoring endpoint `/healthz?js-enabled-only=true` answers 200 and the client port
//! accepts connections. Tests can kill it (SIGKILL, a crash) or stop it (SIGTERM) and start it
//! again on the same ports and store directory, so file-stored streams survive the restart.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::process::{ManagedProcess, NotReady, fail, fresh_dir};
use super::{free_port, tools};

/// How long NATS may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The bound on one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a graceful stop (SIGTERM) may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a start is tried when the server exits at once (its port still held by the
/// previous instance, e.g. in TIME_WAIT).
const START_ATTEMPTS: u32 = 5;
/// The pause between two such attempts.
const START_RETRY_DELAY: Duration = Duration::from_millis(250);
/// How long [`NatsServer::client`] keeps trying to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running NATS server with JetStream on loopback; killed (and its store directory removed)
/// when dropped.
pub struct NatsServer {
    binary: PathBuf,
    process: Option<ManagedProcess>,
    port: u16,
    monitor_port: u16,
    /// Kept across restarts: JetStream's state is tied to the server it belongs to.
    name: String,
    /// The JetStream store directory (`-sd`); it also holds the log, `nats.log`.
    dir: PathBuf,
}

impl NatsServer {
    /// Starts NATS with JetStream on free loopback ports and waits (at most 20 s) until it serves.
    ///
    /// Returns `None` when `nats-server` is not installed and the tests do not run in CI (see
    /// [`tools::require`]); panics if it is installed but does not start, with its log.
    pub async fn start() -> Option<NatsServer> {
        let binary = tools::require("nats-server")?;
        Some(
            Self::start_binary(binary)
                .await
                .unwrap_or_else(|e| fail(&e)),
        )
    }

    /// Starts the NATS server `binary` as [`NatsServer::start`] does; `Err` (with its log) when
    /// it does not become ready.
    pub async fn start_binary(binary: PathBuf) -> Result<NatsServer, String> {
        // A leftover of an earlier run with the same process id would bring back old streams:
        // `fresh_dir` removes it.
        let dir = fresh_dir("nats")?;
        let name = dir
            .file_name()
            .map(|n| format!("heimdall-test-{}", n.to_string_lossy()))
            .unwrap_or_else(|| "heimdall-test".to_owned());
        let mut server = NatsServer {
            binary,
            process: None,
            port: free_port(),
            monitor_port: free_port(),
            name,
            dir,
        };
        server.try_start_again().await?;
        Ok(server)
    }

    /// Starts NATS again with the same ports, server name and store directory, so that
    /// file-stored streams and their messages survive; waits until it serves.
    ///
    /// A running server is stopped gracefully first ([`NatsServer::stop`]); call
    /// [`NatsServer::kill`] before to restart after a crash instead. Panics, with the log, if it
    /// does not become ready.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    async fn start_again(&mut self) {
        if let Err(e) = self.try_start_again().await {
            fail(&e);
        }
    }

    async fn try_start_again(&mut self) -> Result<(), String> {
        let mut attempt = 1;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                // An immediate exit is most likely a port not yet released by the previous
                // instance: worth a few more tries. A server that runs but never gets ready is not.
                Err(NotReady::Exited(_)) if attempt < START_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(START_RETRY_DELAY).await;
                }
                Err(e) => {
                    self.kill().await;
                    return Err(format!(
                        "nats-server did not become ready (attempt {attempt}): {e}\n--- {} ---\n{}",
                        self.log_path().display(),
                        self.log()
                    ));
                }
            }
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), NotReady> {
        let mut command = Command::new(&self.binary);
        command
            .arg("-js")
            .arg("-sd")
            .arg(&self.dir)
            .args(["-a", "127.0.0.1"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("--server_name")
            .arg(&self.name);
        let process = ManagedProcess::spawn("nats-server", &mut command, &self.log_path())
            .map_err(NotReady::TimedOut)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
            .map_err(|e| NotReady::TimedOut(format!("HTTP client: {e}")))?;
        let health = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.monitor_port
        );
        let client = self.client_addr();
        let ready = process
            .wait_ready(READY_TIMEOUT, POLL_INTERVAL, || {
                probe(&http, &health, client)
            })
            .await;
        // Kept even when it is not ready, so that `kill` stops it.
        self.process = Some(process);
        ready
    }

    /// Kills NATS (SIGKILL, a crash: nothing is flushed or closed) and waits for it to exit.
    /// [`NatsServer::restart`] brings it back. Does nothing if it is not running.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Stops NATS gracefully (SIGTERM) and waits for it to exit; kills it if it is still running
    /// after 10 s. Does nothing if it is not running.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(STOP_TIMEOUT).await;
        }
    }

    /// A client connected to this server. Retries for at most 10 s (the server may be
    /// restarting); panics, with the log, if it cannot connect.
    pub async fn client(&self) -> async_nats::Client {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let connected = async_nats::ConnectOptions::new()
                .connection_timeout(PROBE_TIMEOUT)
                .connect(self.url())
                .await;
            match connected {
                Ok(client) => return client,
                Err(e) if Instant::now() >= deadline => fail(&format!(
                    "connect to {}: {e}\n--- {} ---\n{}",
                    self.url(),
                    self.log_path().display(),
                    self.log()
                )),
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// `nats://127.0.0.1:PORT`, the client URL.
    pub fn url(&self) -> String {
        format!("nats://{}", self.client_addr())
    }

    /// The client port (on 127.0.0.1); the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring port (on 127.0.0.1): `/healthz`, `/jsz`, `/varz`, ...
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The JetStream store directory (`-sd`); the same across restarts.
    pub fn store_dir(&self) -> &Path {
        &self.dir
    }

    /// The process id of the running server, `None` after a kill or stop.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ManagedProcess::pid)
    }

    /// Whether the server is running (started and not killed or stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// What the server has logged so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Dropping the process kills it and waits (bounded) for it to be gone, so that it cannot
        // write into the store directory while it is being removed.
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One readiness probe: JetStream enabled according to the monitoring endpoint, and the client
/// port accepting connections (monitoring may come up before the client listener).
async fn probe(http: &reqwest::Client, health: &str, client: SocketAddr) -> Result<(), String> {
    let response = http
        .get(health)
        .send()
        .await
        .map_err(|e| format!("GET {health}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {health}: {}", response.status()));
    }
    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(client))
        .await
        .map_err(|_| format!("connect {client}: timed out"))?
        .map(drop)
        .map_err(|e| format!("connect {client}: {e}"))
}
