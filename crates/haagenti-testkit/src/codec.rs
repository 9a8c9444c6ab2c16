//! Codec conformance suite: round trips of adversarial inputs and bounded decoding.
//!
//! Every [`Codec`] implementation runs [`check_codec`] in its tests. Failures panic with
//! the case that failed, so they read as ordinary test failures.

use crate::synth::{self, Rng};
use haagenti_core::cast::{f32_to_bf16, f32_to_f16};
use haagenti_core::codec::{Codec, EncodeHint, MAX_DECODED_LEN};
use haagenti_core::{CodecPolicy, Dtype};

const POLICIES: [CodecPolicy; 3] = [CodecPolicy::Fast, CodecPolicy::Balanced, CodecPolicy::Max];

/// Runs the whole suite against `codec`:
///
/// - round trips, for every dtype hint (and none) and every policy, of: empty, 1 byte,
///   lengths that are no multiple of 2, 4 or 8, all-equal bytes, incompressible random
///   bytes, normal weights in each float dtype, NaN/Inf/denormal patterns, sparse and
///   text-like data; encoding must be deterministic and decoding must append to `out`;
/// - hostile decoding: truncated payloads, bit flips, garbage, and lying decoded lengths
///   must return `Err`, or `Ok` with exactly the declared length appended; lengths above
///   [`MAX_DECODED_LEN`] must fail. A panic or an oversized allocation aborts the test.
pub fn check_codec(codec: &dyn Codec) {
    let inputs = inputs();
    for (case, data) in &inputs {
        for hint in hints(data.len()) {
            round_trip(codec, case, data, hint);
        }
    }
    for (case, data) in inputs.iter().filter(|(c, _)| HOSTILE_CASES.contains(c)) {
        for hint in [
            EncodeHint::default(),
            EncodeHint {
                dtype: Some(Dtype::BF16),
                policy: CodecPolicy::Balanced,
            },
            EncodeHint {
                dtype: Some(Dtype::F32),
                policy: CodecPolicy::Max,
            },
        ] {
            let payload = codec
                .encode_to_vec(data, hint)
                .unwrap_or_else(|e| panic!("{}: encode {case} {hint:?}: {e}", codec.name()));
            hostile(codec, case, &payload, data.len());
        }
    }
    garbage(codec);
}

/// Inputs whose encodings are truncated, bit-flipped and given lying lengths.
const HOSTILE_CASES: [&str; 4] = ["bf16 weights", "specials", "text", "sparse"];

/// Every dtype hint (and none) under every policy; large inputs only with the common ones,
/// to keep the suite fast under `Max`.
fn hints(len: usize) -> Vec<EncodeHint> {
    let dtypes: Vec<Option<Dtype>> = if len > 64 << 10 {
        vec![None, Some(Dtype::BF16), Some(Dtype::F16), Some(Dtype::F32)]
    } else {
        std::iter::once(None)
            .chain(Dtype::ALL.into_iter().map(Some))
            .collect()
    };
    dtypes
        .into_iter()
        .flat_map(|dtype| POLICIES.map(|policy| EncodeHint { dtype, policy }))
        .collect()
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Rng::new(seed).fill_bytes(&mut v);
    v
}

/// Special float values of every width, repeated: zeros, infinities, NaNs with payloads,
/// denormals, extremes.
fn specials() -> Vec<u8> {
    let f32s = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x7fa0_0001), // signalling NaN with a payload
        f32::from_bits(0xffc0_1234),
        f32::from_bits(1), // smallest denormal
        f32::from_bits(0x007f_ffff),
        f32::MAX,
        f32::MIN_POSITIVE,
        1.0,
    ];
    let mut out = Vec::new();
    for round in 0..40u32 {
        for (i, &v) in f32s.iter().enumerate() {
            let v = if (round as usize + i) % 5 == 0 { -v } else { v };
            out.extend(f32_to_bf16(v).to_le_bytes());
            out.extend(f32_to_f16(v).to_le_bytes());
            out.extend(v.to_le_bytes());
            out.extend(f64::from(v).to_le_bytes());
        }
        out.extend(f64::from_bits(0x7ff0_0000_0000_0001 + u64::from(round)).to_le_bytes());
    }
    out
}

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let weights = |seed, n| synth::normal_f32(seed, n, 0.0, 0.02);
    let mut bf16 = synth::bf16_bytes(&weights(1, 4097));
    bf16.push(0x3c); // odd length: a trailing partial element
    let mut f32_ = synth::f32_bytes(&weights(2, 2049));
    f32_.extend([1, 2, 3]);
    let mut f64_: Vec<u8> = weights(3, 1025)
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    f64_.extend([9; 5]);
    let text: Vec<u8> = (0..120)
        .flat_map(|i| {
            format!(
                "{{\"layer.{i}.weight\": [{}, 4096], \"dtype\": \"BF16\"}}\n",
                i * 7 % 13
            )
            .into_bytes()
        })
        .collect();
    let mut sparse = vec![0u8; 12_000];
    let mut rng = Rng::new(5);
    for _ in 0..300 {
        let at = rng.below(sparse.len() as u64) as usize;
        sparse[at] = rng.next_u64() as u8;
    }
    let mut cases = vec![
        ("empty", Vec::new()),
        ("one byte", vec![0x80]),
        ("all zeros", vec![0; 4099]),
        ("all equal", vec![0xab; 1000]),
        ("random", random_bytes(6, 8191)),
        ("bf16 weights", bf16),
        ("f16 weights", synth::f16_bytes(&weights(4, 3001))),
        ("f32 weights", f32_),
        ("f64 weights", f64_),
        ("specials", specials()),
        ("text", text),
        ("sparse", sparse),
        (
            "large bf16 weights",
            synth::bf16_bytes(&weights(7, 80 << 10)),
        ),
    ];
    for len in [2, 3, 5, 6, 7, 9, 15, 17] {
        cases.push(("short random", random_bytes(len as u64, len)));
    }
    cases
}

