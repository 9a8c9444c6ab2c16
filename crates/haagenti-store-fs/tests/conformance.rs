#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use haagenti_core::{FragmentStore, MemoryStore, ObjectKey};
use haagenti_store_fs::FsStore;
use haagenti_testkit::store::{Tamper, check_store};

struct FsTamper(std::path::PathBuf);

#[async_trait]
impl Tamper for FsTamper {
    async fn overwrite(&self, key: &ObjectKey, bytes: Bytes) {
        let path = FsStore::open(&self.0).unwrap().object_path(key).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(dir.path()).unwrap());
    check_store(store, &FsTamper(dir.path().to_path_buf())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    let store = Arc::new(MemoryStore::new());
    check_store(store.clone() as Arc<dyn FragmentStore>, &*store).await;
}

#[tokio::test]
async fn temporary_files_are_not_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let k = ObjectKey::new("index/a").unwrap();
    store.put(&k, Bytes::from_static(b"x")).await.unwrap();
    store.put(&k, Bytes::from_static(b"y")).await.unwrap();
    assert!(store.list("tmp/").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_store_with_page_cache_writes_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(dir.path()).unwrap().page_cache_writes());
    check_store(store, &FsTamper(dir.path().to_path_buf())).await;
}

/// Objects of every length around the edges of the writes past the page cache (64 KiB
/// and 16 MiB, whole 4 KiB blocks and one byte either side) read back whole and by
/// range, exactly as long as they were, written either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_every_length_read_back_exactly() {
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
    for page_cache in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FsStore::open(dir.path()).unwrap();
        if page_cache {
            store = store.page_cache_writes();
        }
        for (n, len) in lengths.into_iter().enumerate() {
            let bytes: Bytes = (0..len)
                .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ n as u8)
                .collect();
            let what = format!("{len} bytes, page_cache_writes {page_cache}");
            let key = ObjectKey::new(format!("index/object-{len}")).unwrap();
            store.put(&key, bytes.clone()).await.unwrap();
            assert_eq!(store.get(&key).await.unwrap(), bytes, "{what}");
            let on_disk = store.object_path(&key).unwrap();
            assert_eq!(std::fs::read(on_disk).unwrap(), bytes, "{what}: the file");
            if len > 2 {
                let range = 1..len as u64 - 1;
                let part = store.get_range(&key, range).await.unwrap();
                assert_eq!(part, bytes.slice(1..len - 1), "{what}: a range");
            }
        }
    }
}
