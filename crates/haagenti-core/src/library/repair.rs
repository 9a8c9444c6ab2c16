//! `repair`: find every damaged fragment object the models use, say what depends on it,
//! and put back verified bytes read from the source files.
//!
//! Finding: every fragment an intact manifest references (and its delta base or cast
//! source) is read from the store and verified, bypassing the cache. An object is damaged
//! when reading *it* fails verification or it is missing; a fragment whose only fault is
//! a damaged dependency is listed as that object's dependant, not as damage of its own.
//!
//! Healing: a source file whose size and whole-file BLAKE3 equal a stored file's is that
//! file, so the manifest's layout gives every fragment's byte range in it. Those bytes are
//! hashed again (they must hash to the fragment id), encoded as a standalone object,
//! decoded and verified, and only then written with [`FragmentStore::replace`] after the
//! stored copy was read once more and still fails: the one path that overwrites an
//! object. A standalone replacement has depth 0, so fragments built on it (depth 1) stay
//! valid, and nothing built on a healed fragment needs re-encoding.
//!
//! A damaged manifest is healed first, by ingesting its model again (`replace`) from the
//! source that is that model ([`SourceMatch`]: the files the damaged bytes still list,
//! or, when nothing of them decodes, the source's name); the new generation's fragments
//! are then checked with the others.
//!
//! [`FragmentStore::replace`]: crate::FragmentStore::replace

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use serde::Serialize;

use super::FragmentLibrary;
use super::join_error;
use super::locks::{LOCK_STALE, is_lock_object};
use super::objects::{decode_verified, standalone_object};
use super::reader::FileLayout;
use super::similarity::SimilarityState;
use crate::codec::EncodeHint;
use crate::error::{FragmentError, Result};
use crate::manifest::ModelManifest;
use crate::object;
use crate::store::{LOCKS_PREFIX, ObjectKey, ObjectMeta, PutOutcome, TMP_PREFIX};
use crate::types::{DamagedManifest, FragmentId};

/// Where damage found by `repair` is recorded, one empty-bodied marker per
/// damaged fragment (`damage/<64 hex>`), so that an ingest that meets the fragment heals
/// it instead of deduplicating against it. Advisory: losing a marker costs a heal, never
/// data.
const DAMAGE_PREFIX: &str = "damage/";
/// A marker's body: magic and format version, then the error text (for people).
const DAMAGE_MAGIC: &[u8; 4] = b"HGDM";
const DAMAGE_FORMAT_VERSION: u8 = 1;

fn damage_key(id: &FragmentId) -> Result<ObjectKey> {
    ObjectKey::new(format!("{DAMAGE_PREFIX}{}", id.to_hex()))
}

/// Options of [`FragmentLibrary::repair`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RepairOptions {
    /// Files or directories (walked recursively) holding the models' original files.
    /// Empty: only find and report the damage.
    pub sources: Vec<PathBuf>,
    /// Only check these models (every model when empty).
    pub models: Vec<String>,
    /// Find and match, but write nothing.
    pub dry_run: bool,
    /// Temporary objects younger than this are left (a write may still be using them);
    /// `None`: one hour, as `gc`.
    pub grace: Option<std::time::Duration>,
}

impl RepairOptions {
    /// Heal from these files or directories.
    pub fn sources(mut self, sources: Vec<PathBuf>) -> Self {
        self.sources = sources;
        self
    }

    /// Only check these models.
    pub fn models(mut self, models: Vec<String>) -> Self {
        self.models = models;
        self
    }

    /// Write nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Leave temporary objects younger than `grace` (default one hour; never less than a
    /// minute, as gc), and damaged locks younger than `grace` or than a live lock can be,
    /// whichever is shorter.
    pub fn grace(mut self, grace: std::time::Duration) -> Self {
        self.grace = Some(grace);
        self
    }
}

/// Where a fragment's bytes appear: a model's file, and the tensor (safetensors files).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FragmentUse {
    /// The model.
    pub model: String,
    /// The file, relative to the model.
    pub file: String,
    /// The tensor, for a fragment of a safetensors tensor.
    pub tensor: Option<String>,
}

