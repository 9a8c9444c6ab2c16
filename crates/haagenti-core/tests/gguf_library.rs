//! GGUF files through the library API: every read path (random ranges over every piece
//! boundary, tensor reads, loading every tensor, export) returns the source bytes, for
//! metadata chunks, padding, empty tensors, chunked gaps, float fragments and
//! quant-derived fragments.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::sync::Arc;

use futures::TryStreamExt;
use haagenti_core::cast::f32_to_f16;
use haagenti_core::gguf::quant::LegacyQuant;
use haagenti_core::{FileContent, IngestOptions, MemoryStore, StoredKind};
use haagenti_testkit::gguf::{string, tensor_info};
use haagenti_testkit::library::test_library;
use haagenti_testkit::synth;

/// A GGUF v3 file: a long string key-value (several metadata chunks), then `tensors`
/// (name, dims innermost first, ggml type id, data) at 32-aligned offsets with `gap`
/// extra bytes of non-zero filler before the first one, and `tail` bytes after the last.
fn gguf(tensors: &[(&str, Vec<u64>, u32, Vec<u8>)], gap: usize, tail: usize) -> Vec<u8> {
    let mut kvs = Vec::new();
    string(&mut kvs, b"tokenizer.chat_template");
    kvs.extend_from_slice(&8u32.to_le_bytes());
    let template: Vec<u8> = (0..200_000u64)
        .map(|i| b'a' + ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) % 26) as u8)
        .collect();
    string(&mut kvs, &template);
    let mut offsets = Vec::new();
    let mut at = gap as u64;
    for (_, _, _, data) in tensors {
        offsets.push(at);
        at = (at + data.len() as u64).div_ceil(32) * 32;
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&kvs);
    for ((name, dims, ty, _), off) in tensors.iter().zip(&offsets) {
        out.extend_from_slice(&tensor_info(name, dims, *ty, *off));
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    let data_start = out.len();
    out.extend((0..gap).map(|i| (i % 7 + 1) as u8));
    for ((_, _, _, data), off) in tensors.iter().zip(&offsets) {
        out.resize(data_start + *off as usize, 0);
        out.extend_from_slice(data);
    }
    out.extend((0..tail).map(|i| (i % 5 + 1) as u8));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_path_rebuilds_gguf_files_and_quants_derive_from_floats() {
    let dir = tempfile::tempdir().unwrap();
    let lib = test_library(Arc::new(MemoryStore::new()));
    // A 512 x 256 weight (several fragments) in F16, and its Q8_0 reference quantization.
    let values: Vec<f32> = synth::normal_f32(7, 512 * 256, 0.0, 0.02);
    let f16: Vec<u8> = values
        .iter()
        .flat_map(|v| f32_to_f16(*v).to_le_bytes())
        .collect();
    let rounded: Vec<f32> = values
        .iter()
        .map(|v| haagenti_core::cast::f16_to_f32(f32_to_f16(*v)))
        .collect();
    let q8 = LegacyQuant::Q8_0.quantize(&rounded).unwrap();
    let norm = synth::f32_bytes(&synth::normal_f32(8, 256, 1.0, 0.1));
    let float_file = gguf(
        &[
            ("blk.0.ffn_up.weight", vec![256, 512], 1, f16.clone()),
            ("blk.0.empty", vec![0], 0, Vec::new()),
            ("blk.0.norm.weight", vec![256], 0, norm.clone()),
        ],
        10_016,
        5_000,
    );
    let quant_file = gguf(
        &[
            ("blk.0.ffn_up.weight", vec![256, 512], 8, q8),
            ("blk.0.norm.weight", vec![256], 0, norm),
        ],
        0,
        3,
    );
    let (fp, qp) = (
        dir.path().join("m-F16.gguf"),
        dir.path().join("m-Q8_0.gguf"),
    );
    std::fs::write(&fp, &float_file).unwrap();
    std::fs::write(&qp, &quant_file).unwrap();
    lib.ingest("f16", &fp, IngestOptions::default())
        .await
        .unwrap();
    let report = lib
        .ingest("q8", &qp, IngestOptions::default())
        .await
        .unwrap();
    assert!(report.quant_fragments > 0, "{report:?}");

    for (model, path, bytes) in [("f16", &fp, &float_file), ("q8", &qp, &quant_file)] {
        let manifest = lib.manifest(model).await.unwrap();
        let f = &manifest.files[0];
        let FileContent::Gguf { metadata, gaps, .. } = &f.content else {
            panic!("{model}: not stored as GGUF");
        };
        assert!(metadata.len() >= 2, "{model}: metadata in one chunk");
        if model == "f16" {
            assert!(gaps.len() >= 2, "{gaps:?}");
            let kinds: Vec<StoredKind> = manifest.objects.iter().map(|o| o.kind).collect();
            assert!(!kinds.contains(&StoredKind::Quant));
        } else {
            assert!(manifest.objects.iter().any(|o| o.kind == StoredKind::Quant));
        }
        let handle = lib.open_model(model).await.unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let reader = handle.file(name).unwrap();
        // Every piece boundary, straddled, and a spread of ranges.
        let mut cuts: Vec<u64> = vec![0, bytes.len() as u64];
        let mut at = 0u64;
        for r in metadata {
            at += u64::from(r.len);
            cuts.push(at);
        }
        for t in f.tensors() {
            cuts.extend([t.offset, t.offset + t.len]);
            let mut o = t.offset;
            for r in &t.fragments {
                o += u64::from(r.len);
                cuts.push(o);
            }
        }
        for g in gaps {
            cuts.extend([g.offset(), g.offset() + g.len()]);
        }
        for &c in &cuts {
            for (from, len) in [(c.saturating_sub(3), 7u64), (c.saturating_sub(1000), 2000)] {
                let len = len.min(bytes.len() as u64 - from);
                let got = reader.read_at(from, len).await.unwrap();
                assert!(
                    got[..] == bytes[from as usize..(from + len) as usize],
                    "{model}: bytes {from}+{len} differ"
                );
            }
        }
        let parts: Vec<bytes::Bytes> = reader
            .stream(0, bytes.len() as u64)
            .try_collect()
            .await
            .unwrap();
        let whole: Vec<u8> = parts.concat();
        assert!(&whole == bytes, "{model}: the whole file differs");
        // Tensor reads, one by one and all at once, across the padding between them.
        let all = handle.load_all().await.unwrap();
        assert_eq!(all.len(), f.tensors().len());
        for (t, loaded) in f.tensors().iter().zip(&all) {
            let one = handle.read_tensor(&t.name).await.unwrap();
            let expect = &bytes[t.offset as usize..(t.offset + t.len) as usize];
            assert!(one.to_bytes()[..] == *expect, "{model}: tensor {}", t.name);
            assert!(
                loaded.to_bytes()[..] == *expect,
                "{model}: loaded {}",
                t.name
            );
        }
    }
    let verified = lib.verify(None, None).await.unwrap();
    assert!(verified.is_ok(), "{verified:?}");
}
