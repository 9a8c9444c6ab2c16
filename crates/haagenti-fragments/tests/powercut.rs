//! Durability proven, not argued: a power cut at every durability point of an ingest
//! (a second one deduplicating and deltaing against the first), an `ingest --replace` and
//! a gc after `rm`, simulated at the filesystem level on the real `FsStore`
//! (`haagenti_store_fs::powercut`: every change not yet made durable by an fsync is kept
//! or lost, in any combination). Each state must open as a library in which every
//! manifest present rebuilds its model bit-exactly, the models whose ingest returned
//! before the cut are there, `verify` passes, a new ingest succeeds, and gc after it
//! keeps everything verifying. The same harness must find the loss when the store leaves
//! out an fsync (`Flaw`): a harness that cannot fail proves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use haagenti_fragments::{FragmentLibrary, GcOptions, IngestOptions};
use haagenti_store_fs::FsStore;
use haagenti_store_fs::journal::{Flaw, Journal, Op};
use haagenti_store_fs::powercut::{CrashState, Snapshot, crash_states};
use haagenti_testkit::library::TestLibrary;
use haagenti_testkit::synth::{Family, lineage_family};

/// Random subsets of the pending changes per durability point (besides all and none).
const RANDOM_PER_POINT: usize = 4;

fn library() -> TestLibrary {
    TestLibrary::new()
        .codecs(haagenti_fragments::codec_impls::default_registry())
        .similarity(haagenti_fragments::lsh::cosine_similarity())
}

/// How the recorded run's store makes puts durable.
#[derive(Clone, Copy, Debug)]
enum Scheme {
    /// The default: fragments' directories made durable by one flush (an fsync per
    /// directory) before the manifest.
    Batched,
    /// Every put durable when it returns (`FsStore::sync_each_put`): the scheme before
    /// batching, the control.
    EachPut,
    /// The default with one durability step left out: the checks must fail.
    Flawed(Flaw),
}

fn open(root: &Path, journal: Option<(&Arc<Journal>, Scheme)>) -> FragmentLibrary {
    let mut store = FsStore::open(root).unwrap();
    if let Some((journal, scheme)) = journal {
        store = store.with_journal(journal.clone());
        match scheme {
            Scheme::Batched => {}
            Scheme::EachPut => store = store.sync_each_put(),
            Scheme::Flawed(flaw) => store = store.with_flaw(flaw),
        }
    }
    library().open(Arc::new(store))
}

/// Small models (bf16, about 128 KiB each) so that hundreds of states check in seconds.
fn family(dir: &Path) -> Family {
    lineage_family(dir, 17, 256 << 10).unwrap()
}

fn source(family: &Family, model: &str) -> PathBuf {
    family.model(model).unwrap().path.clone()
}

/// The replay model on a hand-written journal: a put's publication (mkdir, file written
/// and fsynced, hard link, unlink of the temporary name, fsyncs of the directories) is
/// lost until the directories' fsyncs; an fsync covers only what returned before it
/// started; a file published after its fsync is never seen short.
#[test]
fn the_replay_keeps_exactly_what_fsyncs_made_durable() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("tmp")).unwrap();
    let before = Snapshot::take(root.path()).unwrap();
    let s = |p: &str| p.to_string();
    let fsync = |path: &str, dir, covers| Op::Fsync {
        path: s(path),
        dir,
        covers,
    };
    let put = |dir_covers: usize| {
        vec![
            Op::Mkdir { path: s("d") },
            Op::Create {
                path: s("tmp/a"),
                bytes: bytes::Bytes::from_static(b"hello"),
            },
            fsync("tmp/a", false, 2),
            Op::Link {
                from: s("tmp/a"),
                to: s("d/k"),
            },
            Op::Unlink { path: s("tmp/a") },
            fsync("d", true, dir_covers),
            fsync("", true, 6),
        ]
    };
    let ops = put(5);
    let all = crash_states(&before, &ops, 8, 1).unwrap();
    assert_eq!(all.points, 4, "three fsyncs and the end");
    // Whatever survives, the published file is whole: its bytes were durable first.
    for state in &all.states {
        if let Some(bytes) = state.file("d/k") {
            assert_eq!(bytes, b"hello", "{}", state.label);
        }
        if let Some(bytes) = state.file("tmp/a") {
            assert!(b"hello".starts_with(bytes), "{}", state.label);
        }
    }
    let at = |point: usize, choice: &str| {
        all.states
            .iter()
            .find(|st| st.point == point && st.label.ends_with(choice))
            .unwrap()
    };
    // Before the directories' fsyncs nothing need survive; after them the object does,
    // and the temporary name may or may not come back (its directory was never synced).
    assert!(!at(2, "AllLost").has_dir("d"));
    assert_eq!(at(2, "AllKept").file("d/k"), Some(&b"hello"[..]));
    assert_eq!(at(2, "AllKept").file("tmp/a"), None);
    assert_eq!(at(3, "AllLost").file("d/k"), Some(&b"hello"[..]));
    assert!(all.states.iter().any(|st| st.file("tmp/a").is_some()));
    // An fsync of `d` that started before the link returned does not cover it.
    let early = crash_states(&before, &put(3), 0, 1).unwrap();
    let end = early.states.iter().find(|st| st.point == 3).unwrap();
    assert!(
        end.has_dir("d") && end.file("d/k").is_none(),
        "{}",
        end.label
    );
}

