//! The library side of similarity: the in-memory [`CandidateIndex`], its segments under
//! `index/`, and the storage decisions of ingest for fragments that are not exact
//! duplicates (lossy substitute, cast reference, delta, or standalone).
//!
//! The index is advisory: it only nominates candidates, every decision is taken on the
//! real bytes, and a missing, stale or damaged segment costs savings, never data. That is
//! why a segment that fails to load is skipped with a warning instead of failing the
//! operation, and why it can always be rebuilt from the fragments
//! ([`FragmentLibrary::rebuild_index`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use super::locks::LockKind;
use super::objects::{Stored, Via, delta_object, standalone_object};
use super::{FragmentLibrary, join_error};
use crate::codec::{CodecRegistry, EncodeHint};
use crate::error::{FragmentError, Result};
use crate::signature::{CandidateIndex, EntryMeta, Signature, Similarity};
use crate::store::{FRAGMENTS_PREFIX, INDEX_PREFIX, ObjectKey};
use crate::types::{
    CodecPolicy, Dtype, Encoding, FragmentId, SimilarityMatch, SimilarityThreshold,
};
use crate::{buffers, cast};

/// A delta is kept only when it is at most this fraction of the standalone encoding.
pub(crate) const DELTA_MAX_FRACTION: f64 = 0.9;

/// Index segments an ingest lets accumulate before it merges them into one. Every command
/// that uses the index reads every segment, one request each (on S3, one round trip
/// each), and each ingest adds one; `gc` merges them too, but need not ever run.
pub(crate) const MERGE_SEGMENTS_AT: usize = 32;

/// Index segments read at once when loading the index.
const SEGMENT_READS_IN_FLIGHT: usize = 4;

/// The index of one library, shared by its clones.
pub(super) struct SimilarityState {
    pub(super) similarity: Similarity,
    index: Mutex<Box<dyn CandidateIndex>>,
    /// Segment keys already read.
    loaded: tokio::sync::Mutex<LoadedSegments>,
}

/// The segments a library has read: merged into its index, or skipped as damaged (kept
/// apart so that merging never deletes one: it keeps its warning until `reindex`).
#[derive(Debug, Default)]
struct LoadedSegments {
    merged: HashSet<ObjectKey>,
    damaged: HashSet<ObjectKey>,
}

impl LoadedSegments {
    fn contains(&self, key: &ObjectKey) -> bool {
        self.merged.contains(key) || self.damaged.contains(key)
    }
}

impl std::fmt::Debug for SimilarityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimilarityState")
            .field("similarity", &self.similarity)
            .finish_non_exhaustive()
    }
}

impl SimilarityState {
    pub(super) fn new(similarity: Similarity) -> Self {
        let index = (similarity.new_index)();
        Self {
            similarity,
            index: Mutex::new(index),
            loaded: tokio::sync::Mutex::default(),
        }
    }

    pub(super) fn index(&self) -> MutexGuard<'_, Box<dyn CandidateIndex>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn prefix(&self) -> String {
        format!("{INDEX_PREFIX}{}/", self.similarity.scheme.tag())
    }
}

/// How ingest stored (or referenced) one fragment that was not already stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Placement {
    /// Written by this ingest in `encoding`, `stored_len` bytes.
    Written { encoding: Encoding, stored_len: u64 },
    /// Another writer created the same object first.
    Raced { depends_on: Option<FragmentId> },
    /// Lossy mode: reference `substitute` instead (its values are within `rel_error`).
    Substituted {
        substitute: FragmentId,
        depends_on: Option<FragmentId>,
        rel_error: f64,
    },
}

impl From<Stored> for Placement {
    fn from(stored: Stored) -> Self {
        match stored {
            Stored::Written {
                encoding,
                stored_len,
            } => Placement::Written {
                encoding,
                stored_len,
            },
            Stored::Raced { depends_on } => Placement::Raced { depends_on },
        }
    }
}

/// What a store decision needs from the ingest options.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    pub threshold: SimilarityThreshold,
    pub candidates: usize,
    pub lossy_max_rel_error: Option<f64>,
}

/// Warnings and counts of index maintenance.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IndexReport {
    /// Segments read (or written, for a rebuild).
    pub segments: u64,
    /// Fragments in the index afterwards.
    pub entries: u64,
    /// Segments removed (merged into a new one).
    pub removed_segments: u64,
    /// Problems that cost savings but not data (a damaged segment, a missing fragment).
    pub warnings: Vec<String>,
}

