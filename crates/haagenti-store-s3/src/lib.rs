//! haagenti-store-s3: [`S3Store`], a [`FragmentStore`] on S3-compatible object storage
//! (AWS S3, MinIO, Cloudflare R2, Ceph, moto), built on Apache Arrow's `object_store`.
//!
//! A store is a bucket plus an optional key prefix: `s3://bucket/some/prefix`. Object key
//! `fragments/ab/cd/…` lives at `some/prefix/fragments/ab/cd/…` in the bucket.
//!
//! # The store contract, as S3 keeps it
//!
//! * **Create-only puts.** Objects up to [`S3Options::multipart_threshold`] bytes go up in
//!   one request with `If-None-Match: *`, so of concurrent writers of one key exactly one
//!   gets [`PutOutcome::Created`] and the others [`PutOutcome::AlreadyExists`]. Larger
//!   objects use a multipart upload, which S3 cannot make conditional: the store checks
//!   with HEAD first, and a racing writer may overwrite. Keys are content addresses, so
//!   an overwrite writes the same bytes.
//! * **Atomicity.** S3 makes every object visible whole or not at all (a multipart upload
//!   when it completes): readers never see a partial object. Nothing spanning several
//!   objects is atomic.
//! * **Consistency** is the service's: AWS S3 reads and lists what was written before
//!   (since December 2020); some S3-compatible services are weaker.
//! * At most [`S3Options::max_concurrency`] requests of one store are in flight.
//!
//! # Retries
//!
//! Every request is safe to repeat, and the store repeats it when the failure may pass:
//! no response or a response cut short (connection refused, reset, timed out, a body
//! shorter than its length), HTTP 5xx, 429 and 408, S3's `SlowDown`, and a 409 from a
//! concurrent conditional write. Waits are exponential with full jitter, within
//! [`S3Options::max_retries`] and [`S3Options::retry_timeout`] per operation; an error that
//! outlives them names the object, the operation, the attempts made and the last cause.
//! [`FragmentStore::retry_stats`] counts what was ridden out.
//!
//! A create-only put whose response was lost may have landed: when a later attempt meets
//! the object, the store reads it back, and the same bytes mean the put was ours
//! ([`PutOutcome::Created`]); `docs/format.md` says how the library reasons about it. A
//! multipart upload sends failed parts again under their own numbers, and is aborted when
//! it fails for good.
//!
//! # Errors
//!
//! * A missing object: [`FragmentError::NotFound`] from `get`, `get_range`; `None` from
//!   `head`; success from `delete`.
//! * A missing bucket: [`FragmentError::Backend`] whose reason says the bucket does not
//!   exist, from every operation except `head`, which answers `None` (S3 answers 404 for
//!   both and only its response body, which `object_store` does not expose, says which:
//!   the store asks the bucket itself with a HEAD request when a 404 or an unexplained
//!   error response could mean it). [`S3Store::check`] reports a missing bucket up front.
//! * Everything else: [`FragmentError::Backend`] naming `s3://bucket/prefix/key` and the
//!   operation, with a one-line reason (the HTTP status class, or why no response came)
//!   and the original `object_store` error as its source. Reasons never hold
//!   credentials or the service's response document.
//!
//! # Credentials
//!
//! [`S3Options::credentials`], else the standard `AWS_*` environment variables, else the
//! `AWS_PROFILE` (or `default`) profile of `~/.aws/credentials` and `~/.aws/config`, else
//! web identity, container or instance credentials.

#![warn(missing_docs, unreachable_pub)]

mod profile;
mod retry;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt, stream};
use haagenti_core::{
    FragmentError, FragmentStore, ObjectKey, ObjectMeta, PutOutcome, Result, RetryStats,
};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions,
    PutPayload, RetryConfig, UploadPart,
};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::retry::{Attempts, Budget, Counters, PartRetry, retry_cause};

const BACKEND: &str = "s3";
/// S3 rejects multipart parts below 5 MiB (except the last) and uploads above 10 000 parts.
const MIN_PART_SIZE: usize = 5 << 20;
const MAX_PARTS: usize = 10_000;
/// Retries, and time for them, of the HEAD request asking whether the bucket exists: it
/// only explains an error already in hand, so a struggling service should not double the
/// time to report it.
const PROBE_BUDGET: Budget = Budget {
    max_retries: 1,
    timeout: Duration::from_secs(10),
};

