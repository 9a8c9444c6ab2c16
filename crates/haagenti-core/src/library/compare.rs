//! Read-only reports on how models relate: which tensors resemble which (from the
//! similarity index), how the bytes of two models relate (identical, delta-coded,
//! cast-derived, unique), and where one model's savings come from.
//!
//! Everything here is computed from the manifests, fragment headers and the index; no
//! fragment payload is read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures::StreamExt;
use serde::Serialize;

use super::{FragmentLibrary, join_error};
use crate::error::{FragmentError, Result};
use crate::manifest::ModelManifest;
use crate::object::ObjectHeader;
use crate::types::{Dtype, Encoding, FragmentId, Savings, SimilarityThreshold};

/// Fragment pairs estimated less similar than this do not relate two tensors in
/// [`FragmentLibrary::similar_tensors`].
pub(crate) const SIMILAR_FRAGMENT_THRESHOLD: f32 = 0.5;
/// Index matches examined per fragment of the queried tensor.
const MATCHES_PER_FRAGMENT: usize = 32;
/// Header and size reads in flight at once.
const CONCURRENT_READS: usize = 32;

/// The tensors of the library most similar to one tensor of a model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorSimilarity {
    /// Relative path of the model file holding the tensor.
    pub file: String,
    /// The tensor's name.
    pub tensor: String,
    /// Safetensors spelling of the element type.
    pub dtype: String,
    /// Fragments the tensor is cut into.
    pub fragments: u64,
    /// Fragments with no signature in the index (values a signature does not apply to,
    /// or a fragment missing from the index): they take no part in the estimates.
    pub unsigned_fragments: u64,
    /// Best first (ties: more identical fragments first, then by name).
    pub matches: Vec<TensorMatch>,
}

/// A tensor elsewhere in the library that resembles the queried one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorMatch {
    /// The model holding it (the queried model itself for another of its tensors).
    pub model: String,
    /// Relative path of its file in that model.
    pub file: String,
    /// Its name.
    pub tensor: String,
    /// Safetensors spelling of its element type.
    pub dtype: String,
    /// Estimated cosine similarity: for every signed fragment of the queried tensor, the
    /// best estimate among this tensor's fragments (1 for a shared fragment, 0 when the
    /// index nominated none), averaged weighted by fragment length.
    pub cosine: f32,
    /// Fragments of the queried tensor that this tensor holds byte for byte.
    pub identical_fragments: u64,
}

/// What [`FragmentLibrary::similar_tensors`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimilarTensors {
    /// The queried model.
    pub model: String,
    /// One entry per queried tensor, in manifest order.
    pub tensors: Vec<TensorSimilarity>,
    /// Index problems that may hide matches (a damaged segment): `reindex` fixes them.
    pub warnings: Vec<String>,
}

/// A number of fragment references and their decoded bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ByteCount {
    /// Fragment references (a fragment referenced twice counts twice).
    pub fragments: u64,
    /// Sum of their decoded lengths.
    pub bytes: u64,
}

impl ByteCount {
    fn add(&mut self, len: u32) {
        self.fragments += 1;
        self.bytes += u64::from(len);
    }
}

/// The bytes of `model`, classified against `other`. The four classes add up to `total`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Relation {
    /// The model whose bytes are classified.
    pub model: String,
    /// The model they are classified against.
    pub other: String,
    /// Every fragment reference of `model` (tensor data and blob chunks).
    pub total: ByteCount,
    /// References to a fragment `other` references too.
    pub identical: ByteCount,
    /// Stored as an XOR delta against a fragment of `other`, or against the cast of an
    /// f32 fragment whose cast (or which itself) `other` references.
    pub delta: ByteCount,
    /// Stored as the exact cast of an f32 fragment of `other` (no payload).
    pub cast: ByteCount,
    /// Everything else.
    pub unique: ByteCount,
}

/// What [`FragmentLibrary::compare_models`] found, in both directions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelComparison {
    /// The first model's bytes against the second.
    pub a_against_b: Relation,
    /// The second model's bytes against the first.
    pub b_against_a: Relation,
    /// Fragments whose header could not be read (counted as unique).
    pub warnings: Vec<String>,
}

