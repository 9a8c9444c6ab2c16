//! CosineSketch: accuracy, recall through the index, invariants, golden bits, robustness.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::*;
use haagenti_core::{DEFAULT_SIMILARITY_THRESHOLD, Dtype, FragmentId, Signature, SignatureScheme};
use haagenti_lsh::{CosineSketch, IndexConfig, SimilarityIndex, hamming};
use haagenti_testkit::synth::{Rng, bf16_bytes, f16_bytes, normal_f32};
use proptest::prelude::*;

fn sig(bytes: &[u8], dtype: Dtype) -> Signature {
    CosineSketch::default()
        .signature(bytes, Some(dtype))
        .unwrap()
}

/// One related pair: what is stored, what arrives later, and their true centred cosine.
struct Pair {
    what: &'static str,
    a: (Vec<u8>, Dtype),
    b: (Vec<u8>, Dtype),
    cosine: f64,
}

/// Related pairs of the kinds hubs hold, all with true cosine >= 0.99.
fn related_pairs(count: usize) -> Vec<Pair> {
    let mut rng = Rng::new(99);
    let mut out = Vec::new();
    for i in 0..count as u64 {
        // Lengths include partial sketch rows and fragments smaller than one row.
        // Every 20th fragment is long enough (> 64 rows) to be sampled.
        let n = if i % 20 == 7 {
            200_000 + rng.below(300_000) as usize
        } else {
            700 + rng.below(40_000) as usize
        };
        let std = 0.005 + 0.05 * rng.next_f64() as f32;
        let base = normal_f32(1000 + i, n, 0.0, std);
        let (what, a, b, av, bv) = match i % 6 {
            0 => (
                "bf16 cast of f32",
                (f32_le(&base), Dtype::F32),
                (bf16_bytes(&base), Dtype::BF16),
                base.clone(),
                bf16_values(&base),
            ),
            1 => (
                "f16 cast of f32",
                (f32_le(&base), Dtype::F32),
                (f16_bytes(&base), Dtype::F16),
                base.clone(),
                f16_values(&base),
            ),
            2 => {
                let rel = 1e-3 + 9e-3 * rng.next_f64() as f32;
                let tuned = perturb(&base, 5000 + i, rel, std);
                (
                    "bf16 fine-tune",
                    (bf16_bytes(&base), Dtype::BF16),
                    (bf16_bytes(&tuned), Dtype::BF16),
                    bf16_values(&base),
                    bf16_values(&tuned),
                )
            }
            3 => {
                let (q, deq) = int8(&base);
                let _ = deq;
                (
                    "int8 quantisation of f32",
                    (f32_le(&base), Dtype::F32),
                    (q.clone(), Dtype::I8),
                    base.clone(),
                    decode(&q, Dtype::I8),
                )
            }
            4 => {
                // Borderline: true cosine just above 0.99.
                let rel = 0.10 + 0.035 * rng.next_f64() as f32;
                let other = perturb(&base, 7000 + i, rel, std);
                (
                    "noisy copy, cosine ~0.99",
                    (bf16_bytes(&base), Dtype::BF16),
                    (bf16_bytes(&other), Dtype::BF16),
                    bf16_values(&base),
                    bf16_values(&other),
                )
            }
            _ => {
                let tuned = perturb(&base, 9000 + i, 5e-3, std);
                (
                    "f16 fine-tune against bf16 base",
                    (bf16_bytes(&base), Dtype::BF16),
                    (f16_bytes(&tuned), Dtype::F16),
                    bf16_values(&base),
                    f16_values(&tuned),
                )
            }
        };
        let cosine = centred_cosine(&av, &bv);
        out.push(Pair { what, a, b, cosine });
    }
    out
}

#[test]
fn recall_of_related_pairs_through_the_index() {
    let pairs = related_pairs(360);
    let mut index = SimilarityIndex::new(IndexConfig::cosine()).unwrap();
    // Unrelated neighbours make the index realistic.
    for i in 0..500u64 {
        let kind = KINDS[i as usize % KINDS.len()];
        let v = unrelated(kind, 50_000 + i, 4096);
        let s = sig(&bf16_bytes(&v), Dtype::BF16);
        index
            .insert(FragmentId::of(&i.to_le_bytes()), &s, 0)
            .unwrap();
    }
    let ids: Vec<FragmentId> = pairs.iter().map(|p| FragmentId::of(&p.a.0)).collect();
    for (p, id) in pairs.iter().zip(&ids) {
        assert!(p.cosine >= 0.99, "{}: cosine {}", p.what, p.cosine);
        index.insert(*id, &sig(&p.a.0, p.a.1), 0).unwrap();
    }
    let mut misses = Vec::new();
    for (p, id) in pairs.iter().zip(&ids) {
        let found = index
            .find_similar(&sig(&p.b.0, p.b.1), DEFAULT_SIMILARITY_THRESHOLD, 5)
            .unwrap();
        if !found.iter().any(|m| m.id == *id) {
            misses.push((p.what, p.cosine));
        }
    }
    let recall = 1.0 - misses.len() as f64 / pairs.len() as f64;
    assert!(recall >= 0.99, "recall {recall}, misses {misses:?}");
}

