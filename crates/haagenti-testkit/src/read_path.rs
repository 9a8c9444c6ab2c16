//! The read-path suite: any byte range of any stored file, read through
//! [`FileReader`](haagenti_core::FileReader), equals the source bytes, for every encoding a
//! fragment can have (with `read_at`, and with `read_owned`, which decodes fragments in
//! place when the cache is off), and fetches only the fragments the range touches.
//!
//! [`check_read_path`] runs it on a store; the caller supplies the real codecs and
//! similarity (this crate depends on neither), which the suite needs to store deltas and
//! casts. Run it on a multi-threaded tokio runtime (the random ranges block in place).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use haagenti_core::{
    Encoding, FileContent, FragmentError, FragmentId, FragmentLibrary, FragmentStore,
    IngestOptions, ModelHandle, ModelManifest, ObjectKey,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::hooks::HookStore;
use crate::library::TestLibrary;
use crate::synth;

/// Fragment size of the suite's libraries: the smallest allowed, so tensors span several.
const FRAGMENT_SIZE: usize = 64 << 10;

/// Fragment ids read with `get` since the last call, with how often each was read.
fn fragment_gets(store: &HookStore) -> HashMap<FragmentId, u64> {
    store
        .take_gets("fragments/")
        .into_iter()
        .filter_map(|(key, n): (ObjectKey, u64)| Some((key.fragment_id()?, n)))
        .collect()
}

/// A model stored for the suite: its name and source (a file or a directory).
struct Stored {
    name: String,
    source: PathBuf,
}

