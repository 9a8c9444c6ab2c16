//! The checks behind each fuzz target. Every function takes the fuzzer's bytes, must
//! never panic on its own account, and asserts the invariants a correct decoder keeps
//! (a panic inside an `assert!` here is a finding, like any other crash).
//!
//! An input that crashes a target is kept as a regular test, calling the same public
//! API with the input inline: a case of `crates/haagenti-core/tests/hostile.rs` for the
//! header, manifest and object targets, the codec crate's tests for codec targets. When
//! the crash is this file's own oracle expecting too much, the oracle is fixed here and
//! the case becomes a test of what the library does instead. The one crash so far:
//! `stored_object`, December 2026, a delta whose base is the fragment itself (in
//! `hostile.rs`). See `docs/guarantees.md`, *Fuzzing*, for the campaigns run.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use haagenti_core::codec::MAX_DECODED_LEN;
use haagenti_core::gguf;
use haagenti_core::internals::{self as object, ObjectHeader};
use haagenti_core::safetensors::read_header_from;
use haagenti_core::store::FragmentStore;
use haagenti_core::{
    Codec, CodecPolicy, CodecRegistry, Dtype, EncodeHint, Encoding, FragmentId, FragmentLibrary,
    LibraryConfig, MemoryStore, ModelManifest, ObjectKey, RawCodec, cast,
};

/// Every codec the project ships, in tag order.
pub fn codecs() -> Vec<Arc<dyn Codec>> {
    vec![
        Arc::new(RawCodec),
        Arc::new(haagenti_codec::Lz4Codec),
        Arc::new(haagenti_codec::ZstdCodec::default()),
        Arc::new(haagenti_codec::PlanesCodec),
    ]
}

/// Decoded lengths asked of codecs stay below this (fast iterations, still many blocks).
const FUZZ_MAX_LEN: usize = 1 << 20;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
});

/// Splits the first `n` bytes off `data` (fewer if it is shorter).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

