//! Store faults: a write that fails at every possible point of an ingest, a write that
//! succeeds but reports failure, a store that stops accepting writes, reads that come
//! back truncated, and the leftovers of a killed writer. Each gives a clear error, and
//! the library stays consistent: every other model verifies and exports bit-exact, and
//! `gc` returns the store to its state before the failed ingest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use haagenti_core::{
    Dtype, FragmentId, FragmentLibrary, FragmentStore, GcOptions, IngestOptions, MemoryStore,
    ObjectKey,
};
use haagenti_testkit::hooks::{HookStore, PutFault};
use haagenti_testkit::library::{TestLibrary, store_listing};
use haagenti_testkit::synth::{self, Recipe, SynthTensor};

fn tensor(name: &str, seed: u64) -> SynthTensor {
    SynthTensor::new(
        name,
        Dtype::BF16,
        vec![128, 384],
        Recipe::Normal {
            seed,
            mean: 0.0,
            std: 0.02,
        },
    )
}

/// Model `a` (one file) and model `b` (a directory: a safetensors file sharing two of
/// `a`'s tensors plus two new ones, and a config blob).
fn models(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let a = dir.join("a.safetensors");
    synth::write_safetensors(
        &a,
        &[tensor("l0.w", 1), tensor("l1.w", 2), tensor("l2.w", 3)],
        None,
    )
    .unwrap();
    let b = dir.join("b");
    synth::write_safetensors(
        &b.join("model.safetensors"),
        &[
            tensor("x.w", 1),
            tensor("y.w", 10),
            tensor("z.w", 3),
            tensor("q.w", 11),
        ],
        None,
    )
    .unwrap();
    std::fs::write(b.join("config.json"), br#"{"hidden_size": 384}"#).unwrap();
    (a, b)
}

async fn assert_exports(lib: &FragmentLibrary, model: &str, src: &Path) {
    let out = tempfile::tempdir().unwrap();
    lib.export(model, out.path(), None).await.unwrap();
    if src.is_dir() {
        for name in ["model.safetensors", "config.json"] {
            assert!(
                std::fs::read(src.join(name)).unwrap()
                    == std::fs::read(out.path().join(name)).unwrap(),
                "{model}/{name} differs"
            );
        }
    } else {
        let name = src.file_name().unwrap();
        assert!(
            std::fs::read(src).unwrap() == std::fs::read(out.path().join(name)).unwrap(),
            "{model} differs"
        );
    }
}

const GC_NOW: GcOptions = GcOptions {
    dry_run: false,
    grace: Duration::ZERO,
};

/// Sets up a library holding model `a`; returns the hook store, the library and the
/// listing after `a`.
async fn with_model_a(a: &Path) -> (Arc<HookStore>, FragmentLibrary, BTreeMap<String, u64>) {
    let store = Arc::new(HookStore::new(Arc::new(MemoryStore::new())));
    let lib = TestLibrary::new().parallelism(2).open(store.clone());
    lib.ingest("a", a, IngestOptions::default()).await.unwrap();
    let before = store_listing(&*store).await;
    (store, lib, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failing_anywhere_in_an_ingest_leaves_a_consistent_library() {
    let src = tempfile::tempdir().unwrap();
    let (a, b) = models(src.path());

    // How many puts a clean ingest of `b` makes after `a`.
    let (store, lib, _) = with_model_a(&a).await;
    let before = store.counts().puts;
    lib.ingest("b", &b, IngestOptions::default()).await.unwrap();
    let total = store.counts().puts - before;
    assert!(
        total >= 5,
        "lock, fragments, blob chunk, manifest: {total} puts"
    );

    for fault in [PutFault::Refuse, PutFault::AfterWrite] {
        for n in 1..=total {
            let (store, lib, before) = with_model_a(&a).await;
            let stats_before = lib.stats().await.unwrap();
            store.fail_put(n, fault);
            let err = lib
                .ingest("b", &b, IngestOptions::default())
                .await
                .expect_err("the injected fault must surface");
            assert!(
                err.to_string().contains("injected fault"),
                "{fault:?} at put {n}: unclear error: {err}"
            );
            store.heal();
            let failed_key = store.put_log().into_iter().rev().find(|(_, ok)| !ok);
            let ctx = format!("{fault:?} at put {n} ({failed_key:?})");

            // `b` is absent, or (a manifest written before its put reported failure)
            // complete.
            let models = lib.models().await.unwrap();
            let verify = lib.verify(None, None).await.unwrap();
            assert!(verify.is_ok(), "{ctx}: {:?}", verify.problems);
            assert_exports(&lib, "a", &a).await;
            if models.contains(&"b".to_string()) {
                assert_eq!(fault, PutFault::AfterWrite, "{ctx}");
                assert_exports(&lib, "b", &b).await;
                continue;
            }
            assert_eq!(models, ["a"], "{ctx}");

            // What the failed ingest wrote is garbage, and gc removes exactly that.
            lib.gc(GC_NOW)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: gc: {e}"));
            assert_eq!(store_listing(&*store).await, before, "{ctx}");
            assert_eq!(lib.stats().await.unwrap(), stats_before, "{ctx}");

            // And the next attempt succeeds.
            lib.ingest("b", &b, IngestOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{ctx}: retry: {e}"));
            assert_exports(&lib, "b", &b).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_accepting_writes_fails_the_ingest_cleanly() {
    let src = tempfile::tempdir().unwrap();
    let (a, b) = models(src.path());
    for after in [0, 1, 3, 6] {
        let (store, lib, before) = with_model_a(&a).await;
        store.fail_puts_after(after);
        let err = lib
            .ingest("b", &b, IngestOptions::default())
            .await
            .expect_err("a full store fails the ingest");
        assert!(err.to_string().contains("injected fault"), "{err}");
        assert_eq!(lib.models().await.unwrap(), ["a"]);
        // Reads and deletes still work on a full store: verify and gc need no writes
        // beyond their lock, which is refused too.
        assert!(lib.verify(None, None).await.unwrap().is_ok());
        assert!(lib.gc(GC_NOW).await.is_err(), "gc cannot take its lock");
        store.heal();
        lib.gc(GC_NOW).await.unwrap();
        assert_eq!(store_listing(&*store).await, before, "after {after} writes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_reads_are_reported_as_damage_never_trusted() {
    let src = tempfile::tempdir().unwrap();
    let (a, b) = models(src.path());
    let (store, lib, _) = with_model_a(&a).await;
    lib.ingest("b", &b, IngestOptions::default()).await.unwrap();
    let before = store_listing(&*store).await;

    for cut in [1, 7, 31, 32, 33, 4096, usize::MAX] {
        store.truncate_reads("fragments/", cut);
        let report = lib.verify(None, None).await.unwrap();
        // Every file of both models holds fragments, so every file is damaged.
        assert_eq!(report.problems.len(), 3, "cut {cut}: {:?}", report.problems);
        let out = tempfile::tempdir().unwrap();
        let err = lib.export("a", out.path(), None).await.unwrap_err();
        assert!(err.is_corruption(), "cut {cut}: {err}");
        assert!(err.to_string().contains("fragment"), "cut {cut}: {err}");
        // No partial output is left behind.
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
        // Statistics read fragment headers: damage there is an error, not a panic.
        if let Err(e) = lib.stats().await {
            assert!(e.is_corruption(), "cut {cut}: {e}");
        }
    }

    store.truncate_reads("manifests/", 1);
    let err = lib.manifest("a").await.unwrap_err();
    assert!(err.is_corruption(), "{err}");
    // Unreadable manifests are contained: reported as damage, never trusted.
    let report = lib.verify(None, None).await.unwrap();
    assert!(!report.is_ok() && report.damaged.len() == 2, "{report:?}");

    // Reads changed nothing: healed, everything verifies and exports.
    store.heal();
    assert_eq!(store_listing(&*store).await, before);
    assert!(lib.verify(None, None).await.unwrap().is_ok());
    assert_exports(&lib, "a", &a).await;
    assert_exports(&lib, "b", &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_damaged_on_the_way_are_fetched_again_and_damage_at_rest_is_reported() {
    let src = tempfile::tempdir().unwrap();
    let (a, _) = models(src.path());
    let (store, lib, _) = with_model_a(&a).await;

    // One bad read of each kind of object: the second read is whole, nothing is reported.
    store.flip_next_gets("manifests/", 1);
    lib.manifest("a").await.unwrap();
    let manifest = lib.manifest("a").await.unwrap();
    let standalone: Vec<FragmentId> = (manifest.fragments())
        .filter(|r| r.depends_on.is_none())
        .map(|r| r.id)
        .collect();
    let id = standalone[0];
    store.flip_next_gets("fragments/", 1);
    store.take_gets("fragments/");
    assert_eq!(lib.get_fragment(&id).await.unwrap().id, id);
    let gets = store.take_gets("fragments/");
    assert_eq!(
        gets.values().sum::<u64>(),
        2,
        "one read, one read again: {gets:?}"
    );
    store.flip_next_gets("fragments/", 1);
    assert!(lib.verify(None, None).await.unwrap().is_ok());
    assert_exports(&lib, "a", &a).await;

    // Damage that stays is reported after the second read, not trusted.
    store.flip_next_gets("fragments/", 2);
    let err = lib.get_fragment(&standalone[1]).await.unwrap_err();
    assert!(err.is_corruption(), "{err}");
    store.flip_next_gets("manifests/", 2);
    assert!(lib.manifest("a").await.unwrap_err().is_corruption());
}

/// The text of a lock object owned by process `pid` started at `start` on this machine
/// (the format of docs/format.md, *Concurrency*).
fn lock_of(pid: u32, start: u64) -> Bytes {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    Bytes::from(format!(
        "haagenti lock\nhost=test\nboot={}\npidns={}\npid={pid}\nstart={start}\n",
        boot.trim(),
        pidns.display()
    ))
}

/// This process's start time in clock ticks since boot.
fn own_start() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_collects_what_a_killed_writer_left_and_nothing_in_flight() {
    let src = tempfile::tempdir().unwrap();
    let (a, _) = models(src.path());
    let memory = Arc::new(MemoryStore::new());
    let lib = TestLibrary::new().parallelism(2).open(memory.clone());
    lib.ingest("a", &a, IngestOptions::default()).await.unwrap();
    let before = store_listing(&*memory).await;
    let key = |k: &str| ObjectKey::new(k).unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);

    // What a killed ingest leaves: an orphan fragment, a temporary file, and its lock,
    // all fresh. A lock from a process that is gone must not block gc for minutes.
    let orphan = FragmentId::of(b"orphan");
    memory
        .put(&ObjectKey::fragment(&orphan), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let dead_lock = key("locks/ingest-00000000000000000001-deadbeef0000");
    memory.put(&dead_lock, lock_of(1 << 30, 1)).await.unwrap();
    let old_tmp = key("tmp/1-1-1.tmp");
    memory
        .put(&old_tmp, Bytes::from_static(b"t"))
        .await
        .unwrap();
    memory.set_modified_for_test(&old_tmp, hour_ago);
    // A temporary file just written may be another process's put in progress.
    let young_tmp = key("tmp/2-2-2.tmp");
    memory
        .put(&young_tmp, Bytes::from_static(b"t"))
        .await
        .unwrap();

    // A lock held by a live process (this one) blocks gc.
    let live_lock = key(&format!(
        "locks/ingest-00000000000000000002-{:012x}",
        std::process::id()
    ));
    memory
        .put(&live_lock, lock_of(std::process::id(), own_start()))
        .await
        .unwrap();
    let err = lib.gc(GC_NOW).await.unwrap_err();
    assert!(err.to_string().contains("conflicting lock"), "{err}");
    memory.delete(&live_lock).await.unwrap();

    let report = lib.gc(GC_NOW).await.unwrap();
    assert_eq!(
        report.garbage_objects, 2,
        "the orphan and the old temporary file"
    );
    assert_eq!(report.young_objects, 1, "the fresh temporary file");
    let mut expected = before;
    expected.insert(young_tmp.to_string(), 1);
    assert_eq!(store_listing(&*memory).await, expected);
    assert!(lib.verify(None, None).await.unwrap().is_ok());
}
