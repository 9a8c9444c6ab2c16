//! The `haagenti` command's contract: exit codes, messages, JSON, and an unchanged library
//! after bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::Path;

use haagenti_core::Dtype;
use haagenti_testkit::synth::{self, Recipe, SynthTensor};
use std::process::Command;

mod common;
use common::{fragment_file, haagenti, json, ok};

fn model(path: &Path, seed: u64) {
    let tensors: Vec<SynthTensor> = (0..4)
        .map(|i| {
            SynthTensor::new(
                format!("blocks.{i}.attn.qkv.weight"),
                Dtype::BF16,
                vec![512, 512],
                Recipe::Normal {
                    seed: seed + i,
                    mean: 0.0,
                    std: 0.02,
                },
            )
        })
        .collect();
    synth::write_safetensors(path, &tensors, None).unwrap();
}

#[test]
fn ingest_export_show_stats_verify_rm_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let src = tmp.path().join("m.safetensors");
    model(&src, 1);

    let report = json(
        &lib,
        &["ingest", "--model", "m1", src.to_str().unwrap(), "--json"],
    );
    assert_eq!(
        report["logical_bytes"].as_u64(),
        Some(std::fs::metadata(&src).unwrap().len())
    );
    json(
        &lib,
        &["ingest", "--model", "m2", src.to_str().unwrap(), "--json"],
    );

    let out = tmp.path().join("out");
    ok(
        &lib,
        &["export", "--model", "m1", "--out", out.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(&src).unwrap(),
        std::fs::read(out.join("m.safetensors")).unwrap()
    );

    let list = json(&lib, &["list", "--json"]);
    let names: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m1", "m2"]);

    let show = json(&lib, &["show", "--model", "m1", "--json"]);
    let frags = show["files"][0]["fragments"].as_array().unwrap();
    assert!(!frags.is_empty());
    assert!(
        frags
            .iter()
            .all(|f| f["shared_with"] == serde_json::json!(["m2"]))
    );
    assert!(
        frags
            .iter()
            .all(|f| f["encoding"].as_str().is_some_and(|e| !e.is_empty()))
    );
    // Layers group every tensor once, their bytes adding up to the tensors'.
    let layers = show["layers"].as_array().unwrap();
    let tensors = show["files"][0]["tensors"].as_array().unwrap();
    let grouped: usize = layers
        .iter()
        .map(|l| l["tensors"].as_array().unwrap().len())
        .sum();
    assert_eq!(grouped, tensors.len());
    let layer_bytes: u64 = layers.iter().map(|l| l["bytes"].as_u64().unwrap()).sum();
    let tensor_bytes: u64 = tensors.iter().map(|t| t["len"].as_u64().unwrap()).sum();
    assert!(layer_bytes > 0);
    assert_eq!(layer_bytes, tensor_bytes);

    let stats = json(&lib, &["stats", "--json"]);
    for field in ["models", "fragments", "logical_bytes", "stored_bytes"] {
        assert!(stats[field].as_u64().is_some(), "stats lacks {field}");
    }
    assert_eq!(stats["models"], 2);
    assert!(stats["savings"]["exact_dedup_bytes"].as_u64().unwrap() > 0);
    assert!(
        stats["savings"]["compression_bytes"].as_i64().unwrap() > 0,
        "bf16 weights must compress"
    );

    ok(&lib, &["verify"]);
    ok(&lib, &["rm", "--model", "m1"]);
    let gc = json(&lib, &["gc", "--grace", "0", "--json"]);
    assert_eq!(
        gc["garbage_objects"], 0,
        "m2 still references every fragment"
    );
    ok(&lib, &["rm", "--model", "m2"]);
    let gc = json(&lib, &["gc", "--grace", "0", "--json"]);
    assert!(gc["garbage_objects"].as_u64().unwrap() > 0);
    assert_eq!(json(&lib, &["stats", "--json"])["fragments"], 0);
}

