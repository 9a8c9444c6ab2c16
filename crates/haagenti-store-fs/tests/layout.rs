#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report
//! Where fragments live on disk: one shard level (`fragments-flat/<aa>/<64 hex>`), and
//! libraries written before that (`fragments/<aa>/<bb>/<64 hex>`) still work.

use std::path::Path;

use bytes::Bytes;
use haagenti_core::{FragmentError, FragmentId, FragmentStore, ObjectKey, PutOutcome};
use haagenti_store_fs::FsStore;

fn fragment_key(seed: u8) -> (FragmentId, ObjectKey) {
    let id = FragmentId::of(&[seed; 7]);
    (id, ObjectKey::fragment(&id))
}

/// Every file under `dir`, relative and `/`-separated, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_str().unwrap();
                out.push(rel.replace(std::path::MAIN_SEPARATOR, "/"));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn fragments_are_written_one_shard_level_deep() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let (id, key) = fragment_key(1);
    let hex = id.to_hex();
    assert_eq!(
        key.as_str(),
        format!("fragments/{}/{}/{hex}", &hex[..2], &hex[2..4])
    );
    store.put(&key, Bytes::from_static(b"one")).await.unwrap();
    let flat = format!("fragments-flat/{}/{hex}", &hex[..2]);
    assert_eq!(files(dir.path()), std::slice::from_ref(&flat));
    assert!(!dir.path().join("fragments").exists());
    assert_eq!(store.object_path(&key).unwrap(), dir.path().join(&flat));
    // Listed under its key, whatever the prefix that reaches it.
    let prefix = format!("fragments/{}/", &hex[..2]);
    for p in ["", "fragments", "fragments/", prefix.as_str()] {
        let listed: Vec<_> = store
            .list(p)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(listed, std::slice::from_ref(&key), "prefix {p:?}");
    }
    assert!(store.list("manifests/").await.unwrap().is_empty());
    assert_eq!(store.get(&key).await.unwrap(), &b"one"[..]);
    store.delete(&key).await.unwrap();
    assert!(store.head(&key).await.unwrap().is_none());
}

#[tokio::test]
async fn fragments_of_a_library_from_before_the_flat_layout_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let (_, old) = fragment_key(2);
    let (_, both) = fragment_key(3);
    // As a store before the flat layout wrote them: at the key's own path.
    for (key, body) in [(&old, "old"), (&both, "legacy copy")] {
        let path = dir.path().join(key.as_str());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
    }
    // A put finds it there and writes nothing.
    let outcome = store.put(&old, Bytes::from_static(b"new")).await.unwrap();
    assert_eq!(outcome, PutOutcome::AlreadyExists);
    assert_eq!(store.get(&old).await.unwrap(), &b"old"[..]);
    assert_eq!(store.get_range(&old, 1..3).await.unwrap(), &b"ld"[..]);
    assert_eq!(store.head(&old).await.unwrap().unwrap().size, 3);
    assert_eq!(
        store.object_path(&old).unwrap(),
        dir.path().join(old.as_str())
    );
    // `replace` (repair) rewrites it where it is.
    store
        .replace(&old, Bytes::from_static(b"OLD"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join(old.as_str())).unwrap(),
        b"OLD"
    );

    // Stored both ways: read and listed once, as the flat copy.
    let flat = dir.path().join("fragments-flat");
    let both_flat = store.object_path(&both).unwrap();
    assert!(!both_flat.starts_with(&flat), "{}", both_flat.display());
    let hex = both.fragment_id().unwrap().to_hex();
    let both_flat = flat.join(&hex[..2]).join(&hex);
    std::fs::create_dir_all(both_flat.parent().unwrap()).unwrap();
    std::fs::write(&both_flat, "flat copy").unwrap();
    assert_eq!(store.get(&both).await.unwrap(), &b"flat copy"[..]);
    let mut listed = store.list("fragments/").await.unwrap();
    listed.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    let mut want = vec![(old.clone(), 3), (both.clone(), 9)];
    want.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let got: Vec<_> = listed.into_iter().map(|m| (m.key, m.size)).collect();
    assert_eq!(got, want);

    // A delete removes every copy.
    for key in [&old, &both] {
        store.delete(key).await.unwrap();
        assert!(store.head(key).await.unwrap().is_none());
    }
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn the_flat_directory_holds_only_fragments() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let reserved = ObjectKey::new("fragments-flat/ab/x").unwrap();
    let err = store
        .put(&reserved, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, FragmentError::InvalidInput(_)), "{err}");
    assert!(store.get(&reserved).await.is_err());
    // Stray files there are no objects: not a valid id, or in the wrong shard.
    let (id, _) = fragment_key(4);
    let hex = id.to_hex();
    let wrong_shard = if hex.starts_with("00") { "01" } else { "00" };
    for stray in [
        "fragments-flat/ab/notes.txt".to_string(),
        format!("fragments-flat/{wrong_shard}/{hex}"),
        format!("fragments-flat/{hex}"),
    ] {
        let path = dir.path().join(&stray);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "stray").unwrap();
    }
    assert!(store.list("").await.unwrap().is_empty());
    assert!(store.list("fragments/").await.unwrap().is_empty());
}
