//! Tests for the object store: pure ones for URLs, keys and formats, then one conformance
//! suite run against the file backend (a temp dir) and a real S3 server (s3s-fs over HTTP with
//! SigV4).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::error::status_is_retryable;
use super::store_url::{parse, percent_encode_path, redact_endpoint, S3Url, StoreUrl};
use super::*;

// ---------------------------------------------------------------------------------------------
// Pure tests

fn s3_url(url: &str) -> S3Url {
    match parse(url) {
        Ok(StoreUrl::S3(parsed)) => parsed,
        other => panic!("{url} did not parse as an S3 URL: {other:?}"),
    }
}

fn invalid_url(url: &str) -> String {
    match parse(url) {
        Err(ObjectStoreError::InvalidUrl(message)) => message,
        other => panic!("{url} should be refused, got {other:?}"),
    }
}

#[test]
fn file_urls_name_an_absolute_root() {
    assert_eq!(
        parse("file:///var/lib/replica").expect("parse"),
        StoreUrl::File { root: PathBuf::from("/var/lib/replica") }
    );
    assert_eq!(parse("file://localhost/a%20b/").expect("parse"), StoreUrl::File { root: PathBuf::from("/a b/") });
    assert!(invalid_url("file://relative/dir").contains("absolute path"));
    assert!(invalid_url("file:///dir?x=1").contains("no query"));
    assert!(invalid_url("/plain/path").contains("no scheme"));
    assert!(invalid_url("gs://bucket/x").contains("unsupported scheme"));
}

