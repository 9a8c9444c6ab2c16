//! [`ByteMinHash`]: a 1-bit MinHash of blob bytes over anchored shingles.
//!
//! **Experimental** (cargo feature `experimental`, off by default): ingest does not use
//! it yet. Blob fragments (content-defined chunks of non-tensor files) are stored and
//! deduplicated by hash but not indexed for similarity, so nothing in the library
//! computes these signatures; the scheme is here, frozen and tested, for when they are.
//! The benchmark measures it.
//!
//! # Algorithm (scheme tag 2, frozen: changing any step needs a new tag)
//!
//! 1. **Anchored shingles.** Position `q` is an *anchor* when the 8 bytes from `q` (a
//!    little-endian u64 `w`) satisfy `(w * ANCHOR_MUL) >> 59 == 0`, about one position in
//!    32. The blob's set is the 16-byte shingles starting at anchors (see
//!    `for_each_shingle`). Anchors depend on local content only, so an edit or an
//!    insertion changes only the shingles around it, wherever it shifts the rest.
//! 2. **One-permutation MinHash.** Each shingle is hashed once; the top bits pick one of
//!    `bits` buckets and the bucket keeps the smallest remaining hash. Empty buckets
//!    borrow from a bucket chosen by a fixed probe sequence of their own (optimal
//!    densification), so small inputs still fill every bucket consistently.
//! 3. **One bit per bucket** (b-bit MinHash, b = 1): bit `k` is the parity of a mix of the
//!    bucket's minimum. Two blobs with Jaccard similarity `J` over their shingle sets agree
//!    on a bit with probability `(1 + J) / 2`, so `J` is estimated as `1 - 2 * hamming / bits`.
//!
//! Blobs longer than 64 KiB are sketched from their first and last 32 KiB only, which bounds the cost per blob. Blob fragments are content-defined
//! chunks, so their ends are content-defined too and comparable between related chunks;
//! an edit in the middle of a long chunk is invisible to the signature (it then looks
//! identical, and the real bytes decide).
//!
//! Cost: one multiply per scanned byte (independent, so they overlap) and one short hash
//! per anchor, against the original design's 64 BLAKE3 calls per 8 bytes.

use haagenti_core::{Dtype, FragmentError, SchemeTag, Signature, SignatureScheme};

use crate::{hamming, jaccard_from_hamming, splitmix64};

/// Scheme tag of [`ByteMinHash`] signatures (part of the format: it never changes).
pub const BYTE_MINHASH_TAG: SchemeTag = 2;

/// Default signature length in bits (= MinHash buckets).
pub(crate) const DEFAULT_MINHASH_BITS: usize = 256;

/// Largest signature length in bits.
const MAX_MINHASH_BITS: usize = 4096;

/// Blobs shorter than this get no signature (nor do blobs without any anchor).
const MIN_BLOB_LEN: usize = 64;

/// Blobs longer than twice this are sketched from their first and last `SCAN_END` bytes.
const SCAN_END: usize = 32 << 10;

const ANCHOR_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
const SHINGLE_MUL: u64 = 0xff51_afd7_ed55_8ccd;
const EMPTY: u64 = u64::MAX;

/// 1-bit one-permutation MinHash over anchored shingles of blob bytes, estimating the
/// Jaccard similarity of two blobs' shingle sets. See the module documentation for the
/// exact algorithm.
///
/// Experimental: ingest does not index blob chunks yet, so the library never uses it
/// (see the module documentation).
#[derive(Clone, Debug)]
pub struct ByteMinHash {
    bits: usize,
}

impl Default for ByteMinHash {
    fn default() -> Self {
        Self::with_bits_unchecked(DEFAULT_MINHASH_BITS)
    }
}

impl ByteMinHash {
    /// A MinHash producing `bits`-bit signatures: a power of two from 64 to 4096.
    /// [`Default`] gives 256 bits.
    ///
    /// Errors: [`FragmentError::InvalidInput`] for any other length.
    pub fn new(bits: usize) -> Result<Self, FragmentError> {
        if !(64..=MAX_MINHASH_BITS).contains(&bits) || !bits.is_power_of_two() {
            return Err(FragmentError::InvalidInput(format!(
                "byte minhash: {bits} bits is not a power of two in 64..={MAX_MINHASH_BITS}"
            )));
        }
        Ok(Self::with_bits_unchecked(bits))
    }

    fn with_bits_unchecked(bits: usize) -> Self {
        Self { bits }
    }

    /// Signature length in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }
}

impl SignatureScheme for ByteMinHash {
    fn tag(&self) -> SchemeTag {
        BYTE_MINHASH_TAG
    }