/// What became of one damaged object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageStatus {
    /// Verified bytes were written in its place.
    Healed,
    /// A source holds its bytes; not written (`dry_run`).
    Healable,
    /// No source given holds its bytes.
    Unhealed,
}

/// One damaged fragment object and what depends on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedFragment {
    /// The fragment (hex in JSON).
    #[serde(serialize_with = "hex")]
    pub id: FragmentId,
    /// Its object's key.
    pub key: String,
    /// What reading it found.
    pub error: String,
    /// Where its bytes appear directly: every model, file and tensor that cannot be read
    /// while it is damaged (with those of its dependants).
    pub used_by: Vec<FragmentUse>,
    /// Fragments stored as deltas or casts of it, unreadable while it is damaged (hex in
    /// JSON).
    #[serde(serialize_with = "hex_list")]
    pub dependants: Vec<FragmentId>,
    /// Models whose files hold its bytes: their source files can heal it.
    pub healable_from: Vec<String>,
    /// The outcome.
    pub status: DamageStatus,
    /// The source file that healed it (or could, in a dry run).
    pub source: Option<PathBuf>,
}

/// How a source was taken to be a damaged manifest's model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceMatch {
    /// The damaged manifest still decodes without its checksum, and the source holds
    /// every file it lists with the same size and BLAKE3.
    FileHashes,
    /// Nothing of the manifest decodes: the source is named after the model, as
    /// `ingest --each` names models (a directory `NAME`, or `NAME.safetensors` /
    /// `NAME.gguf`).
    Name,
}

/// A damaged manifest and the source its model is ingested again from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RebuiltManifest {
    /// The model.
    pub model: String,
    /// The damaged manifest's key.
    pub key: String,
    /// The model directory or file ingested.
    pub source: PathBuf,
    /// Why that source is this model.
    pub matched_by: SourceMatch,
    /// `Healed`: ingested (a new generation replaced the damaged one); `Healable`: dry
    /// run; `Unhealed`: the ingest failed (`error`).
    pub status: DamageStatus,
    /// Why the ingest failed.
    pub error: Option<String>,
}

/// What [`FragmentLibrary::repair`] found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    /// Models checked.
    pub models: u64,
    /// Distinct fragments read and verified.
    pub fragments_checked: u64,
    /// Every damaged fragment object, once.
    pub damaged: Vec<DamagedFragment>,
    /// Manifests that cannot be read (after any rebuild): their fragments are unknown,
    /// so not checked.
    pub damaged_manifests: Vec<DamagedManifest>,
    /// Damaged manifests a source was found for: rebuilt by ingesting the model again
    /// from it (found only, in a dry run).
    pub rebuilt_manifests: Vec<RebuiltManifest>,
    /// Source files read (hashed in full).
    pub source_files_read: u64,
    /// Source files that are byte-identical to a stored file.
    pub source_files_matched: u64,
    /// Objects written.
    pub healed: u64,
    /// Damaged objects left as they are.
    pub unhealed: u64,
    /// Nothing was written.
    pub dry_run: bool,
    /// Similarity index segments that do not load (full scans only); the index is
    /// rebuilt from the fragments when there are any (`index_rebuilt`).
    pub damaged_segments: Vec<String>,
    /// Whether the similarity index was rebuilt.
    pub index_rebuilt: bool,
    /// Lock objects that are not locks (unreadable) and older than a live lock can be
    /// (or than a shorter grace period): removed (found, in a dry run).
    pub damaged_locks: Vec<String>,
    /// Temporary objects older than the grace period (and than a minute): removed (found,
    /// in a dry run).
    pub stale_temporaries: Vec<String>,
}

impl RepairReport {
    /// Whether anything is still damaged (objects or manifests) after the repair.
    pub fn still_damaged(&self) -> bool {
        self.unhealed > 0
            || !self.damaged_manifests.is_empty()
            || (!self.damaged_segments.is_empty() && !self.index_rebuilt)
            || self
                .damaged
                .iter()
                .any(|d| d.status != DamageStatus::Healed)
    }
}