/// Static AWS credentials. `Debug` shows the access key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// Access key id (`AKIA…`); not secret.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How to reach the bucket and how hard to push it. `Default` suits AWS S3.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Endpoint of an S3-compatible service (`http://127.0.0.1:9000`); requests then use
    /// path-style addressing, and an `http://` endpoint allows plain HTTP. `None`: the
    /// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` variables, else AWS for the region.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION` / `AWS_DEFAULT_REGION`, the profile's region, else `us-east-1`.
    pub region: Option<String>,
    /// `None`: the standard AWS environment, profile files and instance credentials.
    pub credentials: Option<S3Credentials>,
    /// Requests of this store in flight at once (at least 1; default 64: S3 serves each request slowly and many at once).
    pub max_concurrency: usize,
    /// Objects larger than this many bytes go up as multipart uploads, which are not
    /// create-only against concurrent writers (default 256 MiB). Every object the library
    /// writes is far smaller (fragments are at most 16 MiB; a manifest of 10^5 fragments is
    /// about 11 MiB): single PUTs are create-only, and a killed process cannot leave an
    /// upload open.
    pub multipart_threshold: usize,
    /// Size of a multipart part in bytes, raised to S3's 5 MiB minimum and to fit S3's
    /// 10 000 parts (default 8 MiB).
    pub part_size: usize,
    /// Retries of an operation failing transiently (default 10).
    pub max_retries: usize,
    /// No retry starts later than this after an operation's first attempt (default 180 s).
    pub retry_timeout: Duration,
    /// Timeout of one HTTP request, body included (default 120 s).
    pub request_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            credentials: None,
            max_concurrency: 64,
            multipart_threshold: 256 << 20,
            part_size: 8 << 20,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// A [`FragmentStore`] in an S3 bucket, under a key prefix.
pub struct S3Store {
    s3: AmazonS3,
    bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket root.
    prefix: String,
    permits: Semaphore,
    max_concurrency: usize,
    multipart_threshold: usize,
    part_size: usize,
    budget: Budget,
    counters: Arc<Counters>,
    /// The service, for messages about reaching it: the endpoint, or "AWS S3".
    service: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Store({})", self.location())
    }
}

