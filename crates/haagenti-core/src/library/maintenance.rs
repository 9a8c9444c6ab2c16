//! Removal, garbage collection, statistics, and the lock objects that keep `gc` from
//! racing an ingest.
//!
//! Locks are ordinary create-only objects under `locks/`. An ingest writes an `ingest`
//! lock and then lists the locks; `gc` writes a `gc` lock and then lists. Each side writes
//! before it looks, so of two that overlap at least one sees the other: an ingest that
//! sees a `gc` lock backs off and retries, a `gc` that sees an ingest lock gives up.
//! Live locks are refreshed every [`LOCK_REFRESH`]; one older than [`LOCK_STALE`] is left
//! by a dead process and ignored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use super::FragmentLibrary;
use crate::error::{FragmentError, Result};
use crate::manifest::ModelManifest;
use crate::store::{
    FRAGMENTS_PREFIX, FragmentStore, INDEX_PREFIX, LOCKS_PREFIX, MANIFESTS_PREFIX, ObjectKey,
    TMP_PREFIX,
};
use crate::types::{Encoding, FragmentId, LibraryStats, validate_model_name};

pub(crate) const LOCK_REFRESH: Duration = Duration::from_secs(60);
pub(crate) const LOCK_STALE: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockKind {
    Ingest,
    Gc,
}

impl LockKind {
    fn as_str(self) -> &'static str {
        match self {
            LockKind::Ingest => "ingest",
            LockKind::Gc => "gc",
        }
    }
}

/// A held lock; refreshed in the background until released.
pub(crate) struct LockGuard {
    store: Arc<dyn FragmentStore>,
    current: Arc<tokio::sync::Mutex<ObjectKey>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    pub(crate) async fn release(self) {
        self.refresher.abort();
        let key = self.current.lock().await.clone();
        // A lock that cannot be deleted goes stale and is ignored after LOCK_STALE.
        let _ = self.store.delete(&key).await;
    }
}

/// Options of [`FragmentLibrary::gc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Objects younger than this are kept whatever references them.
    pub grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            grace: Duration::from_secs(3600),
        }
    }
}

/// What a garbage collection found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub live_fragments: u64,
    /// Unreferenced objects older than the grace period (deleted unless dry run).
    pub garbage_objects: u64,
    pub garbage_bytes: u64,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub young_objects: u64,
    pub dry_run: bool,
}

fn unique_lock_key(kind: LockKind) -> Result<ObjectKey> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let salt = blake3::hash(
        format!(
            "{nanos}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .as_bytes(),
    );
    ObjectKey::new(format!(
        "{LOCKS_PREFIX}{}-{nanos:020}-{}",
        kind.as_str(),
        &salt.to_hex()[..12]
    ))
}

