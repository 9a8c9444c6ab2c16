//! Containment (issue 19): one model's unreadable manifest is reported, and every other
//! model stays listed, counted, verified and exportable.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use haagenti_core::Dtype;
use haagenti_testkit::synth::{self, Recipe, SynthTensor};

mod common;
use common::{Damage, Lib, RawStore, haagenti, json, ok};

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

/// A generated family (sources under `tmp/src`) ingested into `lib`: the family and the
/// model names.
fn ingested_family(tmp: &Path, seed: u64, lib: &Lib) -> (synth::Family, Vec<String>) {
    let family = synth::small_family(&tmp.join("src"), seed).unwrap();
    for m in &family.models {
        lib.ok(&["ingest", "--model", &m.name, m.path.to_str().unwrap()]);
    }
    let names = family.models.iter().map(|m| m.name.clone()).collect();
    (family, names)
}

/// The only manifest key of `name`.
fn manifest_key(raw: &RawStore, name: &str) -> String {
    let mut keys = raw.keys(&format!("manifests/{name}/"));
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.pop().unwrap()
}

/// Runs every test body on a library in a directory and on one in the local S3 server.
macro_rules! on_fs_and_s3 {
    ($body:ident, $fs:ident, $s3:ident) => {
        #[test]
        fn $fs() {
            let tmp = tempfile::tempdir().unwrap();
            $body(tmp.path(), &Lib::fs(&tmp.path().join("lib")));
        }

        #[test]
        fn $s3() {
            let Some(lib) = Lib::s3(stringify!($s3)) else {
                return;
            };
            let tmp = tempfile::tempdir().unwrap();
            $body(tmp.path(), &lib);
        }
    };
}

on_fs_and_s3!(
    damaged_manifest_is_contained,
    a_damaged_manifest_is_contained,
    a_damaged_manifest_is_contained_on_s3
);

/// One model's manifest damaged in each of the four ways in turn: every command carries
/// on with the other models, names the damaged one once, and exits 1; `rm` clears it.
fn damaged_manifest_is_contained(tmp: &Path, lib: &Lib) {
    let mut srcs = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let src = tmp.join(format!("{name}.safetensors"));
        model(&src, 10 * i as u64);
        lib.ok(&["ingest", "--model", name, src.to_str().unwrap()]);
        srcs.push(src);
    }
    let raw = lib.raw();
    let key = manifest_key(&raw, "b");
    let intact = raw.get(&key);
    for how in Damage::ALL {
        raw.put(&key, &intact);
        raw.damage(&key, how);
        if matches!(how, Damage::Delete) {
            // A model without a manifest is no model: every command sees a and c only.
            let list = lib.json(&["list", "--json"]);
            assert_eq!(list["models"].as_array().unwrap().len(), 2, "{list}");
            continue;
        }
        manifest_damage_is_contained(tmp, lib, &srcs, &format!("{how:?}"));
    }

    // rm works without decoding; then everything is green again.
    raw.put(&key, &intact);
    raw.damage(&key, Damage::Truncate);
    lib.ok(&["rm", "--model", "b"]);
    for args in [&["list"][..], &["stats"], &["verify"], &["gc"], &["repair"]] {
        lib.ok(args);
    }
}

