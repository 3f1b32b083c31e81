//! Object storage: S3-compatible servers and local directories behind one type.
//!
//! A store is opened from a replica URL (`file:///abs/dir` or `s3://bucket/prefix`); the URL's
//! path is the store's root and every key is relative to it. Keys are `/`-separated, and the
//! same rules apply on every backend (see [`validate_key`]) so that a layout that works on a
//! local directory also works on S3 servers that map keys onto file paths (s3s-fs).
//!
//! This is the only module that names `aws_sdk_s3`.

mod encrypt;
mod error;
mod file;
mod key;
mod s3;
mod store_url;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use chrono::{DateTime, Utc};

pub use encrypt::{CryptError, EncryptionKey};
pub use error::ObjectStoreError;
pub use file::FileStore;
pub use key::{validate_key, validate_prefix};
pub use s3::{S3Credentials, S3Settings, S3Store};
pub use store_url::{parse as parse_url, S3Url, StoreUrl};

/// User-metadata key under which S3 objects carry their timestamp (Litestream's name, so its
/// restore reads ours and we read its).
pub const TIMESTAMP_METADATA_KEY: &str = "litestream-timestamp";

/// Bodies above this size go through multipart upload in [`ObjectStore::put_file`]; up to it
/// one PutObject streams the file. Every part is a billed request, so objects a compaction of
/// a busy minute produces (hundreds of MiB) go in one request, not one per 16 MiB.
pub const MULTIPART_THRESHOLD: u64 = 256 * 1024 * 1024;
/// Part size of multipart uploads.
pub const MULTIPART_PART_SIZE: u64 = 64 * 1024 * 1024;
/// Parts uploaded concurrently. Parts stream from the file, so this costs read buffers, not
/// part-sized ones.
pub const MULTIPART_MAX_IN_FLIGHT: usize = 4;

/// One store over a local directory or an S3-compatible bucket.
#[derive(Clone, Debug)]
pub enum ObjectStore {
    File(FileStore),
    S3(S3Store),
    /// Another store whose object bodies are encrypted on this side (see `encrypt`).
    Encrypted(Box<ObjectStore>, EncryptionKey),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    File,
    S3,
}

/// What a store knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Relative to the store root.
    pub key: String,
    pub size: u64,
    /// Opaque; compare only with etags from the same store. S3: as the server returns it
    /// (usually quoted). File: derived from inode, size, mtime and ctime (see [`FileStore`]).
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// The timestamp given at put time. S3: the `litestream-timestamp` user metadata, so only
    /// [`ObjectStore::head`] returns it (LIST carries no metadata). File: the file's mtime.
    pub timestamp: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Sorted by key.
    pub objects: Vec<ObjectMeta>,
    /// Relative to the store root, each ending with the delimiter; sorted.
    pub common_prefixes: Vec<String>,
}

/// A condition the write must meet, checked by the server (S3) or by the file system.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PutCondition {
    #[default]
    None,
    /// Create only: fail with [`ObjectStoreError::PreconditionFailed`] when the key exists.
    IfNoneMatch,
    /// Replace only the version with this etag (quoted or not); a missing key fails with
    /// [`ObjectStoreError::PreconditionFailed`] too (AWS's 404 is mapped to it).
    IfMatch(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub condition: PutCondition,
    /// S3: stored as `litestream-timestamp` metadata (RFC 3339, milliseconds, UTC).
    /// File: set as the file's mtime and atime.
    pub timestamp: Option<DateTime<Utc>>,
}

impl PutOptions {
    pub fn if_none_match() -> PutOptions {
        PutOptions { condition: PutCondition::IfNoneMatch, timestamp: None }
    }

    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> PutOptions {
        self.timestamp = Some(timestamp);
        self
    }
}

/// Kinds of requests counted by [`RequestCounts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Put,
    Get,
    Head,
    List,
    Delete,
    Copy,
}

