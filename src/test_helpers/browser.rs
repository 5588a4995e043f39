//! A real browser for end-to-end tests: Debian's Chromium, driven from node by the npm package
//! playwright-core (both installed by `scripts/install-tools.sh chromium playwright`).
//!
//! A journey is a node script in [`SCRIPTS`] (e.g. `tests/browser/login-journey.mjs`): it gets
//! its parameters in its environment, launches the browser headless with
//! [`CHROMIUM_ENV`] as `executablePath` (playwright-core never downloads a browser of its own),
//! and prints one JSON document on its last line of stdout. [`Browser::run`] runs it with a
//! deadline and returns that document.
//!
//! Everything is found as [`tools::require`] finds a binary: `node` and `chromium` on the usual
//! paths, the package in [`oidc::npm_modules`]. Outside CI a missing one skips the test, in CI it
//! fails it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::process::{fail, fresh_dir};
use super::{oidc, tools};

/// The directory of the journeys, relative to the repository root.
pub const SCRIPTS: &str = "tests/browser";
/// The npm package that drives the browser.
pub const PACKAGE: &str = "playwright-core";
/// The environment variable a journey reads the browser's executable from.
pub const CHROMIUM_ENV: &str = "CHROMIUM";
/// The environment variable a journey reads the node_modules directory holding [`PACKAGE`] from.
pub const MODULES_ENV: &str = "HEIMDALL_NPM_MODULES";
/// The environment variable a journey reads its own deadline from, in milliseconds: shorter than
/// the one [`Browser::run`] enforces, so that a stuck journey still reports where it was.
pub const DEADLINE_ENV: &str = "JOURNEY_TIMEOUT_MS";
/// The environment variable naming a directory a failing journey leaves a screenshot and the
/// page's HTML in.
pub const ARTIFACTS_ENV: &str = "JOURNEY_ARTIFACTS";

/// What [`Browser::run`] keeps back from its own deadline for the journey's: time for the script
/// to close the browser and print where it was.
const REPORT_MARGIN: Duration = Duration::from_secs(3);

/// Whether playwright-core is installed in [`oidc::npm_modules`]; like [`tools::require`]: in CI a
/// missing package fails the test, elsewhere it prints a "skipping" line and returns `false`.
pub fn require_package() -> bool {
    let manifest = oidc::npm_modules().join(PACKAGE).join("package.json");
    if manifest.is_file() {
        return true;
    }
    if tools::in_ci() {
        fail(&format!(
            "{PACKAGE} is not installed ({} is missing): run `make tools`",
            manifest.display()
        ));
    }
    eprintln!("skipping: {PACKAGE} not installed, run `make tools`");
    false
}

/// The browser and what drives it: node, Chromium and playwright-core, all found.
#[derive(Debug, Clone)]
pub struct Browser {
    node: PathBuf,
    chromium: PathBuf,
}

impl Browser {
    /// Finds node, Chromium and playwright-core. Returns `None` when one is missing and the tests
    /// do not run in CI (see [`tools::require`]); panics in CI.
    pub fn require() -> Option<Browser> {
        let node = tools::require("node")?;
        let chromium = tools::require("chromium")?;
        if !require_package() {
            return None;
        }
        Some(Browser { node, chromium })
    }

    /// The node binary.
    pub fn node(&self) -> &Path {
        &self.node
    }

    /// The Chromium executable a journey launches.
    pub fn chromium(&self) -> &Path {
        &self.chromium
    }

    /// Runs the journey `script` (a file name in [`SCRIPTS`]) with `env` besides [`CHROMIUM_ENV`],
    /// [`MODULES_ENV`], [`DEADLINE_ENV`] and [`ARTIFACTS_ENV`], and returns the JSON document on
    /// the last non-empty line of its stdout.
    ///
    /// The script, the browser and everything else it started are killed once `timeout` has
    /// passed (the journey's own deadline is 3 s shorter). `Err` carries the script's exit
    /// status, its stdout and stderr, and where its failure screenshot is; the directory of the
    /// screenshot is removed when the journey succeeds.
    pub async fn run(
        &self,
        script: &str,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let path = tools::repo_root().join(SCRIPTS).join(script);
        if !path.is_file() {
            return Err(format!("no journey {}", path.display()));
        }
        let artifacts = fresh_dir("browser")?;
        let deadline = timeout
            .saturating_sub(REPORT_MARGIN)
            .max(Duration::from_secs(1));
        let mut command = Command::new(&self.node);
        command
            .arg(&path)
            .current_dir(tools::repo_root())
            .env(CHROMIUM_ENV, &self.chromium)
            .env(MODULES_ENV, oidc::npm_modules())
            .env(DEADLINE_ENV, deadline.as_millis().to_string())
            .env(ARTIFACTS_ENV, &artifacts)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: the browser's processes go with it on a timeout.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("spawn {} {}: {e}", self.node.display(), path.display()))?;
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.map_err(|e| format!("run {script}: {e}"))?,
            Err(_) => {
                // The script is not reaped yet, so its process group is still its own.
                if let Some(group) = child.id() {
                    kill_group(group);
                }
                let _ = child.kill().await;
                return Err(format!(
                    "{script} did not finish within {timeout:?} (killed with its browser); \
                     screenshot, if any, in {}",
                    artifacts.display()
                ));
            }
        };
        let (stdout, stderr) = (stdout.await, stderr.await);
        let report = || {
            format!(
                "--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- screenshot and page in {} ---",
                artifacts.display()
            )
        };
        if !status.success() {
            return Err(format!("{script} failed ({status})\n{}", report()));
        }
        let last = stdout
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .ok_or_else(|| format!("{script} printed nothing\n{}", report()))?;
        let document = serde_json::from_str(last)
            .map_err(|e| format!("{script}'s last line is not JSON ({e})\n{}", report()))?;
        let _ = std::fs::remove_dir_all(&artifacts);
        Ok(document)
    }
}

/// How long the output of a script that has exited may take to be read to its end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads `pipe` to its end in a task; the result is what was read (lossy UTF-8), at most
/// [`DRAIN_TIMEOUT`] after it is awaited (a process the script left behind may hold the pipe).
fn read_all<R>(pipe: Option<R>) -> impl std::future::Future<Output = String>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let task = tokio::spawn(async move {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut bytes).await;
        }
        bytes
    });
    async move {
        match tokio::time::timeout(DRAIN_TIMEOUT, task).await {
            Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => String::from("(not read to its end)"),
        }
    }
}

/// SIGKILL to every process of the group `group` (a journey and its browser). There is no unsafe
/// code here: the `kill` command sends it; a group already gone is fine.
fn kill_group(group: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--"])
        .arg(format!("-{group}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
