//! Golden vectors: fixed-seed inputs whose encodings are pinned, so an accidental format
//! or encoder change fails here. A deliberate change updates the pins (and, for a format
//! change, bumps the payload version); old pinned payloads must still decode.
//!
//! LZ4 and zstd pins also move when those libraries change their encoders (their
//! formats do not): then check that the pinned decodes below still pass and update.

#![allow(clippy::unwrap_used, reason = "test helpers")]

use haagenti_codec::{PLANES_FORMAT_VERSION, PlanesCodec};
use haagenti_core::{Codec, CodecPolicy, Dtype, EncodeHint};
use haagenti_testkit::synth;

fn hint(dtype: Option<Dtype>, policy: CodecPolicy) -> EncodeHint {
    EncodeHint { dtype, policy }
}

fn bf16_weights() -> Vec<u8> {
    let mut v = synth::bf16_bytes(&synth::normal_f32(42, 32 << 10, 0.0, 0.02));
    v.push(0x7f); // trailing partial element
    v
}

fn f32_weights() -> Vec<u8> {
    synth::f32_bytes(&synth::normal_f32(43, 16 << 10, 0.0, 0.02))
}

fn f16_weights() -> Vec<u8> {
    synth::f16_bytes(&synth::normal_f32(44, 16 << 10, 0.0, 0.02))
}

