//! The S3 backend (AWS and S3-compatible servers) over aws-sdk-s3.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective, ObjectIdentifier};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::error::status_is_retryable;
use super::store_url::{parse_endpoint, percent_encode_path, redact_endpoint, S3Url};
use super::{
    format_timestamp, parse_timestamp, unquote_etag, Listing, ObjectMeta, ObjectStoreError, PutCondition, PutOptions,
    RequestCounts, RequestKind, MULTIPART_MAX_IN_FLIGHT, MULTIPART_PART_SIZE, MULTIPART_THRESHOLD,
    TIMESTAMP_METADATA_KEY,
};

/// Adds `If-None-Match: *` or `If-Match: <etag>` to a put, copy or complete request. The etag
/// goes without quotes: Ceph RGW refuses every quoted one.
macro_rules! with_condition {
    ($request:expr, $condition:expr) => {
        match $condition {
            PutCondition::None => $request,
            PutCondition::IfNoneMatch => $request.if_none_match("*"),
            PutCondition::IfMatch(etag) => $request.if_match(unquote_etag(etag)),
        }
    };
}

const DEFAULT_REGION: &str = "us-east-1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// A body's attempt may take the attempt timeout plus its size at this rate (a 256 MiB object
/// is given over 5 minutes): a large object on a slow link is not cut off and retried forever.
const SLOWEST_UPLOAD_BYTES_PER_SEC: u64 = 1 << 20;
/// CompleteMultipartUpload answers once the object is assembled (S3 documents minutes).
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(600);
/// S3's limits: keys per DeleteObjects request, parts per multipart upload.
const DELETE_BATCH: usize = 1000;
const MAX_PARTS: u64 = 10_000;
/// Files up to this size are uploaded from memory with a signed payload; larger ones stream
/// from disk, so no upload holds more than this (plus read buffers) in memory.
const STREAM_THRESHOLD: u64 = 1 << 20;
/// Read buffer of a body streamed from disk.
const READ_BUFFER: usize = 256 << 10;

/// Static credentials; `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// S3 settings that do not come from the URL. The URL's `?endpoint=` and `?region=` win over
/// these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// `None`: the default AWS credentials chain (environment, profile, web identity, ECS, IMDS).
    pub credentials: Option<S3Credentials>,
    /// `http(s)://host[:port]` of an S3-compatible server; `None`: AWS.
    pub endpoint: Option<String>,
    /// `None`: `us-east-1`.
    pub region: Option<String>,
}

impl S3Settings {
    /// Endpoint from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, region from `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`; credentials from the default chain when the store is opened.
    pub fn from_env() -> S3Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
        S3Settings {
            credentials: None,
            endpoint: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
        }
    }
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Root of the store inside the bucket: empty or ending with '/'.
    prefix: String,
    endpoint: Option<String>,
    region: String,
    counts: RequestCounts,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store").field("url", &self.describe()).finish()
    }
}