/// References of one storage kind: count, decoded bytes and the size of their objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoredCount {
    /// Fragment references.
    pub fragments: u64,
    /// Sum of their decoded lengths.
    pub bytes: u64,
    /// Sum of the sizes of their stored objects, headers included.
    pub stored_bytes: u64,
}

impl StoredCount {
    fn add(&mut self, len: u64, stored: u64) {
        self.fragments += 1;
        self.bytes += len;
        self.stored_bytes += stored;
    }

    fn saved(&self) -> i64 {
        self.bytes as i64 - self.stored_bytes as i64
    }
}

/// Where one model's savings come from. Every fragment reference falls in exactly one of
/// `shared`, `repeated`, `lossy`, `standalone`, `delta`, `cast` or `missing`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelSavings {
    /// The model's name.
    pub model: String,
    /// Sum of the model's file sizes.
    pub logical_bytes: u64,
    /// Every fragment reference (file sizes minus safetensors headers).
    pub fragments: ByteCount,
    /// First references to a fragment that a model ingested earlier references too.
    pub shared: ByteCount,
    /// References repeating a fragment referenced earlier in this model.
    pub repeated: ByteCount,
    /// Fragments replaced by a similar stored one (lossy ingest only).
    pub lossy: ByteCount,
    /// Largest relative L2 error of those substitutions (0 when lossless).
    pub max_rel_error: f64,
    /// The other fragments (no earlier model references them), by how they are stored.
    pub standalone: StoredCount,
    /// Stored as XOR deltas (against a similar fragment or the cast of one).
    pub delta: StoredCount,
    /// Stored as exact casts of an f32 fragment (no payload).
    pub cast: StoredCount,
    /// Referenced fragments that are not stored (the library is damaged; `verify` names them).
    pub missing: ByteCount,
    /// The saving per kind: exact = shared + repeated; delta, cast and compression from
    /// `standalone`, `delta` and `cast`; lossy from `lossy`. Summed over all models, each stored fragment is
    /// counted once (by the first model that references it).
    pub savings: Savings,
}

/// A model ingested with lossy sharing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LossyModel {
    /// The model's name.
    pub model: String,
    /// Fragments that reference a similar stored fragment instead of their own bytes.
    pub substitutions: u64,
    /// Largest relative L2 error of those substitutions.
    pub max_rel_error: f64,
}

/// One tensor of the library, for the reverse map of [`FragmentLibrary::similar_tensors`].
struct TensorKey {
    model: usize,
    file: String,
    tensor: String,
    dtype: Dtype,
    /// (id, decoded length) of each fragment, in order.
    fragments: Vec<(FragmentId, u32)>,
}

