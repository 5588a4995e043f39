//! heimdall for tests and benches, in this process ([`serve_in_process`]) or as a child process
//! ([`HeimdallProcess`], the real `heimdall serve` binary) for tests that must kill an instance
//! (SIGKILL) or stop it (SIGTERM) while it works, which an in-process server cannot do, and for
//! the load harness.
//!
//! The child's configuration is written to a file (or named by a file, or the embedded one); the
//! gRPC and HTTP ports are free loopback ports passed through `GRPC_PORT` and `PORT`, with
//! `HEIMDALL_BIND=127.0.0.1`. Its output goes to a log file that stays after the test, for
//! post-mortems. Starting does not wait for readiness: tests that expect a failed start need the
//! process as it is.
//!
//! [`mint_token`] and [`start_heimdall`] are the benches' way to get a token and a ready child.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::Command;

use super::process::{ManagedProcess, fail, fresh_dir};
use super::{free_port, tools};
use crate::app::Running;
use crate::config::Config;
use crate::tokens::Keyring;

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

/// How long [`serve_in_process`] waits for readiness.
const IN_PROCESS_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`start_heimdall`] waits for `/ready`.
const START_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on `heimdall token mint` ([`mint_token`]).
const MINT_TIMEOUT: Duration = Duration::from_secs(30);
/// heimdall log lines kept to explain a failed start.
const LOG_TAIL: usize = 40;

/// Builds heimdall from `config` and `keys`, serves it in this process on the configuration's
/// addresses (loopback port 0 with [`super::test_config`]) and waits (at most 20 s) until it is
/// ready: Cerbos healthy, NATS consumer live, listeners bound. Returns the key ring it verifies
/// with (for minting) and the running server.
pub async fn serve_in_process(
    config: Config,
    keys: Keyring,
) -> Result<(Arc<Keyring>, Running), String> {
    let built = crate::app::build(config, keys).map_err(|e| format!("build heimdall: {e:#}"))?;
    let keys = Arc::clone(&built.keys);
    let running = built
        .serve()
        .await
        .map_err(|e| format!("serve heimdall: {e:#}"))?;
    wait_ready_in_process(&running, IN_PROCESS_READY_TIMEOUT).await?;
    Ok((keys, running))
}