impl RequestKind {
    pub const ALL: [RequestKind; 6] = [
        RequestKind::Put,
        RequestKind::Get,
        RequestKind::Head,
        RequestKind::List,
        RequestKind::Delete,
        RequestKind::Copy,
    ];

    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Put => "put",
            RequestKind::Get => "get",
            RequestKind::Head => "head",
            RequestKind::List => "list",
            RequestKind::Delete => "delete",
            RequestKind::Copy => "copy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Requests issued by a store, by kind; clones share the counters.
///
/// One count per request the store sends (each multipart step, LIST page and DeleteObjects
/// batch counts; the SDK's own retries do not). The file backend counts its operations alike.
#[derive(Clone, Debug, Default)]
pub struct RequestCounts {
    counts: Arc<[AtomicU64; 6]>,
}

impl RequestCounts {
    pub fn get(&self, kind: RequestKind) -> u64 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }

    /// All kinds with their counts, in [`RequestKind::ALL`] order.
    pub fn snapshot(&self) -> Vec<(RequestKind, u64)> {
        RequestKind::ALL.iter().map(|&kind| (kind, self.get(kind))).collect()
    }

    pub(crate) fn record(&self, kind: RequestKind) {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }
}

impl ObjectStore {
    /// Opens `file:///abs/dir` or `s3://bucket/prefix[?endpoint=..&region=..&forcePathStyle=true]`.
    ///
    /// S3 settings not on the URL come from the standard AWS environment: `AWS_ENDPOINT_URL_S3`
    /// or `AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION` (else `us-east-1`), and the
    /// default credentials chain.
    pub async fn from_url(url: &str) -> Result<ObjectStore, ObjectStoreError> {
        ObjectStore::from_url_with(url, &S3Settings::from_env()).await
    }

    /// Like [`ObjectStore::from_url`] with S3 settings given by the caller; parameters on the
    /// URL still win. Credentials left `None` come from the default AWS credentials chain.
    pub async fn from_url_with(url: &str, settings: &S3Settings) -> Result<ObjectStore, ObjectStoreError> {
        match store_url::parse(url)? {
            store_url::StoreUrl::File { root } => Ok(ObjectStore::File(FileStore::new(root))),
            store_url::StoreUrl::S3(s3_url) => Ok(ObjectStore::S3(S3Store::new(s3_url, settings).await?)),
        }
    }

    /// This store with client-side encryption of every object body under `key`.
    pub fn encrypted(self, key: EncryptionKey) -> ObjectStore {
        match self {
            ObjectStore::Encrypted(inner, _) => ObjectStore::Encrypted(inner, key),
            other => ObjectStore::Encrypted(Box::new(other), key),
        }
    }

    /// With `key`, this store encrypted; without, as it is.
    pub fn with_encryption(self, key: Option<&EncryptionKey>) -> ObjectStore {
        match key {
            Some(k) => self.encrypted(k.clone()),
            None => self,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            ObjectStore::Encrypted(inner, _) => inner.backend(),
            ObjectStore::File(_) => Backend::File,
            ObjectStore::S3(_) => Backend::S3,
        }
    }

    /// The store's URL without secrets, for logs.
    pub fn describe(&self) -> String {
        match self {
            ObjectStore::Encrypted(inner, _) => format!("{} (client-side encrypted)", inner.describe()),
            ObjectStore::File(store) => store.describe(),
            ObjectStore::S3(store) => store.describe(),
        }
    }

    /// Writes `body` at `key`; returns the new etag when the backend reports one.
    pub async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<Option<String>, ObjectStoreError> {
        validate_key(key)?;
        match self {
            ObjectStore::Encrypted(inner, k) => Box::pin(inner.put(key, k.seal(&body), opts)).await,
            ObjectStore::File(store) => store.put(key, body, opts).await,
            ObjectStore::S3(store) => store.put(key, body, opts).await,
        }
    }