#[test]
fn s3_urls_carry_bucket_prefix_and_options() {
    let url = s3_url("s3://bucket/db/main/");
    assert_eq!((url.bucket.as_str(), url.prefix.as_str()), ("bucket", "db/main/"));
    assert_eq!((url.endpoint, url.region, url.force_path_style), (None, None, None));

    assert_eq!(s3_url("s3://bucket").prefix, "");
    assert_eq!(s3_url("s3://bucket/").prefix, "");

    let url = s3_url("s3://b/p?endpoint=http%3A%2F%2F127.0.0.1%3A9000%2F&region=eu-west-3&forcePathStyle=false");
    assert_eq!(url.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(url.region.as_deref(), Some("eu-west-3"));
    assert_eq!(url.force_path_style, Some(false));
    assert_eq!(s3_url("s3://b/p?endpoint=https://s3.example.com").endpoint.as_deref(), Some("https://s3.example.com"));
}

#[test]
fn bad_s3_urls_say_what_is_wrong() {
    assert!(invalid_url("s3:///prefix").contains("bucket name is missing"));
    assert!(invalid_url("s3://AK:SK@bucket/p").contains("credentials do not belong"));
    assert!(invalid_url("s3://bu cket/p").contains("bucket name"));
    assert!(invalid_url("s3://b/p?endpoint=ftp://x").contains("http:// or https://"));
    assert!(invalid_url("s3://b/p?endpoint=http://").contains("no host"));
    assert!(invalid_url("s3://b/p?colour=red").contains("unknown query parameter"));
    assert!(invalid_url("s3://b/p?region=a&region=b").contains("given twice"));
    assert!(invalid_url("s3://b/p?region=").contains("no value"));
    assert!(invalid_url("s3://b/p?forcePathStyle=maybe").contains("true or false"));
    assert!(invalid_url("s3://b/a/../c").contains("bad prefix"));
    assert!(invalid_url("s3://b/a//c").contains("bad prefix"));
    assert!(invalid_url("s3://b/p#frag").contains("fragment"));
    assert!(invalid_url("s3://b/p%zz").contains("percent-escape"));
}

#[tokio::test]
async fn describe_shows_no_secrets() {
    let settings = S3Settings {
        credentials: Some(test_credentials()),
        endpoint: Some("http://user:pass@127.0.0.1:9/".to_string()),
        region: None,
    };
    let store = ObjectStore::from_url_with("s3://bucket/db", &settings).await.expect("open");
    assert_eq!(store.backend(), Backend::S3);
    let described = store.describe();
    assert_eq!(described, "s3://bucket/db?region=us-east-1&endpoint=http://127.0.0.1:9");
    assert!(!format!("{store:?}").contains(SECRET_KEY));
    assert!(!format!("{settings:?}").contains(SECRET_KEY));
    assert_eq!(redact_endpoint("https://s3.example.com/x@y"), "https://s3.example.com/x@y");

    let store = ObjectStore::from_url("file:///tmp/replica").await.expect("open");
    assert_eq!((store.backend(), store.describe()), (Backend::File, "file:///tmp/replica".to_string()));
}

#[test]
fn keys_map_onto_paths_unambiguously() {
    for key in ["a", "gen/0001/ltx/0/0000000000000001-0000000000000001.ltx", "a..b", ".hidden"] {
        validate_key(key).unwrap_or_else(|err| panic!("{key:?} refused: {err}"));
    }
    let long = "k".repeat(1025);
    for (key, reason) in [
        ("", "empty"),
        ("/abs", "start with '/'"),
        ("dir/", "end with '/'"),
        ("a//b", "empty segment"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("./a", "'.'"),
        ("a\0b", "NUL"),
        ("d/.walfleet-tmp-1", "reserved"),
        (long.as_str(), "1024"),
    ] {
        match validate_key(key) {
            Err(err @ ObjectStoreError::InvalidKey { .. }) => {
                assert!(err.to_string().contains(reason), "{key:?}: {err}");
                assert!(!err.is_retryable());
            }
            other => panic!("{key:?} should be refused, got {other:?}"),
        }
    }
    for prefix in ["", "gen/", "gen/00", "a/b/"] {
        validate_prefix(prefix).unwrap_or_else(|err| panic!("{prefix:?} refused: {err}"));
    }
    for prefix in ["/", "/gen", "a//", "../", "a/../"] {
        assert!(validate_prefix(prefix).is_err(), "{prefix:?} accepted");
    }
}

#[test]
fn timestamps_use_litestream_format() {
    let ts = DateTime::from_timestamp_millis(1_136_214_245_000).expect("timestamp");
    assert_eq!(format_timestamp(ts), "2006-01-02T15:04:05.000Z");
    let ts = DateTime::from_timestamp_nanos(1_700_000_000_123_456_789);
    assert_eq!(format_timestamp(ts), "2023-11-14T22:13:20.123Z");
    assert_eq!(parse_timestamp("2023-11-14T22:13:20.123Z"), DateTime::from_timestamp_millis(1_700_000_000_123));
    assert_eq!(parse_timestamp("2023-11-14T23:13:20.5+01:00"), DateTime::from_timestamp_millis(1_700_000_000_500));
    assert_eq!(parse_timestamp("yesterday"), None);
}

#[test]
fn etags_compare_without_quotes() {
    assert_eq!(unquote_etag("\"abc\""), "abc");
    assert_eq!(unquote_etag("abc"), "abc");
    assert_eq!(unquote_etag("W/\"abc\""), "abc");
    assert_eq!(percent_encode_path("gen/a b+c%.ltx"), "gen/a%20b%2Bc%25.ltx");
}

#[test]
fn retryable_statuses() {
    for (status, code) in
        [(500, None), (503, Some("SlowDown")), (429, None), (408, None), (400, Some("RequestTimeout"))]
    {
        assert!(status_is_retryable(status, code), "{status} {code:?}");
    }
    for (status, code) in [(400, Some("InvalidArgument")), (404, None), (409, Some("BucketNotEmpty")), (416, None)] {
        assert!(!status_is_retryable(status, code), "{status} {code:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A real S3 server

const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const BUCKET: &str = "test";
const READY_TIMEOUT: Duration = Duration::from_secs(15);

fn test_credentials() -> S3Credentials {
    S3Credentials { access_key: ACCESS_KEY.to_string(), secret_key: SECRET_KEY.to_string(), session_token: None }
}

/// s3s-fs 0.14.1 with bucket `test` in its own temp dir, on a free port; killed on drop.
struct S3sFs {
    child: Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WALFLEET_S3S_FS") {
        return PathBuf::from(path);
    }
    let cache = match std::env::var_os("WALFLEET_CACHE") {
        Some(cache) => PathBuf::from(cache),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/walfleet"),
    };
    cache.join("s3s-fs/bin/s3s-fs")
}

impl S3sFs {
    async fn start() -> S3sFs {
        let binary = s3s_fs_binary();
        assert!(
            binary.is_file(),
            "s3s-fs not found at {}: install it with scripts/install-deps.sh (or `cargo install \
             --locked s3s-fs@0.14.1 --features binary --root ~/.cache/walfleet/s3s-fs`), or point \
             WALFLEET_S3S_FS at the binary",
            binary.display()
        );
        let mut data = tempfile::tempdir().expect("create s3s-fs data dir");
        std::fs::create_dir(data.path().join(BUCKET)).expect("create bucket dir");
        let mut last_error = String::new();
        // The free port is released before s3s-fs binds it; on a lost race, take another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("find a free port")
                .port();
            let child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(data.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|err| panic!("start {}: {err}", binary.display()));
            let mut server = S3sFs { child, endpoint: format!("http://127.0.0.1:{port}"), _data: data };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(err) => last_error = err,
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
            data = std::mem::replace(&mut server._data, tempfile::tempdir().expect("temp dir"));
        }
        panic!("s3s-fs did not start: {last_error}");
    }

    /// Ready when a signed LIST succeeds.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let store = self.store("").await;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("s3s-fs exited during startup: {status}"));
            }
            match store.list("", Some("/")).await {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    return Err(format!("not ready after {READY_TIMEOUT:?}: {err:#}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn settings(&self) -> S3Settings {
        S3Settings {
            credentials: Some(test_credentials()),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".to_string()),
        }
    }

    async fn store(&self, prefix: &str) -> ObjectStore {
        let url = format!("s3://{BUCKET}/{prefix}");
        ObjectStore::from_url_with(&url, &self.settings()).await.expect("open s3 store")
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite, the same for every backend

async fn conformance(store: &ObjectStore) {
    put_get_head(store).await;
    conditional_puts(store).await;
    list_with_and_without_delimiter(store).await;
    ranges_and_whole_reads(store).await;
    delete_many_in_batches(store).await;
    copy_keeps_or_replaces_the_timestamp(store).await;
    put_file_small_and_multipart(store).await;
    assert!(store.probe_conditional_writes("probe/conditional").await.expect("probe"));
    assert_eq!(store.head("probe/conditional").await.expect("head"), None, "probe left behind");
    invalid_keys_are_refused(store).await;
    for kind in RequestKind::ALL {
        assert!(store.requests().get(kind) > 0, "no {} request counted", kind.as_str());
    }
}

fn timestamp() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_700_000_000_123).expect("timestamp")
}

async fn put_get_head(store: &ObjectStore) {
    let body = Bytes::from_static(b"hello, object store");
    let opts = PutOptions::default().with_timestamp(timestamp());
    let etag = store.put("basic/one", body.clone(), &opts).await.expect("put");
    assert!(etag.is_some(), "put returned no etag");
    assert_eq!(store.get("basic/one").await.expect("get"), body);

    let meta = store.head("basic/one").await.expect("head").expect("object exists");
    assert_eq!(meta.key, "basic/one");
    assert_eq!(meta.size, body.len() as u64);
    assert_eq!(meta.etag, etag);
    assert_eq!(meta.timestamp, Some(timestamp()));
    assert!(meta.last_modified.is_some());

    // Overwrite without a condition; a put without a timestamp has none on S3.
    store.put("basic/one", Bytes::from_static(b"v2"), &PutOptions::default()).await.expect("overwrite");
    assert_eq!(store.get("basic/one").await.expect("get"), Bytes::from_static(b"v2"));

    match store.get("basic/missing").await {
        Err(ObjectStoreError::NotFound { key }) => assert_eq!(key, "basic/missing"),
        other => panic!("get of a missing key: {other:?}"),
    }
    assert_eq!(store.head("basic/missing").await.expect("head"), None);
    if store.backend() == Backend::File {
        // A directory is not an object. (s3s-fs answers HEAD of a "directory" with 500.)
        assert_eq!(store.head("basic").await.expect("head"), None);
        assert!(matches!(store.get("basic").await, Err(ObjectStoreError::NotFound { .. })));
    }
}

async fn conditional_puts(store: &ObjectStore) {
    let create = PutOptions::if_none_match();
    let first = store.put("cond/k", Bytes::from_static(b"1"), &create).await.expect("create");
    match store.put("cond/k", Bytes::from_static(b"2"), &create).await {
        Err(err @ ObjectStoreError::PreconditionFailed { .. }) => assert!(!err.is_retryable()),
        other => panic!("second If-None-Match create: {other:?}"),
    }
    assert_eq!(store.get("cond/k").await.expect("get"), Bytes::from_static(b"1"));

    let first = first.expect("etag");
    let replace = |etag: &str| PutOptions { condition: PutCondition::IfMatch(etag.to_string()), timestamp: None };
    let second = store.put("cond/k", Bytes::from_static(b"2"), &replace(&first)).await.expect("if-match");
    let second = second.expect("etag");
    assert_ne!(unquote_etag(&first), unquote_etag(&second));
    for stale in [first.as_str(), "\"0123456789abcdef\""] {
        match store.put("cond/k", Bytes::from_static(b"3"), &replace(stale)).await {
            Err(ObjectStoreError::PreconditionFailed { .. }) => {}
            other => panic!("If-Match with stale etag {stale}: {other:?}"),
        }
    }
    // Quoted or bare, the current etag matches.
    let bare = unquote_etag(&second).to_string();
    store.put("cond/k", Bytes::from_static(b"4"), &replace(&bare)).await.expect("if-match bare");
    assert_eq!(store.get("cond/k").await.expect("get"), Bytes::from_static(b"4"));
    match store.put("cond/absent", Bytes::from_static(b"x"), &replace(&bare)).await {
        Err(ObjectStoreError::PreconditionFailed { .. }) => {}
        other => panic!("If-Match on a missing key: {other:?}"),
    }
}

async fn list_with_and_without_delimiter(store: &ObjectStore) {
    for key in ["list/dir/x/1", "list/dir/x/2", "list/dir/y/1", "list/dir/top", "list/dirt"] {
        store.put(key, Bytes::from(key.to_string()), &PutOptions::default()).await.expect("put");
    }
    let listing = store.list("list/dir/", Some("/")).await.expect("list");
    let keys: Vec<&str> = listing.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["list/dir/top"]);
    assert_eq!(listing.common_prefixes, ["list/dir/x/", "list/dir/y/"]);
    assert_eq!(listing.objects[0].size, "list/dir/top".len() as u64);

    let listing = store.list("list/", None).await.expect("list");
    let keys: Vec<&str> = listing.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["list/dir/top", "list/dir/x/1", "list/dir/x/2", "list/dir/y/1", "list/dirt"]);
    assert!(listing.common_prefixes.is_empty());

    // A prefix is a string prefix, not a directory.
    let listing = store.list("list/dir", Some("/")).await.expect("list");
    let keys: Vec<&str> = listing.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["list/dirt"]);
    assert_eq!(listing.common_prefixes, ["list/dir/"]);

    let root = store.list("", Some("/")).await.expect("list root");
    assert!(root.common_prefixes.contains(&"list/".to_string()), "{:?}", root.common_prefixes);
    assert_eq!(store.list("nothing/here/", None).await.expect("list"), Listing::default());
}

async fn ranges_and_whole_reads(store: &ObjectStore) {
    let body = Bytes::from_static(b"0123456789");
    store.put("range/k", body.clone(), &PutOptions::default()).await.expect("put");
    assert_eq!(store.get_range("range/k", 2, 3).await.expect("range"), Bytes::from_static(b"234"));
    assert_eq!(store.get_range("range/k", 8, 10).await.expect("range"), Bytes::from_static(b"89"));
    assert_eq!(store.get_range("range/k", 10, 5).await.expect("range"), Bytes::new());
    assert_eq!(store.get_range("range/k", 3, 0).await.expect("range"), Bytes::new());
    assert!(matches!(store.get_range("range/missing", 0, 1).await, Err(ObjectStoreError::NotFound { .. })));
    assert_eq!(store.get("range/k").await.expect("get"), body);
}

async fn delete_many_in_batches(store: &ObjectStore) {
    // More than one DeleteObjects batch and one LIST page (1000 keys each).
    let keys: Vec<String> = (0..1005).map(|i| format!("many/{:02}/{i:05}", i % 7)).collect();
    futures::stream::iter(keys.iter())
        .map(|key| async move { store.put(key, Bytes::from_static(b"x"), &PutOptions::default()).await })
        .buffer_unordered(16)
        .for_each(|result| async move {
            result.expect("put");
        })
        .await;
    let listing = store.list("many/", None).await.expect("list");
    assert_eq!(listing.objects.len(), keys.len());
    let mut to_delete = keys.clone();
    to_delete.push("many/absent".to_string());
    store.delete_many(&to_delete).await.expect("delete");
    assert_eq!(store.list("many/", None).await.expect("list"), Listing::default());
    assert_eq!(
        store.list("", Some("/")).await.expect("list").common_prefixes.iter().filter(|p| p.starts_with("many")).count(),
        0
    );
    store.delete_many(&["many/absent".to_string()]).await.expect("deleting a missing key");
    store.delete_many(&[]).await.expect("deleting nothing");
}

async fn copy_keeps_or_replaces_the_timestamp(store: &ObjectStore) {
    let opts = PutOptions::default().with_timestamp(timestamp());
    store.put("copy/src", Bytes::from_static(b"copied"), &opts).await.expect("put");
    store.copy("copy/src", "copy/dst/a", &PutOptions::default()).await.expect("copy");
    assert_eq!(store.get("copy/dst/a").await.expect("get"), Bytes::from_static(b"copied"));
    let meta = store.head("copy/dst/a").await.expect("head").expect("copied");
    assert_eq!(meta.timestamp, Some(timestamp()));

    let later = timestamp() + chrono::Duration::milliseconds(86_400_500);
    store.copy("copy/src", "copy/dst/b", &PutOptions::default().with_timestamp(later)).await.expect("copy");
    let meta = store.head("copy/dst/b").await.expect("head").expect("copied");
    assert_eq!(meta.timestamp, Some(later));
    assert_eq!(store.get("copy/src").await.expect("source intact"), Bytes::from_static(b"copied"));

    match store.copy("copy/missing", "copy/dst/c", &PutOptions::default()).await {
        Err(ObjectStoreError::NotFound { key }) => assert_eq!(key, "copy/missing"),
        other => panic!("copy of a missing source: {other:?}"),
    }
}

/// Deterministic bytes that differ from part to part.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

async fn put_file_small_and_multipart(store: &ObjectStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let small = dir.path().join("small");
    std::fs::write(&small, b"small file").expect("write");
    let puts = store.requests().get(RequestKind::Put);
    store.put_file("file/small", &small, &PutOptions::default()).await.expect("put_file");
    assert_eq!(store.requests().get(RequestKind::Put) - puts, 1);
    assert_eq!(store.get("file/small").await.expect("get"), Bytes::from_static(b"small file"));

    // Over 1 MiB: one PUT streamed from the file (S3: unsigned payload with its MD5).
    let medium_data = pattern(3 * 1024 * 1024 + 7);
    let medium = dir.path().join("medium");
    std::fs::write(&medium, &medium_data).expect("write");
    let puts = store.requests().get(RequestKind::Put);
    store.put_file("file/medium", &medium, &PutOptions::if_none_match()).await.expect("put_file medium");
    assert_eq!(store.requests().get(RequestKind::Put) - puts, 1);
    assert!(store.get("file/medium").await.expect("get") == medium_data, "streamed object differs from the file");

    let data = pattern(MULTIPART_THRESHOLD as usize + 12_345);
    let large = dir.path().join("large");
    std::fs::write(&large, &data).expect("write");
    let puts = store.requests().get(RequestKind::Put);
    let opts = PutOptions::if_none_match().with_timestamp(timestamp());
    store.put_file("file/large", &large, &opts).await.expect("put_file large");
    let sent = store.requests().get(RequestKind::Put) - puts;
    match store.backend() {
        // CreateMultipartUpload, the parts, CompleteMultipartUpload.
        Backend::S3 => assert_eq!(sent, 2 + data.len().div_ceil(MULTIPART_PART_SIZE as usize) as u64, "requests"),
        Backend::File => assert_eq!(sent, 1),
    }
    let meta = store.head("file/large").await.expect("head").expect("uploaded");
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.timestamp, Some(timestamp()));
    assert!(store.get("file/large").await.expect("get") == data, "multipart object differs from the file");
    let boundary = MULTIPART_PART_SIZE;
    let across = store.get_range("file/large", boundary - 10, 20).await.expect("range");
    assert_eq!(&across[..], &data[boundary as usize - 10..boundary as usize + 10]);

    match store.put_file("file/large", &small, &PutOptions::if_none_match()).await {
        Err(ObjectStoreError::PreconditionFailed { .. }) => {}
        other => panic!("put_file If-None-Match over an existing key: {other:?}"),
    }
    match store.put_file("file/large", &large, &PutOptions::if_none_match()).await {
        Err(ObjectStoreError::PreconditionFailed { .. }) => {}
        other => panic!("multipart If-None-Match over an existing key: {other:?}"),
    }
    match store.put_file("file/other", &dir.path().join("absent"), &PutOptions::default()).await {
        Err(err @ ObjectStoreError::Io { .. }) => assert!(!err.is_retryable()),
        other => panic!("put_file of a missing local file: {other:?}"),
    }
}