/// Polls an in-process heimdall's readiness every 20 ms until it is ready or `timeout` passes;
/// `Err` names what is still pending.
pub async fn wait_ready_in_process(running: &Running, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !running.readiness.is_ready() {
        if Instant::now() >= deadline {
            return Err(format!(
                "heimdall not ready: {:?}",
                running.readiness.pending()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Where a [`HeimdallProcess`] takes its configuration from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// YAML text, written to `config.yaml` in the process's directory.
    Yaml(String),
    /// A file, passed as it is (`HEIMDALL_CONFIG`).
    File(PathBuf),
    /// The embedded configuration (no `--config`, `HEIMDALL_CONFIG` removed).
    Embedded,
}

/// How to run a `heimdall` child: the binary, the configuration and the environment. The same
/// command line serves `heimdall serve` and other subcommands (`token mint`), so both see the
/// same key and configuration.
#[derive(Debug, Clone)]
pub struct HeimdallCommand {
    binary: PathBuf,
    config: ConfigSource,
    grpc: SocketAddr,
    http: SocketAddr,
    env: Vec<(String, String)>,
}

impl HeimdallCommand {
    /// [`tools::heimdall_binary`] with `config` on two free loopback ports.
    pub fn new(config: ConfigSource) -> Self {
        Self {
            binary: tools::heimdall_binary(),
            config,
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            env: Vec::new(),
        }
    }

    /// Another heimdall binary.
    #[must_use]
    pub fn binary(mut self, binary: PathBuf) -> Self {
        self.binary = binary;
        self
    }

    /// Sets an environment variable for the child (after the defaults, so it may override them).
    #[must_use]
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same binary, configuration source and environment on two fresh ports.
    #[must_use]
    pub fn on_fresh_ports(&self) -> Self {
        Self {
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            ..self.clone()
        }
    }

    /// The heimdall binary.
    pub fn binary_path(&self) -> &Path {
        &self.binary
    }

    /// A `heimdall` command with this environment, before its subcommand; `config_file` is the
    /// written YAML of [`ConfigSource::Yaml`], if any.
    pub fn command(&self, config_file: Option<&Path>) -> Command {
        let mut command = Command::new(&self.binary);
        // Relative paths in a test configuration resolve against the repository root.
        command.current_dir(tools::repo_root());
        for name in CLEARED_ENV
            .iter()
            .chain(&crate::config::otel::OTEL_ENV_VARS)
        {
            command.env_remove(name);
        }
        match (&self.config, config_file) {
            (ConfigSource::File(path), _) => {
                command.env("HEIMDALL_CONFIG", path);
            }
            (ConfigSource::Yaml(_), Some(path)) => {
                command.env("HEIMDALL_CONFIG", path);
            }
            (ConfigSource::Yaml(_) | ConfigSource::Embedded, _) => {}
        }
        command
            .env("HEIMDALL_BIND", "127.0.0.1")
            .env("GRPC_PORT", self.grpc.port().to_string())
            .env("PORT", self.http.port().to_string());
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Runs `heimdall serve` in a fresh directory of its own; does not wait for readiness.
    pub fn spawn(&self) -> Result<HeimdallProcess, String> {
        let dir = fresh_dir("heimdall")?;
        let config_file = match &self.config {
            ConfigSource::Yaml(text) => {
                let path = dir.join("config.yaml");
                std::fs::write(&path, text)
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
                Some(path)
            }
            ConfigSource::File(_) | ConfigSource::Embedded => None,
        };
        let mut command = self.command(config_file.as_deref());
        command.arg("serve");
        let process = ManagedProcess::spawn("heimdall", &mut command, &dir.join("heimdall.log"))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HeimdallProcess {
            process,
            grpc: self.grpc,
            http: self.http,
            config: config_file.or_else(|| match &self.config {
                ConfigSource::File(path) => Some(path.clone()),
                _ => None,
            }),
            client,
        })
    }
}

/// `heimdall token mint <claims> --purpose local` with `heimdall`'s key and configuration, e.g.
/// `--sub bench-user --roles user,editor`; the token is the trimmed standard output, which must
/// be a v4.local token. Bounded by 30 s.
pub async fn mint_token(heimdall: &HeimdallCommand, claims: &[&str]) -> anyhow::Result<String> {
    let mut command = heimdall.command(None);
    command
        .args(["token", "mint"])
        .args(claims)
        .args(["--purpose", "local"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(MINT_TIMEOUT, command.output())
        .await
        .context("`heimdall token mint` did not finish within 30s")?
        .with_context(|| format!("running {}", heimdall.binary_path().display()))?;
    if !output.status.success() {
        bail!(
            "`heimdall token mint` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let token = String::from_utf8(output.stdout)
        .context("`heimdall token mint` printed something that is not UTF-8")?
        .trim()
        .to_owned();
    if !token.starts_with("v4.local.") {
        bail!("`heimdall token mint` printed `{token}`, not a v4.local token");
    }
    Ok(token)
}

/// Runs `heimdall serve` and waits until `/ready` answers 200, it exits, or 30 s pass; `name`
/// labels the instance in the error and in the line printed to stderr once it is ready. A
/// failed start carries the last lines of its log.
pub async fn start_heimdall(
    heimdall: &HeimdallCommand,
    name: &str,
) -> anyhow::Result<HeimdallProcess> {
    let child = heimdall
        .spawn()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("starting {name}"))?;
    if !child.wait_ready(START_READY_TIMEOUT).await {
        let why = match child.exit_status() {
            Some(status) => format!("heimdall exited before it was ready ({status})"),
            None => format!("heimdall was not ready within {START_READY_TIMEOUT:?}"),
        };
        return Err(anyhow::anyhow!(
            "{why}; its last log lines:\n{}",
            child.log_tail(LOG_TAIL)
        ))
        .with_context(|| format!("starting {name}"));
    }
    eprintln!(
        "{name}: ready on {} (side port {})",
        child.grpc_addr(),
        child.http_addr()
    );
    Ok(child)
}

/// A `heimdall serve` child process on loopback; killed when dropped (its log file stays).
pub struct HeimdallProcess {
    process: ManagedProcess,
    grpc: SocketAddr,
    http: SocketAddr,
    /// The configuration file, `None` for the embedded one.
    config: Option<PathBuf>,
    client: reqwest::Client,
}

impl HeimdallProcess {
    /// Writes `config_yaml` to a file and runs `heimdall serve --config <file>` on free loopback
    /// ports, with `RUST_LOG=info` and then `env` (which may override it). Does not wait for
    /// readiness: see [`HeimdallProcess::wait_ready`]. Panics if the process cannot be spawned.
    pub async fn start(config_yaml: &str, env: &[(&str, &str)]) -> HeimdallProcess {
        let command = env.iter().fold(
            HeimdallCommand::new(ConfigSource::Yaml(config_yaml.to_owned()))
                .env("RUST_LOG", "info"),
            |command, (name, value)| command.env(name, value),
        );
        command.spawn().unwrap_or_else(|e| fail(&e))
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
            if !self.process.is_running() {
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
        self.process.kill().await
    }

    /// Stops heimdall gracefully (SIGTERM) and waits at most 10 s for it to exit, then kills it.
    /// Returns the exit status, `None` if it was not running.
    pub async fn terminate(&mut self) -> Option<ExitStatus> {
        self.process.stop(TERMINATE_TIMEOUT).await
    }

    /// Whether the process is still running (not exited, killed or terminated).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The exit status if heimdall has exited on its own.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.process.exit_status()
    }

    /// The process id, `None` after a kill or terminate.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The ext_authz gRPC address (127.0.0.1).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The HTTP side port address (127.0.0.1): `/health`, `/ready`, `/metrics`, ...
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The configuration file heimdall was started with, `None` for the embedded one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// The log file (stdout and stderr); it stays after the process is dropped.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// What heimdall has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The last `lines` lines of the log, indented.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
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
