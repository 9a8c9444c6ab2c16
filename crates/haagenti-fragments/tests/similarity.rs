//! Similarity end to end, with the real codecs and LSH: the savings targets of a model
//! lineage (fp32 parent, casts, fine-tune, LoRA merge) in both ingest orders, every
//! delta / cast / lossy path round-tripping, and the index persisting, surviving damage
//! and being rebuilt.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use haagenti_fragments::{
    Dtype, Encoding, FileContent, FragmentLibrary, FragmentStore, GcOptions, IngestOptions,
    IngestReport, LibraryConfig, MemoryStore, ObjectKey, cast,
};
use haagenti_testkit::library::TestLibrary;
use haagenti_testkit::synth::{self, Family};

const PARENT_BYTES: u64 = 6 << 20;

fn library(store: Arc<MemoryStore>) -> FragmentLibrary {
    TestLibrary::new()
        .fragment_size(256 << 10)
        .codecs(haagenti_fragments::codec_impls::default_registry())
        .similarity(haagenti_fragments::lsh::cosine_similarity())
        .open(store)
}

fn family(dir: &Path) -> Family {
    synth::lineage_family(dir, 7, PARENT_BYTES).unwrap()
}

async fn stored_bytes(store: &MemoryStore) -> u64 {
    store.list("").await.unwrap().iter().map(|m| m.size).sum()
}

/// Ingests `names` in order; returns (report, bytes the store grew by) per model.
async fn ingest_all(
    lib: &FragmentLibrary,
    store: &MemoryStore,
    fam: &Family,
    names: &[&str],
) -> Vec<(IngestReport, u64)> {
    let mut out = Vec::new();
    for name in names {
        let before = stored_bytes(store).await;
        let report = lib
            .ingest(
                name,
                &fam.model(name).unwrap().path,
                IngestOptions::default(),
            )
            .await
            .unwrap();
        out.push((report, stored_bytes(store).await - before));
    }
    out
}

async fn assert_exports_identical(lib: &FragmentLibrary, fam: &Family, out: &Path) {
    for m in &fam.models {
        let report = lib.export(&m.name, &out.join(&m.name), None).await.unwrap();
        assert!(!report.lossy);
        let exported = std::fs::read(out.join(&m.name).join(m.path.file_name().unwrap())).unwrap();
        assert!(
            exported == std::fs::read(&m.path).unwrap(),
            "{} differs",
            m.name
        );
    }
    assert!(lib.verify(None, None).await.unwrap().is_ok());
}

/// Encodings of every fragment object referenced by `model`.
async fn encodings(lib: &FragmentLibrary, model: &str) -> Vec<Encoding> {
    let manifest = lib.manifest(model).await.unwrap();
    let mut out = Vec::new();
    for r in manifest.fragments() {
        out.push(lib.fragment_info(&r.id).await.unwrap().unwrap().encoding);
    }
    out
}

/// Deltas have depth 1: every dependency of every stored fragment is standalone.
async fn assert_depth_one(lib: &FragmentLibrary, store: &MemoryStore) {
    for meta in store.list("fragments/").await.unwrap() {
        let id = meta.key.fragment_id().unwrap();
        let info = lib.fragment_info(&id).await.unwrap().unwrap();
        if let Some(dep) = info.encoding.dependency() {
            let base = lib.fragment_info(&dep).await.unwrap().unwrap();
            assert!(
                base.encoding.dependency().is_none(),
                "{id} depends on a dependent"
            );
        }
    }
}

