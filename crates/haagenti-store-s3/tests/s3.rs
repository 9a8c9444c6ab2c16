//! S3Store against a real S3-compatible server.
//!
//! `cargo xtask test` starts moto on 127.0.0.1 and sets `HAAGENTI_TEST_S3_ENDPOINT` and
//! `HAAGENTI_TEST_S3_BUCKET`; without them every test here fails saying so, unless
//! `HAAGENTI_SKIP_S3=1` asks for the skip (then each prints it).
//! Each test works under its own key prefix, so tests run in parallel in one bucket.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use haagenti_core::{FragmentError, FragmentStore, ObjectKey, PutOutcome};
use haagenti_store_s3::{S3Credentials, S3Options, S3Store};
use haagenti_testkit::store::{Tamper, check_store};
use haagenti_testkit::synth::Rng;

struct Server {
    endpoint: String,
    bucket: String,
}

/// The test server; see [`haagenti_testkit::env::s3_test_server`] (`None` only when
/// `HAAGENTI_SKIP_S3=1` asked for the skip).
fn server(test: &str) -> Option<Server> {
    let (endpoint, bucket) = haagenti_testkit::env::s3_test_server(test)?;
    Some(Server { endpoint, bucket })
}

fn options(server: &Server) -> S3Options {
    S3Options {
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        // moto does not check signatures; explicit keys keep the client off the
        // instance-metadata service.
        credentials: Some(S3Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        }),
        max_retries: 2,
        ..S3Options::default()
    }
}

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tests/{test}-{}-{nanos}", std::process::id())
}

fn store_at(server: &Server, prefix: &str) -> S3Store {
    S3Store::from_url(&format!("s3://{}/{prefix}", server.bucket), options(server)).unwrap()
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut out = vec![0u8; len];
    Rng::new(seed).fill_bytes(&mut out);
    Bytes::from(out)
}

fn sorted_keys(metas: &[haagenti_core::ObjectMeta]) -> Vec<String> {
    let mut keys: Vec<String> = metas.iter().map(|m| m.key.to_string()).collect();
    keys.sort();
    keys
}

/// Overwrites objects behind the store's back with a client of its own (plain
/// unconditional puts), as bit rot or a foreign writer would.
struct S3Tamper {
    s3: object_store::aws::AmazonS3,
    prefix: String,
}