/// Ingests, into one library, models that between them store fragments in every
/// encoding: standalone (the fp32 parent, a same-dtype base), cast (bf16 and fp16 casts of
/// the parent), delta against a cast (a bf16 fine-tune of the cast), delta (a fine-tune of
/// a standalone bf16 base, under `delta/`), blob chunks (a directory with a config and a
/// binary file) and lossy records (a LoRA merge substituted within 10%).
async fn ingest_family(lib: &FragmentLibrary, dir: &Path) -> Vec<Stored> {
    // Two lineages with different seeds: in the second the bf16 base comes first (and so
    // is standalone), so its fine-tune is a plain delta.
    let fam = synth::lineage_family(&dir.join("a"), 11, 512 << 10).unwrap();
    let other = synth::lineage_family(&dir.join("b"), 12, 512 << 10).unwrap();
    let model_dir = dir.join("dir-model");
    std::fs::create_dir_all(model_dir.join("sub")).unwrap();
    std::fs::copy(
        &fam.model("base-bf16").unwrap().path,
        model_dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(model_dir.join("config.json"), br#"{"hidden": 64}"#).unwrap();
    let mut rng = synth::Rng::new(5);
    let mut blob = vec![0u8; 700_000];
    rng.fill_bytes(&mut blob);
    std::fs::write(model_dir.join("sub/tokenizer.bin"), &blob).unwrap();
    std::fs::write(model_dir.join("empty.txt"), b"").unwrap();

    let path = |f: &synth::Family, n: &str| f.model(n).unwrap().path.clone();
    let plan: Vec<(&str, PathBuf, Option<f64>)> = vec![
        ("base-fp32", path(&fam, "base-fp32"), None),
        ("base-bf16", path(&fam, "base-bf16"), None),
        ("base-fp16", path(&fam, "base-fp16"), None),
        ("finetune-bf16", path(&fam, "finetune-bf16"), None),
        ("delta/base-bf16", path(&other, "base-bf16"), None),
        ("delta/finetune-bf16", path(&other, "finetune-bf16"), None),
        ("lossy-lora", path(&fam, "lora-bf16"), Some(0.1)),
        ("dir-model", model_dir, None),
    ];
    let mut stored = Vec::new();
    for (name, source, lossy) in plan {
        lib.ingest(
            name,
            &source,
            IngestOptions::default().lossy_max_rel_error(lossy),
        )
        .await
        .unwrap();
        stored.push(Stored {
            name: name.to_string(),
            source,
        });
    }
    stored
}

/// The bytes a reader must return for `file` of a model: the source file, with the
/// ranges of lossy-substituted fragments replaced by their substitutes' bytes.
async fn expected_bytes(
    lib: &FragmentLibrary,
    manifest: &ModelManifest,
    stored: &Stored,
    file: &str,
) -> Vec<u8> {
    let source = if stored.source.is_dir() {
        stored.source.join(file)
    } else {
        stored.source.clone()
    };
    let mut bytes = std::fs::read(source).unwrap();
    for l in manifest.lossy.iter().filter(|l| l.file == file) {
        let f = manifest.files.iter().find(|f| f.path == file).unwrap();
        let t = f.tensors().iter().find(|t| t.name == l.tensor).unwrap();
        let at = t.offset
            + t.fragments[..l.fragment as usize]
                .iter()
                .map(|r| u64::from(r.len))
                .sum::<u64>();
        let sub = lib.get_fragment(&l.substitute).await.unwrap().data;
        bytes[at as usize..at as usize + sub.len()].copy_from_slice(&sub);
    }
    bytes
}

/// Every piece boundary of a file (header end, fragment and chunk boundaries).
fn boundaries(manifest: &ModelManifest, file: &str) -> Vec<u64> {
    let f = manifest.files.iter().find(|f| f.path == file).unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    if let FileContent::Safetensors { header, .. } = &f.content {
        at = header.len() as u64;
        out.push(at);
    }
    for r in f.fragments() {
        at += u64::from(r.len);
        out.push(at);
    }
    out
}

/// Runs the whole suite on a fresh, empty store, with a library opened by `library`
/// (which must carry the real codecs and similarity; the suite sets the fragment size).
///
/// Panics, naming the model, file and range, on the first read that differs from the
/// source or fetches a fragment it does not need.
pub async fn check_read_path(store: Arc<dyn FragmentStore>, library: &TestLibrary) {
    let recording = Arc::new(HookStore::new(store));
    let lib = library
        .clone()
        .fragment_size(FRAGMENT_SIZE)
        .cache_bytes(0)
        .open(recording.clone());
    let src = tempfile::tempdir().unwrap();
    let stored = ingest_family(&lib, src.path()).await;

    assert_every_encoding_is_stored(&lib, &stored).await;
    for s in &stored {
        let manifest = lib.manifest(&s.name).await.unwrap();
        // A fresh library per model: no cache, nothing read before.
        let model = lib.open_model(&s.name).await.unwrap();
        assert_eq!(
            model.files().iter().map(|f| &f.path).collect::<Vec<_>>(),
            manifest.files.iter().map(|f| &f.path).collect::<Vec<_>>()
        );
        for file in model.files() {
            let expected = expected_bytes(&lib, &manifest, s, &file.path).await;
            assert_eq!(file.size, expected.len() as u64, "{} {}", s.name, file.path);
            assert_eq!(
                file.lossy,
                manifest.file_is_lossy(&file.path),
                "{} {}",
                s.name,
                file.path
            );
            check_edges(&model, &manifest, &file.path, &expected).await;
            check_random_ranges(&model, &file.path, &expected);
            check_owned(&lib, &manifest, &s.name, &file.path, &expected).await;
            check_sequential(&model, &file.path, &expected).await;
            check_fetches(&lib, &recording, &manifest, &s.name, &file.path).await;
        }
    }
    let missing = lib
        .open_model("base-fp32")
        .await
        .unwrap()
        .file("no/such/file")
        .unwrap_err();
    assert!(
        matches!(missing, FragmentError::NotInModel { what: "file", .. }),
        "{missing}"
    );
}

async fn assert_every_encoding_is_stored(lib: &FragmentLibrary, stored: &[Stored]) {
    let mut kinds = BTreeSet::new();
    let (mut chunks, mut lossy) = (0, 0);
    for s in stored {
        let m = lib.manifest(&s.name).await.unwrap();
        lossy += m.lossy.len();
        for f in &m.files {
            if let FileContent::Blob { chunks: c } = &f.content {
                chunks += c.len();
            }
        }
        for r in m.fragments() {
            let info = lib.fragment_info(&r.id).await.unwrap().unwrap();
            kinds.insert(match info.encoding {
                Encoding::Standalone { .. } => "standalone",
                Encoding::Delta { .. } => "delta",
                Encoding::Cast { .. } => "cast",
                Encoding::CastDelta { .. } => "delta against a cast",
                Encoding::Quant { .. } => "quant",
                Encoding::QuantDelta { .. } => "correction against a quant",
            });
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["cast", "delta", "delta against a cast", "standalone"],
        "the suite's family must store every encoding"
    );
    assert!(chunks > 2, "the suite's family must store blob chunks");
    assert!(lossy > 0, "the suite's family must hold lossy records");
}

/// Empty ranges, single bytes, the last byte, the whole file, every piece boundary
/// crossed, and ranges past the end (a clear error).
async fn check_edges(model: &ModelHandle, manifest: &ModelManifest, path: &str, expected: &[u8]) {
    let reader = model.file(path).unwrap();
    let size = expected.len() as u64;
    let mut ranges = vec![(0, 0), (size, 0), (0, size)];
    if size > 0 {
        ranges.extend([(0, 1), (size - 1, 1), (size / 2, 0)]);
    }
    for b in boundaries(manifest, path) {
        for (back, len) in [(1, 2), (1, 1), (0, 1), (3, 7), (100, 300)] {
            let offset = b.saturating_sub(back);
            if offset + len <= size {
                ranges.push((offset, len));
            }
        }
    }
    for (offset, len) in ranges {
        let got = reader.read_at(offset, len).await.unwrap();
        assert!(
            got == expected[offset as usize..(offset + len) as usize],
            "{path}: range {offset}+{len} differs from the source"
        );
    }
    for (offset, len) in [
        (size, 1),
        (size.saturating_sub(1), 2),
        (u64::MAX, 2),
        (0, size + 1),
    ] {
        let err = reader.read_at(offset, len).await.unwrap_err();
        assert!(
            matches!(err, FragmentError::RangeOutOfBounds { .. }),
            "{path}: {offset}+{len}: {err}"
        );
        assert!(err.to_string().contains("past its end"), "{err}");
    }
}

/// Random ranges (proptest, shrinking to the smallest failing range).
fn check_random_ranges(model: &ModelHandle, path: &str, expected: &[u8]) {
    let size = expected.len() as u64;
    let reader = model.file(path).unwrap();
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..=size).prop_flat_map(move |offset| (Just(offset), 0..=(size - offset)));
    runner
        .run(&strategy, |(offset, len)| {
            let got = tokio::task::block_in_place(|| handle.block_on(reader.read_at(offset, len)))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                got == expected[offset as usize..(offset + len) as usize],
                "{path}: range {offset}+{len} differs from the source"
            );
            Ok(())
        })
        .unwrap();
}

/// `read_owned` of the whole file, of ranges across piece boundaries and of random
/// ranges, with the cache off (fragments decoded in place) and on (copied from the cache).
async fn check_owned(
    lib: &FragmentLibrary,
    manifest: &ModelManifest,
    model: &str,
    path: &str,
    expected: &[u8],
) {
    let size = expected.len() as u64;
    let mut ranges = vec![(0, size), (size, 0)];
    let edges = boundaries(manifest, path);
    for w in edges.windows(3) {
        ranges.push((w[0], w[2] - w[0])); // two whole pieces
        ranges.push((
            w[0].saturating_sub(5),
            (w[2] + 5).min(size) - w[0].saturating_sub(5),
        ));
    }
    let mut rng = synth::Rng::new(size);
    for _ in 0..16 {
        let offset = rng.below(size + 1);
        ranges.push((offset, rng.below(size - offset + 1)));
    }
    for cache in [0, 8 << 20] {
        let lib = lib.clone().with_cache_bytes(cache);
        let reader = lib.open_model(model).await.unwrap().file(path).unwrap();
        for &(offset, len) in &ranges {
            let got = reader.read_owned(offset, len).await.unwrap();
            assert!(
                got == expected[offset as usize..(offset + len) as usize],
                "{model} {path}: read_owned {offset}+{len} (cache {cache}) differs from the source"
            );
        }
        let err = reader.read_owned(size, 1).await.unwrap_err();
        assert!(
            matches!(err, FragmentError::RangeOutOfBounds { .. }),
            "{err}"
        );
    }
}

/// Sequential reads in odd-sized steps (as a FUSE mount or an HTTP client reads).
async fn check_sequential(model: &ModelHandle, path: &str, expected: &[u8]) {
    let reader = model.file(path).unwrap();
    let mut at = 0usize;
    let mut got = Vec::with_capacity(expected.len());
    while at < expected.len() {
        let len = (48_123).min(expected.len() - at);
        got.extend_from_slice(&reader.read_at(at as u64, len as u64).await.unwrap());
        at += len;
    }
    assert!(
        got == expected,
        "{path}: sequential reads differ from the source"
    );
}

/// A range fetches the fragments it touches (and their one dependency each), nothing
/// else: checked on a library without a cache, for a range inside one fragment, a range
/// across two, and the header alone. A sequential read of the whole file fetches each
/// fragment once (the read-ahead window keeps what a later read needs).
async fn check_fetches(
    lib: &FragmentLibrary,
    recording: &HookStore,
    manifest: &ModelManifest,
    model: &str,
    path: &str,
) {
    let f = manifest.files.iter().find(|f| f.path == path).unwrap();
    let (refs, header_len): (Vec<_>, u64) = match &f.content {
        FileContent::Safetensors { header, .. } => {
            (f.fragments().copied().collect(), header.len() as u64)
        }
        FileContent::Blob { chunks } => (chunks.clone(), 0),
        // The metadata chunks tile the file's start (padding follows them).
        FileContent::Gguf { metadata, .. } => (metadata.clone(), 0),
    };
    let mut starts = vec![header_len];
    for r in &refs {
        starts.push(starts[starts.len() - 1] + u64::from(r.len));
    }
    let with_deps = |ids: &[FragmentId]| -> HashSet<FragmentId> {
        let mut out: HashSet<FragmentId> = ids.iter().copied().collect();
        for r in &refs {
            if ids.contains(&r.id) {
                out.extend(r.depends_on);
            }
        }
        out
    };
    let mut cases: Vec<(u64, u64, Vec<FragmentId>)> = Vec::new();
    if header_len > 0 {
        cases.push((0, header_len, vec![]));
    }
    if let Some(r) = refs.iter().position(|r| r.len > 10) {
        cases.push((starts[r] + 3, 5, vec![refs[r].id]));
    }
    if refs.len() >= 2 && refs[0].len > 0 && refs[1].len > 0 {
        cases.push((starts[1] - 1, 2, vec![refs[0].id, refs[1].id]));
    }
    for (offset, len, touched) in cases {
        let fresh = lib.clone().with_cache_bytes(0);
        let reader = fresh.open_model(model).await.unwrap().file(path).unwrap();
        fragment_gets(recording);
        reader.read_at(offset, len).await.unwrap();
        let fetched = fragment_gets(recording);
        let fetched_set: HashSet<FragmentId> = fetched.keys().copied().collect();
        assert_eq!(
            fetched_set,
            with_deps(&touched),
            "{model} {path}: range {offset}+{len} fetched other fragments"
        );
        assert!(
            fetched.values().all(|&n| n == 1),
            "{model} {path}: a fragment fetched twice"
        );
    }
    // Whole file, sequentially, in steps smaller than a fragment.
    let fresh = lib.clone().with_cache_bytes(0);
    let reader = fresh.open_model(model).await.unwrap().file(path).unwrap();
    fragment_gets(recording);
    let size = reader.len();
    let mut at = 0;
    while at < size {
        let len = 20_000.min(size - at);
        reader.read_at(at, len).await.unwrap();
        at += len;
    }
    let fetched = fragment_gets(recording);
    let distinct: HashSet<FragmentId> = refs.iter().map(|r| r.id).collect();
    let own: u64 = fetched
        .iter()
        .filter(|(id, _)| distinct.contains(id))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        own,
        refs.len() as u64,
        "{model} {path}: a sequential read fetched some fragment more than once"
    );
}