impl S3Store {
    pub(crate) async fn new(url: S3Url, settings: &S3Settings) -> Result<S3Store, ObjectStoreError> {
        let endpoint = match url.endpoint {
            Some(endpoint) => Some(endpoint),
            None => {
                settings.endpoint.as_deref().map(parse_endpoint).transpose().map_err(ObjectStoreError::InvalidUrl)?
            }
        };
        let region = url.region.or_else(|| settings.region.clone());
        let region = region.unwrap_or_else(|| DEFAULT_REGION.to_string());
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .retry_config(RetryConfig::standard())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    // A server that accepts and never answers must fail the attempt, not hang
                    // replication: no read for this long ends it, and no attempt (an 8 MiB
                    // part included) may take longer than the attempt timeout.
                    .read_timeout(READ_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .force_path_style(url.force_path_style.unwrap_or(endpoint.is_some()));
        config = match &settings.credentials {
            Some(creds) => config.credentials_provider(Credentials::new(
                creds.access_key.clone(),
                creds.secret_key.clone(),
                creds.session_token.clone(),
                None,
                "walfleet-settings",
            )),
            None => config.credentials_provider(
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(Region::new(region.clone()))
                    .build()
                    .await,
            ),
        };
        if let Some(endpoint) = &endpoint {
            config = config.endpoint_url(endpoint.clone());
            if !is_aws_endpoint(endpoint) {
                // Non-AWS servers (Garage, Ceph RGW) reject the SDK's default streaming
                // checksum trailers and per-part CRCs.
                config = config
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                    .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
            }
        }
        Ok(S3Store {
            client: Client::from_conf(config.build()),
            bucket: url.bucket,
            prefix: url.prefix,
            endpoint,
            region,
            counts: RequestCounts::default(),
        })
    }

    pub(crate) fn describe(&self) -> String {
        let mut out = format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'));
        out.push_str(&format!("?region={}", self.region));
        if let Some(endpoint) = &self.endpoint {
            out.push_str(&format!("&endpoint={}", redact_endpoint(endpoint)));
        }
        out
    }

    pub(crate) fn requests(&self) -> RequestCounts {
        self.counts.clone()
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// A key as the server lists it, relative to the root; `None` outside the root.
    fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(self.prefix.as_str())
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<Option<String>, ObjectStoreError> {
        let len = body.len() as u64;
        self.put_body(key, ByteStream::from(body), len, None, opts).await
    }

    /// One PutObject. In-memory bodies are covered by the SigV4 signature; bodies streamed from
    /// a file go unsigned and carry their MD5 instead, which the server checks.
    pub(super) async fn put_body(
        &self,
        key: &str,
        body: ByteStream,
        len: u64,
        md5: Option<String>,
        opts: &PutOptions,
    ) -> Result<Option<String>, ObjectStoreError> {
        self.counts.record(RequestKind::Put);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .set_content_md5(md5)
            .body(body);
        if let Some(timestamp) = opts.timestamp {
            request = request.metadata(TIMESTAMP_METADATA_KEY, format_timestamp(timestamp));
        }
        let request = with_condition!(request, &opts.condition);
        let out = request
            .customize()
            .config_override(attempt_timeout_for(len))
            .send()
            .await
            .map_err(|err| condition_lost(map_sdk_error("put", key, err), &opts.condition))?;
        Ok(non_empty(out.e_tag()))
    }

    pub(crate) async fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: &PutOptions,
    ) -> Result<Option<String>, ObjectStoreError> {
        let io_err = |err| ObjectStoreError::io("put_file: read source", key, err);
        let size = tokio::fs::metadata(path).await.map_err(io_err)?.len();
        if size <= STREAM_THRESHOLD {
            let body = tokio::fs::read(path).await.map_err(io_err)?;
            return self.put(key, Bytes::from(body), opts).await;
        }
        if size <= MULTIPART_THRESHOLD {
            let (body, md5) = file_range(path, 0, size).await.map_err(io_err)?;
            return self.put_body(key, body, size, Some(md5), opts).await;
        }
        if opts.condition == PutCondition::IfNoneMatch && self.head(key).await?.is_some() {
            // Fail before uploading; the completing request carries the condition too, but
            // some servers (Ceph RGW) ignore it there.
            return Err(ObjectStoreError::PreconditionFailed { key: key.to_string() });
        }
        let full_key = self.full_key(key);
        let mut create = self.client.create_multipart_upload().bucket(&self.bucket).key(&full_key);
        if let Some(timestamp) = opts.timestamp {
            create = create.metadata(TIMESTAMP_METADATA_KEY, format_timestamp(timestamp));
        }
        self.counts.record(RequestKind::Put);
        let created = create.send().await.map_err(|err| map_sdk_error("create multipart upload", key, err))?;
        let upload_id = created.upload_id().filter(|id| !id.is_empty()).ok_or_else(|| {
            ObjectStoreError::other("create multipart upload", key, "no upload id in the response", false)
        })?;
        let result = self.upload_parts(key, &full_key, upload_id, path, size, opts).await;
        if result.is_err() {
            self.counts.record(RequestKind::Delete);
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full_key)
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(err) = abort {
                tracing::warn!(key, error = %DisplayErrorContext(&err), "abort multipart upload failed");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        full_key: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
        opts: &PutOptions,
    ) -> Result<Option<String>, ObjectStoreError> {
        // Past 10,000 parts of the default size parts grow (S3's limit on part count).
        let part_size = MULTIPART_PART_SIZE.max(size.div_ceil(MAX_PARTS));
        let part_count = size.div_ceil(part_size);
        let mut parts: Vec<CompletedPart> = futures::stream::iter(0..part_count)
            .map(|index| async move {
                let offset = index * part_size;
                let len = part_size.min(size - offset);
                let (body, md5) = file_range(path, offset, len)
                    .await
                    .map_err(|err| ObjectStoreError::io("put_file: read source", key, err))?;
                let part_number = i32::try_from(index + 1).unwrap_or(i32::MAX);
                self.upload_part(key, full_key, upload_id, part_number, body, len, md5).await
            })
            .buffer_unordered(MULTIPART_MAX_IN_FLIGHT)
            .try_collect()
            .await?;
        parts.sort_by_key(|part| part.part_number());
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        let request = with_condition!(request, &opts.condition);
        self.counts.record(RequestKind::Put);
        // The server assembles the object before it answers, which takes time in proportion to
        // its size: the usual read timeout would end a completion still under way, and the
        // retry would find the upload gone.
        let out = request
            .customize()
            .config_override(timeouts(COMPLETE_TIMEOUT, COMPLETE_TIMEOUT))
            .send()
            .await
            .map_err(|err| condition_lost(map_sdk_error("complete multipart upload", key, err), &opts.condition))?;
        // Ceph RGW answers with an empty ETag.
        Ok(non_empty(out.e_tag()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_part(
        &self,
        key: &str,
        full_key: &str,
        upload_id: &str,
        part_number: i32,
        body: ByteStream,
        len: u64,
        md5: String,
    ) -> Result<CompletedPart, ObjectStoreError> {
        self.counts.record(RequestKind::Put);
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .content_md5(md5)
            .body(body)
            .customize()
            .config_override(attempt_timeout_for(len))
            .send()
            .await
            .map_err(|err| map_sdk_error("upload part", key, err))?;
        let etag = non_empty(out.e_tag()).ok_or_else(|| {
            let message = format!("the server returned no etag for part {part_number}");
            ObjectStoreError::other("upload part", key, message, false)
        })?;
        Ok(CompletedPart::builder().part_number(part_number).e_tag(etag).build())
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        self.counts.record(RequestKind::Get);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|err| map_sdk_error("get", key, err))?;
        let body = out.body.collect().await.map_err(|err| ObjectStoreError::other("get", key, err, true))?;
        Ok(body.into_bytes())
    }

    pub(crate) async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, ObjectStoreError> {
        self.counts.record(RequestKind::Get);
        let last = offset.saturating_add(len - 1);
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            // 416: the range starts at or past the end of the object.
            Err(SdkError::ServiceError(ctx)) if ctx.raw().status().as_u16() == 416 => return Ok(Bytes::new()),
            Err(err) => return Err(map_sdk_error("get_range", key, err)),
        };
        let ranged = out.content_range().is_some();
        // Into one buffer of the range's size as it arrives (collecting the chunks and then
        // joining them would hold the range twice).
        let expected = out.content_length().and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
        let mut body = bytes::BytesMut::with_capacity(expected.min(usize::try_from(len).unwrap_or(usize::MAX)));
        let mut stream = out.body;
        while let Some(chunk) =
            stream.try_next().await.map_err(|err| ObjectStoreError::other("get_range", key, err, true))?
        {
            body.extend_from_slice(&chunk);
        }
        let body = body.freeze();
        if ranged {
            return Ok(body);
        }
        // The server ignored the Range header and sent the whole object.
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(body.len());
        let end = usize::try_from(last.saturating_add(1)).unwrap_or(usize::MAX).min(body.len());
        Ok(body.slice(start..end))
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectStoreError> {
        self.counts.record(RequestKind::Head);
        let result = self.client.head_object().bucket(&self.bucket).key(self.full_key(key)).send().await;
        let out = match result.map_err(|err| map_sdk_error("head", key, err)) {
            Ok(out) => out,
            Err(ObjectStoreError::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err),
        };
        let timestamp = out
            .metadata()
            .and_then(|metadata| metadata.get(TIMESTAMP_METADATA_KEY))
            .and_then(|text| parse_timestamp(text));
        Ok(Some(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().and_then(|len| u64::try_from(len).ok()).unwrap_or(0),
            etag: non_empty(out.e_tag()),
            last_modified: out.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
            timestamp,
        }))
    }

    pub(crate) async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, ObjectStoreError> {
        let full_prefix = self.full_key(prefix);
        let mut listing = Listing::default();
        let mut continuation: Option<String> = None;
        loop {
            let mut request = self.client.list_objects_v2().bucket(&self.bucket);
            if !full_prefix.is_empty() {
                request = request.prefix(&full_prefix);
            }
            if let Some(delimiter) = delimiter {
                request = request.delimiter(delimiter);
            }
            if let Some(token) = continuation.take() {
                request = request.continuation_token(token);
            }
            self.counts.record(RequestKind::List);
            let out = request.send().await.map_err(|err| map_sdk_error("list", prefix, err))?;
            for object in out.contents() {
                let Some(key) = object.key().and_then(|full| self.relative(full)) else {
                    continue;
                };
                listing.objects.push(ObjectMeta {
                    key: key.to_string(),
                    size: object.size().and_then(|size| u64::try_from(size).ok()).unwrap_or(0),
                    etag: non_empty(object.e_tag()),
                    last_modified: object.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
                    timestamp: None,
                });
            }
            for common in out.common_prefixes() {
                if let Some(relative) = common.prefix().and_then(|full| self.relative(full)) {
                    listing.common_prefixes.push(relative.to_string());
                }
            }
            match out.next_continuation_token() {
                Some(token) if out.is_truncated() == Some(true) && !token.is_empty() => {
                    continuation = Some(token.to_string());
                }
                _ => break,
            }
        }
        listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
        listing.common_prefixes.sort();
        listing.common_prefixes.dedup();
        Ok(listing)
    }

    pub(crate) async fn delete_many(&self, keys: &[String]) -> Result<(), ObjectStoreError> {
        for batch in keys.chunks(DELETE_BATCH) {
            let first = batch.first().map(String::as_str).unwrap_or_default();
            let build_err = |err| ObjectStoreError::other("delete", first, err, false);
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(self.full_key(key)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(build_err)?;
            let delete = Delete::builder().set_objects(Some(objects)).quiet(true).build().map_err(build_err)?;
            self.counts.record(RequestKind::Delete);
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|err| map_sdk_error("delete", first, err))?;
            let failed = out.errors().iter().find(|err| err.code() != Some("NoSuchKey"));
            if let Some(failed) = failed {
                let full = failed.key().unwrap_or_default();
                let key = self.relative(full).unwrap_or(full);
                let code = failed.code().unwrap_or("unknown");
                let message = format!("{code}: {}", failed.message().unwrap_or("no message from the server"));
                if matches!(code, "AccessDenied" | "AllAccessDisabled") {
                    return Err(ObjectStoreError::Auth { op: "delete", key: key.to_string(), message });
                }
                let retryable = status_is_retryable(0, Some(code));
                return Err(ObjectStoreError::other("delete", key, message, retryable));
            }
        }
        Ok(())
    }

    pub(crate) async fn copy(&self, src_key: &str, dst_key: &str, opts: &PutOptions) -> Result<(), ObjectStoreError> {
        self.counts.record(RequestKind::Copy);
        let source = format!("{}/{}", self.bucket, percent_encode_path(&self.full_key(src_key)));
        let mut request =
            self.client.copy_object().bucket(&self.bucket).key(self.full_key(dst_key)).copy_source(source);
        if let Some(timestamp) = opts.timestamp {
            request = request
                .metadata_directive(MetadataDirective::Replace)
                .metadata(TIMESTAMP_METADATA_KEY, format_timestamp(timestamp));
        }
        let request = with_condition!(request, &opts.condition);
        match request.send().await.map_err(|err| map_sdk_error("copy", dst_key, err)) {
            Ok(_) => Ok(()),
            // Only the source can be missing.
            Err(ObjectStoreError::NotFound { .. }) => Err(ObjectStoreError::NotFound { key: src_key.to_string() }),
            Err(err) => Err(err),
        }
    }
}

/// AWS answers `If-Match` on a missing key with 404; for the caller both mean "not the version
/// you read".
fn condition_lost(err: ObjectStoreError, condition: &PutCondition) -> ObjectStoreError {
    match (err, condition) {
        (ObjectStoreError::NotFound { key }, PutCondition::IfMatch(_)) => ObjectStoreError::PreconditionFailed { key },
        (err, _) => err,
    }
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_string)
}

fn is_aws_endpoint(endpoint: &str) -> bool {
    let host = endpoint.split("://").nth(1).unwrap_or(endpoint);
    let host = host.split(['/', ':']).next().unwrap_or(host);
    host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")
}

/// The timeouts of one request that sends `len` bytes (see [`SLOWEST_UPLOAD_BYTES_PER_SEC`]).
fn attempt_timeout_for(len: u64) -> aws_sdk_s3::config::Builder {
    timeouts(READ_TIMEOUT, ATTEMPT_TIMEOUT + Duration::from_secs(len / SLOWEST_UPLOAD_BYTES_PER_SEC))
}

/// A per-request override of the client's read and attempt timeouts.
fn timeouts(read: Duration, attempt: Duration) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::new()
        .timeout_config(TimeoutConfig::builder().read_timeout(read).operation_attempt_timeout(attempt).build())
}

/// A byte range of a file as a request body streamed from disk (the SDK reopens the file for
/// a retry), and the range's MD5 in base64 for `Content-MD5`: the file is read twice, but no
/// more than a read buffer of it is ever in memory.
async fn file_range(path: &Path, offset: u64, len: u64) -> std::io::Result<(ByteStream, String)> {
    use md5::{Digest, Md5};
    use std::os::unix::fs::FileExt;
    let owned = path.to_path_buf();
    let md5 = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(owned)?;
        let mut hash = Md5::new();
        let mut buf = vec![0u8; READ_BUFFER];
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let n = usize::try_from(end - at).unwrap_or(usize::MAX).min(buf.len());
            file.read_exact_at(&mut buf[..n], at)?;
            hash.update(&buf[..n]);
            at += n as u64;
        }
        Ok::<_, std::io::Error>(aws_smithy_types::base64::encode(hash.finalize()))
    })
    .await
    .map_err(std::io::Error::other)??;
    let body = ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .buffer_size(READ_BUFFER)
        .build()
        .await
        .map_err(std::io::Error::other)?;
    Ok((body, md5))
}

