//! Opening a library from a `--library` location.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use haagenti_core::{CodecPolicy, CodecRegistry, FragmentLibrary, FragmentStore, LibraryConfig};
use haagenti_store_fs::FsStore;

/// The codecs every library reads, with the default encoder.
pub fn codecs() -> CodecRegistry {
    haagenti_codec::default_registry()
}

/// Opens the store a location names: a directory, `file:///path` or `s3://bucket/prefix`.
///
/// An S3 location is checked with one request, so a missing bucket, a wrong endpoint or
/// bad credentials fail here with one clear error instead of midway through a command.
pub async fn open_store(
    location: &str,
    s3_endpoint: Option<&str>,
) -> Result<Arc<dyn FragmentStore>> {
    if let Some(rest) = location.strip_prefix("s3://") {
        if rest.is_empty() {
            bail!("library location {location:?} names no bucket");
        }
        let options = haagenti_store_s3::S3Options {
            endpoint: s3_endpoint.map(str::to_string),
            ..Default::default()
        };
        let store = haagenti_store_s3::S3Store::from_url(location, options)
            .with_context(|| format!("opening library {location}"))?;
        store
            .check()
            .await
            .with_context(|| format!("opening library {location}"))?;
        return Ok(Arc::new(store));
    }
    let path = match location.strip_prefix("file://") {
        Some(p) if p.starts_with('/') => p,
        Some(_) => bail!(
            "library location {location:?}: file:// locations must be absolute (file:///path)"
        ),
        None if location.contains("://") => bail!(
            "library location {location:?}: unsupported scheme (use a path, file:// or s3://)"
        ),
        None => location,
    };
    if path.is_empty() {
        bail!("library location is empty");
    }
    let store = FsStore::open(path).with_context(|| format!("opening library {path}"))?;
    Ok(Arc::new(store))
}

/// Opens a library with the given codec policy and optional fragment size.
pub async fn open_library(
    location: &str,
    s3_endpoint: Option<&str>,
    policy: CodecPolicy,
    fragment_size: Option<usize>,
) -> Result<FragmentLibrary> {
    let store = open_store(location, s3_endpoint).await?;
    let mut config = LibraryConfig::default();
    config.codec_policy = policy;
    if let Some(size) = fragment_size {
        config.fragment_size = size;
    }
    Ok(FragmentLibrary::new(store, codecs(), config)?
        .with_similarity(haagenti_lsh::cosine_similarity()))
}