impl S3Store {
    /// Opens `s3://bucket/optional/prefix`. Performs no network request: a wrong bucket or
    /// credentials show up on the first operation (or call [`S3Store::check`]).
    ///
    /// Errors: [`FragmentError::InvalidInput`] for a malformed URL (bucket names are 3 to
    /// 63 characters of `a-z 0-9 . -`; the prefix follows the rules of object keys) or a
    /// configuration `object_store` rejects.
    pub fn from_url(url: &str, options: S3Options) -> Result<S3Store> {
        // TLS is rustls with the ring provider (see the workspace manifest); an error means
        // another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (bucket, prefix) = parse_url(url)?;
        let invalid = |what: &str, e: &dyn fmt::Display| {
            FragmentError::InvalidInput(format!("S3 store {url}: {what}: {e}"))
        };

        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        let has_keys = options.credentials.is_some()
            || builder
                .get_config_value(&AmazonS3ConfigKey::AccessKeyId)
                .is_some();
        let has_region = options.region.is_some()
            || builder
                .get_config_value(&AmazonS3ConfigKey::Region)
                .is_some();
        if !has_keys || !has_region {
            let prof = profile::Profile::load_from_env();
            if let (false, Some(c)) = (has_keys, prof.credentials) {
                builder = apply_credentials(builder, c);
            }
            if let (false, Some(region)) = (has_region, prof.region) {
                builder = builder.with_region(region);
            }
        }
        if let Some(c) = options.credentials {
            builder = apply_credentials(builder, c);
        }
        if let Some(region) = options.region {
            builder = builder.with_region(region);
        }
        let endpoint = options.endpoint.or_else(|| {
            builder
                .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
                .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint))
        });
        let service = endpoint.clone().unwrap_or_else(|| "AWS S3".to_string());
        if let Some(endpoint) = endpoint {
            if endpoint.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
            // Custom services rarely have per-bucket DNS names: address by path.
            builder = builder
                .with_endpoint(&endpoint)
                .with_config(AmazonS3ConfigKey::S3Endpoint, &endpoint)
                .with_virtual_hosted_style_request(false);
        }
        // object_store's own retry loop is off: the store's (retry.rs) decides and counts.
        let retry = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let builder = builder.with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            format!("{}ms", options.request_timeout.as_millis()),
        );
        let s3 = builder
            .with_retry(retry)
            .build()
            .map_err(|e| invalid("configuration", &e))?;

        let max_concurrency = options.max_concurrency.clamp(1, Semaphore::MAX_PERMITS);
        Ok(S3Store {
            s3,
            bucket,
            prefix,
            permits: Semaphore::new(max_concurrency),
            max_concurrency,
            multipart_threshold: options.multipart_threshold,
            part_size: options.part_size.max(MIN_PART_SIZE),
            budget: Budget {
                max_retries: options.max_retries,
                timeout: options.retry_timeout,
            },
            counters: Arc::default(),
            service,
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix inside the bucket (no leading or trailing `/`; empty for the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Makes one listing request under the prefix (and, if it fails with an error
    /// response, a HEAD request on the bucket), so that a missing bucket, a wrong endpoint
    /// or bad credentials fail here with a clear error rather than on the first read. Errors: [`FragmentError::Backend`] with operation `check` (a missing bucket
    /// says so).
    pub async fn check(&self) -> Result<()> {
        let dir = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        match self
            .with_retries(|| self.s3.list_with_delimiter(dir.as_ref()))
            .await
        {
            Ok(_) => Ok(()),
            Err(f) => Err(self.failure("check", "", f).await),
        }
    }

    /// Bucket path of a store key.
    fn path(&self, key: &str) -> Path {
        Path::from(self.path_string(key))
    }

    /// Bucket key string of a store key or key prefix (which may end inside a segment).
    fn path_string(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// `s3://bucket/prefix/key`, for messages.
    fn url(&self, key: &str) -> String {
        let mut url = self.location();
        if !key.is_empty() {
            url.push('/');
            url.push_str(key);
        }
        url
    }

    /// A request permit. The semaphore is never closed; if it were, the request would go
    /// out unthrottled rather than fail.
    async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        self.permits.acquire().await.ok()
    }

    /// Sends `request` (holding a permit) until it succeeds, fails for a reason another
    /// attempt cannot change, or the retry budget runs out (see the crate docs).
    async fn with_retries<T, F, Fut>(&self, request: F) -> std::result::Result<T, Failed>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        self.with_budget(self.budget, request).await
    }

    /// [`S3Store::with_retries`] within `budget`.
    async fn with_budget<T, F, Fut>(
        &self,
        budget: Budget,
        mut request: F,
    ) -> std::result::Result<T, Failed>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut attempts = Attempts::new(budget);
        let mut ambiguous = false;
        loop {
            attempts.start();
            let result = {
                let _permit = self.permit().await;
                request().await
            };
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let class = classify(&error);
            ambiguous |= matches!(class, Class::Transport(_));
            let retry = retry_cause(class, slow_down(&error));
            match retry {
                Some(cause) if attempts.backoff().await => self.counters.retried(cause),
                _ => {
                    if retry.is_some() {
                        self.counters.exhausted();
                    }
                    return Err(Failed {
                        error,
                        attempts,
                        ambiguous,
                    });
                }
            }
        }
    }

    /// A backend error for `key` whose reason is made by `reason` (no request behind it).
    fn error(&self, op: &'static str, key: &str, reason: String) -> FragmentError {
        FragmentError::backend(BACKEND, op, self.url(key), reason)
    }

    /// A failed operation as a [`FragmentError::Backend`] keeping the `object_store` error
    /// as the source; used where a missing object is not the question. An error that may
    /// mean a missing bucket (an HTTP 404, or an error response object_store does not
    /// classify, as for every failed listing) is checked with a HEAD request on the bucket;
    /// an answer with a status (a 503) is not about the bucket.
    async fn failure(&self, op: &'static str, key: &str, failed: Failed) -> FragmentError {
        let Failed {
            error, attempts, ..
        } = failed;
        let class = classify(&error);
        let mut reason = if matches!(class, Class::Missing | Class::Response(None))
            && self.bucket_missing().await
        {
            format!("bucket {} does not exist", self.bucket)
        } else {
            reason(class, &error)
        };
        if let Class::Transport(HttpErrorKind::Connect) = class {
            reason = format!("{reason} ({})", self.service);
        }
        if attempts.made() > 1 {
            reason = format!("{reason} (after {})", attempts.summary());
        }
        FragmentError::Backend {
            backend: BACKEND,
            op,
            key: self.url(key),
            reason,
            source: Some(Arc::new(error)),
        }
    }

    /// [`FragmentError::NotFound`] for a missing object, a backend error for everything
    /// else. S3 answers 404 both for a missing object and a missing bucket (only the XML
    /// body tells them apart), so a 404 costs one HEAD request on the bucket.
    async fn object_error(&self, op: &'static str, key: &str, failed: Failed) -> FragmentError {
        if classify(&failed.error) == Class::Missing && !self.bucket_missing().await {
            return FragmentError::NotFound {
                key: self.url(key),
                op,
            };
        }
        self.failure(op, key, failed).await
    }

    /// Whether a HEAD request on the bucket (S3's HeadBucket) answers 404. Any other
    /// outcome (success, no permission to list the bucket, a network error) is not proof
    /// of a missing bucket and answers `false`. Called without a request permit held.
    async fn bucket_missing(&self) -> bool {
        let root = Path::default();
        let probe = self.with_budget(PROBE_BUDGET, || self.s3.head(&root)).await;
        matches!(probe, Err(f) if matches!(f.error, object_store::Error::NotFound { .. }))
    }

    async fn head_path(&self, key: &ObjectKey, path: &Path) -> Result<Option<ObjectMeta>> {
        match self.with_retries(|| self.s3.head(path)).await {
            Ok(meta) => Ok(Some(ObjectMeta {
                key: key.clone(),
                size: meta.size,
                modified: SystemTime::from(meta.last_modified),
            })),
            Err(f) if classify(&f.error) == Class::Missing => Ok(None),
            Err(f) => Err(self.failure("head", key.as_str(), f).await),
        }
    }

    /// A create-only PUT. When an attempt got no (whole) response and a later one finds
    /// the object, the first may have written it: the object is read back, and the same
    /// bytes make the put ours. (For content-addressed keys either answer is right; for
    /// a lock or a manifest generation, whose keys are unique to one writer, it tells
    /// "my write landed" from "someone else's object".)
    async fn put_single(&self, key: &ObjectKey, path: &Path, bytes: Bytes) -> Result<PutOutcome> {
        let payload = PutPayload::from(bytes.clone());
        let put = || {
            let options = PutOptions::from(PutMode::Create);
            self.s3.put_opts(path, payload.clone(), options)
        };
        match self.with_retries(put).await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(f) if classify(&f.error) == Class::Exists => {
                if f.ambiguous && self.get(key).await? == bytes {
                    Ok(PutOutcome::Created)
                } else {
                    Ok(PutOutcome::AlreadyExists)
                }
            }
            Err(f) => Err(self.failure("put", key.as_str(), f).await),
        }
    }

    async fn put_multipart(
        &self,
        key: &ObjectKey,
        path: &Path,
        bytes: Bytes,
    ) -> Result<PutOutcome> {
        // No conditional multipart upload on S3: check first. Losing a race overwrites the
        // object with identical bytes (the key is their hash), which readers cannot tell.
        if self.head_path(key, path).await?.is_some() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let k = key.as_str();
        // A start whose response is lost leaves an upload nobody knows the id of: S3's
        // AbortIncompleteMultipartUpload lifecycle rule is what removes those.
        let options = || {
            PutMultipartOptions::default().with_retry_policy(Arc::new(PartRetry {
                budget: self.budget,
                counters: self.counters.clone(),
            }))
        };
        let mut upload = match self
            .with_retries(|| self.s3.put_multipart_opts(path, options()))
            .await
        {
            Ok(upload) => upload,
            Err(f) => return Err(self.failure("put", k, f).await),
        };
        let part_size = self.part_size.max(bytes.len().div_ceil(MAX_PARTS));
        // Parts are lazy futures numbered in creation order; each takes a permit while it
        // runs, and object_store sends a failed one again as PartRetry says.
        let mut parts: Vec<BoxFuture<'_, Result<()>>> = Vec::new();
        let mut start = 0;
        while start < bytes.len() {
            let end = bytes.len().min(start + part_size);
            let part = upload.put_part(PutPayload::from(bytes.slice(start..end)));
            parts.push(Box::pin(self.upload_part(k, part)));
            start = end;
        }
        let uploaded = stream::iter(parts)
            .buffer_unordered(self.max_concurrency)
            .try_collect::<Vec<()>>()
            .await;
        let completed = match uploaded {
            Ok(_) => {
                self.complete_upload(key, path, &mut *upload, bytes.len())
                    .await
            }
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // Best effort, retried: the original error matters more than the abort's.
            let mut attempts = Attempts::new(self.budget);
            loop {
                attempts.start();
                let aborted = {
                    let _permit = self.permit().await;
                    upload.abort().await
                };
                if aborted.is_ok() || !attempts.backoff().await {
                    break;
                }
            }
        }
        completed.map(|()| PutOutcome::Created)
    }

    /// Sends one part of a multipart upload, holding a request permit.
    async fn upload_part(&self, key: &str, part: UploadPart) -> Result<()> {
        let result = {
            let _permit = self.permit().await;
            part.await
        };
        result.map_err(|e| self.error("put", key, reason(classify(&e), &e)))
    }

    /// Completes a multipart upload, again while the answer is a transient failure. A
    /// completion whose response was lost may have landed, and a second one then fails
    /// (the upload is gone): the object there with the right size settles it.
    async fn complete_upload(
        &self,
        key: &ObjectKey,
        path: &Path,
        upload: &mut dyn object_store::MultipartUpload,
        len: usize,
    ) -> Result<()> {
        let mut attempts = Attempts::new(self.budget);
        let mut ambiguous = false;
        loop {
            attempts.start();
            let result = {
                let _permit = self.permit().await;
                upload.complete().await
            };
            let error = match result {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            let class = classify(&error);
            ambiguous |= matches!(class, Class::Transport(_));
            if ambiguous
                && let Ok(Some(meta)) = self.head_path(key, path).await
                && meta.size == len as u64
            {
                return Ok(());
            }
            let retry = retry_cause(class, slow_down(&error));
            match retry {
                Some(cause) if attempts.backoff().await => self.counters.retried(cause),
                _ => {
                    if retry.is_some() {
                        self.counters.exhausted();
                    }
                    let failed = Failed {
                        error,
                        attempts,
                        ambiguous,
                    };
                    return Err(self.failure("put", key.as_str(), failed).await);
                }
            }
        }
    }
}

/// An operation that failed for good.
struct Failed {
    /// The last attempt's error.
    error: object_store::Error,
    attempts: Attempts,
    /// Whether some attempt got no (whole) response, so that it may have taken effect.
    ambiguous: bool,
}

/// What an `object_store` error means to the store, from its structure only.
///
/// object_store turns an HTTP status into an error variant (404 `NotFound`, 409
/// `AlreadyExists`, 412 `Precondition`, 304 `NotModified`, 403 `PermissionDenied`, 401
/// `Unauthenticated`; any other status, and every failed listing, `Generic`), wraps the
/// 412 or 304 of a create-only put in an `AlreadyExists` of its own, and keeps a request
/// that got no response as an [`HttpError`] in the source chain. The S3 error code
/// (`NoSuchKey`, `NoSuchBucket`, …) is only in the response body, which it does not
/// expose: the store tells a missing bucket apart with a request of its own
/// ([`S3Store::bucket_missing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// HTTP 404: the object, or the bucket.
    Missing,
    /// A create-only put found the object (HTTP 412 or 304).
    Exists,
    /// HTTP 409: another conditional write of the key is in flight.
    Conflict,
    /// HTTP 412 outside a create-only put.
    Precondition,
    /// HTTP 304 outside a create-only put.
    NotModified,
    /// HTTP 403.
    Denied,
    /// HTTP 401.
    Unauthenticated,
    /// No response: the request could not be sent or its response not be read.
    Transport(HttpErrorKind),
    /// Another error status (when object_store's message shows it), or a response
    /// object_store could not make sense of.
    Response(Option<u16>),
    /// Not about a request: an unsupported operation, a bad path, a failed task.
    Local,
}

