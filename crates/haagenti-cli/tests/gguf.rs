//! GGUF files through the CLI: quant sets written by llama.cpp's own gguf-py (not ours)
//! round-trip bit-exactly and store as issue 16 asks; hostile files are refused with a
//! message naming the problem and change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};

use common::{haagenti, json, objects, ok, run_python};

/// The quant set of `tests/py/gguf_quant_set.py`, in the order the tests ingest it.
const SET: [&str; 6] = ["F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"];

/// Writes the quant set (and the F16 tensors as safetensors, `st/model.safetensors`)
/// under `dir`; `None` only when `HAAGENTI_SKIP_PYTHON=1` asked for the skip.
fn quant_set(test: &str, dir: &Path) -> Option<()> {
    let python = haagenti_testkit::env::test_python(test)?;
    run_python(
        &python,
        "gguf_quant_set.py",
        &[dir.to_str().unwrap().to_string()],
        &[],
    );
    Some(())
}

fn gguf(dir: &Path, q: &str) -> PathBuf {
    dir.join(format!("model-{q}.gguf"))
}

fn stored(lib: &Path) -> u64 {
    json(lib, &["stats", "--json"])["stored_bytes"]
        .as_u64()
        .unwrap()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// Ingests `path` as `model` and returns the bytes it added to the library.
fn ingest(lib: &Path, model: &str, path: &Path) -> u64 {
    let before = if lib.join("manifests").exists() {
        stored(lib)
    } else {
        0
    };
    ok(lib, &["ingest", "--model", model, path.to_str().unwrap()]);
    stored(lib) - before
}

/// Exports `model` and checks that `file` comes back bit for bit.
fn assert_round_trip(lib: &Path, model: &str, source: &Path, out: &Path) {
    let dest = out.join(model);
    ok(
        lib,
        &["export", "--model", model, "--out", dest.to_str().unwrap()],
    );
    let name = source.file_name().unwrap();
    let got = std::fs::read(dest.join(name)).unwrap();
    assert!(
        got == std::fs::read(source).unwrap(),
        "{model}: exported {} differs from the source",
        name.to_string_lossy()
    );
    ok(lib, &["verify", "--model", model]);
}

/// What each file costs stored alone in a library of its own.
fn alone(dir: &Path, tmp: &Path) -> Vec<u64> {
    SET.iter()
        .map(|q| ingest(&tmp.join(format!("alone-{q}")), q, &gguf(dir, q)))
        .collect()
}

#[test]
fn quant_set_f16_first_round_trips_and_stores_small() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("set");
    if quant_set("quant_set_f16_first_round_trips_and_stores_small", &dir).is_none() {
        return;
    }
    let lib = tmp.path().join("lib");
    let mut raw = 0;
    for q in SET {
        let file = gguf(&dir, q);
        let added = ingest(&lib, q, &file);
        raw += size(&file);
        let pct = 100.0 * added as f64 / size(&file) as f64;
        eprintln!("{q}: {} bytes, added {added} ({pct:.2}%)", size(&file));
        if q != "F16" {
            assert!(pct <= 2.0, "{q} adds {pct:.2}% of its size (at most 2%)");
        }
    }
    let total = stored(&lib);
    let ratio = raw as f64 / total as f64;
    eprintln!("quant set F16 first: {raw} raw, {total} stored, {ratio:.2}x");
    assert!(
        ratio >= 3.0,
        "the quant set stores at {ratio:.2}x (at least 3.0x)"
    );
    // The savings of quant-derived fragments are counted apart.
    let stats = json(&lib, &["stats", "--json"]);
    assert!(
        stats["savings"]["quant_bytes"].as_u64().unwrap() > raw / 2,
        "{stats}"
    );
    for q in SET {
        assert_round_trip(&lib, q, &gguf(&dir, q), &tmp.path().join("out"));
    }
    // `show` names the quant types of the tensors.
    let show = json(&lib, &["show", "--model", "Q4_0", "--json"]);
    let file = &show["files"][0];
    assert_eq!(file["kind"], "gguf");
    let types: Vec<&str> = file["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ggml_type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"Q4_0") && types.contains(&"F32"),
        "{types:?}"
    );
    let quant_refs = file["fragments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["encoding"]
                .as_str()
                .unwrap()
                .starts_with("quant F16->Q4_0")
        })
        .count();
    assert!(quant_refs > 0, "{file}");
    assert!(show["savings"]["quant"]["fragments"].as_u64().unwrap() > 0);
    // `compare` counts them as quant-derived from the F16 model.
    let cmp = json(
        &lib,
        &["compare", "--model", "Q4_0", "--model", "F16", "--json"],
    );
    let quant = cmp["a_against_b"]["quant"]["bytes"].as_u64().unwrap();
    assert!(quant > size(&gguf(&dir, "Q4_0")) / 2, "{cmp}");
    assert_quant_meets_float(&lib, "Q4_0", "F16");
}

