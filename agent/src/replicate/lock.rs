//! The notes directory's lock: one agent per database. It is taken before anything in
//! `<db>-walfleet/` is read, deleted or written, and held (an exclusive `flock` on
//! `<db>-walfleet/lock`, which names the holder's PID) for the agent's whole life; the kernel
//! lets it go when the process ends, however it ends.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::state;

/// The lock file's name inside the notes directory (kept when the notes are cleared).
pub const LOCK_FILE: &str = "lock";

/// Another agent holds the notes directory of this database.
#[derive(Debug, thiserror::Error)]
#[error(
    "database {db} is already replicated by another walfleet agent (pid {holder}, lock {lock}): \
     stop that agent first, or give this one another database"
)]
pub struct AlreadyLocked {
    pub db: String,
    /// The PID the lock file names ("unknown" when it names none).
    pub holder: String,
    pub lock: String,
}

/// Held for as long as this value lives.
#[derive(Debug)]
pub struct NotesLock {
    _held: Flock<File>,
    pub path: PathBuf,
}

/// Takes the lock of `db`'s notes directory (creating the directory), or fails at once with
/// [`AlreadyLocked`] naming the holder.
pub fn lock(db: &Path) -> anyhow::Result<NotesLock> {
    let dir = state::dir_for(db);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder: String = holder.trim().chars().take(32).collect();
            return Err(AlreadyLocked {
                db: db.display().to_string(),
                holder: if holder.is_empty() { "unknown".into() } else { holder },
                lock: path.display().to_string(),
            }
            .into());
        }
        Err((_, e)) => return Err(e).with_context(|| format!("lock {}", path.display())),
    };
    let f: &mut File = &mut held;
    f.set_len(0).with_context(|| format!("write {}", path.display()))?;
    f.seek(SeekFrom::Start(0)).with_context(|| format!("write {}", path.display()))?;
    writeln!(f, "{}", std::process::id()).with_context(|| format!("write {}", path.display()))?;
    Ok(NotesLock { _held: held, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_database_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("app.db");
        let held = lock(&db).expect("first lock");
        let err = lock(&db).expect_err("second lock");
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains("app.db"), "{msg}");
        drop(held);
        lock(&db).expect("lock again once released");
    }
}
