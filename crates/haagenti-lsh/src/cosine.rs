//! [`CosineSketch`]: a SimHash of a fragment's decoded values, computed through a count-sketch
//! so that it costs one pass at memory speed.
//!
//! # Algorithm (scheme tag 1, frozen: changing any step needs a new tag)
//!
//! Let `x` be the fragment's `n` values (decoded to f32; non-finite values count as 0) and
//! `K = 1024`.
//!
//! 1. **Count-sketch.** Element `i` lies in row `r = i / K` at column `j = i % K`. Each row
//!    has a pseudo-random sign `t_r` and rotation `h_r` (a multiple of 8), both derived
//!    from `r` and a fixed seed, and the element is added to bucket `(j + h_r) mod K` with
//!    sign `t_r`. Buckets depend on element *indices*, never on values, so fragments cut
//!    from the same tensor position (aligned indices) sketch comparably whatever their
//!    dtype. Whole rows are added with contiguous, vectorisable loops; the rotation
//!    spreads a tensor's outlier columns over the buckets. Fragments of more than 64 full
//!    rows are sampled: full row `r` of `R` is used when a fixed hash
//!    of `r` falls below `64 / R`, so the cost per fragment is bounded (about 65536
//!    elements) and fragments of equal length see the same rows. The last, partial row is
//!    always used.
//! 2. **Centring.** The mean `mu` of the values is removed (`sketch - mu * sketch(ones)`,
//!    exact because the sketch is linear), so the estimate is the cosine of the
//!    mean-removed values (the Pearson correlation). Without it every LayerNorm weight
//!    (about 1.0 everywhere) would look like every other one. Fragments whose values are
//!    (nearly) constant, or with fewer than 64 elements, get no signature.
//! 3. **Hyperplanes.** The centred sketch is multiplied by a fixed random ±1 diagonal and
//!    transformed with a fast Walsh-Hadamard transform: each output is a random ±1
//!    projection of the whole fragment, and the outputs are mutually orthogonal. Bit `k`
//!    of the signature is set when output `k` is negative.
//!
//! Two signatures agreeing on a fraction `p` of their bits estimate the cosine as
//! `cos(pi * (1 - p))`. A shorter signature is a prefix of a longer one.

use haagenti_core::cast::decode_values;
use haagenti_core::{Dtype, FragmentError, SchemeTag, Signature, SignatureScheme};

use crate::{cosine_from_hamming, hamming, splitmix64};

/// Scheme tag of [`CosineSketch`] signatures, stored in every signature and index segment
/// (part of the format: it never changes).
pub const COSINE_SKETCH_TAG: SchemeTag = 1;

/// Dimension of the count-sketch (and of the Walsh-Hadamard transform).
const SKETCH_DIM: usize = 1024;

/// Default signature length in bits.
pub(crate) const DEFAULT_COSINE_BITS: usize = 256;

/// Fragments with fewer elements than this get no signature: short vectors have too few
/// dimensions for a cosine to say anything.
const MIN_ELEMENTS: usize = 64;

const ROW_SEED: u64 = 0x6861_6167_656e_7469; // "haagenti"
const DIAG_SEED: u64 = 0x636f_7369_6e65_0001;
const SAMPLE_SEED: u64 = 0x636f_7369_6e65_0002;

/// Fragments with more full rows than this are sampled (see the module docs): the cost
/// per fragment is bounded by about `SAMPLED_ROWS * SKETCH_DIM` = 65536 elements, where
/// the 256-bit SimHash's own noise already dominates the estimate.
const SAMPLED_ROWS: usize = 64;

/// Values whose variance is below this fraction of their squared mean count as constant
/// (well above the rounding noise of f32 accumulation, about 1e-14).
const MIN_RELATIVE_VARIANCE: f64 = 1e-8;

/// SimHash over decoded tensor values, estimating the cosine similarity of the mean-removed
/// values. See the module documentation for the exact algorithm.
#[derive(Clone)]
pub struct CosineSketch {
    bits: usize,
    diag: Box<[f64; SKETCH_DIM]>,
}

impl std::fmt::Debug for CosineSketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosineSketch")
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

impl Default for CosineSketch {
    fn default() -> Self {
        Self::with_bits_unchecked(DEFAULT_COSINE_BITS)
    }
}