async fn invalid_keys_are_refused(store: &ObjectStore) {
    let before = store.requests().snapshot();
    for key in ["../escape", "/abs", "a//b", "dir/"] {
        match store.put(key, Bytes::new(), &PutOptions::default()).await {
            Err(ObjectStoreError::InvalidKey { .. }) => {}
            other => panic!("put {key:?}: {other:?}"),
        }
    }
    assert!(matches!(store.get("../x").await, Err(ObjectStoreError::InvalidKey { .. })));
    assert!(matches!(store.list("/x", None).await, Err(ObjectStoreError::InvalidKey { .. })));
    assert_eq!(store.requests().snapshot(), before, "an invalid key reached the backend");
}

// ---------------------------------------------------------------------------------------------
// The suite on each backend, and backend-specific behaviour

#[tokio::test]
async fn file_backend_conformance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("replica");
    let store = ObjectStore::from_url(&format!("file://{}", root.display())).await.expect("open");
    conformance(&store).await;
    // Temporary files never stay behind.
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            assert!(!name.starts_with(".walfleet-tmp-"), "temp file left: {}", path.display());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
}

#[tokio::test]
async fn s3_backend_conformance_on_s3s_fs() {
    let server = S3sFs::start().await;
    let store = server.store("suite/root").await;
    conformance(&store).await;
    // Everything stayed under the root.
    let whole = server.store("").await.list("", Some("/")).await.expect("list bucket");
    assert_eq!(whole.common_prefixes, ["suite/"]);
    assert!(whole.objects.is_empty());
}