#[test]
fn several_models_in_one_ingest_by_pairs_or_each() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let (a, b) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    model(&a, 1);
    model(&b, 2);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    // Pairs, in order; JSON lists each model's report.
    let report = json(
        &lib,
        &["ingest", "--model", "x", a, "--model", "y", b, "--json"],
    );
    let names: Vec<&str> = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x", "y"]);
    // One model keeps the single report.
    assert_eq!(
        json(&lib, &["ingest", "--model", "z", a, "--json"])["model"],
        "z"
    );

    // A failing model is reported, the others go on, and the command exits 1.
    let out = haagenti(&lib, &["ingest", "--model", "x", a, "--model", "w", b]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("1 of 2 models not ingested: x"),
        "{err}"
    );
    // Names and paths that do not pair up: usage error before anything is opened.
    let out = haagenti(&lib, &["ingest", "--model", "v", a, "--model", "u"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 --model name(s) and 1 path(s)"));

    // --each: every model directory and .safetensors file, named after it.
    let each = tmp.path().join("each");
    std::fs::create_dir_all(each.join("dir-model")).unwrap();
    model(&each.join("dir-model/model.safetensors"), 3);
    model(&each.join("single.safetensors"), 4);
    std::fs::write(each.join("README.md"), "not a model").unwrap();
    let report = json(
        &lib,
        &["ingest", "--each", each.to_str().unwrap(), "--json"],
    );
    assert_eq!(report["models"].as_array().unwrap().len(), 2, "{report}");
    let listed = ok(&lib, &["list"]);
    for name in ["x", "y", "z", "w", "dir-model", "single"] {
        assert!(listed.contains(name), "{name}: {listed}");
    }
    ok(&lib, &["verify"]);
}

#[test]
fn bad_input_exits_1_with_a_message_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let src = tmp.path().join("good.safetensors");
    model(&src, 2);
    ok(&lib, &["ingest", "--model", "good", src.to_str().unwrap()]);
    let stats = ok(&lib, &["stats", "--json"]);
    let good = std::fs::read(&src).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + header_len])
        .unwrap()
        .to_string();

    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let with_header = |json: &str| {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend_from_slice(&good[8 + header_len..]);
        v
    };
    let cases = [
        (
            "truncated",
            write("truncated.safetensors", &good[..good.len() - 100]),
            "truncated",
        ),
        (
            "long-header",
            write(
                "long.safetensors",
                &[&u64::MAX.to_le_bytes()[..], b"{}"].concat(),
            ),
            "header length",
        ),
        (
            "beyond",
            write(
                "beyond.safetensors",
                &[&1000u64.to_le_bytes()[..], b"{}"].concat(),
            ),
            "past the end",
        ),
        (
            "json",
            write("json.safetensors", &with_header("{\"a\": nope}")),
            "not valid JSON",
        ),
        (
            "dtype",
            write(
                "dtype.safetensors",
                &with_header(&header.replacen("BF16", "X42", 1)),
            ),
            "unknown dtype",
        ),
        (
            "oob",
            write(
                "oob.safetensors",
                &with_header(&header.replacen("[0,524288]", "[0,99999999999]", 1)),
            ),
            "out of bounds",
        ),
        (
            "overlap",
            write(
                "overlap.safetensors",
                &with_header(&header.replacen("[524288,1048576]", "[0,524288]", 1)),
            ),
            "overlaps",
        ),
        (
            "shape",
            write(
                "shape.safetensors",
                &with_header(&header.replacen("[512,512]", "[512,511]", 1)),
            ),
            "span",
        ),
    ];
    for (name, path, needle) in &cases {
        let out = haagenti(&lib, &["ingest", "--model", name, path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(needle),
            "{name}: message {err:?} lacks {needle:?}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{name}: one line expected: {err}"
        );
        assert!(!err.contains("panicked"));
        assert_eq!(
            ok(&lib, &["stats", "--json"]),
            stats,
            "{name} changed the library"
        );
    }
    for bad_name in ["", "a/b/c", "..", "../x", "org/.x"] {
        let out = haagenti(
            &lib,
            &["ingest", "--model", bad_name, src.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1), "{bad_name:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid model name"));
        assert_eq!(ok(&lib, &["stats", "--json"]), stats);
    }
    let usage = haagenti(&lib, &["ingest", "--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2));
    let missing = haagenti(&lib, &["export", "--model", "nope", "--out", "x"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[test]
fn a_damaged_fragment_fails_verify_and_export_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let src = tmp.path().join("m.safetensors");
    model(&src, 3);
    ok(
        &lib,
        &["ingest", "--model", "victim", src.to_str().unwrap()],
    );
    let show = json(&lib, &["show", "--model", "victim", "--json"]);
    let frag = &show["files"][0]["fragments"][0];
    let id = frag["id"].as_str().unwrap();
    let path = fragment_file(&lib, id);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();

    for args in [
        vec!["verify"],
        vec![
            "export",
            "--model",
            "victim",
            "--out",
            tmp.path().join("o").to_str().unwrap(),
        ],
    ] {
        let out = haagenti(&lib, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            err.contains("victim") && err.contains(&id[..12]),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(frag["tensor"].as_str().unwrap()),
            "{args:?} must name the tensor: {err}"
        );
    }
}

#[test]
fn demo_round_trips_its_family_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("family.html");
    let out = Command::new(env!("CARGO_BIN_EXE_haagenti"))
        .args(["demo", "--json", "--report"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["bit_exact"], true);
    assert_eq!(doc["models"].as_array().unwrap().len(), 9);
    let (logical, stored) = (
        doc["logical_bytes"].as_u64().unwrap(),
        doc["stored_bytes"].as_u64().unwrap(),
    );
    assert!(
        stored * 3 < logical * 2,
        "the demo family must store at least 1.5x smaller: {stored} of {logical}"
    );
    // The family map is written where asked, and its path reported.
    assert_eq!(
        std::path::Path::new(doc["report"].as_str().unwrap()),
        std::path::absolute(&page).unwrap()
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(
        html.matches("class=\"node\"").count(),
        9,
        "one node per model"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, src) = (dir.path().join("lib"), dir.path().join("m.safetensors"));
    model(&src, 5);
    ok(&lib, &["ingest", "--model", "m", src.to_str().unwrap()]);
    let commands: [&[&str]; 3] = [&["show", "--model", "m"], &["stats", "--json"], &["list"]];
    for args in commands {
        // The reader is gone before the command writes (like `haagenti show | head -0`).
        let mut child = Command::new(env!("CARGO_BIN_EXE_haagenti"))
            .arg("--library")
            .arg(&lib)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