fn manifest_damage_is_contained(tmp: &Path, lib: &Lib, srcs: &[PathBuf], how: &str) {
    // list: all three, the damaged one marked, exit 1.
    let (out, _) = lib.exits(1, &["list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = list["models"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"], "{how}");
    assert!(rows[1]["damaged"].is_string(), "{how}");
    assert!(rows[0].get("damaged").is_none() && rows[2].get("damaged").is_none());

    // stats: the two intact models, the damaged one named, exit 1.
    let (out, _) = lib.exits(1, &["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["models"], 2, "{how}");
    assert_eq!(stats["damaged"].as_array().unwrap().len(), 1);
    assert_eq!(stats["damaged"][0]["model"], "b");

    // verify: the damaged manifest once, the other two verified in full, exit 1.
    let (out, _) = lib.exits(1, &["verify", "--json"]);
    let verify: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(verify["models"], 2, "{how}");
    assert_eq!(verify["files"], 2);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 1);
    assert_eq!(verify["damaged"][0]["model"], "b");

    // similar: searches a and c, names b, exit 1.
    let (out, err) = lib.exits(1, &["similar", "--model", "a", "--json"]);
    let similar: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(similar["damaged"][0]["model"], "b", "{how}: {similar}");
    assert!(err.contains("DAMAGED: b"), "{how}: {err}");
    // compare and load of intact models: unaffected; of b: an error naming its manifest.
    lib.ok(&["compare", "--model", "a", "--model", "c"]);
    lib.ok(&["load", "--model", "a", "--model", "c"]);
    let (_, err) = lib.exits(1, &["compare", "--model", "a", "--model", "b"]);
    assert!(err.contains("manifests/b/"), "{how}: {err}");
    let (_, err) = lib.exits(1, &["show", "--model", "b"]);
    assert!(err.contains("manifests/b/"), "{how}: {err}");
    lib.json(&["show", "--model", "a", "--json"]);

    // export of an intact model: byte-identical.
    let out_dir = tmp.join(format!("out-{how}"));
    lib.ok(&["export", "--model", "c", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&srcs[2]).unwrap(),
        std::fs::read(out_dir.join("c.safetensors")).unwrap()
    );

    // repair without sources names the manifest; gc refuses, naming it and the ways out.
    let (out, _) = lib.exits(1, &["repair", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["damaged_manifests"][0]["model"], "b",
        "{how}: {report}"
    );
    let (_, err) = lib.exits(1, &["gc"]);
    assert!(err.contains("manifests/b/"), "{how}: {err}");
    assert!(
        err.contains("rm --model b") && err.contains("ingest --replace"),
        "{how}: {err}"
    );
}

on_fs_and_s3!(
    damaged_fragments_are_contained,
    damaged_fragments_are_contained_by_show_load_compare_similar_and_stats,
    damaged_fragments_are_contained_by_show_load_compare_similar_and_stats_on_s3
);

fn damaged_fragments_are_contained(tmp: &Path, lib: &Lib) {
    for (i, name) in ["a", "b"].iter().enumerate() {
        let src = tmp.join(format!("{name}.safetensors"));
        model(&src, 100 * i as u64);
        lib.ok(&["ingest", "--model", name, src.to_str().unwrap()]);
    }
    // Model b: one fragment's header cut off, the other's payload flipped.
    let rows = distinct_rows(&rows_by_model(lib, &["b".to_string()]));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let raw = lib.raw();
    let (cut, flipped) = (
        RawStore::fragment_key(&rows[0].0),
        RawStore::fragment_key(&rows[1].0),
    );
    let bytes = raw.get(&cut);
    raw.put(&cut, &bytes[..10]);
    raw.damage(&flipped, Damage::FlipByte);

    // show: every row, the unreadable one marked DAMAGED, exit 1 at the end.
    let (out, err) = lib.exits(1, &["show", "--model", "b", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let encodings: Vec<&str> = shown["files"][0]["fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["encoding"].as_str().unwrap())
        .collect();
    assert_eq!(
        encodings.iter().filter(|e| **e == "DAMAGED").count(),
        1,
        "{encodings:?}"
    );
    // Savings come from the manifest's table of stored objects: still whole.
    assert_eq!(shown["savings"]["standalone"]["fragments"], 2, "{shown}");
    assert!(err.contains("1 fragment(s) DAMAGED"), "{err}");
    lib.ok(&["show", "--model", "a"]);

    // load: model a whole, model b's two tensors each named, exit 1 at the end.
    let (out, _) = lib.exits(1, &["load", "--model", "a", "--model", "b", "--json"]);
    let loaded: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(loaded["models"][0]["tensors"], 2);
    assert_eq!(loaded["models"][1]["tensors"], 0);
    let named = loaded["models"][1]["damaged"].as_array().unwrap();
    assert_eq!(named.len(), 2, "{named:?}");
    assert!(
        named
            .iter()
            .all(|d| d.as_str().unwrap().contains("blocks."))
    );

    // compare, similar, stats and list read no fragment payload: unaffected.
    lib.ok(&["compare", "--model", "a", "--model", "b"]);
    lib.ok(&["similar", "--model", "b"]);
    lib.ok(&["similar", "--model", "a"]);
    assert_eq!(lib.json(&["stats", "--json"])["models"], 2);
    lib.ok(&["list"]);
    // verify names both, exit 1.
    let (_, err) = lib.exits(1, &["verify"]);
    assert!(err.contains("verification failed"), "{err}");
}

on_fs_and_s3!(
    damaged_housekeeping_objects_are_repaired,
    repair_rebuilds_damaged_index_segments_and_clears_damaged_locks_and_old_temporaries,
    repair_rebuilds_damaged_index_segments_and_clears_damaged_locks_on_s3
);

/// A damaged index segment is rebuilt; an unreadable lock and a temporary object are
/// removed once older than the grace period (and a live lock can be), young ones are
/// left. Only a directory can backdate objects; on S3 a zero grace removes the damaged
/// lock, and the young temporary object stays (never younger than a minute).
fn damaged_housekeeping_objects_are_repaired(tmp: &Path, lib: &Lib) {
    let src = tmp.join("a.safetensors");
    model(&src, 7);
    lib.ok(&["ingest", "--model", "a", src.to_str().unwrap()]);
    let raw = lib.raw();
    // Segments live under index/<scheme>/.
    let segment = raw
        .keys("index/")
        .into_iter()
        .next()
        .expect("an index segment");
    raw.damage(&segment, Damage::FlipByte);
    let bad_lock = "locks/ingest-00000000000000000001-deadbeef0000";
    raw.put(bad_lock, b"\x00\x01 not a lock");
    let fresh_bad_lock = "locks/ingest-00000000000000000002-deadbeef0001";
    raw.put(fresh_bad_lock, b"garbage");
    let old_tmp = "tmp/leftover-1";
    raw.put(old_tmp, b"half a fragment");
    let new_tmp = "tmp/leftover-2";
    raw.put(new_tmp, b"a write in flight");
    let on_disk = lib.endpoint.is_none();
    if on_disk {
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
        for key in [bad_lock, old_tmp] {
            let f = std::fs::File::options()
                .write(true)
                .open(lib.path.join(key))
                .unwrap();
            f.set_modified(long_ago).unwrap();
        }
    }
    let present = |key: &str| raw.keys(key).contains(&key.to_string());

    // A dry run finds them and changes nothing; repair exits 1 while a segment is damaged.
    let (out, _) = lib.exits(1, &["repair", "--dry-run", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let found = |field: &str| report[field].as_array().unwrap().len();
    assert_eq!(found("damaged_segments"), 1, "{report}");
    let aged = usize::from(on_disk);
    assert_eq!(found("damaged_locks"), aged, "{report}");
    assert_eq!(found("stale_temporaries"), aged, "{report}");
    assert!(present(bad_lock) && present(old_tmp) && present(&segment));

    if on_disk {
        let report = lib.json(&["repair", "--json"]);
        assert_eq!(report["index_rebuilt"], true, "{report}");
        assert!(!present(bad_lock) && !present(old_tmp));
        assert!(
            present(fresh_bad_lock) && present(new_tmp),
            "young objects are left"
        );
    } else {
        let report = lib.json(&["repair", "--grace", "0", "--json"]);
        assert_eq!(report["index_rebuilt"], true, "{report}");
        assert_eq!(report["damaged_locks"].as_array().unwrap().len(), 2);
        assert!(!present(bad_lock) && !present(fresh_bad_lock));
        assert!(
            present(old_tmp) && present(new_tmp),
            "temporary objects younger than a minute are left"
        );
    }
    // The rebuilt index loads: a second repair finds nothing of these kinds, and a new
    // ingest merges into it.
    raw.delete(fresh_bad_lock);
    let again = lib.json(&["repair", "--json"]);
    assert_eq!(again["damaged_segments"], serde_json::json!([]), "{again}");
    assert_eq!(again["damaged_locks"], serde_json::json!([]), "{again}");
    let src2 = tmp.join("b.safetensors");
    model(&src2, 8);
    lib.ok(&["ingest", "--model", "b", src2.to_str().unwrap()]);
    lib.ok(&["verify"]);
    lib.ok(&["similar", "--model", "b"]);
}

/// Every fragment row of every model's `show --json` of a library on disk: `(full id,
/// encoding)`, each once.
fn fragment_rows(lib: &Path, models: &[String]) -> Vec<(String, String)> {
    distinct_rows(&rows_by_model(&Lib::fs(lib), models))
}

/// The rows of [`rows_by_model`], each once.
fn distinct_rows(per_model: &[(String, Vec<(String, String)>)]) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = per_model
        .iter()
        .flat_map(|(_, r)| r.iter().cloned())
        .collect();
    rows.sort();
    rows.dedup();
    rows
}

/// The full id of the fragment a `delta(..) vs SHORT` / `cast .. of SHORT` row names.
fn dependency(rows: &[(String, String)], encoding: &str) -> String {
    let short = encoding.rsplit(' ').next().unwrap();
    rows.iter()
        .map(|(id, _)| id)
        .find(|id| id.starts_with(short))
        .unwrap_or_else(|| panic!("no fragment {short}"))
        .clone()
}

on_fs_and_s3!(
    repair_heals_every_kind_of_damage,
    repair_reports_damage_with_its_dependants_and_heals_it_from_the_sources,
    repair_reports_damage_with_its_dependants_and_heals_it_from_the_sources_on_s3
);

/// The fragment ids of the blob chunks of `models` (files that are not safetensors).
fn blob_chunks(lib: &Lib, models: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for m in models {
        let show = lib.json(&["show", "--model", m, "--json"]);
        for f in show["files"].as_array().unwrap() {
            if f["path"].as_str().unwrap().ends_with(".json") {
                for r in f["fragments"].as_array().unwrap() {
                    ids.push(r["id"].as_str().unwrap().to_string());
                }
            }
        }
    }
    ids
}

/// One object of each kind the family has (a delta and its base, a cast and its source,
/// a blob chunk, a plain tensor fragment) damaged in one of the four ways each, and one
/// model's manifest: reported once each with users and dependants, and `repair --from`
/// the sources makes the library whole again.
fn repair_heals_every_kind_of_damage(tmp: &Path, lib: &Lib) {
    let (family, names) = ingested_family(tmp, 31, lib);
    let rows = distinct_rows(&rows_by_model(lib, &names));

    let delta = rows
        .iter()
        .find(|(_, e)| e.starts_with("delta("))
        .expect("a delta");
    let cast = rows
        .iter()
        .find(|(_, e)| e.starts_with("cast "))
        .expect("a cast");
    let mut victims = vec![
        delta.0.clone(),
        dependency(&rows, &delta.1),
        cast.0.clone(),
        dependency(&rows, &cast.1),
    ];
    let blob = blob_chunks(lib, &names)
        .into_iter()
        .find(|id| !victims.contains(id))
        .expect("a blob chunk");
    victims.push(blob);
    let standalone = rows
        .iter()
        .find(|(id, e)| !e.contains(' ') && !victims.contains(id))
        .expect("a standalone fragment");
    victims.push(standalone.0.clone());
    victims.sort();
    victims.dedup();
    assert!(victims.len() >= 5, "{victims:?}");
    // A model none of whose fragments are victims loses its manifest (its fragments are
    // then unknown to repair until the manifest is rebuilt).
    let per_model = rows_by_model(lib, &names);
    let (manifest_model, _) = per_model
        .iter()
        .find(|(_, rows)| rows.iter().all(|(id, _)| !victims.contains(id)))
        .expect("a model untouched by the fragment damage");
    let raw = lib.raw();
    let manifest = manifest_key(&raw, manifest_model);
    raw.damage(&manifest, Damage::FlipByte);
    // Four kinds of damage, in turn: a flipped byte, a truncation, zero length, deletion.
    for (i, id) in victims.iter().enumerate() {
        raw.damage(&RawStore::fragment_key(id), Damage::ALL[i % 4]);
    }

    // verify --json: per model, and every damaged object once with its dependants.
    let (out, _) = lib.exits(1, &["verify", "--json"]);
    let verify: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut listed: Vec<String> = verify["damaged_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, victims);
    assert_eq!(verify["damaged"][0]["model"], manifest_model.as_str());
    let base = dependency(&rows, &delta.1);
    let base_entry = verify["damaged_objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == base.as_str())
        .unwrap();
    assert!(
        base_entry["dependants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == delta.0.as_str())
            && !base_entry["used_by"].as_array().unwrap().is_empty(),
        "{base_entry}"
    );
    assert!(
        verify["per_model"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["problems"].as_u64() > Some(0))
    );

    // Without sources: every damaged object once, with its users, exit 1.
    let (out, _) = lib.exits(1, &["repair", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let damaged = report["damaged"].as_array().unwrap();
    let mut found: Vec<String> = damaged
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    found.sort();
    assert_eq!(found, victims);
    for d in damaged {
        assert_eq!(d["status"], "unhealed");
        assert!(!d["used_by"].as_array().unwrap().is_empty(), "{d}");
        assert!(!d["healable_from"].as_array().unwrap().is_empty(), "{d}");
    }
    assert_eq!(
        report["damaged_manifests"][0]["model"],
        manifest_model.as_str()
    );
    // The delta's base names the delta among its dependants.
    let base = damaged
        .iter()
        .find(|d| d["id"] == dependency(&rows, &delta.1).as_str())
        .unwrap();
    assert!(
        base["dependants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == delta.0.as_str()),
        "{base}"
    );

    // A dry run finds the sources and writes nothing.
    let src = tmp.join("src");
    let (out, _) = lib.exits(
        1,
        &[
            "repair",
            "--from",
            src.to_str().unwrap(),
            "--dry-run",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["damaged"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "healable"),
        "{report}"
    );
    let rebuilt = &report["rebuilt_manifests"][0];
    assert_eq!(rebuilt["model"], manifest_model.as_str(), "{report}");
    assert_eq!(rebuilt["status"], "healable");
    // A flipped byte leaves the manifest decodable: the source is matched by its files.
    assert_eq!(rebuilt["matched_by"], "file_hashes", "{report}");
    lib.exits(1, &["verify"]);

    // Repair from the sources (with a symlink loop in them, walked once): verify passes
    // and every export is bit-exact.
    std::os::unix::fs::symlink(&src, src.join("loop")).unwrap();
    let out = lib.ok(&["repair", "--from", src.to_str().unwrap()]);
    assert!(out.contains("HEALED"), "{out}");
    assert!(
        out.contains(&format!("REBUILT manifest of {manifest_model}")),
        "{out}"
    );
    lib.ok(&["verify"]);
    lib.ok(&["repair"]); // nothing left to find
    lib.ok(&["gc"]); // the damaged generation is gone with the rest
    for m in &family.models {
        let out_dir = tmp.join("out").join(&m.name);
        lib.ok(&[
            "export",
            "--model",
            &m.name,
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        for (rel, f) in common::files_of(m) {
            assert!(
                std::fs::read(f).unwrap() == std::fs::read(out_dir.join(&rel)).unwrap(),
                "{rel} differs after repair"
            );
        }
    }
}

#[test]
fn a_manifest_with_nothing_left_is_rebuilt_from_the_source_named_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&tmp.path().join("lib"));
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for (i, name) in ["a", "b"].iter().enumerate() {
        model(&models.join(format!("{name}.safetensors")), 50 + i as u64);
    }
    lib.ok(&["ingest", "--each", models.to_str().unwrap()]);
    let raw = lib.raw();
    raw.damage(&manifest_key(&raw, "b"), Damage::Empty);
    // A source of another name is not taken for b.
    let other = tmp.path().join("c.safetensors");
    std::fs::copy(models.join("b.safetensors"), &other).unwrap();
    let (out, _) = lib.exits(1, &["repair", "--from", other.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["rebuilt_manifests"],
        serde_json::json!([]),
        "{report}"
    );
    // Nothing of it decodes: the source named after the model is taken.
    let report = lib.json(&["repair", "--from", models.to_str().unwrap(), "--json"]);
    assert_eq!(
        report["rebuilt_manifests"][0]["matched_by"], "name",
        "{report}"
    );
    assert_eq!(
        report["rebuilt_manifests"][0]["status"], "healed",
        "{report}"
    );
    lib.ok(&["verify"]);
    let out = tmp.path().join("out");
    lib.ok(&["export", "--model", "b", "--out", out.to_str().unwrap()]);
    assert!(
        std::fs::read(out.join("b.safetensors")).unwrap()
            == std::fs::read(models.join("b.safetensors")).unwrap()
    );
}

/// `show --json` rows of each model: model → `(full id, encoding)`.
fn rows_by_model(lib: &Lib, models: &[String]) -> Vec<(String, Vec<(String, String)>)> {
    models
        .iter()
        .map(|m| {
            let show: serde_json::Value =
                serde_json::from_str(&lib.ok(&["show", "--model", m, "--json"])).unwrap();
            let mut rows = Vec::new();
            for f in show["files"].as_array().unwrap() {
                for r in f["fragments"].as_array().unwrap() {
                    rows.push((
                        r["id"].as_str().unwrap().to_string(),
                        r["encoding"].as_str().unwrap().to_string(),
                    ));
                }
            }
            (m.clone(), rows)
        })
        .collect()
}

/// A delta base used directly by two models, damaged (with a cast source and a delta),
/// is reported, healed from ONE of the two models' sources while readers read the
/// damaged files in a loop: the readers never get wrong bytes, and afterwards every
/// model verifies.
fn shared_base_heals_from_either_source_while_readers_read(dir: &Path, lib: &Lib) {
    let family = synth::small_family(&dir.join("src"), 32).unwrap();
    for m in &family.models {
        lib.ok(&["ingest", "--model", &m.name, m.path.to_str().unwrap()]);
    }
    // A delta's base, and a second model that uses it directly: the base's model again
    // under another name (the same file in two repos).
    let names: Vec<String> = family.models.iter().map(|m| m.name.clone()).collect();
    let first = rows_by_model(lib, &names);
    let first_all = distinct_rows(&first);
    let (_, some_delta) = first_all
        .iter()
        .find(|(_, e)| e.starts_with("delta("))
        .expect("a delta");
    let some_base = dependency(&first_all, some_delta);
    let (holder, _) = first
        .iter()
        .find(|(_, rows)| rows.iter().any(|(id, _)| *id == some_base))
        .expect("a model using the base directly");
    let holder = family.model(holder).unwrap();
    let copy = format!("{}-copy", holder.name);
    lib.ok(&["ingest", "--model", &copy, holder.path.to_str().unwrap()]);
    let mut names = names;
    names.push(copy);
    let per_model = rows_by_model(lib, &names);
    let all = distinct_rows(&per_model);
    let users = |id: &str| -> Vec<String> {
        per_model
            .iter()
            .filter(|(_, rows)| rows.iter().any(|(i, _)| i == id))
            .map(|(m, _)| m.clone())
            .collect()
    };
    let (delta, base) = all
        .iter()
        .filter(|(_, e)| e.starts_with("delta("))
        .map(|(id, e)| (id.clone(), dependency(&all, e)))
        .find(|(_, base)| users(base).len() >= 2)
        .expect("a delta whose base two models use directly");
    let base_users = users(&base);
    let (_, cast_encoding) = all.iter().find(|(_, e)| e.starts_with("cast ")).unwrap();
    let cast_source = dependency(&all, cast_encoding);

    let options = haagenti_fragments::OpenOptions::default()
        .s3_endpoint(lib.endpoint.clone())
        .cache_bytes(0);
    let location = lib.path.to_str().unwrap().to_string();
    let raw = lib.raw();
    raw.damage(&RawStore::fragment_key(&base), Damage::FlipByte);
    raw.damage(&RawStore::fragment_key(&delta), Damage::Truncate);
    if cast_source != base {
        raw.damage(&RawStore::fragment_key(&cast_source), Damage::Delete);
    }
    let out = lib.command().args(["verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Readers: every file of every model, whole, in a loop, through a library without
    // a cache (every read goes to the store).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let files: Vec<(String, String, Vec<u8>)> = family
        .models
        .iter()
        .flat_map(|m| {
            m.files.iter().map(move |f| {
                let rel = if m.is_dir() {
                    f.strip_prefix(&m.path)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string()
                } else {
                    f.file_name().unwrap().to_str().unwrap().to_string()
                };
                (m.name.clone(), rel, std::fs::read(f).unwrap())
            })
        })
        .collect();
    let readers = {
        let stop = stop.clone();
        let location = location.clone();
        let options = options.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let lib = haagenti_fragments::open(&location, options).await.unwrap();
                let (mut good, mut failed, mut rounds) = (0u64, 0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) || rounds == 0 {
                    rounds += 1;
                    for (model, rel, want) in &files {
                        let Ok(handle) = lib.open_model(model).await else {
                            failed += 1;
                            continue;
                        };
                        let reader = handle.file(rel).unwrap();
                        match reader.read_at(0, reader.len()).await {
                            Ok(bytes) => {
                                assert!(bytes == want[..], "{model}/{rel}: wrong bytes");
                                good += 1;
                            }
                            Err(_) => failed += 1,
                        }
                    }
                }
                (good, failed, rounds)
            })
        })
    };

    // Repair from ONE of the two models that use the base.
    let healer = family.model(&base_users[0]).unwrap();
    let out = lib
        .command()
        .args(["repair", "--from", healer.path.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (good, failed, rounds) = readers.join().unwrap();
    assert!(
        good > 0 && rounds > 0,
        "readers read nothing ({failed} failed)"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let healed = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == base.as_str())
        .unwrap_or_else(|| panic!("base not reported: {report}"));
    assert_eq!(healed["status"], "healed", "{report}");
    // The rest from every source; then the library is whole.
    lib.ok(&["repair", "--from", dir.join("src").to_str().unwrap()]);
    lib.ok(&["verify"]);
    for name in &base_users {
        lib.ok(&["verify", "--model", name]);
    }
}

#[test]
fn a_shared_base_heals_from_either_source_while_readers_read() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&tmp.path().join("lib"));
    shared_base_heals_from_either_source_while_readers_read(tmp.path(), &lib);
}

#[test]
fn a_shared_base_heals_from_either_source_while_readers_read_on_s3() {
    let test = "a_shared_base_heals_from_either_source_while_readers_read_on_s3";
    let Some(lib) = Lib::s3(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    shared_base_heals_from_either_source_while_readers_read(tmp.path(), &lib);
}

/// Damaged objects `repair` finds (without sources).
fn damaged_count(lib: &Path) -> usize {
    let out = haagenti(lib, &["repair", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["damaged"].as_array().unwrap().len()
}

#[test]
fn a_repair_killed_at_any_moment_leaves_no_worse_and_a_second_repair_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let (_family, names) = ingested_family(tmp.path(), 33, &Lib::fs(&lib));
    let rows = fragment_rows(&lib, &names);
    // Damage every 7th fragment object (flipped byte).
    let raw = Lib::fs(&lib).raw();
    for (id, _) in rows.iter().step_by(7) {
        raw.damage(&RawStore::fragment_key(id), Damage::FlipByte);
    }
    let mut damaged = damaged_count(&lib);
    assert!(damaged >= 3, "{damaged}");
    let src = tmp.path().join("src");
    // How long an uninterrupted repair takes, to spread the kills over it.
    let started = std::time::Instant::now();
    let probe = tmp.path().join("probe");
    copy_dir(&lib, &probe);
    ok(&probe, &["repair", "--from", src.to_str().unwrap()]);
    let full = started.elapsed();
    let mut rng = synth::Rng::new(7);
    for round in 0..8 {
        let delay = full.mul_f64(rng.below(1000) as f64 / 1000.0);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_haagenti"))
            .arg("--library")
            .arg(&lib)
            .args(["repair", "--from", src.to_str().unwrap()])
            .env_remove("HAAGENTI_LIBRARY")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        let now = damaged_count(&lib);
        assert!(
            now <= damaged,
            "round {round}: {now} damaged objects after a killed repair, {damaged} before"
        );
        damaged = now;
    }
    ok(&lib, &["repair", "--from", src.to_str().unwrap()]);
    ok(&lib, &["verify"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn ingest_heals_the_damaged_fragments_it_meets() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let src = tmp.path().join("a.safetensors");
    model(&src, 40);
    ok(&lib, &["ingest", "--model", "a", src.to_str().unwrap()]);
    let rows = fragment_rows(&lib, &["a".to_string()]);
    assert!(rows.len() >= 2, "{rows:?}");
    // One fragment damaged in its payload (only a full read sees it), one in its header
    // (an ingest's header read sees it).
    let raw = Lib::fs(&lib).raw();
    let payload = RawStore::fragment_key(&rows[0].0);
    let mut bytes = raw.get(&payload);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    raw.put(&payload, &bytes);
    let header = RawStore::fragment_key(&rows[1].0);
    let mut bytes = raw.get(&header);
    bytes[0] ^= 0xff; // the magic
    raw.put(&header, &bytes);

    // `repair` (without sources) records the damage it finds; verify stays read-only.
    assert_eq!(haagenti(&lib, &["verify"]).status.code(), Some(1));
    assert!(!lib.join("damage").exists(), "verify must write nothing");
    assert_eq!(haagenti(&lib, &["repair"]).status.code(), Some(1));
    let report = json(
        &lib,
        &[
            "ingest",
            "--replace",
            "--model",
            "a",
            src.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(report["healed_fragments"], 2, "{report}");
    ok(&lib, &["verify"]);
    ok(&lib, &["repair"]); // nothing left, no marker left behind
    assert!(
        !lib.join("damage").exists()
            || std::fs::read_dir(lib.join("damage"))
                .unwrap()
                .next()
                .is_none(),
        "damage markers left behind"
    );
}