#[tokio::test]
async fn file_timestamp_is_the_mtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ObjectStore::File(FileStore::new(dir.path().to_path_buf()));
    let opts = PutOptions::default().with_timestamp(timestamp());
    store.put("a/b", Bytes::from_static(b"x"), &opts).await.expect("put");
    let modified = std::fs::metadata(dir.path().join("a/b")).expect("stat").modified().expect("mtime");
    assert_eq!(DateTime::<Utc>::from(modified), timestamp());
    let listing = store.list("a/", None).await.expect("list");
    assert_eq!(listing.objects[0].timestamp, Some(timestamp()));
}

#[tokio::test]
async fn file_if_none_match_has_one_winner_under_races() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ObjectStore::File(FileStore::new(dir.path().to_path_buf()));
    for round in 0..10 {
        let key = format!("race/{round}");
        let winners = futures::future::join_all((0..16).map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(
                async move { store.put(&key, Bytes::from(format!("{i}")), &PutOptions::if_none_match()).await },
            )
        }))
        .await
        .into_iter()
        .map(|joined| joined.expect("task"))
        .filter(|result| match result {
            Ok(_) => true,
            Err(ObjectStoreError::PreconditionFailed { .. }) => false,
            Err(err) => panic!("unexpected error: {err}"),
        })
        .count();
        assert_eq!(winners, 1, "round {round}");
    }
}

