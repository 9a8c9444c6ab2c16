//! `haagenti mount`: a generated family read back through a real FUSE mount.
#![cfg(all(feature = "mount", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::{Mounted, fuse_available};
use common::{Lib, files_of, objects, run_python};
use haagenti_testkit::synth::{self, Family};

/// A small generated family (under `dir/src`) ingested model by model with the CLI into
/// `lib`.
fn ingested(dir: &Path, seed: u64, lib: &Lib) -> Family {
    let family = synth::small_family(&dir.join("src"), seed).unwrap();
    for m in &family.models {
        lib.ok(&["ingest", "--model", &m.name, m.path.to_str().unwrap()]);
    }
    family
}

fn random_preads(mounted: &Path, source: &Path, seed: u64, count: usize) {
    let want = std::fs::read(source).unwrap();
    let file = std::fs::File::open(mounted).unwrap();
    let mut rng = synth::Rng::new(seed);
    let len = want.len() as u64;
    for _ in 0..count {
        let offset = rng.below(len + 1);
        let n = rng.below((len - offset).min(300_000) + 1) as usize;
        let mut buf = vec![0u8; n];
        let mut done = 0;
        while done < n {
            let got = file
                .read_at(&mut buf[done..], offset + done as u64)
                .unwrap();
            assert!(got > 0, "{}: short read at {offset}", mounted.display());
            done += got;
        }
        assert!(
            buf == want[offset as usize..offset as usize + n],
            "{}: pread({offset}, {n}) differs from the source",
            mounted.display()
        );
    }
}

#[test]
fn every_file_reads_back_identical_through_the_plain_mount() {
    let test = "every_file_reads_back_identical_through_the_plain_mount";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    every_file_reads_back_identical(dir.path(), &Lib::fs(&dir.path().join("lib")));
}