fn classify(e: &object_store::Error) -> Class {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Class::Missing,
        E::AlreadyExists { source, .. } if source.downcast_ref::<E>().is_some() => Class::Exists,
        E::AlreadyExists { .. } => Class::Conflict,
        E::Precondition { .. } => Class::Precondition,
        E::NotModified { .. } => Class::NotModified,
        E::PermissionDenied { .. } => Class::Denied,
        E::Unauthenticated { .. } => Class::Unauthenticated,
        E::Generic { .. } => match transport_error(e) {
            Some(http) => Class::Transport(http.kind()),
            // A failed listing comes as a Generic error even for a 404 (a missing bucket).
            None => match response_status(e) {
                Some(404) => Class::Missing,
                status => Class::Response(status),
            },
        },
        _ => Class::Local,
    }
}

/// The HTTP status of an error response, from object_store's message for it ("Server
/// returned non-2xx status code: 503 Service Unavailable: …"; "Server returned error
/// response: …" is an error in the body of a 200), which is the only place it keeps it.
fn response_status(e: &object_store::Error) -> Option<u16> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if let Some(rest) = text.split("status code: ").nth(1) {
            let digits = rest.get(..3)?;
            return digits.parse().ok();
        }
        if text.starts_with("Server returned error response") {
            return Some(200);
        }
        cause = c.source();
    }
    None
}

