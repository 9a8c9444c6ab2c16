//! haagenti-lsh: locality-sensitive signatures over decoded tensor values
//! ([`CosineSketch`], a SimHash through a count-sketch) and a banded LSH
//! [`SimilarityIndex`] that persists as immutable, checksummed segments;
//! [`cosine_similarity`] is the setup the library uses.
//!
//! Pure computation: this crate never does I/O. A signature only nominates candidates; the
//! library decides what to store by comparing real bytes.
//!
//! With the `experimental` feature, a second scheme over blob bytes (`ByteMinHash`), which
//! ingest does not use yet. Both schemes produce bit signatures in which two unrelated
//! inputs agree on about half of the bits, so one index design (bands of consecutive bits)
//! serves both; only the mapping from Hamming distance to similarity differs
//! ([`cosine_from_hamming`], and `jaccard_from_hamming` for MinHash).

#![warn(missing_docs, unreachable_pub)]

pub mod cosine;
pub mod index;
#[cfg(feature = "experimental")]
pub mod minhash;

pub use cosine::{COSINE_SKETCH_TAG, CosineSketch};
pub use index::{IndexConfig, SEGMENT_MAGIC, SEGMENT_VERSION, SegmentWriter, SimilarityIndex};
#[cfg(feature = "experimental")]
pub use minhash::{BYTE_MINHASH_TAG, ByteMinHash};

/// The similarity setup the library uses by default: [`CosineSketch`] signatures (256
/// bits) in a [`SimilarityIndex`] with 16 bands of 16 bits ([`IndexConfig::cosine`]).
/// The similarity threshold is not part of it: that is the library's option
/// (`haagenti_core::DEFAULT_SIMILARITY_THRESHOLD`, 0.97).
pub fn cosine_similarity() -> haagenti_core::Similarity {
    haagenti_core::Similarity {
        scheme: std::sync::Arc::new(CosineSketch::default()),
        new_index: std::sync::Arc::new(|| {
            // The default configuration is valid by construction (checked by a test).
            match SimilarityIndex::new(IndexConfig::cosine()) {
                Ok(index) => Box::new(index),
                Err(e) => unreachable!("default index config rejected: {e}"),
            }
        }),
    }
}

/// Number of differing bits between two bit vectors (over the shorter one's words).
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// Cosine estimate of a SimHash pair differing in `hamming` of `bits` bits:
/// `cos(pi * hamming / bits)`, in `[-1, 1]` (0 when `bits` is 0).
pub fn cosine_from_hamming(hamming: u32, bits: usize) -> f32 {
    if bits == 0 {
        return 0.0;
    }
    (std::f64::consts::PI * f64::from(hamming) / bits as f64).cos() as f32
}

/// Jaccard estimate of a 1-bit MinHash pair: `1 - 2 * hamming / bits` (unrelated inputs
/// agree on half the bits by chance; the estimate can dip below 0 for them). Experimental,
/// like `ByteMinHash`.
#[cfg(feature = "experimental")]
pub fn jaccard_from_hamming(hamming: u32, bits: usize) -> f32 {
    if bits == 0 {
        return 0.0;
    }
    (1.0 - 2.0 * f64::from(hamming) / bits as f64) as f32
}

/// The splitmix64 finaliser: a fixed bijective mix used to derive every pseudo-random
/// constant of the schemes from a seed (stable forever: the scheme tags depend on it).
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