#[test]
fn unrelated_fragments_are_rarely_nominated() {
    let mut index = SimilarityIndex::new(IndexConfig::cosine()).unwrap();
    let stored = 2000u64;
    for i in 0..stored {
        let kind = KINDS[i as usize % KINDS.len()];
        let v = unrelated(kind, i, 2048 + (i as usize % 5) * 1500);
        let s = sig(&bf16_bytes(&v), Dtype::BF16);
        index
            .insert(FragmentId::of(&i.to_le_bytes()), &s, 0)
            .unwrap();
    }
    let queries = 200u64;
    let (mut nominated, mut accepted) = (0usize, 0usize);
    for q in 0..queries {
        let kind = KINDS[q as usize % KINDS.len()];
        let v = unrelated(kind, 1_000_000 + q, 2048 + (q as usize % 5) * 1500);
        let s = sig(&bf16_bytes(&v), Dtype::BF16);
        nominated += index.candidates(&s).unwrap().len();
        accepted += index
            .find_similar(&s, DEFAULT_SIMILARITY_THRESHOLD, 10)
            .unwrap()
            .len();
    }
    let rate = nominated as f64 / (stored * queries) as f64;
    assert!(rate <= 0.01, "false candidate rate {rate}");
    assert_eq!(accepted, 0, "unrelated fragments passed verification");
}

#[test]
fn estimates_track_the_true_cosine() {
    let scheme = CosineSketch::default();
    let n = 100_000;
    let base = normal_f32(3, n, 0.0, 0.02);
    let other = normal_f32(4, n, 0.0, 0.02);
    let a = scheme.signature(&f32_le(&base), Some(Dtype::F32)).unwrap();
    for target in [0.0f64, 0.3, 0.6, 0.9, 0.97, 0.995] {
        // x = t * base + sqrt(1 - t^2) * other has cosine ~t with base.
        let w = (1.0 - target * target).sqrt() as f32;
        let mixed: Vec<f32> = base
            .iter()
            .zip(&other)
            .map(|(&x, &y)| target as f32 * x + w * y)
            .collect();
        let truth = centred_cosine(&base, &mixed);
        let b = scheme
            .signature(&bf16_bytes(&mixed), Some(Dtype::BF16))
            .unwrap();
        let est = f64::from(scheme.similarity(&a, &b));
        // 256 bits: the angle estimate has a standard error of about 0.1 rad near 90 degrees.
        let tolerance = if truth > 0.95 { 0.03 } else { 0.25 };
        assert!(
            (est - truth).abs() <= tolerance,
            "truth {truth}, estimate {est}"
        );
    }
}

#[test]
fn scale_offset_and_sign_behave_like_a_centred_cosine() {
    let scheme = CosineSketch::default();
    let v = normal_f32(11, 20_000, 0.0, 0.02);
    let a = sig(&f32_le(&v), Dtype::F32);
    let scaled: Vec<f32> = v.iter().map(|x| x * 37.0).collect();
    let shifted: Vec<f32> = v.iter().map(|x| x + 0.5).collect();
    let negated: Vec<f32> = v.iter().map(|x| -x).collect();
    assert!(scheme.similarity(&a, &sig(&f32_le(&scaled), Dtype::F32)) > 0.999);
    assert!(scheme.similarity(&a, &sig(&f32_le(&shifted), Dtype::F32)) > 0.99);
    assert!(scheme.similarity(&a, &sig(&f32_le(&negated), Dtype::F32)) < -0.999);
    assert_eq!(hamming(&a.words, &sig(&f32_le(&v), Dtype::F32).words), 0);
}

#[test]
fn no_signature_for_blobs_constants_short_or_ragged_input() {
    let scheme = CosineSketch::default();
    let v = normal_f32(1, 1000, 0.0, 1.0);
    let bytes = f32_le(&v);
    assert!(scheme.signature(&bytes, None).is_none());
    assert!(
        scheme
            .signature(&bytes[..63 * 4], Some(Dtype::F32))
            .is_none()
    );
    assert!(scheme.signature(&bytes[..401], Some(Dtype::F32)).is_none());
    assert!(scheme.signature(&bytes, Some(Dtype::I64)).is_none());
    assert!(
        scheme
            .signature(&f32_le(&[0.25; 5000]), Some(Dtype::F32))
            .is_none()
    );
    assert!(
        scheme
            .signature(&vec![0u8; 10_000], Some(Dtype::BF16))
            .is_none()
    );
    assert!(scheme.signature(&bytes, Some(Dtype::F32)).is_some());
}

