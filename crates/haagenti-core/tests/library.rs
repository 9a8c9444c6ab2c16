//! End-to-end behaviour of `FragmentLibrary` on generated model families.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use haagenti_core::{
    Dtype, FragmentError, FragmentLibrary, FragmentStore, GcOptions, IngestOptions, MemoryStore,
    ObjectKey,
};
use haagenti_testkit::library::test_library;
use haagenti_testkit::synth::{self, Recipe, SynthTensor};

fn tensor(name: &str, dtype: Dtype, shape: &[u64], seed: u64) -> SynthTensor {
    SynthTensor::new(
        name,
        dtype,
        shape.to_vec(),
        Recipe::Normal {
            seed,
            mean: 0.0,
            std: 0.02,
        },
    )
}

/// Every file under `a` equals the file at the same relative path under `b`.
fn assert_same_tree(a: &Path, b: &Path) {
    let mut files = Vec::new();
    collect(a, a, &mut files);
    assert!(!files.is_empty());
    for rel in files {
        let x = std::fs::read(a.join(&rel)).unwrap();
        let y = std::fs::read(b.join(&rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        assert!(x == y, "{} differs after export", rel.display());
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

async fn ingest(lib: &FragmentLibrary, name: &str, path: &Path) -> haagenti_core::IngestReport {
    lib.ingest(name, path, IngestOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_round_trips_bit_exact_with_cross_model_dedup() {
    let src = tempfile::tempdir().unwrap();
    let family = synth::small_family(src.path(), 7).unwrap();
    let store = Arc::new(MemoryStore::new());
    let lib = test_library(store.clone());

    for m in &family.models {
        ingest(&lib, &m.name, &m.path).await;
    }
    // A byte-identical copy of the first model under another name.
    let first = &family.models[0];
    let before = lib.stats().await.unwrap();
    let copy = ingest(&lib, "identical-copy", &first.path).await;
    let after = lib.stats().await.unwrap();
    assert_eq!(copy.new_fragments, 0);
    let added = after.stored_bytes - before.stored_bytes;
    assert!(
        added * 100 <= first.bytes,
        "identical copy added {added} bytes for {}",
        first.bytes
    );
    assert_eq!(after.logical_bytes, before.logical_bytes + first.bytes);

    for m in &family.models {
        let out = tempfile::tempdir().unwrap();
        let report = lib.export(&m.name, out.path(), None).await.unwrap();
        assert_eq!(report.bytes, m.bytes);
        if m.is_dir() {
            assert_same_tree(&m.path, out.path());
        } else {
            let name = m.path.file_name().unwrap();
            assert_eq!(
                std::fs::read(&m.path).unwrap(),
                std::fs::read(out.path().join(name)).unwrap()
            );
        }
    }
    let verify = lib.verify(None, None).await.unwrap();
    assert!(verify.is_ok(), "{:?}", verify.problems);
    assert_eq!(verify.models, family.models.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_checkpoint_stores_only_its_new_tensors() {
    let src = tempfile::tempdir().unwrap();
    let base: Vec<SynthTensor> = (0..6)
        .map(|i| {
            tensor(
                &format!("model.layers.{i}.mlp.up_proj.weight"),
                Dtype::BF16,
                &[256, 384],
                i,
            )
        })
        .collect();
    let base_path = src.path().join("base.safetensors");
    synth::write_safetensors(&base_path, &base, None).unwrap();
    // The same tensors under other names, in reverse order, plus a new head.
    let mut aio: Vec<SynthTensor> = base
        .iter()
        .rev()
        .map(|t| SynthTensor {
            name: format!("text_encoder.{}", t.name),
            ..t.clone()
        })
        .collect();
    let head = tensor("head.weight", Dtype::BF16, &[128, 256], 99);
    let head_bytes = head.byte_len().unwrap();
    aio.insert(2, head);
    let aio_path = src.path().join("all-in-one.safetensors");
    let aio_size = synth::write_safetensors(&aio_path, &aio, None).unwrap();

    let lib = test_library(Arc::new(MemoryStore::new()));
    ingest(&lib, "base", &base_path).await;
    let before = lib.stats().await.unwrap().stored_bytes;
    let report = ingest(&lib, "all-in-one", &aio_path).await;
    let added = lib.stats().await.unwrap().stored_bytes - before;
    assert!(
        added <= aio_size * 3 / 100 + head_bytes,
        "added {added} of {aio_size} (head {head_bytes})"
    );
    assert_eq!(report.new_fragment_bytes, head_bytes);

    let out = tempfile::tempdir().unwrap();
    lib.export("all-in-one", out.path(), None).await.unwrap();
    assert_eq!(
        std::fs::read(&aio_path).unwrap(),
        std::fs::read(out.path().join("all-in-one.safetensors")).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_model_keeps_every_file_at_its_path() {
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().join("model");
    synth::write_safetensors(
        &dir.join("unet/diffusion.safetensors"),
        &[tensor("conv_in.weight", Dtype::F16, &[64, 64], 1)],
        None,
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), br#"{"hidden_size": 64}"#).unwrap();
    let mut tokenizer = vec![0u8; 700_000];
    synth::Rng::new(3).fill_bytes(&mut tokenizer);
    std::fs::write(dir.join("tokenizer.json"), &tokenizer).unwrap();
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
    let zero_dim = vec![
        SynthTensor::new(
            "scalar",
            Dtype::F32,
            vec![],
            Recipe::Normal {
                seed: 1,
                mean: 1.0,
                std: 0.0,
            },
        ),
        tensor("empty", Dtype::F32, &[0, 4], 2),
    ];
    synth::write_safetensors(&dir.join("scalars.safetensors"), &zero_dim, None).unwrap();

    let lib = test_library(Arc::new(MemoryStore::new()));
    let report = ingest(&lib, "dir-model", &dir).await;
    assert_eq!(report.files, 5);
    let out = tempfile::tempdir().unwrap();
    lib.export("dir-model", out.path(), None).await.unwrap();
    assert_same_tree(&dir, out.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_cleanly_and_change_nothing() {
    let src = tempfile::tempdir().unwrap();
    let good = src.path().join("good.safetensors");
    synth::write_safetensors(&good, &[tensor("w", Dtype::BF16, &[128, 128], 1)], None).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = src.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    // A directory holding one valid and one broken file: nothing of it may be stored.
    let dir = src.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&good, dir.join("a.safetensors")).unwrap();
    std::fs::write(
        dir.join("b.safetensors"),
        b"\x10\0\0\0\0\0\0\0{not json}      ",
    )
    .unwrap();

    let store = Arc::new(MemoryStore::new());
    let lib = test_library(store.clone());
    ingest(&lib, "existing", &good).await;
    let before = lib.stats().await.unwrap();
    let objects_before = store.list("").await.unwrap().len();

    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("t1", truncated, "truncated"),
        ("t2", dir, "not valid JSON"),
        ("", good.clone(), "empty"),
        ("a/b/c", good.clone(), "more than one '/'"),
        ("..", good.clone(), ".."),
        ("org/.x", good.clone(), "starts with '.'"),
        ("existing", good.clone(), "already exists"),
        (
            "missing",
            src.path().join("nope.safetensors"),
            "nope.safetensors",
        ),
    ];
    for (name, path, needle) in cases {
        let err = lib
            .ingest(name, &path, IngestOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{name:?}: {err}");
        assert_eq!(
            lib.stats().await.unwrap(),
            before,
            "{name:?} changed the library"
        );
        assert_eq!(
            store.list("").await.unwrap().len(),
            objects_before,
            "{name:?} left objects behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_reported_with_model_tensor_and_fragment() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("m.safetensors");
    synth::write_safetensors(
        &path,
        &[tensor(
            "layers.0.attn.q_proj.weight",
            Dtype::F32,
            &[256, 256],
            5,
        )],
        None,
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let lib = test_library(store.clone());
    ingest(&lib, "victim", &path).await;
    let manifest = lib.manifest("victim").await.unwrap();
    let frag = manifest.files[0].tensors()[0].fragments[1].id;
    let key = ObjectKey::fragment(&frag);
    let mut raw = store.get(&key).await.unwrap().to_vec();
    let mid = raw.len() / 2;
    raw[mid] ^= 1;
    store.overwrite_for_test(&key, Bytes::from(raw));

    // Decoded in place (the test library has no cache): the damage is still caught.
    let model = lib.open_model("victim").await.unwrap();
    let info = &model.tensors()[0];
    let reader = model.file(&info.file).unwrap();
    let err = reader.read_owned(info.offset, info.len).await.unwrap_err();
    assert!(
        err.is_corruption() && err.to_string().contains(&frag.short()),
        "{err}"
    );

    let report = lib.verify(Some("victim"), None).await.unwrap();
    assert_eq!(report.problems.len(), 1);
    let problem = &report.problems[0];
    for needle in ["victim", "layers.0.attn.q_proj.weight", &frag.to_hex()] {
        assert!(problem.contains(needle), "{problem} lacks {needle}");
    }
    let out = tempfile::tempdir().unwrap();
    let err = lib.export("victim", out.path(), None).await.unwrap_err();
    assert!(
        err.is_corruption() && err.to_string().contains(&frag.short()),
        "{err}"
    );
    assert!(
        !out.path().join("m.safetensors").exists(),
        "a damaged file must not be left in place"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_only_unreferenced_fragments_past_the_grace_period() {
    let src = tempfile::tempdir().unwrap();
    let shared = tensor("shared.weight", Dtype::BF16, &[256, 256], 1);
    let a = src.path().join("a.safetensors");
    let b = src.path().join("b.safetensors");
    synth::write_safetensors(
        &a,
        &[
            shared.clone(),
            tensor("a_only", Dtype::BF16, &[256, 256], 2),
        ],
        None,
    )
    .unwrap();
    synth::write_safetensors(
        &b,
        &[shared, tensor("b_only", Dtype::BF16, &[256, 256], 3)],
        None,
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let lib = test_library(store.clone());
    ingest(&lib, "a", &a).await;
    ingest(&lib, "b", &b).await;
    let total = store.list("fragments/").await.unwrap().len();
    lib.remove("a").await.unwrap();
    assert!(matches!(
        lib.remove("a").await,
        Err(FragmentError::ModelNotFound(_))
    ));

    let young = lib.gc(GcOptions::default()).await.unwrap();
    assert_eq!(
        young.garbage_objects, 0,
        "everything is younger than the default grace"
    );
    assert!(young.young_objects > 0);
    let dry = lib
        .gc(GcOptions {
            dry_run: true,
            grace: Duration::ZERO,
        })
        .await
        .unwrap();
    assert!(dry.garbage_objects > 0);
    assert_eq!(store.list("fragments/").await.unwrap().len(), total);
    let done = lib
        .gc(GcOptions {
            dry_run: false,
            grace: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(done.garbage_objects, dry.garbage_objects);
    assert_eq!(
        store.list("fragments/").await.unwrap().len() as u64,
        total as u64 - done.garbage_objects
    );
    let out = tempfile::tempdir().unwrap();
    lib.export("b", out.path(), None).await.unwrap();
    assert_eq!(
        std::fs::read(&b).unwrap(),
        std::fs::read(out.path().join("b.safetensors")).unwrap()
    );
    assert!(lib.verify(None, None).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_supersedes_and_gc_refuses_while_an_ingest_holds_its_lock() {
    let src = tempfile::tempdir().unwrap();
    let v1 = src.path().join("v1.safetensors");
    let v2 = src.path().join("v2.safetensors");
    synth::write_safetensors(&v1, &[tensor("w", Dtype::F16, &[64, 64], 1)], None).unwrap();
    synth::write_safetensors(&v2, &[tensor("w", Dtype::F16, &[64, 64], 2)], None).unwrap();
    let store = Arc::new(MemoryStore::new());
    let lib = test_library(store.clone());
    ingest(&lib, "m", &v1).await;
    lib.ingest("m", &v2, IngestOptions::default().replace(true))
        .await
        .unwrap();
    assert_eq!(store.list("manifests/m/").await.unwrap().len(), 1);
    assert_eq!(
        lib.manifest("m").await.unwrap().files[0].path,
        "v2.safetensors"
    );

    // A live ingest lock (as another process would hold) blocks gc.
    let lock = ObjectKey::new("locks/ingest-00000000000000000001-abc").unwrap();
    store.put(&lock, Bytes::from_static(b"x")).await.unwrap();
    let err = lib.gc(GcOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("lock"), "{err}");
    assert_eq!(
        store.list("locks/").await.unwrap().len(),
        1,
        "gc must remove its own lock"
    );
    // The same lock, stale, no longer blocks.
    store.set_modified_for_test(
        &lock,
        std::time::SystemTime::now() - Duration::from_secs(3600),
    );
    lib.gc(GcOptions::default()).await.unwrap();
}

/// `keep_older_generations`: an older generation stays listed, readable and alive through
/// gc; the new one is current; `remove` takes every generation; revisions are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_older_generations_survive_gc_and_stay_readable() {
    let src = tempfile::tempdir().unwrap();
    let v1 = src.path().join("v1.safetensors");
    let v2 = src.path().join("v2.safetensors");
    synth::write_safetensors(&v1, &[tensor("w", Dtype::F16, &[128, 128], 1)], None).unwrap();
    synth::write_safetensors(&v2, &[tensor("w", Dtype::F16, &[128, 128], 2)], None).unwrap();
    let store = Arc::new(MemoryStore::new());
    let lib = test_library(store.clone());
    let rev1 = "1111111111111111111111111111111111111111";
    lib.ingest(
        "org/m",
        &v1,
        IngestOptions::default().revision(Some(rev1.into())),
    )
    .await
    .unwrap();
    // ingest_files: the file under another path, kept next to the first generation.
    lib.ingest_files(
        "org/m",
        vec![("sub/model.safetensors".into(), v2.clone())],
        IngestOptions::default()
            .replace(true)
            .keep_older_generations(true)
            .revision(Some("main".into())),
    )
    .await
    .unwrap();
    let generations = lib.generations("org/m").await.unwrap();
    assert_eq!(generations.len(), 2);
    assert_eq!(generations[0].revision.as_deref(), Some(rev1));
    assert_eq!(generations[0].revision_id(), rev1);
    assert_eq!(generations[1].revision.as_deref(), Some("main"));
    assert_ne!(generations[1].revision_id(), rev1);
    assert_eq!(lib.manifest("org/m").await.unwrap(), generations[1]);
    assert_eq!(lib.models().await.unwrap(), ["org/m"]);

    // Only the older generation references v1's fragments: gc must keep them.
    let gc = lib
        .gc(GcOptions {
            dry_run: false,
            grace: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(gc.garbage_objects, 0);
    let out = tempfile::tempdir().unwrap();
    lib.export_generation(&generations[0], out.path(), None)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&v1).unwrap(),
        std::fs::read(out.path().join("v1.safetensors")).unwrap()
    );
    let old = lib.open_generation(&generations[0]).unwrap();
    let want = std::fs::read(&v1).unwrap();
    let reader = old.file("v1.safetensors").unwrap();
    let got = reader.read_at(0, want.len() as u64).await.unwrap();
    assert_eq!(&got[..], &want[..]);
    lib.export("org/m", out.path(), None).await.unwrap();
    assert_eq!(
        std::fs::read(&v2).unwrap(),
        std::fs::read(out.path().join("sub/model.safetensors")).unwrap()
    );

    // A plain replace deletes every older generation.
    lib.ingest("org/m", &v2, IngestOptions::default().replace(true))
        .await
        .unwrap();
    assert_eq!(lib.generations("org/m").await.unwrap().len(), 1);
    lib.ingest(
        "org/m",
        &v1,
        IngestOptions::default()
            .replace(true)
            .keep_older_generations(true),
    )
    .await
    .unwrap();
    assert_eq!(store.list("manifests/org/m/").await.unwrap().len(), 2);
    lib.remove("org/m").await.unwrap();
    assert!(store.list("manifests/").await.unwrap().is_empty());
    assert!(matches!(
        lib.generations("org/m").await,
        Err(FragmentError::ModelNotFound(_))
    ));

    // Bad input to ingest_files and a bad revision change nothing.
    let before = store.list("").await.unwrap().len();
    let dup = vec![("a".into(), v1.clone()), ("a".into(), v2.clone())];
    assert!(
        lib.ingest_files("x", dup, IngestOptions::default())
            .await
            .is_err()
    );
    let missing = vec![("a".into(), src.path().join("missing"))];
    assert!(
        lib.ingest_files("x", missing, IngestOptions::default())
            .await
            .is_err()
    );
    let unsafe_path = vec![("../a".into(), v1.clone())];
    assert!(
        lib.ingest_files("x", unsafe_path, IngestOptions::default())
            .await
            .is_err()
    );
    let bad_rev = IngestOptions::default().revision(Some("refs/pr/1".into()));
    assert!(lib.ingest("x", &v1, bad_rev).await.is_err());
    assert_eq!(store.list("").await.unwrap().len(), before);
}

/// Tensor reads go through the byte-range read path: `load_all` and `read_tensor` agree
/// with the source file, zero-length tensors included, and a manifest whose tensor holds a
/// zero-length fragment reference (valid: the fragments still add up) reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_reads_equal_the_source_with_empty_tensors_and_empty_fragments() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("m.safetensors");
    let tensors = vec![
        tensor("a.weight", Dtype::BF16, &[300, 257], 1),
        tensor("empty", Dtype::F32, &[0, 4], 2),
        tensor("b.weight", Dtype::F32, &[129, 511], 3),
        tensor("c.bias", Dtype::F16, &[7], 4),
    ];
    synth::write_safetensors(&path, &tensors, None).unwrap();
    let source = std::fs::read(&path).unwrap();
    let store = Arc::new(MemoryStore::new());
    let lib = test_library(store.clone());
    ingest(&lib, "m", &path).await;

    let check = |loaded: Vec<haagenti_core::Tensor>, model: &haagenti_core::ModelHandle| {
        assert_eq!(loaded.len(), tensors.len());
        for (t, info) in loaded.iter().zip(model.tensors()) {
            let want = &source[info.offset as usize..(info.offset + info.len) as usize];
            assert!(t.to_bytes() == want, "tensor {} differs", t.name);
            assert_eq!(t.len(), info.len);
        }
    };
    let model = lib.open_model("m").await.unwrap();
    check(model.load_all().await.unwrap(), &model);
    for info in model.tensors() {
        let one = model.read_tensor(&info.name).await.unwrap();
        check_one(
            &one,
            &source[info.offset as usize..(info.offset + info.len) as usize],
        );
    }

    // A newer generation whose tensor b starts with a zero-length fragment reference.
    let mut manifest = lib.manifest("m").await.unwrap();
    let haagenti_core::FileContent::Safetensors { tensors: refs, .. } =
        &mut manifest.files[0].content
    else {
        panic!("a safetensors file");
    };
    let empty = haagenti_core::FragmentRef {
        id: haagenti_core::FragmentId::of(b""),
        len: 0,
        depends_on: None,
    };
    refs[2].fragments.insert(0, empty);
    let key = ObjectKey::new(format!("manifests/m/{:020}", u64::MAX / 2)).unwrap();
    store
        .put(&key, Bytes::from(manifest.encode().unwrap()))
        .await
        .unwrap();
    let model = lib.open_model("m").await.unwrap();
    assert_eq!(model.tensors()[2].fragments.len(), refs_len(&manifest, 2));
    check(model.load_all().await.unwrap(), &model);
    let out = tempfile::tempdir().unwrap();
    lib.export("m", out.path(), None).await.unwrap();
    assert!(std::fs::read(out.path().join("m.safetensors")).unwrap() == source);
}

fn check_one(t: &haagenti_core::Tensor, want: &[u8]) {
    assert!(t.to_bytes() == want, "tensor {} differs", t.name);
}

fn refs_len(manifest: &haagenti_core::ModelManifest, tensor: usize) -> usize {
    manifest.files[0].tensors()[tensor].fragments.len()
}

/// A reader does not remember a failed read: once the store serves good bytes again, the
/// same reader reads the same range correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_retries_a_fragment_whose_read_failed() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("m.safetensors");
    synth::write_safetensors(&path, &[tensor("w", Dtype::BF16, &[512, 300], 9)], None).unwrap();
    let source = std::fs::read(&path).unwrap();
    let hooks = Arc::new(haagenti_testkit::hooks::HookStore::new(Arc::new(
        MemoryStore::new(),
    )));
    let lib = test_library(hooks.clone());
    ingest(&lib, "m", &path).await;
    let model = lib.open_model("m").await.unwrap();
    let reader = model.file("m.safetensors").unwrap();
    let at = model.tensors()[0].offset + 100;

    hooks.truncate_reads("fragments/", 10);
    let err = reader.read_at(at, 64).await.unwrap_err();
    assert!(err.is_corruption(), "{err}");
    hooks.heal();
    let got = reader.read_at(at, 64).await.unwrap();
    assert!(got == source[at as usize..at as usize + 64]);
}

/// `org/name` models live beside a model named `org` and beside each other: listed,
/// read, replaced and removed independently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_models_are_independent_of_their_namespace_and_neighbours() {
    let src = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, name) in ["org", "org/a", "org/b", "other/a"].iter().enumerate() {
        let path = src.path().join(format!("{i}.safetensors"));
        synth::write_safetensors(
            &path,
            &[tensor("w", Dtype::F16, &[64, 64], i as u64 + 20)],
            None,
        )
        .unwrap();
        paths.push((*name, path));
    }
    let store = Arc::new(MemoryStore::new());
    let lib = test_library(store.clone());
    for (name, path) in &paths {
        ingest(&lib, name, path).await;
    }
    assert_eq!(
        lib.models().await.unwrap(),
        ["org", "org/a", "org/b", "other/a"]
    );
    let keys: Vec<String> = store
        .list("manifests/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key.to_string())
        .collect();
    assert!(
        keys.iter().any(|k| k.starts_with("manifests/org/a/")),
        "{keys:?}"
    );

    // Replacing `org` leaves `org/a` alone, and the other way round.
    lib.ingest("org", &paths[1].1, IngestOptions::default().replace(true))
        .await
        .unwrap();
    lib.remove("org/b").await.unwrap();
    assert_eq!(lib.models().await.unwrap(), ["org", "org/a", "other/a"]);
    for (name, path) in [
        ("org", &paths[1].1),
        ("org/a", &paths[1].1),
        ("other/a", &paths[3].1),
    ] {
        let out = tempfile::tempdir().unwrap();
        lib.export(name, out.path(), None).await.unwrap();
        let file = path.file_name().unwrap();
        assert!(
            std::fs::read(out.path().join(file)).unwrap() == std::fs::read(path).unwrap(),
            "{name}"
        );
    }
    assert!(matches!(
        lib.manifest("org/b").await,
        Err(FragmentError::ModelNotFound(_))
    ));
}