impl CosineSketch {
    /// A sketch producing `bits`-bit signatures: a multiple of 64 from 64 to 1024.
    /// [`Default`] gives 256 bits, the length the library uses.
    ///
    /// Errors: [`FragmentError::InvalidInput`] for any other length.
    pub fn new(bits: usize) -> Result<Self, FragmentError> {
        if bits == 0 || bits % 64 != 0 || bits > SKETCH_DIM {
            return Err(FragmentError::InvalidInput(format!(
                "cosine sketch: {bits} bits is not a multiple of 64 in 64..={SKETCH_DIM}"
            )));
        }
        Ok(Self::with_bits_unchecked(bits))
    }

    fn with_bits_unchecked(bits: usize) -> Self {
        let mut diag = Box::new([0f64; SKETCH_DIM]);
        for (j, d) in diag.iter_mut().enumerate() {
            *d = if splitmix64(DIAG_SEED ^ j as u64) & 1 == 0 {
                1.0
            } else {
                -1.0
            };
        }
        Self { bits, diag }
    }

    /// Signature length in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Turns the raw sketch of a fragment into its signature bits.
    fn finish(&self, acc: &Accumulator) -> Option<Signature> {
        if acc.count == 0 {
            return None;
        }
        let n = acc.count as f64;
        let mean = acc.sum / n;
        // Centre: subtract mean * sketch(all ones). Full rows add t_r to every bucket.
        let mut c = [0f64; SKETCH_DIM];
        for (out, &s) in c.iter_mut().zip(acc.sketch.iter()) {
            *out = s - mean * acc.full_row_sign_sum;
        }
        if let Some((len, shift, sign)) = acc.partial_row {
            for j in 0..len {
                c[(j + shift) % SKETCH_DIM] -= mean * sign;
            }
        }
        // The centred sketch's squared norm estimates n * variance: (nearly) constant
        // values leave only rounding noise, and get no signature.
        let norm: f64 = c.iter().map(|v| v * v).sum();
        if !(norm > MIN_RELATIVE_VARIANCE * n * mean * mean && norm.is_finite()) {
            return None;
        }
        for (v, d) in c.iter_mut().zip(self.diag.iter()) {
            *v *= d;
        }
        fwht(&mut c);
        let mut words = vec![0u64; self.bits / 64];
        for (k, v) in c.iter().take(self.bits).enumerate() {
            if *v < 0.0 {
                words[k / 64] |= 1 << (k % 64);
            }
        }
        Some(Signature {
            scheme: COSINE_SKETCH_TAG,
            words,
        })
    }
}

impl SignatureScheme for CosineSketch {
    fn tag(&self) -> SchemeTag {
        COSINE_SKETCH_TAG
    }

    fn name(&self) -> &'static str {
        "cosine-sketch"
    }

    /// `None` for blob bytes (`dtype` `None`), for dtypes without numeric values here
    /// (64-bit integers, fp8), for data that is not a whole number of elements, and for
    /// fragments that are too short or constant.
    fn signature(&self, data: &[u8], dtype: Option<Dtype>) -> Option<Signature> {
        let dtype = dtype?;
        let size = dtype.size();
        if data.len() % size != 0 || data.len() / size < MIN_ELEMENTS {
            return None;
        }
        if !decodable(dtype) {
            return None;
        }
        let acc = sketch_fast(data, dtype).or_else(|| sketch_exact(data, dtype))?;
        self.finish(&acc)
    }

    fn similarity(&self, a: &Signature, b: &Signature) -> f32 {
        if a.scheme != COSINE_SKETCH_TAG || b.scheme != COSINE_SKETCH_TAG {
            return 0.0;
        }
        let len = a.words.len().min(b.words.len());
        if len == 0 {
            return 0.0;
        }
        cosine_from_hamming(hamming(&a.words[..len], &b.words[..len]), len * 64)
    }
}

fn decodable(dtype: Dtype) -> bool {
    !matches!(
        dtype,
        Dtype::I64 | Dtype::U64 | Dtype::F8E4M3 | Dtype::F8E5M2
    )
}

/// The raw count-sketch of a fragment and the moments needed to centre it.
struct Accumulator {
    sketch: [f64; SKETCH_DIM],
    sum: f64,
    count: usize,
    /// Sum of the signs of the full rows (each added its sign to every bucket).
    full_row_sign_sum: f64,
    /// Length, rotation and sign of the last, partial row.
    partial_row: Option<(usize, usize, f64)>,
}

impl Accumulator {
    /// Adds row `row` element by element in f64; non-finite values count as 0.
    fn add_row(&mut self, row: usize, vals: &[f32]) {
        let (sign, shift) = row_params(row);
        let sign = f64::from(sign);
        self.count += vals.len();
        for (j, &v) in vals.iter().enumerate() {
            let v = if v.is_finite() { f64::from(v) } else { 0.0 };
            self.sum += v;
            self.sketch[(j + shift) % SKETCH_DIM] += sign * v;
        }
        if vals.len() == SKETCH_DIM {
            self.full_row_sign_sum += sign;
        } else {
            self.partial_row = Some((vals.len(), shift, sign));
        }
    }
}