/// `similar` finds the F16 tensor for a quantized one: quantized fragments are signed
/// over their dequantized values.
fn assert_quant_meets_float(lib: &Path, quant_model: &str, float_model: &str) {
    let similar = json(
        lib,
        &[
            "similar",
            "--model",
            quant_model,
            "--tensor",
            "blk.0.ffn_up.weight",
            "--json",
        ],
    );
    let t = &similar["tensors"][0];
    assert_eq!(t["dtype"], quant_model, "{similar}");
    let m = t["matches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == float_model)
        .unwrap_or_else(|| panic!("no match in {float_model}: {similar}"));
    assert_eq!(m["tensor"], "blk.0.ffn_up.weight");
    assert!(m["cosine"].as_f64().unwrap() > 0.95, "{similar}");
}

/// A quantized file that differs from the reference quantization in a few blocks (as
/// another quantizer's rounding would) is stored as a small correction against it.
#[test]
fn a_quant_from_another_quantizer_is_stored_as_a_correction() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("set");
    if quant_set(
        "a_quant_from_another_quantizer_is_stored_as_a_correction",
        &dir,
    )
    .is_none()
    {
        return;
    }
    let lib = tmp.path().join("lib");
    ingest(&lib, "F16", &gguf(&dir, "F16"));
    // Q8_0 with one quant byte changed in every 1000th block of every quantized tensor.
    let source = gguf(&dir, "Q8_0");
    let header = haagenti_core::gguf::read_header(&source).unwrap();
    let mut bytes = std::fs::read(&source).unwrap();
    let mut changed = 0;
    for t in &header.tensors {
        if t.ggml_type != haagenti_core::gguf::GgmlType::Q8_0 {
            continue;
        }
        for block in (0..t.len / 34).step_by(1000) {
            let at = (t.start + block * 34 + 2 + 5) as usize;
            bytes[at] = bytes[at].wrapping_add(1);
            changed += 1;
        }
    }
    assert!(changed > 10);
    let other = tmp.path().join("other-Q8_0.gguf");
    std::fs::write(&other, &bytes).unwrap();
    let added = ingest(&lib, "other", &other);
    let pct = 100.0 * added as f64 / size(&other) as f64;
    eprintln!("{changed} blocks differ: added {added} ({pct:.2}%)");
    assert!(pct <= 5.0, "the corrected quant adds {pct:.2}%");
    let show = json(&lib, &["show", "--model", "other", "--json"]);
    let corrections = show["files"][0]["fragments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["encoding"]
                .as_str()
                .unwrap()
                .contains("vs quant F16->Q8_0")
        })
        .count();
    assert!(corrections > 0, "{show}");
    assert_round_trip(&lib, "other", &other, &tmp.path().join("out"));
}

#[test]
fn quant_set_quants_first_is_never_worse_than_each_file_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("set");
    if quant_set(
        "quant_set_quants_first_is_never_worse_than_each_file_alone",
        &dir,
    )
    .is_none()
    {
        return;
    }
    let alone = alone(&dir, tmp.path());
    let lib = tmp.path().join("lib");
    let mut total = 0;
    for (i, q) in SET.iter().enumerate().rev() {
        let added = ingest(&lib, q, &gguf(&dir, q));
        eprintln!("{q}: added {added}, alone {}", alone[i]);
        assert!(added <= alone[i], "{q}: added {added} > alone {}", alone[i]);
        total += added;
    }
    let raw: u64 = SET.iter().map(|q| size(&gguf(&dir, q))).sum();
    eprintln!(
        "quant set quants first: {raw} raw, {total} stored, {:.2}x",
        raw as f64 / total as f64
    );
    // Stored standalone, the quants still meet the F16 file in the similarity index.
    assert_quant_meets_float(&lib, "Q8_0", "F16");
    for q in SET {
        assert_round_trip(&lib, q, &gguf(&dir, q), &tmp.path().join("out"));
    }
}