impl FragmentLibrary {
    /// For every tensor of `model` (or only those named `tensor`), the `limit` tensors
    /// elsewhere in the library (other models, or other tensors of this one) whose values
    /// are most similar, with an estimated cosine. Estimates come from the similarity
    /// index, so they cover only what the index nominates (estimated cosine of at least
    /// 0.5 per fragment).
    pub async fn similar_tensors(
        &self,
        model: &str,
        tensor: Option<&str>,
        limit: usize,
    ) -> Result<SimilarTensors> {
        if self.similarity_state().is_none() {
            return Err(FragmentError::InvalidInput(
                "this library has no similarity index configured".into(),
            ));
        }
        let target = self.manifest(model).await?;
        let mut refresh = self.refresh_index().await?;
        if refresh.entries == 0 {
            refresh.warnings.push(
                "the similarity index is empty: a reindex rebuilds it from the fragments".into(),
            );
        }
        let manifests = self.latest_manifests().await?;
        let mut models: Vec<String> = Vec::with_capacity(manifests.len() + 1);
        let mut tensors: Vec<TensorKey> = Vec::new();
        // The target's manifest as read above, even if a newer generation appeared since.
        for m in std::iter::once(&target).chain(manifests.iter().filter(|m| m.name != model)) {
            let idx = models.len();
            models.push(m.name.clone());
            for f in &m.files {
                for t in f.tensors() {
                    tensors.push(TensorKey {
                        model: idx,
                        file: f.path.clone(),
                        tensor: t.name.clone(),
                        dtype: t.dtype,
                        fragments: t.fragments.iter().map(|r| (r.id, r.len)).collect(),
                    });
                }
            }
        }
        let targets: Vec<usize> = tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.model == 0 && tensor.is_none_or(|name| t.tensor == name))
            .map(|(i, _)| i)
            .collect();
        if let Some(name) = tensor
            && targets.is_empty()
        {
            return Err(FragmentError::InvalidInput(format!(
                "model {model:?} has no tensor named {name:?}"
            )));
        }
        let lib = self.clone();
        let results = tokio::task::spawn_blocking(move || {
            let mut users: HashMap<FragmentId, Vec<usize>> = HashMap::new();
            for (i, t) in tensors.iter().enumerate() {
                for (id, _) in &t.fragments {
                    let list = users.entry(*id).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
            targets
                .into_iter()
                .map(|i| lib.similar_to(i, &tensors, &models, &users, limit))
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(join_error)??;
        Ok(SimilarTensors {
            model: model.to_string(),
            tensors: results,
            warnings: refresh.warnings,
        })
    }

    /// Scores every tensor related to `tensors[target]` through the index.
    fn similar_to(
        &self,
        target: usize,
        tensors: &[TensorKey],
        models: &[String],
        users: &HashMap<FragmentId, Vec<usize>>,
        limit: usize,
    ) -> Result<TensorSimilarity> {
        let threshold = SimilarityThreshold::new(SIMILAR_FRAGMENT_THRESHOLD)?;
        let t = &tensors[target];
        // Per candidate tensor: length-weighted sum of best similarities, identical count.
        let mut scores: HashMap<usize, (f64, u64)> = HashMap::new();
        let mut signed_bytes = 0u64;
        let mut unsigned = 0u64;
        let mut best: HashMap<usize, (f32, bool)> = HashMap::new();
        for (id, len) in &t.fragments {
            let Some((signature, _)) = self.index_entry(id) else {
                unsigned += 1;
                continue;
            };
            signed_bytes += u64::from(*len);
            best.clear();
            for &u in users.get(id).into_iter().flatten() {
                best.insert(u, (1.0, true));
            }
            for m in self.find_similar(&signature, threshold, MATCHES_PER_FRAGMENT)? {
                for &u in users.get(&m.id).into_iter().flatten() {
                    let entry = best.entry(u).or_insert((0.0, false));
                    entry.0 = entry.0.max(m.similarity.clamp(-1.0, 1.0));
                }
            }
            for (&u, &(similarity, identical)) in &best {
                if u == target {
                    continue;
                }
                let score = scores.entry(u).or_default();
                score.0 += f64::from(similarity) * f64::from(*len);
                score.1 += u64::from(identical);
            }
        }
        let mut matches: Vec<TensorMatch> = if signed_bytes == 0 {
            Vec::new()
        } else {
            scores
                .into_iter()
                .filter_map(|(u, (sum, identical))| {
                    let other = tensors.get(u)?;
                    Some(TensorMatch {
                        model: models.get(other.model)?.clone(),
                        file: other.file.clone(),
                        tensor: other.tensor.clone(),
                        dtype: other.dtype.to_string(),
                        cosine: (sum / signed_bytes as f64) as f32,
                        identical_fragments: identical,
                    })
                })
                .collect()
        };
        matches.sort_by(|a, b| {
            b.cosine
                .total_cmp(&a.cosine)
                .then_with(|| b.identical_fragments.cmp(&a.identical_fragments))
                .then_with(|| (&a.model, &a.file, &a.tensor).cmp(&(&b.model, &b.file, &b.tensor)))
        });
        matches.truncate(limit);
        Ok(TensorSimilarity {
            file: t.file.clone(),
            tensor: t.tensor.clone(),
            dtype: t.dtype.to_string(),
            fragments: t.fragments.len() as u64,
            unsigned_fragments: unsigned,
            matches,
        })
    }

    /// How the bytes of model `a` relate to those of model `b`, and the reverse:
    /// identical fragments, deltas against the other's fragments, casts of them, unique.
    /// Reads the two manifests and the headers of the fragments that depend on another.
    pub async fn compare_models(&self, a: &str, b: &str) -> Result<ModelComparison> {
        let (ma, mb) = (self.manifest(a).await?, self.manifest(b).await?);
        let dependent: HashSet<FragmentId> = ma
            .fragments()
            .chain(mb.fragments())
            .filter(|r| r.depends_on.is_some())
            .map(|r| r.id)
            .collect();
        let (headers, warnings) = self.headers(dependent).await?;
        Ok(ModelComparison {
            a_against_b: relation(&ma, &mb, &headers),
            b_against_a: relation(&mb, &ma, &headers),
            warnings,
        })
    }

    /// Where the savings of model `name` come from (see [`ModelSavings`]).
    pub async fn model_savings(&self, name: &str) -> Result<ModelSavings> {
        let manifest = self.manifest(name).await?;
        // A fragment is an exact saving of the later of two models that reference it; the
        // first one is charged with storing it.
        let this = (manifest.created_unix_ms, manifest.name.as_str());
        let earlier: HashSet<FragmentId> = self
            .latest_manifests()
            .await?
            .iter()
            .filter(|m| (m.created_unix_ms, m.name.as_str()) < this)
            .flat_map(|m| m.fragments().map(|r| r.id))
            .collect();
        let lossy: HashSet<(&str, &str, u32)> = manifest
            .lossy
            .iter()
            .map(|l| (l.file.as_str(), l.tensor.as_str(), l.fragment))
            .collect();
        let mut report = ModelSavings {
            model: name.to_string(),
            logical_bytes: manifest.logical_bytes(),
            max_rel_error: manifest.max_rel_error(),
            ..Default::default()
        };
        let mut seen: HashSet<FragmentId> = HashSet::new();
        let mut own: Vec<(FragmentId, u32)> = Vec::new();
        for f in &manifest.files {
            let tensor_refs = f.tensors().iter().flat_map(|t| {
                t.fragments
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (Some((t.name.as_str(), i)), r))
            });
            let blob_refs = match &f.content {
                crate::manifest::FileContent::Blob { chunks } => chunks.as_slice(),
                crate::manifest::FileContent::Safetensors { .. } => &[],
            }
            .iter()
            .map(|r| (None, r));
            for (position, r) in tensor_refs.chain(blob_refs) {
                report.fragments.add(r.len);
                let substituted = position.is_some_and(|(tensor, i)| {
                    u32::try_from(i).is_ok_and(|i| lossy.contains(&(f.path.as_str(), tensor, i)))
                });
                if substituted {
                    report.lossy.add(r.len);
                } else if !seen.insert(r.id) {
                    report.repeated.add(r.len);
                } else if earlier.contains(&r.id) {
                    report.shared.add(r.len);
                } else {
                    own.push((r.id, r.len));
                }
            }
        }
        let infos = futures::stream::iter(own.into_iter().map(|(id, len)| async move {
            Ok::<_, FragmentError>((len, self.fragment_info(&id).await?))
        }))
        .buffer_unordered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
        for info in infos {
            let (len, info) = info?;
            let Some(info) = info else {
                report.missing.add(len);
                continue;
            };
            let class = match info.encoding {
                Encoding::Standalone { .. } => &mut report.standalone,
                Encoding::Delta { .. } | Encoding::CastDelta { .. } => &mut report.delta,
                Encoding::Cast { .. } => &mut report.cast,
            };
            class.add(u64::from(len), info.stored_len);
        }
        report.savings = Savings {
            exact_dedup_bytes: report.shared.bytes + report.repeated.bytes,
            delta_bytes: report.delta.saved(),
            cast_bytes: report.cast.saved().max(0) as u64,
            compression_bytes: report.standalone.saved(),
            lossy_bytes: report.lossy.bytes,
        };
        Ok(report)
    }

    /// Every model ingested with lossy sharing, by name.
    pub async fn lossy_models(&self) -> Result<Vec<LossyModel>> {
        Ok(self
            .latest_manifests()
            .await?
            .into_iter()
            .filter(ModelManifest::is_lossy)
            .map(|m| LossyModel {
                substitutions: m.lossy.len() as u64,
                max_rel_error: m.max_rel_error(),
                model: m.name,
            })
            .collect())
    }

    /// For every fragment the models reference (tensor fragments and blob chunks), the
    /// models that reference it, from the current manifests (no fragment is read). A
    /// model removed while this runs is left out.
    pub async fn fragment_users(&self) -> Result<BTreeMap<FragmentId, BTreeSet<String>>> {
        let mut users: BTreeMap<FragmentId, BTreeSet<String>> = BTreeMap::new();
        for m in self.latest_manifests().await? {
            for r in m.fragments() {
                users.entry(r.id).or_default().insert(m.name.clone());
            }
        }
        Ok(users)
    }

    /// The current manifest of every model, sorted by name. A model removed while this
    /// runs is left out, and so is one whose manifest cannot be read (contained: it must
    /// not stop queries about the others; `manifests_report` names them).
    async fn latest_manifests(&self) -> Result<Vec<ModelManifest>> {
        Ok(self.manifests_report().await?.0)
    }

    /// Headers of `ids`, read concurrently; a fragment that is not stored becomes a
    /// warning.
    async fn headers(
        &self,
        ids: HashSet<FragmentId>,
    ) -> Result<(HashMap<FragmentId, ObjectHeader>, Vec<String>)> {
        let read = futures::stream::iter(ids.into_iter().map(|id| async move {
            Ok::<_, FragmentError>((id, self.fragment_header(&id).await?))
        }))
        .buffer_unordered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
        let mut headers = HashMap::new();
        let mut warnings = Vec::new();
        for r in read {
            match r? {
                (id, Some(h)) => {
                    headers.insert(id, h);
                }
                (id, None) => warnings.push(format!(
                    "fragment {} is referenced but not stored (counted as unique)",
                    id.short()
                )),
            }
        }
        warnings.sort();
        Ok((headers, warnings))
    }
}

/// Classifies the fragment references of `model` against `other`. `headers` holds the
/// header of every fragment of both that depends on another.
fn relation(
    model: &ModelManifest,
    other: &ModelManifest,
    headers: &HashMap<FragmentId, ObjectHeader>,
) -> Relation {
    let other_ids: HashSet<FragmentId> = other.fragments().map(|r| r.id).collect();
    // Casts `other` references, by (f32 source, target dtype): a delta against the cast of
    // such a source is a delta against that fragment of `other`.
    let other_casts: HashSet<(FragmentId, Dtype)> = other
        .fragments()
        .filter_map(|r| match headers.get(&r.id)?.encoding {
            Encoding::Cast { source, to, .. } => Some((source, to)),
            _ => None,
        })
        .collect();
    let mut rel = Relation {
        model: model.name.clone(),
        other: other.name.clone(),
        ..Default::default()
    };
    for r in model.fragments() {
        rel.total.add(r.len);
        let class = if other_ids.contains(&r.id) {
            &mut rel.identical
        } else {
            match headers.get(&r.id).map(|h| h.encoding) {
                Some(Encoding::Delta { base, .. }) if other_ids.contains(&base) => &mut rel.delta,
                Some(Encoding::CastDelta { source, to, .. })
                    if other_ids.contains(&source) || other_casts.contains(&(source, to)) =>
                {
                    &mut rel.delta
                }
                Some(Encoding::Cast { source, .. }) if other_ids.contains(&source) => &mut rel.cast,
                _ => &mut rel.unique,
            }
        };
        class.add(r.len);
    }
    rel
}
