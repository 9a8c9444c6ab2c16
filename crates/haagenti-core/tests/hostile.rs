//! Hostile input: each case gets a clear error or a correct result, never a panic, and an
//! ingest that fails leaves the library exactly as it was (same store listing, same
//! statistics).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use haagenti_core::internals::{self as object, ObjectHeader};
use haagenti_core::safetensors::{self, read_header_from};
use haagenti_core::{
    Dtype, Encoding, FragmentError, FragmentId, FragmentLibrary, FragmentStore, IngestOptions,
    LibraryStats, MemoryStore, ObjectKey,
};
use haagenti_testkit::library::{store_listing, test_library};
use haagenti_testkit::synth::{self, Recipe, SynthTensor};

struct Fixture {
    store: Arc<MemoryStore>,
    lib: FragmentLibrary,
    /// A valid model already in the library, so "unchanged" means something.
    base: PathBuf,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let lib = test_library(store.clone());
        let base = dir.path().join("base.safetensors");
        synth::write_safetensors(
            &base,
            &[SynthTensor::new(
                "w",
                Dtype::BF16,
                vec![256, 300],
                Recipe::Normal {
                    seed: 5,
                    mean: 0.0,
                    std: 0.02,
                },
            )],
            None,
        )
        .unwrap();
        lib.ingest("base", &base, IngestOptions::default())
            .await
            .unwrap();
        Self {
            store,
            lib,
            base,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn snapshot(&self) -> (BTreeMap<String, u64>, LibraryStats) {
        (self.listing().await, self.lib.stats().await.unwrap())
    }

    /// Every object key and size in the store.
    async fn listing(&self) -> BTreeMap<String, u64> {
        store_listing(&*self.store).await
    }

    /// Ingesting `path` fails with an error whose message contains `expect`, and the
    /// library is unchanged. Returns the error.
    async fn rejects(&self, path: &Path, expect: &str) -> FragmentError {
        let before = self.snapshot().await;
        let err = self
            .lib
            .ingest("hostile", path, IngestOptions::default())
            .await
            .expect_err("hostile input must be rejected");
        assert!(
            err.to_string().contains(expect),
            "{}: expected {expect:?} in: {err}",
            path.display()
        );
        assert_eq!(self.snapshot().await, before, "{}", path.display());
        err
    }

    /// Ingests `path` as `name` and checks that it exports bit-exact.
    async fn round_trips(&self, name: &str, path: &Path) {
        self.lib
            .ingest(name, path, IngestOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = tempfile::tempdir().unwrap();
        self.lib.export(name, out.path(), None).await.unwrap();
        assert_same(path, out.path());
        assert!(self.lib.verify(None, None).await.unwrap().is_ok());
    }
}

/// The model at `src` (a file, or a directory of files) equals its export under `out`.
fn assert_same(src: &Path, out: &Path) {
    if src.is_file() {
        assert_same_file(src, &out.join(src.file_name().unwrap()));
    } else {
        assert_same_tree(src, out);
    }
}

fn assert_same_file(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} differs after export",
        a.display()
    );
}

fn assert_same_tree(src: &Path, out: &Path) {
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let (a, b) = (entry.path(), out.join(entry.file_name()));
        if a.is_dir() {
            assert_same_tree(&a, &b);
        } else {
            assert_same_file(&a, &b);
        }
    }
}

/// A safetensors file: length prefix, `json`, then `data`.
fn st_bytes(json: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v.extend_from_slice(data);
    v
}

fn parse(bytes: &[u8]) -> haagenti_core::Result<safetensors::SafetensorsHeader> {
    read_header_from(
        &mut &bytes[..],
        bytes.len() as u64,
        Path::new("t.safetensors"),
    )
}

#[tokio::test]
async fn header_length_of_2_pow_63_is_refused_before_allocating() {
    let f = Fixture::new().await;
    for n in [1u64 << 63, u64::MAX, (100 << 20) + 1] {
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("exceeds the limit"), "{n}: {err}");
        let path = f.path("huge-header.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        f.rejects(&path, "exceeds the limit").await;
    }
}