fn hex<S: serde::Serializer>(id: &FragmentId, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

fn hex_list<S: serde::Serializer>(
    ids: &[FragmentId],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(FragmentId::to_hex))
}

/// A stored file that holds a fragment, and the model it belongs to.
#[derive(Clone, Debug)]
struct Placement {
    model: String,
    layout: Arc<FileLayout>,
}

impl FragmentLibrary {
    /// Finds every damaged fragment object of the (selected) models, reports what
    /// depends on each, and heals those whose bytes the `sources` hold. See the module
    /// documentation of `library/repair.rs` and `docs/guarantees.md`.
    pub async fn repair(&self, opts: RepairOptions) -> Result<RepairReport> {
        let (mut manifests, mut damaged_manifests) = self.manifests_report().await?;
        for name in &opts.models {
            if !manifests.iter().any(|m| &m.name == name)
                && !damaged_manifests.iter().any(|d| &d.model == name)
            {
                return Err(FragmentError::ModelNotFound(name.clone()));
            }
        }
        let selected =
            |model: &str| opts.models.is_empty() || opts.models.iter().any(|m| m == model);
        damaged_manifests.retain(|d| selected(&d.model));
        // Damaged manifests first: a rebuilt model's fragments are then checked (and
        // healed) like every other model's.
        let rebuilt_manifests = self.rebuild_manifests(&damaged_manifests, &opts).await?;
        if rebuilt_manifests
            .iter()
            .any(|r| r.status == DamageStatus::Healed)
        {
            (manifests, damaged_manifests) = self.manifests_report().await?;
            damaged_manifests.retain(|d| selected(&d.model));
        }
        manifests.retain(|m| selected(&m.name));
        let mut report = RepairReport {
            models: manifests.len() as u64,
            damaged_manifests,
            rebuilt_manifests,
            dry_run: opts.dry_run,
            ..Default::default()
        };

        // Who uses each fragment, and who is built on it.
        let mut uses: BTreeMap<FragmentId, BTreeSet<FragmentUse>> = BTreeMap::new();
        let mut dependants: BTreeMap<FragmentId, BTreeSet<FragmentId>> = BTreeMap::new();
        let mut placements: HashMap<FragmentId, Vec<Placement>> = HashMap::new();
        for m in &manifests {
            collect_uses(m, &mut uses, &mut dependants, &mut placements);
        }
        let mut all: BTreeSet<FragmentId> = uses.keys().copied().collect();
        all.extend(dependants.keys().copied());
        report.fragments_checked = all.len() as u64;

        let parallelism = self.config().parallelism.max(1) * 2;
        let checked: Vec<(FragmentId, Option<String>)> = futures::stream::iter(all)
            .map(|id| async move { self.check_object(&id).await.map(|e| (id, e)) })
            .buffer_unordered(parallelism)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        let mut damaged: BTreeMap<FragmentId, String> = checked
            .into_iter()
            .filter_map(|(id, e)| e.map(|e| (id, e)))
            .collect();

        // Heal from the sources: files identical to a stored file that holds damage.
        let mut healed_from: HashMap<FragmentId, PathBuf> = HashMap::new();
        let mut healable_from: HashMap<FragmentId, PathBuf> = HashMap::new();
        if !damaged.is_empty() && !opts.sources.is_empty() {
            let wanted = files_with_damage(&damaged, &placements);
            for path in source_files(&opts.sources)? {
                let Some(size) = std::fs::metadata(&path).ok().map(|m| m.len()) else {
                    continue;
                };
                let candidates: Vec<&Arc<FileLayout>> =
                    wanted.iter().filter(|l| l.file.size == size).collect();
                if candidates.is_empty() {
                    continue;
                }
                report.source_files_read += 1;
                let hash = hash_file(&path).await?;
                let Some(layout) = candidates.into_iter().find(|l| l.file.blake3 == hash) else {
                    continue;
                };
                report.source_files_matched += 1;
                for (id, range) in layout.fragment_ranges() {
                    if !damaged.contains_key(&id) || healed_from.contains_key(&id) {
                        continue;
                    }
                    let bytes = read_range(&path, range).await?;
                    if FragmentId::of(&bytes) != id {
                        continue; // a lossy substitution: the file holds other bytes
                    }
                    if opts.dry_run {
                        healable_from.entry(id).or_insert_with(|| path.clone());
                    } else {
                        // Written, or found reading fine meanwhile: healed either way.
                        self.heal(&id, Bytes::from(bytes)).await?;
                        healed_from.insert(id, path.clone());
                    }
                }
            }
        }

        let full_scan = opts.models.is_empty();
        for (id, error) in std::mem::take(&mut damaged) {
            let mut used_by: BTreeSet<FragmentUse> = uses.get(&id).cloned().unwrap_or_default();
            let deps: Vec<FragmentId> = dependants
                .get(&id)
                .map(|d| d.iter().copied().collect())
                .unwrap_or_default();
            for d in &deps {
                used_by.extend(uses.get(d).cloned().unwrap_or_default());
            }
            let mut models: Vec<String> = placements
                .get(&id)
                .map(|p| p.iter().map(|p| p.model.clone()).collect())
                .unwrap_or_default();
            models.sort();
            models.dedup();
            let (status, source) = if let Some(p) = healed_from.get(&id) {
                report.healed += 1;
                (DamageStatus::Healed, Some(p.clone()))
            } else if let Some(p) = healable_from.get(&id) {
                report.unhealed += 1;
                (DamageStatus::Healable, Some(p.clone()))
            } else {
                report.unhealed += 1;
                (DamageStatus::Unhealed, None)
            };
            report.damaged.push(DamagedFragment {
                key: ObjectKey::fragment(&id).as_str().to_string(),
                id,
                error,
                used_by: used_by.into_iter().collect(),
                dependants: deps,
                healable_from: models,
                status,
                source,
            });
        }
        if !opts.dry_run {
            self.record_damage(&report, full_scan).await?;
        }
        if full_scan {
            self.repair_housekeeping(&opts, &mut report).await?;
        }
        Ok(report)
    }