    fn name(&self) -> &'static str {
        "byte-minhash"
    }

    /// Works on the bytes whatever `dtype` says; `None` below 64 bytes.
    fn signature(&self, data: &[u8], _dtype: Option<Dtype>) -> Option<Signature> {
        if data.len() < MIN_BLOB_LEN {
            return None;
        }
        let bucket_shift = 64 - self.bits.trailing_zeros();
        let mut mins = vec![EMPTY; self.bits];
        let mut record = |h: u64| {
            // Top bits choose the bucket; the rest (never all ones) compete for the minimum.
            let bucket = (h >> bucket_shift) as usize;
            let value = h & (u64::MAX >> 1);
            if let Some(m) = mins.get_mut(bucket) {
                *m = (*m).min(value);
            }
        };
        match data.len().checked_sub(SCAN_END) {
            Some(tail) if data.len() > 2 * SCAN_END => {
                for_each_shingle(&data[..SCAN_END], &mut record);
                for_each_shingle(&data[tail..], &mut record);
            }
            _ => for_each_shingle(data, &mut record),
        }
        let mut words = vec![0u64; self.bits / 64];
        for k in 0..self.bits {
            let value = densified(&mins, k)?;
            if splitmix64(value ^ k as u64) & 1 == 1 {
                words[k / 64] |= 1 << (k % 64);
            }
        }
        Some(Signature {
            scheme: BYTE_MINHASH_TAG,
            words,
        })
    }

    fn similarity(&self, a: &Signature, b: &Signature) -> f32 {
        if a.scheme != BYTE_MINHASH_TAG || b.scheme != BYTE_MINHASH_TAG {
            return 0.0;
        }
        let len = a.words.len().min(b.words.len());
        if len == 0 {
            return 0.0;
        }
        jaccard_from_hamming(hamming(&a.words[..len], &b.words[..len]), len * 64)
    }
}

/// Calls `f` with the hash of the 16-byte shingle at each anchor of `data`, in order.
///
/// Anchors are tested 8 positions at a time from two word loads, with no dependency
/// between positions (unlike a rolling hash). Positions are tested while a whole block
/// of 8 positions and their shingles fit: the last 17 to 24 bytes start no shingle.
fn for_each_shingle(data: &[u8], mut f: impl FnMut(u64)) {
    let word = |p: usize| -> u64 {
        data.get(p..p + 8)
            .and_then(|c| <[u8; 8]>::try_from(c).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let mut p = 0;
    while p + 24 <= data.len() {
        let (w0, w1) = (word(p), word(p + 8));
        let mut hits = u32::from((w0.wrapping_mul(ANCHOR_MUL) >> 59) == 0);
        for k in 1..8 {
            let window = (w0 >> (8 * k)) | (w1 << (64 - 8 * k));
            hits |= u32::from((window.wrapping_mul(ANCHOR_MUL) >> 59) == 0) << k;
        }
        while hits != 0 {
            let q = p + hits.trailing_zeros() as usize;
            hits &= hits - 1;
            f(splitmix64(word(q).wrapping_mul(SHINGLE_MUL) ^ word(q + 8)));
        }
        p += 8;
    }
}

/// The minimum of bucket `k`, or of the bucket its fixed probe sequence reaches first.
/// `None` only when every bucket is empty (impossible once one piece was recorded).
fn densified(mins: &[u64], k: usize) -> Option<u64> {
    if let Some(&m) = mins.get(k).filter(|m| **m != EMPTY) {
        return Some(m);
    }
    let n = mins.len() as u64;
    let mut state = k as u64;
    // A probe hits a non-empty bucket with probability >= 1/n; after 64*n probes, scan.
    for _ in 0..64 * n {
        state = splitmix64(state ^ 0x5eed);
        if let Some(&m) = mins.get((state % n) as usize).filter(|m| **m != EMPTY) {
            return Some(m);
        }
    }
    mins.iter().copied().find(|m| *m != EMPTY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same rule, one position at a time.
    fn reference(data: &[u8]) -> Vec<u64> {
        let word = |q: usize| u64::from_le_bytes(data[q..q + 8].try_into().unwrap());
        let tested = if data.len() >= 24 {
            (data.len() - 16) / 8 * 8
        } else {
            0
        };
        (0..tested)
            .filter(|&q| word(q).wrapping_mul(ANCHOR_MUL) >> 59 == 0)
            .map(|q| splitmix64(word(q).wrapping_mul(SHINGLE_MUL) ^ word(q + 8)))
            .collect()
    }

    fn shingles(data: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        for_each_shingle(data, |h| out.push(h));
        out
    }

    #[test]
    fn shingles_follow_the_rule_and_survive_shifts() {
        let mut rng = haagenti_testkit::synth::Rng::new(9);
        for len in [0, 23, 24, 64, 100, 1000, 4097, 20_000] {
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            assert_eq!(shingles(&data), reference(&data), "len {len}");
        }
        let mut data = vec![0u8; 50_000];
        rng.fill_bytes(&mut data);
        let mut shifted = vec![1, 2, 3];
        shifted.extend_from_slice(&data);
        let (a, b) = (shingles(&data), shingles(&shifted));
        assert!(a.len() > 1000);
        let shared = a.iter().filter(|h| b.contains(h)).count();
        assert!(shared + 3 >= a.len(), "{shared} of {}", a.len());
    }
}
