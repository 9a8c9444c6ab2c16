//! `similar`, `compare`, `reindex` and the savings and lossy reports of `show`, `stats`
//! and `export`, on a generated family: an f32 model, its bf16 cast, a bf16 fine-tune of
//! the cast with half its layers frozen, and an unrelated bf16 model with the same names.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::Path;

use haagenti_core::Dtype;
use haagenti_testkit::synth::{self, Recipe, SynthTensor};
use serde_json::Value;

mod common;
use common::{haagenti, json, ok};

const LAYERS: u64 = 4;
/// 64 KiB fragments: each bf16 tensor below is 4 fragments, each f32 tensor 4 of 128 KiB.
const FRAGMENT_SIZE: &str = "65536";
const SPREAD: f32 = 0.02;

/// Exits 1 with one line on stderr containing `needle`.
fn fails(lib: &Path, args: &[&str], needle: &str) {
    let out = haagenti(lib, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
}

fn names() -> Vec<String> {
    (0..LAYERS)
        .flat_map(|i| {
            [
                format!("layers.{i}.attn.q_proj.weight"),
                format!("layers.{i}.mlp.up_proj.weight"),
            ]
        })
        .collect()
}

fn base_recipe(i: usize, seed: u64) -> Recipe {
    Recipe::Normal {
        seed: seed + i as u64,
        mean: 0.0,
        std: SPREAD,
    }
}

/// Writes a model whose tensor `i` has `recipe(i, name)` values stored as `dtype`.
fn write(path: &Path, dtype: Dtype, recipe: impl Fn(usize, &str) -> Recipe) {
    let tensors: Vec<SynthTensor> = names()
        .iter()
        .enumerate()
        .map(|(i, name)| SynthTensor::new(name.clone(), dtype, vec![256, 512], recipe(i, name)))
        .collect();
    synth::write_safetensors(path, &tensors, None).unwrap();
}

/// Every weight of layers 1 and 3 moved by `rel` of the spread; layers 0 and 2 frozen.
fn fine_tune(i: usize, name: &str, rel: f32) -> Recipe {
    let cast = Recipe::Round {
        base: Box::new(base_recipe(i, 100)),
        dtype: Dtype::BF16,
    };
    if name.starts_with("layers.0.") || name.starts_with("layers.2.") {
        cast
    } else {
        Recipe::Perturb {
            base: Box::new(cast),
            seed: 900 + i as u64,
            std: SPREAD * rel,
        }
    }
}

fn ingest(lib: &Path, model: &str, path: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "ingest",
        "--model",
        model,
        path.to_str().unwrap(),
        "--fragment-size",
        FRAGMENT_SIZE,
        "--json",
    ];
    args.extend_from_slice(extra);
    json(lib, &args)
}

fn share(rel: &Value, class: &str) -> f64 {
    rel[class]["bytes"].as_f64().unwrap() / rel["total"]["bytes"].as_f64().unwrap()
}