/// A deferred put (file fsynced, then published, directories left to a syncfs): lost
/// until the syncfs, kept after it; a syncfs that started before the link does not
/// cover it; the published file is never seen short.
#[test]
fn the_replay_keeps_what_a_syncfs_made_durable() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("tmp")).unwrap();
    let before = Snapshot::take(root.path()).unwrap();
    let s = |p: &str| p.to_string();
    let put = |covers: usize| {
        vec![
            Op::Mkdir { path: s("d") },
            Op::Create {
                path: s("tmp/a"),
                bytes: bytes::Bytes::from_static(b"hello"),
            },
            Op::Fsync {
                path: s("tmp/a"),
                dir: false,
                covers: 2,
            },
            Op::Link {
                from: s("tmp/a"),
                to: s("d/k"),
            },
            Op::Unlink { path: s("tmp/a") },
            Op::Syncfs { covers },
        ]
    };
    let all = crash_states(&before, &put(5), 8, 1).unwrap();
    assert_eq!(all.points, 3, "an fsync, the syncfs and the end");
    for state in &all.states {
        if let Some(bytes) = state.file("d/k") {
            assert_eq!(bytes, b"hello", "{}", state.label);
        }
    }
    let at = |point: usize, choice: &str| {
        all.states
            .iter()
            .find(|st| st.point == point && st.label.ends_with(choice))
            .unwrap()
    };
    assert!(!at(1, "AllLost").has_dir("d"));
    assert_eq!(at(2, "AllLost").file("d/k"), Some(&b"hello"[..]));
    assert_eq!(
        at(2, "AllLost").file("tmp/a"),
        None,
        "the unlink is durable too"
    );
    let early = crash_states(&before, &put(3), 0, 1).unwrap();
    let end = early.states.iter().find(|st| st.point == 2).unwrap();
    assert!(
        end.has_dir("d") && end.file("d/k").is_none(),
        "{}",
        end.label
    );
}

/// Where the states are built: in memory when the machine offers a tmpfs (the replay
/// models the disk, so none is needed; on ext4, deleting hundreds of small trees costs
/// more than checking them), else the temporary directory.
fn workdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// What every crash state of a scenario must satisfy.
struct Expect {
    /// Model name → the source files any of its stored generations may hold.
    allowed: BTreeMap<String, Vec<PathBuf>>,
    /// Once `mark` is in the journal before the cut, `model`'s current generation holds
    /// `source`.
    required: Vec<(String, String, PathBuf)>,
    /// Once `mark` is in the journal before the cut, `model` is gone (a returned `rm` is
    /// durable).
    absent: Vec<(String, String)>,
    /// A model that must ingest into any crash state.
    probe: PathBuf,
}

/// Runs `scenario` on a library prepared by `setup`, with a journal; returns the
/// directory before the run and the journal's operations.
async fn record<S, R>(work: &Path, scheme: Scheme, setup: S, scenario: R) -> (Snapshot, Vec<Op>)
where
    S: AsyncFnOnce(&FragmentLibrary),
    R: AsyncFnOnce(&FragmentLibrary, &Journal),
{
    let root = work.join("lib");
    setup(&open(&root, None)).await;
    let before = Snapshot::take(&root).unwrap();
    let journal = Journal::new();
    let lib = open(&root, Some((&journal, scheme)));
    scenario(&lib, &journal).await;
    drop(lib);
    (before, journal.ops())
}

