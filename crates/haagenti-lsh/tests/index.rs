//! SimilarityIndex: insert/remove/query semantics, compaction, segments and hostile bytes.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use haagenti_core::{FragmentError, FragmentId, Signature, SimilarityThreshold};
use haagenti_lsh::{
    COSINE_SKETCH_TAG, IndexConfig, SEGMENT_VERSION, SegmentWriter, SimilarityIndex,
};
use haagenti_testkit::synth::Rng;
use proptest::prelude::*;

fn random_sig(rng: &mut Rng) -> Signature {
    Signature {
        scheme: COSINE_SKETCH_TAG,
        words: (0..4).map(|_| rng.next_u64()).collect(),
    }
}

/// `sig` with `flips` distinct bits flipped.
fn flipped(sig: &Signature, flips: usize) -> Signature {
    let mut out = sig.clone();
    for k in 0..flips {
        let bit = (k * 37) % 256;
        out.words[bit / 64] ^= 1 << (bit % 64);
    }
    out
}

fn id(i: u64) -> FragmentId {
    FragmentId::of(&i.to_le_bytes())
}

fn threshold(t: f32) -> SimilarityThreshold {
    SimilarityThreshold::new(t).unwrap()
}

#[test]
fn insert_query_remove() {
    let mut rng = Rng::new(1);
    let mut index = SimilarityIndex::new(IndexConfig::cosine()).unwrap();
    let base = random_sig(&mut rng);
    assert!(index.is_empty());
    assert!(index.insert(id(0), &base, 7).unwrap());
    assert!(
        !index.insert(id(0), &flipped(&base, 50), 8).unwrap(),
        "first insert wins"
    );
    assert!(index.insert(id(1), &flipped(&base, 4), 9).unwrap());
    assert!(index.insert(id(2), &flipped(&base, 12), 10).unwrap());
    for i in 3..1000 {
        index.insert(id(i), &random_sig(&mut rng), i).unwrap();
    }
    assert_eq!(index.len(), 1000);
    assert_eq!(index.meta(&id(0)), Some(7));

    let hits = index.find_similar(&base, threshold(0.9), 10).unwrap();
    let ids: Vec<_> = hits.iter().map(|m| m.id).collect();
    assert_eq!(ids, [id(0), id(1), id(2)], "sorted by similarity");
    assert_eq!(hits[0].similarity, 1.0);
    assert!(hits[1].similarity > hits[2].similarity);
    assert_eq!(
        index.find_similar(&base, threshold(0.9), 2).unwrap().len(),
        2
    );
    let filtered = index
        .find_similar_where(&base, threshold(0.9), 10, |_, meta| meta != 9)
        .unwrap();
    assert_eq!(
        filtered.iter().map(|m| m.id).collect::<Vec<_>>(),
        [id(0), id(2)]
    );

    assert!(index.remove(&id(1)));
    assert!(!index.remove(&id(1)));
    assert!(!index.contains(&id(1)));
    assert_eq!(index.len(), 999);
    let ids: Vec<_> = index
        .find_similar(&base, threshold(0.9), 10)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, [id(0), id(2)]);
    // Re-inserting a removed id works.
    assert!(index.insert(id(1), &flipped(&base, 4), 11).unwrap());
    assert_eq!(index.meta(&id(1)), Some(11));
    assert_eq!(
        index.find_similar(&base, threshold(0.9), 10).unwrap().len(),
        3
    );
}

#[test]
fn rejects_mismatched_signatures_and_configs() {
    let mut index = SimilarityIndex::new(IndexConfig::cosine()).unwrap();
    let short = Signature {
        scheme: COSINE_SKETCH_TAG,
        words: vec![1, 2],
    };
    let other = Signature {
        scheme: 2,
        words: vec![1, 2, 3, 4],
    };
    assert!(matches!(
        index.insert(id(0), &short, 0),
        Err(FragmentError::InvalidInput(_))
    ));
    assert!(index.insert(id(0), &other, 0).is_err());
    assert!(index.find_similar(&short, threshold(0.5), 1).is_err());
    for bad in [
        IndexConfig {
            bits: 100,
            ..IndexConfig::cosine()
        },
        IndexConfig {
            rows: 33,
            ..IndexConfig::cosine()
        },
        IndexConfig {
            bands: 17,
            ..IndexConfig::cosine()
        },
        IndexConfig {
            bands: 0,
            ..IndexConfig::cosine()
        },
        IndexConfig {
            scheme: 99,
            ..IndexConfig::cosine()
        },
    ] {
        assert!(SimilarityIndex::new(bad).is_err(), "{bad:?}");
    }
}

/// Many inserts (several table rebuilds) and removals (compaction) keep every answer
/// equal to a brute-force scan.
#[test]
fn matches_brute_force_through_rebuilds_and_compaction() {
    let mut rng = Rng::new(2);
    for config in [
        IndexConfig::cosine(),
        IndexConfig {
            bands: 8,
            rows: 24,
            ..IndexConfig::cosine()
        },
        IndexConfig {
            bits: 512,
            bands: 10,
            rows: 30,
            ..IndexConfig::cosine()
        },
    ] {
        let words = config.bits as usize / 64;
        let mut index = SimilarityIndex::new(config).unwrap();
        let mut live: Vec<(FragmentId, Signature)> = Vec::new();
        let clusters: Vec<Signature> = (0..50)
            .map(|_| Signature {
                scheme: COSINE_SKETCH_TAG,
                words: (0..words).map(|_| rng.next_u64()).collect(),
            })
            .collect();
        for i in 0..12_000u64 {
            let sig = flipped(&clusters[rng.below(50) as usize], rng.below(20) as usize);
            let sig = Signature {
                words: sig
                    .words
                    .iter()
                    .map(|w| {
                        w ^ (rng.next_u64()
                            & rng.next_u64()
                            & rng.next_u64()
                            & rng.next_u64()
                            & rng.next_u64())
                    })
                    .collect(),
                ..sig
            };
            index.insert(id(i), &sig, i).unwrap();
            live.push((id(i), sig));
            if i % 3 != 0 {
                let victim = rng.below(live.len() as u64) as usize;
                let (vid, _) = live.swap_remove(victim);
                assert!(index.remove(&vid));
            }
        }
        assert_eq!(index.len(), live.len());
        for q in clusters.iter().take(10) {
            let got: Vec<FragmentId> = index.candidates(q).unwrap();
            let mut want: Vec<FragmentId> = live
                .iter()
                .filter(|(_, s)| shares_band(q, s, config))
                .map(|(i, _)| *i)
                .collect();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            want.sort();
            assert_eq!(got_sorted, want, "{config:?}");
        }
    }
}

