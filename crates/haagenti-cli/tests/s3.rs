//! The `haagenti` command against a real S3-compatible server: a whole library lifecycle,
//! two writers at once, and `gc` racing an ingest.
//!
//! `cargo xtask test` starts moto on 127.0.0.1 and sets `HAAGENTI_TEST_S3_ENDPOINT` and
//! `HAAGENTI_TEST_S3_BUCKET`; without them every test here fails saying so, unless
//! `HAAGENTI_SKIP_S3=1` asks for the skip.
//! Each test uses its own key prefix, so they run in parallel in one bucket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use haagenti_core::Dtype;
use haagenti_testkit::synth::{self, Recipe, Rng, SynthTensor};
use serde_json::Value;

/// The smallest fragment size: many fragments (and requests) per small model, so the
/// concurrent tests interleave at a fine grain.
const SMALL_FRAGMENTS: &str = "65536";

/// A library under a fresh key prefix of the test bucket, driven through the CLI.
struct S3Lib {
    endpoint: String,
    url: String,
}

/// The test library; see [`haagenti_testkit::env::s3_test_server`] (`None` only when
/// `HAAGENTI_SKIP_S3=1` asked for the skip).
fn s3_lib(test: &str) -> Option<S3Lib> {
    let (endpoint, bucket) = haagenti_testkit::env::s3_test_server(test)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let url = format!(
        "s3://{bucket}/tests/cli-{test}-{}-{nanos}",
        std::process::id()
    );
    Some(S3Lib { endpoint, url })
}

impl S3Lib {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_haagenti"));
        cmd.arg("--library")
            .arg(&self.url)
            .arg("--s3-endpoint")
            .arg(&self.endpoint)
            .args(args)
            .env_remove("HAAGENTI_LIBRARY")
            .env_remove("HAAGENTI_S3_ENDPOINT");
        // moto does not check signatures; without any credentials the client would wait
        // on the instance-metadata service. Real credentials in the environment win.
        for (var, default) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ] {
            if std::env::var_os(var).is_none() {
                cmd.env(var, default);
            }
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run haagenti")
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn haagenti")
    }

    fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args))
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Fragment ids the model's manifest references.
    fn fragment_ids(&self, model: &str) -> BTreeSet<String> {
        let show = self.json(&["show", "--model", model, "--json"]);
        let mut ids = BTreeSet::new();
        for file in show["files"].as_array().unwrap() {
            for f in file["fragments"].as_array().unwrap() {
                assert_ne!(f["encoding"], "MISSING", "{model}: {f}");
                ids.insert(f["id"].as_str().unwrap().to_string());
            }
        }
        ids
    }

    /// Exports `model` and checks the file against its source, byte for byte.
    fn assert_exports_bit_exact(&self, model: &str, src: &Path, out: &Path) {
        self.ok(&["export", "--model", model, "--out", out.to_str().unwrap()]);
        let exported = std::fs::read(out.join(src.file_name().unwrap())).unwrap();
        assert!(
            exported == std::fs::read(src).unwrap(),
            "{model}: exported bytes differ from the source"
        );
    }
}

fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Writes a bf16 model of 512 KiB tensors, one per `(name, seed)`: tensors with equal
/// seeds are equal, so models that share seeds share fragments.
fn model(path: &Path, tensors: &[(String, u64)]) {
    let tensors: Vec<SynthTensor> = tensors
        .iter()
        .map(|(name, seed)| {
            SynthTensor::new(
                name.clone(),
                Dtype::BF16,
                vec![256, 1024],
                Recipe::Normal {
                    seed: *seed,
                    mean: 0.0,
                    std: 0.02,
                },
            )
        })
        .collect();
    synth::write_safetensors(path, &tensors, None).unwrap();
}

fn layers(prefix: &str, seeds: impl IntoIterator<Item = u64>) -> Vec<(String, u64)> {
    seeds
        .into_iter()
        .enumerate()
        .map(|(i, seed)| (format!("{prefix}.{i}.mlp.weight"), seed))
        .collect()
}

