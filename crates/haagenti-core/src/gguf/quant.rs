//! Reference quantizers and dequantizers of ggml's legacy block types (Q8_0, Q4_0, Q4_1,
//! Q5_0, Q5_1: blocks of 32 elements), reproducing gguf-py's `gguf.quants.quantize` and
//! `dequantize` byte for byte, plus the float types (F32, F16, BF16) through
//! [`crate::cast`].
//!
//! Each quantizer follows gguf-py's numpy code operation by operation, in f32: the
//! block's scale `d` from its largest magnitude (Q8_0, Q4_0, Q5_0: for Q4_0 and Q5_0 the
//! signed element of largest magnitude, the first if several) or from its maximum and
//! minimum (Q4_1, Q5_1); `id = 1/d`, or 0 when `d` is 0; Q8_0 rounds `x*id` half away
//! from zero (`np_roundf`, ggml's `roundf`), the others truncate `x*id + 8.5` (Q4_0),
//! `x*id + 16.5` (Q5_0) or `(x - min)*id + 0.5` (Q4_1, Q5_1) and clamp. Scales and minima
//! are stored as fp16, rounded to nearest even. NaNs propagate through the maxima and
//! minima as numpy's reductions propagate them.
//!
//! Two places where numpy's result depends on the machine are pinned here to what it
//! does on x86-64, so that a quantization is the same function everywhere:
//! * a float converted to an 8-bit integer that is NaN or beyond `i32` (it happens when
//!   `1/d` overflows, for blocks of subnormal magnitude) becomes 0, as `cvttss2si`
//!   gives (`0x8000_0000`, whose low byte is 0); other values are truncated to `i32` and
//!   keep their low byte;
//! * an fp16 NaN scale is numpy's software conversion: the top mantissa bits kept,
//!   signalling NaNs stay signalling (see [`f32_to_f16_numpy`]).

use crate::cast::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::gguf::GgmlType;

/// Elements per block of every legacy type.
pub const QK: usize = 32;

/// The legacy block types this module quantizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[allow(non_camel_case_types)]
pub enum LegacyQuant {
    /// fp16 scale, 32 × i8.
    Q8_0,
    /// fp16 scale, 32 × 4-bit (offset 8).
    Q4_0,
    /// fp16 scale and minimum, 32 × 4-bit.
    Q4_1,
    /// fp16 scale, 32 × 5-bit (offset 16): high bits in a u32, low nibbles.
    Q5_0,
    /// fp16 scale and minimum, 32 × 5-bit: high bits in a u32, low nibbles.
    Q5_1,
}

impl LegacyQuant {
    /// All five, in ggml id order.
    pub const ALL: [LegacyQuant; 5] = [Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q5_1, Self::Q8_0];

