//! Crash safety: a `haagenti ingest` killed with SIGKILL at seeded random moments never
//! damages the library. After every kill the earlier models verify and export bit-exact,
//! the killed model is absent or complete, `gc --grace 0` runs at once (the dead
//! process's lock is recognised as dead) and leaves exactly the live fragments (no
//! orphans, nothing under `tmp/` once a minute old, no locks), and the next ingest
//! succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use haagenti_core::store::TMP_PREFIX;
use haagenti_core::{Dtype, FragmentLibrary, GcOptions, LibraryConfig};
use haagenti_store_fs::FsStore;
use haagenti_testkit::library::assert_only_live_objects;
use haagenti_testkit::synth::{self, Rng};

/// Ingests killed mid-way, each at a moment drawn from this seed; rounds whose ingest
/// finished before its kill moment check the same things but do not count.
const KILLS: usize = 20;
const MAX_ROUNDS: usize = 40;
const SEED: u64 = 0x5EED_C4A5;
/// Big enough that an ingest takes about a second in the test profile; small fragments
/// make many objects, so kills land between and inside object writes.
const BIG_MODEL_BYTES: u64 = 64 << 20;
const FRAGMENT_SIZE: &str = "65536";

fn haagenti(lib: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haagenti"));
    cmd.arg("--library")
        .arg(lib)
        .env_remove("HAAGENTI_LIBRARY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn ingest_args<'a>(cmd: &'a mut Command, model: &str, src: &Path) -> &'a mut Command {
    cmd.args([
        "ingest",
        "--model",
        model,
        "--fragment-size",
        FRAGMENT_SIZE,
        "--json",
    ])
    .arg(src)
}

fn ingest(lib: &Path, model: &str, src: &Path) {
    let out = ingest_args(&mut haagenti(lib), model, src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ingest {model}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn open(lib: &Path) -> FragmentLibrary {
    FragmentLibrary::new(
        Arc::new(FsStore::open(lib).unwrap()),
        haagenti_codec::default_registry(),
        LibraryConfig::default(),
    )
    .unwrap()
}

fn blake3_file(path: &Path) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).unwrap())
        .unwrap();
    *hasher.finalize().as_bytes()
}

/// Exports `model` and compares it with its single source file.
async fn assert_exports(lib: &FragmentLibrary, model: &str, src: &Path) {
    let out = tempfile::tempdir().unwrap();
    lib.export(model, out.path(), None)
        .await
        .unwrap_or_else(|e| panic!("export {model}: {e}"));
    let exported = out.path().join(src.file_name().unwrap());
    assert_eq!(
        blake3_file(&exported),
        blake3_file(src),
        "{model} is not bit-exact"
    );
}

/// Sets the modification time of every file under the library's `tmp/` an hour back;
/// returns how many there were.
fn backdate_tmp(lib: &Path) -> u64 {
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let mut n = 0;
    for entry in std::fs::read_dir(lib.join(TMP_PREFIX)).unwrap() {
        let file = std::fs::File::options()
            .write(true)
            .open(entry.unwrap().path())
            .unwrap();
        file.set_modified(hour_ago).unwrap();
        n += 1;
    }
    n
}