#[test]
fn non_finite_values_count_as_zero() {
    let scheme = CosineSketch::default();
    let v = normal_f32(8, 30_000, 0.0, 0.02);
    let mut broken = v.clone();
    broken[17] = f32::NAN;
    broken[2000] = f32::INFINITY;
    broken[25_000] = f32::MAX;
    let a = sig(&f32_le(&v), Dtype::F32);
    let b = scheme
        .signature(&f32_le(&broken), Some(Dtype::F32))
        .unwrap();
    // f32::MAX dominates the vector: the point is that nothing panics or turns to NaN.
    assert_eq!(b.words.len(), a.words.len());
    let mut mild = v.clone();
    mild[17] = f32::NAN;
    let c = scheme.signature(&f32_le(&mild), Some(Dtype::F32)).unwrap();
    assert!(scheme.similarity(&a, &c) > 0.99);
}

#[test]
fn shorter_signatures_are_prefixes() {
    let v = normal_f32(21, 9000, 0.0, 0.02);
    let long = CosineSketch::new(1024)
        .unwrap()
        .signature(&f32_le(&v), Some(Dtype::F32))
        .unwrap();
    let short = CosineSketch::new(128)
        .unwrap()
        .signature(&f32_le(&v), Some(Dtype::F32))
        .unwrap();
    assert_eq!(short.words[..], long.words[..2]);
    assert!(CosineSketch::new(100).is_err());
    assert!(CosineSketch::new(2048).is_err());
}

/// Golden bits: any change to the algorithm (seeds, rows, centring, transform) fails here
/// and needs a new scheme tag.
#[test]
fn golden_signature() {
    let v = normal_f32(42, 5000, 0.01, 0.02);
    let (q, _) = int8(&v);
    // 150_001 elements: 146 full rows (64 sampled) and a partial one.
    let long = normal_f32(43, 150_001, 0.0, 0.02);
    let got = [
        sig(&bf16_bytes(&v), Dtype::BF16),
        sig(&f32_le(&v), Dtype::F32),
        sig(&f16_bytes(&v), Dtype::F16),
        sig(&q, Dtype::I8),
        sig(&bf16_bytes(&long), Dtype::BF16),
    ];
    assert!(got.iter().all(|s| s.scheme == 1));
    let words: Vec<[u64; 4]> = got
        .iter()
        .map(|s| s.words.clone().try_into().unwrap())
        .collect();
    assert_eq!(words, GOLDEN);
}

const GOLDEN: [[u64; 4]; 5] = [
    // bf16, f32 and f16 of the same values agree bit for bit; int8 differs in one bit.
    [
        6671413979689004105,
        5209832798378094113,
        13904442403869949322,
        14117511790671863396,
    ],
    [
        6671413979689004105,
        5209832798378094113,
        13904442403869949322,
        14117511790671863396,
    ],
    [
        6671413979689004105,
        5209832798378094113,
        13904442403869949322,
        14117511790671863396,
    ],
    [
        6671413979689004105,
        5209832798382288417,
        13904442403869949322,
        14117511790671863396,
    ],
    [
        11107436390687006024,
        4413639263750005252,
        16928591012774808433,
        5434389757620629544,
    ],
];

fn any_dtype() -> impl Strategy<Value = Dtype> {
    (0..Dtype::ALL.len()).prop_map(|i| Dtype::ALL[i])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn signature_never_panics(data in proptest::collection::vec(any::<u8>(), 0..9000), dtype in any_dtype()) {
        let scheme = CosineSketch::default();
        if let Some(s) = scheme.signature(&data, Some(dtype)) {
            prop_assert_eq!(s.words.len(), 4);
            let sim = scheme.similarity(&s, &s);
            prop_assert!(sim == 1.0);
        }
    }

    #[test]
    fn special_floats_never_panic(bits in proptest::collection::vec(
        prop_oneof![any::<u32>(), Just(0x7f80_0000u32), Just(0xff80_0000), Just(0x7fc0_0000), Just(0x7f7f_ffff)],
        64..3000)) {
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let scheme = CosineSketch::default();
        for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16, Dtype::I8, Dtype::F64, Dtype::U32] {
            let _ = scheme.signature(&bytes, Some(dtype));
        }
    }
}
