//! [`FragmentLibrary`]: the engine, written against the [`FragmentStore`] and [`Codec`]
//! traits only.
//!
//! [`Codec`]: crate::Codec

mod cache;
mod compare;
mod export;
mod ingest;
mod maintenance;
mod model;
mod similarity;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use cache::MetricsSnapshot;
pub use compare::{
    ByteCount, LossyModel, ModelComparison, ModelSavings, Relation, SIMILAR_FRAGMENT_THRESHOLD,
    SimilarTensors, StoredCount, TensorMatch, TensorSimilarity,
};
pub use export::{ExportReport, VerifyReport};
pub use ingest::{IngestOptions, IngestReport, Progress};
pub use maintenance::{GcOptions, GcReport};
pub use model::{ModelHandle, Tensor, TensorInfo};
pub use similarity::{DELTA_MAX_FRACTION, IndexReport, MERGE_SEGMENTS_AT};

use crate::cast;
use crate::codec::{CodecRegistry, EncodeHint, RAW_CODEC_TAG};
use crate::error::{FragmentError, Result};
use crate::manifest::ModelManifest;
use crate::object::{self, ObjectHeader};
use crate::store::{FragmentStore, MANIFESTS_PREFIX, ObjectKey};
use crate::types::{
    Dtype, Encoding, FragmentId, FragmentMetadata, LibraryConfig, validate_model_name,
};

/// A library of models stored as content-addressed fragments in one store.
///
/// Cheap to clone: clones share the store, codecs and fragment cache.
#[derive(Clone, Debug)]
pub struct FragmentLibrary {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn FragmentStore>,
    codecs: CodecRegistry,
    config: LibraryConfig,
    cache: Arc<cache::FragmentCache>,
    similarity: Option<Arc<similarity::SimilarityState>>,
}

/// What [`FragmentLibrary::put_fragment`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutFragment {
    pub id: FragmentId,
    /// False when an object with this id was already stored.
    pub created: bool,
    /// Size of the stored object (0 when it already existed and was not written).
    pub stored_len: u64,
    /// The fragment the stored object depends on (delta base or cast source).
    pub depends_on: Option<FragmentId>,
}

