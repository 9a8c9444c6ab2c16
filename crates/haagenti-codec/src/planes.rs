//! Byte planes: the bytes of fixed-width little-endian elements regrouped by position,
//! so plane `j` holds byte `j` of every element. For floats the last plane carries the
//! sign and the high exponent bits (skewed, compressible), the first ones mantissa bits
//! (close to random).
//!
//! With `rotate`, each element is first rotated left by one bit as a `width`-byte
//! integer. For bf16 and f32, whose exponent has 8 bits, this moves the sign to bit 0 and
//! makes the top plane exactly the exponent: its entropy drops (2.55 instead of 2.68 bits
//! for N(0, 0.02) bf16) while the sign joins the random mantissa plane.

use haagenti_core::Dtype;

/// Elements handled per block: a block (at most 8 × 4096 bytes) stays in L1 while each
/// of its planes is gathered, so the input is read from memory once.
const BLOCK: usize = 4096;

/// How a dtype's elements are split: `(width, rotate)`; width 1 means no split.
pub fn layout_for(dtype: Option<Dtype>) -> (usize, bool) {
    match dtype {
        None => (1, false),
        Some(d) => (d.size(), matches!(d, Dtype::BF16 | Dtype::F32)),
    }
}

/// Writes the planes of the `planes.len() / width` whole elements at the start of
/// `input` into `planes`, plane after plane. `width` must be 1, 2, 4 or 8.
pub fn split(input: &[u8], width: usize, rotate: bool, planes: &mut [u8]) {
    match width {
        2 => split_w::<2>(input, rotate, planes),
        4 => split_w::<4>(input, rotate, planes),
        8 => split_w::<8>(input, rotate, planes),
        _ => planes.copy_from_slice(&input[..planes.len()]),
    }
}

/// Inverse of [`split`]: interleaves `planes` back into `out` (same length).
pub fn merge(planes: &[u8], width: usize, rotate: bool, out: &mut [u8]) {
    match width {
        2 => merge_w::<2>(planes, rotate, out),
        4 => merge_w::<4>(planes, rotate, out),
        8 => merge_w::<8>(planes, rotate, out),
        _ => out.copy_from_slice(planes),
    }
}

fn split_w<const W: usize>(input: &[u8], rotate: bool, planes: &mut [u8]) {
    let n = planes.len() / W;
    let mut rotated = [0u8; BLOCK * 8];
    for (b, block) in input[..n * W].chunks(BLOCK * W).enumerate() {
        let elements = if rotate {
            let tmp = &mut rotated[..block.len()];
            for (t, e) in tmp.chunks_exact_mut(W).zip(block.chunks_exact(W)) {
                for k in 0..W {
                    t[k] = (e[k] << 1) | (e[(k + W - 1) % W] >> 7);
                }
            }
            &*tmp
        } else {
            block
        };
        let base = b * BLOCK;
        for j in 0..W {
            let start = j * n + base;
            let plane = &mut planes[start..start + elements.len() / W];
            for (p, e) in plane.iter_mut().zip(elements.chunks_exact(W)) {
                *p = e[j];
            }
        }
    }
}

fn merge_w<const W: usize>(planes: &[u8], rotate: bool, out: &mut [u8]) {
    let n = planes.len() / W;
    for (b, elements) in out[..n * W].chunks_mut(BLOCK * W).enumerate() {
        let base = b * BLOCK;
        let count = elements.len() / W;
        for j in 0..W {
            let start = j * n + base;
            let plane = &planes[start..start + count];
            for (e, &p) in elements.chunks_exact_mut(W).zip(plane) {
                e[j] = p;
            }
        }
        if rotate {
            for e in elements.chunks_exact_mut(W) {
                let r: [u8; W] = std::array::from_fn(|k| (e[k] >> 1) | (e[(k + 1) % W] << 7));
                e.copy_from_slice(&r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_groups_bytes_by_position_and_merge_inverts() {
        for width in [1usize, 2, 4, 8] {
            for n in [0usize, 1, 5, BLOCK - 1, BLOCK, 2 * BLOCK + 3] {
                let input: Vec<u8> = (0..n * width).map(|i| (i * 31 % 251) as u8).collect();
                let mut planes = vec![0u8; n * width];
                split(&input, width, false, &mut planes);
                for i in 0..n {
                    for j in 0..width {
                        assert_eq!(planes[j * n + i], input[i * width + j]);
                    }
                }
                for rotate in [false, true] {
                    split(&input, width, rotate, &mut planes);
                    let mut back = vec![0u8; n * width];
                    merge(&planes, width, rotate, &mut back);
                    assert_eq!(back, input);
                }
            }
        }
    }

    #[test]
    fn rotation_puts_the_bf16_exponent_in_the_top_plane() {
        // -1.5 in bf16 is 0xBFC0: sign 1, exponent 0x7F, mantissa 0x40.
        let mut planes = [0u8; 2];
        split(&0xBFC0u16.to_le_bytes(), 2, true, &mut planes);
        assert_eq!(planes[1], 0x7F);
        assert_eq!(planes[0], 0x81); // mantissa 0x40 shifted up, sign in bit 0
    }
}
