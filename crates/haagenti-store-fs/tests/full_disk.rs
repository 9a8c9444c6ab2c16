//! A full disk: a filesystem library on a 2 MiB tmpfs. Ingesting a model that does not
//! fit fails with a clear "no space" error; the library stays consistent (the earlier
//! model verifies and exports bit-exact), gc frees what the failed ingest wrote, and a
//! model that fits ingests afterwards.
//!
//! Mounting needs root (CI runs as root); elsewhere the test fails saying so, unless
//! `HAAGENTI_SKIP_TMPFS=1` asks for the skip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use haagenti_core::store::{FRAGMENTS_PREFIX, TMP_PREFIX};
use haagenti_core::{Dtype, FragmentLibrary, GcOptions, IngestOptions};
use haagenti_store_fs::FsStore;
use haagenti_testkit::library::test_library;
use haagenti_testkit::synth::{self, Recipe, SynthTensor};

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .ok()?;
    if out.status.success() {
        Some(Mount(dir.to_path_buf()))
    } else {
        haagenti_testkit::env::unavailable(
            "a_full_disk_fails_cleanly",
            "HAAGENTI_SKIP_TMPFS",
            &format!(
                "cannot mount a tmpfs here ({}): run as root, as CI does",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
    }
}

fn model(path: &Path, seed: u64, tensors: u64) -> PathBuf {
    let tensors: Vec<SynthTensor> = (0..tensors)
        .map(|i| {
            SynthTensor::new(
                format!("layers.{i}.weight"),
                Dtype::BF16,
                vec![256, 512],
                Recipe::Normal {
                    seed: seed * 100 + i,
                    mean: 0.0,
                    std: 0.02,
                },
            )
        })
        .collect();
    synth::write_safetensors(path, &tensors, None).unwrap();
    path.to_path_buf()
}

fn assert_exports(
    lib_model: &str,
    src: &Path,
    lib: &FragmentLibrary,
    rt: &tokio::runtime::Runtime,
) {
    let out = tempfile::tempdir().unwrap();
    rt.block_on(lib.export(lib_model, out.path(), None))
        .unwrap();
    assert!(
        std::fs::read(src).unwrap()
            == std::fs::read(out.path().join(src.file_name().unwrap())).unwrap(),
        "{lib_model} is not bit-exact"
    );
}

#[test]
fn a_full_disk_fails_cleanly() {
    let mnt = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_tmpfs(mnt.path(), "2m") else {
        return;
    };
    let src = tempfile::tempdir().unwrap();
    // 256 KiB per tensor, raw codec: `small` fits, `big` (12 tensors, 3 MiB) cannot.
    let small = model(&src.path().join("small.safetensors"), 1, 2);
    let big = model(&src.path().join("big.safetensors"), 2, 12);
    let fits = model(&src.path().join("fits.safetensors"), 3, 2);

    let lib = test_library(Arc::new(FsStore::open(mnt.path().join("lib")).unwrap()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gc_now = GcOptions {
        dry_run: false,
        grace: Duration::ZERO,
    };

    rt.block_on(lib.ingest("small", &small, IngestOptions::default()))
        .unwrap();
    let err = rt
        .block_on(lib.ingest("big", &big, IngestOptions::default()))
        .expect_err("3 MiB cannot fit in what is left of 2 MiB");
    let message = err.to_string();
    assert!(message.contains("No space left on device"), "{message}");

    // Consistent: the earlier model is whole, the failed one absent, no temporary file
    // was left by the failed writes.
    assert_eq!(rt.block_on(lib.models()).unwrap(), ["small"]);
    assert!(rt.block_on(lib.verify(None, None)).unwrap().is_ok());
    assert_exports("small", &small, &lib, &rt);
    assert!(
        rt.block_on(lib.store().list(TMP_PREFIX))
            .unwrap()
            .is_empty()
    );

    // gc frees what the failed ingest stored (it needs room for its lock, which the
    // failed writes' removed temporary files left).
    let orphans = rt
        .block_on(lib.store().list(FRAGMENTS_PREFIX))
        .unwrap()
        .len();
    let report = rt.block_on(lib.gc(gc_now)).unwrap();
    assert!(report.garbage_objects > 0, "{report:?}");
    let left = rt
        .block_on(lib.store().list(FRAGMENTS_PREFIX))
        .unwrap()
        .len();
    assert_eq!(left as u64, orphans as u64 - report.garbage_objects);

    // And a model that fits ingests now.
    rt.block_on(lib.ingest("fits", &fits, IngestOptions::default()))
        .unwrap();
    assert_exports("fits", &fits, &lib, &rt);
    assert_exports("small", &small, &lib, &rt);
}