fn shares_band(a: &Signature, b: &Signature, c: IndexConfig) -> bool {
    (0..c.bands).any(|band| {
        let start = (band * c.rows) as usize;
        (start..start + c.rows as usize)
            .all(|bit| (a.words[bit / 64] ^ b.words[bit / 64]) >> (bit % 64) & 1 == 0)
    })
}

#[test]
fn segments_round_trip_and_merge() {
    let mut rng = Rng::new(3);
    let config = IndexConfig::cosine();
    let sigs: Vec<Signature> = (0..3000).map(|_| random_sig(&mut rng)).collect();
    let mut first = SegmentWriter::new(COSINE_SKETCH_TAG, 256);
    let mut second = SegmentWriter::new(COSINE_SKETCH_TAG, 256);
    for (i, s) in sigs.iter().enumerate() {
        let i = i as u64;
        if i < 2000 {
            first.push(&id(i), s, i).unwrap();
        }
        if i >= 1500 {
            second.push(&id(i), s, i).unwrap(); // overlaps 1500..2000
        }
    }
    assert_eq!(first.len(), 2000);
    let (first, second) = (first.finish(), second.finish());
    let mut index = SimilarityIndex::from_bytes(config, &first).unwrap();
    assert_eq!(index.load_segment(&second).unwrap(), 1000);
    assert_eq!(index.len(), 3000);
    for (i, s) in sigs.iter().enumerate().step_by(97) {
        let hits = index.find_similar(s, threshold(0.99), 1).unwrap();
        assert_eq!(hits[0].id, id(i as u64));
        assert_eq!(index.meta(&id(i as u64)), Some(i as u64));
    }
    // The whole index as one segment, with a removal.
    index.remove(&id(5));
    let again = SimilarityIndex::from_bytes(config, &index.to_bytes()).unwrap();
    assert_eq!(again.len(), 2999);
    assert!(!again.contains(&id(5)) && again.contains(&id(6)));
    // Other banding parameters read the same segment.
    let other = IndexConfig {
        bands: 8,
        rows: 32,
        ..config
    };
    assert_eq!(
        SimilarityIndex::from_bytes(other, &first).unwrap().len(),
        2000
    );
    // Scheme or length mismatch.
    let minhash = SegmentWriter::new(2, 256).finish();
    assert!(index.load_segment(&minhash).is_err());
    let mut wrong = SegmentWriter::new(COSINE_SKETCH_TAG, 512);
    assert!(wrong.push(&id(1), &sigs[0], 0).is_err());
}

#[test]
fn hostile_segments_are_rejected() {
    let config = IndexConfig::cosine();
    let mut rng = Rng::new(4);
    let mut w = SegmentWriter::new(COSINE_SKETCH_TAG, 256);
    for i in 0..10 {
        w.push(&id(i), &random_sig(&mut rng), i).unwrap();
    }
    let good = w.finish();
    assert!(SimilarityIndex::from_bytes(config, &good).is_ok());

    let corrupt = |b: &[u8]| SimilarityIndex::from_bytes(config, b).unwrap_err();
    assert!(corrupt(&good[..good.len() - 1]).is_corruption());
    assert!(corrupt(&[]).is_corruption());
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(corrupt(&bad).is_corruption());
    let mut bad = good.clone();
    bad[40] ^= 1;
    assert!(corrupt(&bad).is_corruption(), "checksum");
    let mut bad = good.clone();
    bad[8] = SEGMENT_VERSION + 1;
    assert!(matches!(
        corrupt(&bad),
        FragmentError::UnsupportedVersion { found: 2, .. }
    ));
    // A count claiming 4 billion entries: rejected without allocating.
    let mut bad = good.clone();
    bad[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(corrupt(&bad).is_corruption());
    // Signature length not a multiple of 64, or absurd.
    for bits in [0u16, 100, 65_472] {
        let mut bad = good.clone();
        bad[11..13].copy_from_slice(&bits.to_le_bytes());
        assert!(corrupt(&bad).is_corruption(), "{bits}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SimilarityIndex::from_bytes(IndexConfig::cosine(), &data);
    }

    #[test]
    fn mutated_segments_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..6), cut in 0usize..400) {
        let mut rng = Rng::new(5);
        let mut w = SegmentWriter::new(COSINE_SKETCH_TAG, 256);
        for i in 0..4 {
            w.push(&id(i), &random_sig(&mut rng), i).unwrap();
        }
        let mut bytes = w.finish();
        for (pos, x) in flips {
            if let Some(b) = bytes.get_mut(pos) {
                *b ^= x;
            }
        }
        bytes.truncate(cut.max(1).min(bytes.len()));
        let _ = SimilarityIndex::from_bytes(IndexConfig::cosine(), &bytes);
    }
}