#[async_trait]
impl Tamper for S3Tamper {
    async fn overwrite(&self, key: &ObjectKey, bytes: Bytes) {
        use object_store::ObjectStoreExt;
        let path = object_store::path::Path::from(format!("{}/{key}", self.prefix));
        self.s3.put(&path, bytes.into()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_conforms() {
    let Some(server) = server("s3_store_conforms") else {
        return;
    };
    let prefix = unique_prefix("conformance");
    let store = Arc::new(store_at(&server, &prefix));
    let tamper = S3Tamper {
        s3: object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&server.endpoint)
            .with_allow_http(true)
            .with_bucket_name(&server.bucket)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap(),
        prefix,
    };
    check_store(store, &tamper).await;
}

#[tokio::test]
async fn put_get_head_list_delete() {
    let Some(server) = server("put_get_head_list_delete") else {
        return;
    };
    let prefix = unique_prefix("basic");
    let store = store_at(&server, &prefix);
    store.check().await.unwrap();
    assert_eq!(store.location(), format!("s3://{}/{prefix}", server.bucket));

    let a = key("fragments/ab/cd/abcd01");
    let b = key("fragments/ab/ef/abef02");
    let m = key("manifests/model-1");
    let empty = key("index/empty");
    let bytes_a = random_bytes(1, 1000);
    assert_eq!(
        store.put(&a, bytes_a.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.put(&b, random_bytes(2, 3)).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.put(&m, Bytes::from_static(b"{}")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.put(&empty, Bytes::new()).await.unwrap(),
        PutOutcome::Created
    );

    // Create-only: a second put writes nothing.
    assert_eq!(
        store.put(&a, random_bytes(9, 1000)).await.unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(store.get(&a).await.unwrap(), bytes_a);
    assert_eq!(store.get(&empty).await.unwrap(), Bytes::new());

    let before = SystemTime::now() - std::time::Duration::from_secs(3600);
    let meta = store.head(&a).await.unwrap().unwrap();
    assert_eq!((meta.key.clone(), meta.size), (a.clone(), 1000));
    assert!(meta.modified > before);
    assert!(store.exists(&b).await.unwrap());

    let missing = key("fragments/00/00/missing");
    assert_eq!(store.head(&missing).await.unwrap(), None);
    let err = store.get(&missing).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains(&format!(
            "s3://{}/{prefix}/fragments/00/00/missing",
            server.bucket
        )),
        "{shown}"
    );

    // Prefixes may end inside a segment; sizes come back.
    let mut expected = [&empty, &b, &a, &m].map(|k| k.to_string()).to_vec();
    expected.sort();
    assert_eq!(sorted_keys(&store.list("").await.unwrap()), expected);
    assert_eq!(
        sorted_keys(&store.list("fragments/").await.unwrap()),
        [a.to_string(), b.to_string()]
    );
    assert_eq!(
        sorted_keys(&store.list("fragments/ab/c").await.unwrap()),
        [a.to_string()]
    );
    assert_eq!(
        sorted_keys(&store.list("manifests/model").await.unwrap()),
        [m.to_string()]
    );
    assert!(store.list("nothing/").await.unwrap().is_empty());
    // Ranged reads, clipped to the object's end.
    assert_eq!(
        store.get_range(&a, 10..20).await.unwrap(),
        bytes_a.slice(10..20)
    );
    assert_eq!(
        store.get_range(&a, 990..2000).await.unwrap(),
        bytes_a.slice(990..)
    );
    assert!(store.get_range(&a, 1000..1001).await.unwrap().is_empty());
    assert!(store.get_range(&a, 5..5).await.unwrap().is_empty());
    assert!(
        store
            .get_range(&missing, 0..1)
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        store
            .get_range(&missing, 0..0)
            .await
            .unwrap_err()
            .is_not_found()
    );
    let listed_b = store.list("fragments/ab/ef").await.unwrap();
    assert_eq!(listed_b.len(), 1);
    assert_eq!(listed_b[0].size, 3);

    store.delete(&a).await.unwrap();
    assert_eq!(store.head(&a).await.unwrap(), None);
    assert!(store.get(&a).await.unwrap_err().is_not_found());
    // Deleting a missing key succeeds; a deleted key can be created again.
    store.delete(&a).await.unwrap();
    assert_eq!(
        store.put(&a, bytes_a.clone()).await.unwrap(),
        PutOutcome::Created
    );

    for meta in store.list("").await.unwrap() {
        store.delete(&meta.key).await.unwrap();
    }
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_only_puts_have_one_winner() {
    let Some(server) = server("concurrent_create_only_puts_have_one_winner") else {
        return;
    };
    let store = Arc::new(store_at(&server, &unique_prefix("race")));
    let k = key("manifests/contested");
    const WRITERS: u64 = 16;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (store, k) = (Arc::clone(&store), k.clone());
            tokio::spawn(async move {
                let bytes = random_bytes(100 + i, 4096);
                let outcome = store.put(&k, bytes.clone()).await.unwrap();
                (outcome, bytes)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (outcome, bytes) = task.await.unwrap();
        if outcome == PutOutcome::Created {
            winners.push(bytes);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create-only put must win");
    assert_eq!(store.get(&k).await.unwrap(), winners[0]);
}

/// Multipart uploads and single puts through a proxy that resets, throttles, loses and
/// cuts 30% of requests: every part is sent again under its own number, a completion
/// whose answer was lost is settled by a HEAD, and the objects come back whole.
#[test]
fn multipart_and_single_puts_ride_out_faults() {
    let Some(server) = server("multipart_faults") else {
        return;
    };
    let proxy = haagenti_testkit::faults::FaultProxy::start(
        &server.endpoint,
        41,
        0.3,
        std::time::Duration::from_millis(2),
    )
    .unwrap();
    let opts = S3Options {
        endpoint: Some(proxy.endpoint()),
        multipart_threshold: 8 << 20,
        max_retries: 40,
        ..options(&server)
    };
    let prefix = unique_prefix("multipart-faults");
    let store = S3Store::from_url(&format!("s3://{}/{prefix}", server.bucket), opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let big = random_bytes(9, (20 << 20) + 1);
        for i in 0..3 {
            let k = key(&format!("fragments/mp/{i}"));
            assert_eq!(
                store.put(&k, big.clone()).await.unwrap(),
                PutOutcome::Created
            );
            assert!(store.get(&k).await.unwrap() == big, "multipart object {i}");
        }
        for i in 0..40 {
            let k = key(&format!("fragments/sm/{i}"));
            let small = random_bytes(100 + i, 64 << 10);
            assert_eq!(
                store.put(&k, small.clone()).await.unwrap(),
                PutOutcome::Created,
                "a put whose answer was lost is still ours"
            );
            assert!(store.get(&k).await.unwrap() == small);
        }
    });
    let stats = store.retry_stats();
    let counts = proxy.counts();
    println!("{counts:?}; {stats:?}");
    assert!(counts.faults() > 20, "{counts:?}");
    assert!(stats.retried > 20 && stats.exhausted == 0, "{stats:?}");
}

#[tokio::test]
async fn multipart_round_trip() {
    let Some(server) = server("multipart_round_trip") else {
        return;
    };
    let opts = S3Options {
        max_concurrency: 3,
        multipart_threshold: 8 << 20,
        ..options(&server)
    };
    let prefix = unique_prefix("multipart");
    let store = S3Store::from_url(&format!("s3://{}/{prefix}", server.bucket), opts).unwrap();
    // 20 MiB + 1: three 8 MiB parts, the last one short and odd-sized.
    let big = random_bytes(7, (20 << 20) + 1);
    let k = key("fragments/bi/gg/big");
    assert_eq!(
        store.put(&k, big.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.head(&k).await.unwrap().unwrap().size,
        big.len() as u64
    );
    assert!(
        store.get(&k).await.unwrap() == big,
        "multipart object differs"
    );
    // The HEAD before a multipart upload makes it create-only for sequential writers.
    assert_eq!(
        store.put(&k, random_bytes(8, big.len())).await.unwrap(),
        PutOutcome::AlreadyExists
    );
    assert!(store.get(&k).await.unwrap() == big);
    store.delete(&k).await.unwrap();
}

#[tokio::test]
async fn prefixes_isolate_stores_in_one_bucket() {
    let Some(server) = server("prefixes_isolate_stores_in_one_bucket") else {
        return;
    };
    let base = unique_prefix("isolation");
    let one = store_at(&server, &format!("{base}/lib"));
    // A sibling whose prefix extends the first one's as a string.
    let two = store_at(&server, &format!("{base}/lib2"));
    let k = key("manifests/shared-name");
    let (bytes_one, bytes_two) = (random_bytes(1, 64), random_bytes(2, 64));
    assert_eq!(
        one.put(&k, bytes_one.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        two.put(&k, bytes_two.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(one.get(&k).await.unwrap(), bytes_one);
    assert_eq!(two.get(&k).await.unwrap(), bytes_two);
    assert_eq!(sorted_keys(&one.list("").await.unwrap()), [k.to_string()]);
    assert_eq!(sorted_keys(&two.list("").await.unwrap()), [k.to_string()]);

    // Its own key prefix only: "lib" must not see "lib2" objects.
    two.put(&key("fragments/aa/bb/only-two"), random_bytes(3, 8))
        .await
        .unwrap();
    assert_eq!(one.list("").await.unwrap().len(), 1);
    assert_eq!(
        one.head(&key("fragments/aa/bb/only-two")).await.unwrap(),
        None
    );

    one.delete(&k).await.unwrap();
    assert_eq!(one.head(&k).await.unwrap(), None);
    assert_eq!(two.get(&k).await.unwrap(), bytes_two);
    for meta in two.list("").await.unwrap() {
        two.delete(&meta.key).await.unwrap();
    }
}

#[tokio::test]
async fn errors_name_bucket_key_and_operation() {
    let Some(server) = server("errors_name_bucket_key_and_operation") else {
        return;
    };
    let bucket = "haagenti-no-such-bucket";
    let store = S3Store::from_url(&format!("s3://{bucket}/lib"), options(&server)).unwrap();
    let k = key("manifests/m");
    let url = format!("s3://{bucket}/lib/manifests/m");

    let check = |err: FragmentError, op: &str| {
        assert!(
            !err.is_not_found(),
            "{op}: a missing bucket is not a missing object: {err}"
        );
        match &err {
            FragmentError::Backend {
                backend,
                op: err_op,
                key,
                reason,
                ..
            } => {
                assert_eq!((*backend, *err_op), ("s3", op));
                assert!(key.starts_with(&format!("s3://{bucket}/lib")), "{key}");
                assert!(reason.contains("does not exist"), "{op}: {reason}");
                // One line, no response document; the object_store error is the source.
                assert!(
                    !reason.contains('<') && !reason.contains('\n'),
                    "{op}: {reason}"
                );
                assert!(std::error::Error::source(&err).is_some(), "{op}: no source");
            }
            other => panic!("{op}: expected a backend error, got {other:?}"),
        }
        err.to_string()
    };
    let shown = check(
        store.put(&k, Bytes::from_static(b"x")).await.unwrap_err(),
        "put",
    );
    assert!(shown.contains(&url) && shown.contains("put"), "{shown}");
    let shown = check(store.get(&k).await.unwrap_err(), "get");
    assert!(shown.contains(&url), "{shown}");
    check(store.list("").await.unwrap_err(), "list");
    check(store.get_range(&k, 0..1).await.unwrap_err(), "get");
    check(store.delete(&k).await.unwrap_err(), "delete");
    check(store.check().await.unwrap_err(), "check");
}
