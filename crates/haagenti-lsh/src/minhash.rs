//! [`ByteMinHash`]: a 1-bit MinHash of blob bytes over content-defined pieces.
//!
//! # Algorithm (scheme tag 2, frozen: changing any step needs a new tag)
//!
//! 1. **Pieces.** A gear rolling hash (`h = (h << 1) + GEAR[byte]`) cuts the bytes into
//!    content-defined pieces of 16 to 256 bytes (about 48 on average): a cut follows any
//!    byte where bits 27..32 of `h` are zero (they depend on the last 32 bytes only). An
//!    insertion therefore changes only the pieces around it.
//! 2. **One-permutation MinHash.** Each piece is hashed once (64-bit multiply-mix over its
//!    8-byte words); the top bits pick one of `bits` buckets and the bucket keeps the
//!    smallest remaining hash. Empty buckets borrow from a bucket chosen by a fixed probe
//!    sequence of their own (optimal densification), so small inputs still fill every
//!    bucket consistently.
//! 3. **One bit per bucket** (b-bit MinHash, b = 1): bit `k` is the parity of a mix of the
//!    bucket's minimum. Two blobs with Jaccard similarity `J` over their piece sets agree
//!    on a bit with probability `(1 + J) / 2`, so `J` is estimated as `1 - 2 * hamming / bits`.
//!
//! Cost: one table lookup per byte plus one short hash per piece, against the original
//! design's 64 BLAKE3 calls per 8 bytes.

use haagenti_core::{Dtype, FragmentError, SchemeTag, Signature, SignatureScheme};

use crate::{hamming, jaccard_from_hamming, splitmix64};

/// Scheme tag of [`ByteMinHash`] signatures.
pub const BYTE_MINHASH_TAG: SchemeTag = 2;

/// Default signature length in bits (= MinHash buckets).
pub const DEFAULT_MINHASH_BITS: usize = 256;

/// Largest signature length in bits.
pub const MAX_MINHASH_BITS: usize = 4096;

/// Blobs shorter than this get no signature.
pub const MIN_BLOB_LEN: usize = 64;

const MIN_PIECE: usize = 16;
const MAX_PIECE: usize = 256;
const CUT_MASK: u64 = 0x1f << 27;
const GEAR_SEED: u64 = 0x6d69_6e68_6173_6801;
const PIECE_SEED: u64 = 0x6d69_6e68_6173_6802;
const EMPTY: u64 = u64::MAX;

/// 1-bit one-permutation MinHash over content-defined pieces of blob bytes. See the module
/// documentation for the exact algorithm.
#[derive(Clone)]
pub struct ByteMinHash {
    bits: usize,
    gear: Box<[u64; 256]>,
}

impl std::fmt::Debug for ByteMinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteMinHash")
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

impl Default for ByteMinHash {
    fn default() -> Self {
        Self::with_bits_unchecked(DEFAULT_MINHASH_BITS)
    }
}

impl ByteMinHash {
    /// A MinHash producing `bits`-bit signatures: a power of two from 64 to
    /// [`MAX_MINHASH_BITS`].
    pub fn new(bits: usize) -> Result<Self, FragmentError> {
        if !(64..=MAX_MINHASH_BITS).contains(&bits) || !bits.is_power_of_two() {
            return Err(FragmentError::InvalidInput(format!(
                "byte minhash: {bits} bits is not a power of two in 64..={MAX_MINHASH_BITS}"
            )));
        }
        Ok(Self::with_bits_unchecked(bits))
    }

    fn with_bits_unchecked(bits: usize) -> Self {
        let mut gear = Box::new([0u64; 256]);
        for (i, g) in gear.iter_mut().enumerate() {
            *g = splitmix64(GEAR_SEED ^ i as u64);
        }
        Self { bits, gear }
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

    /// Works on the bytes whatever `dtype` says; `None` below [`MIN_BLOB_LEN`] bytes.
    fn signature(&self, data: &[u8], _dtype: Option<Dtype>) -> Option<Signature> {
        if data.len() < MIN_BLOB_LEN {
            return None;
        }
        let bucket_shift = 64 - self.bits.trailing_zeros();
        let mut mins = vec![EMPTY; self.bits];
        let mut record = |piece: &[u8]| {
            let h = piece_hash(piece);
            // Top bits choose the bucket; the rest (never all ones) compete for the minimum.
            let bucket = (h >> bucket_shift) as usize;
            let value = h & (u64::MAX >> 1);
            if let Some(m) = mins.get_mut(bucket) {
                *m = (*m).min(value);
            }
        };
        let mut start = 0;
        let mut h = 0u64;
        for (i, &b) in data.iter().enumerate() {
            h = (h << 1).wrapping_add(self.gear[usize::from(b)]);
            let len = i + 1 - start;
            if (len >= MIN_PIECE && h & CUT_MASK == 0) || len >= MAX_PIECE {
                record(&data[start..=i]);
                start = i + 1;
                h = 0;
            }
        }
        if start < data.len() {
            record(&data[start..]);
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

/// 64-bit hash of a short piece: multiply-mix over little-endian 8-byte words.
fn piece_hash(piece: &[u8]) -> u64 {
    let mut h = PIECE_SEED ^ (piece.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let chunks = piece.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    splitmix64(h)
}