    /// The legacy type of a ggml type, if it is one.
    pub fn from_ggml(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q4_1 => Self::Q4_1,
            GgmlType::Q5_0 => Self::Q5_0,
            GgmlType::Q5_1 => Self::Q5_1,
            _ => return None,
        })
    }

    /// The ggml type.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q5_0 => GgmlType::Q5_0,
            Self::Q5_1 => GgmlType::Q5_1,
        }
    }

    /// Bytes per block of 32 elements.
    pub fn block_bytes(self) -> usize {
        self.ggml_type().type_size() as usize
    }

    /// Quantizes one block of 32 values into `out` (`block_bytes()` long).
    pub fn quantize_block(self, block: &[f32; QK], out: &mut [u8]) {
        match self {
            Self::Q8_0 => q8_0_block(block, out),
            Self::Q4_0 => q4_0_block(block, out),
            Self::Q4_1 => q4_1_block(block, out),
            Self::Q5_0 => q5_0_block(block, out),
            Self::Q5_1 => q5_1_block(block, out),
        }
    }

    /// Dequantizes one block (`block_bytes()` long) into 32 values.
    pub fn dequantize_block(self, block: &[u8], out: &mut [f32; QK]) {
        match self {
            Self::Q8_0 => {
                let d = f16_at(block, 0);
                for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                    *o = f32::from(q as i8) * d;
                }
            }
            Self::Q4_0 => {
                let d = f16_at(block, 0);
                for (j, &b) in block[2..18].iter().enumerate() {
                    out[j] = d * f32::from((b & 0x0f) as i8 - 8);
                    out[j + 16] = d * f32::from((b >> 4) as i8 - 8);
                }
            }
            Self::Q4_1 => {
                let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                for (j, &b) in block[4..20].iter().enumerate() {
                    out[j] = d * f32::from(b & 0x0f) + m;
                    out[j + 16] = d * f32::from(b >> 4) + m;
                }
            }
            Self::Q5_0 => {
                let d = f16_at(block, 0);
                let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                for (j, o) in out.iter_mut().enumerate() {
                    let q = five_bits(&block[6..22], qh, j);
                    *o = d * f32::from(q as i8 - 16);
                }
            }
            Self::Q5_1 => {
                let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
                for (j, o) in out.iter_mut().enumerate() {
                    *o = d * f32::from(five_bits(&block[8..24], qh, j)) + m;
                }
            }
        }
    }

    /// Quantizes `values` (a whole number of blocks) to the type's bytes; `None` if the
    /// length is not a multiple of 32.
    pub fn quantize(self, values: &[f32]) -> Option<Vec<u8>> {
        if values.len() % QK != 0 {
            return None;
        }
        let bb = self.block_bytes();
        let mut out = vec![0u8; values.len() / QK * bb];
        for (block, o) in values.chunks_exact(QK).zip(out.chunks_exact_mut(bb)) {
            let block: &[f32; QK] = block.try_into().expect("chunks of QK");
            self.quantize_block(block, o);
        }
        Some(out)
    }

    /// Dequantizes whole blocks; `None` if `bytes` is not a whole number of blocks.
    pub fn dequantize(self, bytes: &[u8]) -> Option<Vec<f32>> {
        let bb = self.block_bytes();
        if bytes.len() % bb != 0 {
            return None;
        }
        let mut out = vec![0f32; bytes.len() / bb * QK];
        for (block, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
            let o: &mut [f32; QK] = o.try_into().expect("chunks of QK");
            self.dequantize_block(block, o);
        }
        Some(out)
    }
}

/// `gguf.quants.quantize(values, ty)` for F32, F16, BF16 and the five legacy types:
/// little-endian bytes. `None` for other types, or values that are not whole blocks.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    match ty {
        GgmlType::F32 => Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        GgmlType::F16 => Some(
            values
                .iter()
                .flat_map(|&v| f32_to_f16_numpy(v).to_le_bytes())
                .collect(),
        ),
        GgmlType::BF16 => Some(
            values
                .iter()
                .flat_map(|&v| f32_to_bf16(v).to_le_bytes())
                .collect(),
        ),
        _ => LegacyQuant::from_ggml(ty)?.quantize(values),
    }
}

/// `gguf.quants.dequantize(bytes, ty)` for the types [`quantize`] handles. `None` for
/// other types, or bytes that are not whole blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    match ty {
        GgmlType::F32 => (bytes.len() % 4 == 0).then(|| {
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }),
        GgmlType::F16 | GgmlType::BF16 => (bytes.len() % 2 == 0).then(|| {
            let widen = if ty == GgmlType::F16 {
                f16_to_f32
            } else {
                bf16_to_f32
            };
            bytes
                .chunks_exact(2)
                .map(|c| widen(u16::from_le_bytes([c[0], c[1]])))
                .collect()
        }),
        _ => LegacyQuant::from_ggml(ty)?.dequantize(bytes),
    }
}

/// numpy's `float32 -> float16` (`npy_floatbits_to_halfbits`): round to nearest even,
/// overflow to infinity ([`f32_to_f16`]); a NaN keeps its sign and the top ten
/// mantissa bits (made non-zero if they are all zero), so a signalling NaN stays one.
pub fn f32_to_f16_numpy(value: f32) -> u16 {
    if !value.is_nan() {
        return f32_to_f16(value);
    }
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let mut h = 0x7c00 + ((bits & 0x7f_ffff) >> 13) as u16;
    if h == 0x7c00 {
        h += 1;
    }
    sign | h
}