fn byte(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

fn u16_le(data: &mut &[u8]) -> u16 {
    let b = take(data, 2);
    u16::from(b.first().copied().unwrap_or(0)) | u16::from(b.get(1).copied().unwrap_or(0)) << 8
}

fn u24_le(data: &mut &[u8]) -> usize {
    take(data, 3)
        .iter()
        .rev()
        .fold(0usize, |acc, &b| acc << 8 | usize::from(b))
}

/// Safetensors header parser. Mode byte even: the bytes are a whole file. Odd: the rest
/// after a u16 data length is the JSON, and the length prefix and a data region of that
/// length are made up around it, so the fuzzer works on the JSON validation.
pub fn safetensors_header(mut data: &[u8]) {
    let mode = byte(&mut data);
    let file: Vec<u8> = if mode & 1 == 0 {
        data.to_vec()
    } else {
        let data_len = usize::from(u16_le(&mut data));
        let mut f = (data.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(data);
        f.resize(f.len() + data_len, 0xA5);
        f
    };
    let Ok(h) = read_header_from(&mut &file[..], file.len() as u64, Path::new("fuzz")) else {
        return;
    };
    // Accepted headers describe the file exactly: tensors tile the data region, each
    // spanning what its shape and dtype say.
    assert_eq!(h.raw[..], file[..h.raw.len()]);
    let mut cursor = h.data_start();
    for t in &h.tensors {
        assert_eq!(t.start, cursor, "tensors must tile the data region");
        let bytes = t
            .shape
            .iter()
            .try_fold(t.dtype.size() as u64, |acc, &d| acc.checked_mul(d));
        assert_eq!(bytes, Some(t.len()), "tensor {:?}", t.name);
        cursor = t.end;
    }
    assert_eq!(cursor, file.len() as u64);
}

/// GGUF header reader. Mode byte even: the bytes are a whole file. Odd: a u16 data
/// length, a tensor count and a key-value count (a byte each), then the key-values and
/// tensor infos; the fixed header (version 2 or 3 by the mode) and a data region of that
/// length are made up around them, so the fuzzer works on the metadata.
pub fn gguf_header(mut data: &[u8]) {
    let mode = byte(&mut data);
    let file: Vec<u8> = if mode & 1 == 0 {
        data.to_vec()
    } else {
        let data_len = usize::from(u16_le(&mut data));
        let n_tensors = u64::from(byte(&mut data) % 8);
        let n_kv = u64::from(byte(&mut data) % 8);
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&(2 + u32::from(mode >> 1 & 1)).to_le_bytes());
        f.extend_from_slice(&n_tensors.to_le_bytes());
        f.extend_from_slice(&n_kv.to_le_bytes());
        f.extend_from_slice(data);
        f.resize(f.len() + data_len, 0);
        f
    };
    let Ok(h) = gguf::read_header_from(&mut &file[..], file.len() as u64, Path::new("fuzz")) else {
        return;
    };
    // Accepted headers describe the file exactly: the metadata verbatim, every tensor
    // aligned and as long as its type and dimensions say, the pieces tiling the file.
    assert_eq!(h.raw[..], file[..h.raw.len()]);
    assert!(h.alignment.is_power_of_two());
    assert_eq!(h.data_start % u64::from(h.alignment), 0);
    assert!(h.data_start >= h.metadata_len() && h.data_start <= file.len() as u64);
    let mut names = std::collections::HashSet::new();
    for t in &h.tensors {
        assert!(names.insert(&t.name), "tensor {:?} twice", t.name);
        assert!(t.name.len() <= 64 && t.dims.len() <= 4);
        assert_eq!(t.offset % u64::from(h.alignment), 0);
        assert_eq!(t.start, h.data_start + t.offset);
        let row = t.dims.first().copied().unwrap_or(1);
        let len = t.ggml_type.bytes_for(row).and_then(|r| {
            t.dims
                .iter()
                .skip(1)
                .try_fold(r, |acc, &d| acc.checked_mul(d))
        });
        assert_eq!(len, Some(t.len), "tensor {:?}", t.name);
    }
    let mut cursor = 0;
    let mut seen = 0;
    for p in &h.pieces {
        let r = match p {
            gguf::GgufPiece::Metadata(r) | gguf::GgufPiece::Padding(r) => r.clone(),
            gguf::GgufPiece::Tensor(i) => {
                seen += 1;
                h.tensors[*i].range()
            }
        };
        assert_eq!(r.start, cursor, "pieces must tile the file");
        cursor = r.end;
    }
    assert_eq!((cursor, seen), (file.len() as u64, h.tensors.len()));
}

/// Manifest decoder. Mode byte even: the bytes are a whole stored manifest. Odd: they
/// are the body, wrapped in a valid envelope so the fuzzer gets past the checksum.
pub fn manifest_decode(mut data: &[u8]) {
    let mode = byte(&mut data);
    let bytes: Vec<u8> = if mode & 1 == 0 {
        data.to_vec()
    } else {
        // Bodies of both manifest versions: 1 (no revision) and the current one.
        let version = if mode & 2 == 0 {
            haagenti_core::MANIFEST_FORMAT_VERSION
        } else {
            1
        };
        wrap_manifest_body(version, data)
    };
    // Salvage (no checksum) reads raw bytes too, bounded the same way; where the checksum
    // holds it agrees with decode.
    let salvaged = ModelManifest::salvage(&bytes, "fuzz");
    let Ok(manifest) = ModelManifest::decode(&bytes, "fuzz") else {
        return;
    };
    assert_eq!(salvaged.ok().as_ref(), Some(&manifest), "salvage disagrees");
    // What decodes re-encodes to something that decodes to the same encoding.
    let again = manifest.encode().expect("a decoded manifest encodes");
    let back = ModelManifest::decode(&again, "fuzz").expect("a re-encoded manifest decodes");
    assert_eq!(back.encode().expect("encodes"), again);
}

/// A stored manifest around `body`: magic, `version`, BLAKE3 of the body, body.
pub fn wrap_manifest_body(version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = haagenti_core::manifest::MANIFEST_MAGIC.to_vec();
    out.push(version);
    out.extend_from_slice(blake3_of(body).as_bytes());
    out.extend_from_slice(body);
    out
}

fn blake3_of(data: &[u8]) -> FragmentId {
    FragmentId::of(data)
}

/// Stored-object decoder: `decode_header` and `verify_checksum` on the raw bytes, then two
/// objects planted in a store and read through `FragmentLibrary::get_fragment`.
///
/// Layout: flags (1 byte), length of the first object (u16), the first object, the
/// second object (planted at the first one's dependency, if it has one). Both are sealed
/// (valid checksum) so decoding is reached. With flag bit 0 set, dependency ids are
/// patched to the hash of what the dependency decodes to and the first object is planted
/// under the id of its own decoding, so a consistent pair must read back exactly.
pub fn stored_object(mut data: &[u8]) {
    let _ = object::decode_header(data, "fuzz");
    let _ = object::verify_checksum(data, "fuzz");

    let flags = byte(&mut data);
    let first_len = usize::from(u16_le(&mut data));
    let mut first = take(&mut data, first_len).to_vec();
    let mut second = data.to_vec();
    seal(&mut second);
    if object::decode_header(&second, "fuzz").is_ok_and(|h| h.decoded_len > FUZZ_MAX_LEN as u64) {
        return; // see below
    }
    let registry = haagenti_codec::default_registry();
    let second_decoded = standalone_decoding(&registry, &second);

    let Ok(header) = object::decode_header(&first, "fuzz") else {
        return;
    };
    if header.decoded_len > FUZZ_MAX_LEN as u64 {
        // Valid up to 16 MiB, but zero-filling that much per input would starve the
        // fuzzer; `codec_decode` covers the length checks.
        return;
    }
    let consistent = flags & 1 == 1;
    if consistent && header.dependency().is_some() {
        if let Some(dep) = &second_decoded {
            first[32..64].copy_from_slice(FragmentId::of(dep).as_bytes());
        }
    }
    seal(&mut first);
    let Ok(header) = object::decode_header(&first, "fuzz") else {
        unreachable!("patching the id and the checksum keeps a header valid");
    };
    let expected = if consistent {
        expected_decoding(&registry, &first, &header, second_decoded.as_deref())
            // One that decodes to its own dependency's bytes would be planted under its
            // dependency's id, naming itself: the library refuses that as corrupt (a
            // dependency must have none itself), which is right, not a finding.
            .filter(|bytes| header.dependency() != Some(FragmentId::of(bytes)))
    } else {
        None
    };
    let id = match &expected {
        Some(bytes) => FragmentId::of(bytes),
        None => FragmentId::of(b"fuzz: planted object"),
    };

    let store = Arc::new(MemoryStore::new());
    let lib = FragmentLibrary::new(store.clone(), registry, LibraryConfig::default())
        .expect("default config is valid");
    RUNTIME.block_on(async {
        store
            .put(&ObjectKey::fragment(&id), Bytes::from(first))
            .await
            .expect("memory put");
        if let Some(dep) = header.dependency() {
            store
                .put(&ObjectKey::fragment(&dep), Bytes::from(second))
                .await
                .expect("memory put");
        }
        let info = lib.fragment_info(&id).await;
        assert!(matches!(info, Ok(Some(_))), "{info:?}");
        let got = lib.get_fragment(&id).await.map(|f| f.data);
        match (&expected, got) {
            (Some(want), Ok(got)) => assert_eq!(&got[..], &want[..]),
            (Some(_), Err(e)) => panic!("a consistent object failed to read: {e}"),
            (None, Ok(got)) => assert_eq!(FragmentId::of(&got), id),
            (None, Err(_)) => {}
        }
    });
}

/// Seals `object` (valid checksum) when it is long enough to hold one.
fn seal(object: &mut [u8]) {
    if object.len() >= 32 {
        object::seal(object);
    }
}

/// What a standalone object decodes to, if it is a valid one.
fn standalone_decoding(registry: &CodecRegistry, raw: &[u8]) -> Option<Vec<u8>> {
    let header = object::decode_header(raw, "fuzz").ok()?;
    let Encoding::Standalone { codec } = header.encoding else {
        return None;
    };
    object::verify_checksum(raw, "fuzz").ok()?;
    let payload = raw.get(header.header_len..)?;
    registry
        .get(codec)?
        .decode_to_vec(payload, usize::try_from(header.decoded_len).ok()?)
        .ok()
}

/// The bytes a sealed object must read back as, from the format description alone
/// (docs/format.md), given what its dependency decodes to.
fn expected_decoding(
    registry: &CodecRegistry,
    raw: &[u8],
    header: &ObjectHeader,
    dependency: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let len = usize::try_from(header.decoded_len).ok()?;
    let payload = raw.get(header.header_len..)?;
    match (header.encoding, dependency) {
        (Encoding::Standalone { .. }, _) => standalone_decoding(registry, raw),
        (Encoding::Delta { codec, .. }, Some(base)) => {
            let mut xor = registry.get(codec)?.decode_to_vec(payload, len).ok()?;
            if xor.len() != base.len() {
                return None;
            }
            xor.iter_mut().zip(base).for_each(|(x, b)| *x ^= b);
            Some(xor)
        }
        (Encoding::Cast { from, to, .. }, Some(source)) => {
            cast::convert(source, from, to).filter(|v| v.len() == len)
        }
        (
            Encoding::CastDelta {
                codec, from, to, ..
            },
            Some(source),
        ) => {
            let base = cast::convert(source, from, to).filter(|v| v.len() == len)?;
            let mut xor = registry.get(codec)?.decode_to_vec(payload, len).ok()?;
            if xor.len() != base.len() {
                return None;
            }
            xor.iter_mut().zip(&base).for_each(|(x, b)| *x ^= b);
            Some(xor)
        }
        (Encoding::Quant { from, to, .. }, Some(source)) => {
            quantized(source, from, to).filter(|v| v.len() == len)
        }
        (
            Encoding::QuantDelta {
                codec, from, to, ..
            },
            Some(source),
        ) => {
            let base = quantized(source, from, to).filter(|v| v.len() == len)?;
            let mut xor = registry.get(codec)?.decode_to_vec(payload, len).ok()?;
            if xor.len() != base.len() {
                return None;
            }
            xor.iter_mut().zip(&base).for_each(|(x, b)| *x ^= b);
            Some(xor)
        }
        _ => None,
    }
}

/// The reference quantization of a float source (docs/format.md, encoding 4).
fn quantized(
    source: &[u8],
    from: haagenti_core::Dtype,
    to: haagenti_core::LegacyQuant,
) -> Option<Vec<u8>> {
    use haagenti_core::Dtype;
    if !matches!(from, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return None;
    }
    let mut values = Vec::new();
    cast::decode_values(source, from, &mut values)?;
    to.quantize(&values)
}

/// Every codec's decoder on raw bytes: codec selector (1 byte), decoded length (u24,
/// below 1 MiB), payload. Success must produce exactly the declared length.
pub fn codec_decode(mut data: &[u8]) {
    let codecs = codecs();
    let codec = &codecs[usize::from(byte(&mut data)) % codecs.len()];
    let len = u24_le(&mut data) % FUZZ_MAX_LEN;
    if let Ok(out) = codec.decode_to_vec(data, len) {
        assert_eq!(out.len(), len, "{}", codec.name());
    }
    // Appending after existing bytes leaves them alone.
    let mut out = vec![0x5A; 3];
    if codec.decode(data, len, &mut out).is_ok() {
        assert_eq!(out.len(), 3 + len, "{}", codec.name());
        assert_eq!(out[..3], [0x5A; 3], "{}", codec.name());
    }
}

/// Encode, then damage, then decode: codec selector, dtype tag, policy, mutation count
/// (each mutation: u16 position, xor byte), a length lie (i8), then the input. The
/// undamaged encoding must decode to the input exactly; damaged ones and lying lengths
/// must fail cleanly or produce exactly the declared length.
pub fn codec_roundtrip(mut data: &[u8]) {
    let codecs = codecs();
    let codec = &codecs[usize::from(byte(&mut data)) % codecs.len()];
    let dtype = Dtype::from_tag(byte(&mut data) % 16);
    let policy = match byte(&mut data) % 3 {
        0 => CodecPolicy::Fast,
        1 => CodecPolicy::Balanced,
        _ => CodecPolicy::Max,
    };
    let mutations: Vec<(usize, u8)> = (0..byte(&mut data) % 8)
        .map(|_| (usize::from(u16_le(&mut data)), byte(&mut data)))
        .collect();
    let lie = byte(&mut data) as i8;
    let input = data;
    let encoded = codec
        .encode_to_vec(input, EncodeHint { dtype, policy })
        .expect("encoding never fails");
    let decoded = codec
        .decode_to_vec(&encoded, input.len())
        .unwrap_or_else(|e| panic!("{}: own encoding does not decode: {e}", codec.name()));
    assert!(
        decoded == input,
        "{}: round trip changed the bytes",
        codec.name()
    );

    let mut damaged = encoded;
    if !damaged.is_empty() {
        for &(pos, x) in &mutations {
            let at = pos % damaged.len();
            damaged[at] ^= x;
        }
    }
    let len = input
        .len()
        .saturating_add_signed(isize::from(lie))
        .min(MAX_DECODED_LEN);
    if let Ok(out) = codec.decode_to_vec(&damaged, len) {
        assert_eq!(out.len(), len, "{}", codec.name());
    }
}

/// Similarity index segments: arbitrary bytes, or bytes given a valid segment header
/// and checksum (so the fuzzer reaches the entry parser). A segment that loads must
/// serialize back to one that loads to the same entries.
pub fn index_segment(mut data: &[u8]) {
    use haagenti_lsh::{IndexConfig, SEGMENT_MAGIC, SEGMENT_VERSION, SimilarityIndex};
    let mode = byte(&mut data);
    let config = IndexConfig::cosine();
    let bytes: Vec<u8> = if mode & 1 == 0 {
        data.to_vec()
    } else {
        let mut seg = SEGMENT_MAGIC.to_vec();
        seg.push(SEGMENT_VERSION);
        seg.extend_from_slice(&config.scheme.to_le_bytes());
        seg.extend_from_slice(&(config.bits as u16).to_le_bytes());
        let per_entry = 32 + 8 + config.bits as usize / 8;
        seg.extend_from_slice(&((data.len() / per_entry) as u32).to_le_bytes());
        seg.extend_from_slice(data);
        let sum = blake3_of(&seg);
        seg.extend_from_slice(&sum.0[..8]);
        seg
    };
    let Ok(mut index) = SimilarityIndex::new(config) else {
        return;
    };
    if index.load_segment(&bytes).is_err() {
        assert!(index.is_empty(), "a rejected segment changed the index");
        return;
    }
    let again = index.to_bytes();
    let back = SimilarityIndex::from_bytes(config, &again).expect("a written segment loads");
    assert_eq!(back.len(), index.len());
    assert_eq!(back.to_bytes(), again);
}

// `haagenti serve`'s `Range` header parser, included as a file: it depends on nothing but
// `core`, so the fuzz crate does not build the CLI.
#[path = "../../crates/haagenti-cli/src/serve/range.rs"]
mod http_range_parser;

/// `haagenti serve`'s `Range` parser on any header, for a size taken from the first eight
/// bytes (and small and empty sizes): never a panic, and a partial range lies inside the
/// file.
pub fn http_range(data: &[u8]) {
    let (size, header) = match data.split_first_chunk::<8>() {
        Some((s, rest)) => (u64::from_le_bytes(*s), rest),
        None => (0, data),
    };
    for size in [size, size % 4096, 0, u64::MAX] {
        if let http_range_parser::RangeRequest::Partial { start, end } =
            http_range_parser::parse(header, size)
        {
            assert!(start < end && end <= size, "{start}..{end} of {size}");
        }
    }
}
