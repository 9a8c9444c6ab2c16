//! Model switching: tensor reads through the shared fragment cache fetch only what they
//! need, once, and return the source bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use haagenti_core::store::FRAGMENTS_PREFIX;
use haagenti_core::{
    Dtype, FileReader, FragmentLibrary, FragmentStore, IngestOptions, MemoryStore, ModelHandle,
    ObjectKey, TensorInfo,
};
use haagenti_testkit::hooks::HookStore;
use haagenti_testkit::library::{TEST_FRAGMENT_SIZE, TestLibrary, test_library};
use haagenti_testkit::synth::{self, Recipe, SynthTensor};

const FRAGMENT: usize = TEST_FRAGMENT_SIZE;

/// A memory store that counts the `get`s of every key and can make them slow.
fn counting_store() -> Arc<HookStore> {
    Arc::new(HookStore::new(Arc::new(MemoryStore::new())))
}

fn library(store: Arc<HookStore>, cache_bytes: u64) -> FragmentLibrary {
    TestLibrary::new()
        .parallelism(4)
        .cache_bytes(cache_bytes)
        .open(store)
}

fn normal(seed: u64) -> Recipe {
    Recipe::Normal {
        seed,
        mean: 0.0,
        std: 0.02,
    }
}

/// Model A: eight 256 KiB layers (four fragments each) and a one-fragment head. Model B:
/// A with layers 4..8 fine-tuned, so half its layer fragments are A's.
fn write_pair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let layer = |i: u64, recipe: Recipe| {
        SynthTensor::new(
            format!("layers.{i}.weight"),
            Dtype::BF16,
            vec![256, 512],
            recipe,
        )
    };
    let head = SynthTensor::new("head.weight", Dtype::BF16, vec![128, 256], normal(100));
    let a: Vec<SynthTensor> = (0..8)
        .map(|i| layer(i, normal(i)))
        .chain([head.clone()])
        .collect();
    let b: Vec<SynthTensor> = (0..8)
        .map(|i| {
            if i < 4 {
                layer(i, normal(i))
            } else {
                let tuned = Recipe::Perturb {
                    base: Box::new(normal(i)),
                    seed: 1000 + i,
                    std: 0.002,
                };
                layer(i, tuned)
            }
        })
        .chain([head])
        .collect();
    let (pa, pb) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    synth::write_safetensors(&pa, &a, None).unwrap();
    synth::write_safetensors(&pb, &b, None).unwrap();
    (pa, pb)
}

async fn ingest_pair(store: &Arc<HookStore>, dir: &Path) {
    let (pa, pb) = write_pair(dir);
    let lib = library(store.clone(), 0);
    for (name, path) in [("a", &pa), ("b", &pb)] {
        lib.ingest(name, path, IngestOptions::default())
            .await
            .unwrap();
    }
    store.take_gets(FRAGMENTS_PREFIX);
}

/// The pair ingested into a counting store, and model "a" opened through a library with
/// `cache_bytes` of fragment cache (the directory holds the source files).
async fn model_a(
    cache_bytes: u64,
) -> (
    tempfile::TempDir,
    Arc<HookStore>,
    FragmentLibrary,
    ModelHandle,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = counting_store();
    ingest_pair(&store, dir.path()).await;
    let lib = library(store.clone(), cache_bytes);
    let a = lib.open_model("a").await.unwrap();
    (dir, store, lib, a)
}

fn fragment_keys(handle: &ModelHandle, tensor: Option<&str>) -> BTreeSet<ObjectKey> {
    handle
        .tensors()
        .iter()
        .filter(|t| tensor.is_none_or(|n| t.name == n))
        .flat_map(|t| t.fragments.iter().map(|r| ObjectKey::fragment(&r.id)))
        .collect()
}

