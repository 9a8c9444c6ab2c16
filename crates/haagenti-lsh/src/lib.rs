//! haagenti-lsh: signature schemes over decoded tensor values ([`CosineSketch`], a SimHash
//! through a count-sketch) and over blob bytes ([`ByteMinHash`]), and a banded LSH
//! [`SimilarityIndex`] that persists as immutable segments.
//!
//! Pure computation: this crate never does I/O. A signature only nominates candidates; the
//! library decides what to store by comparing real bytes.
//!
//! Both schemes produce bit signatures in which two unrelated inputs agree on about half of
//! the bits, so one index design (bands of consecutive bits) serves both; only the mapping
//! from Hamming distance to similarity differs ([`cosine_from_hamming`],
//! [`jaccard_from_hamming`]).

pub mod cosine;
pub mod index;
pub mod minhash;

pub use cosine::{COSINE_SKETCH_TAG, CosineSketch, DEFAULT_COSINE_BITS, MIN_ELEMENTS, SKETCH_DIM};
pub use index::{
    DEFAULT_BANDS, DEFAULT_ROWS, IndexConfig, MAX_SEGMENT_BITS, SEGMENT_MAGIC, SEGMENT_VERSION,
    SegmentWriter, SimilarityIndex,
};
pub use minhash::{
    BYTE_MINHASH_TAG, ByteMinHash, DEFAULT_MINHASH_BITS, MAX_MINHASH_BITS, MIN_BLOB_LEN, SCAN_END,
};

/// The similarity setup the library uses by default: [`CosineSketch`] signatures (256
/// bits) in a [`SimilarityIndex`] with 16 bands of 16 bits.
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

/// Number of differing bits between two equally long bit vectors.
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// Cosine estimate of a SimHash pair: `cos(pi * hamming / bits)`.
pub fn cosine_from_hamming(hamming: u32, bits: usize) -> f32 {
    if bits == 0 {
        return 0.0;
    }
    (std::f64::consts::PI * f64::from(hamming) / bits as f64).cos() as f32
}

/// Jaccard estimate of a 1-bit MinHash pair: `1 - 2 * hamming / bits` (unrelated inputs
/// agree on half the bits by chance; the estimate can dip below 0 for them).
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