#[tokio::test]
async fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let f = Fixture::new().await;
    let depth = 200_000;
    let cases = [
        format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)),
        format!(
            r#"{{"t":{{"dtype":"F32","shape":{}{},"data_offsets":[0,4]}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        ),
        format!(
            r#"{{"__metadata__":{{"k":{}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    ];
    for (i, json) in cases.iter().enumerate() {
        let path = f.path(&format!("nested-{i}.safetensors"));
        std::fs::write(&path, st_bytes(json, &[0; 4])).unwrap();
        f.rejects(&path, "invalid safetensors").await;
    }
}

#[tokio::test]
async fn shapes_whose_product_overflows_are_refused() {
    let f = Fixture::new().await;
    for (dtype, shape) in [
        ("F32", "[4294967296,4294967296,4294967296]"),
        // The element count fits in u64; times the element size it does not.
        ("F32", "[4611686018427387904]"),
        ("F64", "[2305843009213693952, 1]"),
        ("U8", "[18446744073709551615, 2]"),
    ] {
        let json = format!(r#"{{"t":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[0,4]}}}}"#);
        let path = f.path("overflow.safetensors");
        std::fs::write(&path, st_bytes(&json, &[0; 4])).unwrap();
        f.rejects(&path, "overflows").await;
    }
}

#[tokio::test]
async fn duplicate_tensor_names_are_refused() {
    let f = Fixture::new().await;
    let json = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let path = f.path("dup.safetensors");
    std::fs::write(&path, st_bytes(json, &[1; 8])).unwrap();
    f.rejects(&path, "appears twice").await;
}

#[tokio::test]
async fn zero_length_tensors_and_scalars_round_trip() {
    let f = Fixture::new().await;
    // A scalar, empty tensors before, between and after data (one with a huge other
    // dimension: zero elements whatever the rest), and a vector.
    let json = concat!(
        r#"{"__metadata__":{"format":"pt"},"#,
        r#""empty.first":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"#,
        r#""scalar":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"#,
        r#""empty.mid":{"dtype":"BF16","shape":[3,0],"data_offsets":[4,4]},"#,
        r#""empty.huge":{"dtype":"F64","shape":[0,18446744073709551615],"data_offsets":[4,4]},"#,
        r#""vec":{"dtype":"I64","shape":[2],"data_offsets":[4,20]},"#,
        r#""scalar.u8":{"dtype":"U8","shape":[],"data_offsets":[20,21]},"#,
        r#""empty.last":{"dtype":"U8","shape":[0],"data_offsets":[21,21]}}"#
    );
    let data: Vec<u8> = (0..21u8).collect();
    let path = f.path("scalars.safetensors");
    std::fs::write(&path, st_bytes(json, &data)).unwrap();
    let header = safetensors::read_header(&path).unwrap();
    let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "empty.first",
            "scalar",
            "empty.mid",
            "empty.huge",
            "vec",
            "scalar.u8",
            "empty.last"
        ]
    );
    f.round_trips("scalars", &path).await;
    let manifest = f.lib.manifest("scalars").await.unwrap();
    let tensors = manifest.files[0].tensors();
    assert_eq!(tensors.len(), 7);
    for t in tensors {
        assert_eq!(t.fragments.is_empty(), t.len == 0, "{}", t.name);
    }
    assert_eq!(
        tensors.iter().find(|t| t.name == "scalar").unwrap().shape,
        Vec::<u64>::new()
    );

    // Files with no data at all: no tensors, only empty tensors, an empty blob.
    let dir = f.path("empty-model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("none.safetensors"), st_bytes("{}      ", &[])).unwrap();
    std::fs::write(
        dir.join("empties.safetensors"),
        st_bytes(
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F16","shape":[0,7],"data_offsets":[0,0]}}"#,
            &[],
        ),
    )
    .unwrap();
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
    f.round_trips("empty-model", &dir).await;
}

/// A sparse file with a valid header whose second tensor starts past 4 GiB.
fn sparse_model(path: &Path, extra: u64) -> (u64, u64) {
    let big = (1u64 << 32) + 12;
    let json = format!(
        r#"{{"big":{{"dtype":"U8","shape":[{big}],"data_offsets":[0,{big}]}},"tail":{{"dtype":"F32","shape":[2],"data_offsets":[{big},{}]}}}}"#,
        big + 8
    );
    let header = st_bytes(&json, &[]);
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&header).unwrap();
    file.set_len(header.len() as u64 + big + 8 + extra).unwrap();
    (header.len() as u64, big)
}