/// An error response from the server, with what it said.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status} {code}: {message} (request id {request_id})")]
struct ServiceFailure {
    status: u16,
    code: String,
    message: String,
    request_id: String,
}

/// A failure before or while talking to the server, as the SDK describes it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportFailure(String);

fn map_sdk_error<E>(op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> ObjectStoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let described = || TransportFailure(DisplayErrorContext(&err).to_string());
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().map(str::to_string);
            let message = ctx.err().message().unwrap_or("no message").to_string();
            let request_id = ctx.raw().headers().get("x-amz-request-id").unwrap_or("none").to_string();
            match (status, code.as_deref()) {
                (404, Some("NoSuchBucket")) => ObjectStoreError::other(
                    op,
                    key,
                    format!("bucket does not exist: {message} (HTTP 404 NoSuchBucket)"),
                    false,
                ),
                (404, _) => ObjectStoreError::NotFound { key: key.to_string() },
                (412, _) | (_, Some("PreconditionFailed")) => {
                    ObjectStoreError::PreconditionFailed { key: key.to_string() }
                }
                (401 | 403, _) => ObjectStoreError::Auth {
                    op,
                    key: key.to_string(),
                    message: format!("HTTP {status} {}: {message}", code.as_deref().unwrap_or("")),
                },
                _ => {
                    let retryable = status_is_retryable(status, code.as_deref());
                    let failure = ServiceFailure {
                        status,
                        code: code.unwrap_or_else(|| "(no code)".to_string()),
                        message,
                        request_id,
                    };
                    ObjectStoreError::other(op, key, failure, retryable)
                }
            }
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => ObjectStoreError::other(op, key, described(), true),
        SdkError::DispatchFailure(failure) => {
            let text = described();
            if failure.is_other() && text.0.contains("credentials") {
                // Credentials could not be loaded: a configuration problem.
                return ObjectStoreError::Auth { op, key: key.to_string(), message: text.0 };
            }
            ObjectStoreError::other(op, key, text, !failure.is_user())
        }
        _ => ObjectStoreError::other(op, key, described(), false),
    }
}