#[test]
fn s3_ingest_export_verify_show_stats_rm_gc() {
    let Some(lib) = s3_lib("lifecycle") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("m.safetensors");
    model(&src, &layers("blocks", 1..=6));

    assert_eq!(
        lib.json(&["list", "--json"])["models"],
        serde_json::json!([])
    );
    let report = lib.json(&["ingest", "--model", "m", src.to_str().unwrap(), "--json"]);
    assert_eq!(
        report["logical_bytes"].as_u64(),
        Some(std::fs::metadata(&src).unwrap().len())
    );
    let new_fragments = report["new_fragments"].as_u64().unwrap();
    assert!(new_fragments > 0);
    lib.assert_exports_bit_exact("m", &src, &tmp.path().join("out"));

    let verify = lib.json(&["verify", "--json"]);
    assert_eq!(verify["models"], 1);
    assert_eq!(verify["problems"], serde_json::json!([]));

    let ids = lib.fragment_ids("m");
    assert_eq!(ids.len() as u64, new_fragments);
    let stats = lib.json(&["stats", "--json"]);
    assert_eq!(stats["models"], 1);
    assert_eq!(stats["fragments"].as_u64(), Some(ids.len() as u64));
    assert!(
        stats["fragment_bytes"].as_u64().unwrap() < stats["logical_bytes"].as_u64().unwrap(),
        "bf16 weights must compress: {stats}"
    );

    // A second ingest of the same bytes dedups completely.
    let again = lib.json(&["ingest", "--model", "m2", src.to_str().unwrap(), "--json"]);
    assert_eq!(again["new_fragments"], 0);
    assert_eq!(lib.fragment_ids("m2"), ids);

    lib.ok(&["rm", "--model", "m"]);
    let gc = lib.json(&["gc", "--grace", "0", "--json"]);
    assert_eq!(gc["garbage_objects"], 0, "m2 references every fragment");
    lib.ok(&["rm", "--model", "m2"]);
    let gc = lib.json(&["gc", "--grace", "0", "--json"]);
    assert_eq!(gc["garbage_objects"].as_u64(), Some(ids.len() as u64));
    let stats = lib.json(&["stats", "--json"]);
    assert_eq!(
        (&stats["models"], &stats["fragments"]),
        (&0.into(), &0.into())
    );
    let missing = lib.run(&["export", "--model", "m", "--out", "x"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn s3_missing_bucket_fails_up_front_in_one_line() {
    let Some(lib) = s3_lib("nobucket") else {
        return;
    };
    let lib = S3Lib {
        url: "s3://haagenti-no-such-bucket/lib".into(),
        ..lib
    };
    let one_line_error = |lib: &S3Lib, args: &[&str]| {
        let out = lib.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("opening library {}", lib.url)),
            "{err}"
        );
        err
    };
    for args in [&["list"][..], &["gc", "--grace", "0"]] {
        let err = one_line_error(&lib, args);
        assert!(
            err.contains("bucket haagenti-no-such-bucket does not exist"),
            "{args:?}: {err}"
        );
    }
    // Nothing listens on port 1: the check fails after the client's (fast) retries.
    let unreachable = S3Lib {
        endpoint: "http://127.0.0.1:1".into(),
        ..lib
    };
    let err = one_line_error(&unreachable, &["list"]);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn s3_two_writers_sharing_fragments_at_once() {
    let Some(lib) = s3_lib("writers") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Five shared tensors, under other names and in another order in the second model.
    let a = tmp.path().join("a.safetensors");
    let b = tmp.path().join("b.safetensors");
    model(&a, &layers("a", [100, 101, 102, 103, 104, 200, 201, 202]));
    model(&b, &layers("b", [300, 104, 103, 301, 102, 101, 100, 302]));

    let children = [("a", &a), ("b", &b)].map(|(name, path)| {
        let args = [
            "ingest",
            "--model",
            name,
            path.to_str().unwrap(),
            "--fragment-size",
            SMALL_FRAGMENTS,
            "--json",
        ];
        (args.map(str::to_string), lib.spawn(&args))
    });
    let mut new_fragments = 0;
    for (args, child) in children {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report: Value =
            serde_json::from_str(&succeeded(&args, child.wait_with_output().unwrap())).unwrap();
        new_fragments += report["new_fragments"].as_u64().unwrap();
    }

    lib.assert_exports_bit_exact("a", &a, &tmp.path().join("out-a"));
    lib.assert_exports_bit_exact("b", &b, &tmp.path().join("out-b"));
    lib.ok(&["verify"]);
    let (ids_a, ids_b) = (lib.fragment_ids("a"), lib.fragment_ids("b"));
    let shared = ids_a.intersection(&ids_b).count();
    assert_eq!(
        shared,
        5 * 8,
        "five shared 512 KiB tensors of 64 KiB fragments"
    );
    let union = ids_a.union(&ids_b).count() as u64;
    // Create-only puts: of two writers of one fragment exactly one created it.
    assert_eq!(new_fragments, union, "fragments created, summed over both");
    assert_eq!(
        lib.json(&["stats", "--json"])["fragments"].as_u64(),
        Some(union)
    );
}

/// How one `gc --grace 0` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GcOutcome {
    /// Completed, deleting this many unreferenced objects.
    Ran(u64),
    /// Refused because another process held a lock.
    Refused,
}

/// One gc process and when it ran.
struct GcRun {
    started: Instant,
    ended: Instant,
    outcome: GcOutcome,
}

/// Runs `gc --grace 0` again and again, with seeded pauses, until `stop` is set.
fn gc_loop(lib: &S3Lib, seed: u64, stop: &AtomicBool) -> Vec<GcRun> {
    let mut rng = Rng::new(seed);
    let mut runs = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let out = lib.run(&["gc", "--grace", "0", "--json"]);
        let ended = Instant::now();
        let err = String::from_utf8_lossy(&out.stderr);
        let outcome = if out.status.success() {
            let report: Value = serde_json::from_slice(&out.stdout).unwrap();
            GcOutcome::Ran(report["garbage_objects"].as_u64().unwrap())
        } else if err.contains("conflicting lock") {
            GcOutcome::Refused
        } else {
            panic!("gc failed otherwise: {err}");
        };
        runs.push(GcRun {
            started,
            ended,
            outcome,
        });
        std::thread::sleep(Duration::from_millis(rng.below(200)));
    }
    runs
}

