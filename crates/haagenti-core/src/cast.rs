//! Bit-exact conversions between f32 and the 16-bit float formats.
//!
//! The narrowing casts are round-to-nearest-even, as PyTorch's `.to(torch.bfloat16)` and
//! `.half()` do, so that a cast release can be recognised (and rebuilt) from its fp32 parent.

use crate::types::Dtype;

/// bf16 bits to f32 (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f32 to bf16 bits, round to nearest even; NaN stays NaN (quiet, sign kept).
#[inline]
pub fn f32_to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    // Both results, then a select: no branch in the loop, so casts of whole fragments
    // vectorise.
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) as u16) | 0x0040;
    if value.is_nan() { quiet_nan } else { rounded }
}

/// IEEE half bits to f32 (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits & 0x8000) << 16;
    let exp = u32::from((bits >> 10) & 0x1f);
    let man = u32::from(bits & 0x3ff);
    let out = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal half: normalise into an f32.
            let shift = m.leading_zeros() - 21; // leading zeros within the 10-bit field, +1
            let m = (m << shift) & 0x3ff;
            let e = 127 - 15 + 1 - shift;
            sign | (e << 23) | (m << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(out)
}

/// f32 to IEEE half bits, round to nearest even; overflow goes to infinity.
#[inline]
pub fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return if man == 0 {
            sign | 0x7c00
        } else {
            sign | 0x7e00 | (man >> 13) as u16
        };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal or zero in half precision.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut out = m >> shift;
        if rest > half || (rest == half && out & 1 == 1) {
            out += 1;
        }
        return sign | out as u16;
    }
    let mut out = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && out & 1 == 1) {
        out += 1; // may carry into the exponent, up to infinity: correct rounding
    }
    sign | out as u16
}

/// Decodes little-endian elements of `dtype` to f32 values. Returns `None` for dtypes
/// without a numeric meaning here (bool, 64-bit integers, f64 and fp8 are decoded too,
/// approximately for the wide ones: signatures only need direction).
pub fn decode_values(bytes: &[u8], dtype: Dtype, out: &mut Vec<f32>) -> Option<()> {
    let n = bytes.len() / dtype.size();
    out.clear();
    out.reserve(n);
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))),
        ),
        Dtype::I8 => out.extend(bytes.iter().map(|&b| f32::from(b as i8))),
        Dtype::U8 | Dtype::Bool => out.extend(bytes.iter().map(|&b| f32::from(b))),
        Dtype::I16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]]))),
        ),
        Dtype::U16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f32::from(u16::from_le_bytes([c[0], c[1]]))),
        ),
        Dtype::I32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
        ),
        Dtype::U32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
        ),
        Dtype::F64 => out.extend(bytes.chunks_exact(8).map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            f64::from_le_bytes(a) as f32
        })),
        Dtype::I64 | Dtype::U64 | Dtype::F8E4M3 | Dtype::F8E5M2 => return None,
    }
    Some(())
}

/// Casts little-endian f32 bytes to bf16 or f16 bytes (round to nearest even).
/// Returns `None` if `to` is not a 16-bit float or `src` is not whole f32 elements.
pub fn cast_f32_bytes(src: &[u8], to: Dtype) -> Option<Vec<u8>> {
    if src.len() % 4 != 0 {
        return None;
    }
    match to {
        Dtype::BF16 => Some(map_elements::<4, 2>(src, |c| {
            f32_to_bf16(f32::from_le_bytes(c)).to_le_bytes()
        })),
        Dtype::F16 => Some(map_elements::<4, 2>(src, |c| {
            f32_to_f16(f32::from_le_bytes(c)).to_le_bytes()
        })),
        _ => None,
    }
}

/// Maps every `N`-byte element of `src` to an `M`-byte one. Generic over the mapping, so
/// the loop inlines it (a function pointer here cost a call per element); the output is
/// written in place rather than pushed.
fn map_elements<const N: usize, const M: usize>(
    src: &[u8],
    f: impl Fn([u8; N]) -> [u8; M],
) -> Vec<u8> {
    let mut out = vec![0u8; src.len() / N * M];
    map_elements_into(src, &mut out, f);
    out
}