#[tokio::test]
async fn a_body_that_does_not_match_its_md5_is_refused() {
    use md5::{Digest, Md5};
    let server = S3sFs::start().await;
    let ObjectStore::S3(s3) = server.store("md5").await else { panic!("not an S3 store") };
    let body = Bytes::from_static(b"the bytes that were read");
    let wrong = aws_smithy_types::base64::encode(Md5::digest(b"the bytes that were hashed"));
    let sent = aws_sdk_s3::primitives::ByteStream::from(body.clone());
    match s3.put_body("k", sent, body.len() as u64, Some(wrong), &PutOptions::default()).await {
        Err(err) => assert!(!err.is_retryable(), "a digest mismatch is final: {err}"),
        Ok(etag) => panic!("the server stored a body whose MD5 differs from Content-MD5 (etag {etag:?})"),
    }
    // (s3s-fs writes the object before it compares digests, so whether anything stayed stored
    // is the server's business; AWS and Ceph RGW check first.)
    let right = aws_smithy_types::base64::encode(Md5::digest(&body));
    let sent = aws_sdk_s3::primitives::ByteStream::from(body.clone());
    s3.put_body("k", sent, body.len() as u64, Some(right), &PutOptions::default()).await.expect("matching MD5");
    assert_eq!(s3.get("k").await.expect("get"), body);
}