#[test]
fn similar_compare_and_reindex_find_the_family() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let p = |n: &str| tmp.path().join(format!("{n}.safetensors"));
    write(&p("base32"), Dtype::F32, |i, _| base_recipe(i, 100));
    write(&p("cast16"), Dtype::BF16, |i, _| base_recipe(i, 100));
    write(&p("finetune"), Dtype::BF16, |i, n| fine_tune(i, n, 1e-2));
    write(&p("other"), Dtype::BF16, |i, _| base_recipe(i, 500));
    for m in ["base32", "cast16", "finetune", "other"] {
        ingest(&lib, m, &p(m), &[]);
    }

    // similar: every tensor of the fine-tune finds its own name in the base or its cast
    // first, with a high cosine, and the unrelated model far below.
    let similar = json(&lib, &["similar", "--model", "finetune", "--json"]);
    let tensors = similar["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), names().len());
    for t in tensors {
        let name = t["tensor"].as_str().unwrap();
        assert_eq!(t["unsigned_fragments"], 0, "{name}");
        let matches = t["matches"].as_array().unwrap();
        let first = &matches[0];
        assert_eq!(first["tensor"], name, "{t}");
        assert!(
            ["base32", "cast16"].contains(&first["model"].as_str().unwrap()),
            "{t}"
        );
        let best = first["cosine"].as_f64().unwrap();
        assert!(best >= 0.9, "{name}: cosine {best}");
        for m in matches {
            let related = m["tensor"] == name && m["model"] != "other";
            if !related {
                assert!(m["cosine"].as_f64().unwrap() < 0.5, "{name}: {m}");
            }
        }
        // The frozen layers are the cast's bytes.
        if name.starts_with("layers.0.") {
            let cast = matches.iter().find(|m| m["model"] == "cast16").unwrap();
            assert_eq!(cast["identical_fragments"], 4, "{t}");
            assert!(cast["cosine"].as_f64().unwrap() > 0.999, "{t}");
        }
    }
    let one = json(
        &lib,
        &[
            "similar",
            "--model",
            "finetune",
            "--tensor",
            "layers.1.mlp.up_proj.weight",
            "--limit",
            "1",
            "--json",
        ],
    );
    let only = one["tensors"].as_array().unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["matches"].as_array().unwrap().len(), 1);
    let text = ok(&lib, &["similar", "--model", "finetune"]);
    assert!(text.contains("layers.3.attn.q_proj.weight"), "{text}");

    // compare: the cast is cast-derived from the f32 model, the fine-tune mostly delta or
    // identical against the cast, the unrelated model unique.
    let cmp = json(
        &lib,
        &[
            "compare", "--model", "base32", "--model", "cast16", "--json",
        ],
    );
    let cast = &cmp["b_against_a"];
    assert_eq!(cast["model"], "cast16");
    assert!(share(cast, "cast") > 0.9, "{cmp}");
    let parent = &cmp["a_against_b"];
    assert!(share(parent, "unique") > 0.9, "{cmp}");
    let cmp = json(
        &lib,
        &[
            "compare", "--model", "cast16", "--model", "finetune", "--json",
        ],
    );
    let ft = &cmp["b_against_a"];
    assert_eq!(ft["model"], "finetune");
    assert!(share(ft, "identical") >= 0.45, "{cmp}");
    assert!(share(ft, "delta") >= 0.45, "{cmp}");
    assert!(share(ft, "identical") + share(ft, "delta") > 0.9, "{cmp}");
    let cmp = json(
        &lib,
        &["compare", "--model", "other", "--model", "base32", "--json"],
    );
    assert!(share(&cmp["a_against_b"], "unique") > 0.99, "{cmp}");
    let text = ok(&lib, &["compare", "--model", "base32", "--model", "cast16"]);
    assert!(
        text.contains("cast16 against base32") && text.contains("cast-derived"),
        "{text}"
    );

    // show: every fragment of the cast is a payload-free cast (the fine-tune, ingested
    // later, is charged with sharing its frozen layers); the fine-tune shares its frozen
    // half with the cast and stores the rest as deltas.
    let show = json(&lib, &["show", "--model", "cast16", "--json"]);
    let s = &show["savings"];
    let bytes = |s: &Value, class: &str| s[class]["bytes"].as_u64().unwrap();
    assert_eq!(bytes(s, "fragments"), bytes(s, "cast"), "{s}");
    assert_eq!(s["savings"]["exact_dedup_bytes"], 0, "{s}");
    assert!(
        s["savings"]["cast_bytes"].as_f64().unwrap() > 0.99 * bytes(s, "cast") as f64,
        "{s}"
    );
    let show = json(&lib, &["show", "--model", "finetune", "--json"]);
    let s = &show["savings"];
    assert_eq!(bytes(s, "shared"), bytes(s, "fragments") / 2, "{s}");
    assert_eq!(bytes(s, "delta"), bytes(s, "fragments") / 2, "{s}");
    assert!(s["savings"]["delta_bytes"].as_i64().unwrap() > 0, "{s}");
    let text = ok(&lib, &["show", "--model", "finetune"]);
    assert!(
        text.contains("savings:") && text.contains("delta"),
        "{text}"
    );
    assert!(!text.contains("LOSSY"), "{text}");

    // reindex: without index/ nothing is found; a rebuild restores the same answers.
    std::fs::remove_dir_all(lib.join("index")).unwrap();
    let lost = json(&lib, &["similar", "--model", "finetune", "--json"]);
    assert!(
        lost["warnings"][0].as_str().unwrap().contains("reindex"),
        "{lost}"
    );
    for t in lost["tensors"].as_array().unwrap() {
        assert_eq!(t["unsigned_fragments"], t["fragments"], "{t}");
        assert!(t["matches"].as_array().unwrap().is_empty(), "{t}");
    }
    let report = json(&lib, &["reindex", "--json"]);
    assert_eq!(report["segments"], 1, "{report}");
    assert!(
        report["warnings"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert!(report["entries"].as_u64().unwrap() > 0, "{report}");
    let again = json(&lib, &["similar", "--model", "finetune", "--json"]);
    assert_eq!(again, similar);

    // Errors: one line, exit 1.
    fails(&lib, &["similar", "--model", "nope"], "not found");
    fails(
        &lib,
        &["similar", "--model", "finetune", "--tensor", "nope.weight"],
        "no tensor named \"nope.weight\"",
    );
    fails(
        &lib,
        &["compare", "--model", "base32", "--model", "nope"],
        "not found",
    );
    fails(
        &lib,
        &["compare", "--model", "base32"],
        "exactly two --model",
    );
    fails(&lib, &["show", "--model", "nope"], "not found");
}

#[test]
fn lossy_models_are_reported_by_show_stats_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let p = |n: &str| tmp.path().join(format!("{n}.safetensors"));
    write(&p("cast16"), Dtype::BF16, |i, _| base_recipe(i, 100));
    write(&p("near"), Dtype::BF16, |i, n| fine_tune(i, n, 1e-3));
    ingest(&lib, "cast16", &p("cast16"), &[]);
    let stats = json(&lib, &["stats", "--json"]);
    assert!(stats["lossy_models"].as_array().unwrap().is_empty());
    assert!(!ok(&lib, &["stats"]).contains("LOSSY"));

    let report = ingest(&lib, "near", &p("near"), &["--lossy-max-rel-error", "0.01"]);
    let max = report["max_rel_error"].as_f64().unwrap();
    assert!(report["lossy_fragments"].as_u64().unwrap() > 0, "{report}");
    assert!(max > 0.0 && max <= 0.01, "{report}");

    let show = json(&lib, &["show", "--model", "near", "--json"]);
    assert_eq!(show["lossy"], true);
    assert_eq!(show["max_rel_error"].as_f64(), Some(max));
    assert_eq!(
        show["savings"]["lossy"]["fragments"],
        report["lossy_fragments"]
    );
    assert_eq!(
        show["savings"]["savings"]["lossy_bytes"],
        report["lossy_fragment_bytes"]
    );
    let text = ok(&lib, &["show", "--model", "near"]);
    assert!(
        text.contains(&format!("LOSSY: {} fragments", report["lossy_fragments"]))
            && text.contains(&format!("max relative L2 error {max:.3e}")),
        "{text}"
    );

    let stats = json(&lib, &["stats", "--json"]);
    let lossy = stats["lossy_models"].as_array().unwrap();
    assert_eq!(lossy.len(), 1, "{stats}");
    assert_eq!(lossy[0]["model"], "near");
    assert_eq!(lossy[0]["max_rel_error"].as_f64(), Some(max));
    assert_eq!(
        stats["savings"]["lossy_bytes"],
        report["lossy_fragment_bytes"]
    );
    let text = ok(&lib, &["stats"]);
    assert!(
        text.contains("saved by lossy sharing")
            && text.contains(&format!("LOSSY: near (max relative L2 error {max:.3e})")),
        "{text}"
    );

    let out = tmp.path().join("out");
    let text = ok(
        &lib,
        &["export", "--model", "near", "--out", out.to_str().unwrap()],
    );
    assert!(
        text.contains("LOSSY: 1 of 1 files") && text.contains(&format!("{max:.3e}")),
        "{text}"
    );
    let text = ok(
        &lib,
        &[
            "export",
            "--model",
            "cast16",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!text.contains("LOSSY"), "{text}");
}
