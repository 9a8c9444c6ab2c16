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
