//! Tells a task when files it loaded have new contents: the configuration for rule reload,
//! certificates for TLS reload.
//!
//! Editors, `kubectl` and deploy tools rarely write a file in place. They rename a new file over
//! the old one, or (Kubernetes ConfigMaps and Secrets) swap a `..data` symlink in the mounted
//! directory, so the watched path's inode never changes. So the watch is on the *directories*
//! holding each path and its symlink target, and a change is decided by content: every event in
//! those directories, and a periodic poll for changes the kernel does not report (a replaced
//! parent directory, network file systems), re-reads the files and compares their BLAKE3
//! digests with the last contents seen. A file that cannot be read at the moment (mid-swap,
//! deleted) is not a change: its last contents stay the reference.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long events settle before the files are read: a swap is several events (create, rename,
/// remove) and a write may arrive in pieces.
const SETTLE: Duration = Duration::from_millis(100);

/// A set of watched files; [`Changes::next`] resolves when one of them has new contents.
pub struct Changes {
    files: Vec<Watched>,
    events: mpsc::Receiver<()>,
    poll: Duration,
    /// Dropping it stops the kernel watch; `None` when it could not be set up (polling only).
    _watcher: Option<RecommendedWatcher>,
}

struct Watched {
    path: PathBuf,
    digest: Option<blake3::Hash>,
}

impl Changes {
    /// Starts watching `files`, taking their current contents as the reference. `poll` bounds
    /// how late a change the kernel does not report is seen. Without kernel notifications
    /// (inotify limits reached), it warns and polls.
    pub async fn new(files: Vec<PathBuf>, poll: Duration) -> Self {
        let (sender, events) = mpsc::channel(1);
        let watcher = match kernel_watch(&files, sender) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(
                    %error,
                    poll = %humantime::format_duration(poll),
                    "file change notifications are unavailable; polling instead"
                );
                None
            }
        };
        let mut watched = Vec::with_capacity(files.len());
        for path in files {
            let digest = digest(&path).await;
            watched.push(Watched { path, digest });
        }
        Self {
            files: watched,
            events,
            poll,
            _watcher: watcher,
        }
    }

    /// Waits until at least one file has contents other than the last seen, and returns those
    /// files' paths. Cancel-safe: dropping the future loses no change (the next call sees it).
    pub async fn next(&mut self) -> Vec<PathBuf> {
        loop {
            match tokio::time::timeout(self.poll, self.events.recv()).await {
                Ok(Some(())) | Err(_) => {}
                // No kernel watch (or its thread is gone): only the poll is left.
                Ok(None) => tokio::time::sleep(self.poll).await,
            }
            tokio::time::sleep(SETTLE).await;
            while self.events.try_recv().is_ok() {}
            let changed = self.changed().await;
            if !changed.is_empty() {
                return changed;
            }
        }
    }

    async fn changed(&mut self) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        for file in &mut self.files {
            if let Some(now) = digest(&file.path).await
                && file.digest != Some(now)
            {
                file.digest = Some(now);
                changed.push(file.path.clone());
            }
        }
        changed
    }
}

/// Watches the directories holding each file and, when the file is a symlink, its target:
/// one event from any of them wakes [`Changes::next`]. The handler runs on notify's thread and
/// never blocks: a full channel already holds a wake-up.
fn kernel_watch(files: &[PathBuf], sender: mpsc::Sender<()>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = sender.try_send(());
        }
    })?;
    let mut directories: Vec<PathBuf> = Vec::new();
    for file in files {
        let target = std::fs::canonicalize(file).ok();
        for path in std::iter::once(file.as_path()).chain(target.as_deref()) {
            if let Some(directory) = directory_of(path)
                && !directories.contains(&directory)
            {
                directories.push(directory);
            }
        }
    }
    for directory in &directories {
        watcher.watch(directory, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

fn directory_of(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(parent) => Some(parent.to_path_buf()),
        None => None,
    }
}

async fn digest(path: &Path) -> Option<blake3::Hash> {
    tokio::fs::read(path)
        .await
        .ok()
        .map(|bytes| blake3::hash(&bytes))
}

/// SIGHUP, the other reload trigger; where it does not exist or cannot be handled, a stream
/// that never fires. Each holder gets every signal.
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// `what` names what reloads (`"TLS"`), for the warning when no handler can be installed.
    pub fn new(what: &str) -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|error| {
                    tracing::warn!(%error, "no SIGHUP handler for {what}: reloads follow file changes only");
                })
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        {
            let _ = what;
            Self {}
        }
    }

    /// Resolves at the next SIGHUP.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_POLL: Duration = Duration::from_secs(60);
    const WITHIN: Duration = Duration::from_secs(5);

    async fn next_within(changes: &mut Changes, within: Duration) -> Option<Vec<PathBuf>> {
        tokio::time::timeout(within, changes.next()).await.ok()
    }

    #[tokio::test]
    async fn an_atomic_rename_over_the_file_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        let mut changes = Changes::new(vec![file.clone()], LONG_POLL).await;
        let staged = dir.path().join(".config.yaml.tmp");
        std::fs::write(&staged, "a: 2\n").unwrap();
        std::fs::rename(&staged, &file).unwrap();
        assert_eq!(next_within(&mut changes, WITHIN).await, Some(vec![file]));
    }

    #[tokio::test]
    async fn a_configmap_symlink_swap_is_a_change() {
        // The layout the kubelet writes: config.yaml -> ..data/config.yaml, ..data -> ..v1.
        let dir = tempfile::tempdir().unwrap();
        let version = |name: &str, contents: &str| {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("config.yaml"), contents).unwrap();
        };
        version("..v1", "a: 1\n");
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        let file = dir.path().join("config.yaml");
        std::os::unix::fs::symlink("..data/config.yaml", &file).unwrap();
        let mut changes = Changes::new(vec![file.clone()], LONG_POLL).await;

        version("..v2", "a: 2\n");
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        std::fs::remove_dir_all(dir.path().join("..v1")).unwrap();
        assert_eq!(next_within(&mut changes, WITHIN).await, Some(vec![file]));
    }

    #[tokio::test]
    async fn touching_without_new_contents_or_deleting_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cert.pem");
        std::fs::write(&file, "same").unwrap();
        let mut changes = Changes::new(vec![file.clone()], LONG_POLL).await;
        std::fs::write(&file, "same").unwrap();
        std::fs::write(dir.path().join("unrelated"), "x").unwrap();
        assert_eq!(
            next_within(&mut changes, Duration::from_millis(500)).await,
            None
        );
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            next_within(&mut changes, Duration::from_millis(500)).await,
            None
        );
        // Back with other contents: that is the change.
        std::fs::write(&file, "new").unwrap();
        assert_eq!(next_within(&mut changes, WITHIN).await, Some(vec![file]));
    }

    #[tokio::test]
    async fn the_poll_sees_what_no_event_reports() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.pem");
        std::fs::write(&file, "one").unwrap();
        let mut changes = Changes::new(vec![file.clone()], Duration::from_millis(200)).await;
        // Drop the kernel watch: only the poll is left.
        changes._watcher = None;
        std::fs::write(&file, "two").unwrap();
        assert_eq!(next_within(&mut changes, WITHIN).await, Some(vec![file]));
    }
}
