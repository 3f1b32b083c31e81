//! The local-directory backend: one file per object under the root directory.
//!
//! Writes go to a temporary file in the destination directory (named `.walfleet-tmp-…`, which
//! listings skip), are fsynced, then made visible by a rename (unconditional), a hard link
//! (`If-None-Match`: `link(2)` fails atomically when the name exists), or a compare-then-rename
//! (`If-Match`), and the directory is fsynced.
//!
//! Etags are derived from the file's inode, size, mtime and ctime, so any replacement changes
//! the etag without reading content. `If-Match` compares and renames under a lock held by this
//! store (and its clones): it is atomic within one process, not between processes sharing the
//! directory.
//!
//! Symbolic links below the root are never followed: listings skip them with a warning, and
//! deletes check every directory on the way with `O_NOFOLLOW` and the name with `lstat`, so a linked
//! generation cannot lead retention outside the root.

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::key::TEMP_PREFIX;
use super::{
    unquote_etag, Listing, ObjectMeta, ObjectStoreError, PutCondition, PutOptions, RequestCounts, RequestKind,
};

#[derive(Clone, Debug)]
pub struct FileStore {
    root: PathBuf,
    counts: RequestCounts,
    if_match_lock: Arc<Mutex<()>>,
}

impl FileStore {
    /// A store rooted at `root`, an absolute path; the directory is created on the first write.
    pub fn new(root: PathBuf) -> FileStore {
        FileStore { root, counts: RequestCounts::default(), if_match_lock: Arc::default() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    pub(crate) fn requests(&self) -> RequestCounts {
        self.counts.clone()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<Option<String>, ObjectStoreError> {
        self.counts.record(RequestKind::Put);
        let (root, path, lock, opts, owned_key) = self.write_parts(key, opts);
        blocking("put", key, move || {
            let modified = opts.timestamp.map(SystemTime::from);
            let tmp = write_temp(&root, &path, modified, |file| file.write_all(&body))
                .map_err(|err| ObjectStoreError::io("put", &owned_key, err))?;
            install(&tmp, &path, &opts.condition, &lock, "put", &owned_key)
        })
        .await
    }

    pub(crate) async fn put_file(
        &self,
        key: &str,
        source: &Path,
        opts: &PutOptions,
    ) -> Result<Option<String>, ObjectStoreError> {
        self.counts.record(RequestKind::Put);
        let (root, path, lock, opts, owned_key) = self.write_parts(key, opts);
        let source = source.to_path_buf();
        blocking("put_file", key, move || {
            let mut input =
                File::open(&source).map_err(|err| ObjectStoreError::io("put_file: open source", &owned_key, err))?;
            let modified = opts.timestamp.map(SystemTime::from);
            let tmp = write_temp(&root, &path, modified, |file| io::copy(&mut input, file).map(drop))
                .map_err(|err| ObjectStoreError::io("put_file", &owned_key, err))?;
            install(&tmp, &path, &opts.condition, &lock, "put_file", &owned_key)
        })
        .await
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        self.counts.record(RequestKind::Get);
        let path = self.path(key);
        let owned_key = key.to_string();
        blocking("get", key, move || match fs::read(&path) {
            Ok(data) => Ok(Bytes::from(data)),
            Err(err) => Err(not_found_or_io("get", &owned_key, err)),
        })
        .await
    }

    pub(crate) async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, ObjectStoreError> {
        self.counts.record(RequestKind::Get);
        let path = self.path(key);
        let owned_key = key.to_string();
        blocking("get_range", key, move || {
            let io_err = |err| not_found_or_io("get_range", &owned_key, err);
            let mut file = File::open(&path).map_err(io_err)?;
            let size = file.metadata().map_err(io_err)?.len();
            if offset >= size {
                return Ok(Bytes::new());
            }
            let want = len.min(size - offset);
            let mut data = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
            file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
            file.take(want).read_to_end(&mut data).map_err(io_err)?;
            Ok(Bytes::from(data))
        })
        .await
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectStoreError> {
        self.counts.record(RequestKind::Head);
        let path = self.path(key);
        let owned_key = key.to_string();
        blocking("head", key, move || match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(object_meta(owned_key, &meta))),
            Ok(_) => Ok(None),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(ObjectStoreError::io("head", &owned_key, err)),
        })
        .await
    }

    pub(crate) async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, ObjectStoreError> {
        self.counts.record(RequestKind::List);
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let delimiter = delimiter.map(str::to_string);
        blocking("list", &prefix.clone(), move || {
            list_blocking(&root, &prefix, delimiter.as_deref())
                .map_err(|err| ObjectStoreError::io("list", &prefix, err))
        })
        .await
    }

    pub(crate) async fn delete_many(&self, keys: &[String]) -> Result<(), ObjectStoreError> {
        self.counts.record(RequestKind::Delete);
        let root = self.root.clone();
        let keys = keys.to_vec();
        let first = keys.first().cloned().unwrap_or_default();
        blocking("delete", &first, move || {
            // Each touched directory is fsynced (and pruned when empty) once, after its deletes.
            let mut touched = std::collections::BTreeMap::new();
            for key in &keys {
                let path = root.join(key);
                if !delete_nofollow(&root, key).map_err(|err| ObjectStoreError::io("delete", key, err))? {
                    continue;
                }
                if let Some(parent) = path.parent() {
                    touched.entry(parent.to_path_buf()).or_insert_with(|| key.clone());
                }
            }
            // Deepest first, so a parent is pruned after its emptied children.
            for (dir, key) in touched.iter().rev() {
                match sync_dir(dir) {
                    Ok(()) => prune_empty_dirs(&root, dir),
                    // Pruned already along with an emptied child.
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => return Err(ObjectStoreError::io("delete", key, err)),
                }
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn copy(&self, src_key: &str, dst_key: &str, opts: &PutOptions) -> Result<(), ObjectStoreError> {
        self.counts.record(RequestKind::Copy);
        let (root, path, lock, opts, owned_dst) = self.write_parts(dst_key, opts);
        let src_path = self.path(src_key);
        let owned_src = src_key.to_string();
        blocking("copy", dst_key, move || {
            let src_err = |err| not_found_or_io("copy", &owned_src, err);
            let mut input = File::open(&src_path).map_err(src_err)?;
            let src_meta = input.metadata().map_err(src_err)?;
            if !src_meta.is_file() {
                return Err(ObjectStoreError::NotFound { key: owned_src.clone() });
            }
            let modified = match opts.timestamp {
                Some(timestamp) => Some(SystemTime::from(timestamp)),
                None => src_meta.modified().ok(),
            };
            let tmp = write_temp(&root, &path, modified, |file| io::copy(&mut input, file).map(drop))
                .map_err(|err| ObjectStoreError::io("copy", &owned_dst, err))?;
            install(&tmp, &path, &opts.condition, &lock, "copy", &owned_dst).map(drop)
        })
        .await
    }

    fn write_parts(&self, key: &str, opts: &PutOptions) -> (PathBuf, PathBuf, Arc<Mutex<()>>, PutOptions, String) {
        (self.root.clone(), self.path(key), self.if_match_lock.clone(), opts.clone(), key.to_string())
    }
}

async fn blocking<T: Send + 'static>(
    op: &'static str,
    key: &str,
    work: impl FnOnce() -> Result<T, ObjectStoreError> + Send + 'static,
) -> Result<T, ObjectStoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(ObjectStoreError::other(op, key, join, false)),
    }
}

fn is_not_found(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

fn not_found_or_io(op: &'static str, key: &str, err: io::Error) -> ObjectStoreError {
    if is_not_found(&err) || err.kind() == io::ErrorKind::IsADirectory {
        ObjectStoreError::NotFound { key: key.to_string() }
    } else {
        ObjectStoreError::io(op, key, err)
    }
}

/// The etag of the file at `path`: changes whenever the file is replaced or modified.
fn etag(meta: &fs::Metadata) -> String {
    let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    let ctime = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
    format!("{:x}-{:x}-{:x}-{:x}", meta.ino(), meta.len(), mtime, ctime)
}

fn object_meta(key: String, meta: &fs::Metadata) -> ObjectMeta {
    let modified = meta.modified().ok();
    ObjectMeta {
        key,
        size: meta.len(),
        etag: Some(etag(meta)),
        last_modified: modified,
        timestamp: modified.map(DateTime::<Utc>::from),
    }
}

/// Creates the destination's directories, writes a temporary file next to it with `fill`, sets
/// its times and fsyncs it. Returns the temporary file's path.
fn write_temp(
    root: &Path,
    dst: &Path,
    modified: Option<SystemTime>,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let dir = dst.parent().ok_or_else(|| io::Error::other("the key has no parent directory"))?;
    let mut attempts = 0;
    let (tmp, mut file) = loop {
        create_dirs_durably(root, dir)?;
        let tmp = dir.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => break (tmp, file),
            // A concurrent delete pruned the now-empty directory: create it again.
            Err(err) if err.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
            Err(err) => return Err(err),
        }
    };
    let written = fill(&mut file)
        .and_then(|()| match modified {
            Some(time) => file.set_times(FileTimes::new().set_accessed(time).set_modified(time)),
            None => Ok(()),
        })
        .and_then(|()| file.sync_all());
    match written {
        Ok(()) => Ok(tmp),
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            Err(err)
        }
    }
}

/// Makes `tmp` visible at `dst` under `condition`, fsyncs the directory and returns the etag.
fn install(
    tmp: &Path,
    dst: &Path,
    condition: &PutCondition,
    lock: &Mutex<()>,
    op: &'static str,
    key: &str,
) -> Result<Option<String>, ObjectStoreError> {
    let io_err = |err| ObjectStoreError::io(op, key, err);
    let precondition_failed = || ObjectStoreError::PreconditionFailed { key: key.to_string() };
    let result = match condition {
        PutCondition::None => fs::rename(tmp, dst).map_err(io_err),
        PutCondition::IfNoneMatch => match fs::hard_link(tmp, dst) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Err(precondition_failed()),
            Err(err) => Err(io_err(err)),
        },
        PutCondition::IfMatch(expected) => {
            let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match fs::metadata(dst) {
                Ok(meta) if meta.is_file() && etag(&meta) == unquote_etag(expected) => {
                    fs::rename(tmp, dst).map_err(io_err)
                }
                Ok(_) => Err(precondition_failed()),
                Err(err) if is_not_found(&err) => Err(precondition_failed()),
                Err(err) => Err(io_err(err)),
            }
        }
    };
    // After a rename the temporary name is gone; after a link (or a failure) it must go.
    if tmp.exists() {
        let _ = fs::remove_file(tmp);
    }
    result?;
    if let Some(dir) = dst.parent() {
        sync_dir(dir).map_err(io_err)?;
    }
    // Read the etag after the temporary name is gone: unlinking it changes the ctime.
    let meta = fs::metadata(dst).map_err(io_err)?;
    Ok(Some(etag(&meta)))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then fsyncs the parent of every directory it created (and the root's), so
/// the new directories survive a crash.
fn create_dirs_durably(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current {
        if path.is_dir() {
            break;
        }
        missing.push(path);
        current = path.parent();
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            if parent.starts_with(root) || root.starts_with(parent) {
                sync_dir(parent)?;
            }
        }
    }
    Ok(())
}

/// Removes now-empty directories from `dir` up to (not including) `root`, so listings with a
/// delimiter do not report prefixes without objects. Stops at the first non-empty one.
fn prune_empty_dirs(root: &Path, dir: &Path) {
    let mut current = Some(dir);
    while let Some(path) = current {
        if path == root || !path.starts_with(root) || fs::remove_dir(path).is_err() {
            break;
        }
        current = path.parent();
    }
}

fn list_blocking(root: &Path, prefix: &str, delimiter: Option<&str>) -> io::Result<Listing> {
    // Keys below `prefix` live in the directory named by its part up to the last '/'.
    let dir_part = match prefix.rfind('/') {
        Some(slash) => &prefix[..=slash],
        None => "",
    };
    let start = root.join(dir_part.trim_end_matches('/'));
    let mut listing = Listing::default();
    if !dir_part.is_empty() {
        match open_dir_nofollow(root, Path::new(dir_part.trim_end_matches('/'))) {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => return Ok(listing),
            Err(err) => return Err(err),
        }
    }
    if delimiter == Some("/") {
        for (name, path, meta) in read_dir_entries(&start)? {
            let key = format!("{dir_part}{name}");
            if !key.starts_with(prefix) {
                continue;
            }
            if meta.is_dir() {
                if dir_has_file(&path)? {
                    listing.common_prefixes.push(format!("{key}/"));
                }
            } else if meta.is_file() {
                listing.objects.push(object_meta(key, &meta));
            }
        }
    } else {
        walk(&start, dir_part, prefix, &mut listing.objects)?;
        if let Some(delimiter) = delimiter {
            let mut objects = Vec::with_capacity(listing.objects.len());
            for object in listing.objects {
                match object.key[prefix.len()..].find(delimiter) {
                    Some(at) => {
                        let end = prefix.len() + at + delimiter.len();
                        listing.common_prefixes.push(object.key[..end].to_string());
                    }
                    None => objects.push(object),
                }
            }
            listing.objects = objects;
        }
    }
    listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
    listing.common_prefixes.sort();
    listing.common_prefixes.dedup();
    Ok(listing)
}

/// Entries of `dir`, without temporary files, non-UTF-8 names or symbolic links (skipped with a
/// warning: a link could lead a listing, and retention's deletes, outside the root); none when
/// the directory does not exist.
fn read_dir_entries(dir: &Path) -> io::Result<Vec<(String, PathBuf, fs::Metadata)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if is_not_found(&err) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(path = %entry.path().display(), "skipping a file whose name is not utf-8");
            continue;
        };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                tracing::warn!(path = %path.display(), "skipping a symbolic link in a file replica: it is never followed");
            }
            Ok(meta) => out.push((name, path, meta)),
            // Deleted since read_dir.
            Err(err) if is_not_found(&err) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(out)
}