fn report_line(rows: &[(IngestReport, u64)]) -> String {
    rows.iter()
        .map(|(r, added)| {
            format!(
                "{}: {} B, added {added} B ({:.2}%), delta {} B, cast {} B, signatures {:.1}% of {:.2}s",
                r.model,
                r.logical_bytes,
                100.0 * *added as f64 / r.logical_bytes as f64,
                r.delta_fragment_bytes,
                r.cast_fragment_bytes,
                100.0 * r.signature_seconds / r.seconds,
                r.seconds,
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn added_fraction(rows: &[(IngestReport, u64)], name: &str) -> f64 {
    let (r, added) = rows.iter().find(|(r, _)| r.model == name).unwrap();
    *added as f64 / r.logical_bytes as f64
}

fn family_fraction(rows: &[(IngestReport, u64)]) -> f64 {
    let raw: u64 = rows.iter().map(|(r, _)| r.logical_bytes).sum();
    let stored: u64 = rows.iter().map(|(_, a)| a).sum();
    stored as f64 / raw as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_first_lineage_meets_the_targets() {
    let dir = tempfile::tempdir().unwrap();
    let fam = family(&dir.path().join("fam"));
    let store = Arc::new(MemoryStore::new());
    let lib = library(store.clone());
    let order = [
        "base-fp32",
        "base-bf16",
        "base-fp16",
        "finetune-bf16",
        "lora-bf16",
    ];
    let rows = ingest_all(&lib, &store, &fam, &order).await;
    let summary = report_line(&rows);
    eprintln!("{summary}");

    // The casts of a stored fp32 model are payload-free references.
    for cast in ["base-bf16", "base-fp16"] {
        let f = added_fraction(&rows, cast);
        assert!(f <= 0.01, "{cast} added {:.2}%\n{summary}", f * 100.0);
        assert!(
            encodings(&lib, cast).await.iter().all(|e| matches!(
                e,
                Encoding::Cast {
                    from: Dtype::F32,
                    ..
                }
            )),
            "{cast}: every fragment is a cast"
        );
    }
    // The fine-tune's moved layers are deltas against casts of the fp32 parent.
    let f = added_fraction(&rows, "finetune-bf16");
    assert!(f <= 0.15, "fine-tune added {:.2}%\n{summary}", f * 100.0);
    assert!(
        encodings(&lib, "finetune-bf16")
            .await
            .iter()
            .any(|e| matches!(e, Encoding::CastDelta { .. }))
    );
    let f = family_fraction(&rows);
    assert!(f <= 0.46, "family stored at {:.1}%\n{summary}", f * 100.0);

    assert_depth_one(&lib, &store).await;
    assert_exports_identical(&lib, &fam, &dir.path().join("out")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_first_lineage_meets_the_targets() {
    let dir = tempfile::tempdir().unwrap();
    let fam = family(&dir.path().join("fam"));
    let store = Arc::new(MemoryStore::new());
    let lib = library(store.clone());
    let order = [
        "base-bf16",
        "finetune-bf16",
        "lora-bf16",
        "base-fp32",
        "base-fp16",
    ];
    let rows = ingest_all(&lib, &store, &fam, &order).await;
    let summary = report_line(&rows);
    eprintln!("{summary}");

    let f = added_fraction(&rows, "finetune-bf16");
    assert!(f <= 0.15, "fine-tune added {:.2}%\n{summary}", f * 100.0);
    assert!(
        encodings(&lib, "finetune-bf16")
            .await
            .iter()
            .any(|e| matches!(e, Encoding::Delta { .. }))
    );
    let lora = added_fraction(&rows, "lora-bf16");
    assert!(
        lora < 0.5,
        "LoRA merge added {:.2}%\n{summary}",
        lora * 100.0
    );
    let f = added_fraction(&rows, "base-fp16");
    assert!(f <= 0.01, "fp16 cast added {:.2}%\n{summary}", f * 100.0);
    let f = family_fraction(&rows);
    assert!(f <= 0.46, "family stored at {:.1}%\n{summary}", f * 100.0);

    assert_depth_one(&lib, &store).await;
    assert_exports_identical(&lib, &fam, &dir.path().join("out")).await;

    // Tensor reads through model handles decode deltas too (the cached path).
    let cached = lib.clone().with_cache_bytes(64 << 20);
    let handle = cached.open_model("finetune-bf16").await.unwrap();
    let original = std::fs::read(&fam.model("finetune-bf16").unwrap().path).unwrap();
    let manifest = lib.manifest("finetune-bf16").await.unwrap();
    for t in manifest.files[0].tensors() {
        let data = handle.read_tensor(&t.name).await.unwrap().to_bytes();
        let at = t.offset as usize;
        assert!(data[..] == original[at..at + t.len as usize], "{}", t.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_sharing_is_opt_in_bounded_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let fam = family(&dir.path().join("fam"));
    let store = Arc::new(MemoryStore::new());
    let lib = library(store.clone());
    let path = |n: &str| fam.model(n).unwrap().path.clone();
    lib.ingest("base", &path("base-bf16"), IngestOptions::default())
        .await
        .unwrap();

    // A bound below the fine-tune's real change substitutes nothing.
    let strict = lib
        .ingest(
            "strict",
            &path("finetune-bf16"),
            IngestOptions::default().lossy_max_rel_error(Some(1e-6)),
        )
        .await
        .unwrap();
    assert_eq!(strict.lossy_fragments, 0);
    assert!(!lib.manifest("strict").await.unwrap().is_lossy());

    // Lossy ingest into a library holding only the base (the strict ingest stored the
    // fine-tune's fragments in the first one).
    let store = Arc::new(MemoryStore::new());
    let lib = library(store.clone());
    lib.ingest("base", &path("base-bf16"), IngestOptions::default())
        .await
        .unwrap();
    let bound = 0.01;
    let lossy = lib
        .ingest(
            "lossy",
            &path("finetune-bf16"),
            IngestOptions::default().lossy_max_rel_error(Some(bound)),
        )
        .await
        .unwrap();
    assert!(lossy.lossy_fragments > 0, "{lossy:?}");
    assert!(lossy.max_rel_error > 0.0 && lossy.max_rel_error <= bound);
    let manifest = lib.manifest("lossy").await.unwrap();
    assert!(manifest.is_lossy());
    assert_eq!(manifest.lossy.len() as u64, lossy.lossy_fragments);
    let stats = lib.stats().await.unwrap();
    assert_eq!(stats.savings.lossy_bytes, lossy.lossy_fragment_bytes);

    let out = dir.path().join("out");
    let report = lib.export("lossy", &out, None).await.unwrap();
    assert!(report.lossy && report.lossy_files == 1);
    assert!((report.max_rel_error - lossy.max_rel_error).abs() < 1e-12);
    let verified = lib.verify(Some("lossy"), None).await.unwrap();
    assert!(
        verified.is_ok() && verified.lossy_files == 1,
        "{verified:?}"
    );

    // Every substituted fragment is within its recorded error, measured here again on
    // the exported values; every other fragment is bit-exact.
    let original = std::fs::read(path("finetune-bf16")).unwrap();
    let exported = std::fs::read(out.join("finetune-bf16.safetensors")).unwrap();
    assert_eq!(original.len(), exported.len());
    let FileContent::Safetensors { tensors, .. } = &manifest.files[0].content else {
        panic!("not safetensors");
    };
    let mut substituted = 0;
    for t in tensors {
        let mut at = t.offset as usize;
        for (i, r) in t.fragments.iter().enumerate() {
            let range = at..at + r.len as usize;
            at = range.end;
            let sub = manifest
                .lossy
                .iter()
                .find(|l| l.tensor == t.name && l.fragment as usize == i);
            match sub {
                None => assert!(original[range.clone()] == exported[range], "{}", t.name),
                Some(l) => {
                    substituted += 1;
                    let err = rel_error(&original[range.clone()], &exported[range], t.dtype);
                    assert!(err <= bound, "{} fragment {i}: {err}", t.name);
                    assert!((err - l.rel_error).abs() <= 1e-9 * l.rel_error.max(1.0));
                }
            }
        }
    }
    assert_eq!(substituted, manifest.lossy.len());
}

fn rel_error(a: &[u8], b: &[u8], dtype: Dtype) -> f64 {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    cast::decode_values(a, dtype, &mut x).unwrap();
    cast::decode_values(b, dtype, &mut y).unwrap();
    let diff: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    let norm: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    (diff / norm).sqrt()
}

async fn index_keys(store: &MemoryStore) -> Vec<ObjectKey> {
    store
        .list("index/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_persists_survives_damage_and_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let fam = family(&dir.path().join("fam"));
    let path = |n: &str| fam.model(n).unwrap().path.clone();
    let store = Arc::new(MemoryStore::new());
    library(store.clone())
        .ingest("base", &path("base-bf16"), IngestOptions::default())
        .await
        .unwrap();
    assert_eq!(index_keys(&store).await.len(), 1);

    // A new library over the same store (another process) finds the base through the
    // persisted segment.
    let second = library(store.clone());
    let ft = second
        .ingest("ft", &path("finetune-bf16"), IngestOptions::default())
        .await
        .unwrap();
    assert!(ft.delta_fragments > 0 && ft.warnings.is_empty(), "{ft:?}");

    // A damaged segment costs savings, not the ingest: it is skipped with a warning.
    for key in index_keys(&store).await {
        store.overwrite_for_test(&key, Bytes::from_static(b"HGLSHIDX garbage"));
    }
    let third = library(store.clone());
    let lora = third
        .ingest("lora", &path("lora-bf16"), IngestOptions::default())
        .await
        .unwrap();
    assert_eq!(lora.delta_fragments, 0);
    assert!(
        lora.warnings.iter().any(|w| w.contains("reindex")),
        "{:?}",
        lora.warnings
    );

    // Rebuilt from the fragments alone, the index finds the bases again.
    let rebuilt = third.rebuild_index().await.unwrap();
    assert!(rebuilt.entries > 0 && rebuilt.removed_segments >= 2);
    assert_eq!(index_keys(&store).await.len(), 1);
    let fourth = library(store.clone());
    let again = fourth
        .ingest("lora2", &path("lora-bf16"), IngestOptions::default())
        .await
        .unwrap();
    // lora's fragments are stored now (standalone), so lora2 is all exact dedup; a fresh
    // fine-tune shows the rebuilt index at work.
    assert_eq!(again.new_fragments, 0);
    fourth.remove("ft").await.unwrap();
    let ft2 = fourth
        .ingest("ft2", &path("finetune-bf16"), IngestOptions::default())
        .await
        .unwrap();
    assert_eq!(ft2.new_fragments, 0, "ft's fragments are orphans, reused");

    // gc drops the index entries of deleted fragments and merges segments into one.
    for m in ["ft2", "lora", "lora2"] {
        fourth.remove(m).await.unwrap();
    }
    let gc = fourth
        .gc(GcOptions {
            dry_run: false,
            grace: std::time::Duration::ZERO,
        })
        .await
        .unwrap();
    assert!(gc.garbage_objects > 0);
    assert_eq!(index_keys(&store).await.len(), 1);
    let fifth = library(store.clone());
    let reloaded = fifth.refresh_index().await.unwrap();
    let base_fragments = fifth.manifest("base").await.unwrap().fragments().count() as u64;
    assert!(reloaded.entries <= base_fragments, "{reloaded:?}");
    let ft3 = fifth
        .ingest("ft3", &path("finetune-bf16"), IngestOptions::default())
        .await
        .unwrap();
    assert!(ft3.delta_fragments > 0);
    assert_exports_identical_one(&fifth, "ft3", &path("finetune-bf16"), dir.path()).await;
}

async fn assert_exports_identical_one(lib: &FragmentLibrary, name: &str, src: &Path, tmp: &Path) {
    let out = tmp.join(format!("out-{name}"));
    lib.export(name, &out, None).await.unwrap();
    let exported = std::fs::read(out.join(src.file_name().unwrap())).unwrap();
    assert!(exported == std::fs::read(src).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_similarity_nothing_is_delta_coded() {
    let dir = tempfile::tempdir().unwrap();
    let fam = family(&dir.path().join("fam"));
    let store = Arc::new(MemoryStore::new());
    let lib = FragmentLibrary::new(
        store.clone(),
        haagenti_fragments::codec_impls::default_registry(),
        LibraryConfig::default(),
    )
    .unwrap();
    for name in ["base-fp32", "base-bf16", "finetune-bf16"] {
        let r = lib
            .ingest(
                name,
                &fam.model(name).unwrap().path,
                IngestOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(r.delta_fragments + r.cast_fragments, 0);
    }
    assert!(index_keys(&store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_lossy_bounds_reach_candidates_below_the_delta_threshold() {
    use synth::{Recipe, SynthTensor};
    let dir = tempfile::tempdir().unwrap();
    let base = Recipe::Normal {
        seed: 3,
        mean: 0.0,
        std: 0.02,
    };
    // Noise of 30% of the spread: cosine about 0.958, under the 0.97 delta threshold.
    let noisy = Recipe::Perturb {
        base: Box::new(base.clone()),
        seed: 4,
        std: 0.006,
    };
    let write = |name: &str, recipe: Recipe| {
        let path = dir.path().join(name);
        let t = SynthTensor::new("w", Dtype::BF16, vec![512, 512], recipe);
        synth::write_safetensors(&path, &[t], None).unwrap();
        path
    };
    let (base_path, noisy_path) = (
        write("base.safetensors", base),
        write("noisy.safetensors", noisy),
    );
    for (bound, substituted) in [(0.25, false), (0.35, true)] {
        let lib = library(Arc::new(MemoryStore::new()));
        lib.ingest("base", &base_path, IngestOptions::default())
            .await
            .unwrap();
        let r = lib
            .ingest(
                "noisy",
                &noisy_path,
                IngestOptions::default().lossy_max_rel_error(Some(bound)),
            )
            .await
            .unwrap();
        assert_eq!(r.lossy_fragments > 0, substituted, "bound {bound}: {r:?}");
        if substituted {
            assert!(r.max_rel_error > 0.25 && r.max_rel_error <= bound, "{r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_merges_index_segments_once_they_pile_up() {
    // 32 segments, the library's merge threshold (`MERGE_SEGMENTS_AT` in haagenti-core's
    // library/similarity.rs, crate-private).
    const MERGE_SEGMENTS_AT: usize = 32;
    use synth::{Recipe, SynthTensor};
    let dir = tempfile::tempdir().unwrap();
    let fam = family(&dir.path().join("fam"));
    let path = |n: &str| fam.model(n).unwrap().path.clone();
    let small = |i: u64| {
        let src = dir.path().join(format!("small-{i}.safetensors"));
        let recipe = Recipe::Normal {
            seed: 100 + i,
            mean: 0.0,
            std: 0.02,
        };
        let tensor = SynthTensor::new("w", Dtype::BF16, vec![256, 256], recipe);
        synth::write_safetensors(&src, &[tensor], None).unwrap();
        src
    };
    let store = Arc::new(MemoryStore::new());
    let first = library(store.clone());
    first
        .ingest("base", &path("base-bf16"), IngestOptions::default())
        .await
        .unwrap();
    first
        .ingest("small-0", &small(0), IngestOptions::default())
        .await
        .unwrap();
    // small-0's segment is damaged: merging must leave it (and its warning) in place.
    let damaged = index_keys(&store).await.pop().unwrap();
    store.overwrite_for_test(&damaged, Bytes::from_static(b"HGLSHIDX garbage"));

    // Small unrelated models, one segment each, until the ingest that passes the limit
    // merges every healthy segment (the base's included) into one.
    let lib = library(store.clone());
    let mut merged_at = None;
    for i in 1..=MERGE_SEGMENTS_AT as u64 {
        let report = lib
            .ingest(&format!("small-{i}"), &small(i), IngestOptions::default())
            .await
            .unwrap();
        let segments = index_keys(&store).await.len();
        assert!(
            segments <= MERGE_SEGMENTS_AT + 1,
            "{segments} segments after {i}"
        );
        if report.index_segments_merged > 0 {
            assert_eq!(report.index_segments_merged, MERGE_SEGMENTS_AT as u64 + 1);
            assert_eq!(index_keys(&store).await.len(), 2, "merged + damaged");
            merged_at = Some(i);
        }
    }
    assert_eq!(merged_at, Some(MERGE_SEGMENTS_AT as u64));
    assert!(index_keys(&store).await.contains(&damaged));

    // Another library over the store still hears about the damaged segment and finds the
    // base through the merged one; this library keeps working from its own state.
    let fresh = library(store.clone());
    let ft = fresh
        .ingest("ft", &path("finetune-bf16"), IngestOptions::default())
        .await
        .unwrap();
    assert!(ft.delta_fragments > 0, "{ft:?}");
    assert!(
        ft.warnings.iter().any(|w| w.contains("reindex")),
        "{:?}",
        ft.warnings
    );
    let lora = lib
        .ingest("lora", &path("lora-bf16"), IngestOptions::default())
        .await
        .unwrap();
    assert!(
        lora.delta_fragments > 0 && lora.warnings.is_empty(),
        "{lora:?}"
    );
    assert_eq!(index_keys(&store).await.len(), 4);
    assert_exports_identical_one(&lib, "ft", &path("finetune-bf16"), dir.path()).await;
}