#[tokio::test]
async fn wrong_secret_is_an_auth_error() {
    let server = S3sFs::start().await;
    let mut settings = server.settings();
    settings.credentials = Some(S3Credentials { secret_key: "wrong".repeat(8), ..test_credentials() });
    let store = ObjectStore::from_url_with("s3://test/x", &settings).await.expect("open");
    match store.put("k", Bytes::from_static(b"x"), &PutOptions::default()).await {
        Err(err @ ObjectStoreError::Auth { .. }) => assert!(!err.is_retryable()),
        other => panic!("put with a wrong secret: {other:?}"),
    }
}

#[tokio::test]
async fn missing_bucket_is_final_and_refused_connection_is_retryable() {
    let server = S3sFs::start().await;
    let store = ObjectStore::from_url_with("s3://nobucket/x", &server.settings()).await.expect("open");
    match store.list("", None).await {
        Err(err @ ObjectStoreError::Other { .. }) => {
            assert!(!err.is_retryable(), "{err:#?}");
            assert!(format!("{:?}", anyhow::Error::from(err)).contains("bucket"));
        }
        other => panic!("list of a missing bucket: {other:?}"),
    }

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let settings = S3Settings { endpoint: Some(format!("http://127.0.0.1:{port}")), ..server.settings() };
    let store = ObjectStore::from_url_with("s3://test/x", &settings).await.expect("open");
    match store.get("k").await {
        Err(err) => assert!(err.is_retryable(), "connection refused should be retryable: {err:?}"),
        Ok(_) => panic!("get from a closed port succeeded"),
    }
}