#[test]
fn every_file_reads_back_identical_through_a_mount_of_an_s3_library() {
    let test = "every_file_reads_back_identical_through_a_mount_of_an_s3_library";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let Some(lib) = Lib::s3(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    every_file_reads_back_identical(dir.path(), &lib);
}

/// Every file of a generated family, read whole through a plain mount of `lib`, equals
/// its source (sizes and modes too), also by `cmp`; and the real `safetensors` package
/// reads every tensor of every `.safetensors` file through the mount (mmap).
fn every_file_reads_back_identical(dir: &Path, lib: &Lib) {
    let family = ingested(dir, 21, lib);
    let mnt = Mounted::start(lib, &dir.join("mnt"), &[]);

    let mut names: Vec<String> = std::fs::read_dir(&mnt.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = family.models.iter().map(|m| m.name.clone()).collect();
    want.sort();
    assert_eq!(names, want);

    for m in &family.models {
        for (rel, source) in files_of(m) {
            let path = mnt.path(&format!("{}/{rel}", m.name));
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.len(), std::fs::metadata(&source).unwrap().len());
            assert_eq!(meta.mode() & 0o7777, 0o444, "{}", path.display());
            assert!(
                std::fs::read(&path).unwrap() == std::fs::read(&source).unwrap(),
                "{} differs from {}",
                path.display(),
                source.display()
            );
        }
        let dir_mode = std::fs::metadata(mnt.path(&m.name)).unwrap().mode();
        assert_eq!(dir_mode & 0o7777, 0o555);
    }
    // And with `cmp`, the program.
    let m = family.model("base-fp32").unwrap();
    let (rel, source) = files_of(m).into_iter().last().unwrap();
    let status = Command::new("cmp")
        .arg(mnt.path(&format!("{}/{rel}", m.name)))
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success(), "cmp {rel}");

    let Some(python) = haagenti_testkit::env::test_python("safetensors through the mount") else {
        return;
    };
    let pairs: Vec<String> = family
        .models
        .iter()
        .flat_map(|m| {
            files_of(m)
                .into_iter()
                .filter(|(rel, _)| rel.ends_with(".safetensors"))
                .map(|(rel, source)| {
                    format!(
                        "{}::{}",
                        mnt.path(&format!("{}/{rel}", m.name)).display(),
                        source.display()
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(pairs.len() >= family.models.len(), "{pairs:?}");
    run_python(&python, "safetensors_equal.py", &pairs, &[]);
}

#[test]
fn random_preads_equal_the_source_and_concurrent_readers_get_their_bytes() {
    let test = "random_preads_equal_the_source_and_concurrent_readers_get_their_bytes";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    random_preads_and_concurrent_readers(dir.path(), &Lib::fs(&dir.path().join("lib")));
}

#[test]
fn random_preads_and_concurrent_readers_on_a_mount_of_an_s3_library() {
    let test = "random_preads_and_concurrent_readers_on_a_mount_of_an_s3_library";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let Some(lib) = Lib::s3(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    random_preads_and_concurrent_readers(dir.path(), &lib);
}

/// 1,000 random `pread`s per file equal the source; 8 threads reading different models
/// at once get their bytes. The cache is kept small so reads go to the store.
fn random_preads_and_concurrent_readers(dir: &Path, lib: &Lib) {
    let family = ingested(dir, 22, lib);
    let mnt = Mounted::start(lib, &dir.join("mnt"), &["--cache-mb", "8"]);

    for (i, m) in family.models.iter().enumerate() {
        for (j, (rel, source)) in files_of(m).into_iter().enumerate() {
            let path = mnt.path(&format!("{}/{rel}", m.name));
            random_preads(&path, &source, (i * 100 + j) as u64, 1000);
        }
    }

    // 8 threads, each reading a different model (round-robin over the family) in full.
    let models: Vec<_> = family.models.iter().cycle().take(8).cloned().collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = models
            .iter()
            .enumerate()
            .map(|(t, m)| {
                let mnt = &mnt;
                s.spawn(move || {
                    for (rel, source) in files_of(m) {
                        let path = mnt.path(&format!("{}/{rel}", m.name));
                        assert!(
                            std::fs::read(&path).unwrap() == std::fs::read(&source).unwrap(),
                            "thread {t}: {} differs",
                            path.display()
                        );
                        random_preads(&path, &source, 1000 + t as u64, 50);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn writes_fail_with_erofs() {
    let test = "writes_fail_with_erofs";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("one.safetensors");
    synth::generate_model(&src, 64 << 10, 5, haagenti_core::Dtype::BF16).unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    lib.ok(&["ingest", "--model", "org/one", src.to_str().unwrap()]);
    let mnt = Mounted::start(&lib, &dir.path().join("mnt"), &[]);
    let file = mnt.path("org/one/one.safetensors");
    assert!(std::fs::read(&file).unwrap() == std::fs::read(&src).unwrap());

    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(30), "{what}: {e}");
        assert_eq!(e.kind(), std::io::ErrorKind::ReadOnlyFilesystem, "{what}");
    };
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map(drop),
        "open for writing",
    );
    erofs(std::fs::write(mnt.path("org/new"), b"x"), "create");
    erofs(std::fs::create_dir(mnt.path("org/dir")), "mkdir");
    erofs(std::fs::remove_file(&file), "unlink");
    erofs(
        std::fs::rename(&file, mnt.path("org/one/renamed")),
        "rename",
    );
    erofs(
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)),
        "chmod",
    );
    // Still intact.
    assert!(std::fs::read(&file).unwrap() == std::fs::read(&src).unwrap());
}

#[test]
fn hf_layout_refs_and_snapshots_resolve_to_the_files() {
    let test = "hf_layout_refs_and_snapshots_resolve_to_the_files";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let family = synth::small_family(&dir.path().join("src"), 23).unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let base = family.model("base-fp32").unwrap();
    let lora = family.model("lora-bf16").unwrap();
    lib.ok(&["ingest", "--model", "org/base", base.path.to_str().unwrap()]);
    lib.ok(&["ingest", "--model", "lora", lora.path.to_str().unwrap()]);
    let mnt = Mounted::start(&lib, &dir.path().join("mnt"), &["--layout", "hf"]);

    let python = haagenti_testkit::env::test_python("huggingface_hub through the mount");
    let hf_home = dir.path().join("hf-home");
    for (repo_id, repo, m) in [
        ("org/base", "models--org--base", base),
        ("lora", "models--lora", lora),
    ] {
        let rev = std::fs::read_to_string(mnt.path(&format!("{repo}/refs/main"))).unwrap();
        assert_eq!(rev.len(), 40, "{repo}: {rev:?}");
        assert!(rev.chars().all(|c| c.is_ascii_hexdigit()), "{rev:?}");
        let snapshots: Vec<_> = std::fs::read_dir(mnt.path(&format!("{repo}/snapshots")))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(snapshots, std::slice::from_ref(&rev));
        for (rel, source) in files_of(m) {
            let path = mnt.path(&format!("{repo}/snapshots/{rev}/{rel}"));
            assert!(
                std::fs::read(&path).unwrap() == std::fs::read(&source).unwrap(),
                "{} differs",
                path.display()
            );
        }
        // The real client, offline, with the mount as its cache.
        if let Some(python) = &python {
            let mut args = vec![repo_id.to_string(), rev.clone()];
            args.extend(
                files_of(m)
                    .into_iter()
                    .map(|(rel, source)| format!("{rel}::{}", source.display())),
            );
            run_python(
                python,
                "hf_cache_equal.py",
                &args,
                &[
                    ("HF_HUB_CACHE", &mnt.mountpoint),
                    ("HF_HOME", &hf_home),
                    ("HF_HUB_OFFLINE", Path::new("1")),
                ],
            );
        }
    }
}

#[test]
fn a_model_ingested_while_mounted_appears() {
    let test = "a_model_ingested_while_mounted_appears";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    synth::generate_model(&a, 64 << 10, 6, haagenti_core::Dtype::BF16).unwrap();
    synth::generate_model(&b, 64 << 10, 7, haagenti_core::Dtype::BF16).unwrap();
    lib.ok(&["ingest", "--model", "a", a.to_str().unwrap()]);
    let mnt = Mounted::start(&lib, &dir.path().join("mnt"), &[]);
    assert!(mnt.path("a/a.safetensors").exists());
    lib.ok(&["ingest", "--model", "org/b", b.to_str().unwrap()]);
    let got = std::fs::read(mnt.path("org/b/b.safetensors")).unwrap();
    assert!(got == std::fs::read(&b).unwrap());
}

#[test]
fn a_model_replaced_while_mounted_shows_its_new_files() {
    let test = "a_model_replaced_while_mounted_shows_its_new_files";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    for (d, seed) in [(&v1, 11), (&v2, 12)] {
        std::fs::create_dir_all(d).unwrap();
        synth::generate_model(
            &d.join("m.safetensors"),
            64 << 10,
            seed,
            haagenti_core::Dtype::BF16,
        )
        .unwrap();
    }
    lib.ok(&["ingest", "--model", "m", v1.to_str().unwrap()]);
    let mnt = Mounted::start(&lib, &dir.path().join("mnt"), &[]);
    let file = mnt.path("m/m.safetensors");
    let want1 = std::fs::read(v1.join("m.safetensors")).unwrap();
    let want2 = std::fs::read(v2.join("m.safetensors")).unwrap();
    assert!(std::fs::read(&file).unwrap() == want1);
    let open_before = std::fs::File::open(&file).unwrap();

    lib.ok(&["ingest", "--replace", "--model", "m", v2.to_str().unwrap()]);
    let started = Instant::now();
    while std::fs::read(&file).unwrap() != want2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replaced model did not show within 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A file opened before the replace keeps reading the generation it opened.
    let mut buf = vec![0u8; want1.len()];
    open_before.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == want1);
}

#[test]
fn a_damaged_fragment_fails_reads_with_eio_and_other_files_read_fine() {
    let test = "a_damaged_fragment_fails_reads_with_eio_and_other_files_read_fine";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let c = dir.path().join("c.safetensors");
    synth::generate_model(&a, 256 << 10, 8, haagenti_core::Dtype::BF16).unwrap();
    synth::generate_model(&b, 256 << 10, 9, haagenti_core::Dtype::BF16).unwrap();
    synth::generate_model(&c, 64 << 10, 10, haagenti_core::Dtype::BF16).unwrap();
    // Model c: its manifest damaged, so the mount leaves it out and says so once.
    lib.ok(&["ingest", "--model", "c", c.to_str().unwrap()]);
    let raw = lib.raw();
    let manifest = raw.keys("manifests/c/").pop().unwrap();
    raw.damage(&manifest, common::Damage::FlipByte);
    lib.ok(&["ingest", "--model", "a", a.to_str().unwrap()]);
    let before = objects(&lib.path);
    lib.ok(&["ingest", "--model", "b", b.to_str().unwrap()]);
    // An object written by b's ingest: a (ingested before it existed) cannot use it.
    let victim = objects(&lib.path)
        .into_iter()
        .find(|p| !before.contains(p))
        .expect("b's ingest wrote objects");
    let mut bytes = std::fs::read(&victim).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x55;
    std::fs::write(&victim, &bytes).unwrap();

    let mnt = Mounted::start(&lib, &dir.path().join("mnt"), &[]);
    assert!(std::fs::read(mnt.path("a/a.safetensors")).unwrap() == std::fs::read(&a).unwrap());
    random_preads(&mnt.path("a/a.safetensors"), &a, 3, 200);
    let mut listed: Vec<String> = std::fs::read_dir(mnt.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["a", "b"]);
    assert!(!mnt.path("c").exists()); // a lookup miss lists again: still left out
    let log = mnt.log();
    assert_eq!(
        log.matches("model c left out").count(),
        1,
        "the damaged manifest is logged once: {log}"
    );
    assert!(log.contains("manifests/c/"), "{log}");

    // Reading b in 64 KiB pieces: the pieces touching the damaged fragment fail with EIO,
    // never with wrong bytes; the others equal the source.
    let want = std::fs::read(&b).unwrap();
    let file = std::fs::File::open(mnt.path("b/b.safetensors")).unwrap();
    let (mut good, mut eio) = (0, 0);
    for start in (0..want.len()).step_by(64 << 10) {
        let end = (start + (64 << 10)).min(want.len());
        let mut buf = vec![0u8; end - start];
        match file.read_exact_at(&mut buf, start as u64) {
            Ok(()) => {
                assert!(buf == want[start..end], "wrong bytes at {start}");
                good += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(5), "at {start}: {e}");
                eio += 1;
            }
        }
    }
    assert!(eio > 0, "no read failed ({good} good)");
    assert!(good > 0, "every read failed");
    // a still reads fine after b's failures.
    assert!(std::fs::read(mnt.path("a/a.safetensors")).unwrap() == std::fs::read(&a).unwrap());
}

#[test]
fn a_mount_point_left_behind_is_reported_with_the_fix() {
    let test = "a_mount_point_left_behind_is_reported_with_the_fix";
    let Some(()) = fuse_available(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let a = dir.path().join("a.safetensors");
    synth::generate_model(&a, 64 << 10, 10, haagenti_core::Dtype::BF16).unwrap();
    lib.ok(&["ingest", "--model", "a", a.to_str().unwrap()]);
    let mp = dir.path().join("mnt");
    let mut mnt = Mounted::start(&lib, &mp, &[]);
    // SIGKILL: no chance to unmount.
    mnt.child.kill().unwrap();
    mnt.child.wait().unwrap();
    let out = common::haagenti(&lib.path, &["mount", mp.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fusermount3 -u"), "{err}");
    drop(mnt); // clears it
    // Detached: prints the PID and returns once mounted; SIGTERM unmounts cleanly.
    let log = dir.path().join("mount.log");
    let out = common::haagenti(
        &lib.path,
        &[
            "mount",
            mp.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "detached mount failed: {}; its log: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(mp.join("a/a.safetensors").exists());
    let status = Command::new("kill").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    while mp.join("a").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still mounted after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&mp)
        .stderr(Stdio::null())
        .status();
}