/// Checks `rel` (a relative directory path) under `root` one component at a time, opening
/// each with `O_NOFOLLOW`: a symbolic link anywhere below the root is an error naming it, never
/// followed. The root itself may be a link.
fn open_dir_nofollow(root: &Path, rel: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |p: &Path, flags: i32| OpenOptions::new().read(true).custom_flags(flags | libc::O_DIRECTORY).open(p);
    let mut dir = open(root, 0)?;
    let mut walked = root.to_path_buf();
    for part in rel.components() {
        let std::path::Component::Normal(name) = part else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a plain path", rel.display())));
        };
        walked.push(name);
        dir = match open(&walked, libc::O_NOFOLLOW) {
            Ok(d) => d,
            Err(_) if fs::symlink_metadata(&walked).is_ok_and(|m| m.file_type().is_symlink()) => {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link inside the replica root: not followed",
                    walked.display()
                )));
            }
            Err(err) => return Err(err),
        };
    }
    Ok(dir)
}

/// Deletes the object `key` under `root` without following any symbolic link: every directory
/// on the way is checked with `O_NOFOLLOW` and the name itself with `symlink_metadata`. Returns
/// whether a file was removed (a missing key, a directory or a symbolic link is not an object;
/// a link is left in place with a warning).
fn delete_nofollow(root: &Path, key: &str) -> io::Result<bool> {
    let rel = Path::new(key);
    let Some(parent) = rel.parent() else { return Ok(false) };
    match open_dir_nofollow(root, parent) {
        Ok(_) => {}
        Err(err) if is_not_found(&err) => return Ok(false),
        Err(err) => return Err(err),
    }
    let path = root.join(rel);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            tracing::warn!(key, root = %root.display(), "not deleting a symbolic link in a file replica");
            return Ok(false);
        }
        Ok(meta) if !meta.is_file() => return Ok(false),
        Ok(_) => {}
        Err(err) if is_not_found(&err) => return Ok(false),
        Err(err) => return Err(err),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(err) if is_not_found(&err) => Ok(false),
        Err(err) => Err(err),
    }
}

fn walk(dir: &Path, dir_key: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    for (name, path, meta) in read_dir_entries(dir)? {
        let key = format!("{dir_key}{name}");
        if meta.is_dir() {
            let sub = format!("{key}/");
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                walk(&path, &sub, prefix, out)?;
            }
        } else if meta.is_file() && key.starts_with(prefix) {
            out.push(object_meta(key, &meta));
        }
    }
    Ok(())
}

fn dir_has_file(dir: &Path) -> io::Result<bool> {
    for (_, path, meta) in read_dir_entries(dir)? {
        if meta.is_file() || (meta.is_dir() && dir_has_file(&path)?) {
            return Ok(true);
        }
    }
    Ok(false)
}
