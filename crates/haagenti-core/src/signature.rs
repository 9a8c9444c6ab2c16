//! The [`SignatureScheme`] trait: compact sketches whose distance estimates similarity.
//!
//! Signatures only nominate candidates; what is stored is always decided on the real
//! bytes. Implementations are pure computation and never do I/O.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::types::{Dtype, FragmentId, SimilarityMatch, SimilarityThreshold};

/// Stable numeric tag of a signature scheme, persisted with every stored signature.
pub type SchemeTag = u16;

/// A fixed-length bit signature (SimHash-style) or a MinHash vector, as the scheme decides.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature {
    /// Tag of the scheme that computed it; only signatures of one scheme compare.
    pub scheme: SchemeTag,
    /// The signature's bits or hash values, laid out as the scheme decides.
    pub words: Vec<u64>,
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature(scheme {}, {} words)",
            self.scheme,
            self.words.len()
        )
    }
}

/// Maps fragment contents to signatures whose comparison estimates similarity.
pub trait SignatureScheme: Send + Sync + fmt::Debug {
    /// Stable tag persisted with every signature this scheme computes.
    fn tag(&self) -> SchemeTag;

    /// Short human name.
    fn name(&self) -> &'static str;

    /// Signature of a fragment; `dtype` is `None` for blob bytes. Returns `None` when the
    /// scheme does not apply to this data (e.g. too short, or an unsupported dtype).
    fn signature(&self, data: &[u8], dtype: Option<Dtype>) -> Option<Signature>;

    /// Estimated similarity of two signatures of this scheme, in `[-1, 1]`.
    fn similarity(&self, a: &Signature, b: &Signature) -> f32;
}

/// The search structure behind similarity-aware ingest: signatures of stored fragments,
/// queried for the ones similar to a new fragment. `haagenti-lsh`'s `SimilarityIndex` is
/// the implementation; the library only talks to this trait. Pure computation, no I/O:
/// the library persists the index as opaque segments under `index/`.
pub trait CandidateIndex: Send + Sync + fmt::Debug {
    /// Adds a fragment with its caller tag ([`EntryMeta::pack`]); `false` (and no change)
    /// when `id` is already present.
    fn insert(&mut self, id: FragmentId, signature: &Signature, meta: u64) -> Result<bool>;

    /// Removes a fragment; returns whether it was present.
    fn remove(&mut self, id: &FragmentId) -> bool;

    /// The signature and tag stored for `id`.
    fn entry(&self, id: &FragmentId) -> Option<(Signature, u64)>;

    /// Entries whose estimated similarity to `signature` is at least `threshold` and for
    /// which `keep(id, meta)` holds, best first, at most `limit`.
    fn find_similar_where(
        &self,
        signature: &Signature,
        threshold: SimilarityThreshold,
        limit: usize,
        keep: &mut dyn FnMut(&FragmentId, u64) -> bool,
    ) -> Result<Vec<SimilarityMatch>>;

    /// Adds every entry of a serialized segment (validated in full before any change);
    /// returns how many were new.
    fn load_segment(&mut self, bytes: &[u8]) -> Result<usize>;

    /// Serializes the entries of `ids` that are present, or every entry for `None`.
    fn segment(&self, ids: Option<&[FragmentId]>) -> Vec<u8>;

    /// Number of fragments in the index.
    fn len(&self) -> usize;

    /// Whether the index holds no fragment.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is present.
    fn contains(&self, id: &FragmentId) -> bool {
        self.entry(id).is_some()
    }
}

/// Builds an empty [`CandidateIndex`] for a library.
pub type IndexFactory = Arc<dyn Fn() -> Box<dyn CandidateIndex> + Send + Sync>;

/// What the library needs to find similar fragments: a signature scheme and an index of
/// its signatures. Turned on with [`crate::FragmentLibrary::with_similarity`].
#[derive(Clone)]
pub struct Similarity {
    /// Computes the signature of each fragment.
    pub scheme: Arc<dyn SignatureScheme>,
    /// Builds the empty index the library loads its segments into.
    pub new_index: IndexFactory,
}

impl fmt::Debug for Similarity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Similarity")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// The tag the library stores with each index entry (see `docs/format.md`): enough to
/// pick delta bases and cast sources without reading any object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// Decoded length in bytes.
    pub len: u32,
    /// Element type of the tensor the fragment was stored for; `None` for blob bytes.
    pub dtype: Option<Dtype>,
    /// Stored standalone, so it may serve as a delta base or cast source (depth 1).
    pub standalone: bool,
}

impl EntryMeta {
    /// Bits 0..32 length, 32..40 dtype tag (0: none), bit 40 standalone.
    pub fn pack(self) -> u64 {
        u64::from(self.len)
            | u64::from(self.dtype.map_or(0, Dtype::tag)) << 32
            | u64::from(self.standalone) << 40
    }

    /// Inverse of [`Self::pack`]; an unknown dtype tag reads as `None`.
    pub fn unpack(meta: u64) -> Self {
        Self {
            len: meta as u32,
            dtype: Dtype::from_tag((meta >> 32) as u8),
            standalone: meta >> 40 & 1 == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_meta_round_trips() {
        for dtype in Dtype::ALL.into_iter().map(Some).chain([None]) {
            for (len, standalone) in [(0, false), (1 << 20, true), (u32::MAX, true)] {
                let m = EntryMeta {
                    len,
                    dtype,
                    standalone,
                };
                assert_eq!(EntryMeta::unpack(m.pack()), m);
            }
        }
    }
}