/// numpy's cast of a float to `uint8`/`int8` as it happens on x86-64: NaN and values
/// beyond `i32` give 0 (the "integer indefinite" `0x8000_0000`), others the low byte of
/// the value truncated to `i32`.
#[inline]
fn low_byte(x: f32) -> u8 {
    if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        0
    } else {
        x as i32 as u8
    }
}

/// gguf-py's `np_roundf`: round half away from zero, in its operation order.
#[inline]
fn np_roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    np_sign(n) * b
}

#[inline]
fn np_sign(n: f32) -> f32 {
    if n > 0.0 {
        1.0
    } else if n < 0.0 {
        -1.0
    } else if n == 0.0 {
        0.0
    } else {
        n
    }
}

/// `abs(block).max()`, NaN-propagating (the first NaN).
fn max_abs(block: &[f32; QK]) -> f32 {
    let mut m = block[0].abs();
    for &x in block {
        let a = x.abs();
        if a.is_nan() {
            return a;
        }
        if a > m {
            m = a;
        }
    }
    m
}

/// `np.take_along_axis(block, abs(block).argmax())`: the element of largest magnitude,
/// the first of equals; the first NaN if there is one (numpy's argmax stops at NaN).
fn signed_max_abs(block: &[f32; QK]) -> f32 {
    let mut best = 0;
    for (i, &x) in block.iter().enumerate() {
        if x.is_nan() {
            return x;
        }
        if x.abs() > block[best].abs() {
            best = i;
        }
    }
    block[best]
}

/// `(block.max(), block.min())`, NaN-propagating (the first NaN).
fn max_min(block: &[f32; QK]) -> (f32, f32) {
    let (mut max, mut min) = (block[0], block[0]);
    for &x in block {
        if x.is_nan() {
            return (x, x);
        }
        if x > max {
            max = x;
        }
        if x < min {
            min = x;
        }
    }
    (max, min)
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

#[inline]
fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f32_to_f16_numpy(v).to_le_bytes());
}

#[inline]
fn f16_at(block: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[at], block[at + 1]]))
}

/// Element `j` of a 5-bit block: low nibble from `qs` (elements 16.. in the high
/// nibbles), fifth bit from bit `j` of `qh`.
#[inline]
fn five_bits(qs: &[u8], qh: u32, j: usize) -> u8 {
    let low = if j < 16 {
        qs[j] & 0x0f
    } else {
        qs[j - 16] >> 4
    };
    low | (((qh >> j) & 1) as u8) << 4
}

fn q8_0_block(block: &[f32; QK], out: &mut [u8]) {
    let d = max_abs(block) / 127.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    for (o, &x) in out[2..34].iter_mut().zip(block) {
        *o = low_byte(np_roundf(x * id));
    }
}

/// Packs 32 values below 16 (or the low nibbles of values below 32) two per byte:
/// element `j` low, element `j + 16` high.
fn pack_nibbles(q: &[u8; QK], out: &mut [u8]) {
    for j in 0..16 {
        out[j] = (q[j] & 0x0f) | (q[j + 16] << 4);
    }
}

/// Bit `j` of the result is the fifth bit of element `j` (`np.packbits(q >> 4,
/// bitorder="little")`).
fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        if v >> 4 != 0 {
            qh |= 1 << j;
        }
    }
    qh.to_le_bytes()
}

fn q4_0_block(block: &[f32; QK], out: &mut [u8]) {
    let d = signed_max_abs(block) / -8.0;
    let id = inverse(d);
    let q = block.map(|x| low_byte((x * id + 8.5).trunc()).min(15));
    put_f16(out, 0, d);
    pack_nibbles(&q, &mut out[2..18]);
}

fn q4_1_block(block: &[f32; QK], out: &mut [u8]) {
    let (max, min) = max_min(block);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let q = block.map(|x| low_byte(((x - min) * id + 0.5).trunc()).min(15));
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    pack_nibbles(&q, &mut out[4..20]);
}

