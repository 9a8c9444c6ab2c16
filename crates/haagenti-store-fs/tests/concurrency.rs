//! Concurrency on one filesystem library: several threads, each with its own store
//! handle, and two processes ingest overlapping models while `gc --grace 0` runs again
//! and again; afterwards every model exports bit-exact and gc leaves only live objects.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use haagenti_core::store::FRAGMENTS_PREFIX;
use haagenti_core::{Dtype, FragmentLibrary, FragmentStore, GcOptions, IngestOptions};
use haagenti_store_fs::FsStore;
use haagenti_testkit::hooks::HookStore;
use haagenti_testkit::library::{TestLibrary, assert_only_live_objects};
use haagenti_testkit::synth::{self, Recipe, SynthTensor};

const GC_NOW: GcOptions = GcOptions {
    dry_run: false,
    grace: Duration::ZERO,
};

/// Env var that turns the `child_process` test into one writer of the two-process test.
const CHILD_ENV: &str = "HAAGENTI_CONCURRENCY_CHILD";

/// A handle of its own on the library at `dir`, as a separate process would have.
fn open(dir: &Path) -> FragmentLibrary {
    library(Arc::new(FsStore::open(dir).unwrap().without_sync()))
}

fn library(store: Arc<dyn FragmentStore>) -> FragmentLibrary {
    TestLibrary::new().parallelism(2).open(store)
}

/// Model `i` of a family: tensors drawn from a shared pool, so neighbours overlap
/// (tensor `k` is the same in every model that has it, under a model-specific name).
fn write_model(dir: &Path, i: u64) -> PathBuf {
    let tensors: Vec<SynthTensor> = (i..i + 4)
        .map(|k| {
            SynthTensor::new(
                format!("m{i}.layers.{k}.weight"),
                Dtype::BF16,
                vec![512, 512],
                Recipe::Normal {
                    seed: 1000 + k,
                    mean: 0.0,
                    std: 0.02,
                },
            )
        })
        .collect();
    let path = dir.join(format!("model-{i}.safetensors"));
    synth::write_safetensors(&path, &tensors, None).unwrap();
    path
}