/// Checks every crash state; returns (durability points, distinct states checked,
/// violations).
async fn check_all(
    work: &Path,
    before: &Snapshot,
    ops: &[Op],
    expect: &Expect,
    stop_at_first: bool,
) -> (usize, usize, Vec<String>) {
    let states = crash_states(before, ops, RANDOM_PER_POINT, 0x5eed).unwrap();
    let mut violations = Vec::new();
    let mut checked = HashSet::new();
    for (n, state) in states.states.iter().enumerate() {
        if !checked.insert(state.key) {
            continue; // the same directory and marks at an earlier point
        }
        let dir = work.join(format!("state-{n}"));
        if let Err(why) = check(&dir, state, expect).await {
            violations.push(format!("{}: {why}", state.label));
            if stop_at_first {
                break;
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    (states.points, checked.len(), violations)
}

/// One crash state, opened with the real library after a simulated reboot.
async fn check(dir: &Path, state: &CrashState, expect: &Expect) -> Result<(), String> {
    let root = dir.join("lib");
    state.materialize(&root).map_err(|e| e.to_string())?;
    reboot(&root);
    let lib = library().open(Arc::new(FsStore::open(&root).unwrap().without_sync()));
    let out = dir.join("out");

    let models = lib.models().await.map_err(|e| format!("models: {e}"))?;
    for name in &models {
        let allowed = expect
            .allowed
            .get(name)
            .ok_or_else(|| format!("unexpected model {name}"))?;
        let generations = lib
            .generations(name)
            .await
            .map_err(|e| format!("manifests of {name}: {e}"))?;
        for (g, manifest) in generations.iter().enumerate() {
            let got = export(&lib, manifest, &out.join(format!("{name}-{g}")))
                .await
                .map_err(|e| format!("{name} generation {g}: {e}"))?;
            if !allowed.iter().any(|s| std::fs::read(s).unwrap() == got) {
                return Err(format!("{name} generation {g} rebuilds other bytes"));
            }
        }
    }
    for (mark, name, source) in &expect.required {
        if state.marks.contains(mark) {
            let manifest = lib
                .manifest(name)
                .await
                .map_err(|e| format!("{name} after {mark:?}: {e}"))?;
            let got = export(&lib, &manifest, &out.join(format!("{name}-current"))).await?;
            if got != std::fs::read(source).unwrap() {
                return Err(format!("{name} after {mark:?} is not {}", source.display()));
            }
        }
    }
    for (mark, name) in &expect.absent {
        if state.marks.contains(mark) && models.contains(name) {
            return Err(format!("{name} is back after {mark:?}"));
        }
    }
    verified(&lib, "after the cut").await?;

    lib.ingest("probe", &expect.probe, IngestOptions::default())
        .await
        .map_err(|e| format!("new ingest: {e}"))?;
    let manifest = lib.manifest("probe").await.map_err(|e| e.to_string())?;
    if export(&lib, &manifest, &out.join("probe")).await? != std::fs::read(&expect.probe).unwrap() {
        return Err("the new ingest rebuilds other bytes".into());
    }
    lib.gc(GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    })
    .await
    .map_err(|e| format!("gc: {e}"))?;
    verified(&lib, "after the new ingest and gc").await
}

async fn verified(lib: &FragmentLibrary, when: &str) -> Result<(), String> {
    let report = lib
        .verify(None, None)
        .await
        .map_err(|e| format!("verify {when}: {e}"))?;
    if report.is_ok() {
        Ok(())
    } else {
        Err(format!("verify {when}: {:?}", report.problems))
    }
}

/// Rebuilds a single-file generation and returns its bytes.
async fn export(
    lib: &FragmentLibrary,
    manifest: &haagenti_fragments::ModelManifest,
    out: &Path,
) -> Result<Vec<u8>, String> {
    lib.export_generation(manifest, out, None)
        .await
        .map_err(|e| format!("export: {e}"))?;
    let [file] = manifest.files.as_slice() else {
        return Err(format!("{} files, expected 1", manifest.files.len()));
    };
    std::fs::read(out.join(&file.path)).map_err(|e| e.to_string())
}

/// What a reboot changes: locks and temporary files left by the cut belong to a dead
/// boot. Their owner cannot be judged across boots, so they count by age; the library is
/// opened at least `LOCK_STALE` (5 minutes) after them, as a machine that reboots and
/// waits out a stale gc lock would be.
fn reboot(root: &Path) {
    let long_ago = SystemTime::now() - Duration::from_secs(600);
    for dir in ["locks", "tmp"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let file = std::fs::File::options()
                .write(true)
                .open(entry.unwrap().path())
                .unwrap();
            file.set_modified(long_ago).unwrap();
        }
    }
}

fn summary(scenario: &str, points: usize, checked: usize, ops: usize, started: Instant) {
    println!(
        "power cut, {scenario}: {ops} operations, {points} durability points, {checked} crash states checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Two ingests: `base` (new fragments) then `tune`, a fine-tune that deduplicates its
/// frozen layers against `base` and stores the others as deltas.
async fn ingest_scenario(
    work: &Path,
    family: &Family,
    scheme: Scheme,
) -> (Snapshot, Vec<Op>, Expect) {
    let base = source(family, "base-bf16");
    let tune = source(family, "finetune-bf16");
    let (before, ops) = record(
        work,
        scheme,
        async |_| {},
        async |lib, journal| {
            lib.ingest("base", &base, IngestOptions::default())
                .await
                .unwrap();
            journal.mark("base");
            lib.ingest("tune", &tune, IngestOptions::default())
                .await
                .unwrap();
            journal.mark("tune");
        },
    )
    .await;
    let expect = Expect {
        allowed: BTreeMap::from([
            ("base".into(), vec![base.clone()]),
            ("tune".into(), vec![tune.clone()]),
        ]),
        required: vec![
            ("base".into(), "base".into(), base),
            ("tune".into(), "tune".into(), tune),
        ],
        absent: vec![],
        probe: source(family, "lora-bf16"),
    };
    (before, ops, expect)
}

/// No crash state broke a promise, and there were more than `min_points` durability
/// points, each with more than one state on average.
fn assert_survived(points: usize, checked: usize, violations: &[String], min_points: usize) {
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(
        points > min_points && checked > points,
        "{points} points, {checked} states"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingests_survive_a_power_cut_at_every_durability_point() {
    let started = Instant::now();
    let work = workdir();
    let family = family(&work.path().join("src"));
    let (before, ops, expect) = ingest_scenario(work.path(), &family, Scheme::Batched).await;
    // The batching is there: the fragment directories are fsynced in one flush per
    // ingest (one run of directory fsyncs after the fragments are published), not after
    // each fragment, and no syncfs waits for the rest of the filesystem.
    let mut flushes = 0;
    let mut in_flush = false;
    for op in &ops {
        match op {
            Op::Fsync {
                path, dir: true, ..
            } if path.starts_with("fragments-flat") => {
                flushes += usize::from(!in_flush);
                in_flush = true;
            }
            Op::Link { to, .. } if to.starts_with("fragments-flat/") => in_flush = false,
            _ => {}
        }
    }
    assert_eq!(flushes, 2, "one flush per ingest");
    assert!(!ops.iter().any(|op| matches!(op, Op::Syncfs { .. })));
    let (points, checked, violations) = check_all(work.path(), &before, &ops, &expect, false).await;
    summary("two ingests", points, checked, ops.len(), started);
    assert_survived(points, checked, &violations, 20);
}

/// The control: the scheme before batching (file and directory fsyncs per put) passes
/// the same checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingests_with_a_sync_per_put_survive_a_power_cut_at_every_durability_point() {
    let started = Instant::now();
    let work = workdir();
    let family = family(&work.path().join("src"));
    let (before, ops, expect) = ingest_scenario(work.path(), &family, Scheme::EachPut).await;
    assert!(!ops.iter().any(|op| matches!(op, Op::Syncfs { .. })));
    let (points, checked, violations) = check_all(work.path(), &before, &ops, &expect, false).await;
    summary(
        "two ingests, a sync per put",
        points,
        checked,
        ops.len(),
        started,
    );
    assert_survived(points, checked, &violations, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_survives_a_power_cut_at_every_durability_point() {
    let started = Instant::now();
    let work = workdir();
    let family = family(&work.path().join("src"));
    let base = source(&family, "base-bf16");
    let lora = source(&family, "lora-bf16");
    let (before, ops) = record(
        work.path(),
        Scheme::Batched,
        async |lib| {
            lib.ingest("m", &base, IngestOptions::default())
                .await
                .unwrap();
        },
        async |lib, journal| {
            lib.ingest("m", &lora, IngestOptions::default().replace(true))
                .await
                .unwrap();
            journal.mark("replaced");
        },
    )
    .await;
    let expect = Expect {
        allowed: BTreeMap::from([("m".into(), vec![base.clone(), lora.clone()])]),
        required: vec![("replaced".into(), "m".into(), lora)],
        absent: vec![],
        probe: source(&family, "finetune-bf16"),
    };
    let (points, checked, violations) = check_all(work.path(), &before, &ops, &expect, false).await;
    summary("ingest --replace", points, checked, ops.len(), started);
    assert_survived(points, checked, &violations, 10);
}

/// `rm` of two models, then gc: the fine-tune that stays has its deltas built on the
/// removed parent's fragments, which gc must keep; the removed LoRA merge's own fragments
/// go. The new ingest of each state is that LoRA merge again, deduplicating against
/// whatever the cut left of it.
async fn gc_scenario(work: &Path, family: &Family, scheme: Scheme) -> (Snapshot, Vec<Op>, Expect) {
    let base = source(family, "base-bf16");
    let tune = source(family, "finetune-bf16");
    let lora = source(family, "lora-bf16");
    let (before, ops) = record(
        work,
        scheme,
        async |lib| {
            for (name, path) in [("base", &base), ("tune", &tune), ("lora", &lora)] {
                lib.ingest(name, path, IngestOptions::default())
                    .await
                    .unwrap();
            }
        },
        async |lib, journal| {
            journal.mark("start");
            lib.remove("base").await.unwrap();
            journal.mark("removed base");
            lib.remove("lora").await.unwrap();
            journal.mark("removed lora");
            let report = lib
                .gc(GcOptions {
                    grace: Duration::ZERO,
                    ..GcOptions::default()
                })
                .await
                .unwrap();
            assert!(report.garbage_objects >= 10, "{report:?}");
        },
    )
    .await;
    let expect = Expect {
        allowed: BTreeMap::from([
            ("base".into(), vec![base]),
            ("tune".into(), vec![tune.clone()]),
            ("lora".into(), vec![lora.clone()]),
        ]),
        required: vec![("start".into(), "tune".into(), tune)],
        absent: vec![
            ("removed base".into(), "base".into()),
            ("removed lora".into(), "lora".into()),
        ],
        probe: lora,
    };
    (before, ops, expect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_after_rm_survives_a_power_cut_at_every_durability_point() {
    let started = Instant::now();
    let work = workdir();
    let family = family(&work.path().join("src"));
    let (before, ops, expect) = gc_scenario(work.path(), &family, Scheme::Batched).await;
    let (points, checked, violations) = check_all(work.path(), &before, &ops, &expect, false).await;
    summary("rm + rm + gc", points, checked, ops.len(), started);
    assert_survived(points, checked, &violations, 10);
}

/// The negative control: the same scenarios on a store that leaves out one kind of
/// fsync, or the directory fsyncs of `flush`, must leave a crash state the checks reject (a lost
/// or empty manifest, fragment or directory; a removed model back without the fragments
/// gc deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_finds_what_a_missing_fsync_loses() {
    for (scenario, flaw) in [
        ("two ingests", Flaw::NoDirSync),
        ("two ingests", Flaw::NoFileSync),
        ("two ingests", Flaw::NoFlush),
        ("rm + rm + gc", Flaw::NoDirSync),
    ] {
        let started = Instant::now();
        let work = workdir();
        let family = family(&work.path().join("src"));
        let (before, ops, expect) = if scenario == "two ingests" {
            ingest_scenario(work.path(), &family, Scheme::Flawed(flaw)).await
        } else {
            gc_scenario(work.path(), &family, Scheme::Flawed(flaw)).await
        };
        let (points, checked, violations) =
            check_all(work.path(), &before, &ops, &expect, true).await;
        summary(
            &format!("{scenario} with {flaw:?}"),
            points,
            checked,
            ops.len(),
            started,
        );
        assert!(
            !violations.is_empty(),
            "{scenario} with {flaw:?}: no crash state lost data ({checked} checked)"
        );
        println!("  found: {}", violations[0]);
    }
}