    /// Uploads a local file with bounded memory (S3: bodies over 1 MiB stream from the file with
    /// their MD5): one PUT up to [`MULTIPART_THRESHOLD`], else multipart with
    /// [`MULTIPART_PART_SIZE`] parts, [`MULTIPART_MAX_IN_FLIGHT`] at a time. The
    /// condition applies to the request that makes the object visible. The file must not change
    /// while it is uploaded.
    ///
    /// Dropping the future during a multipart upload leaves an incomplete upload on the server
    /// (invisible, but stored until a lifecycle rule aborts it); errors abort it.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: &PutOptions,
    ) -> Result<Option<String>, ObjectStoreError> {
        validate_key(key)?;
        match self {
            ObjectStore::Encrypted(inner, k) => {
                let mut sealed = path.as_os_str().to_owned();
                sealed.push(".sealed");
                let sealed = std::path::PathBuf::from(sealed);
                let (k, src, dst) = (k.clone(), path.to_path_buf(), sealed.clone());
                let io = |source| ObjectStoreError::Io { op: "encrypt", key: key.to_string(), source };
                tokio::task::spawn_blocking(move || k.seal_file(&src, &dst))
                    .await
                    .map_err(|e| io(std::io::Error::other(e)))?
                    .map_err(io)?;
                let res = Box::pin(inner.put_file(key, &sealed, opts)).await;
                let _ = std::fs::remove_file(&sealed);
                res
            }
            ObjectStore::File(store) => store.put_file(key, path, opts).await,
            ObjectStore::S3(store) => store.put_file(key, path, opts).await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        validate_key(key)?;
        match self {
            ObjectStore::Encrypted(inner, k) => Ok(k.open(key, &inner.sealed_get(key).await?)?),
            ObjectStore::File(store) => refuse_sealed(key, store.get(key).await?),
            ObjectStore::S3(store) => refuse_sealed(key, store.get(key).await?),
        }
    }

    /// Reads `len` bytes from `offset`; shorter when the object ends first. `len == 0` returns
    /// an empty body without a request.
    pub async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, ObjectStoreError> {
        validate_key(key)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        match self {
            ObjectStore::Encrypted(inner, k) => {
                use encrypt::{CHUNK, HEADER, SEALED_CHUNK};
                let (first, last) = (offset / CHUNK as u64, (offset + len - 1) / CHUNK as u64);
                let from = HEADER as u64 + first * SEALED_CHUNK as u64;
                let to = HEADER as u64 + (last + 1) * SEALED_CHUNK as u64;
                let (head, body) = if first == 0 {
                    let all = inner.sealed_get_range(key, 0, to).await?;
                    if !encrypt::is_encrypted(&all) || all.len() < HEADER {
                        return Err(CryptError::NotEncrypted { key: key.to_string() }.into());
                    }
                    (all.slice(..HEADER), all.slice(HEADER..))
                } else {
                    let head = inner.sealed_get_range(key, 0, HEADER as u64).await?;
                    if !encrypt::is_encrypted(&head) || head.len() < HEADER {
                        return Err(CryptError::NotEncrypted { key: key.to_string() }.into());
                    }
                    (head, inner.sealed_get_range(key, from, to - from).await?)
                };
                if body.is_empty() {
                    return Ok(Bytes::new());
                }
                Ok(k.open_range(key, &head[8..HEADER], first, &body, offset, len)?)
            }
            ObjectStore::File(store) => refuse_sealed(key, store.get_range(key, offset, len).await?),
            ObjectStore::S3(store) => refuse_sealed(key, store.get_range(key, offset, len).await?),
        }
    }

    /// The stored bytes of an encrypted store's object (its inner store: File or S3).
    async fn sealed_get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        match self {
            ObjectStore::File(store) => store.get(key).await,
            ObjectStore::S3(store) => store.get(key).await,
            ObjectStore::Encrypted(..) => {
                Err(ObjectStoreError::InvalidKey { key: key.into(), reason: "nested encryption" })
            }
        }
    }

    async fn sealed_get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, ObjectStoreError> {
        match self {
            ObjectStore::File(store) => store.get_range(key, offset, len).await,
            ObjectStore::S3(store) => store.get_range(key, offset, len).await,
            ObjectStore::Encrypted(..) => {
                Err(ObjectStoreError::InvalidKey { key: key.into(), reason: "nested encryption" })
            }
        }
    }

    /// `None` when there is no object at `key`.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectStoreError> {
        validate_key(key)?;
        match self {
            ObjectStore::Encrypted(inner, _) => Box::pin(inner.head(key)).await,
            ObjectStore::File(store) => store.head(key).await,
            ObjectStore::S3(store) => store.head(key).await,
        }
    }

    /// Every object whose key starts with `prefix` (a string prefix, relative to the root).
    /// With a delimiter, keys with the delimiter after the prefix are folded into
    /// `common_prefixes`.
    pub async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, ObjectStoreError> {
        validate_prefix(prefix)?;
        if delimiter == Some("") {
            return Err(ObjectStoreError::InvalidKey {
                key: prefix.to_string(),
                reason: "the list delimiter is empty; pass None or \"/\"",
            });
        }
        match self {
            ObjectStore::Encrypted(inner, _) => Box::pin(inner.list(prefix, delimiter)).await,
            ObjectStore::File(store) => store.list(prefix, delimiter).await,
            ObjectStore::S3(store) => store.list(prefix, delimiter).await,
        }
    }

    /// Deletes `keys`; keys that do not exist are not an error.
    pub async fn delete_many(&self, keys: &[String]) -> Result<(), ObjectStoreError> {
        for key in keys {
            validate_key(key)?;
        }
        if keys.is_empty() {
            return Ok(());
        }
        match self {
            ObjectStore::Encrypted(inner, _) => Box::pin(inner.delete_many(keys)).await,
            ObjectStore::File(store) => store.delete_many(keys).await,
            ObjectStore::S3(store) => store.delete_many(keys).await,
        }
    }

    /// Copies inside the store (server-side on S3). The timestamp is kept unless `opts` sets a
    /// new one; the condition applies to `dst_key`.
    pub async fn copy(&self, src_key: &str, dst_key: &str, opts: &PutOptions) -> Result<(), ObjectStoreError> {
        validate_key(src_key)?;
        validate_key(dst_key)?;
        match self {
            // Ciphertext copies as it is: the object's key is not bound into it.
            ObjectStore::Encrypted(inner, _) => Box::pin(inner.copy(src_key, dst_key, opts)).await,
            ObjectStore::File(store) => store.copy(src_key, dst_key, opts).await,
            ObjectStore::S3(store) => store.copy(src_key, dst_key, opts).await,
        }
    }

    /// Whether the store refuses a second create of the same key (`If-None-Match: *`).
    ///
    /// Puts `probe_key` twice with `If-None-Match: *` (after deleting a leftover probe) and
    /// deletes it afterwards. `true` means conditional creates are honoured one at a time; it
    /// says nothing about atomicity under races (s3s-fs honours them but is not atomic).
    pub async fn probe_conditional_writes(&self, probe_key: &str) -> Result<bool, ObjectStoreError> {
        // A key of this process's own: two agents starting together on one replica must not
        // delete or pre-empt each other's probe.
        let probe_key = format!("{probe_key}-{:016x}", rand::random::<u64>());
        let probe_key = probe_key.as_str();
        validate_key(probe_key)?;
        let opts = PutOptions::if_none_match();
        let body = Bytes::from_static(b"walfleet conditional write probe\n");
        let probe_keys = [probe_key.to_string()];
        self.delete_many(&probe_keys).await?;
        self.put(probe_key, body.clone(), &opts).await?;
        let second = self.put(probe_key, body, &opts).await;
        let cleanup = self.delete_many(&probe_keys).await;
        let honoured = match second {
            Err(ObjectStoreError::PreconditionFailed { .. }) => true,
            Ok(_) => false,
            Err(err) => return Err(err),
        };
        cleanup?;
        Ok(honoured)
    }

    pub fn requests(&self) -> RequestCounts {
        match self {
            ObjectStore::Encrypted(inner, _) => inner.requests(),
            ObjectStore::File(store) => store.requests(),
            ObjectStore::S3(store) => store.requests(),
        }
    }
}

/// A store without a key reading an encrypted object says so instead of handing ciphertext on.
fn refuse_sealed(key: &str, body: Bytes) -> Result<Bytes, ObjectStoreError> {
    if encrypt::is_encrypted(&body) {
        return Err(CryptError::KeyRequired { key: key.to_string() }.into());
    }
    Ok(body)
}

impl fmt::Display for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// `2006-01-02T15:04:05.000Z`: RFC 3339, UTC, fixed milliseconds (Litestream's format).
pub fn format_timestamp(timestamp: DateTime<Utc>) -> String {
    timestamp.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Parses any RFC 3339 timestamp into UTC.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim()).ok().map(|t| t.with_timezone(&Utc))
}

/// Etags compare without their quotes: servers return them quoted, Ceph RGW only honours
/// `If-Match` with the bare value.
pub(crate) fn unquote_etag(etag: &str) -> &str {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')).unwrap_or(etag)
}