/// [`map_elements`] over `out`, which holds `src.len() / N * M` bytes.
fn map_elements_into<const N: usize, const M: usize>(
    src: &[u8],
    out: &mut [u8],
    f: impl Fn([u8; N]) -> [u8; M],
) {
    for (o, c) in out.chunks_exact_mut(M).zip(src.chunks_exact(N)) {
        let mut element = [0u8; N];
        element.copy_from_slice(c);
        o.copy_from_slice(&f(element));
    }
}

/// Converts whole elements between f32 and bf16/f16: narrowing rounds to nearest even
/// ([`cast_f32_bytes`]), widening is exact. `None` for any other pair or ragged input.
/// Deterministic bit for bit (NaN payloads included), so it can rebuild stored bases.
pub fn convert(src: &[u8], from: Dtype, to: Dtype) -> Option<Vec<u8>> {
    let mut out = vec![0u8; converted_len(src.len(), from, to)?];
    convert_into(src, from, to, &mut out).then_some(out)
}

/// The length of `src_len` bytes of `from` converted to `to` by [`convert_into`]; `None`
/// for a pair it does not convert or ragged input.
pub fn converted_len(src_len: usize, from: Dtype, to: Dtype) -> Option<usize> {
    match (from, to) {
        (Dtype::F32, Dtype::BF16 | Dtype::F16) if src_len % 4 == 0 => Some(src_len / 2),
        (Dtype::BF16 | Dtype::F16, Dtype::F32) if src_len % 2 == 0 => Some(src_len * 2),
        _ => None,
    }
}

