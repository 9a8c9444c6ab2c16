//! Property tests: every codec round-trips arbitrary bytes under every hint, and decoding
//! arbitrary payloads never panics.

use haagenti_codec::PlanesCodec;
use haagenti_core::{Codec, CodecPolicy, Dtype, EncodeHint};
use proptest::prelude::*;

fn codecs() -> Vec<Box<dyn Codec>> {
    vec![
        Box::new(PlanesCodec),
        #[cfg(feature = "lz4")]
        Box::new(haagenti_codec::Lz4Codec),
        #[cfg(feature = "zstd")]
        Box::new(haagenti_codec::ZstdCodec::default()),
    ]
}

fn hint() -> impl Strategy<Value = EncodeHint> {
    let dtype = prop_oneof![
        Just(None),
        proptest::sample::select(Dtype::ALL.to_vec()).prop_map(Some)
    ];
    let policy = prop_oneof![
        Just(CodecPolicy::Fast),
        Just(CodecPolicy::Balanced),
        Just(CodecPolicy::Max)
    ];
    (dtype, policy).prop_map(|(dtype, policy)| EncodeHint { dtype, policy })
}

/// Bytes with structure a float codec meets: skewed "exponent" bytes, runs and noise.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..3000),
        proptest::collection::vec(
            prop_oneof![Just(0x3cu8), Just(0x3d), Just(0xbc), any::<u8>()],
            0..3000
        ),
        (any::<u8>(), 0usize..5000).prop_map(|(b, n)| vec![b; n]),
    ]
}

proptest! {
    #[test]
    fn round_trips(data in data(), hint in hint()) {
        for codec in codecs() {
            let payload = codec.encode_to_vec(&data, hint).unwrap();
            let back = codec.decode_to_vec(&payload, data.len()).unwrap();
            prop_assert_eq!(&back, &data, "{} {:?}", codec.name(), hint);
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..600), len in 0usize..5000) {
        for codec in codecs() {
            let mut out = Vec::new();
            if codec.decode(&payload, len, &mut out).is_ok() {
                prop_assert_eq!(out.len(), len);
            }
        }
    }

    #[test]
    fn damaged_payloads_never_panic(data in data(), hint in hint(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
        for codec in codecs() {
            let payload = codec.encode_to_vec(&data, hint).unwrap();
            if payload.is_empty() {
                continue;
            }
            let mut out = Vec::new();
            if codec.decode(&payload[..cut.index(payload.len())], data.len(), &mut out).is_ok() {
                prop_assert_eq!(out.len(), data.len());
            }
            let mut flipped = payload.clone();
            let bit = flip.index(payload.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            out.clear();
            if codec.decode(&flipped, data.len(), &mut out).is_ok() {
                prop_assert_eq!(out.len(), data.len());
            }
        }
    }
}

/// The planes codec reuses a per-thread buffer between calls: a decode must never see the
/// bytes of an earlier (larger, or failed) one.
#[test]
fn planes_decodes_share_nothing_between_calls() {
    let hint = EncodeHint {
        dtype: Some(Dtype::BF16),
        policy: CodecPolicy::Balanced,
    };
    let noisy: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let constant = vec![0x3c; 300_000];
    let codec = PlanesCodec;
    let big = codec.encode_to_vec(&noisy, hint).unwrap();
    let small = codec.encode_to_vec(&constant, hint).unwrap();
    assert_eq!(codec.decode_to_vec(&big, noisy.len()).unwrap(), noisy);
    // A damaged payload fails part-way through its planes...
    assert!(
        codec
            .decode_to_vec(&big[..big.len() / 2], noisy.len())
            .is_err()
    );
    // ...and the next, smaller decode is still exactly its own bytes.
    assert_eq!(
        codec.decode_to_vec(&small, constant.len()).unwrap(),
        constant
    );
    assert_eq!(codec.decode_to_vec(&big, noisy.len()).unwrap(), noisy);
}