fn blob() -> Vec<u8> {
    (0..400)
        .flat_map(|i| {
            format!(
                "{{\"name\": \"model.layers.{i}.mlp.up_proj.weight\", \"shape\": [{}, 2048]}}\n",
                512 + i % 7
            )
            .into_bytes()
        })
        .collect()
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Encodes, checks the round trip, and returns (size, BLAKE3 of the payload).
fn pin(codec: &dyn Codec, data: &[u8], hint: EncodeHint) -> (usize, String) {
    let payload = codec.encode_to_vec(data, hint).unwrap();
    assert_eq!(codec.decode_to_vec(&payload, data.len()).unwrap(), data);
    (payload.len(), blake3_hex(&payload))
}

#[test]
fn planes_encodings_are_pinned() {
    use CodecPolicy::{Balanced, Fast, Max};
    let mut cases: Vec<(&str, Vec<u8>, EncodeHint, usize, &str)> = vec![
        (
            "bf16 balanced",
            bf16_weights(),
            hint(Some(Dtype::BF16), Balanced),
            43445,
            "6d835a3bdbbcf9304d6d2ec1dab2a214240638cb270d53e3c7d2f04ae22899f5",
        ),
        (
            "bf16 fast",
            bf16_weights(),
            hint(Some(Dtype::BF16), Fast),
            43445,
            "6d835a3bdbbcf9304d6d2ec1dab2a214240638cb270d53e3c7d2f04ae22899f5",
        ),
        (
            "bf16 max",
            bf16_weights(),
            hint(Some(Dtype::BF16), Max),
            43445,
            "6d835a3bdbbcf9304d6d2ec1dab2a214240638cb270d53e3c7d2f04ae22899f5",
        ),
        (
            "f32 balanced",
            f32_weights(),
            hint(Some(Dtype::F32), Balanced),
            54544,
            "874a80bf817e5e6dc1c60955b89ec6d298577446b2034cc93058876746f45e9f",
        ),
        (
            "f16 balanced",
            f16_weights(),
            hint(Some(Dtype::F16), Balanced),
            27729,
            "2670dd47a28e9ab5f31f9dd284d96d1ac082d4d59673a0e64613905be143373f",
        ),
    ];
    // Blobs take the LZ coders; their choice depends on which are compiled in.
    if cfg!(all(feature = "lz4", feature = "zstd")) {
        cases.extend([
            (
                "blob balanced",
                blob(),
                hint(None, Balanced),
                781,
                "c5f672b7257617966cddb2fce49913bd015619d5704e37c63848b31068828bfe",
            ),
            (
                "blob fast",
                blob(),
                hint(None, Fast),
                3385,
                "e816619d58f25c58dd64432a7bd666a209c42497dd6de7785de7bb0e1af1eab9",
            ),
            (
                "blob max",
                blob(),
                hint(None, Max),
                780,
                "bd05ec4081f7823f6c562ccf87614010bacbb426613cc0e9bb501e155f5b0e34",
            ),
        ]);
    }
    let mut failures = Vec::new();
    for (name, data, hint, size, hash) in &cases {
        let got = pin(&PlanesCodec, data, *hint);
        if got != (*size, hash.to_string()) {
            failures.push(format!("{name}: got ({}, \"{}\")", got.0, got.1));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn other_codec_encodings_are_pinned() {
    #[cfg(feature = "zstd")]
    let zstd = haagenti_codec::ZstdCodec::default();
    let got: Vec<(&str, (usize, String))> = vec![
        #[cfg(feature = "lz4")]
        (
            "lz4 blob",
            pin(&haagenti_codec::Lz4Codec, &blob(), EncodeHint::default()),
        ),
        #[cfg(feature = "lz4")]
        (
            "lz4 bf16",
            pin(
                &haagenti_codec::Lz4Codec,
                &bf16_weights(),
                EncodeHint::default(),
            ),
        ),
        #[cfg(feature = "zstd")]
        ("zstd blob", pin(&zstd, &blob(), EncodeHint::default())),
        #[cfg(feature = "zstd")]
        (
            "zstd bf16",
            pin(&zstd, &bf16_weights(), EncodeHint::default()),
        ),
    ];
    let expected: &[(&str, usize, &str)] = &[
        (
            "lz4 blob",
            3377,
            "3eca2f994f69949d9109c27c6f2881f4b246d37d5d7b38a8486c4a4d14874a0c",
        ),
        (
            "lz4 bf16",
            65795,
            "fd46770262af054e3d57131a9b4208c301c2ae48c8ed2dc298c144c0d7990155",
        ),
        (
            "zstd blob",
            773,
            "cb1504173d19f0c4e1f2a81bd1c5aea5dc7e192de984e8546f6361f009ab0d6b",
        ),
        (
            "zstd bf16",
            51128,
            "bc55ddd837f76e4ad8f4e1c7536d8cec8bd174ed8c952af0eeb1d78cb345cac5",
        ),
    ];
    let mut failures = Vec::new();
    for (name, (size, hash)) in &got {
        match expected.iter().find(|e| e.0 == *name) {
            Some(&(_, s, h)) if s == *size && h == hash => {}
            _ => failures.push(format!("(\"{name}\", {size}, \"{hash}\"),")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// f16 1.0 three times: both planes constant.
const CONST_PLANES: [u8; 7] = [PLANES_FORMAT_VERSION, 2, 0, 1, 0x00, 1, 0x3c];

#[test]
fn pinned_small_payloads_decode() {
    let ones = 1.0f32;
    let f16_ones = synth::f16_bytes(&[ones; 3]);
    assert_eq!(
        PlanesCodec.decode_to_vec(&CONST_PLANES, 6).unwrap(),
        f16_ones
    );
    assert_eq!(
        PlanesCodec
            .encode_to_vec(&f16_ones, hint(Some(Dtype::F16), CodecPolicy::Balanced))
            .unwrap(),
        CONST_PLANES
    );

    let data = huffman_example_input();
    let payload = hex(HUFFMAN_EXAMPLE);
    assert_eq!(
        PlanesCodec.decode_to_vec(&payload, data.len()).unwrap(),
        data
    );
    assert_eq!(
        PlanesCodec
            .encode_to_vec(&data, hint(Some(Dtype::BF16), CodecPolicy::Balanced))
            .unwrap(),
        payload
    );
}

/// 300 bf16 weights: raw low plane, Huffman-coded exponent plane.
fn huffman_example_input() -> Vec<u8> {
    synth::bf16_bytes(&synth::normal_f32(45, 300, 0.0, 0.02))
}

const HUFFMAN_EXAMPLE: &str = "\
0102010066862143fb418a8b0a0bdc38a8e03902418d0d047ca699c06127e71a5f94732c27473b5817e22453dc7ec3dc\
377e34670e04cd681d42ef3e4953375803441fae017a2c606f1f1d3a980f68c5c5e578c024046deb93168f332860a42b\
68ac62563aa00fac9e3217b27553c69d27c0895c16a9135574c646e0ae66557933a8a346e08b9949486ec9026ea3afca\
6865a91115412f0d436d1a764d154948b1876761f62262cd1b7e4ad0d309505e7de78fe30b9e5aaa30f02617057c8f5e\
af452c606f521c49bd390614f1bdb423b73a5cd4ec44fe27ed03c113ca1ada15dc494b63386087fd4fa90a6e646364ce\
9475db5f348e447b0f10187da1463278915899e02e3fe0d94af004dcfd57e27417e22e3cdca64b84985cab3417fa77ab\
d9a3edff46c77422f66107461fb4670a02b10000007a0000000000000000000000000000000000000000000000000000\
0000000000000000000000000000000000000000000000000000000000007766463322031b0000001700000019000000\
bc70da48fdf8ac4cdbef1e9ee70ff7c918a2531b090da356878c55c0d0f740971c6a9a2b5a40444515802aad80f47075\
a70537a624a9e67749659aac4f619dc8089cc80bb12884175a41a992fe406de522be0c7bc2476bf69b1c36d8f0456bf3\
eaa305777c12";

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

#[test]
fn bf16_weights_reach_the_target_ratio_with_raw_low_plane() {
    let data = synth::bf16_bytes(&synth::normal_f32(46, 1 << 19, 0.0, 0.02));
    let payload = PlanesCodec
        .encode_to_vec(&data, hint(Some(Dtype::BF16), CodecPolicy::Balanced))
        .unwrap();
    let ratio = data.len() as f64 / payload.len() as f64;
    assert!(ratio >= 1.45, "ratio {ratio:.3}");
    // Header, then plane 0 (sign + mantissa) raw, then plane 1 (exponent) Huffman.
    let n = data.len() / 2;
    assert_eq!(payload[..4], [PLANES_FORMAT_VERSION, 2, 1, 0]);
    assert_eq!(payload[4 + n], 2, "exponent plane method");
}

#[test]
fn incompressible_data_costs_only_the_headers() {
    let mut data = vec![0u8; 1 << 20];
    synth::Rng::new(47).fill_bytes(&mut data);
    for dtype in [None, Some(Dtype::BF16), Some(Dtype::F32), Some(Dtype::F64)] {
        for policy in [CodecPolicy::Fast, CodecPolicy::Balanced, CodecPolicy::Max] {
            let payload = PlanesCodec
                .encode_to_vec(&data, hint(dtype, policy))
                .unwrap();
            assert!(
                payload.len() <= data.len() + 3 + 8,
                "{dtype:?} {policy:?}: {}",
                payload.len()
            );
        }
    }
}