/// Every tensor of `handle` read with `read_tensor` equals the bytes of `file` at its offsets.
async fn assert_tensors_match_file(handle: &ModelHandle, file: &Path) {
    let source = std::fs::read(file).unwrap();
    assert!(!handle.tensors().is_empty());
    for info in handle.tensors() {
        let tensor = handle.read(info).await.unwrap();
        let range = info.offset as usize..(info.offset + info.len) as usize;
        assert!(
            tensor.to_bytes()[..] == source[range],
            "{} of {} differs from the source",
            info.name,
            handle.name()
        );
        assert_eq!(
            (tensor.dtype, &tensor.shape),
            (info.dtype, &info.shape),
            "{}",
            info.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_one_tensor_fetches_only_its_fragments() {
    let (_dir, store, lib, handle) = model_a(64 << 20).await;
    assert_eq!(handle.tensors().len(), 9);

    let tensor = handle.read_tensor("layers.5.weight").await.unwrap();
    let gets = store.take_gets(FRAGMENTS_PREFIX);
    let wanted = fragment_keys(&handle, Some("layers.5.weight"));
    assert_eq!(wanted.len(), 4);
    assert_eq!(gets.keys().cloned().collect::<BTreeSet<_>>(), wanted);
    assert!(gets.values().all(|&n| n == 1), "{gets:?}");
    assert_eq!(tensor.len(), 256 * 512 * 2);
    assert_eq!(tensor.parts.len(), 4);
    let m = lib.metrics();
    assert_eq!((m.store_reads, m.cache_misses, m.cache_hits), (4, 4, 0));

    // Read again: all from the cache, sharing the first read's bytes.
    let again = handle.read_tensor("layers.5.weight").await.unwrap();
    assert!(store.take_gets(FRAGMENTS_PREFIX).is_empty());
    assert_eq!(again, tensor);
    for (x, y) in again.parts.iter().zip(&tensor.parts) {
        assert_eq!(x.as_ptr(), y.as_ptr(), "a cached fragment is not copied");
    }
    let m = lib.metrics();
    assert_eq!((m.store_reads, m.cache_hits), (4, 4));
    assert_eq!(m.cache_hit_bytes, 4 * FRAGMENT as u64);

    let missing = handle.read_tensor("no.such.tensor").await.unwrap_err();
    assert!(missing.to_string().contains("no.such.tensor"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_shared_by_two_models_is_fetched_once() {
    let (_dir, store, lib, a) = model_a(64 << 20).await;
    let b = lib.open_model("b").await.unwrap();
    let (keys_a, keys_b) = (fragment_keys(&a, None), fragment_keys(&b, None));
    let shared: BTreeSet<_> = keys_a.intersection(&keys_b).cloned().collect();
    assert_eq!(shared.len(), 4 * 4 + 1, "layers 0..4 and the head");

    a.load_all().await.unwrap();
    assert_eq!(store.take_gets(FRAGMENTS_PREFIX).len(), keys_a.len());
    let before = lib.metrics();
    let loaded = b.load_all().await.unwrap();
    assert_eq!(loaded.len(), b.tensors().len());
    let gets = store.take_gets(FRAGMENTS_PREFIX);
    let fetched: BTreeSet<_> = gets.keys().cloned().collect();
    assert_eq!(fetched, &keys_b - &shared, "B fetches only what A lacks");
    assert!(gets.values().all(|&n| n == 1), "{gets:?}");
    let used = lib.metrics().since(&before);
    assert_eq!(used.cache_hits, shared.len() as u64);
    assert_eq!(used.cache_hit_bytes, shared.len() as u64 * FRAGMENT as u64);
    assert_eq!(used.store_reads, fetched.len() as u64);

    // A handle opened from a clone shares the cache: nothing is fetched again.
    let again = lib.clone().open_model("b").await.unwrap();
    again.load_all().await.unwrap();
    assert!(store.take_gets(FRAGMENTS_PREFIX).is_empty());

    // A library with its own cache fetches everything again.
    let cold = library(store.clone(), 64 << 20)
        .open_model("b")
        .await
        .unwrap();
    cold.load_all().await.unwrap();
    assert_eq!(store.take_gets(FRAGMENTS_PREFIX).len(), keys_b.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_never_exceeds_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = counting_store();
    ingest_pair(&store, dir.path()).await;
    // Room for five of the 33 fragments each model has (+ one byte to be sure the
    // fifth fits): reads must evict, and still return the right bytes.
    let budget = 5 * FRAGMENT as u64 + 1;
    let lib = library(store.clone(), budget);
    for (name, file) in [
        ("a", "a.safetensors"),
        ("b", "b.safetensors"),
        ("a", "a.safetensors"),
    ] {
        let handle = lib.open_model(name).await.unwrap();
        for info in handle.tensors() {
            handle.read(info).await.unwrap();
            lib.sync_cache().await;
            let m = lib.metrics();
            assert!(m.cache_bytes <= budget, "{m:?}");
            // Every fragment weighs its length.
            assert_eq!(m.cache_bytes, m.cache_entries * FRAGMENT as u64, "{m:?}");
        }
        handle.load_all().await.unwrap();
        lib.sync_cache().await;
        let m = lib.metrics();
        assert!(m.cache_bytes <= budget && m.cache_entries > 0, "{m:?}");
        assert_tensors_match_file(&handle, &dir.path().join(file)).await;
    }
    let m = lib.metrics();
    assert!(m.store_reads > 66, "a small cache refetches: {m:?}");

    // A budget of zero keeps nothing.
    let none = library(store.clone(), 0);
    let a = none.open_model("a").await.unwrap();
    a.load_all().await.unwrap();
    a.load_all().await.unwrap();
    none.sync_cache().await;
    let m = none.metrics();
    assert_eq!((m.cache_bytes, m.cache_entries, m.store_reads), (0, 0, 66));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tensor_read_equals_the_source_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let family = synth::small_family(dir.path(), 11).unwrap();
    let store = counting_store();
    let lib = library(store.clone(), 2 << 20);
    for m in &family.models {
        lib.ingest(&m.name, &m.path, IngestOptions::default())
            .await
            .unwrap();
    }
    for m in &family.models {
        let handle = lib.open_model(&m.name).await.unwrap();
        let tensors = handle.load_all().await.unwrap();
        let mut sources: HashMap<&str, Vec<u8>> = HashMap::new();
        for (info, t) in handle.tensors().iter().zip(&tensors) {
            assert_eq!((&t.name, &t.file), (&info.name, &info.file));
            let source = sources.entry(info.file.as_str()).or_insert_with(|| {
                let path = if m.is_dir() {
                    m.path.join(&info.file)
                } else {
                    m.path.clone()
                };
                std::fs::read(path).unwrap()
            });
            let range = info.offset as usize..(info.offset + info.len) as usize;
            assert!(
                t.to_bytes()[..] == source[range],
                "{} {}",
                m.name,
                info.name
            );
        }
        assert!(!sources.is_empty(), "{} has tensors", m.name);
        if !m.is_dir() {
            assert_tensors_match_file(&handle, &m.path).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_one_fragment_fetch_it_once() {
    let (_dir, store, lib, handle) = model_a(64 << 20).await;
    let key = fragment_keys(&handle, Some("head.weight"));
    assert_eq!(key.len(), 1, "the head is one fragment");

    // Slow reads make the sixteen requests overlap.
    store.delay_gets(Some(Duration::from_millis(200)));
    let reads: Vec<_> = (0..16)
        .map(|_| {
            let h = handle.clone();
            tokio::spawn(async move { h.read_tensor("head.weight").await.unwrap() })
        })
        .collect();
    let mut tensors = Vec::new();
    for r in reads {
        tensors.push(r.await.unwrap());
    }
    store.delay_gets(None);
    let gets = store.take_gets(FRAGMENTS_PREFIX);
    assert_eq!(gets.len(), 1);
    assert_eq!(
        gets.values().next(),
        Some(&1),
        "one fetch for sixteen readers"
    );
    let m = lib.metrics();
    assert_eq!((m.cache_misses, m.cache_hits), (1, 15));
    // Every reader holds the same cached bytes: no copies.
    let first = tensors[0].parts[0].as_ptr();
    assert!(tensors.iter().all(|t| t.parts[0].as_ptr() == first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_opt_in_and_verify_and_export_check_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(MemoryStore::new());
    let store = Arc::new(HookStore::new(memory.clone()));
    ingest_pair(&store, dir.path()).await;
    let cached = library(store.clone(), 64 << 20);
    let plain = test_library(store.clone());
    let head = cached.open_model("a").await.unwrap();
    let id = head.tensor("head.weight").unwrap().fragments[0].id;
    let good = cached.get_fragment(&id).await.unwrap();
    assert_eq!(plain.get_fragment(&id).await.unwrap(), good);
    plain.sync_cache().await;
    assert_eq!(
        plain.metrics().cache_entries,
        0,
        "no cache unless asked for"
    );

    // Damage the stored object: the cached copy (verified when it was read) still serves,
    // every read that goes to the store reports the damage.
    let key = ObjectKey::fragment(&id);
    let mut damaged = memory.get(&key).await.unwrap().to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    memory.overwrite_for_test(&key, Bytes::from(damaged));
    assert_eq!(cached.get_fragment(&id).await.unwrap(), good);
    assert!(plain.get_fragment(&id).await.unwrap_err().is_corruption());
    // Verify and export check the store, cache or not.
    let report = cached.verify(Some("a"), None).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let out = tempfile::tempdir().unwrap();
    let err = cached.export("a", out.path(), None).await.unwrap_err();
    assert!(err.is_corruption(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_once_reader_serves_the_cache_without_filling_it() {
    let (dir, store, lib, a) = model_a(64 << 20).await;
    let source = std::fs::read(dir.path().join("a.safetensors")).unwrap();
    let keys = fragment_keys(&a, None);
    store.take_gets(FRAGMENTS_PREFIX);

    // Model A has no delta or cast: reading it once fills nothing.
    let once = a.file_read_once("a.safetensors").unwrap();
    assert_eq!(once.read_at(0, once.len()).await.unwrap(), source);
    lib.sync_cache().await;
    assert_eq!(lib.metrics().cache_entries, 0);
    let fetched: BTreeSet<_> = store.take_gets(FRAGMENTS_PREFIX).into_keys().collect();
    assert_eq!(fetched, keys);

    // What a caching reader put in the cache, a read-once reader takes from it.
    let cached = a.file("a.safetensors").unwrap();
    assert_eq!(cached.read_at(0, cached.len()).await.unwrap(), source);
    store.take_gets(FRAGMENTS_PREFIX);
    let before = lib.metrics();
    // A new reader: the first one still holds its last read's fragments.
    let once = a.file_read_once("a.safetensors").unwrap();
    assert_eq!(once.read_at(0, once.len()).await.unwrap(), source);
    assert!(store.take_gets(FRAGMENTS_PREFIX).is_empty());
    assert_eq!(
        lib.metrics().cache_hits - before.cache_hits,
        keys.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_once_reader_does_not_read_ahead_what_it_returned_whole() {
    let (dir, store, _lib, a) = model_a(64 << 20).await;
    let tensor = |name: &str| a.tensor(name).unwrap().clone();
    let (one, four, five) = (
        tensor("layers.1.weight"),
        tensor("layers.4.weight"),
        tensor("layers.5.weight"),
    );
    let reader = a.file_read_once(&five.file).unwrap();

    // layers.5 returned whole (the kernel keeps it), then a jump back, and reads walking
    // up to it from layers.2 on, as a loader visiting tensors out of file order makes.
    reader.read_at(five.offset, five.len).await.unwrap();
    reader.read_at(one.offset, 1).await.unwrap();
    store.take_gets(FRAGMENTS_PREFIX);
    for name in ["layers.2.weight", "layers.3.weight", "layers.4.weight"] {
        let t = tensor(name);
        reader.read_at(t.offset, 1).await.unwrap();
    }
    // Read-ahead went on past each read (the rest of layers.4 came without being asked
    // for), but not into layers.5.
    let rest_of_four: BTreeSet<_> = four.fragments[1..]
        .iter()
        .map(|f| ObjectKey::fragment(&f.id))
        .collect();
    let mut fetched = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rest_of_four.is_subset(&fetched) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        fetched.extend(store.take_gets(FRAGMENTS_PREFIX).into_keys());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    fetched.extend(store.take_gets(FRAGMENTS_PREFIX).into_keys());
    assert!(rest_of_four.is_subset(&fetched), "read-ahead stopped");
    let five_keys = fragment_keys(&a, Some("layers.5.weight"));
    assert!(
        fetched.is_disjoint(&five_keys),
        "layers.5 was read ahead again"
    );
    // Asked for again (the kernel dropped its pages), it is read again.
    let source = std::fs::read(dir.path().join("a.safetensors")).unwrap();
    let again = reader.read_at(five.offset, five.len).await.unwrap();
    assert!(again[..] == source[five.offset as usize..(five.offset + five.len) as usize]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_once_reader_coming_back_joins_the_fetch_it_left_behind() {
    let (_dir, store, _lib, a) = model_a(64 << 20).await;
    let one = a.tensor("layers.1.weight").unwrap().clone();
    let five = a.tensor("layers.5.weight").unwrap().clone();
    let reader = a.file_read_once(&five.file).unwrap();
    store.take_gets(FRAGMENTS_PREFIX);
    store.delay_gets(Some(Duration::from_millis(300)));

    // A first read into layers.5 fetches all of it; while those fetches are slow, a read
    // jumps away (they leave the window, on their way to the cache) and one comes back
    // for the second fragment of layers.5 before the cache has it.
    let read = |offset: u64| {
        let reader = reader.clone();
        tokio::spawn(async move { reader.read_at(offset, 1).await })
    };
    let first = read(five.offset);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let away = read(one.offset);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let back = read(five.offset + u64::from(five.fragments[0].len));
    for r in [first, away, back] {
        r.await.unwrap().unwrap();
    }
    store.delay_gets(None);
    let gets = store.take_gets(FRAGMENTS_PREFIX);
    for key in fragment_keys(&a, Some("layers.5.weight")) {
        assert_eq!(gets.get(&key), Some(&1), "{key} fetched more than once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_read_is_ready_only_once_its_pieces_are_fetched() {
    let (dir, store, _lib, a) = model_a(0).await;
    let source = std::fs::read(dir.path().join("a.safetensors")).unwrap();
    let five = a.tensor("layers.5.weight").unwrap().clone();
    let reader = a.file_read_once(&five.file).unwrap();
    let want = |offset: u64, len: u64| source[offset as usize..(offset + len) as usize].to_vec();
    let joined = |parts: Vec<Bytes>| parts.concat();

    // The store is slow: the first read of layers.5 is not ready when started.
    store.delay_gets(Some(Duration::from_millis(200)));
    let first = reader.start_read(five.offset, 10).unwrap();
    assert!(first.ready().is_none());
    assert_eq!(joined(first.finish().await.unwrap()), want(five.offset, 10));
    store.delay_gets(None);

    // The rest of that fragment and the next one were fetched with it (the rest of the
    // tensor is read ahead): a read spanning both is ready at once, in two parts.
    let len = u64::from(five.fragments[0].len);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let parts = loop {
        let read = reader.start_read(five.offset + 10, len).unwrap();
        if let Some(parts) = read.ready() {
            break parts.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        read.finish().await.unwrap();
    };
    assert_eq!(parts.len(), 2);
    assert_eq!(joined(parts), want(five.offset + 10, len));
    // An empty read is ready; one past the end is refused before anything starts.
    assert!(
        reader
            .start_read(0, 0)
            .unwrap()
            .ready()
            .unwrap()
            .unwrap()
            .is_empty()
    );
    assert!(reader.start_read(reader.len(), 1).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_into_a_tensor_fetches_the_rest_of_that_tensor_and_no_further() {
    let (_dir, store, _lib, a) = model_a(0).await;
    let tensor = a.tensor("layers.5.weight").unwrap();
    let wanted = fragment_keys(&a, Some("layers.5.weight"));
    assert_eq!(wanted.len(), 4);
    store.take_gets(FRAGMENTS_PREFIX);

    // One byte of its first fragment, as a first fault in a mapping asks: the other three
    // fragments are fetched ahead, the next tensor (layers.6) is not.
    let reader = a.file(&tensor.file).unwrap();
    reader.read_at(tensor.offset, 1).await.unwrap();
    let mut fetched = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fetched.len() < wanted.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        fetched.extend(store.take_gets(FRAGMENTS_PREFIX).into_keys());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    fetched.extend(store.take_gets(FRAGMENTS_PREFIX).into_keys());
    assert_eq!(fetched, wanted);
}

/// The fragment cache's entry count once it is `want`, or after 10 s. Read-ahead lands
/// in the cache and consumed fragments leave it from tasks of their own, so the count
/// passes through other values on its way.
async fn cache_entries_settling_at(lib: &FragmentLibrary, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        lib.sync_cache().await;
        let entries = lib.metrics().cache_entries;
        if entries == want || std::time::Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A read-once reader of model "a" (cache on) that read the first fragment of layers.5,
/// which fetched its four fragments, then jumped to layers.1: the three unread ones are
/// left behind, and cached rather than lost.
struct JumpedAway {
    _dir: tempfile::TempDir,
    store: Arc<HookStore>,
    lib: FragmentLibrary,
    a: ModelHandle,
    five: TensorInfo,
    one: TensorInfo,
    reader: FileReader,
    /// Length of layers.5's first fragment.
    first: u64,
}

async fn jumped_away_from_layers_5() -> JumpedAway {
    let (dir, store, lib, a) = model_a(64 << 20).await;
    let five = a.tensor("layers.5.weight").unwrap().clone();
    let one = a.tensor("layers.1.weight").unwrap().clone();
    let reader = a.file_read_once(&five.file).unwrap();
    let first = u64::from(five.fragments[0].len);
    reader.read_at(five.offset, first).await.unwrap();
    reader.read_at(one.offset, 1).await.unwrap();
    assert_eq!(cache_entries_settling_at(&lib, 3).await, 3);
    JumpedAway {
        _dir: dir,
        store,
        lib,
        a,
        five,
        one,
        reader,
        first,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_read_once_reader_kept_leaves_the_cache_once_it_read_the_rest() {
    let JumpedAway {
        _dir,
        store,
        lib,
        a,
        five,
        one,
        reader,
        first,
    } = jumped_away_from_layers_5().await;
    // Coming back for the rest of layers.5 takes them from the cache; once the reader
    // moves on they have given every byte and leave the cache. What it now leaves of
    // layers.1 (one byte read) is kept instead.
    // (Read-ahead of the jump's read may still reach the store meanwhile: only layers.5
    // counts.)
    let five_keys = fragment_keys(&a, Some("layers.5.weight"));
    store.take_gets(FRAGMENTS_PREFIX);
    reader
        .read_at(five.offset + first, five.len - first)
        .await
        .unwrap();
    let gets = store.take_gets(FRAGMENTS_PREFIX);
    assert!(
        gets.keys().all(|k| !five_keys.contains(k)),
        "served from the cache"
    );
    reader.read_at(one.offset, 1).await.unwrap();
    let left = one.fragments.len() as u64;
    assert_eq!(cache_entries_settling_at(&lib, left).await, left);
    // So layers.5 read again comes from the store, every fragment of it.
    store.take_gets(FRAGMENTS_PREFIX);
    let again = a.file_read_once(&five.file).unwrap();
    again.read_at(five.offset, five.len).await.unwrap();
    let fetched: BTreeSet<_> = store.take_gets(FRAGMENTS_PREFIX).into_keys().collect();
    let all: BTreeSet<_> = five
        .fragments
        .iter()
        .map(|f| ObjectKey::fragment(&f.id))
        .collect();
    assert_eq!(fetched, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_read_once_reader_leaves_unread_goes_to_the_cache() {
    let JumpedAway {
        _dir,
        store,
        lib,
        a,
        five,
        one,
        reader,
        ..
    } = jumped_away_from_layers_5().await;
    // Reading layers.5 whole again fetches only the fragment that was read whole (its
    // consumer keeps it, so it was not cached).
    store.take_gets(FRAGMENTS_PREFIX);
    let again = a.file_read_once(&five.file).unwrap();
    again.read_at(five.offset, five.len).await.unwrap();
    let fetched: BTreeSet<_> = store.take_gets(FRAGMENTS_PREFIX).into_keys().collect();
    assert_eq!(
        fetched,
        BTreeSet::from([ObjectKey::fragment(&five.fragments[0].id)])
    );

    // A fragment a read took only part of is cached too once the window moves on: the
    // first reader jumps away from layers.1, whose first fragment gave one byte.
    reader.read_at(five.offset, 1).await.unwrap();
    let want = 3 + one.fragments.len() as u64;
    assert_eq!(cache_entries_settling_at(&lib, want).await, want);
}
