//! Removal, garbage collection and statistics. `gc` runs under a lock (`locks.rs`) that
//! keeps it from racing an ingest.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde::Serialize;

use super::FragmentLibrary;
use super::locks::LockKind;
use crate::error::{FragmentError, Result};
use crate::manifest::{ModelManifest, StoredKind};
use crate::store::{
    FRAGMENTS_PREFIX, FragmentStore, INDEX_PREFIX, MANIFESTS_PREFIX, ObjectKey, ObjectMeta,
    TMP_PREFIX,
};
use crate::types::{FragmentId, LibraryStats, validate_model_name};

/// Objects under `tmp/` are a backend's in-flight writes, and a listing cannot tell whose:
/// gc leaves them at least this long whatever the grace period, so a short grace never
/// pulls a temporary file from under another process's put.
pub(crate) const TMP_MIN_AGE: Duration = Duration::from_secs(60);

/// Options of [`FragmentLibrary::gc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcOptions {
    /// Report what would be deleted, delete nothing.
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
    /// Fragments some manifest references (directly, or as a delta base or cast source).
    pub live_fragments: u64,
    /// Unreferenced objects older than the grace period (deleted unless dry run).
    pub garbage_objects: u64,
    /// Total size of those objects.
    pub garbage_bytes: u64,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub young_objects: u64,
    /// Whether this was a dry run (nothing was deleted).
    pub dry_run: bool,
    /// Similarity index segments merged into one without the entries of deleted fragments.
    pub index_segments_merged: u64,
    /// Problems met while compacting the index (savings only, never data).
    pub warnings: Vec<String>,
}

impl FragmentLibrary {
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
    /// One that cannot be decoded fails the call with
    /// [`FragmentError::ManifestUnreadable`] naming it.
    async fn all_manifests(&self) -> Result<Vec<(ObjectKey, ModelManifest)>> {
        let keys = self.manifest_keys().await?;
        let store = self.store();
        futures::stream::iter(keys.into_iter().map(|(model, key)| async move {
            let bytes = store.get(&key).await?;
            let m = ModelManifest::decode(&bytes, key.as_str()).map_err(|e| {
                FragmentError::ManifestUnreadable {
                    model,
                    key: key.as_str().to_string(),
                    reason: match e {
                        FragmentError::CorruptObject { reason, .. } => reason,
                        other => other.to_string(),
                    },
                }
            })?;
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
    /// grace period (temporary objects: and older than a minute, see `TMP_MIN_AGE`).
    /// Refuses with [`FragmentError::ManifestUnreadable`] while any manifest cannot be
    /// decoded: the fragments it references are unknown.
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
            let grace = if meta.key.as_str().starts_with(TMP_PREFIX) {
                opts.grace.max(TMP_MIN_AGE)
            } else {
                opts.grace
            };
            if now.duration_since(meta.modified).unwrap_or_default() < grace {
                report.young_objects += 1;
                continue;
            }
            report.garbage_objects += 1;
            report.garbage_bytes += meta.size;
            if !opts.dry_run {
                self.store().delete(&meta.key).await?;
            }
        }
        if !opts.dry_run && self.index_needs_compaction(report.garbage_objects).await? {
            let remaining: HashSet<FragmentId> = self
                .store()
                .list(FRAGMENTS_PREFIX)
                .await?
                .iter()
                .filter_map(|m| m.key.fragment_id())
                .collect();
            let index = self.compact_index(&remaining).await?;
            report.index_segments_merged = index.removed_segments;
            report.warnings = index.warnings;
        }
        Ok(report)
    }

    /// Library-wide figures from the manifests alone: their tables of stored objects
    /// (format 3) give every needed fragment's size and kind, so the requests made do not
    /// grow with the number of fragments: a listing of `manifests/` and of `index/`, and
    /// the current manifests. Unreferenced objects awaiting `gc` are not counted. Models
    /// whose current manifest cannot be read are left out and listed in `damaged`.
    /// Libraries holding manifests from before format 3 fall back to a listing of the
    /// fragments and a header read per referenced fragment.
    pub async fn stats(&self) -> Result<LibraryStats> {
        // A model whose manifest cannot be read is reported, not allowed to hide the rest.
        let (latest, damaged) = self.manifests_report().await?;
        let mut stats = LibraryStats {
            models: latest.len() as u64,
            damaged,
            ..Default::default()
        };
        let mut referenced: HashMap<FragmentId, u64> = HashMap::new();
        let mut ref_bytes = 0u64;
        for m in &latest {
            stats.logical_bytes += m.logical_bytes();
            for r in m.fragments() {
                ref_bytes += u64::from(r.len);
                referenced.insert(r.id, u64::from(r.len));
            }
        }
        let unique_bytes: u64 = referenced.values().sum();
        // A substituted fragment's reference points at its substitute: that saving is
        // lossy sharing, not exact dedup.
        stats.savings.lossy_bytes = latest
            .iter()
            .flat_map(|m| m.lossy.iter().filter_map(|l| m.substituted_ref(l)))
            .map(|r| u64::from(r.len))
            .sum();
        stats.savings.exact_dedup_bytes =
            (ref_bytes - unique_bytes).saturating_sub(stats.savings.lossy_bytes);

        let tabled = latest
            .iter()
            .all(|m| !m.objects.is_empty() || m.fragments().next().is_none());
        let objects = if tabled {
            let mut objects: HashMap<FragmentId, (u64, StoredKind)> = HashMap::new();
            for o in latest.iter().flat_map(|m| &m.objects) {
                objects.insert(o.id, (o.stored_len, o.kind));
            }
            stats.fragments = objects.len() as u64;
            stats.fragment_bytes = objects.values().map(|(len, _)| len).sum();
            objects
        } else {
            let listed = self.store().list(FRAGMENTS_PREFIX).await?;
            stats.fragments = listed.len() as u64;
            stats.fragment_bytes = listed.iter().map(|m| m.size).sum();
            self.stored_from_store(&referenced, &listed).await?
        };
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
        for (id, len) in &referenced {
            let Some(&(stored, kind)) = objects.get(id) else {
                continue;
            };
            let saved = *len as i64 - stored as i64;
            match kind {
                StoredKind::Standalone => stats.savings.compression_bytes += saved,
                StoredKind::Delta => stats.savings.delta_bytes += saved,
                StoredKind::Cast => stats.savings.cast_bytes += saved.max(0) as u64,
                StoredKind::Quant => stats.savings.quant_bytes += saved.max(0) as u64,
            }
        }
        Ok(stats)
    }

    /// Size and kind of the `referenced` fragments' objects from the store: sizes from
    /// the `listed` fragments, kinds from a header read each (manifests before format 3).
    async fn stored_from_store(
        &self,
        referenced: &HashMap<FragmentId, u64>,
        listed: &[ObjectMeta],
    ) -> Result<HashMap<FragmentId, (u64, StoredKind)>> {
        let sizes: HashMap<FragmentId, u64> = listed
            .iter()
            .filter_map(|m| Some((m.key.fragment_id()?, m.size)))
            .collect();
        let sizes = &sizes;
        let headers = futures::stream::iter(referenced.keys().map(|id| async move {
            let header = match sizes.get(id) {
                Some(_) => self.fragment_header(id).await?,
                None => None,
            };
            Ok::<_, FragmentError>((*id, header))
        }))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
        let mut out = HashMap::new();
        for h in headers {
            let (id, header) = h?;
            if let (Some(&stored), Some(header)) = (sizes.get(&id), header) {
                out.insert(id, (stored, StoredKind::of(&header.encoding)));
            }
        }
        Ok(out)
    }
}
