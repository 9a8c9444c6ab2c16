//! Containment (issue 19): one model's unreadable manifest is reported, and every other
//! model stays listed, counted, verified and exportable.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use haagenti_core::Dtype;
use haagenti_testkit::synth::{self, Recipe, SynthTensor};

mod common;
use common::{haagenti, json, ok};

fn model(path: &Path, seed: u64) {
    let tensors: Vec<SynthTensor> = (0..2)
        .map(|i| {
            SynthTensor::new(
                format!("blocks.{i}.weight"),
                Dtype::BF16,
                vec![128, 128],
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

/// The only manifest file of `name`.
fn manifest_file(lib: &Path, name: &str) -> PathBuf {
    let dir = lib.join("manifests").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

fn stderr(lib: &Path, args: &[&str]) -> String {
    let out = haagenti(lib, args);
    assert_eq!(out.status.code(), Some(1), "{args:?} must exit 1");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn flipped_manifest_byte_is_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let mut srcs = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let src = tmp.path().join(format!("{name}.safetensors"));
        model(&src, 10 * i as u64);
        ok(&lib, &["ingest", "--model", name, src.to_str().unwrap()]);
        srcs.push(src);
    }
    let file = manifest_file(&lib, "b");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    // list: all three, the damaged one marked, exit 1.
    let out = haagenti(&lib, &["list", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = list["models"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(rows[1]["damaged"].is_string());
    assert!(rows[0].get("damaged").is_none() && rows[2].get("damaged").is_none());

    // stats: the two intact models, the damaged one named, exit 1.
    let out = haagenti(&lib, &["stats", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["models"], 2);
    assert_eq!(stats["damaged"].as_array().unwrap().len(), 1);
    assert_eq!(stats["damaged"][0]["model"], "b");

    // verify: the damaged manifest once, the other two verified in full, exit 1.
    let out = haagenti(&lib, &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let verify: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verify["models"], 2);
    assert_eq!(verify["files"], 2);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 1);
    assert_eq!(verify["damaged"][0]["model"], "b");

    // export of an intact model: byte-identical.
    let out_dir = tmp.path().join("out");
    ok(
        &lib,
        &["export", "--model", "c", "--out", out_dir.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(&srcs[2]).unwrap(),
        std::fs::read(out_dir.join("c.safetensors")).unwrap()
    );

    // show: the damaged model fails naming it; an intact one still shows.
    assert!(stderr(&lib, &["show", "--model", "b"]).contains("manifests/b/"));
    json(&lib, &["show", "--model", "a", "--json"]);

    // gc refuses, naming the manifest and the ways out.
    let err = stderr(&lib, &["gc"]);
    assert!(err.contains("manifests/b/"), "{err}");
    assert!(
        err.contains("rm --model b") && err.contains("ingest --replace"),
        "{err}"
    );

    // rm works without decoding; then everything is green again.
    ok(&lib, &["rm", "--model", "b"]);
    for args in [&["list"][..], &["stats"], &["verify"], &["gc"]] {
        ok(&lib, args);
    }
}
