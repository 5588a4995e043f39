//! One managed child process for every real component a test runs: spawned with its output
//! appended to a log file, polled with a readiness probe until a deadline, killed when dropped.
//!
//! Each component (NATS, Cerbos, Envoy, nginx, heimdall) only says how to start it and how to
//! tell it is ready; a restart is a new [`ManagedProcess`] on the same ports and directory.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// How long a dropped process may take to exit after SIGKILL before its directory is removed.
const DROP_WAIT: Duration = Duration::from_secs(2);

/// Fails the test: an installed component (or heimdall) that does not run as asked.
pub fn fail(message: &str) -> ! {
    #[expect(
        clippy::panic,
        reason = "a component that does not run as asked fails the test"
    )]
    {
        panic!("{message}");
    }
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

/// A number unique within this process, for the names of files, directories and instances.
pub fn unique_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A fresh directory `<scratch>/<prefix>-<pid>-<n>` for one component's files; a leftover of an
/// earlier run with the same process id is removed first, so two runs never mix their files.
pub fn fresh_dir(prefix: &str) -> Result<PathBuf, String> {
    let dir = super::tools::scratch_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        unique_id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
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

/// Sends `signal` (`-TERM`, `-STOP`, `-CONT`) to process `pid`. There is no unsafe code here:
/// the `kill` command sends it.
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

/// Why a process did not become ready.
#[derive(Debug)]
pub enum NotReady {
    /// It exited first (often a port still held by a previous instance: worth a retry).
    Exited(ExitStatus),
    /// It ran but its probe never passed before the deadline; the last probe's complaint.
    TimedOut(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "exited with {status}"),
            NotReady::TimedOut(last) => write!(f, "not ready in time ({last})"),
        }
    }
}

/// A child process whose stdout and stderr go to a log file; killed when dropped (the log stays
/// until its owner removes the directory).
pub struct ManagedProcess {
    name: String,
    /// Behind a mutex so that `&self` probes can notice an exit (`try_wait` needs `&mut Child`);
    /// it is only ever locked for a `try_wait` or a signal, never across an `.await`. `None` once
    /// killed or stopped.
    child: Mutex<Option<Child>>,
    log: PathBuf,
}

impl ManagedProcess {
    /// Spawns `command` with no stdin and its output appended to `log`; `name` names it in
    /// messages.
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> Result<Self, String> {
        let (out, err) = log_stdio(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "spawn {name} ({}): {e}",
                    command.as_std().get_program().to_string_lossy()
                )
            })?;
        Ok(Self {
            name: name.to_owned(),
            child: Mutex::new(Some(child)),
            log: log.to_path_buf(),
        })
    }

    /// Runs `probe` every `poll` until it passes (`Ok`), the process exits, or `timeout` passes.
    /// The probe bounds its own I/O; the deadline is checked between probes.
    pub async fn wait_ready<F, Fut>(
        &self,
        timeout: Duration,
        poll: Duration,
        mut probe: F,
    ) -> Result<(), NotReady>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not probed yet");
        loop {
            if let Some(status) = self.exit_status() {
                return Err(NotReady::Exited(status));
            }
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut(last));
            }
            match probe().await {
                Ok(()) => return Ok(()),
                Err(reason) => last = reason,
            }
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The exit status if the process has exited on its own; `None` while it runs (or after
    /// [`ManagedProcess::kill`] or [`ManagedProcess::stop`]).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.child.try_lock().ok()?;
        child.as_mut()?.try_wait().ok().flatten()
    }

    /// Whether the process runs: not exited, killed or stopped.
    pub fn is_running(&self) -> bool {
        match self.child.try_lock() {
            Ok(mut child) => match child.as_mut() {
                Some(running) => matches!(running.try_wait(), Ok(None)),
                None => false,
            },
            // Another probe holds the lock for its own `try_wait`, so the process was not
            // killed or stopped (those need `&mut self`); the next poll looks again.
            Err(_) => true,
        }
    }

    /// The process id, `None` once killed or stopped.
    pub fn pid(&self) -> Option<u32> {
        let child = self.child.try_lock().ok()?;
        child.as_ref()?.id()
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self
            .pid()
            .ok_or_else(|| format!("cannot send {signal}: {} is not running", self.name))?;
        send_signal(pid, signal)
    }

    /// Kills the process (SIGKILL: nothing flushed) and waits for it to exit. Returns its exit
    /// status, `None` if it was not running.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.take_child()?;
        let _ = child.start_kill();
        child.wait().await.ok()
    }

    /// Stops the process gracefully (SIGTERM), waits at most `grace`, then kills it. Returns its
    /// exit status, `None` if it was not running.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let child = self.take_child()?;
        terminate(child, grace).await
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, indented, for an error message; `  (none)` if empty.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let tail = all
            .get(all.len().saturating_sub(lines)..)
            .unwrap_or_default();
        if tail.is_empty() {
            return "  (none)".into();
        }
        tail.iter()
            .map(|line| format!("  {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `message`, then the log: what a failed start reports.
    pub fn with_log(&self, message: &str) -> String {
        format!("{message}\n--- {} ---\n{}", self.log.display(), self.log())
    }

    fn take_child(&mut self) -> Option<Child> {
        self.child.get_mut().take()
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        let Some(child) = self.child.get_mut().as_mut() else {
            return;
        };
        // SIGKILL also ends a paused (SIGSTOPped) process.
        let _ = child.start_kill();
        // The owner removes the process's directory next: wait (briefly, bounded) for it to be
        // gone so that it cannot write into the directory while it is being removed.
        let deadline = Instant::now() + DROP_WAIT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