#[tokio::test]
async fn offsets_beyond_4_gib_parse_exactly_and_bad_ones_fail_cleanly() {
    let f = Fixture::new().await;
    let path = f.path("sparse.safetensors");
    let (start, big) = sparse_model(&path, 0);
    let header = safetensors::read_header(&path).unwrap();
    assert_eq!(header.data_start(), start);
    assert_eq!(header.file_len, start + big + 8);
    let tail = &header.tensors[1];
    assert_eq!(
        (tail.name.as_str(), tail.start, tail.len()),
        ("tail", start + big, 8)
    );
    assert_eq!(header.tensors[0].len(), big);
    assert!(header.tensors[0].len() > u64::from(u32::MAX));

    // The file is one byte longer than the header says: the bytes after the last
    // tensor belong to no tensor. Found from the header alone (the 4 GiB of data are
    // never read) and nothing is written.
    let bad = f.path("sparse-bad.safetensors");
    sparse_model(&bad, 1);
    f.rejects(&bad, "belong to no tensor").await;
    // One byte shorter: the last tensor runs out of the file.
    let short = f.path("sparse-short.safetensors");
    sparse_model(&short, 0);
    let len = std::fs::metadata(&short).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    f.rejects(&short, "out of bounds").await;
}

#[tokio::test]
async fn names_that_are_not_utf8_are_refused() {
    let f = Fixture::new().await;
    // A file name in a model directory.
    let dir = f.path("bad-names");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&f.base, dir.join("model.safetensors")).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"notes-\xff\xfe.txt");
    std::fs::write(dir.join(name), b"hello").unwrap();
    f.rejects(&dir, "not valid UTF-8").await;
    // The same as a subdirectory name.
    let dir2 = f.path("bad-dir-names");
    std::fs::create_dir_all(dir2.join(std::ffi::OsStr::from_bytes(b"sub-\xc3\x28"))).unwrap();
    std::fs::write(
        dir2.join(std::ffi::OsStr::from_bytes(b"sub-\xc3\x28"))
            .join("a.txt"),
        b"x",
    )
    .unwrap();
    f.rejects(&dir2, "not valid UTF-8").await;
    // A single file.
    let single = f.path(std::str::from_utf8(b"m").unwrap());
    let single = single.with_file_name(std::ffi::OsStr::from_bytes(b"\x80.bin"));
    std::fs::write(&single, b"data").unwrap();
    f.rejects(&single, "not UTF-8").await;
    // Header bytes that are not UTF-8, and JSON escapes that are not Unicode scalars.
    let mut json = br#"{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#.to_vec();
    json[2] = 0xff;
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.push(0);
    let path = f.path("latin1.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    f.rejects(&path, "not UTF-8").await;
    let path = f.path("surrogate.safetensors");
    std::fs::write(
        &path,
        st_bytes(
            r#"{"\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            &[0],
        ),
    )
    .unwrap();
    f.rejects(&path, "invalid safetensors").await;
    // Odd but valid names are kept verbatim: NUL, path-like, empty.
    let path = f.path("odd.safetensors");
    std::fs::write(
        &path,
        st_bytes(
            r#"{"a\u0000b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"../../etc/passwd":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}"#,
            &[1, 2, 3],
        ),
    )
    .unwrap();
    f.round_trips("odd-names", &path).await;
}