fn q5_0_block(block: &[f32; QK], out: &mut [u8]) {
    let d = signed_max_abs(block) / -16.0;
    let id = inverse(d);
    let q = block.map(|x| low_byte((x * id + 16.5).trunc()).min(31));
    put_f16(out, 0, d);
    out[2..6].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut out[6..22]);
}

fn q5_1_block(block: &[f32; QK], out: &mut [u8]) {
    let (max, min) = max_min(block);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    let q = block.map(|x| low_byte(((x - min) * id + 0.5).trunc()).min(31));
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    out[4..8].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut out[8..24]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded inputs: N(0, 0.02)-like weights (a sum of uniforms), then blocks with an
    /// outlier, ties, zeros, subnormals and infinities.
    fn golden_input() -> Vec<f32> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut v: Vec<f32> = (0..32 * 64)
            .map(|_| (0..4).map(|_| uniform()).sum::<f32>() * 0.035)
            .collect();
        let mut outlier: Vec<f32> = (0..32).map(|_| uniform() * 0.01).collect();
        outlier[7] = -3.5;
        v.extend(outlier);
        v.extend((0..32).map(|i| i as f32 - 15.5)); // halves
        v.extend([0.0; 32]);
        v.extend((0..32).map(|i| (i as f32 - 16.0) * 1e-40)); // subnormal
        v.extend((0..32).map(|i| if i == 3 { f32::INFINITY } else { i as f32 }));
        v
    }

    #[test]
    fn golden_vectors() {
        // blake3 of each type's output on `golden_input()`, equal to gguf-py 0.19.0's
        // `gguf.quants.quantize` output when pinned (tests/gguf_reference.rs checks the same
        // code against gguf-py on other data): an algorithm change fails here.
        let input = golden_input();
        let golden = [
            (
                GgmlType::Q8_0,
                "5ffe2ae4964db73de46a592a83fe4fa262c7ef45068333392c6143966f59d50a",
            ),
            (
                GgmlType::Q4_0,
                "7a6a8217b5fc5c1e06cff624da841a3c31e72aa6e2bff14ac33059501d426e10",
            ),
            (
                GgmlType::Q4_1,
                "fd44eaf048ef71a2e021373e5fed91cf4cc0985f635a03f38d25a44af457d803",
            ),
            (
                GgmlType::Q5_0,
                "f33106aeaecb8d0e9dee02597e9f59b3ca2cfa2ff011eaa9ee9e6f7dcd0d88fb",
            ),
            (
                GgmlType::Q5_1,
                "eaf96895992100a16c3b4368e84a7e3ce9768574b6252f613e64e8bdb81518cb",
            ),
            (
                GgmlType::F16,
                "564417fb65636494aff8fa8cda5a575db4fcb95ae3318cbe7cea796887dd7cbd",
            ),
            (
                GgmlType::BF16,
                "053bba36a6aec249f605c2402c287484cefaf6937f874707bba4e4dc50aaaba1",
            ),
        ];
        let mut wrong = Vec::new();
        for (ty, hash) in golden {
            let q = quantize(ty, &input).unwrap();
            assert_eq!(q.len() as u64, ty.bytes_for(input.len() as u64).unwrap());
            let got = blake3::hash(&q).to_hex().to_string();
            if got != hash {
                wrong.push(format!("{ty}: {got}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    fn block(f: impl Fn(usize) -> f32) -> [f32; QK] {
        std::array::from_fn(f)
    }

    #[test]
    fn hand_worked_blocks() {
        // Q8_0 with a largest magnitude of 127: d = 1, and halves round away from zero.
        let b = block(|i| match i {
            0 => 127.0,
            1..=4 => [0.5, 1.5, -0.5, -2.5][i - 1],
            _ => 0.0,
        });
        let mut out = [0u8; 34];
        LegacyQuant::Q8_0.quantize_block(&b, &mut out);
        assert_eq!(out[..2], 0x3c00u16.to_le_bytes()); // d = 1.0
        assert_eq!(out[2..7], [127, 1, 2, 0xff, 0xfd]);
        // Q4_0: the signed extremum -8 gives d = 1 (stored as fp16 1.0), q = trunc(x + 8.5).
        let b = block(|i| match i {
            0 => -8.0,
            1 => 0.5,
            2 => 7.5, // 16 clamps to 15
            16 => -0.5,
            _ => 0.0,
        });
        let mut out = [0u8; 18];
        LegacyQuant::Q4_0.quantize_block(&b, &mut out);
        assert_eq!(out[..2], 0x3c00u16.to_le_bytes());
        assert_eq!(out[2..5], [0x80, 0x89, 0x8f]);
        // Zero blocks: d = 0 and id = 0.
        let zero = [0.0; QK];
        let mut q = vec![0u8; 24];
        LegacyQuant::Q4_0.quantize_block(&zero, &mut q[..18]);
        // d = 0 / -8 = -0.0, as numpy computes it.
        assert!(q[..2] == [0x00, 0x80] && q[2..18].iter().all(|&b| b == 0x88));
        LegacyQuant::Q4_1.quantize_block(&zero, &mut q[..20]);
        assert!(q[..20].iter().all(|&b| b == 0));
        LegacyQuant::Q5_0.quantize_block(&zero, &mut q[..22]);
        assert_eq!(q[2..6], [0xff; 4]); // q = 16: the fifth bit of every element
        assert!(q[6..22].iter().all(|&b| b == 0));
        // Q5_1 over 0..31: d = 1, min 0, q = i.
        let b = block(|i| i as f32);
        LegacyQuant::Q5_1.quantize_block(&b, &mut q);
        assert_eq!(q[..4], [0x00, 0x3c, 0x00, 0x00]);
        assert_eq!(q[4..8], 0xffff_0000u32.to_le_bytes());
        assert_eq!(q[8], 0x00);
        assert_eq!(q[23], 0xff);
        let mut back = [0f32; QK];
        LegacyQuant::Q5_1.dequantize_block(&q, &mut back);
        assert_eq!(back, b);
    }

    #[test]
    fn round_trips_stay_within_a_step() {
        let values: Vec<f32> = (0..32 * 40)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        for ty in LegacyQuant::ALL {
            let q = ty.quantize(&values).unwrap();
            assert_eq!(q.len(), values.len() / QK * ty.block_bytes());
            let back = ty.dequantize(&q).unwrap();
            let levels = match ty {
                LegacyQuant::Q8_0 => 254.0,
                LegacyQuant::Q4_0 | LegacyQuant::Q4_1 => 15.0,
                LegacyQuant::Q5_0 | LegacyQuant::Q5_1 => 31.0,
            };
            for (blk, (a, b)) in values.chunks(QK).zip(back.chunks(QK)).enumerate() {
                let (max, min) = max_min(a.try_into().unwrap());
                let step = (max - min).max(2.0 * max.abs().max(min.abs())) / levels;
                for (x, y) in a.iter().zip(b) {
                    // Half a step, except where Q4_0/Q5_0 clamp the extremum's
                    // opposite (8d becomes 7d): one step.
                    assert!(
                        (x - y).abs() <= step * 1.01,
                        "{ty:?} block {blk}: {x} -> {y}"
                    );
                }
            }
        }
        assert!(LegacyQuant::Q8_0.quantize(&values[..31]).is_none());
        assert!(LegacyQuant::Q8_0.dequantize(&[0; 33]).is_none());
        assert!(quantize(GgmlType::Q6_K, &values).is_none());
        assert_eq!(
            dequantize(GgmlType::F32, &quantize(GgmlType::F32, &values).unwrap()).unwrap(),
            values
        );
    }

    #[test]
    fn numpy_fp16_nans_keep_their_payload() {
        assert_eq!(f32_to_f16_numpy(f32::from_bits(0x7f80_0001)), 0x7c01);
        assert_eq!(f32_to_f16_numpy(f32::from_bits(0xffa0_0000)), 0xfd00);
        assert_eq!(f32_to_f16_numpy(f32::NAN), 0x7e00);
        assert_eq!(f32_to_f16_numpy(1.0), 0x3c00);
        assert_eq!(low_byte(f32::INFINITY), 0);
        assert_eq!(low_byte(-3.0), 0xfd);
        assert_eq!(low_byte(300.0), 44);
    }
}