const ENV_CHILD: &str = "WALFLEET_OBJECT_STORE_ENV_CHILD";

/// `from_url` takes endpoint, region and credentials from the standard AWS variables, and
/// AWS_CA_BUNDLE (exported on these machines) does not break a plain-http endpoint. Runs in a
/// child process so this process's environment stays untouched.
#[tokio::test]
async fn from_url_reads_the_standard_aws_environment() {
    let server = S3sFs::start().await;
    let seed = server.store("env").await;
    seed.put("seed", Bytes::from_static(b"from the parent"), &PutOptions::default()).await.expect("seed");
    let ca_bundle = std::env::var("AWS_CA_BUNDLE").unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".to_string());
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["object_store::tests::from_url_env_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV_CHILD, "1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_REGION", "eu-west-3")
        .env("AWS_CA_BUNDLE", ca_bundle)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(seed.get("from-child").await.expect("child's object"), Bytes::from_static(b"from the child"));
}

/// The child half of [`from_url_reads_the_standard_aws_environment`]; does nothing on its own.
#[tokio::test]
async fn from_url_env_child() {
    if std::env::var_os(ENV_CHILD).is_none() {
        return;
    }
    let store = ObjectStore::from_url("s3://test/env").await.expect("open from the environment");
    let described = store.describe();
    assert!(described.contains("region=eu-west-3") && described.contains("endpoint=http://127.0.0.1:"), "{described}");
    assert_eq!(store.get("seed").await.expect("get"), Bytes::from_static(b"from the parent"));
    store.put("from-child", Bytes::from_static(b"from the child"), &PutOptions::default()).await.expect("put");
}

/// A generation directory that is a symbolic link to a directory outside the root: listings
/// skip it (so retention never plans its files), and a delete through it is refused naming it,
/// leaving the files outside the root in place. A link to a file is not an object either.
#[tokio::test]
async fn file_backend_never_follows_symlinks_when_listing_or_deleting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    let store = ObjectStore::File(FileStore::new(root.clone()));
    let real = "0000000000000001/ltx/0/0000000000000001-0000000000000001.ltx";
    store.put(real, Bytes::from_static(b"mine"), &PutOptions::default()).await.expect("put");
    let victim = outside.join("ltx/0/0000000000000001-0000000000000001.ltx");
    std::fs::create_dir_all(victim.parent().expect("parent")).expect("mkdir");
    std::fs::write(&victim, b"not the replica's").expect("write victim");
    std::os::unix::fs::symlink(&outside, root.join("0000000000000002")).expect("symlink generation");
    std::os::unix::fs::symlink(&victim, root.join("0000000000000001/ltx/0/0000000000000002-0000000000000002.ltx"))
        .expect("symlink file");

    let top = store.list("", Some("/")).await.expect("list root");
    assert_eq!(top.common_prefixes, vec!["0000000000000001/".to_string()], "the linked generation is skipped");
    let all = store.list("", None).await.expect("list all");
    let keys: Vec<&str> = all.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, vec![real], "links are neither followed nor listed");
    let err = store.list("0000000000000002/", None).await.expect_err("listing through a link");
    assert!(err.to_string().contains("0000000000000002"), "{err}");
    let gens = crate::retention::list(&store).await.expect("retention listing");
    assert_eq!(gens.iter().map(|l| l.generation.0).collect::<Vec<_>>(), vec![1]);

    let through = "0000000000000002/ltx/0/0000000000000001-0000000000000001.ltx".to_string();
    let err = store.delete_many(std::slice::from_ref(&through)).await.expect_err("a delete through a link");
    assert!(err.to_string().contains("0000000000000002"), "{err}");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"not the replica's", "nothing outside the root is deleted");
    let link = "0000000000000001/ltx/0/0000000000000002-0000000000000002.ltx".to_string();
    store.delete_many(&[link, real.to_string()]).await.expect("delete");
    assert!(victim.exists(), "a linked file's target stays");
    assert!(!root.join(real).exists(), "the real object is deleted");
}