impl FragmentLibrary {
    /// A library over `store` that reads every codec in `codecs` and writes with its encoder.
    pub fn new(
        store: Arc<dyn FragmentStore>,
        codecs: CodecRegistry,
        config: LibraryConfig,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                codecs,
                config,
                cache: Arc::new(cache::FragmentCache::new(0)),
                similarity: None,
            }),
        })
    }

    pub fn store(&self) -> &Arc<dyn FragmentStore> {
        &self.inner.store
    }

    pub fn codecs(&self) -> &CodecRegistry {
        &self.inner.codecs
    }

    pub fn config(&self) -> &LibraryConfig {
        &self.inner.config
    }

    /// Stores `data` as a standalone fragment unless an object with its id exists.
    pub async fn put_fragment(&self, data: Bytes, dtype: Option<Dtype>) -> Result<PutFragment> {
        let id = hash_blocking(data.clone()).await?;
        self.put_hashed(id, data, dtype).await
    }

    /// [`Self::put_fragment`] for bytes whose id the caller has just computed.
    async fn put_hashed(
        &self,
        id: FragmentId,
        data: Bytes,
        dtype: Option<Dtype>,
    ) -> Result<PutFragment> {
        if let Some(header) = self.fragment_header(&id).await? {
            return Ok(PutFragment {
                id,
                created: false,
                stored_len: 0,
                depends_on: header.dependency(),
            });
        }
        self.store_new(id, data, dtype).await
    }

    /// Encodes and writes a fragment known to be absent (or racing another writer).
    async fn store_new(
        &self,
        id: FragmentId,
        data: Bytes,
        dtype: Option<Dtype>,
    ) -> Result<PutFragment> {
        Ok(match self.write_standalone(id, data, dtype).await? {
            similarity::Placement::Written { stored_len, .. } => PutFragment {
                id,
                created: true,
                stored_len,
                depends_on: None,
            },
            similarity::Placement::Raced { depends_on }
            | similarity::Placement::Substituted { depends_on, .. } => PutFragment {
                id,
                created: false,
                stored_len: 0,
                depends_on,
            },
        })
    }

    /// Reads only the header of a stored fragment; `None` if it is not stored.
    pub async fn fragment_header(&self, id: &FragmentId) -> Result<Option<ObjectHeader>> {
        let key = ObjectKey::fragment(id);
        match self
            .inner
            .store
            .get_range(&key, 0..object::MAX_HEADER_LEN as u64)
            .await
        {
            Ok(bytes) => object::read_header(&bytes, key.as_str()).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How a fragment is stored (`None` if it is not): its header plus the object size.
    pub async fn fragment_info(&self, id: &FragmentId) -> Result<Option<FragmentMetadata>> {
        let Some(header) = self.fragment_header(id).await? else {
            return Ok(None);
        };
        let stored_len = self
            .inner
            .store
            .head(&ObjectKey::fragment(id))
            .await?
            .map_or(0, |m| m.size);
        Ok(Some(FragmentMetadata {
            id: *id,
            len: header.decoded_len,
            stored_len,
            encoding: header.encoding,
            dtype: header.dtype,
        }))
    }

    /// Fetches, decodes and verifies a fragment (at most two reads: deltas have depth 1),
    /// through the library's fragment cache (off unless
    /// [`with_cache_bytes`](Self::with_cache_bytes) turned it on).
    pub async fn get_fragment(&self, id: &FragmentId) -> Result<Bytes> {
        self.cached_fragment(id).await
    }

    /// Names of all models, sorted.
    pub async fn models(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .manifest_keys()
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.dedup();
        Ok(names)
    }

    /// The current manifest of `name`.
    pub async fn manifest(&self, name: &str) -> Result<ModelManifest> {
        validate_model_name(name)?;
        let key = self
            .manifest_generations(name)
            .await?
            .pop()
            .ok_or_else(|| FragmentError::ModelNotFound(name.to_string()))?;
        let bytes = self.inner.store.get(&key).await?;
        let manifest = ModelManifest::decode(&bytes, key.as_str())?;
        if manifest.name != name {
            return Err(FragmentError::corrupt(
                key.as_str(),
                format!("names model {:?}", manifest.name),
            ));
        }
        Ok(manifest)
    }

    /// Every manifest key as (model name, key), sorted by name then generation.
    async fn manifest_keys(&self) -> Result<Vec<(String, ObjectKey)>> {
        let mut out: Vec<(String, ObjectKey)> = self
            .inner
            .store
            .list(MANIFESTS_PREFIX)
            .await?
            .into_iter()
            .filter_map(|m| {
                let rest = m.key.as_str().strip_prefix(MANIFESTS_PREFIX)?;
                let (name, generation) = rest.split_once('/')?;
                (generation.len() == 20 && generation.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| (name.to_string(), m.key.clone()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Manifest keys of one model, oldest first.
    async fn manifest_generations(&self, name: &str) -> Result<Vec<ObjectKey>> {
        let prefix = format!("{MANIFESTS_PREFIX}{name}/");
        let mut keys: Vec<ObjectKey> = self
            .inner
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .map(|m| m.key)
            .filter(|k| k.as_str().len() == prefix.len() + 20)
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Writes `manifest` as a new generation. Generations are named by time so the newest
    /// sorts last; objects stay create-only.
    async fn put_manifest(&self, manifest: &ModelManifest) -> Result<ObjectKey> {
        manifest.validate()?;
        let bytes = manifest.encode()?;
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let key = ObjectKey::new(format!("{MANIFESTS_PREFIX}{}/{nanos:020}", manifest.name))?;
            if self
                .inner
                .store
                .put(&key, Bytes::from(bytes.clone()))
                .await?
                == crate::store::PutOutcome::Created
            {
                return Ok(key);
            }
        }
    }
}

/// Encodes `data` with the registry's encoder, falling back to raw when that is no smaller.
pub(crate) fn encode_standalone(
    codecs: &CodecRegistry,
    data: &[u8],
    hint: EncodeHint,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(object::MAX_HEADER_LEN + data.len() / 2);
    let encoder = codecs.encoder();
    let standalone = |codec| Encoding::Standalone { codec };
    if encoder.tag() != RAW_CODEC_TAG && !data.is_empty() {
        object::write_header(
            &mut out,
            &standalone(encoder.tag()),
            data.len() as u64,
            hint.dtype,
        );
        let header_len = out.len();
        encoder.encode(data, hint, &mut out)?;
        if out.len() - header_len < data.len() {
            object::seal(&mut out);
            return Ok(out);
        }
        out.clear();
    }
    object::write_header(
        &mut out,
        &standalone(RAW_CODEC_TAG),
        data.len() as u64,
        hint.dtype,
    );
    out.extend_from_slice(data);
    object::seal(&mut out);
    Ok(out)
}

/// Decodes an object whose header is parsed, given its dependency's decoded bytes, and
/// checks the result against `id`.
fn decode_verified(
    codecs: &CodecRegistry,
    id: &FragmentId,
    raw: &[u8],
    header: &ObjectHeader,
    dependency: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let key = || ObjectKey::fragment(id).to_string();
    object::verify_checksum(raw, &key())?;
    let payload = &raw[header.header_len..];
    let len = header.decoded_len as usize; // bounded by read_header
    let codec = |tag: u16| {
        codecs
            .get(tag)
            .cloned()
            .ok_or_else(|| FragmentError::UnknownTag {
                key: key(),
                what: "codec",
                tag: u32::from(tag),
            })
    };
    let with_key = |e: FragmentError| FragmentError::corrupt(key(), e.to_string());
    let cast_of = |source: &[u8], from: Dtype, to: Dtype| {
        cast::convert(source, from, to)
            .filter(|v| v.len() == len)
            .ok_or_else(|| {
                FragmentError::corrupt(key(), format!("cannot rebuild a {to} cast of its source"))
            })
    };
    let data = match (header.encoding, dependency) {
        (Encoding::Standalone { codec: tag }, None) => {
            codec(tag)?.decode_to_vec(payload, len).map_err(with_key)?
        }
        (Encoding::Delta { codec: tag, .. }, Some(base)) => xor_into(
            codec(tag)?.decode_to_vec(payload, len).map_err(with_key)?,
            base,
        )
        .ok_or_else(|| FragmentError::corrupt(key(), "delta and base lengths differ"))?,
        (Encoding::Cast { from, to, .. }, Some(source)) => cast_of(source, from, to)?,
        (
            Encoding::CastDelta {
                codec: tag,
                from,
                to,
                ..
            },
            Some(source),
        ) => {
            let base = cast_of(source, from, to)?;
            xor_into(
                codec(tag)?.decode_to_vec(payload, len).map_err(with_key)?,
                &base,
            )
            .ok_or_else(|| FragmentError::corrupt(key(), "delta and base lengths differ"))?
        }
        _ => {
            return Err(FragmentError::corrupt(
                key(),
                "encoding and dependency disagree",
            ));
        }
    };
    let actual = FragmentId::of(&data);
    if actual != *id {
        return Err(FragmentError::HashMismatch { id: *id, actual });
    }
    Ok(data)
}

/// `xor ^= base` element-wise; `None` when the lengths differ.
fn xor_into(mut xor: Vec<u8>, base: &[u8]) -> Option<Vec<u8>> {
    if xor.len() != base.len() {
        return None;
    }
    xor.iter_mut().zip(base).for_each(|(x, b)| *x ^= b);
    Some(xor)
}

async fn hash_blocking(data: Bytes) -> Result<FragmentId> {
    tokio::task::spawn_blocking(move || FragmentId::of(&data))
        .await
        .map_err(join_error)
}

fn join_error(e: tokio::task::JoinError) -> FragmentError {
    FragmentError::task_failed("worker", e)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
