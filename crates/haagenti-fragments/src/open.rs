//! One entry point: a [`FragmentLibrary`] from a location string.
//!
//! ```no_run
//! use haagenti_fragments::prelude::*;
//!
//! # async fn run() -> Result<(), FragmentError> {
//! let lib = open("./lib", OpenOptions::default().cache_bytes(512 << 20)).await?;
//! for model in lib.models().await? {
//!     println!("{model}");
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use haagenti_core::{
    CodecPolicy, CodecRegistry, FragmentError, FragmentLibrary, FragmentStore, LibraryConfig,
};

/// How [`open`] builds a library. `OpenOptions::default()` is what the `haagenti` command
/// uses: default codecs and fragment size, balanced codec effort, no cache, similarity on
/// (with the `lsh` feature).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Endpoint of an S3-compatible service (MinIO, R2, Ceph, a local test server) for an
    /// `s3://` location. `None`: the `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` variables,
    /// else AWS. Ignored for directories.
    pub s3_endpoint: Option<String>,
    /// How long one S3 operation may keep retrying transient failures before its error
    /// is final (`None`: the store's default, 180 s). Ignored for directories.
    pub s3_retry_timeout: Option<std::time::Duration>,
    /// Codec effort of new fragments (default: balanced).
    pub codec_policy: CodecPolicy,
    /// Tensor fragment size in bytes of 16-bit dtypes (`None`: the library default,
    /// 1 MiB); see [`LibraryConfig::fragment_size`].
    pub fragment_size: Option<usize>,
    /// Budget in bytes of the fragment cache that model handles read through (default 0:
    /// no cache); see [`FragmentLibrary::with_cache_bytes`].
    pub cache_bytes: u64,
    /// Fragments processed at once (`None`: the library default, one per core); see
    /// [`LibraryConfig::parallelism`].
    pub parallelism: Option<usize>,
    /// Similarity-driven ingest: delta and cast references to similar stored fragments,
    /// through `haagenti_lsh::cosine_similarity()`. Default: on when the crate is built
    /// with the `lsh` feature, off otherwise; asking for it in a build without `lsh` makes
    /// [`open`] fail with [`FragmentError::InvalidInput`] rather than silently store more.
    pub similarity: bool,
    /// The codecs to read and write with (`None`: every codec of this build, see
    /// [`default_codecs`]). A registry must read every codec the library was written
    /// with.
    pub codecs: Option<CodecRegistry>,
}

// Derivable only in builds without `lsh`, where `similarity` defaults to false.
#[allow(clippy::derivable_impls)]
impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            s3_endpoint: None,
            s3_retry_timeout: None,
            codec_policy: CodecPolicy::default(),
            fragment_size: None,
            cache_bytes: 0,
            parallelism: None,
            similarity: cfg!(feature = "lsh"),
            codecs: None,
        }
    }
}

impl OpenOptions {
    /// Sets [`OpenOptions::s3_endpoint`].
    pub fn s3_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.s3_endpoint = endpoint;
        self
    }

    /// Sets [`OpenOptions::s3_retry_timeout`].
    pub fn s3_retry_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.s3_retry_timeout = timeout;
        self
    }

    /// Sets [`OpenOptions::codec_policy`].
    pub fn codec_policy(mut self, policy: CodecPolicy) -> Self {
        self.codec_policy = policy;
        self
    }

    /// Sets [`OpenOptions::fragment_size`].
    pub fn fragment_size(mut self, bytes: Option<usize>) -> Self {
        self.fragment_size = bytes;
        self
    }

    /// Sets [`OpenOptions::cache_bytes`] (0: no cache).
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Sets [`OpenOptions::parallelism`].
    pub fn parallelism(mut self, fragments: Option<usize>) -> Self {
        self.parallelism = fragments;
        self
    }

    /// Sets [`OpenOptions::similarity`].
    pub fn similarity(mut self, on: bool) -> Self {
        self.similarity = on;
        self
    }

    /// Sets [`OpenOptions::codecs`].
    pub fn codecs(mut self, codecs: CodecRegistry) -> Self {
        self.codecs = Some(codecs);
        self
    }

    /// The library configuration these options describe.
    fn config(&self) -> LibraryConfig {
        let mut config = LibraryConfig::default();
        config.codec_policy = self.codec_policy;
        if let Some(size) = self.fragment_size {
            config.fragment_size = size;
        }
        if let Some(parallelism) = self.parallelism {
            config.parallelism = parallelism;
        }
        config
    }
}