#[test]
fn sigkilled_ingests_never_damage_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let lib_dir = tmp.path().join("lib");
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // Earlier models, small; then the big one that will be killed.
    let earlier: Vec<(String, PathBuf)> = (0..2)
        .map(|i| {
            let path = tmp.path().join(format!("earlier-{i}.safetensors"));
            synth::generate_model(&path, 2 << 20, 100 + i, Dtype::BF16).unwrap();
            (format!("earlier-{i}"), path)
        })
        .collect();
    for (name, path) in &earlier {
        ingest(&lib_dir, name, path);
    }
    let big = tmp.path().join("big.safetensors");
    synth::generate_model(&big, BIG_MODEL_BYTES, 7, Dtype::BF16).unwrap();
    let big_hash = blake3_file(&big);

    // How long an uninterrupted ingest takes here: kill moments are drawn relative to it,
    // so they spread over the ingest on any machine. Measured in the library itself, then
    // removed and collected, so every round starts from the same state.
    let mut full = Duration::ZERO;
    for _ in 0..2 {
        // The first run also creates the shard directories that every later one finds.
        let started = Instant::now();
        ingest(&lib_dir, "warm-up", &big);
        full = started.elapsed();
        runtime.block_on(async {
            let lib = open(&lib_dir);
            lib.remove("warm-up").await.unwrap();
            lib.gc(GcOptions {
                dry_run: false,
                grace: Duration::ZERO,
            })
            .await
            .unwrap();
        });
    }

    let mut rng = Rng::new(SEED);
    let (mut killed, mut completed, mut tmp_files_swept) = (0, 0, 0);
    for i in 0..MAX_ROUNDS {
        if killed == KILLS {
            break;
        }
        let name = format!("big-{i}");
        // From just after start to past the expected end (about one round in five
        // completes: the "complete" branch is checked too).
        let delay = full.mul_f64(0.02 + 1.25 * rng.next_f64());
        let mut child = ingest_args(&mut haagenti(&lib_dir), &name, &big)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap();
        match finished {
            Some(status) => {
                assert!(status.success(), "{name}: ingest failed on its own");
                completed += 1;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
            }
        }
        let ctx = format!("kill {i} after {delay:?} (ingest takes {full:?})");

        runtime.block_on(async {
            let lib = open(&lib_dir);
            let models = lib.models().await.unwrap();
            for (name, path) in &earlier {
                assert!(models.contains(name), "{ctx}: {name} lost");
                let report = lib.verify(Some(name), None).await.unwrap();
                assert!(report.is_ok(), "{ctx}: {:?}", report.problems);
                assert_exports(&lib, name, path).await;
            }
            // The killed model is absent or complete: a manifest is written last, and a
            // complete model rebuilds to the source's hash.
            if models.contains(&name) {
                let manifest = lib.manifest(&name).await.unwrap();
                assert_eq!(manifest.files[0].blake3, big_hash, "{ctx}");
                let report = lib.verify(Some(&name), None).await.unwrap();
                assert!(report.is_ok(), "{ctx}: {:?}", report.problems);
                // Start the next round from scratch.
                lib.remove(&name).await.unwrap();
            }
            // Temporary files are swept once a minute old (younger ones may belong to a
            // put in progress elsewhere): age what the kill left there by that minute.
            let left_in_tmp = backdate_tmp(&lib_dir);
            // gc runs at once: the killed ingest's lock names a dead process.
            let gc = lib
                .gc(GcOptions {
                    dry_run: false,
                    grace: Duration::ZERO,
                })
                .await
                .unwrap_or_else(|e| panic!("{ctx}: gc: {e}"));
            assert_eq!(gc.young_objects, 0, "{ctx}");
            assert!(gc.garbage_objects >= left_in_tmp, "{ctx}");
            tmp_files_swept += left_in_tmp;
            assert_only_live_objects(&lib, &ctx).await;
        });
    }
    eprintln!(
        "{killed} ingests killed mid-way, {completed} finished before their kill; \
         gc swept {tmp_files_swept} temporary files they left"
    );
    assert!(
        killed >= KILLS,
        "only {killed} of {MAX_ROUNDS} kills landed during an ingest: the test lost its point"
    );

    // Ingesting again succeeds, and everything exports bit-exact.
    ingest(&lib_dir, "big", &big);
    runtime.block_on(async {
        let lib = open(&lib_dir);
        assert_exports(&lib, "big", &big).await;
        for (name, path) in &earlier {
            assert_exports(&lib, name, path).await;
        }
        let report = lib.verify(None, None).await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.models, 3);
    });
}
