//! Request counts at hub scale: with 10^6 fragments in the library, `stats`, `list` and
//! `show` make requests in proportion to models and index segments, never to fragments,
//! because manifests carry the size and kind of every stored object their model needs.
//! And those tables agree with the store: stats from them equal stats from a listing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::sync::Arc;

use haagenti_core::{
    Dtype, FileContent, FileManifest, FragmentId, FragmentLibrary, FragmentRef, FragmentStore,
    IngestOptions, MemoryStore, ModelManifest, ObjectKey, StoredKind, StoredObject,
};
use haagenti_testkit::hooks::{HookStore, OpCounts};
use haagenti_testkit::library::TestLibrary;
use haagenti_testkit::synth;

const MODELS: u64 = 20;
const FRAGMENTS_PER_MODEL: u64 = 50_000;

/// A manifest of one blob file of `FRAGMENTS_PER_MODEL` 1 MiB fragments (distinct across
/// models, every tenth a delta on the one before), with its stored-object table. The
/// fragment objects themselves are never written: a command that asked for one would fail.
fn synthetic_manifest(model: u64) -> ModelManifest {
    let id = |i: u64| {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&model.to_le_bytes());
        bytes[8..16].copy_from_slice(&i.to_le_bytes());
        FragmentId(bytes)
    };
    let len = 1u32 << 20;
    let chunks: Vec<FragmentRef> = (0..FRAGMENTS_PER_MODEL)
        .map(|i| FragmentRef {
            id: id(i),
            len,
            depends_on: (i % 10 == 9).then(|| id(i - 1)),
        })
        .collect();
    let mut objects: Vec<StoredObject> = (0..FRAGMENTS_PER_MODEL)
        .map(|i| StoredObject {
            id: id(i),
            stored_len: if i % 10 == 9 { 1 << 18 } else { 700 << 10 },
            kind: if i % 10 == 9 {
                StoredKind::Delta
            } else {
                StoredKind::Standalone
            },
        })
        .collect();
    objects.sort_by_key(|o| o.id);
    ModelManifest {
        name: format!("hub/model-{model:02}"),
        created_unix_ms: 1,
        files: vec![FileManifest {
            path: "weights.bin".into(),
            size: u64::from(len) * FRAGMENTS_PER_MODEL,
            blake3: [0; 32],
            content: FileContent::Blob { chunks },
        }],
        lossy: vec![],
        revision: None,
        objects,
    }
}

fn requests(c: OpCounts) -> u64 {
    c.gets + c.get_ranges + c.heads + c.lists + c.puts + c.deletes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_list_and_show_cost_requests_per_model_not_per_fragment() {
    let memory: Arc<dyn FragmentStore> = Arc::new(MemoryStore::new());
    // One real model, so that the library also has fragments and an index segment.
    let src = tempfile::tempdir().unwrap();
    let real = src.path().join("real.safetensors");
    synth::generate_model(&real, 2 << 20, 7, Dtype::BF16).unwrap();
    let lib = TestLibrary::new()
        .similarity(haagenti_lsh::cosine_similarity())
        .open(memory.clone());
    lib.ingest("real", &real, IngestOptions::default())
        .await
        .unwrap();
    for model in 0..MODELS {
        let m = synthetic_manifest(model);
        let key = ObjectKey::new(format!("manifests/{}/{:020}", m.name, 1_000 + model)).unwrap();
        memory.put(&key, m.encode().unwrap().into()).await.unwrap();
    }
    let segments = memory.list("index/").await.unwrap().len() as u64;
    let models = MODELS + 1;

    let store = Arc::new(HookStore::new(memory));
    let lib: FragmentLibrary = TestLibrary::new()
        .similarity(haagenti_lsh::cosine_similarity())
        .open(store.clone());
    let counted = |before: OpCounts| requests(store.counts()) - requests(before);

    let before = store.counts();
    let stats = lib.stats().await.unwrap();
    let stats_requests = counted(before);
    assert_eq!(stats.models, models);
    let fragments = MODELS * FRAGMENTS_PER_MODEL;
    assert!(stats.fragments > fragments, "{stats:?}");
    let delta_saved = (MODELS * FRAGMENTS_PER_MODEL / 10) * ((1 << 20) - (1 << 18));
    assert!(stats.savings.delta_bytes >= delta_saved as i64, "{stats:?}");

    let before = store.counts();
    let (intact, damaged) = lib.manifests_report().await.unwrap();
    let list_requests = counted(before);
    assert_eq!((intact.len() as u64, damaged.len()), (models, 0));

    let before = store.counts();
    let shown = lib.manifest("hub/model-07").await.unwrap();
    let show_requests = counted(before);
    assert_eq!(shown.objects.len() as u64, FRAGMENTS_PER_MODEL);

    println!(
        "{fragments} fragments, {models} models, {segments} index segments: stats {stats_requests} \
         requests, list {list_requests}, show {show_requests}"
    );
    // A listing of manifests/ and index/ plus one listing and one read per model.
    let bound = 2 * models + segments + 4;
    assert!(stats_requests <= bound, "stats: {stats_requests} > {bound}");
    assert!(list_requests <= bound, "list: {list_requests} > {bound}");
    assert!(show_requests <= 2, "show: {show_requests}");
    // Not one fragment object was asked for.
    assert!(store.take_gets("fragments/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_from_the_manifests_tables_equal_stats_from_the_store() {
    let src = tempfile::tempdir().unwrap();
    let family = synth::small_family(&src.path().join("src"), 31).unwrap();
    let store: Arc<dyn FragmentStore> = Arc::new(MemoryStore::new());
    let lib = TestLibrary::new()
        .similarity(haagenti_lsh::cosine_similarity())
        .open(store.clone());
    for m in &family.models {
        lib.ingest(&m.name, &m.path, IngestOptions::default())
            .await
            .unwrap();
    }
    let tabled = lib.stats().await.unwrap();
    // Casts and standalone objects here; the synthetic test above covers deltas.
    assert!(tabled.savings.cast_bytes > 0, "{tabled:?}");

    // The same library with every manifest as format 2 wrote it (no table): stats then
    // read the store, and must find the same figures.
    for key in store.list("manifests/").await.unwrap() {
        let bytes = store.get(&key.key).await.unwrap();
        let mut m = ModelManifest::decode(&bytes, key.key.as_str()).unwrap();
        assert!(!m.objects.is_empty(), "{}", m.name);
        // Every referenced fragment and dependency is in the table, once.
        let mut needed: Vec<FragmentId> = m
            .fragments()
            .flat_map(|r| std::iter::once(r.id).chain(r.depends_on))
            .collect();
        needed.sort();
        needed.dedup();
        let tabled_ids: Vec<FragmentId> = m.objects.iter().map(|o| o.id).collect();
        assert_eq!(tabled_ids, needed, "{}", m.name);
        m.objects.clear();
        store.delete(&key.key).await.unwrap();
        store
            .put(&key.key, m.encode().unwrap().into())
            .await
            .unwrap();
    }
    let from_store = lib.stats().await.unwrap();
    // Every figure matches but the manifests' own size, which lost the tables.
    assert!(from_store.manifest_bytes < tabled.manifest_bytes);
    let figures = |s: &haagenti_core::LibraryStats| {
        (
            s.models,
            s.fragments,
            s.fragment_bytes,
            s.logical_bytes,
            s.index_bytes,
        )
    };
    assert_eq!(figures(&tabled), figures(&from_store));
    assert_eq!(
        serde_json::to_value(&tabled.savings).unwrap(),
        serde_json::to_value(&from_store.savings).unwrap()
    );
}