/// Every codec compiled into this build (the `zstd` and `lz4` features) with the
/// float-aware byte-plane codec writing; without either feature, only uncompressed
/// fragments.
pub fn default_codecs() -> CodecRegistry {
    #[cfg(any(feature = "zstd", feature = "lz4"))]
    return haagenti_codec::default_registry();
    #[cfg(not(any(feature = "zstd", feature = "lz4")))]
    return CodecRegistry::default();
}

/// Opens the library at `location`: a directory path, `file:///absolute/path` or
/// `s3://bucket/prefix` (feature `s3`). A directory is created if missing. An S3
/// location is checked with one request, so a missing bucket, a wrong endpoint or bad
/// credentials fail here rather than midway through the first operation.
///
/// Errors: [`FragmentError::InvalidLocation`] for a location that names nothing usable
/// (empty, a relative `file://` path, an unknown scheme, no bucket, `s3://` in a build
/// without the `s3` feature); [`FragmentError::InvalidInput`] for options out of range
/// (see [`LibraryConfig::validate`]) or similarity asked for without the `lsh` feature;
/// the store's own error when it cannot be opened or reached.
pub async fn open(location: &str, options: OpenOptions) -> Result<FragmentLibrary, FragmentError> {
    let config = options.config();
    config.validate()?;
    let similarity = similarity(options.similarity)?;
    let store = open_store(location, &options).await?;
    let codecs = options.codecs.unwrap_or_else(default_codecs);
    let mut lib = FragmentLibrary::new(store, codecs, config)?;
    if let Some(similarity) = similarity {
        lib = lib.with_similarity(similarity);
    }
    if options.cache_bytes > 0 {
        lib = lib.with_cache_bytes(options.cache_bytes);
    }
    Ok(lib)
}

#[cfg(feature = "lsh")]
fn similarity(on: bool) -> Result<Option<haagenti_core::Similarity>, FragmentError> {
    Ok(on.then(haagenti_lsh::cosine_similarity))
}

#[cfg(not(feature = "lsh"))]
fn similarity(on: bool) -> Result<Option<haagenti_core::Similarity>, FragmentError> {
    if on {
        return Err(FragmentError::InvalidInput(
            "similarity needs haagenti-fragments built with the lsh feature".into(),
        ));
    }
    Ok(None)
}

/// Opens only the store at `location` (see [`open`] for the locations and errors);
/// `options.s3_endpoint` is the only option it reads.
pub async fn open_store(
    location: &str,
    options: &OpenOptions,
) -> Result<Arc<dyn FragmentStore>, FragmentError> {
    let invalid = |reason: &str| FragmentError::InvalidLocation {
        location: location.to_string(),
        reason: reason.to_string(),
    };
    if let Some(rest) = location.strip_prefix("s3://") {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(invalid("it names no bucket (use s3://bucket/prefix)"));
        }
        return open_s3(location, options).await;
    }
    let path = match location.strip_prefix("file://") {
        Some(p) if p.starts_with('/') => p,
        Some(_) => {
            return Err(invalid("file:// locations must be absolute (file:///path)"));
        }
        None if location.contains("://") => {
            return Err(invalid(
                "unsupported scheme (use a directory path, file:///path or s3://bucket/prefix)",
            ));
        }
        None => location,
    };
    if path.is_empty() {
        return Err(invalid("it is empty"));
    }
    open_fs(location, path)
}

#[cfg(feature = "s3")]
async fn open_s3(
    location: &str,
    options: &OpenOptions,
) -> Result<Arc<dyn FragmentStore>, FragmentError> {
    let mut s3_options = haagenti_store_s3::S3Options {
        endpoint: options.s3_endpoint.clone(),
        ..Default::default()
    };
    if let Some(timeout) = options.s3_retry_timeout {
        s3_options.retry_timeout = timeout;
    }
    let store = haagenti_store_s3::S3Store::from_url(location, s3_options)?;
    store.check().await?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "s3"))]
async fn open_s3(
    location: &str,
    _options: &OpenOptions,
) -> Result<Arc<dyn FragmentStore>, FragmentError> {
    Err(FragmentError::InvalidLocation {
        location: location.to_string(),
        reason: "this build of haagenti-fragments has no S3 support (enable the s3 feature)".into(),
    })
}

#[cfg(feature = "fs")]
fn open_fs(_location: &str, path: &str) -> Result<Arc<dyn FragmentStore>, FragmentError> {
    Ok(Arc::new(haagenti_store_fs::FsStore::open(path)?))
}

#[cfg(not(feature = "fs"))]
fn open_fs(location: &str, _path: &str) -> Result<Arc<dyn FragmentStore>, FragmentError> {
    Err(FragmentError::InvalidLocation {
        location: location.to_string(),
        reason: "this build of haagenti-fragments has no filesystem store (enable the fs feature)"
            .into(),
    })
}