#[test]
fn safetensors_and_gguf_f16_of_the_same_tensors_share_fragments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("set");
    if quant_set(
        "safetensors_and_gguf_f16_of_the_same_tensors_share_fragments",
        &dir,
    )
    .is_none()
    {
        return;
    }
    let st = dir.join("st/model.safetensors");
    let f16 = gguf(&dir, "F16");
    for (order, first, second) in [("st-first", &st, &f16), ("gguf-first", &f16, &st)] {
        let lib = tmp.path().join(order);
        ingest(&lib, "first", first);
        let added = ingest(&lib, "second", second);
        let pct = 100.0 * added as f64 / size(second) as f64;
        eprintln!("{order}: second adds {added} bytes ({pct:.2}%)");
        assert!(pct <= 2.0, "{order}: the second file adds {pct:.2}%");
        assert_round_trip(&lib, "first", first, &tmp.path().join(order));
        assert_round_trip(&lib, "second", second, &tmp.path().join(order));
    }
}

/// A model directory holding a quant set (and other files) round-trips too, and its
/// quants are stored against the F16 file of the same ingest.
#[test]
fn a_model_directory_with_gguf_files_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("set");
    if quant_set("a_model_directory_with_gguf_files_round_trips", &dir).is_none() {
        return;
    }
    std::fs::write(dir.join("README.md"), "a quant set\n").unwrap();
    let lib = tmp.path().join("lib");
    ok(&lib, &["ingest", "--model", "set", dir.to_str().unwrap()]);
    let raw: u64 = SET.iter().map(|q| size(&gguf(&dir, q))).sum();
    let ratio = raw as f64 / stored(&lib) as f64;
    eprintln!("quant set in one directory: {ratio:.2}x");
    assert!(
        ratio >= 3.0,
        "the quant set directory stores at {ratio:.2}x"
    );
    let out = tmp.path().join("out");
    ok(
        &lib,
        &["export", "--model", "set", "--out", out.to_str().unwrap()],
    );
    for q in SET {
        let name = format!("model-{q}.gguf");
        assert!(
            std::fs::read(out.join(&name)).unwrap() == std::fs::read(dir.join(&name)).unwrap(),
            "{name} differs"
        );
    }
    ok(&lib, &["verify", "--model", "set"]);
}

// ---- hostile files -------------------------------------------------------------------

use haagenti_testkit::gguf::{file, kv, string, tensor_info};

fn name_kv() -> Vec<u8> {
    let mut v = Vec::new();
    string(&mut v, b"tiny");
    kv("general.name", 8, &v)
}

/// An F32 [4] at 0 and a Q8_0 of 2 rows of 32 at 32.
fn valid() -> Vec<u8> {
    file(
        3,
        &[name_kv(), kv("x.count", 4, &7u32.to_le_bytes())],
        &[
            tensor_info("a", &[4], 0, 0),
            tensor_info("b.weight", &[32, 2], 8, 32),
        ],
        32,
        32 + 68,
    )
}