    /// For each damaged manifest, the first source that is its model (see
    /// [`SourceMatch`]), ingested again with `replace` (unless a dry run): the new
    /// generation supersedes the damaged one.
    async fn rebuild_manifests(
        &self,
        damaged: &[DamagedManifest],
        opts: &RepairOptions,
    ) -> Result<Vec<RebuiltManifest>> {
        let mut out = Vec::new();
        if opts.sources.is_empty() {
            return Ok(out);
        }
        for d in damaged {
            let key = ObjectKey::new(d.key.clone())?;
            let salvaged = match self.store().get(&key).await {
                Ok(bytes) => ModelManifest::salvage(&bytes, &d.key)
                    .ok()
                    .filter(|m| m.name == d.model),
                Err(e) if e.is_not_found() => continue, // removed meanwhile
                Err(e) => return Err(e),
            };
            let mut found = None;
            for candidate in model_sources(&opts.sources, &d.model) {
                match &salvaged {
                    Some(m) if !holds_files(&candidate, m).await? => {}
                    Some(_) => {
                        found = Some((candidate, SourceMatch::FileHashes));
                        break;
                    }
                    None => {
                        found = Some((candidate, SourceMatch::Name));
                        break;
                    }
                }
            }
            let Some((source, matched_by)) = found else {
                continue;
            };
            let (status, error) = if opts.dry_run {
                (DamageStatus::Healable, None)
            } else {
                let ingest = crate::IngestOptions::default().replace(true);
                match self.ingest(&d.model, &source, ingest).await {
                    Ok(_) => (DamageStatus::Healed, None),
                    Err(e) => (DamageStatus::Unhealed, Some(e.to_string())),
                }
            };
            out.push(RebuiltManifest {
                model: d.model.clone(),
                key: d.key.clone(),
                source,
                matched_by,
                status,
                error,
            });
        }
        Ok(out)
    }

