//! ByteMinHash: similarity of edited blobs, unrelated blobs, golden bits, robustness.
//! Experimental: `cargo test -p haagenti-lsh --features experimental`.

#![cfg(feature = "experimental")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use haagenti_core::{FragmentId, SignatureScheme, SimilarityThreshold};
use haagenti_lsh::{ByteMinHash, IndexConfig, SimilarityIndex};
use haagenti_testkit::synth::Rng;
use proptest::prelude::*;

/// Tokenizer-like JSON text.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let line = format!(
            "  \"tok_{:x}\": {},\n",
            rng.next_u64() >> 44,
            rng.below(1 << 17)
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn edits_keep_blobs_similar_and_unrelated_blobs_apart() {
    let m = ByteMinHash::default();
    let a = text(1, 200_000);
    let sa = m.signature(&a, None).unwrap();
    assert_eq!(m.similarity(&sa, &sa), 1.0);

    // Local edits (in the scanned ends and in the middle), an insertion that shifts
    // everything after it, and a truncated short blob (scanned whole).
    let mut edited = a.clone();
    for pos in [1000, 100_000, 190_000] {
        edited[pos] ^= 0x20;
    }
    let mut inserted = a.clone();
    inserted.splice(10_000..10_000, b"\"added_token\": 99999,\n".iter().copied());
    let short = text(7, 40_000);
    let cases = [
        ("edited", &sa, edited),
        ("inserted", &sa, inserted),
        (
            "truncated",
            &m.signature(&short, None).unwrap(),
            short[..36_000].to_vec(),
        ),
    ];
    for (what, s, b) in cases {
        let sim = m.similarity(s, &m.signature(&b, None).unwrap());
        assert!(sim > 0.75, "{what}: {sim}");
    }
    // A long blob cut short keeps its head only: about half its shingles.
    let truncated = m.signature(&a[..180_000], None).unwrap();
    let sim = m.similarity(&sa, &truncated);
    assert!((0.25..0.75).contains(&sim), "truncated long blob: {sim}");

    let mut unrelated_max = f32::MIN;
    for seed in 2..30 {
        let sim = m.similarity(&sa, &m.signature(&text(seed, 200_000), None).unwrap());
        unrelated_max = unrelated_max.max(sim);
    }
    assert!(unrelated_max < 0.35, "unrelated similarity {unrelated_max}");
}

#[test]
fn blob_index_finds_edited_copies() {
    let m = ByteMinHash::default();
    let mut index = SimilarityIndex::new(IndexConfig::minhash()).unwrap();
    let blobs: Vec<Vec<u8>> = (0..200).map(|s| text(100 + s, 20_000)).collect();
    for b in &blobs {
        index
            .insert(FragmentId::of(b), &m.signature(b, None).unwrap(), 0)
            .unwrap();
    }
    let mut found = 0;
    for b in &blobs {
        let mut edited = b.clone();
        edited[10_000] ^= 1;
        let hits = index
            .find_similar(
                &m.signature(&edited, None).unwrap(),
                SimilarityThreshold::new(0.5).unwrap(),
                3,
            )
            .unwrap();
        found += usize::from(hits.first().is_some_and(|h| h.id == FragmentId::of(b)));
    }
    assert!(found >= 198, "found {found} of 200");
}

#[test]
fn small_inputs() {
    let m = ByteMinHash::default();
    assert!(m.signature(&text(1, 63), None).is_none());
    // No anchor in a run of one byte value: no signature.
    assert!(m.signature(&[7; 5000], None).is_none());
    // A few shingles fill every bucket through densification.
    let small = text(2, 300);
    let s = m.signature(&small, None).unwrap();
    assert_eq!(s.words.len(), 4);
    assert!(ByteMinHash::new(100).is_err());
    let wide = ByteMinHash::new(1024).unwrap();
    assert_eq!(wide.signature(&small, None).unwrap().words.len(), 16);
}

/// Golden bits: any change to the algorithm fails here and needs a new scheme tag.
#[test]
fn golden_signature() {
    let m = ByteMinHash::default();
    let s = m.signature(&text(42, 10_000), None).unwrap();
    assert_eq!(s.scheme, 2);
    assert_eq!(s.words, GOLDEN);
    // Long enough that only its ends are scanned.
    let long = m.signature(&text(43, 100_000), None).unwrap();
    assert_eq!(long.words, GOLDEN_LONG);
}

const GOLDEN: [u64; 4] = [
    4800714916887394667,
    12835953117597568156,
    14422504217078231026,
    14490306271049226595,
];

const GOLDEN_LONG: [u64; 4] = [
    5597981945520589180,
    10873071238185436356,
    18387567672394410612,
    14718683934449442543,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn signature_never_panics(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let m = ByteMinHash::default();
        if let Some(s) = m.signature(&data, None) {
            prop_assert_eq!(s.words.len(), 4);
            prop_assert!(m.similarity(&s, &s) == 1.0);
        }
    }
}