/// Whether the service's answer is S3's `SlowDown` (the code is in the response body,
/// which object_store keeps in its message).
fn slow_down(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains("<Code>SlowDown</Code>") {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The [`HttpError`] in `e`'s source chain, if the request got no response.
fn transport_error(e: &object_store::Error) -> Option<&HttpError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(http) = c.downcast_ref::<HttpError>() {
            return Some(http);
        }
        cause = c.source();
    }
    None
}

/// The `reason` of a backend error: one line naming what happened, built from the error's
/// class. The full error, with the service's response, stays the error's `source`.
fn reason(class: Class, e: &object_store::Error) -> String {
    let what = match class {
        Class::Missing => "not found (HTTP 404)",
        Class::Exists => "already exists (HTTP 412)",
        Class::Conflict => "conflicting concurrent write (HTTP 409)",
        Class::Precondition => "precondition failed (HTTP 412)",
        Class::NotModified => "not modified (HTTP 304)",
        Class::Denied => "access denied (HTTP 403)",
        Class::Unauthenticated => "credentials rejected (HTTP 401)",
        Class::Response(Some(status)) if slow_down(e) => {
            return format!("the service is throttling requests (HTTP {status} SlowDown)");
        }
        Class::Response(Some(200)) => {
            "the service reported an error in a successful answer (its response is in the source)"
        }
        Class::Response(Some(status)) => {
            return format!("the service answered HTTP {status} (its response is in the source)");
        }
        Class::Response(None) => {
            "the service answered with an error (its response is in the source)"
        }
        Class::Transport(kind) => {
            let what = match kind {
                HttpErrorKind::Connect => "could not connect",
                HttpErrorKind::Timeout => "request timed out",
                HttpErrorKind::Interrupted => "connection interrupted",
                HttpErrorKind::Decode => "could not read the response",
                _ => "request failed",
            };
            // reqwest's message, without the URL (object_store strips it).
            return match transport_error(e).and_then(std::error::Error::source) {
                Some(cause) => format!("{what}: {}", one_line(&cause.to_string())),
                None => what.to_string(),
            };
        }
        // These carry no response: their message is object_store's own, short.
        Class::Local => return one_line(&e.to_string()),
    };
    what.to_string()
}