    /// The objects no model depends on: index segments that do not load (the index is
    /// rebuilt from the fragments, as `reindex` does), lock objects that are not locks and
    /// are older than a live lock can be, and temporary objects older than the grace
    /// period.
    async fn repair_housekeeping(
        &self,
        opts: &RepairOptions,
        report: &mut RepairReport,
    ) -> Result<()> {
        if let Some(state) = self.similarity_state().cloned() {
            for meta in self.store().list(&state.prefix()).await? {
                let bytes = match self.store().get(&meta.key).await {
                    Ok(bytes) => bytes,
                    Err(e) if e.is_not_found() => continue, // merged meanwhile
                    Err(e) => return Err(e),
                };
                // A throwaway index: checking a segment must not change the live one.
                let probe = SimilarityState::new(state.similarity.clone());
                let loads = self
                    .on_cpu(move || probe.index().load_segment(&bytes).is_ok())
                    .await?;
                if !loads {
                    report.damaged_segments.push(meta.key.as_str().to_string());
                }
            }
            if !report.damaged_segments.is_empty() && !opts.dry_run {
                self.rebuild_index().await?;
                report.index_rebuilt = true;
            }
        }
        let now = std::time::SystemTime::now();
        let age = |m: &ObjectMeta| now.duration_since(m.modified).unwrap_or_default();
        let grace = opts.grace.unwrap_or(std::time::Duration::from_secs(3600));
        // A live lock is rewritten whole within LOCK_REFRESH, so an unreadable one older
        // than LOCK_STALE is left by a dead writer; a shorter grace (asked for) wins, and
        // only then can a lock in a newer haagenti's format be taken for damage.
        let lock_grace = grace.min(LOCK_STALE);
        for meta in self.store().list(LOCKS_PREFIX).await? {
            if age(&meta) < lock_grace {
                continue;
            }
            let damaged = match self.store().get(&meta.key).await {
                Ok(bytes) => !is_lock_object(&bytes),
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            if damaged {
                if !opts.dry_run {
                    self.store().delete(&meta.key).await?;
                }
                report.damaged_locks.push(meta.key.as_str().to_string());
            }
        }
        // As gc: never younger than TMP_MIN_AGE, whatever the grace, so a put in flight
        // keeps its temporary file.
        let tmp_grace = grace.max(super::maintenance::TMP_MIN_AGE);
        for meta in self.store().list(TMP_PREFIX).await? {
            if age(&meta) >= tmp_grace {
                if !opts.dry_run {
                    self.store().delete(&meta.key).await?;
                }
                report.stale_temporaries.push(meta.key.as_str().to_string());
            }
        }
        Ok(())
    }

    /// The fragments recorded as damaged (one listing; markers with a malformed name are
    /// ignored).
    pub(super) async fn damage_markers(&self) -> Result<HashSet<FragmentId>> {
        Ok(self
            .store()
            .list(DAMAGE_PREFIX)
            .await?
            .into_iter()
            .filter_map(|m| m.key.as_str().strip_prefix(DAMAGE_PREFIX)?.parse().ok())
            .collect())
    }

    /// Marks what is still damaged, unmarks what was healed, and after a scan of every
    /// model drops the markers of fragments no longer damaged.
    async fn record_damage(&self, report: &RepairReport, full_scan: bool) -> Result<()> {
        let marked = self.damage_markers().await?;
        for d in &report.damaged {
            let key = damage_key(&d.id)?;
            if d.status == DamageStatus::Healed {
                self.store().delete(&key).await?;
            } else if !marked.contains(&d.id) {
                let mut body = DAMAGE_MAGIC.to_vec();
                body.push(DAMAGE_FORMAT_VERSION);
                body.extend_from_slice(d.error.as_bytes());
                match self.store().put(&key, Bytes::from(body)).await? {
                    PutOutcome::Created | PutOutcome::AlreadyExists => {}
                }
            }
        }
        if full_scan {
            let still: HashSet<FragmentId> = report
                .damaged
                .iter()
                .filter(|d| d.status != DamageStatus::Healed)
                .map(|d| d.id)
                .collect();
            for id in marked.difference(&still) {
                self.store().delete(&damage_key(id)?).await?;
            }
        }
        Ok(())
    }

    /// Heals `id` with `bytes` (read from a source, hashing to `id`) and drops its damage
    /// marker. `false` when the stored copy reads fine after all (nothing written).
    pub(super) async fn heal_with(&self, id: &FragmentId, bytes: Bytes) -> Result<bool> {
        let healed = self.heal(id, bytes).await?;
        self.store().delete(&damage_key(id)?).await?;
        Ok(healed)
    }

    /// `None` when fragment `id`'s own object reads and verifies (with its dependency);
    /// else what is wrong with it. A fault of the dependency alone is not this object's.
    async fn check_object(&self, id: &FragmentId) -> Result<Option<String>> {
        let own = ObjectKey::fragment(id);
        // The object itself first (present, header, checksum): a damaged delta whose base
        // is damaged too must be found as well, not hidden behind the base's error.
        let raw = match self.store().get(&own).await {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => return Ok(Some(e.root().to_string())),
            Err(e) => return Err(e),
        };
        let intact = object::decode_header(&raw, own.as_str())
            .and_then(|_| object::verify_checksum(&raw, own.as_str()));
        if let Err(e) = intact {
            return Ok(Some(e.to_string()));
        }
        match self.read_fragment(id, super::objects::Via::Store).await {
            Ok(_) => Ok(None),
            Err(e) => match damaged_key(&e, id) {
                Some(key) if key == own.as_str() => Ok(Some(e.root().to_string())),
                // The dependency's own check reports it.
                Some(_) => Ok(None),
                None => Err(e),
            },
        }
    }

    /// Writes verified `bytes` (which hash to `id`) over `id`'s damaged object. Returns
    /// `false`, writing nothing, when the stored copy reads fine after all.
    async fn heal(&self, id: &FragmentId, bytes: Bytes) -> Result<bool> {
        // Re-read: only a copy that still fails is replaced.
        if self.check_object(id).await?.is_none() {
            return Ok(false);
        }
        let hint = EncodeHint {
            dtype: None,
            policy: self.config().codec_policy,
        };
        let codecs = self.codecs().clone();
        let id_copy = *id;
        let object = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let (_, object) = standalone_object(&codecs, &bytes, hint)?;
            let key = ObjectKey::fragment(&id_copy);
            let header = object::decode_header(&object, key.as_str())?;
            // The replacement must decode to exactly the fragment before it is written.
            decode_verified(&codecs, &id_copy, &object, &header, None)?;
            Ok(object)
        })
        .await
        .map_err(join_error)??;
        self.store()
            .replace(&ObjectKey::fragment(id), Bytes::from(object))
            .await?;
        Ok(true)
    }
}

