//! Libraries on file systems mounted for the test, and objects of every length.
//!
//! * A full disk: a library on a 2 MiB tmpfs. Ingesting a model that does not fit fails
//!   with a clear "no space" error; the library stays consistent (the earlier model
//!   verifies and exports bit-exact), gc frees what the failed ingest wrote, and a model
//!   that fits ingests afterwards.
//! * Objects of every length around the edges of the writes past the page cache
//!   (`direct.rs`) read back exactly: on the temporary directory's file system (written
//!   with `O_DIRECT`), with [`FsStore::page_cache_writes`], and on a ramfs, which refuses
//!   `O_DIRECT` (the store falls back to the page cache).
//!
//! Mounting needs root (CI runs as root); elsewhere these tests fail saying so, unless
//! `HAAGENTI_SKIP_TMPFS=1` asks for the skip.

#![cfg(target_os = "linux")] // mount(8), ramfs, O_DIRECT
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use haagenti_core::store::{FRAGMENTS_PREFIX, TMP_PREFIX};
use haagenti_core::{Dtype, FragmentLibrary, FragmentStore, GcOptions, IngestOptions, ObjectKey};
use haagenti_store_fs::FsStore;
use haagenti_testkit::library::test_library;
use haagenti_testkit::synth::{self, Recipe, SynthTensor};

/// Unmounts the file system when the test ends, however it ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a file system of type `fs` (with `options`) on `dir`, for test `test`.
fn mount(test: &str, fs: &str, options: &[&str], dir: &Path) -> Option<Mount> {
    let out = Command::new("mount")
        .args(["-t", fs])
        .args(options)
        .arg(fs)
        .arg(dir)
        .output()
        .ok()?;
    if out.status.success() {
        Some(Mount(dir.to_path_buf()))
    } else {
        haagenti_testkit::env::unavailable(
            test,
            "HAAGENTI_SKIP_TMPFS",
            &format!(
                "cannot mount a {fs} here ({}): run as root, as CI does",
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
    let test = "a_full_disk_fails_cleanly";
    let Some(_mount) = mount(test, "tmpfs", &["-o", "size=2m"], mnt.path()) else {
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

/// Puts objects of every length around the edges of the writes past the page cache (64
/// KiB and 16 MiB, whole 4 KiB blocks and one byte either side) into `store`, and reads
/// each back whole, by range and as the file on disk.
async fn assert_every_length_reads_back(store: &FsStore, what: &str) {
    const KIB: usize = 1024;
    let lengths = [
        0,
        1,
        4095,
        64 * KIB - 1,
        64 * KIB,
        64 * KIB + 1,
        1024 * KIB - 1,
        1024 * KIB,
        1024 * KIB + 4097,
        16 * 1024 * KIB,
        16 * 1024 * KIB + 1,
    ];
    for (n, len) in lengths.into_iter().enumerate() {
        let bytes: Bytes = (0..len)
            .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ n as u8)
            .collect();
        let what = format!("{len} bytes, {what}");
        let key = ObjectKey::new(format!("index/object-{len}")).unwrap();
        store.put(&key, bytes.clone()).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap(), bytes, "{what}");
        let on_disk = store.object_path(&key).unwrap();
        assert_eq!(std::fs::read(on_disk).unwrap(), bytes, "{what}: the file");
        if len > 2 {
            let part = store.get_range(&key, 1..len as u64 - 1).await.unwrap();
            assert_eq!(part, bytes.slice(1..len - 1), "{what}: a range");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_every_length_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("direct")).unwrap();
    assert_every_length_reads_back(&store, "written past the page cache").await;
    let store = FsStore::open(dir.path().join("cached"))
        .unwrap()
        .page_cache_writes();
    assert_every_length_reads_back(&store, "page_cache_writes").await;

    let mnt = tempfile::tempdir().unwrap();
    let test = "objects_of_every_length_read_back_exactly";
    let Some(_mount) = mount(test, "ramfs", &[], mnt.path()) else {
        return;
    };
    let probe = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(mnt.path().join("probe"));
    let refused = probe.err().and_then(|e| e.raw_os_error()) == Some(libc::EINVAL);
    assert!(
        refused,
        "ramfs took O_DIRECT: this case no longer tests the fallback"
    );
    let store = FsStore::open(mnt.path().join("lib")).unwrap();
    assert_every_length_reads_back(&store, "on a ramfs (no O_DIRECT)").await;
}
