//! A real NATS server with JetStream for integration tests.
//!
//! It runs `nats-server -js` with a file store in its own directory under the test target's
//! temporary directory, its client and monitoring listeners on free loopback ports. It is ready
//! once the monitoring endpoint `/healthz?js-enabled-only=true` answers 200 and the client port
//! accepts connections. Tests can kill it (SIGKILL, a crash) or stop it (SIGTERM) and start it
//! again on the same ports and store directory, so file-stored streams survive the restart.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{fail, free_port, log_stdio, terminate, tools, unique_id};

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
    child: Option<Child>,
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
        let id = format!("{}-{}", std::process::id(), unique_id());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nats-{id}"));
        // A leftover of an earlier run with the same process id would bring back old streams.
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            fail(&format!("create {}: {e}", dir.display()));
        }
        let mut server = NatsServer {
            binary,
            child: None,
            port: free_port(),
            monitor_port: free_port(),
            name: format!("heimdall-test-{id}"),
            dir,
        };
        server.start_again().await;
        Some(server)
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
        let mut attempt = 1;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                // An immediate exit is most likely a port not yet released by the previous
                // instance: worth a few more tries. A server that runs but never gets ready is not.
                Err(StartError::Exited(_)) if attempt < START_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(START_RETRY_DELAY).await;
                }
                Err(StartError::Exited(message) | StartError::Other(message)) => {
                    self.kill().await;
                    fail(&format!(
                        "nats-server did not become ready (attempt {attempt}): {message}\n--- {} ---\n{}",
                        self.log_path().display(),
                        self.log()
                    ));
                }
            }
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log_path = self.log_path();
        let (log, log_err) = log_stdio(&log_path).map_err(StartError::Other)?;
        let child = Command::new(&self.binary)
            .arg("-js")
            .arg("-sd")
            .arg(&self.dir)
            .args(["-a", "127.0.0.1"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("--server_name")
            .arg(&self.name)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| StartError::Other(format!("spawn {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Polls the monitoring health endpoint, then the client port, until both answer.
    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
            .map_err(|e| StartError::Other(format!("HTTP client: {e}")))?;
        let health = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.monitor_port
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("not probed yet");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(StartError::Exited(format!(
                    "nats-server exited with {status}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(StartError::Other(format!(
                    "not ready after {}s ({last})",
                    READY_TIMEOUT.as_secs()
                )));
            }
            match probe(&http, &health, self.client_addr()).await {
                Ok(()) => return Ok(()),
                Err(reason) => last = reason,
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills NATS (SIGKILL, a crash: nothing is flushed or closed) and waits for it to exit.
    /// [`NatsServer::restart`] brings it back. Does nothing if it is not running.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Stops NATS gracefully (SIGTERM) and waits for it to exit; kills it if it is still running
    /// after 10 s. Does nothing if it is not running.
    pub async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, STOP_TIMEOUT).await;
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
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the server is running (started and not killed or stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
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
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            // The store directory is removed next: wait (briefly, bounded) for the process to be
            // gone so that it cannot write into the directory while it is being removed.
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why a start failed: the process exited (worth retrying), or anything else.
enum StartError {
    Exited(String),
    Other(String),
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
