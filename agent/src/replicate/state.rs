//! The agent's local notes about a database (`<db>-walfleet/state.json`): which replica and
//! generation it last shipped to, the position it reached, and where in the WAL that was.
//! They let a restarted agent prove that the database beside it is the one it replicated,
//! even when the app kept writing while the agent was down. Written after every upload,
//! atomically (temp file, fsync, rename, fsync of the directory: until the directory is
//! synced, a power loss can bring back the old notes or none at all).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use proto::model::{Generation, Txid};
use serde::{Deserialize, Serialize};

use crate::wal::WalCursor;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    pub replica: String,
    pub generation: Generation,
    pub txid: Txid,
    pub checksum: String,
    pub cursor: Option<WalCursor>,
}

impl LocalState {
    pub fn checksum(&self) -> Option<u64> {
        u64::from_str_radix(&self.checksum, 16).ok()
    }
}

pub fn dir_for(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-walfleet");
    PathBuf::from(s)
}

fn path_for(db: &Path) -> PathBuf {
    dir_for(db).join("state.json")
}

pub fn load(db: &Path) -> Option<LocalState> {
    let bytes = std::fs::read(path_for(db)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn save(db: &Path, state: &LocalState) -> Result<()> {
    let path = path_for(db);
    std::fs::create_dir_all(dir_for(db)).with_context(|| format!("create {}", dir_for(db).display()))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(state)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    sync_dir(&dir_for(db))
}

/// Makes the renames and creations inside `dir` durable (fsync of the directory itself).
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("sync directory {}", dir.display()))
}

/// The directory a file is in (`.` for a bare name), to sync after renaming the file.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
