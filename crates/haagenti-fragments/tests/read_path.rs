//! The one read path (`FileReader`), checked against the source bytes on every store
//! (the testkit's read-path suite, with the real codecs and similarity).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::Arc;

use haagenti_fragments::{FragmentStore, MemoryStore};
use haagenti_testkit::library::TestLibrary;
use haagenti_testkit::read_path::check_read_path;

async fn run(store: Arc<dyn FragmentStore>) {
    let library = TestLibrary::new()
        .codecs(haagenti_fragments::codec_impls::default_registry())
        .similarity(haagenti_fragments::lsh::cosine_similarity());
    check_read_path(store, &library).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_at_equals_the_source_bytes_on_the_memory_store() {
    run(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_at_equals_the_source_bytes_on_the_fs_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = haagenti_fragments::fs::FsStore::open(dir.path().join("lib")).unwrap();
    run(Arc::new(store)).await;
}

/// On the local S3 server `cargo xtask test` starts (`HAAGENTI_TEST_S3_ENDPOINT`); without
/// one the test fails saying so, unless `HAAGENTI_SKIP_S3=1` asks for the skip.
#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_at_equals_the_source_bytes_on_the_s3_store() {
    use haagenti_fragments::s3::{S3Credentials, S3Options, S3Store};
    let Some((endpoint, bucket)) =
        haagenti_testkit::env::s3_test_server("read_at_equals_the_source_bytes_on_the_s3_store")
    else {
        return;
    };
    let prefix = format!(
        "read-path-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let options = S3Options {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        credentials: Some(S3Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        }),
        ..S3Options::default()
    };
    let store = S3Store::from_url(&format!("s3://{bucket}/{prefix}"), options).unwrap();
    run(Arc::new(store)).await;
}