/// gc until `stop`, accepting only "someone holds a conflicting lock" as a failure.
async fn gc_loop(lib: FragmentLibrary, stop: Arc<AtomicBool>) -> (u32, u32) {
    let (mut ran, mut refused) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        match lib.gc(GC_NOW).await {
            Ok(_) => ran += 1,
            Err(e) if e.to_string().contains("conflicting lock") => refused += 1,
            Err(e) => panic!("gc failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ran, refused)
}

/// Every model exports bit-exact, verify is clean, and a final gc leaves exactly the
/// live fragments and nothing under `tmp/` or `locks/`.
async fn assert_library_whole(dir: &Path, models: &[(String, PathBuf)]) {
    let lib = open(dir);
    let mut names = lib.models().await.unwrap();
    names.sort();
    let mut expected: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(names, expected);
    for (name, src) in models {
        let out = tempfile::tempdir().unwrap();
        lib.export(name, out.path(), None).await.unwrap();
        assert!(
            std::fs::read(src).unwrap()
                == std::fs::read(out.path().join(src.file_name().unwrap())).unwrap(),
            "{name} is not bit-exact"
        );
    }
    lib.gc(GC_NOW).await.unwrap();
    let report = lib.verify(None, None).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_only_live_objects(&lib, "after a final gc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn threads_ingest_overlapping_models_while_gc_runs() {
    let src = tempfile::tempdir().unwrap();
    let lib_dir = tempfile::tempdir().unwrap();
    let models: Vec<(String, PathBuf)> = (0..8)
        .map(|i| (format!("model-{i}"), write_model(src.path(), i)))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let gc = tokio::spawn(gc_loop(open(lib_dir.path()), stop.clone()));
    // Four writers, two models each; neighbouring models share three tensors, and
    // writers 0/1 and 2/3 race on the same shared tensors.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let lib = open(lib_dir.path());
            let mine: Vec<(String, PathBuf)> = vec![models[w].clone(), models[w + 4].clone()];
            tokio::spawn(async move {
                for (name, path) in mine {
                    lib.ingest(&name, &path, IngestOptions::default())
                        .await
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (ran, refused) = gc.await.unwrap();
    eprintln!("gc ran {ran} times and was refused {refused} times during the ingests");
    assert_library_whole(lib_dir.path(), &models).await;
}

/// One writer of the two-process test (skipped unless the parent sets `CHILD_ENV`).
/// Arguments in the variable: library dir, source dir, first model, step.
#[test]
#[ignore = "run by two_processes_ingest_overlapping_models_while_gc_runs"]
fn child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('\n').collect();
    let [lib_dir, src_dir, first] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec:?}");
    };
    let first: u64 = first.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let lib = open(Path::new(lib_dir));
        for i in (first..8).step_by(2) {
            let path = Path::new(src_dir).join(format!("model-{i}.safetensors"));
            lib.ingest(&format!("model-{i}"), &path, IngestOptions::default())
                .await
                .unwrap_or_else(|e| panic!("model-{i}: {e}"));
            // Each process also collects, racing the other's ingest.
            match lib.gc(GC_NOW).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("conflicting lock") => {}
                Err(e) => panic!("gc: {e}"),
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_ingest_overlapping_models_while_gc_runs() {
    let src = tempfile::tempdir().unwrap();
    let lib_dir = tempfile::tempdir().unwrap();
    let models: Vec<(String, PathBuf)> = (0..8)
        .map(|i| (format!("model-{i}"), write_model(src.path(), i)))
        .collect();

    // This test binary, re-run as two children that each ingest every other model.
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|first| {
            std::process::Command::new(&exe)
                .args(["child_process", "--exact", "--ignored", "--nocapture"])
                .env(
                    CHILD_ENV,
                    format!(
                        "{}\n{}\n{first}",
                        lib_dir.path().display(),
                        src.path().display()
                    ),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // The parent collects meanwhile, from a third process's point of view.
    let stop = Arc::new(AtomicBool::new(false));
    let gc = tokio::spawn(gc_loop(open(lib_dir.path()), stop.clone()));
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stop.store(true, Ordering::Relaxed);
    gc.await.unwrap();
    assert_library_whole(lib_dir.path(), &models).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_never_collects_under_a_half_done_ingest() {
    let src = tempfile::tempdir().unwrap();
    let lib_dir = tempfile::tempdir().unwrap();
    let models: Vec<(String, PathBuf)> = (0..3)
        .map(|i| (format!("model-{i}"), write_model(src.path(), i)))
        .collect();
    // The store stops before the 10th fragment write until resumed, so the test can act
    // while the ingest is provably half done. It signals `paused` only once every
    // earlier fragment write has finished: workers put in parallel, so write 9 may
    // still be in flight when write 10 arrives.
    let store = Arc::new(HookStore::new(Arc::new(
        FsStore::open(lib_dir.path()).unwrap().without_sync(),
    )));
    let pause = store.pause_before_put(FRAGMENTS_PREFIX, 10);
    let paused_lib = library(store.clone());
    let (name, path) = models[0].clone();
    let half_done = tokio::spawn(async move {
        paused_lib
            .ingest(&name, &path, IngestOptions::default())
            .await
    });
    pause.paused().await;

    // At least nine fragments of model-0 are written, unreferenced (no manifest yet) and
    // younger than any grace: gc must refuse rather than collect them.
    let other = open(lib_dir.path());
    let written = other.store().list(FRAGMENTS_PREFIX).await.unwrap().len();
    assert!(written >= 9, "{written}");
    assert!(other.models().await.unwrap().is_empty());
    let err = other.gc(GC_NOW).await.expect_err("an ingest is running");
    assert!(err.to_string().contains("conflicting lock"), "{err}");
    // Other writers are not held up: ingests run side by side (model-1 shares three
    // tensors with model-0).
    for (name, path) in &models[1..] {
        other
            .ingest(name, path, IngestOptions::default())
            .await
            .unwrap();
    }

    pause.resume();
    half_done.await.unwrap().unwrap();
    assert_library_whole(lib_dir.path(), &models).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gcs_fail_only_with_a_lock_conflict() {
    // With fsync on, a put spends a while between writing its temporary file and
    // publishing it: long enough for another process's gc to sweep `tmp/` under it.
    let lib_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let model = write_model(src.path(), 0);
    let synced = || library(Arc::new(FsStore::open(lib_dir.path()).unwrap()));
    synced()
        .ingest("model-0", &model, IngestOptions::default())
        .await
        .unwrap();
    let loops: Vec<_> = (0..3)
        .map(|_| {
            let lib = synced();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..60 {
                    match lib.gc(GC_NOW).await {
                        Ok(_) => {}
                        Err(e) if e.to_string().contains("conflicting lock") => conflicts += 1,
                        Err(e) => panic!("gc failed other than by a lock conflict: {e}"),
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for l in loops {
        conflicts += l.await.unwrap();
    }
    eprintln!("{conflicts} lock conflicts among 180 concurrent gc runs");
    assert_library_whole(lib_dir.path(), &[("model-0".into(), model)]).await;
}