impl FragmentLibrary {
    /// Takes a lock of `kind`, waiting (ingest) or failing (gc) while the other kind is held.
    pub(crate) async fn acquire_lock(&self, kind: LockKind) -> Result<LockGuard> {
        let store = self.store().clone();
        let mut attempts = 0u32;
        loop {
            let key = unique_lock_key(kind)?;
            store
                .put(&key, Bytes::from_static(b"haagenti lock\n"))
                .await?;
            let now = SystemTime::now();
            let blockers: Vec<ObjectKey> = store
                .list(LOCKS_PREFIX)
                .await?
                .into_iter()
                .filter(|m| m.key != key)
                .filter(|m| now.duration_since(m.modified).unwrap_or_default() < LOCK_STALE)
                .filter(|m| match kind {
                    LockKind::Ingest => m.key.as_str().starts_with("locks/gc-"),
                    LockKind::Gc => {
                        m.key.as_str().starts_with("locks/ingest-")
                            || m.key.as_str().starts_with("locks/gc-")
                    }
                })
                .map(|m| m.key)
                .collect();
            if blockers.is_empty() {
                let current = Arc::new(tokio::sync::Mutex::new(key));
                let refresher = tokio::spawn(refresh_lock(store.clone(), current.clone(), kind));
                return Ok(LockGuard {
                    store,
                    current,
                    refresher,
                });
            }
            store.delete(&key).await?;
            attempts += 1;
            if kind == LockKind::Gc || attempts >= 600 {
                return Err(FragmentError::Backend {
                    backend: "library",
                    op: if kind == LockKind::Gc { "gc" } else { "ingest" },
                    key: blockers[0].to_string(),
                    reason:
                        "another process holds a conflicting lock; try again when it has finished"
                            .into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deletes a model's manifests. Its fragments stay until `gc` finds them unreferenced.
    pub async fn remove(&self, name: &str) -> Result<()> {
        validate_model_name(name)?;
        let keys = self.manifest_generations(name).await?;
        if keys.is_empty() {
            return Err(FragmentError::ModelNotFound(name.to_string()));
        }
        for key in keys {
            self.store().delete(&key).await?;
        }
        Ok(())
    }

    /// Every manifest object in the store, decoded (all generations: each keeps its
    /// fragments alive until it is deleted).
    async fn all_manifests(&self) -> Result<Vec<(ObjectKey, ModelManifest)>> {
        let keys = self.manifest_keys().await?;
        let store = self.store();
        futures::stream::iter(keys.into_iter().map(|(_, key)| async move {
            let bytes = store.get(&key).await?;
            let m = ModelManifest::decode(&bytes, key.as_str())?;
            Ok::<_, FragmentError>((key, m))
        }))
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
    }

    /// Mark and sweep: deletes fragment and temporary objects that no manifest references
    /// (delta bases and cast sources count as referenced) and that are older than the
    /// grace period.
    pub async fn gc(&self, opts: GcOptions) -> Result<GcReport> {
        let lock = self.acquire_lock(LockKind::Gc).await?;
        let result = self.gc_locked(opts).await;
        lock.release().await;
        result
    }

    async fn gc_locked(&self, opts: GcOptions) -> Result<GcReport> {
        let mut live: HashSet<FragmentId> = HashSet::new();
        for (_, m) in self.all_manifests().await? {
            for r in m.fragments() {
                live.insert(r.id);
                live.extend(r.depends_on);
            }
        }
        let mut report = GcReport {
            live_fragments: live.len() as u64,
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let now = SystemTime::now();
        let mut candidates = self.store().list(FRAGMENTS_PREFIX).await?;
        candidates.extend(self.store().list(TMP_PREFIX).await?);
        for meta in candidates {
            if meta.key.fragment_id().is_some_and(|id| live.contains(&id)) {
                continue;
            }
            if now.duration_since(meta.modified).unwrap_or_default() < opts.grace {
                report.young_objects += 1;
                continue;
            }
            report.garbage_objects += 1;
            report.garbage_bytes += meta.size;
            if !opts.dry_run {
                self.store().delete(&meta.key).await?;
            }
        }
        Ok(report)
    }

    /// Library-wide figures from the manifests, a listing of the store and the headers of
    /// the referenced fragments.
    pub async fn stats(&self) -> Result<LibraryStats> {
        let manifests = self.all_manifests().await?;
        let mut latest: HashMap<&str, &ModelManifest> = HashMap::new();
        for (_, m) in &manifests {
            latest.insert(m.name.as_str(), m); // keys are sorted: the last generation wins
        }
        let mut stats = LibraryStats {
            models: latest.len() as u64,
            ..Default::default()
        };
        let mut referenced: HashMap<FragmentId, u64> = HashMap::new();
        let mut ref_bytes = 0u64;
        for m in latest.values() {
            stats.logical_bytes += m.logical_bytes();
            for r in m.fragments() {
                ref_bytes += u64::from(r.len);
                referenced.insert(r.id, u64::from(r.len));
            }
        }
        let unique_bytes: u64 = referenced.values().sum();
        stats.savings.exact_dedup_bytes = ref_bytes - unique_bytes;

        let fragments = self.store().list(FRAGMENTS_PREFIX).await?;
        stats.fragments = fragments.len() as u64;
        stats.fragment_bytes = fragments.iter().map(|m| m.size).sum();
        stats.manifest_bytes = self
            .store()
            .list(MANIFESTS_PREFIX)
            .await?
            .iter()
            .map(|m| m.size)
            .sum();
        stats.index_bytes = self
            .store()
            .list(INDEX_PREFIX)
            .await?
            .iter()
            .map(|m| m.size)
            .sum();
        stats.stored_bytes = stats.fragment_bytes + stats.manifest_bytes + stats.index_bytes;

        // Attribute each referenced fragment's saving to how it is stored.
        let sizes: HashMap<FragmentId, u64> = fragments
            .iter()
            .filter_map(|m| Some((m.key.fragment_id()?, m.size)))
            .collect();
        let sizes = &sizes;
        let headers = futures::stream::iter(referenced.iter().map(|(id, len)| async move {
            Ok::<_, FragmentError>((
                *len,
                sizes.get(id).copied(),
                self.fragment_header(id).await?,
            ))
        }))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
        for h in headers {
            let (len, stored, header) = h?;
            let (Some(stored), Some(header)) = (stored, header) else {
                continue;
            };
            let saved = len as i64 - stored as i64;
            match header.encoding {
                Encoding::Standalone { .. } => stats.savings.compression_bytes += saved,
                Encoding::Delta { .. } => stats.savings.delta_bytes += saved,
                Encoding::Cast { .. } => stats.savings.cast_bytes += saved.max(0) as u64,
            }
        }
        Ok(stats)
    }
}

/// Keeps a lock fresh: writes a new lock object, then deletes the previous one.
async fn refresh_lock(
    store: Arc<dyn FragmentStore>,
    current: Arc<tokio::sync::Mutex<ObjectKey>>,
    kind: LockKind,
) {
    loop {
        tokio::time::sleep(LOCK_REFRESH).await;
        let Ok(next) = unique_lock_key(kind) else {
            continue;
        };
        if store
            .put(&next, Bytes::from_static(b"haagenti lock\n"))
            .await
            .is_ok()
        {
            let old = std::mem::replace(&mut *current.lock().await, next);
            let _ = store.delete(&old).await;
        }
    }
}