fn round_trip(codec: &dyn Codec, case: &str, data: &[u8], hint: EncodeHint) {
    let name = codec.name();
    let ctx = || format!("{name}: {case} ({} bytes) {hint:?}", data.len());
    let payload = codec
        .encode_to_vec(data, hint)
        .unwrap_or_else(|e| panic!("{}: encode: {e}", ctx()));
    let again = codec.encode_to_vec(data, hint).unwrap_or_default();
    assert!(payload == again, "{}: encoding is not deterministic", ctx());

    let mut out = b"prefix".to_vec();
    codec
        .decode(&payload, data.len(), &mut out)
        .unwrap_or_else(|e| panic!("{}: decode: {e}", ctx()));
    assert!(
        out.len() == 6 + data.len() && out.starts_with(b"prefix"),
        "{}: decode did not append exactly {} bytes",
        ctx(),
        data.len()
    );
    assert!(&out[6..] == data, "{}: round trip changed the bytes", ctx());

    // In place, over a buffer holding leftovers: every byte must be written.
    let mut filled = vec![0xA5; data.len()];
    codec
        .decode_into(&payload, &mut filled)
        .unwrap_or_else(|e| panic!("{}: decode_into: {e}", ctx()));
    assert!(filled == data, "{}: decode_into changed the bytes", ctx());
}

/// Decodes `payload` as `decoded_len` bytes: `Err` is fine, `Ok` must append exactly;
/// `decode_into` (tried on lengths a test can allocate) must agree with `decode`.
fn decode_must_be_sound(codec: &dyn Codec, payload: &[u8], decoded_len: usize, what: &str) {
    let mut out = b"prefix".to_vec();
    let decoded = codec.decode(payload, decoded_len, &mut out);
    if decoded_len <= 1 << 20 {
        let mut filled = vec![0xA5; decoded_len];
        let in_place = codec.decode_into(payload, &mut filled);
        assert!(
            decoded.is_ok() == in_place.is_ok(),
            "{}: {what}: decode and decode_into disagree on success",
            codec.name()
        );
        assert!(
            in_place.is_err() || out.get(6..) == Some(&filled[..]),
            "{}: {what}: decode and decode_into disagree on the bytes",
            codec.name()
        );
    }
    if decoded.is_ok() {
        assert!(
            decoded_len <= MAX_DECODED_LEN,
            "{}: {what}: accepted decoded length {decoded_len} above the limit",
            codec.name()
        );
        assert!(
            out.len() == 6 + decoded_len && out.starts_with(b"prefix"),
            "{}: {what}: Ok but {} bytes appended, expected {decoded_len}",
            codec.name(),
            out.len().saturating_sub(6)
        );
    }
}

fn hostile(codec: &dyn Codec, case: &str, payload: &[u8], len: usize) {
    // Truncations: every prefix of small payloads, a spread of them otherwise.
    let step = (payload.len() / 300).max(1);
    let cuts = (0..payload.len())
        .step_by(step)
        .chain(payload.len().saturating_sub(16)..payload.len());
    for cut in cuts {
        decode_must_be_sound(codec, &payload[..cut], len, &format!("{case} cut at {cut}"));
    }
    // Bit flips: every bit of small payloads, a seeded sample otherwise.
    let bits = payload.len() * 8;
    let mut rng = Rng::new(len as u64);
    let positions: Vec<usize> = if bits <= 4096 {
        (0..bits).collect()
    } else {
        (0..1500).map(|_| rng.below(bits as u64) as usize).collect()
    };
    let mut flipped = payload.to_vec();
    for bit in positions {
        flipped[bit / 8] ^= 1 << (bit % 8);
        decode_must_be_sound(codec, &flipped, len, &format!("{case} bit {bit} flipped"));
        flipped[bit / 8] ^= 1 << (bit % 8);
    }
    // Lying lengths.
    for lie in [
        0,
        1,
        len.saturating_sub(1),
        len + 1,
        len * 2 + 7,
        MAX_DECODED_LEN,
        MAX_DECODED_LEN + 1,
        usize::MAX / 2,
        usize::MAX,
    ] {
        decode_must_be_sound(codec, payload, lie, &format!("{case} with length {lie}"));
    }
}

fn garbage(codec: &dyn Codec) {
    let mut rng = Rng::new(99);
    for i in 0..400u64 {
        let n = if i % 50 == 0 {
            3000
        } else {
            rng.below(80) as usize
        };
        let mut junk = random_bytes(i, n);
        // Version-, width- and layout-like leading bytes get junk past header checks.
        if let Some(first) = junk.first_mut() {
            *first %= 4;
        }
        if let Some(second) = junk.get_mut(1) {
            *second = [1, 2, 4, 8, 3][(i % 5) as usize];
        }
        if let Some(third) = junk.get_mut(2) {
            *third %= 3;
        }
        for len in [0, 1, 7, 64, 1000, 100_000] {
            decode_must_be_sound(codec, &junk, len, &format!("garbage #{i} as {len} bytes"));
        }
    }
}