/// The object key an error blames: the key of a corrupt, missing or unknown object, or
/// `id`'s key for a hash mismatch of `id`. `None` for errors that are not damage (I/O,
/// backend), which repair reports as failures of its own.
fn damaged_key(e: &FragmentError, id: &FragmentId) -> Option<String> {
    match e.root() {
        FragmentError::CorruptObject { key, .. }
        | FragmentError::NotFound { key, .. }
        | FragmentError::UnsupportedVersion { key, .. }
        | FragmentError::UnknownTag { key, .. } => Some(key.clone()),
        FragmentError::HashMismatch { id: bad, .. } => {
            Some(ObjectKey::fragment(bad).as_str().to_string())
        }
        FragmentError::Codec { .. } => Some(ObjectKey::fragment(id).as_str().to_string()),
        _ => None,
    }
}

fn collect_uses(
    m: &ModelManifest,
    uses: &mut BTreeMap<FragmentId, BTreeSet<FragmentUse>>,
    dependants: &mut BTreeMap<FragmentId, BTreeSet<FragmentId>>,
    placements: &mut HashMap<FragmentId, Vec<Placement>>,
) {
    for file in &m.files {
        let layout = Arc::new(FileLayout::new(file, m.file_is_lossy(&file.path)));
        for (id, _) in layout.fragment_ranges() {
            placements.entry(id).or_default().push(Placement {
                model: m.name.clone(),
                layout: layout.clone(),
            });
        }
        let tensors = file.tensors();
        let mut add = |r: &crate::manifest::FragmentRef, tensor: Option<&str>| {
            uses.entry(r.id).or_default().insert(FragmentUse {
                model: m.name.clone(),
                file: file.path.clone(),
                tensor: tensor.map(str::to_string),
            });
            if let Some(dep) = r.depends_on {
                dependants.entry(dep).or_default().insert(r.id);
            }
        };
        for t in tensors {
            for r in &t.fragments {
                add(r, Some(&t.name));
            }
        }
        for r in file.untyped_fragments() {
            add(r, None);
        }
    }
}