/// Every hostile case: a name, the file, and what the message must say.
fn hostile_cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let good = valid();
    let mut cases: Vec<(String, Vec<u8>, &'static str)> = Vec::new();
    // Truncated at every section: in the fixed header, in a key, in a value, in a tensor
    // info, in the padding and in the data.
    let kv_start = 24;
    let infos_start = kv_start + name_kv().len() + kv("x.count", 4, &[0; 4]).len();
    for (what, cut) in [
        ("fixed header", 10),
        ("key", kv_start + 3),
        ("value", kv_start + name_kv().len() - 2),
        ("tensor info", infos_start + 5),
        ("data", good.len() - 1),
    ] {
        let says = if what == "data" {
            "runs past the end of the file"
        } else {
            "truncated"
        };
        cases.push((
            format!("truncated in the {what}"),
            good[..cut].to_vec(),
            says,
        ));
    }
    // Counts and lengths of 2^63.
    let mut tensors = good.clone();
    tensors[8..16].copy_from_slice(&(1u64 << 63).to_le_bytes());
    cases.push(("2^63 tensors".into(), tensors, "tensor count"));
    let mut kvs = good.clone();
    kvs[16..24].copy_from_slice(&(1u64 << 63).to_le_bytes());
    cases.push(("2^63 key-values".into(), kvs, "key-value count"));
    let mut long = good.clone();
    long[kv_start..kv_start + 8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    cases.push(("2^63-byte key".into(), long, "exceeds the limit"));
    let mut array = kv("tokens", 9, &8u32.to_le_bytes());
    array.extend_from_slice(&(1u64 << 63).to_le_bytes());
    cases.push((
        "2^63-element array".into(),
        file(3, &[array], &[], 32, 0),
        "array of",
    ));
    // Bad alignment.
    cases.push((
        "alignment 3".into(),
        file(
            3,
            &[kv("general.alignment", 4, &3u32.to_le_bytes())],
            &[],
            32,
            0,
        ),
        "not a power of two",
    ));
    // Overlapping and out-of-range offsets, unaligned offsets.
    cases.push((
        "overlapping tensors".into(),
        file(
            3,
            &[],
            &[tensor_info("a", &[8], 0, 0), tensor_info("b", &[8], 0, 0)],
            32,
            64,
        ),
        "overlap",
    ));
    cases.push((
        "out-of-range offset".into(),
        file(3, &[], &[tensor_info("a", &[8], 0, 1 << 40)], 32, 32),
        "",
    ));
    cases.push((
        "unaligned offset".into(),
        file(3, &[], &[tensor_info("a", &[8], 0, 4)], 32, 64),
        "align",
    ));
    // Unknown tensor and value types.
    cases.push((
        "unknown ggml type".into(),
        file(3, &[], &[tensor_info("a", &[32], 99, 0)], 32, 64),
        "99",
    ));
    cases.push((
        "unknown value type".into(),
        file(3, &[kv("k", 77, &[0; 8])], &[], 32, 0),
        "unknown value type",
    ));
    // Dimension overflow.
    cases.push((
        "dimension overflow".into(),
        file(
            3,
            &[],
            &[tensor_info("a", &[1 << 40, 1 << 40], 0, 0)],
            32,
            0,
        ),
        "overflow",
    ));
    // Version 1.
    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    cases.push(("version 1".into(), v1, "version 1"));
    cases
}

#[test]
fn hostile_gguf_files_are_refused_with_the_problem_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // A library with a model in it: hostile input must leave it exactly as it is.
    let good = src.join("good.gguf");
    std::fs::write(&good, valid()).unwrap();
    ok(&lib, &["ingest", "--model", "good", good.to_str().unwrap()]);
    let before = objects(&lib);
    let models = ok(&lib, &["list"]);
    for (name, bytes, says) in hostile_cases() {
        let path = src.join("bad.gguf");
        std::fs::write(&path, &bytes).unwrap();
        // Alone, and inside a model directory next to a good file.
        let dir = src.join("dir");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.gguf"), valid()).unwrap();
        std::fs::write(dir.join("b.gguf"), &bytes).unwrap();
        for input in [&path, &dir] {
            let out = haagenti(&lib, &["ingest", "--model", "bad", input.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name}: {err}");
            assert!(!err.contains("panicked"), "{name}: {err}");
            assert!(
                err.contains("invalid GGUF file") && err.contains(".gguf") && err.contains(says),
                "{name}: message does not name the problem ({says:?}): {err}"
            );
        }
        assert_eq!(objects(&lib), before, "{name}: the library changed");
        assert_eq!(ok(&lib, &["list"]), models, "{name}");
    }
    // The good file still round-trips, and so does one with an empty tensor inside
    // the padding between two others, and one with a large gap before its data.
    assert_round_trip(&lib, "good", &good, &tmp.path().join("out"));
    let empty_inside = file(
        3,
        &[name_kv()],
        &[
            tensor_info("a", &[4], 0, 0),
            tensor_info("empty", &[0], 0, 32),
            tensor_info("c", &[8], 0, 64),
        ],
        32,
        96,
    );
    let mut big_gap = file(3, &[name_kv()], &[tensor_info("a", &[4], 0, 0)], 32, 0);
    big_gap.extend((0..100_000u32).map(|i| (i % 251) as u8));
    let data = big_gap.len() - 100_000;
    let mut far = file(3, &[name_kv()], &[tensor_info("a", &[4], 0, 99_968)], 32, 0);
    assert_eq!(far.len(), data);
    far.extend_from_slice(&big_gap[data..]);
    for (name, bytes) in [("empty-inside", empty_inside), ("big-gap", far)] {
        let path = src.join(format!("{name}.gguf"));
        std::fs::write(&path, &bytes).unwrap();
        ok(&lib, &["ingest", "--model", name, path.to_str().unwrap()]);
        assert_round_trip(&lib, name, &path, &tmp.path().join("out"));
    }
}