/// [`convert`] into `out`, overwriting every byte of it (its prior contents never
/// matter): false, leaving `out` unspecified, when [`convert`] would give `None` or a
/// result of another length than `out`'s.
pub fn convert_into(src: &[u8], from: Dtype, to: Dtype, out: &mut [u8]) -> bool {
    if converted_len(src.len(), from, to) != Some(out.len()) {
        return false;
    }
    match (from, to) {
        (Dtype::F32, Dtype::BF16) => map_elements_into::<4, 2>(src, out, |c| {
            f32_to_bf16(f32::from_le_bytes(c)).to_le_bytes()
        }),
        (Dtype::F32, _) => map_elements_into::<4, 2>(src, out, |c| {
            f32_to_f16(f32::from_le_bytes(c)).to_le_bytes()
        }),
        (Dtype::BF16, _) => map_elements_into::<2, 4>(src, out, |c| {
            bf16_to_f32(u16::from_le_bytes(c)).to_le_bytes()
        }),
        _ => map_elements_into::<2, 4>(src, out, |c| {
            f16_to_f32(u16::from_le_bytes(c)).to_le_bytes()
        }),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convert_into_agrees_with_convert() {
        let values = [
            0.0f32,
            -1.5,
            1.234_567,
            1e-8,
            65504.0,
            f32::INFINITY,
            f32::NAN,
        ];
        let f32s: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (src, from, to) in [
            (&f32s[..], Dtype::F32, Dtype::BF16),
            (&f32s[..], Dtype::F32, Dtype::F16),
            (&f32s[..14], Dtype::BF16, Dtype::F32),
            (&f32s[..14], Dtype::F16, Dtype::F32),
        ] {
            let want = convert(src, from, to).unwrap();
            let mut out = vec![0xA5; want.len()];
            assert!(convert_into(src, from, to, &mut out));
            assert_eq!(out, want);
            assert!(!convert_into(src, from, to, &mut vec![0; want.len() + 1]));
        }
        assert!(!convert_into(&f32s, Dtype::F32, Dtype::F32, &mut [0; 28]));
        assert!(!convert_into(
            &f32s[..3],
            Dtype::BF16,
            Dtype::F32,
            &mut [0; 4]
        ));
    }

    #[test]
    fn convert_narrows_and_widens() {
        let values = [0.0f32, -1.5, 1.234_567, 1e-8, 65504.0, f32::INFINITY];
        let f32s: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for dt in [Dtype::BF16, Dtype::F16] {
            let narrow = convert(&f32s, Dtype::F32, dt).unwrap();
            assert_eq!(narrow, cast_f32_bytes(&f32s, dt).unwrap());
            // Widening is exact: narrowing the widened values gives them back.
            let wide = convert(&narrow, dt, Dtype::F32).unwrap();
            assert_eq!(wide.len(), f32s.len());
            assert_eq!(convert(&wide, Dtype::F32, dt).unwrap(), narrow);
        }
        assert!(convert(&f32s, Dtype::F32, Dtype::F32).is_none());
        assert!(convert(&f32s, Dtype::BF16, Dtype::F16).is_none());
        assert!(convert(&f32s[..3], Dtype::BF16, Dtype::F32).is_none());
    }

    #[test]
    fn bf16_round_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // Exactly halfway between 0x3f80 and 0x3f81: ties to even (0x3f80).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
    }

    #[test]
    fn whole_buffer_casts_match_the_element_definitions() {
        // Every 65537th f32 bit pattern (all classes: zeros, subnormals, normals,
        // infinities, NaNs with payloads, both signs) plus the rounding ties and their
        // neighbours at both parities, through the buffer functions, against the element
        // functions and a branchy bf16 reference.
        let bf16_reference = |bits: u32| -> u16 {
            if f32::from_bits(bits).is_nan() {
                ((bits >> 16) as u16) | 0x0040
            } else {
                (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16
            }
        };
        let ties = [0x0000, 0x0001, 0x3f80, 0x3f81, 0x7f7f, 0x8001, 0xff7f].into_iter();
        let ties =
            ties.flat_map(|hi: u32| [0x7fff, 0x8000, 0x8001, 0xffff].map(|lo| hi << 16 | lo));
        let patterns: Vec<u32> = (0..=u32::MAX).step_by(65_537).chain(ties).collect();
        let src: Vec<u8> = patterns.iter().flat_map(|b| b.to_le_bytes()).collect();
        let bf16 = cast_f32_bytes(&src, Dtype::BF16).unwrap();
        let f16 = cast_f32_bytes(&src, Dtype::F16).unwrap();
        assert_eq!(bf16.len(), patterns.len() * 2);
        for (i, &bits) in patterns.iter().enumerate() {
            let at = |b: &[u8]| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
            assert_eq!(at(&bf16), bf16_reference(bits), "{bits:#010x}");
            assert_eq!(at(&f16), f32_to_f16(f32::from_bits(bits)), "{bits:#010x}");
        }
        // Widening: every 16-bit pattern, bit for bit (NaN payloads included).
        let halves: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        for (dt, widen) in [
            (Dtype::BF16, bf16_to_f32 as fn(u16) -> f32),
            (Dtype::F16, f16_to_f32),
        ] {
            let wide = convert(&halves, dt, Dtype::F32).unwrap();
            for (bits, w) in (0..=u16::MAX).zip(wide.chunks_exact(4)) {
                let got = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                assert_eq!(got, widen(bits).to_bits(), "{dt:?} {bits:#06x}");
            }
        }
    }

    #[test]
    fn f16_exhaustive_round_trip() {
        // Every half value converts to f32 and back to itself (NaNs stay NaN).
        for bits in 0..=u16::MAX {
            let f = f16_to_f32(bits);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan());
            } else {
                assert_eq!(f32_to_f16(f), bits, "{bits:#06x} -> {f}");
            }
        }
    }

    #[test]
    fn f16_rounding_cases() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds up to infinity
        assert_eq!(f32_to_f16(1e-8), 0x0000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        // 1 + 2^-11 is halfway between 1.0 and the next half: ties to even (1.0).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        // Smallest subnormal and halfway below it.
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000);
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-24)), 0x0002);
    }

    #[test]
    fn f16_matches_wide_reference_on_samples() {
        // Compare against rounding done in f64 arithmetic on a sweep of f32 values.
        let mut x = 0x3300_0000u32;
        while x < 0x4780_0000 {
            let f = f32::from_bits(x);
            let h = f32_to_f16(f);
            let lo = f64::from(f16_to_f32(h));
            if lo.is_infinite() {
                assert!(f >= 65520.0, "{f} overflowed");
                x += 0x1234;
                continue;
            }
            // The chosen half is at least as close as its neighbours.
            for n in [h.wrapping_sub(1), h.wrapping_add(1)] {
                let v = f64::from(f16_to_f32(n));
                if v.is_finite() {
                    assert!((lo - f64::from(f)).abs() <= (v - f64::from(f)).abs(), "{f}");
                }
            }
            x += 0x1234;
        }
    }
}
