//! The GGUF reader and the reference quantizers against llama.cpp's own Python package
//! (`gguf` from PyPI, pinned in `scripts/test-requirements.txt`), never against a writer
//! of ours: `tests/py/gguf_reference.py` writes GGUF files with `gguf.GGUFWriter`, and
//! quantizations with `gguf.quants.quantize` and `dequantize`, and describes them in
//! `description.json`.
//!
//! Needs `HAAGENTI_TEST_PYTHON` (set by `cargo xtask test`), or `HAAGENTI_SKIP_PYTHON=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use haagenti_core::gguf::quant::{self, LegacyQuant, f32_to_f16_numpy};
use haagenti_core::gguf::{
    GgmlType, GgufArray, GgufHeader, GgufPiece, GgufValue, read_header, read_header_from,
};
use serde_json::{Value, json};

/// The script's output directory, made once for all tests; `None` when skipping.
fn reference(test: &str) -> Option<&'static Path> {
    static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();
    let python = haagenti_testkit::env::test_python(test)?;
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/gguf_reference.py");
        let out = Command::new(&python)
            .arg(&script)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
        Some(dir)
    })
    .as_ref()
    .map(|d| d.path())
}

fn description(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("description.json")).unwrap()).unwrap()
}

fn f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A value in the script's JSON form: floats as bit patterns, arrays with their
/// element type.
fn describe(v: &GgufValue) -> Value {
    let value = match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F32(x) => json!(x.to_bits()),
        GgufValue::F64(x) => json!(x.to_bits()),
        GgufValue::Bool(x) => json!(x),
        GgufValue::String(_) => json!(v.as_str().expect("gguf-py writes UTF-8")),
        GgufValue::Array(a) => return describe_array(a),
    };
    json!({"type": v.value_type().name(), "value": value})
}

fn describe_array(a: &GgufArray) -> Value {
    let elements: Vec<Value> = match a {
        GgufArray::U8(v) => v.iter().map(|x| json!(x)).collect(),
        GgufArray::I8(v) => v.iter().map(|x| json!(x)).collect(),
        GgufArray::U16(v) => v.iter().map(|x| json!(x)).collect(),
        GgufArray::I16(v) => v.iter().map(|x| json!(x)).collect(),
        GgufArray::U32(v) => v.iter().map(|x| json!(x)).collect(),
        GgufArray::I32(v) => v.iter().map(|x| json!(x)).collect(),
        GgufArray::U64(v) => v.iter().map(|x| json!(x)).collect(),
        GgufArray::I64(v) => v.iter().map(|x| json!(x)).collect(),
        GgufArray::F32(v) => v.iter().map(|x| json!(x.to_bits())).collect(),
        GgufArray::F64(v) => v.iter().map(|x| json!(x.to_bits())).collect(),
        GgufArray::Bool(v) => v.iter().map(|x| json!(x)).collect(),
        GgufArray::String(v) => v
            .iter()
            .map(|s| json!(std::str::from_utf8(s).expect("gguf-py writes UTF-8")))
            .collect(),
        GgufArray::Array(v) => v.iter().map(describe_array).collect(),
    };
    json!({"type": "ARRAY", "elem": a.element_type().name(), "value": elements})
}

/// Cuts the file into the header's pieces and puts it back together.
fn rebuild(h: &GgufHeader, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for p in &h.pieces {
        let r = match p {
            GgufPiece::Metadata(r) => {
                assert_eq!(r.end, h.metadata_len());
                out.extend_from_slice(&h.raw);
                continue;
            }
            GgufPiece::Padding(r) => {
                let pad = &bytes[r.start as usize..r.end as usize];
                assert!(pad.iter().all(|&b| b == 0), "gguf-py pads with zeros");
                assert!(r.end - r.start < u64::from(h.alignment).max(1));
                r.clone()
            }
            GgufPiece::Tensor(i) => h.tensors[*i].range(),
        };
        out.extend_from_slice(&bytes[r.start as usize..r.end as usize]);
    }
    out
}

