//! Noticing WAL changes: inotify on the log (or its directory while there is none), and the
//! log's size and time for the once-a-second check.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tracing::warn;

pub(super) fn wal_stat(db: &Path) -> Option<(u64, std::time::SystemTime)> {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    let m = std::fs::metadata(PathBuf::from(s)).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Wakes the loop when the WAL changes (inotify); the loop also polls once a second.
///
/// The watch is paused from the first event until the loop is ready for the next one: under
/// steady writes every commit would otherwise wake the agent, and on a small machine those
/// wake-ups are taken from the app.
/// Wakes the loop when the WAL changes. It watches the `-wal` file itself when it exists and
/// the directory (for its creation) only when it does not: a directory watch would also deliver
/// every write of every other file there (another database's log beside this one costs a
/// wake-up in the watcher per commit).
pub(super) struct WalWatcher {
    inner: Option<notify::RecommendedWatcher>,
    wal: PathBuf,
    dir: PathBuf,
    /// What is watched now: the `-wal` file or the directory.
    watching: Option<PathBuf>,
}

impl WalWatcher {
    pub(super) fn new(db: &Path, tx: mpsc::Sender<()>) -> WalWatcher {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let dir = db.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let name = wal.file_name().map(|n| n.to_owned());
        let inner = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if ev.paths.iter().any(|p| p.file_name() == name.as_deref()) {
                    let _ = tx.try_send(());
                }
            }
        })
        .map_err(|e| warn!(error = %e, "no file watcher; polling once a second"))
        .ok();
        WalWatcher { inner, wal, dir, watching: None }
    }

    pub(super) fn resume(&mut self) {
        use notify::Watcher;
        let Some(w) = self.inner.as_mut() else { return };
        // The log may have been deleted (and recreated) since the last look: re-aim.
        let target = if self.wal.exists() { &self.wal } else { &self.dir };
        if self.watching.as_ref() == Some(target) {
            return;
        }
        if let Some(old) = self.watching.take() {
            let _ = w.unwatch(&old);
        }
        if w.watch(target, notify::RecursiveMode::NonRecursive).is_ok() {
            self.watching = Some(target.clone());
        }
    }

    pub(super) fn pause(&mut self) {
        use notify::Watcher;
        if let (Some(old), Some(w)) = (self.watching.take(), self.inner.as_mut()) {
            let _ = w.unwatch(&old);
        }
    }
}