/// `text` on one line (whitespace runs, line breaks included, become one space).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn apply_credentials(builder: AmazonS3Builder, c: S3Credentials) -> AmazonS3Builder {
    let builder = builder
        .with_access_key_id(c.access_key_id)
        .with_secret_access_key(c.secret_access_key);
    match c.session_token {
        Some(token) => builder.with_token(token),
        None => builder,
    }
}

/// Splits `s3://bucket/optional/prefix` into bucket and prefix (no surrounding `/`).
fn parse_url(url: &str) -> Result<(String, String)> {
    let bad = |why: &str| FragmentError::InvalidInput(format!("S3 URL {url:?}: {why}"));
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("must start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_end_matches('/');
    // Bucket names: 3 to 63 of a-z 0-9 . - (S3's rules; MinIO and R2 follow them).
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !bucket_ok {
        return Err(bad("bucket name must be 3 to 63 characters of a-z 0-9 . -"));
    }
    if !prefix.is_empty() {
        // The same rules as object keys: the prefix is part of every key.
        ObjectKey::new(prefix).map_err(|e| bad(&format!("prefix: {e}")))?;
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

#[async_trait]
impl FragmentStore for S3Store {
    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        let path = self.path(key.as_str());
        if bytes.len() > self.multipart_threshold {
            self.put_multipart(key, &path, bytes).await
        } else {
            self.put_single(key, &path, bytes).await
        }
    }

    /// An unconditional single PUT: S3 makes the new object visible whole, replacing
    /// the old one for every later read (fragment objects are far below S3's 5 GB limit).
    async fn replace(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        let k = key.as_str();
        let path = self.path(k);
        let payload = PutPayload::from(bytes);
        let put = || {
            let options = PutOptions::from(PutMode::Overwrite);
            self.s3.put_opts(&path, payload.clone(), options)
        };
        match self.with_retries(put).await {
            Ok(_) => Ok(()),
            Err(f) => Err(self.failure("replace", k, f).await),
        }
    }

    /// A body cut short fails its attempt (its length is checked against the response's)
    /// and the whole object is fetched again.
    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let k = key.as_str();
        let path = self.path(k);
        let get = || {
            let (s3, path) = (&self.s3, &path);
            async move { s3.get(path).await?.bytes().await }
        };
        match self.with_retries(get).await {
            Ok(bytes) => Ok(bytes),
            Err(f) => Err(self.object_error("get", k, f).await),
        }
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes> {
        let k = key.as_str();
        let path = self.path(k);
        // S3 refuses empty ranges and ranges starting at or past the end (416); the trait
        // wants them clipped to empty, and a missing object must still be NotFound.
        if range.start < range.end {
            match self
                .with_retries(|| self.s3.get_range(&path, range.clone()))
                .await
            {
                Ok(bytes) => return Ok(bytes),
                Err(f) if classify(&f.error) == Class::Missing => {
                    return Err(self.object_error("get", k, f).await);
                }
                Err(f) => match self.head_path(key, &path).await? {
                    Some(meta) if meta.size <= range.start => {}
                    _ => return Err(self.failure("get", k, f).await),
                },
            }
        } else if self.head_path(key, &path).await?.is_none() {
            return Err(FragmentError::NotFound {
                key: self.url(k),
                op: "get",
            });
        }
        Ok(Bytes::new())
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        self.head_path(key, &self.path(key.as_str())).await
    }

    /// A listing cut short (a failed page) is started again from the beginning.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // object_store lists whole path segments; list the deepest complete directory of
        // the prefix and filter the rest by string.
        let full = self.path_string(prefix);
        let dir = full.rfind('/').map(|i| Path::from(&full[..i]));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let list = || {
            let (s3, dir, full, strip) = (&self.s3, &dir, &full, &strip);
            async move {
                let mut out = Vec::new();
                let mut objects = s3.list(dir.as_ref());
                while let Some(meta) = objects.next().await {
                    let meta = meta?;
                    let location = meta.location.as_ref();
                    if !location.starts_with(full.as_str()) {
                        continue;
                    }
                    // Objects that are not valid keys were not written by a store; leave them.
                    let Some(Ok(key)) = location.strip_prefix(strip.as_str()).map(ObjectKey::new)
                    else {
                        continue;
                    };
                    out.push(ObjectMeta {
                        key,
                        size: meta.size,
                        modified: SystemTime::from(meta.last_modified),
                    });
                }
                Ok(out)
            }
        };
        match self.with_retries(list).await {
            Ok(out) => Ok(out),
            Err(f) => Err(self.failure("list", prefix, f).await),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let k = key.as_str();
        let path = self.path(k);
        match self.with_retries(|| self.s3.delete(&path)).await {
            Ok(()) => Ok(()),
            // S3 answers 204 for a missing key; some services answer 404.
            Err(f) => match self.object_error("delete", k, f).await {
                FragmentError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn retry_stats(&self) -> RetryStats {
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_prefix() {
        assert_eq!(
            parse_url("s3://my-bucket").unwrap(),
            ("my-bucket".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://my-bucket/").unwrap(),
            ("my-bucket".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://my.bucket/a/b-c/").unwrap(),
            ("my.bucket".into(), "a/b-c".into())
        );
        for bad in [
            "my-bucket",
            "http://my-bucket/x",
            "s3://",
            "s3://ab",
            "s3://My-Bucket",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://bucket/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn location_and_paths_include_the_prefix() {
        let options = || S3Options {
            endpoint: Some("http://127.0.0.1:1".into()),
            credentials: Some(S3Credentials {
                access_key_id: "k".into(),
                secret_access_key: "s".into(),
                session_token: None,
            }),
            ..S3Options::default()
        };
        let store = S3Store::from_url("s3://bucket/lib/one", options()).unwrap();
        assert_eq!(store.location(), "s3://bucket/lib/one");
        assert_eq!(store.url("manifests/m"), "s3://bucket/lib/one/manifests/m");
        assert_eq!(store.path("manifests/m").as_ref(), "lib/one/manifests/m");
        assert_eq!(format!("{store:?}"), "S3Store(s3://bucket/lib/one)");

        let root = S3Store::from_url("s3://bucket", options()).unwrap();
        assert_eq!(root.location(), "s3://bucket");
        assert_eq!(root.path("a/b").as_ref(), "a/b");
    }

    #[test]
    fn errors_are_classified_by_their_kind() {
        use object_store::Error as E;
        let path = || "lib/manifests/m".to_string();
        // A response body as S3 sends it: it must never reach the reason.
        let body = || -> Box<dyn std::error::Error + Send + Sync> {
            "404 Not Found: <?xml version=\"1.0\"?>\n<Error><Code>NoSuchKey</Code></Error>".into()
        };
        let connect = HttpError::new(
            HttpErrorKind::Connect,
            std::io::Error::other("tcp connect error: Connection refused"),
        );
        let cases = [
            (
                E::NotFound {
                    path: path(),
                    source: body(),
                },
                Class::Missing,
            ),
            (
                E::AlreadyExists {
                    path: path(),
                    source: Box::new(E::Precondition {
                        path: path(),
                        source: body(),
                    }),
                },
                Class::Exists,
            ),
            (
                E::AlreadyExists {
                    path: path(),
                    source: body(),
                },
                Class::Conflict,
            ),
            (
                E::Precondition {
                    path: path(),
                    source: body(),
                },
                Class::Precondition,
            ),
            (
                E::NotModified {
                    path: path(),
                    source: body(),
                },
                Class::NotModified,
            ),
            (
                E::PermissionDenied {
                    path: path(),
                    source: body(),
                },
                Class::Denied,
            ),
            (
                E::Unauthenticated {
                    path: path(),
                    source: body(),
                },
                Class::Unauthenticated,
            ),
            (
                E::Generic {
                    store: "S3",
                    source: body(),
                },
                Class::Response(None),
            ),
            (
                E::Generic {
                    store: "S3",
                    source: Box::new(connect),
                },
                Class::Transport(HttpErrorKind::Connect),
            ),
            (
                E::NotImplemented {
                    operation: "x".into(),
                    implementer: "y".into(),
                },
                Class::Local,
            ),
        ];
        for (e, class) in cases {
            assert_eq!(classify(&e), class, "{e}");
            let reason = reason(class, &e);
            assert!(!reason.contains('<') && !reason.contains('\n'), "{reason}");
            assert!(!reason.contains("NoSuchKey"), "{reason}");
        }
        let e = E::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                HttpErrorKind::Timeout,
                std::io::Error::other("operation timed out"),
            )),
        };
        assert_eq!(
            reason(classify(&e), &e),
            "request timed out: operation timed out"
        );
    }

    #[tokio::test]
    async fn backend_errors_keep_the_object_store_error_as_source() {
        use std::error::Error as _;
        let store = S3Store::from_url(
            "s3://bucket/lib",
            S3Options {
                endpoint: Some("http://127.0.0.1:1".into()),
                region: Some("us-east-1".into()),
                credentials: Some(S3Credentials {
                    access_key_id: "k".into(),
                    secret_access_key: "s".into(),
                    session_token: None,
                }),
                max_retries: 0,
                ..S3Options::default()
            },
        )
        .unwrap();
        // Nothing listens on port 1: a transport error, classified without a probe.
        let err = store.check().await.unwrap_err();
        let FragmentError::Backend { op, reason, .. } = &err else {
            panic!("expected a backend error, got {err:?}");
        };
        assert_eq!(*op, "check");
        assert!(reason.starts_with("could not connect"), "{reason}");
        let FragmentError::Backend {
            source: Some(cause),
            ..
        } = &err
        else {
            panic!("the cause is kept: {err:?}");
        };
        let cause = cause.downcast_ref::<object_store::Error>();
        assert!(matches!(cause, Some(object_store::Error::Generic { .. })));
        // `source()` reaches it too (behind the `Arc` holding it).
        let shown = err.source().map(ToString::to_string);
        assert_eq!(shown, cause.map(ToString::to_string));
        assert!(
            err.source()
                .and_then(|s| s.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>())
                .is_some()
        );
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let c = S3Credentials {
            access_key_id: "AKIA".into(),
            secret_access_key: "hunter2".into(),
            session_token: Some("tok".into()),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIA") && !shown.contains("hunter2") && !shown.contains("tok\""));
    }
}
