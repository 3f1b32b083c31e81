//! Rules for object keys, the same on every backend.
//!
//! Keys are relative to the store root and `/`-separated. They must map onto file paths
//! unambiguously (the file backend and s3s-fs store objects as files), so `.`/`..` segments,
//! empty segments (`//`, leading or trailing `/`) and NUL are refused instead of normalised.

use super::ObjectStoreError;

/// S3's limit on key length, in bytes.
const MAX_KEY_LEN: usize = 1024;

/// File names the file backend uses for its temporary files; no key may contain one.
pub(crate) const TEMP_PREFIX: &str = ".walfleet-tmp-";

/// Checks an object key.
pub fn validate_key(key: &str) -> Result<(), ObjectStoreError> {
    let invalid = |reason| Err(ObjectStoreError::InvalidKey { key: key.to_string(), reason });
    if key.is_empty() {
        return invalid("the key is empty");
    }
    if key.ends_with('/') {
        return invalid("a key must not end with '/' (that names a directory)");
    }
    check_common(key)
}

/// Checks a list prefix: like a key, but it may be empty and may end with `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), ObjectStoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_common(prefix.strip_suffix('/').unwrap_or(prefix)).map_err(|err| match err {
        ObjectStoreError::InvalidKey { reason, .. } => ObjectStoreError::InvalidKey { key: prefix.to_string(), reason },
        other => other,
    })
}

fn check_common(key: &str) -> Result<(), ObjectStoreError> {
    let invalid = |reason| Err(ObjectStoreError::InvalidKey { key: key.to_string(), reason });
    if key.len() > MAX_KEY_LEN {
        return invalid("the key is longer than 1024 bytes");
    }
    if key.contains('\0') {
        return invalid("the key contains a NUL byte");
    }
    if key.starts_with('/') {
        return invalid("a key is relative to the store root and must not start with '/'");
    }
    if key.contains("//") {
        return invalid("the key contains an empty segment ('//')");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return invalid("the key contains an empty segment");
        }
        if segment == "." || segment == ".." {
            return invalid("the key contains a '.' or '..' segment");
        }
        if segment.starts_with(TEMP_PREFIX) {
            return invalid("segments starting with '.walfleet-tmp-' are reserved for temporary files");
        }
    }
    Ok(())
}