#[test]
fn s3_gc_racing_an_ingest_never_deletes_its_fragments() {
    let Some(lib) = s3_lib("gcrace") else {
        return;
    };
    // At least MIN_ROUNDS rounds, more (up to MAX_ROUNDS) until one round had gc meet
    // the lock of an ingest that was reusing unreferenced fragments.
    const MIN_ROUNDS: u64 = 4;
    const MAX_ROUNDS: u64 = 10;
    let tmp = tempfile::tempdir().unwrap();
    // Every model shares these tensors; each round's own tensor is new.
    let shared = || 500..510u64;
    let ingest_args = |name: &str, path: &Path| {
        [
            "ingest",
            "--model",
            name,
            path.to_str().unwrap(),
            "--fragment-size",
            SMALL_FRAGMENTS,
            "--json",
        ]
        .map(str::to_string)
    };
    let seed_src = tmp.path().join("seed.safetensors");
    model(&seed_src, &layers("seed", shared().chain([599])));
    let args = ingest_args("seed", &seed_src);
    lib.ok(&args.each_ref().map(String::as_str));
    lib.ok(&["rm", "--model", "seed"]);

    let mut rng = Rng::new(0x6c0c_2ace);
    let (mut overlapping, mut guarded, mut rounds) = (0, 0, 0);
    while rounds < MIN_ROUNDS || (guarded == 0 && rounds < MAX_ROUNDS) {
        let round = rounds;
        rounds += 1;
        // The previous model is removed: its fragments, which this round's model shares,
        // are unreferenced and (with --grace 0) old enough to delete.
        let name = format!("m{round}");
        let src = tmp.path().join(format!("{name}.safetensors"));
        model(&src, &layers(&name, shared().chain([600 + round])));
        let args = ingest_args(&name, &src);
        let args = args.each_ref().map(String::as_str);

        // A seeded offset between the start of the gc loop and of the ingest: when the
        // ingest leads, it holds its lock while reusing the orphans and every gc must be
        // refused; when the gc leads, it may delete them first and the ingest rewrites them.
        let offset_ms = rng.below(450) as i64 - 150;
        let lead = Duration::from_millis(offset_ms.unsigned_abs());
        let gc_seed = rng.next_u64();
        let stop = AtomicBool::new(false);
        let (gc_runs, span, out) = std::thread::scope(|scope| {
            let ingest_first = offset_ms < 0;
            let spawn = || (Instant::now(), lib.spawn(&args));
            let early = ingest_first.then(spawn);
            std::thread::sleep(if ingest_first { lead } else { Duration::ZERO });
            let gc = scope.spawn(|| gc_loop(&lib, gc_seed, &stop));
            std::thread::sleep(if ingest_first { Duration::ZERO } else { lead });
            let (started, child) = early.unwrap_or_else(spawn);
            let out = child.wait_with_output().unwrap();
            let ended = Instant::now();
            stop.store(true, Ordering::SeqCst);
            (gc.join().unwrap(), started..ended, out)
        });
        let report: Value = serde_json::from_str(&succeeded(&args, out)).unwrap();
        let during: Vec<GcOutcome> = gc_runs
            .iter()
            .filter(|r| r.started < span.end && r.ended > span.start)
            .map(|r| r.outcome)
            .collect();
        let reused = report["dedup_bytes"].as_u64().unwrap();
        eprintln!(
            "round {round}: the ingest started {offset_ms:+} ms after the gc loop, ran \
             {:.2}s and reused {reused} stored bytes; gc runs overlapping it: {during:?}",
            (span.end - span.start).as_secs_f64(),
        );
        overlapping += during.len();
        if reused > 0 && during.contains(&GcOutcome::Refused) {
            guarded += 1;
        }

        lib.assert_exports_bit_exact(&name, &src, &tmp.path().join(format!("out-{round}")));
        lib.ok(&["verify", "--model", &name]);
        lib.ok(&["rm", "--model", &name]);
    }
    eprintln!(
        "{rounds} rounds, {overlapping} gc runs overlapping an ingest; in {guarded} rounds \
         a gc was refused while the ingest reused unreferenced fragments"
    );
    assert!(
        guarded > 0,
        "no gc met the lock of an ingest reusing unreferenced fragments: race not exercised"
    );
    lib.ok(&["gc", "--grace", "0"]);
    assert_eq!(lib.json(&["stats", "--json"])["fragments"], 0);
}