#[tokio::test]
async fn symlinks_out_of_the_model_directory_are_refused() {
    let f = Fixture::new().await;
    let outside = f.path("secret.txt");
    std::fs::write(&outside, b"not part of the model").unwrap();
    let make = |name: &str| {
        let dir = f.path(name);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::copy(&f.base, dir.join("model.safetensors")).unwrap();
        dir
    };
    let dir = make("escape-abs");
    std::os::unix::fs::symlink(&outside, dir.join("sub/link.txt")).unwrap();
    f.rejects(&dir, "outside the model directory").await;

    let dir = make("escape-rel");
    std::os::unix::fs::symlink("../../secret.txt", dir.join("sub/link.txt")).unwrap();
    f.rejects(&dir, "outside the model directory").await;

    let dir = make("escape-dir");
    std::os::unix::fs::symlink(f.dir.path(), dir.join("sub/all")).unwrap();
    f.rejects(&dir, "outside the model directory").await;

    let dir = make("loop");
    std::os::unix::fs::symlink("b", dir.join("a")).unwrap();
    std::os::unix::fs::symlink("a", dir.join("b")).unwrap();
    f.rejects(&dir, "resolve symlink").await;

    let dir = make("dangling");
    std::os::unix::fs::symlink("nowhere", dir.join("gone")).unwrap();
    f.rejects(&dir, "resolve symlink").await;

    let dir = make("inner-dir");
    std::os::unix::fs::symlink("sub", dir.join("again")).unwrap();
    f.rejects(&dir, "other than a regular file").await;

    // A link to a file inside the model is that file: exported as a regular copy.
    let dir = make("inner-file");
    std::fs::write(dir.join("sub/config.json"), b"{}").unwrap();
    std::os::unix::fs::symlink("sub/config.json", dir.join("config-link.json")).unwrap();
    f.round_trips("inner-file", &dir).await;
}

/// Replaces the stored object of `id` with `object` (sealed: a valid checksum, so the
/// lie itself is what the reader must catch).
fn plant(store: &MemoryStore, id: &FragmentId, mut object: Vec<u8>) {
    object::seal(&mut object);
    store.overwrite_for_test(&ObjectKey::fragment(id), Bytes::from(object));
}

