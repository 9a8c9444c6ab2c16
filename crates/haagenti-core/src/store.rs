//! The [`FragmentStore`] trait: a create-only object store, and an in-memory implementation.
//!
//! Stores are dumb on purpose: they map validated keys to immutable byte objects. Content
//! addressing, encodings and verification live in the library, so every backend gets them
//! for free and a backend needs only five methods (the others have defaults).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{FragmentError, Result};
use crate::types::FragmentId;

/// A validated object key: `/`-separated segments of `[A-Za-z0-9._-]`, no empty, `.` or
/// `..` segment, at most 512 bytes. Safe to use as a relative file path or an S3 key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Longest key accepted, in bytes.
    pub const MAX_LEN: usize = 512;

    /// Validates `key`; an [`InvalidInput`](FragmentError::InvalidInput) error names the
    /// rule it breaks.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        let bad =
            |why: &str| FragmentError::InvalidInput(format!("invalid object key {key:?}: {why}"));
        if key.is_empty() || key.len() > Self::MAX_LEN {
            return Err(bad("length must be 1 to 512 bytes"));
        }
        for seg in key.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(bad("empty, '.' or '..' segment"));
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(bad("segments may hold only A-Z a-z 0-9 . _ -"));
            }
        }
        Ok(Self(key))
    }

    /// Key of a fragment object, sharded by the first two bytes of the id so that no
    /// directory (or S3 prefix) grows past a few thousand entries.
    pub fn fragment(id: &FragmentId) -> Self {
        let hex = id.to_hex();
        Self(format!(
            "{FRAGMENTS_PREFIX}{}/{}/{hex}",
            &hex[..2],
            &hex[2..4]
        ))
    }

    /// The fragment id a fragment key names, if it is one.
    pub fn fragment_id(&self) -> Option<FragmentId> {
        let rest = self.0.strip_prefix(FRAGMENTS_PREFIX)?;
        let hex = rest.rsplit('/').next()?;
        let id: FragmentId = hex.parse().ok()?;
        (Self::fragment(&id) == *self).then_some(id)
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Key prefix of fragment objects (see [`ObjectKey::fragment`]).
pub const FRAGMENTS_PREFIX: &str = "fragments/";
/// Key prefix of model manifests: `manifests/<name>/<generation>`, one object per
/// generation, generations 20 digits long.
pub const MANIFESTS_PREFIX: &str = "manifests/";
/// Key prefix of the similarity index's segments.
pub const INDEX_PREFIX: &str = "index/";
/// Key prefix of the locks that keep `gc` and ingest from racing.
pub const LOCKS_PREFIX: &str = "locks/";
/// Backends keep in-flight temporary objects here (gc sweeps old ones).
pub const TMP_PREFIX: &str = "tmp/";

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({})", self.0)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a listing or `head` knows about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: ObjectKey,
    /// Size of the object in bytes.
    pub size: u64,
    /// Last modification (creation, since objects are immutable).
    pub modified: SystemTime,
}

/// Result of a create-only put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Created,
    /// An object already had this key; nothing was written. For content-addressed keys
    /// that is success; the library checks the size.
    AlreadyExists,
}

/// Requests a store repeated after transient failures, for reports: a network store
/// under faults shows here what it rode out.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetryStats {
    /// Requests sent again, of every operation.
    pub retried: u64,
    /// Retries by cause (`"connection reset"`, `"HTTP 503"`, `"cut response"`, …).
    pub causes: std::collections::BTreeMap<String, u64>,
    /// Operations that failed after their retry budget ran out.
    pub exhausted: u64,
}

/// A create-only object store.
///
/// Required semantics (checked by the conformance suite in `haagenti-testkit`):
/// * `put` is atomic and create-only: readers see the whole object or none; a second put
///   on an existing key writes nothing and returns [`PutOutcome::AlreadyExists`].
/// * `get` of a missing key is an error for which `is_not_found()` holds.
/// * `delete` of a missing key succeeds.
/// * `list` returns every object whose key starts with `prefix`, in no particular order.
#[async_trait]
pub trait FragmentStore: Send + Sync + fmt::Debug {
    /// Writes `bytes` under `key`, atomically, unless an object already has that key.
    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome>;
    /// The whole object; a missing key is an error for which `is_not_found()` holds.
    async fn get(&self, key: &ObjectKey) -> Result<Bytes>;
    /// The object's size and time, or `None` when no object has `key`.
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>>;
    /// Every object whose key starts with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Removes the object; a missing key is not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<()>;

    /// Writes `bytes` under `key` as [`put`](Self::put) does (atomic, create-only, seen
    /// by readers at once), except that the object need survive a power cut only once a
    /// later [`flush`](Self::flush) has returned: for many objects that become reachable
    /// together, such as an ingest's fragments before the manifest naming them, so that a
    /// store can make them durable in one step. The default is `put`.
    async fn put_deferred(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        self.put(key, bytes).await
    }