#[test]
fn reads_every_file_gguf_py_writes() {
    let Some(dir) = reference("reads_every_file_gguf_py_writes") else {
        return;
    };
    let desc = description(dir);
    let files = desc["files"].as_array().unwrap();
    assert!(files.len() >= 6);
    let mut tensors = 0;
    for f in files {
        let path = dir.join(f["file"].as_str().unwrap());
        let t0 = std::time::Instant::now();
        let h = read_header(&path).unwrap();
        eprintln!(
            "{}: metadata of {} bytes read in {:?}",
            f["file"],
            h.metadata_len(),
            t0.elapsed()
        );
        let name = path.display();
        assert_eq!(h.version, 3, "{name}");
        assert_eq!(
            u64::from(h.alignment),
            f["alignment"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(h.data_start, f["data_start"].as_u64().unwrap(), "{name}");
        let kvs: Vec<Value> = h
            .kvs
            .iter()
            .map(|kv| {
                let mut d = describe(&kv.value);
                d["key"] = json!(kv.key);
                d
            })
            .collect();
        assert_eq!(Value::Array(kvs), f["kvs"], "{name}: key-values");
        let expected = f["tensors"].as_array().unwrap();
        assert_eq!(h.tensors.len(), expected.len(), "{name}");
        for (t, e) in h.tensors.iter().zip(expected) {
            let got = json!({
                "name": t.name,
                "dims": t.dims,
                "type": t.ggml_type.id(),
                "start": t.start,
                "len": t.len,
                "n_elements": t.n_elements(),
            });
            assert_eq!(&got, e, "{name}: tensor");
        }
        tensors += h.tensors.len();

        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(rebuild(&h, &bytes), bytes, "{name}: cut and rebuilt");
        // The same file as version 2 (the same layout).
        let mut v2 = bytes.clone();
        v2[4..8].copy_from_slice(&2u32.to_le_bytes());
        let h2 = read_header_from(&mut &v2[..], v2.len() as u64, &path).unwrap();
        assert_eq!(
            (h2.version, h2.tensors, h2.pieces),
            (2, h.tensors.clone(), h.pieces.clone())
        );
        // Every cut inside the metadata and its padding is refused (every byte of the
        // first 4 KiB, then 100 spread over the rest), as is dropping the last tensor's
        // last byte.
        let last_end = h
            .tensors
            .iter()
            .map(|t| t.end())
            .max()
            .unwrap_or(h.data_start);
        let stride = (h.data_start / 100).max(1) as usize;
        let cuts = (0..h.data_start.min(4096))
            .chain((4096..h.data_start).step_by(stride))
            .chain([h.data_start - 1, last_end.saturating_sub(1)]);
        for len in cuts {
            if len as usize >= bytes.len() || (len >= h.data_start && h.tensors.is_empty()) {
                continue;
            }
            let cut = &bytes[..len as usize];
            let e = read_header_from(&mut &cut[..], len, &path).unwrap_err();
            assert!(
                e.to_string().contains("invalid GGUF file"),
                "{name} cut at {len}: {e}"
            );
        }
    }
    eprintln!(
        "{} gguf-py files, {tensors} tensors read, rebuilt and cut",
        files.len()
    );
}

fn types_of(name: &str) -> GgmlType {
    *GgmlType::ALL.iter().find(|t| t.name() == name).unwrap()
}

#[test]
fn ggml_type_table_matches_gguf_py() {
    let Some(dir) = reference("ggml_type_table_matches_gguf_py") else {
        return;
    };
    let desc = description(dir);
    let sizes = desc["quant_sizes"].as_object().unwrap();
    assert_eq!(sizes.len(), GgmlType::ALL.len(), "{sizes:?}");
    for (name, v) in sizes {
        let t = GgmlType::from_id(v[0].as_u64().unwrap() as u32)
            .unwrap_or_else(|| panic!("{name} unknown"));
        assert_eq!(t.name(), name);
        assert_eq!(types_of(name), t);
        assert_eq!(json!([t.id(), t.block_size(), t.type_size()]), *v, "{name}");
    }
}

const TYPES: [&str; 8] = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F32", "F16", "BF16"];

fn cases(dir: &Path) -> Vec<(String, PathBuf)> {
    let desc = description(dir);
    desc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let path = dir.join(&name);
            (name, path)
        })
        .collect()
}

#[test]
fn quantizers_match_gguf_py_byte_for_byte() {
    let Some(dir) = reference("quantizers_match_gguf_py_byte_for_byte") else {
        return;
    };
    let mut blocks = 0;
    let cases = cases(dir);
    for (case, base) in &cases {
        let values = f32s(&base.with_extension("f32"));
        for ty in TYPES {
            let t = types_of(ty);
            let expected = std::fs::read(base.with_extension(format!("{ty}.q"))).unwrap();
            let ours = quant::quantize(t, &values).unwrap();
            assert_eq!(ours.len(), expected.len(), "{case} {ty}");
            if ours != expected {
                let bb = t.type_size() as usize;
                let bs = t.block_size() as usize;
                let bad = (0..ours.len() / bb)
                    .filter(|&b| ours[b * bb..(b + 1) * bb] != expected[b * bb..(b + 1) * bb])
                    .collect::<Vec<_>>();
                let b = bad[0];
                panic!(
                    "{case} {ty}: {} of {} blocks differ; block {b}: input {:?}\n ours {:?}\n gguf {:?}",
                    bad.len(),
                    ours.len() / bb,
                    &values[b * bs..(b + 1) * bs],
                    &ours[b * bb..(b + 1) * bb],
                    &expected[b * bb..(b + 1) * bb]
                );
            }
            if LegacyQuant::from_ggml(t).is_some() {
                blocks += values.len() / 32;
            }
        }
    }
    eprintln!(
        "{} cases, {blocks} legacy blocks equal to gguf-py's",
        cases.len()
    );
}

#[test]
fn dequantizers_match_gguf_py() {
    let Some(dir) = reference("dequantizers_match_gguf_py") else {
        return;
    };
    for (case, base) in cases(dir) {
        for ty in TYPES {
            let t = types_of(ty);
            let q = std::fs::read(base.with_extension(format!("{ty}.q"))).unwrap();
            let expected = f32s(&base.with_extension(format!("{ty}.deq")));
            let ours = quant::dequantize(t, &q).unwrap();
            assert_eq!(ours.len(), expected.len(), "{case} {ty}");
            for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{case} {ty} element {i}: ours {a:e} gguf-py {b:e}"
                );
            }
        }
    }
}

#[test]
fn fp16_scales_round_like_numpy() {
    let Some(dir) = reference("fp16_scales_round_like_numpy") else {
        return;
    };
    let input = std::fs::read(dir.join("f16.in")).unwrap();
    let output = std::fs::read(dir.join("f16.out")).unwrap();
    assert_eq!(input.len(), output.len() * 2);
    for (i, o) in input.chunks_exact(4).zip(output.chunks_exact(2)) {
        let bits = u32::from_le_bytes([i[0], i[1], i[2], i[3]]);
        let expected = u16::from_le_bytes([o[0], o[1]]);
        assert_eq!(
            f32_to_f16_numpy(f32::from_bits(bits)),
            expected,
            "{bits:#010x}"
        );
    }
}
