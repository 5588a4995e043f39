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

/// The ports [`free_port`] hands out: below Linux's default ephemeral range (32768–60999), so
/// the kernel never gives one to an outgoing connection or a `bind(0)` between the moment a port
/// is found free and the moment the program under test binds it. Tests that open thousands of
/// client connections (listeners, adversarial) made that race real.
const HANDED_OUT_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback TCP port that was free a moment ago (bound on 127.0.0.1, checked, released).
///
/// Prefer binding port 0 directly where the code under test allows it; this is for programs that
/// must be told their port up front. Ports come from [`HANDED_OUT_PORTS`], each at most once per
/// test process, starting at an offset derived from the process id so that consecutive test
/// binaries do not reuse each other's ports. Nothing listens on the port once this returns, so it
/// is also a valid "closed port" for fail-closed tests.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let span = HANDED_OUT_PORTS.end - HANDED_OUT_PORTS.start;
    let offset = u16::try_from(std::process::id() % u32::from(span)).unwrap_or(0);
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = HANDED_OUT_PORTS.start + (offset + step) % span;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    fail("no free loopback port below the ephemeral range")
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