impl FragmentLibrary {
    /// Turns on similarity: ingest computes a signature of every new fragment, looks for
    /// similar stored fragments and keeps a lossless delta or cast reference when that is
    /// clearly smaller. The index persists under `index/`.
    pub fn with_similarity(self, similarity: Similarity) -> Self {
        let inner = super::Inner {
            store: self.inner.store.clone(),
            codecs: self.inner.codecs.clone(),
            config: self.inner.config.clone(),
            cache: self.inner.cache.clone(),
            similarity: Some(Arc::new(SimilarityState::new(similarity))),
            cpu: self.inner.cpu.clone(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(super) fn similarity_state(&self) -> Option<&Arc<SimilarityState>> {
        self.inner.similarity.as_ref()
    }

    /// Loads index segments written since the last call (by this or another process).
    /// Damaged or vanished segments are skipped and reported as warnings.
    pub async fn refresh_index(&self) -> Result<IndexReport> {
        let mut report = IndexReport::default();
        let Some(state) = self.similarity_state().cloned() else {
            return Ok(report);
        };
        let mut loaded = state.loaded.lock().await;
        // A segment that vanished between listing and reading was merged by another
        // process: one more listing finds the merged segment.
        for _ in 0..2 {
            let mut vanished = false;
            let unseen: Vec<ObjectKey> = self
                .store()
                .list(&state.prefix())
                .await?
                .into_iter()
                .map(|meta| meta.key)
                .filter(|key| !loaded.contains(key))
                .collect();
            // A few reads in flight (each is a round trip on S3), loaded in listing order.
            let mut fetched = futures::stream::iter(unseen.into_iter().map(|key| async move {
                let bytes = self.store().get(&key).await;
                (key, bytes)
            }))
            .buffered(SEGMENT_READS_IN_FLIGHT);
            while let Some((key, bytes)) = fetched.next().await {
                let bytes = match bytes {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => {
                        vanished = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let st = state.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    st.index().load_segment(&bytes).map(|_| ())
                })
                .await
                .map_err(join_error)?;
                match outcome {
                    Ok(()) => {
                        report.segments += 1;
                        loaded.merged.insert(key);
                    }
                    Err(e) => {
                        report.warnings.push(format!(
                            "similarity index segment {key} skipped ({e}); a reindex rebuilds it from the fragments"
                        ));
                        loaded.damaged.insert(key);
                    }
                }
            }
            if !vanished {
                break;
            }
        }
        report.entries = state.index().len() as u64;
        Ok(report)
    }

    /// Writes the index entries of `ids` as one new segment.
    pub(super) async fn write_index_segment(&self, ids: &[FragmentId]) -> Result<()> {
        let Some(state) = self.similarity_state().cloned() else {
            return Ok(());
        };
        if ids.is_empty() {
            return Ok(());
        }
        let bytes = state.index().segment(Some(ids));
        let key = unique_segment_key(&state)?;
        self.store().put(&key, Bytes::from(bytes)).await?;
        state.loaded.lock().await.merged.insert(key);
        Ok(())
    }

    /// Merges the segments this library has loaded into one once there are more than
    /// [`MERGE_SEGMENTS_AT`] of them (damaged ones stay, with their warning). Called by ingest under its lock, so `gc` (which
    /// drops dead entries) cannot run meanwhile. Concurrent ingests only add segments; the
    /// ones this library has not loaded are left alone. A reader that listed a segment
    /// deleted here finds the merged one at its next listing: meanwhile it misses
    /// candidates, never data (the index is advisory).
    pub(super) async fn merge_index_segments(&self) -> Result<u64> {
        let Some(state) = self.similarity_state().cloned() else {
            return Ok(0);
        };
        let mut loaded = state.loaded.lock().await;
        if loaded.merged.len() <= MERGE_SEGMENTS_AT {
            return Ok(0);
        }
        let old: Vec<ObjectKey> = loaded.merged.iter().cloned().collect();
        let bytes = Bytes::from(state.index().segment(None));
        let key = unique_segment_key(&state)?;
        self.store().put(&key, bytes).await?;
        loaded.merged.insert(key);
        let mut merged = 0;
        for key in old {
            self.store().delete(&key).await?;
            loaded.merged.remove(&key);
            merged += 1;
        }
        Ok(merged)
    }

    /// Whether `gc` should rewrite the index: it deleted fragments, or segments piled up.
    pub(super) async fn index_needs_compaction(&self, deleted: u64) -> Result<bool> {
        let Some(state) = self.similarity_state() else {
            return Ok(false);
        };
        let segments = self.store().list(&state.prefix()).await?.len();
        Ok(segments > 1 || (deleted > 0 && segments > 0))
    }

    /// Replaces every segment by one holding only the entries of fragments that still
    /// exist. Called by `gc` (under its lock) after sweeping.
    pub(super) async fn compact_index(&self, live: &HashSet<FragmentId>) -> Result<IndexReport> {
        let Some(state) = self.similarity_state().cloned() else {
            return Ok(IndexReport::default());
        };
        // The in-memory index then holds every segment listed below (gc's lock keeps
        // ingests, and so new segments, out until it is done).
        let mut report = self.refresh_index().await?;
        let old = self.store().list(&state.prefix()).await?;
        let keep: Vec<FragmentId> = live.iter().copied().collect();
        let bytes = Bytes::from(state.index().segment(Some(&keep)));
        let key = unique_segment_key(&state)?;
        self.store().put(&key, bytes.clone()).await?;
        for meta in &old {
            self.store().delete(&meta.key).await?;
            report.removed_segments += 1;
        }
        report.segments = 1;
        report.entries = adopt_segment(&state, key, &bytes).await?;
        Ok(report)
    }

    /// Rebuilds the similarity index from the stored fragments alone (every fragment is
    /// read and decoded), replacing every existing segment. Use it when segments were lost
    /// or damaged, or after changing the signature scheme.
    pub async fn rebuild_index(&self) -> Result<IndexReport> {
        let Some(state) = self.similarity_state().cloned() else {
            return Err(FragmentError::InvalidInput(
                "this library has no similarity index configured".into(),
            ));
        };
        let lock = self.acquire_lock(LockKind::Ingest).await?;
        let result = self.rebuild_index_locked(&state).await;
        lock.release().await;
        result
    }

    async fn rebuild_index_locked(&self, state: &Arc<SimilarityState>) -> Result<IndexReport> {
        let mut report = IndexReport::default();
        let old = self.store().list(&state.prefix()).await?;
        let fragments = self.store().list(FRAGMENTS_PREFIX).await?;
        let fresh = Arc::new(SimilarityState::new(state.similarity.clone()));
        let parallelism = self.config().parallelism;
        let mut results = futures::stream::iter(fragments.into_iter().filter_map(|m| {
            let id = m.key.fragment_id()?;
            let fresh = fresh.clone();
            let not_indexed =
                move |e: FragmentError| format!("fragment {} not indexed: {e}", id.short());
            Some(async move {
                let header = match self.fragment_header(&id).await {
                    Ok(Some(h)) => h,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(not_indexed(e)),
                };
                let data = self
                    .fragment_via(&id, Via::Store)
                    .await
                    .map_err(not_indexed)?;
                let meta = EntryMeta {
                    len: header.decoded_len as u32, // bounded by decode_header
                    dtype: header.dtype,
                    standalone: header.dependency().is_none(),
                };
                tokio::task::spawn_blocking(move || {
                    let Some(sig) = fresh.similarity.scheme.signature(&data, meta.dtype) else {
                        return Ok(());
                    };
                    fresh.index().insert(id, &sig, meta.pack()).map(|_| ())
                })
                .await
                .map_err(join_error)
                .and_then(|r| r)
                .map_err(not_indexed)
            })
        }))
        .buffer_unordered(parallelism);
        while let Some(r) = results.next().await {
            if let Err(warning) = r {
                report.warnings.push(warning);
            }
        }
        drop(results);
        let bytes = Bytes::from(fresh.index().segment(None));
        let key = unique_segment_key(state)?;
        self.store().put(&key, bytes.clone()).await?;
        for meta in &old {
            self.store().delete(&meta.key).await?;
            report.removed_segments += 1;
        }
        report.segments = 1;
        report.entries = adopt_segment(state, key, &bytes).await?;
        Ok(report)
    }

    /// The index entry of a fragment: its signature and how it is stored.
    pub fn index_entry(&self, id: &FragmentId) -> Option<(Signature, EntryMeta)> {
        let state = self.similarity_state()?;
        let (sig, meta) = state.index().entry(id)?;
        Some((sig, EntryMeta::unpack(meta)))
    }

    /// Indexed fragments whose signature is similar to `signature`, best first.
    pub fn find_similar(
        &self,
        signature: &Signature,
        threshold: SimilarityThreshold,
        limit: usize,
    ) -> Result<Vec<SimilarityMatch>> {
        let Some(state) = self.similarity_state() else {
            return Ok(Vec::new());
        };
        state
            .index()
            .find_similar_where(signature, threshold, limit, &mut |_, _| true)
    }

    /// Decides how to keep a fragment that is not stored yet, given its signature, and
    /// does it. Candidates come from the index; every decision is made on real bytes.
    pub(super) async fn place_similar(
        &self,
        id: FragmentId,
        data: Bytes,
        dtype: Option<Dtype>,
        signature: Option<Signature>,
        policy: Policy,
    ) -> Result<Placement> {
        let state = self.similarity_state().cloned();
        let (Some(state), Some(signature), Some(dtype)) = (state, signature, dtype) else {
            return self
                .write_standalone(id, data, dtype)
                .await
                .map(Placement::from);
        };
        let len = data.len() as u32; // fragments are at most 16 MiB
        let mut same = Vec::new();
        let mut casts = Vec::new();
        let mut lossy = Vec::new();
        {
            let k = policy.candidates.max(1);
            // A lossy substitute may lie further away than a delta base: values within
            // relative L2 error E have a cosine of about 1 - E^2/2 or more, so the query
            // reaches down to 1 - E^2 (estimates are noisy); bases still need the threshold.
            let threshold = policy
                .lossy_max_rel_error
                .and_then(|e| SimilarityThreshold::new((1.0 - e * e).max(0.0) as f32).ok())
                .filter(|t| t.get() < policy.threshold.get())
                .unwrap_or(policy.threshold);
            // The filter sees each entry's tag; keep the ones it accepts for below.
            let mut metas = HashMap::new();
            let found = state.index().find_similar_where(
                &signature,
                threshold,
                k * 3,
                &mut |id, meta| {
                    let m = EntryMeta::unpack(meta);
                    let same_shape = m.len == len && m.dtype == Some(dtype);
                    let keep = same_shape || (m.standalone && cast_pair(m, dtype, len));
                    if keep {
                        metas.insert(*id, m);
                    }
                    keep
                },
            )?;
            for m in found {
                let Some(&meta) = metas.get(&m.id) else {
                    continue;
                };
                let base = m.similarity >= policy.threshold.get();
                if meta.dtype == Some(dtype) && meta.len == len {
                    if lossy.len() < k {
                        lossy.push(m.id);
                    }
                    if base && meta.standalone && same.len() < k {
                        same.push(m.id);
                    }
                } else if let (Some(from), true) = (meta.dtype, base && casts.len() < k) {
                    casts.push((m.id, from));
                }
            }
        }

        if let Some(max_error) = policy.lossy_max_rel_error {
            for candidate in lossy {
                let Ok(other) = self.fragment_via(&candidate, Via::Store).await else {
                    continue;
                };
                let (a, b) = (data.clone(), other);
                let error = self
                    .on_cpu(move || relative_l2_error(&a, &b, dtype))
                    .await?;
                if error.is_some_and(|e| e <= max_error) {
                    let depends_on = self
                        .fragment_header(&candidate)
                        .await?
                        .and_then(|h| h.dependency());
                    return Ok(Placement::Substituted {
                        substitute: candidate,
                        depends_on,
                        rel_error: error.unwrap_or(0.0),
                    });
                }
            }
        }

        // Bases: same-dtype standalone fragments, and standalone f32 fragments cast to the
        // new fragment's dtype.
        let mut bases: Vec<(Bytes, BaseKind)> = Vec::new();
        for (source, from) in casts {
            let Some(src) = self.standalone_fragment(&source).await? else {
                continue;
            };
            let new = data.clone();
            let Some((casted, equal)) = self
                .on_cpu(move || {
                    let len = cast::converted_len(src.len(), from, dtype)?;
                    let mut out = buffers::FRAGMENTS.take_filled(len);
                    cast::convert_into(&src, from, dtype, &mut out).then_some(())?;
                    let equal = out == new[..];
                    Some((buffers::FRAGMENTS.into_bytes(out), equal))
                })
                .await?
            else {
                continue;
            };
            if equal {
                let cast = Encoding::Cast {
                    source,
                    from,
                    to: dtype,
                };
                return self
                    .write_cast(id, cast, data.len(), Some(dtype))
                    .await
                    .map(Placement::from);
            }
            bases.push((casted, BaseKind::Cast(source, from)));
        }
        for base in same {
            if let Some(b) = self.standalone_fragment(&base).await? {
                bases.push((b, BaseKind::Same(base)));
            }
        }
        if bases.is_empty() {
            return self
                .write_standalone(id, data, Some(dtype))
                .await
                .map(Placement::from);
        }

        let codecs = self.codecs().clone();
        let policy = self.config().codec_policy;
        let (encoding, object) = self
            .on_cpu(move || best_encoding(&codecs, &data, dtype, policy, &bases))
            .await??;
        self.put_object(id, object, encoding)
            .await
            .map(Placement::from)
    }
}

#[derive(Clone, Copy, Debug)]
enum BaseKind {
    Same(FragmentId),
    /// A standalone fragment of dtype `.1`, converted to the new fragment's dtype.
    Cast(FragmentId, Dtype),
}

/// Whether an indexed fragment `m` is an f32 fragment covering the same elements as a
/// new bf16/f16 fragment of `len` bytes.
///
/// Only narrowing: an f32 fragment stored as a delta against a widened bf16 one would
/// save about half its size, but could then no longer be the standalone source of the
/// payload-free fp16 cast that usually follows (depth 1), which costs more than it saves
/// (measured on the lineage family; see ARCHITECTURE.md).
fn cast_pair(m: EntryMeta, dtype: Dtype, len: u32) -> bool {
    m.dtype == Some(Dtype::F32)
        && matches!(dtype, Dtype::BF16 | Dtype::F16)
        && u64::from(m.len) == u64::from(len) * 2
}

/// Encodes `data` standalone and as an XOR delta against each base; keeps the smallest
/// delta if it is at most [`DELTA_MAX_FRACTION`] of the standalone object.
fn best_encoding(
    codecs: &CodecRegistry,
    data: &[u8],
    dtype: Dtype,
    policy: CodecPolicy,
    bases: &[(Bytes, BaseKind)],
) -> Result<(Encoding, Vec<u8>)> {
    let hint = EncodeHint {
        dtype: Some(dtype),
        policy,
    };
    let standalone = standalone_object(codecs, data, hint)?;
    let encoder = codecs.encoder();
    let mut best: Option<(Encoding, Vec<u8>)> = None;
    let mut xor = vec![0u8; data.len()];
    for (base, kind) in bases {
        if base.len() != data.len() {
            continue;
        }
        for ((x, a), b) in xor.iter_mut().zip(data).zip(base.iter()) {
            *x = a ^ b;
        }
        let encoding = match *kind {
            BaseKind::Same(base) => Encoding::Delta {
                codec: encoder.tag(),
                base,
            },
            BaseKind::Cast(source, from) => Encoding::CastDelta {
                codec: encoder.tag(),
                source,
                from,
                to: dtype,
            },
        };
        let object = delta_object(codecs, &encoding, &xor, hint)?;
        if best.as_ref().is_none_or(|(_, b)| object.len() < b.len()) {
            best = Some((encoding, object));
        }
    }
    Ok(match best {
        Some((encoding, object))
            if object.len() as f64 <= DELTA_MAX_FRACTION * standalone.1.len() as f64 =>
        {
            (encoding, object)
        }
        _ => standalone,
    })
}

/// Relative L2 error `|a - b| / |a|` of two fragments' values; `None` when the lengths
/// differ or a value is not finite. Two all-zero fragments have error 0.
pub(super) fn relative_l2_error(a: &[u8], b: &[u8], dtype: Dtype) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let (mut va, mut vb) = (Vec::new(), Vec::new());
    cast::decode_values(a, dtype, &mut va)?;
    cast::decode_values(b, dtype, &mut vb)?;
    let (mut diff, mut norm) = (0f64, 0f64);
    for (x, y) in va.iter().zip(&vb) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        if !x.is_finite() || !y.is_finite() {
            return None;
        }
        diff += (x - y) * (x - y);
        norm += x * x;
    }
    if diff == 0.0 {
        Some(0.0)
    } else if norm == 0.0 {
        None
    } else {
        Some((diff / norm).sqrt())
    }
}

/// Makes the in-memory index exactly the entries of `bytes`, the one segment now stored
/// under `key` (after a compaction or rebuild replaced every other). Returns its size.
async fn adopt_segment(state: &SimilarityState, key: ObjectKey, bytes: &[u8]) -> Result<u64> {
    let mut loaded = state.loaded.lock().await;
    let mut index = (state.similarity.new_index)();
    index.load_segment(bytes)?;
    let entries = index.len() as u64;
    *state.index() = index;
    *loaded = LoadedSegments::default();
    loaded.merged.insert(key);
    Ok(entries)
}

fn unique_segment_key(state: &SimilarityState) -> Result<ObjectKey> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let salt = FragmentId::of(format!("{nanos}-{}", std::process::id()).as_bytes());
    ObjectKey::new(format!(
        "{}{nanos:020}-{}",
        state.prefix(),
        &salt.to_hex()[..8]
    ))
}
