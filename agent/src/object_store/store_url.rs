//! Parsing replica URLs: `file:///abs/dir` and `s3://bucket/prefix?endpoint=..&region=..`.

use std::path::PathBuf;

use super::key::validate_prefix;
use super::ObjectStoreError;

const USAGE: &str = "use file:///abs/dir or s3://bucket/prefix[?endpoint=URL&region=R&forcePathStyle=true]";

/// A parsed replica URL: what a store opened from it reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    File { root: PathBuf },
    S3(S3Url),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Empty, or ending with `/`.
    pub prefix: String,
    /// `http(s)://host[:port]`, without a trailing `/`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
}

/// Parses (and checks) a replica URL exactly as `ObjectStore::from_url` does.
pub fn parse(url: &str) -> Result<StoreUrl, ObjectStoreError> {
    let invalid = |what: String| Err(ObjectStoreError::InvalidUrl(format!("{what} in {url:?}; {USAGE}")));
    let trimmed = url.trim();
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return invalid("no scheme".to_string());
    };
    if rest.contains('#') {
        return invalid("a '#' fragment is not allowed".to_string());
    }
    match scheme.to_ascii_lowercase().as_str() {
        "file" => parse_file(rest).or_else(invalid),
        "s3" => parse_s3(rest).or_else(invalid),
        other => invalid(format!("unsupported scheme {other:?}")),
    }
}

fn parse_file(rest: &str) -> Result<StoreUrl, String> {
    if rest.contains('?') {
        return Err("a file URL takes no query parameters".to_string());
    }
    let path = if rest.starts_with('/') {
        rest
    } else if let Some(path) = rest.strip_prefix("localhost").filter(|p| p.starts_with('/')) {
        path
    } else {
        let host = rest.split('/').next().unwrap_or(rest);
        return Err(format!("a file URL needs an absolute path (three slashes: file:///dir), got host {host:?}"));
    };
    let path = percent_decode(path)?;
    if path.contains('\0') {
        return Err("the path contains a NUL byte".to_string());
    }
    Ok(StoreUrl::File { root: PathBuf::from(path) })
}

fn parse_s3(rest: &str) -> Result<StoreUrl, String> {
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    if bucket.contains('@') {
        return Err("credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and \
                    AWS_SECRET_ACCESS_KEY"
            .to_string());
    }
    if bucket.is_empty() {
        return Err("the bucket name is missing".to_string());
    }
    if bucket.len() > 255 || !bucket.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(format!("bucket name {bucket:?} may only contain letters, digits, '.', '-' and '_'"));
    }
    let prefix = percent_decode(prefix)?;
    let prefix = prefix.trim_end_matches('/');
    if !prefix.is_empty() {
        validate_prefix(prefix).map_err(|err| format!("bad prefix: {err}"))?;
    }
    let mut parsed = S3Url {
        bucket: bucket.to_string(),
        prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
        ..S3Url::default()
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name)?;
        let value = percent_decode(value)?;
        if value.is_empty() {
            return Err(format!("query parameter {name:?} has no value"));
        }
        match name.as_str() {
            "endpoint" => set_once(&mut parsed.endpoint, &name, parse_endpoint(&value)?)?,
            "region" => set_once(&mut parsed.region, &name, value)?,
            "forcePathStyle" | "force_path_style" | "force-path-style" => {
                let flag = match value.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(format!("forcePathStyle must be true or false, got {value:?}")),
                };
                set_once(&mut parsed.force_path_style, &name, flag)?;
            }
            _ => return Err(format!("unknown query parameter {name:?} (supported: endpoint, region, forcePathStyle)")),
        }
    }
    Ok(StoreUrl::S3(parsed))
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("query parameter {name:?} is given twice"));
    }
    *slot = Some(value);
    Ok(())
}

/// Checks an S3 endpoint URL and drops its trailing `/`.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    let endpoint = endpoint.trim();
    let host = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| format!("endpoint {endpoint:?} must start with http:// or https://"))?;
    if host.is_empty() || host.starts_with('/') {
        return Err(format!("endpoint {endpoint:?} has no host"));
    }
    Ok(endpoint.trim_end_matches('/').to_string())
}

/// An endpoint with any `user:password@` removed, for logs.
pub(crate) fn redact_endpoint(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => endpoint.to_string(),
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

/// Percent-encodes a key for the `x-amz-copy-source` header, keeping `/`.
pub(crate) fn percent_encode_path(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
