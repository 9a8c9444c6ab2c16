//! The store conformance suite: every [`FragmentStore`] backend runs [`check_store`].

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::synth::Rng;
use haagenti_core::FragmentLibrary;
use haagenti_core::LibraryConfig;
use haagenti_core::codec::CodecRegistry;
use haagenti_core::store::{FragmentStore, ObjectKey, PutOutcome};

/// Lets the suite damage a stored object behind the store's back, as bit rot or a
/// hostile writer would.
#[async_trait]
pub trait Tamper: Send + Sync {
    /// Replaces the object at `key` with `bytes`, bypassing create-only semantics.
    async fn overwrite(&self, key: &ObjectKey, bytes: Bytes);
}

#[async_trait]
impl Tamper for haagenti_core::MemoryStore {
    async fn overwrite(&self, key: &ObjectKey, bytes: Bytes) {
        self.overwrite_for_test(key, bytes);
    }
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).expect("valid test key")
}

/// Runs every check against an empty store. Panics (with a message) on the first failure.
pub async fn check_store(store: Arc<dyn FragmentStore>, tamper: &dyn Tamper) {
    round_trip(&*store).await;
    create_only(&*store).await;
    deferred(&*store).await;
    replace(store.clone()).await;
    missing_objects(&*store).await;
    ranges(&*store).await;
    listing(&*store).await;
    concurrent_create(store.clone()).await;
    large_object(&*store).await;
    corrupt_objects_are_detected(store, tamper).await;
}

async fn round_trip(store: &dyn FragmentStore) {
    let k = key("index/conformance/round-trip");
    let data = Bytes::from_static(b"hello, fragments");
    assert_eq!(
        store.put(&k, data.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(store.get(&k).await.unwrap(), data);
    let meta = store
        .head(&k)
        .await
        .unwrap()
        .expect("head of a stored object");
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.key, k);
    assert!(store.exists(&k).await.unwrap());
    let empty = key("index/conformance/empty");
    assert_eq!(
        store.put(&empty, Bytes::new()).await.unwrap(),
        PutOutcome::Created
    );
    assert!(store.get(&empty).await.unwrap().is_empty());
    store.delete(&k).await.unwrap();
    store.delete(&empty).await.unwrap();
    assert!(!store.exists(&k).await.unwrap());
}

async fn create_only(store: &dyn FragmentStore) {
    let k = key("index/conformance/create-only");
    assert_eq!(
        store.put(&k, Bytes::from_static(b"first")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store
            .put(&k, Bytes::from_static(b"second, longer"))
            .await
            .unwrap(),
        PutOutcome::AlreadyExists,
        "a second put on a key must not overwrite it"
    );
    assert_eq!(store.get(&k).await.unwrap(), Bytes::from_static(b"first"));
    store.delete(&k).await.unwrap();
    assert_eq!(
        store.put(&k, Bytes::from_static(b"third")).await.unwrap(),
        PutOutcome::Created
    );
    store.delete(&k).await.unwrap();
}

/// `put_deferred` is a create-only put that readers see at once (in a new directory on
/// a filesystem); `flush`, which makes it durable, succeeds, with nothing pending too.
async fn deferred(store: &dyn FragmentStore) {
    let k = key("fragments/co/nf/deferred");
    let first = Bytes::from_static(b"first");
    assert_eq!(
        store.put_deferred(&k, first.clone()).await.unwrap(),
        PutOutcome::Created
    );
    for again in [
        store.put_deferred(&k, Bytes::from_static(b"second")).await,
        store.put(&k, Bytes::from_static(b"third")).await,
    ] {
        assert_eq!(again.unwrap(), PutOutcome::AlreadyExists);
    }
    assert_eq!(store.get(&k).await.unwrap(), first);
    store.flush().await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), first);
    store.delete(&k).await.unwrap();
}