fn object_of(encoding: Encoding, decoded_len: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    object::write_header(&mut out, &encoding, decoded_len, None);
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn stored_objects_whose_declared_length_lies_are_corrupt() {
    let f = Fixture::new().await;
    let manifest = f.lib.manifest("base").await.unwrap();
    let victim = manifest.fragments().next().unwrap().id;
    let other = manifest.fragments().nth(1).unwrap().id;
    let data = f.lib.get_fragment(&victim).await.unwrap().data;
    let len = data.len() as u64;
    let raw = Encoding::Standalone { codec: 0 };
    let lies: Vec<(&str, Vec<u8>)> = vec![
        ("one byte more", object_of(raw, len + 1, &data)),
        ("one byte less", object_of(raw, len - 1, &data)),
        ("zero", object_of(raw, 0, &data)),
        ("the maximum", object_of(raw, 16 << 20, &data)),
        ("past the maximum", object_of(raw, (16 << 20) + 1, &data)),
        ("2^63", object_of(raw, 1 << 63, &data)),
        (
            "short payload",
            object_of(raw, len, &data[..data.len() - 1]),
        ),
        (
            // Its bytes do rebuild to `victim`'s (a zero XOR over itself): found by the
            // `stored_object` fuzz target, whose oracle had expected them back.
            "a delta whose base is the fragment itself",
            object_of(
                Encoding::Delta {
                    codec: 0,
                    base: victim,
                },
                len,
                &vec![0; data.len()],
            ),
        ),
        (
            "a delta longer than its base",
            object_of(
                Encoding::Delta {
                    codec: 0,
                    base: other,
                },
                len + 2,
                &vec![0; data.len() + 2],
            ),
        ),
        (
            "a cast to a dtype casts cannot make",
            object_of(
                Encoding::Cast {
                    source: other,
                    from: Dtype::F32,
                    to: Dtype::F32,
                },
                len,
                &[],
            ),
        ),
        (
            "an unknown codec",
            object_of(Encoding::Standalone { codec: 999 }, len, &data),
        ),
        (
            "a delta against a cast whose source cannot cast to its length",
            object_of(
                Encoding::CastDelta {
                    codec: 0,
                    source: other,
                    from: Dtype::F32,
                    to: Dtype::BF16,
                },
                len,
                &data,
            ),
        ),
        (
            "a delta against a cast to a dtype casts cannot make",
            object_of(
                Encoding::CastDelta {
                    codec: 0,
                    source: other,
                    from: Dtype::F32,
                    to: Dtype::I8,
                },
                len,
                &data,
            ),
        ),
    ];
    let good = f.store.get(&ObjectKey::fragment(&victim)).await.unwrap();
    let good_other = f.store.get(&ObjectKey::fragment(&other)).await.unwrap();
    for (what, object) in lies {
        plant(&f.store, &victim, object);
        let listing = f.listing().await;
        // A fresh cache: the fixture's library has the good bytes cached (verified when
        // they were read), and would rightly serve them.
        let err = f
            .lib
            .clone()
            .with_cache_bytes(0)
            .get_fragment(&victim)
            .await
            .unwrap_err();
        assert!(
            err.is_corruption() || matches!(err, FragmentError::UnknownTag { .. }),
            "{what}: {err}"
        );
        let report = f.lib.verify(None, None).await.unwrap();
        assert_eq!(report.problems.len(), 1, "{what}");
        let out = tempfile::tempdir().unwrap();
        let err = f.lib.export("base", out.path(), None).await.unwrap_err();
        assert!(err.to_string().contains(&victim.short()), "{what}: {err}");
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "{what}");
        assert_eq!(
            f.listing().await,
            listing,
            "{what}: reads changed the store"
        );
    }
    // A delta whose base is itself a delta (depth 2) is refused.
    plant(
        &f.store,
        &other,
        object_of(
            Encoding::Delta {
                codec: 0,
                base: victim,
            },
            len,
            &data,
        ),
    );
    plant(
        &f.store,
        &victim,
        object_of(
            Encoding::Delta {
                codec: 0,
                base: other,
            },
            len,
            &vec![0; data.len()],
        ),
    );
    // A fresh cache: the fixture's library has the good bytes cached (verified when
    // they were read), and would rightly serve them.
    let err = f
        .lib
        .clone()
        .with_cache_bytes(0)
        .get_fragment(&victim)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("depth"), "{err}");
    // Reads never repair or change anything: with the true objects back, all is well.
    let header: ObjectHeader = object::decode_header(&good, "k").unwrap();
    assert_eq!(header.decoded_len, len);
    f.store
        .overwrite_for_test(&ObjectKey::fragment(&victim), good);
    f.store
        .overwrite_for_test(&ObjectKey::fragment(&other), good_other);
    assert!(f.lib.verify(None, None).await.unwrap().is_ok());
}

#[tokio::test]
async fn a_file_that_changes_while_read_fails_the_ingest() {
    // Proc files report a size of 0 and then yield bytes: to the reader, the file changed
    // after it was validated.
    let f = Fixture::new().await;
    let before = f.snapshot().await;
    let err = f
        .lib
        .ingest(
            "moving",
            Path::new("/proc/self/status"),
            IngestOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("changed while"), "{err}");
    assert_eq!(f.lib.models().await.unwrap(), ["base"]);
    // Chunks read before the change was seen are unreferenced: gc removes them.
    f.lib
        .gc(haagenti_core::GcOptions {
            dry_run: false,
            grace: std::time::Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(f.snapshot().await, before);
}
