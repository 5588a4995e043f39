//! Shared helpers for heimdall's integration tests: finding the real components installed by
//! `make tools`, free loopback ports, an echo upstream, and a real Envoy or nginx in front of
//! heimdall.
//!
//! A test crate uses it with `mod support;`. Every address here is on loopback.
#![allow(
    dead_code,
    reason = "each integration test crate uses a different part of the support module"
)]

pub mod cerbos;
pub mod echo;
pub mod envoy;
pub mod nats;
pub mod nginx;
pub mod process;
pub mod tools;

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::process::Child;

/// A loopback TCP port that was free a moment ago (bound to 127.0.0.1:0, read, released).
///
/// Prefer binding port 0 directly where the code under test allows it; this is for programs that
/// must be told their port up front. Nothing listens on the port once this returns, so it is also
/// a valid "closed port" for fail-closed tests.
pub fn free_port() -> u16 {
    #[allow(
        clippy::expect_used,
        reason = "a test cannot go on without a loopback port"
    )]
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for a free port");
    #[allow(
        clippy::expect_used,
        reason = "a test cannot go on without a loopback port"
    )]
    let port = listener
        .local_addr()
        .expect("local address of a bound listener")
        .port();
    port
}

/// An HTTP client for loopback test traffic: no proxy from the environment, bounded timeouts.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| fail(&format!("build HTTP client: {e}")))
}

/// A number unique within this test process, for the names of files, directories and instances.
pub fn unique_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Fails the test: an installed component (or heimdall) that does not run as asked.
pub fn fail(message: &str) -> ! {
    #[allow(
        clippy::panic,
        reason = "a component that does not run as asked fails the test"
    )]
    {
        panic!("{message}");
    }
}

/// A child's stdout and stderr, both appended to the log file `path` (kept across restarts).
pub fn log_stdio(path: &Path) -> Result<(Stdio, Stdio), String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("clone {}: {e}", path.display()))?;
    Ok((Stdio::from(log), Stdio::from(log_err)))
}

/// Sends `signal` (`-TERM`, `-STOP`, `-CONT`) to process `pid`. The tests have no libc and no
/// unsafe code: the `kill` command sends it.
pub fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    match std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("kill {signal} {pid}: {status}")),
        Err(e) => Err(format!("kill {signal} {pid}: {e}")),
    }
}

/// Stops `child` gracefully: SIGTERM, at most `grace` to exit, then SIGKILL. Returns its exit
/// status.
pub async fn terminate(mut child: Child, grace: Duration) -> Option<ExitStatus> {
    if let Some(pid) = child.id() {
        // Already exiting is fine: the wait below tells.
        let _ = send_signal(pid, "-TERM");
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}