/// `replace` overwrites (and creates); readers racing it see the old object or the new
/// one, whole (never a mix or a truncation), or at most a missing object from the
/// delete-then-put default.
async fn replace(store: Arc<dyn FragmentStore>) {
    let k = key("index/conformance/replace");
    store
        .replace(&k, Bytes::from_static(b"created by replace"))
        .await
        .unwrap();
    assert_eq!(
        store.get(&k).await.unwrap(),
        Bytes::from_static(b"created by replace")
    );
    let old = Bytes::from(vec![b'o'; 64 << 10]);
    let new = Bytes::from(vec![b'n'; 96 << 10]);
    store.replace(&k, old.clone()).await.unwrap();
    let reader = {
        let (store, k, old, new) = (store.clone(), k.clone(), old.clone(), new.clone());
        tokio::spawn(async move {
            for _ in 0..200 {
                match store.get(&k).await {
                    Ok(b) => assert!(b == old || b == new, "a reader saw a mix"),
                    Err(e) => assert!(e.is_not_found(), "{e}"),
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for i in 0..20 {
        let bytes = if i % 2 == 0 { new.clone() } else { old.clone() };
        store.replace(&k, bytes).await.unwrap();
    }
    reader.await.unwrap();
    store.replace(&k, new.clone()).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), new);
    store.delete(&k).await.unwrap();
}

async fn missing_objects(store: &dyn FragmentStore) {
    let k = key("index/conformance/never-written");
    let err = store.get(&k).await.expect_err("get of a missing key");
    assert!(
        err.is_not_found(),
        "missing get must be NotFound, got {err}"
    );
    assert!(
        err.to_string().contains("never-written"),
        "error must name the key: {err}"
    );
    assert!(store.head(&k).await.unwrap().is_none());
    store
        .delete(&k)
        .await
        .expect("deleting a missing key succeeds");
    assert!(
        store
            .get_range(&k, 0..4)
            .await
            .expect_err("range of missing")
            .is_not_found()
    );
}

async fn ranges(store: &dyn FragmentStore) {
    let k = key("index/conformance/ranges");
    store
        .put(&k, Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert_eq!(&store.get_range(&k, 2..5).await.unwrap()[..], b"234");
    assert_eq!(&store.get_range(&k, 8..100).await.unwrap()[..], b"89");
    assert!(store.get_range(&k, 20..30).await.unwrap().is_empty());
    store.delete(&k).await.unwrap();
}

async fn listing(store: &dyn FragmentStore) {
    let keys = [
        "manifests/a/1",
        "manifests/a/2",
        "manifests/ab/1",
        "locks/x",
    ];
    for k in keys {
        store
            .put(&key(k), Bytes::from(k.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    let names = |prefix: &'static str| async move {
        let mut v: Vec<String> = store
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names("manifests/a/").await,
        ["manifests/a/1", "manifests/a/2"]
    );
    assert_eq!(
        names("manifests/a").await,
        ["manifests/a/1", "manifests/a/2", "manifests/ab/1"]
    );
    assert_eq!(names("locks/").await, ["locks/x"]);
    assert!(names("fragments/").await.is_empty());
    let sized = store.list("manifests/ab/").await.unwrap();
    assert_eq!(sized[0].size, "manifests/ab/1".len() as u64);
    for k in keys {
        store.delete(&key(k)).await.unwrap();
    }
    assert!(names("manifests/").await.is_empty());
}

async fn concurrent_create(store: Arc<dyn FragmentStore>) {
    let k = key("index/conformance/race");
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            let k = k.clone();
            tokio::spawn(async move { store.put(&k, Bytes::from(vec![i; 1000])).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap() == PutOutcome::Created {
            created += 1;
        }
    }
    assert_eq!(created, 1, "exactly one concurrent create-only put wins");
    let got = store.get(&k).await.unwrap();
    assert!(
        got.len() == 1000 && got.iter().all(|&b| b == got[0]),
        "the object is one writer's, whole"
    );
    store.delete(&k).await.unwrap();
}

async fn large_object(store: &dyn FragmentStore) {
    let k = key("index/conformance/large");
    let mut data = vec![0u8; 9 << 20];
    Rng::new(1).fill_bytes(&mut data);
    let data = Bytes::from(data);
    assert_eq!(
        store.put(&k, data.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(store.get(&k).await.unwrap(), data);
    assert_eq!(
        store.head(&k).await.unwrap().unwrap().size,
        data.len() as u64
    );
    store.delete(&k).await.unwrap();
}

async fn corrupt_objects_are_detected(store: Arc<dyn FragmentStore>, tamper: &dyn Tamper) {
    // No cache: every read below must reach the (tampered) stored object.
    let lib = FragmentLibrary::new(
        store.clone(),
        CodecRegistry::default(),
        LibraryConfig::default(),
    )
    .unwrap()
    .with_cache_bytes(0);
    let mut data = vec![0u8; 4096];
    Rng::new(2).fill_bytes(&mut data);
    let put = lib
        .put_fragment(Bytes::from(data.clone()), None)
        .await
        .unwrap();
    assert!(put.created);
    assert_eq!(lib.get_fragment(&put.id).await.unwrap().data, data);
    let k = ObjectKey::fragment(&put.id);
    let good = store.get(&k).await.unwrap();

    let mut flipped = good.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    tamper.overwrite(&k, Bytes::from(flipped)).await;
    let err = lib
        .get_fragment(&put.id)
        .await
        .expect_err("a flipped payload byte must be detected");
    assert!(
        err.is_corruption(),
        "expected a corruption error, got {err}"
    );
    assert!(
        err.to_string().contains(&put.id.to_hex()),
        "error must name the fragment: {err}"
    );

    tamper.overwrite(&k, good.slice(..good.len() / 2)).await;
    assert!(
        lib.get_fragment(&put.id)
            .await
            .expect_err("truncated")
            .is_corruption()
    );

    tamper
        .overwrite(&k, Bytes::from_static(b"not a fragment at all"))
        .await;
    assert!(
        lib.get_fragment(&put.id)
            .await
            .expect_err("garbage")
            .is_corruption()
    );
    store.delete(&k).await.unwrap();
}