    /// Makes durable every object a [`put_deferred`](Self::put_deferred) on this store
    /// reported, and every object this store reported present (another writer's may not
    /// be durable yet): call it before writing what references them. The default does
    /// nothing, for stores whose writes are durable once acknowledged.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Where the store lives, for messages (`/path/to/lib`, `s3://bucket/prefix`).
    fn location(&self) -> String {
        format!("{self:?}")
    }

    /// Overwrites the object under `key` (creating it if missing). The one write that
    /// replaces an object: only `repair` uses it, to put back verified bytes under a
    /// content-addressed key whose stored copy is damaged. The default deletes, then puts:
    /// a reader in between sees a missing object (an error), never a mix. Backends that
    /// can replace atomically (a rename, an S3 PUT) override it so readers see the old
    /// object or the new one.
    async fn replace(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        self.delete(key).await?;
        match self.put(key, bytes).await? {
            PutOutcome::Created => Ok(()),
            // Someone put it back meanwhile: content-addressed, so the same bytes.
            PutOutcome::AlreadyExists => Ok(()),
        }
    }

    /// The requests this store repeated after transient failures so far; stores that
    /// never retry (the filesystem, memory) report none.
    fn retry_stats(&self) -> RetryStats {
        RetryStats::default()
    }

    /// Whether an object has `key` (a `head`).
    async fn exists(&self, key: &ObjectKey) -> Result<bool> {
        Ok(self.head(key).await?.is_some())
    }

    /// The bytes of `range`, clipped to the object's end (so asking for more than the
    /// object holds returns what there is). Backends with ranged reads override this.
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes> {
        let all = self.get(key).await?;
        let end = usize::try_from(range.end)
            .unwrap_or(usize::MAX)
            .min(all.len());
        let start = usize::try_from(range.start).unwrap_or(usize::MAX).min(end);
        Ok(all.slice(start..end))
    }
}

#[async_trait]
impl<S: FragmentStore + ?Sized> FragmentStore for std::sync::Arc<S> {
    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        (**self).put(key, bytes).await
    }
    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        (**self).get(key).await
    }
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        (**self).head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        (**self).list(prefix).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        (**self).delete(key).await
    }
    async fn put_deferred(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        (**self).put_deferred(key, bytes).await
    }
    async fn flush(&self) -> Result<()> {
        (**self).flush().await
    }
    fn location(&self) -> String {
        (**self).location()
    }
    async fn replace(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        (**self).replace(key, bytes).await
    }
    async fn exists(&self, key: &ObjectKey) -> Result<bool> {
        (**self).exists(key).await
    }
    fn retry_stats(&self) -> RetryStats {
        (**self).retry_stats()
    }
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes> {
        (**self).get_range(key, range).await
    }
}

/// A store in process memory, for tests and ephemeral libraries.
#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<ObjectKey, (Bytes, SystemTime)>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryStore")
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectKey, (Bytes, SystemTime)>> {
        // A poisoned map is still a consistent map: every mutation is a single insert/remove.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces an object's bytes in place, bypassing create-only semantics (tests only:
    /// simulates bit rot).
    pub fn overwrite_for_test(&self, key: &ObjectKey, bytes: Bytes) {
        self.lock().insert(key.clone(), (bytes, SystemTime::now()));
    }

    /// Changes an object's modification time (tests only: simulates age for gc).
    pub fn set_modified_for_test(&self, key: &ObjectKey, modified: SystemTime) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.1 = modified;
        }
    }
}

#[async_trait]
impl FragmentStore for MemoryStore {
    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        let mut map = self.lock();
        if map.contains_key(key) {
            return Ok(PutOutcome::AlreadyExists);
        }
        map.insert(key.clone(), (bytes, SystemTime::now()));
        Ok(PutOutcome::Created)
    }

    async fn replace(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        self.lock().insert(key.clone(), (bytes, SystemTime::now()));
        Ok(())
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.lock()
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| FragmentError::NotFound {
                key: key.to_string(),
                op: "get",
            })
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        Ok(self.lock().get(key).map(|(b, t)| ObjectMeta {
            key: key.clone(),
            size: b.len() as u64,
            modified: *t,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self
            .lock()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(prefix))
            .map(|(k, (b, t))| ObjectMeta {
                key: k.clone(),
                size: b.len() as u64,
                modified: *t,
            })
            .collect())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.lock().remove(key);
        Ok(())
    }

    fn location(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        for ok in [
            "a",
            "fragments/ab/cd/ef",
            "manifests/llama-3.1/00000000000000000001",
        ] {
            ObjectKey::new(ok).unwrap();
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a b", "a\\b", "é"] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fragment_keys_round_trip() {
        let id = FragmentId::of(b"x");
        let key = ObjectKey::fragment(&id);
        assert_eq!(key.fragment_id(), Some(id));
        ObjectKey::new(key.as_str()).unwrap();
        assert_eq!(ObjectKey::new("fragments/zz").unwrap().fragment_id(), None);
    }
}
