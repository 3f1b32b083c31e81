//! Immutable uploads: an LTX file is created once under its key. Where the store honours
//! `If-None-Match: *`, a 412 means an object is already there: it counts as this upload only
//! when it is the same file (an earlier attempt whose answer was lost), which is checked by
//! reading its last bytes back; anything else is an error, never a silent success.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::ltx::TRAILER_SIZE;
use crate::object_store::{ObjectStore, ObjectStoreError, PutOptions};

/// How an object found under the key must match the local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Same {
    /// The same bytes: the same size and the same trailer (its CRC-64 covers the whole file).
    Bytes,
    /// The same size (a snapshot of the same transaction written again: only its timestamp,
    /// and so its CRC, differs).
    Size,
}

/// An object already under the key that is not the file being uploaded.
#[derive(Debug, thiserror::Error)]
#[error(
    "object {key} already exists and differs from the local file {path} ({what}): another transaction was \
     written under this key; it is not counted as durable"
)]
pub struct Conflict {
    pub key: String,
    pub path: String,
    pub what: String,
}

/// Uploads `path` to `key` with `opts`; a precondition failure is success only when the stored
/// object matches the file as `same` says.
pub async fn put_once(store: &ObjectStore, key: &str, path: &Path, opts: &PutOptions, same: Same) -> Result<()> {
    match store.put_file(key, path, opts).await {
        Ok(_) => Ok(()),
        Err(ObjectStoreError::PreconditionFailed { .. }) => verify_existing(store, key, path, same).await,
        Err(e) => Err(anyhow::Error::from(e).context(format!("upload {key}"))),
    }
}

/// Checks that the object under `key` is the local file at `path`.
pub async fn verify_existing(store: &ObjectStore, key: &str, path: &Path, same: Same) -> Result<()> {
    let (size, trailer) = local_trailer(path)?;
    let from = size.checked_sub(TRAILER_SIZE as u64).context("local ltx file shorter than its trailer")?;
    // Asking for more than the trailer: a longer object returns more bytes, a shorter one fewer.
    let stored = match store.get_range(key, from, 2 * TRAILER_SIZE as u64).await {
        Ok(b) => b,
        Err(ObjectStoreError::NotFound { .. }) => {
            bail!("upload {key}: the store refused it as existing, yet has no such object")
        }
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!("read back {key} to compare it with {}", path.display())))
        }
    };
    let what = if stored.len() != TRAILER_SIZE {
        Some(format!("stored size differs from {size} bytes"))
    } else if same == Same::Bytes && stored[..] != trailer[..] {
        Some(format!(
            "same size, different crc-64 trailer: stored {}, local {}",
            hex::encode(&stored[..]),
            hex::encode(trailer)
        ))
    } else {
        None
    };
    match what {
        None => Ok(()),
        Some(what) => Err(Conflict { key: key.to_string(), path: path.display().to_string(), what }.into()),
    }
}

fn local_trailer(path: &Path) -> Result<(u64, [u8; TRAILER_SIZE])> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let size = f.metadata().with_context(|| format!("stat {}", path.display()))?.len();
    let mut t = [0u8; TRAILER_SIZE];
    if size < TRAILER_SIZE as u64 {
        bail!("local ltx file {} is shorter than its trailer", path.display());
    }
    f.seek(SeekFrom::Start(size - TRAILER_SIZE as u64))?;
    f.read_exact(&mut t).with_context(|| format!("read {}", path.display()))?;
    Ok((size, t))
}