/// The stored files that hold at least one damaged fragment.
fn files_with_damage(
    damaged: &BTreeMap<FragmentId, String>,
    placements: &HashMap<FragmentId, Vec<Placement>>,
) -> Vec<Arc<FileLayout>> {
    let mut out: Vec<Arc<FileLayout>> = Vec::new();
    for id in damaged.keys() {
        for p in placements.get(id).into_iter().flatten() {
            if !out.iter().any(|l| Arc::ptr_eq(l, &p.layout)) {
                out.push(p.layout.clone());
            }
        }
    }
    out
}

/// The paths among `sources` (and directly in those that are directories) named after
/// model `name` as `ingest --each` names models: a directory `LEAF`, a file
/// `LEAF.safetensors` or `LEAF.gguf` (`LEAF`: the part after an `org/`), or `ORG/LEAF`
/// inside a source directory.
fn model_sources(sources: &[PathBuf], name: &str) -> Vec<PathBuf> {
    let leaf = name.rsplit('/').next().unwrap_or(name);
    let named = |p: &Path| {
        let Some(file) = p.file_name().and_then(|f| f.to_str()) else {
            return false;
        };
        if p.is_dir() {
            return file == leaf;
        }
        [".safetensors", ".gguf"]
            .iter()
            .any(|ext| file.strip_suffix(ext) == Some(leaf))
            && p.is_file()
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for s in sources {
        let mut candidates = vec![s.clone()];
        if s.is_dir() {
            for stem in [name, leaf] {
                candidates.push(s.join(stem));
                candidates.push(s.join(format!("{stem}.safetensors")));
                candidates.push(s.join(format!("{stem}.gguf")));
            }
        }
        for c in candidates {
            if named(&c) && !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// Whether `source` (a model directory or a single file) holds every file `manifest`
/// lists, with the same size and BLAKE3.
async fn holds_files(source: &Path, manifest: &ModelManifest) -> Result<bool> {
    let single = source.is_file();
    if single && manifest.files.len() != 1 {
        return Ok(false);
    }
    for f in &manifest.files {
        let path = if single {
            source.to_path_buf()
        } else {
            source.join(&f.path)
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(false);
        };
        if meta.len() != f.size || hash_file(&path).await? != f.blake3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every regular file under the given paths (directories walked, symlinks followed; a
/// directory reached twice, as through a symlink loop, is walked once).
fn source_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen_dirs: HashSet<PathBuf> = HashSet::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).map_err(|e| FragmentError::io("read source", &p, e))?;
        if meta.is_dir() {
            let real =
                std::fs::canonicalize(&p).map_err(|e| FragmentError::io("resolve", &p, e))?;
            if !seen_dirs.insert(real) {
                continue;
            }
            let entries =
                std::fs::read_dir(&p).map_err(|e| FragmentError::io("list source", &p, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| FragmentError::io("list source", &p, e))?;
                stack.push(entry.path());
            }
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

async fn hash_file(path: &Path) -> Result<[u8; 32]> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let file = std::fs::File::open(&path).map_err(|e| FragmentError::io("open", &path, e))?;
        hasher
            .update_reader(file)
            .map_err(|e| FragmentError::io("read", &path, e))?;
        Ok(*hasher.finalize().as_bytes())
    })
    .await
    .map_err(join_error)?
}

async fn read_range(path: &Path, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(range.start))?;
            let mut buf = Vec::with_capacity((range.end - range.start) as usize);
            f.take(range.end - range.start).read_to_end(&mut buf)?;
            Ok(buf)
        };
        read().map_err(|e| FragmentError::io("read", &path, e))
    })
    .await
    .map_err(join_error)?
}
