//! Seeded fragment generators shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use haagenti_testkit::synth::{Rng, bf16_bytes, f16_bytes, f32_bytes, normal_f32};

/// Centred cosine (Pearson correlation) of two value vectors, in f64.
pub fn centred_cosine(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let mb = b.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

/// `base` with every value moved by N(0, (rel * std)^2).
pub fn perturb(base: &[f32], seed: u64, rel: f32, std: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    base.iter()
        .map(|&x| x + rel * std * rng.normal() as f32)
        .collect()
}

/// Symmetric per-tensor int8 quantisation: the i8 bytes and the dequantised values.
pub fn int8(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let max = values.iter().fold(0f32, |m, &x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let q: Vec<i8> = values
        .iter()
        .map(|&x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (
        q.iter().map(|&v| v as u8).collect(),
        q.iter().map(|&v| f32::from(v) * scale).collect(),
    )
}

pub fn bf16_values(values: &[f32]) -> Vec<f32> {
    decode(&bf16_bytes(values), haagenti_core::Dtype::BF16)
}

pub fn f16_values(values: &[f32]) -> Vec<f32> {
    decode(&f16_bytes(values), haagenti_core::Dtype::F16)
}

pub fn decode(bytes: &[u8], dtype: haagenti_core::Dtype) -> Vec<f32> {
    let mut out = Vec::new();
    haagenti_core::cast::decode_values(bytes, dtype, &mut out).unwrap();
    out
}

/// Kinds of unrelated tensors a model holds.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Dense weights, N(0, 0.02).
    Dense,
    /// LayerNorm weights near 1.0.
    Norm,
    /// Rows of 1024 with a few large outlier columns at fixed positions.
    Outliers,
    /// Small biases near 0 with a per-tensor offset.
    Bias,
}

/// A fragment of `n` values of the given kind (f32 values; callers pick the dtype).
pub fn unrelated(kind: Kind, seed: u64, n: usize) -> Vec<f32> {
    match kind {
        Kind::Dense => normal_f32(seed, n, 0.0, 0.02),
        Kind::Norm => normal_f32(seed, n, 1.0, 0.02),
        Kind::Outliers => {
            let mut v = normal_f32(seed, n, 0.0, 0.02);
            for (i, x) in v.iter_mut().enumerate() {
                if matches!(i % 1024, 7 | 100 | 513) {
                    *x *= 10.0;
                }
            }
            v
        }
        Kind::Bias => {
            let offset = (Rng::new(seed ^ 0xb1a5).normal() * 0.01) as f32;
            normal_f32(seed, n, offset, 0.001)
        }
    }
}

pub const KINDS: [Kind; 4] = [Kind::Dense, Kind::Norm, Kind::Outliers, Kind::Bias];

pub fn f32_le(values: &[f32]) -> Vec<u8> {
    f32_bytes(values)
}
