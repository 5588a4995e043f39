//! Finding the real components (Envoy, NATS, Cerbos, ...) that `make tools` installs, the
//! heimdall binary, and the directories a test writes into.
//!
//! Lookup order: the directory in `$HEIMDALL_TOOLS`, then `<repo>/.tools/bin`, then `$PATH`, then
//! the system directories Debian packages install daemons into (`nginx` is `/usr/sbin/nginx`,
//! and `/usr/sbin` is not on every user's `$PATH`).
//! In CI (`CI=true` or `CI=1`) a missing tool is a test failure, never a silent skip.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The repository root: the shipped configurations' relative paths resolve against it.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The build's profile directory (`target/debug`, `target/release`, ...), found from the running
/// executable: test and bench binaries live in its `deps`, examples in its `examples`.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    match dir.file_name()?.to_str()? {
        "deps" | "examples" => dir.parent().map(Path::to_path_buf),
        _ => Some(dir.to_path_buf()),
    }
}

/// The `heimdall` binary of the same build as the running test, bench or example, e.g.
/// `target/debug/heimdall` for `target/debug/deps/cli-…`; it follows the profile and
/// `CARGO_TARGET_DIR`. Cargo builds it before an integration test runs; an example must have it
/// built (`cargo build`).
pub fn heimdall_binary() -> PathBuf {
    profile_dir()
        .unwrap_or_else(|| repo_root().join("target").join("release"))
        .join("heimdall")
}

/// A directory for the files of the processes a test starts (configurations, logs, stores):
/// the build's `tmp` directory (what Cargo calls `CARGO_TARGET_TMPDIR`), next to the profile
/// directory. Created if missing.
pub fn scratch_dir() -> PathBuf {
    let dir = profile_dir()
        .and_then(|profile| profile.parent().map(|target| target.join("tmp")))
        .unwrap_or_else(std::env::temp_dir);
    // A failure shows when the caller creates its own directory inside.
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The repository's own tool directory, filled by `scripts/install-tools.sh`.
pub fn repo_tools_dir() -> PathBuf {
    repo_root().join(".tools").join("bin")
}

/// The directory holding the npm packages installed by `make tools` (e.g. `oidc-provider`):
/// `<repo>/.tools/npm`, whose `node_modules` a node script resolves from.
pub fn npm_dir() -> PathBuf {
    repo_root().join(".tools").join("npm")
}

/// Where `name` is installed, if anywhere: `$HEIMDALL_TOOLS`, `<repo>/.tools/bin`, `$PATH`, then
/// [`SYSTEM_DIRS`].
pub fn find(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(tools) = std::env::var_os("HEIMDALL_TOOLS").filter(|v| !v.is_empty()) {
        dirs.extend(std::env::split_paths(&tools));
    }
    dirs.push(repo_tools_dir());
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.extend(SYSTEM_DIRS.iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Where Debian's packages put daemons such as nginx (`scripts/install-tools.sh nginx`).
pub const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin"];

/// Like [`find`], for a test that needs the tool.
///
/// When the tool is missing: in CI (`CI` is `true` or `1`) this panics, telling to run
/// `make tools`; elsewhere it prints a "skipping" line to stderr and returns `None`, and the
/// caller returns early.
pub fn require(name: &str) -> Option<PathBuf> {
    if let Some(path) = find(name) {
        return Some(path);
    }
    if in_ci() {
        super::fail(&format!(
            "{name} is not installed (looked in $HEIMDALL_TOOLS, {}, $PATH): run `make tools`",
            repo_tools_dir().display()
        ));
    }
    eprintln!("skipping: {name} not installed, run `make tools`");
    None
}

/// Whether the tests run in CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| {
        v == OsStr::new("1") || v.to_str().is_some_and(|s| s.eq_ignore_ascii_case("true"))
    })
}

fn is_executable(path: &Path) -> bool {
    // `metadata` follows symlinks: .tools/bin holds links into the installed packages.
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