/// Whether full row `row` of a fragment with `full_rows` full rows is sketched: all of
/// them up to [`SAMPLED_ROWS`], else each with probability `SAMPLED_ROWS / full_rows`
/// (a fixed hash of the row number decides).
#[inline]
fn row_sampled(row: usize, full_rows: usize) -> bool {
    full_rows <= SAMPLED_ROWS
        || ((u128::from(splitmix64(SAMPLE_SEED ^ row as u64)) * full_rows as u128) >> 64)
            < SAMPLED_ROWS as u128
}

/// Sign and rotation of sketch row `row`. Rotations are multiples of 8 so that they
/// divide evenly between the interleaved element streams of the fast path.
#[inline]
fn row_params(row: usize) -> (f32, usize) {
    let z = splitmix64(ROW_SEED ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let sign = if z & 1 == 0 { 1.0 } else { -1.0 };
    (sign, (((z >> 1) as usize) % (SKETCH_DIM / 8)) * 8)
}

/// The fast path for f32, bf16, f16 and i8. Full rows are read as little-endian u32 words
/// holding `S` elements each (`S = 4 / element size`), one pass per element stream, so
/// every loop is a plain vectorisable zip. Stream `s` of the sketch is kept contiguous
/// (bucket `S*q + s` at `s*K/S + q`) and put back in order at the end; the last, partial
/// row goes through the exact per-element code. Returns `None` for other dtypes and when
/// a non-finite value or an overflow appears, so that [`sketch_exact`] takes over.
fn sketch_fast(data: &[u8], dtype: Dtype) -> Option<Accumulator> {
    match dtype {
        Dtype::F32 => sketch_rows::<1>(data, dtype, |w, _| f32::from_bits(w)),
        Dtype::BF16 => sketch_rows::<2>(data, dtype, |w, s| {
            f32::from_bits(if s == 0 { w << 16 } else { w & 0xffff_0000 })
        }),
        Dtype::F16 => sketch_rows::<2>(data, dtype, |w, s| {
            f16_finite_to_f32(if s == 0 { w & 0xffff } else { w >> 16 })
        }),
        Dtype::I8 => sketch_rows::<4>(data, dtype, |w, s| {
            ((w << (24 - 8 * s)) as i32 >> 24) as f32
        }),
        _ => None,
    }
}

#[inline(always)]
fn sketch_rows<const S: usize>(
    data: &[u8],
    dtype: Dtype,
    element: impl Fn(u32, usize) -> f32,
) -> Option<Accumulator> {
    let m = SKETCH_DIM / S;
    // Rows of sign +1 and -1 go to separate sketches, so each element costs one add:
    // the sketch is `positive - negative`, and the sum of the values (rotations keep
    // sums) is the sum of both.
    let mut positive = [0f32; SKETCH_DIM];
    let mut negative = [0f32; SKETCH_DIM];
    let mut full_row_sign_sum = 0f64;
    let rows = data.chunks_exact(SKETCH_DIM * dtype.size());
    let rest = rows.remainder();
    let full_rows = rows.len();
    let mut count = 0;
    for (row, bytes) in rows.enumerate().filter(|(r, _)| row_sampled(*r, full_rows)) {
        count += SKETCH_DIM;
        let (sign, shift) = row_params(row);
        full_row_sign_sum += f64::from(sign);
        let sketch = if sign > 0.0 {
            &mut positive
        } else {
            &mut negative
        };
        let rot = shift / S;
        let (head, tail) = bytes.split_at((m - rot) * 4);
        let word = |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        for s in 0..S {
            let (low, high) = sketch[s * m..(s + 1) * m].split_at_mut(rot);
            for (d, c) in high.iter_mut().zip(head.chunks_exact(4)) {
                *d += element(word(c), s);
            }
            for (d, c) in low.iter_mut().zip(tail.chunks_exact(4)) {
                *d += element(word(c), s);
            }
        }
    }
    let mut acc = Accumulator {
        sketch: [0f64; SKETCH_DIM],
        sum: 0.0,
        count,
        full_row_sign_sum,
        partial_row: None,
    };
    for s in 0..S {
        for q in 0..m {
            let (p, n) = (positive[s * m + q], negative[s * m + q]);
            acc.sum += f64::from(p) + f64::from(n);
            acc.sketch[S * q + s] = f64::from(p) - f64::from(n);
        }
    }
    if !(acc.sum.is_finite() && acc.sketch.iter().all(|v| v.is_finite())) {
        return None;
    }
    if !rest.is_empty() {
        let mut vals = Vec::with_capacity(SKETCH_DIM);
        decode_values(rest, dtype, &mut vals)?;
        acc.add_row(full_rows, &vals);
    }
    Some(acc)
}

/// The exact path for every decodable dtype, used when the fast path does not apply or
/// meets non-finite values or an overflow: f64 accumulation through [`decode_values`],
/// non-finite values counted as 0.
fn sketch_exact(data: &[u8], dtype: Dtype) -> Option<Accumulator> {
    let mut acc = Accumulator {
        sketch: [0f64; SKETCH_DIM],
        sum: 0.0,
        count: 0,
        full_row_sign_sum: 0.0,
        partial_row: None,
    };
    let mut vals = Vec::with_capacity(SKETCH_DIM);
    let row_bytes = SKETCH_DIM * dtype.size();
    let full_rows = data.len() / row_bytes;
    for (row, bytes) in data
        .chunks(row_bytes)
        .enumerate()
        .filter(|(r, _)| *r == full_rows || row_sampled(*r, full_rows))
    {
        decode_values(bytes, dtype, &mut vals)?;
        acc.add_row(row, &vals);
    }
    Some(acc)
}

/// IEEE half to f32 without branches (vectorisable): exact for finite values, 0 for
/// infinities and NaN (which the exact path also counts as 0).
#[inline]
fn f16_finite_to_f32(h: u32) -> f32 {
    let magnitude = h & 0x7fff;
    // Rebias the exponent by multiplying: exact for normal and subnormal halves.
    let value = f32::from_bits(magnitude << 13) * f32::from_bits((127 + 112) << 23);
    let value = if magnitude >= 0x7c00 { 0.0 } else { value };
    f32::from_bits(value.to_bits() | ((h & 0x8000) << 16))
}

/// In-place, unnormalised fast Walsh-Hadamard transform.
fn fwht(x: &mut [f64; SKETCH_DIM]) {
    let mut h = 1;
    while h < SKETCH_DIM {
        for block in x.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (p, q) = (*u, *v);
                *u = p + q;
                *v = p - q;
            }
        }
        h *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_fast_decoder_matches_core_on_all_finite_values() {
        for bits in 0..=u16::MAX {
            let exact = haagenti_core::cast::f16_to_f32(bits);
            let fast = f16_finite_to_f32(u32::from(bits));
            if exact.is_finite() {
                assert_eq!(fast.to_bits(), exact.to_bits(), "{bits:#06x}");
            } else {
                assert_eq!(fast, 0.0, "{bits:#06x}");
            }
        }
    }

    #[test]
    fn fwht_is_orthogonal() {
        let mut x = [0f64; SKETCH_DIM];
        x[3] = 1.0;
        fwht(&mut x);
        assert!(x.iter().all(|v| v.abs() == 1.0));
        fwht(&mut x);
        assert_eq!(x[3], SKETCH_DIM as f64);
        assert_eq!(x.iter().filter(|v| **v != 0.0).count(), 1);
    }

    #[test]
    fn fast_and_exact_paths_agree() {
        use haagenti_testkit::synth::{bf16_bytes, f16_bytes, f32_bytes, normal_f32};
        let s = CosineSketch::default();
        // Short (all rows), and long (sampled rows), both with a partial last row.
        for n in [3000, 200_003] {
            let values = normal_f32(5, n, 0.1, 0.02);
            let int8: Vec<u8> = values.iter().map(|v| (v * 500.0) as i8 as u8).collect();
            for (bytes, dtype) in [
                (bf16_bytes(&values), Dtype::BF16),
                (f16_bytes(&values), Dtype::F16),
                (f32_bytes(&values), Dtype::F32),
                (int8, Dtype::I8),
            ] {
                let fast = sketch_fast(&bytes, dtype).unwrap();
                let exact = sketch_exact(&bytes, dtype).unwrap();
                assert_eq!(fast.count, exact.count);
                let (a, b) = (s.finish(&fast).unwrap(), s.finish(&exact).unwrap());
                assert!(hamming(&a.words, &b.words) <= 2, "{dtype:?} {n}");
            }
        }
    }

    #[test]
    fn long_fragments_sample_about_64_rows() {
        for rows in [65, 512, 4096, 16384] {
            let used = (0..rows).filter(|&r| row_sampled(r, rows)).count();
            assert!((35..=95).contains(&used), "{rows}: {used}");
        }
        assert!((0..64).all(|r| row_sampled(r, 64)));
    }
}
