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
use crate::manifest::{ModelManifest, StoredKind};
use crate::object::ObjectHeader;
use crate::types::{
    DamagedManifest, Dtype, Encoding, FragmentId, Savings, SimilarityThreshold, validate_model_name,
};

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
    /// Safetensors spelling of the element type; for a GGUF tensor its ggml type (`Q4_0`).
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
    /// Safetensors spelling of its element type; for a GGUF tensor its ggml type (`Q4_0`).
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
    /// Models whose current manifest cannot be read: their tensors are not searched.
    pub damaged: Vec<DamagedManifest>,
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

    fn add_all(&mut self, other: ByteCount) {
        self.fragments += other.fragments;
        self.bytes += other.bytes;
    }

    fn minus(self, other: ByteCount) -> ByteCount {
        ByteCount {
            fragments: self.fragments.saturating_sub(other.fragments),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
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
    /// A quantized GGUF fragment stored as the reference quantization of (or a correction
    /// against the quantization of) a float fragment of `other`.
    pub quant: ByteCount,
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
    /// Quantized GGUF fragments stored as the reference quantization of a float fragment
    /// (no payload) or a correction against it.
    pub quant: StoredCount,
    /// Referenced fragments that are not stored (the library is damaged; `verify` names them).
    pub missing: ByteCount,
    /// Referenced fragments whose stored object's header is damaged (`repair` heals them).
    pub damaged: ByteCount,
    /// The saving per kind: exact = shared + repeated; delta, cast and compression from
    /// `standalone`, `delta` and `cast`; lossy from `lossy`. Summed over all models, each stored fragment is
    /// counted once (by the first model that references it).
    pub savings: Savings,
}

/// What [`ModelSavings`] learns of one of the model's own fragments.
enum Stored {
    /// Its kind and object size.
    Known((StoredKind, u64)),
    Missing,
    Damaged,
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

/// Fragments of `model` that lossy ingest replaced by a similar fragment `other`
/// references (those references also count as `identical` in their [`Relation`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LossyLink {
    /// The lossily ingested model.
    pub model: String,
    /// A model referencing the substitutes.
    pub other: String,
    /// The substituted references and their decoded bytes.
    pub substituted: ByteCount,
}

/// How every model of a library (or of a selection) relates to every other, from one
/// pass over the manifests: what [`FragmentLibrary::family_report`] returns. Its
/// relations are those [`FragmentLibrary::compare_models`] reports for the same pairs
/// and its savings those of [`FragmentLibrary::model_savings`] (the same code computes
/// them).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FamilyReport {
    /// Where each model's savings come from, by name.
    pub models: Vec<ModelSavings>,
    /// For every ordered pair of distinct models sharing or deriving any bytes, the
    /// first's bytes classified against the second, by name of `model` then `other`. A
    /// pair not listed shares nothing: all of `model`'s bytes are unique against `other`.
    pub relations: Vec<Relation>,
    /// Lossy substitutions between pairs of models (empty unless some model was ingested
    /// lossily), by name of `model` then `other`.
    pub lossy: Vec<LossyLink>,
    /// Models whose current manifest cannot be read: left out of everything above.
    pub damaged: Vec<DamagedManifest>,
    /// Fragments whose header could not be read (counted as unique, or missing).
    pub warnings: Vec<String>,
}

/// One tensor of the library, for the reverse map of [`FragmentLibrary::similar_tensors`].
struct TensorKey {
    model: usize,
    file: String,
    tensor: String,
    /// The dtype, or for a GGUF tensor its ggml type (`Q4_0`, `F16`…).
    dtype: String,
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
        let (manifests, damaged) = self.manifests_report().await?;
        let mut models: Vec<String> = Vec::with_capacity(manifests.len() + 1);
        let mut tensors: Vec<TensorKey> = Vec::new();
        // The target's manifest as read above, even if a newer generation appeared since.
        for m in std::iter::once(&target).chain(manifests.iter().filter(|m| m.name != model)) {
            let idx = models.len();
            models.push(m.name.clone());
            for f in &m.files {
                for (i, t) in f.tensors().iter().enumerate() {
                    tensors.push(TensorKey {
                        model: idx,
                        file: f.path.clone(),
                        tensor: t.name.clone(),
                        dtype: f
                            .ggml_type(i)
                            .map_or_else(|| t.dtype.to_string(), |g| g.name().to_string()),
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
            damaged,
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
                        dtype: other.dtype.clone(),
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
            dtype: t.dtype.clone(),
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
        let encodings: HashMap<FragmentId, Encoding> =
            headers.iter().map(|(id, h)| (*id, h.encoding)).collect();
        let pair = [ma, mb];
        let counts = pair_counts(&pair, &encodings);
        Ok(ModelComparison {
            a_against_b: relation(&pair, 0, 1, &counts),
            b_against_a: relation(&pair, 1, 0, &counts),
            warnings,
        })
    }

    /// How the current models relate, every pair at once, and where each one's savings
    /// come from (see [`FamilyReport`]): the manifests are read once and each referenced
    /// fragment's header once, instead of a `compare_models` per pair and a
    /// `model_savings` per model. `only` restricts the report to those models (their
    /// savings still count sharing with every model ingested earlier); an unknown name is
    /// [`FragmentError::ModelNotFound`].
    pub async fn family_report(&self, only: Option<&[String]>) -> Result<FamilyReport> {
        let (all, damaged) = self.manifests_report().await?;
        let selected: Vec<ModelManifest> = match only {
            None => all.clone(),
            Some(names) => {
                let mut picked = Vec::with_capacity(names.len());
                for name in names {
                    if picked.iter().any(|m: &ModelManifest| &m.name == name) {
                        continue;
                    }
                    match all.iter().find(|m| &m.name == name) {
                        Some(m) => picked.push(m.clone()),
                        None => {
                            validate_model_name(name)?;
                            return Err(FragmentError::ModelNotFound(name.clone()));
                        }
                    }
                }
                picked.sort_by(|a, b| a.name.cmp(&b.name));
                picked
            }
        };
        let ids: HashSet<FragmentId> = selected
            .iter()
            .flat_map(|m| m.fragments().map(|r| r.id))
            .collect();
        let infos = futures::stream::iter(
            ids.into_iter()
                .map(|id| async move { (id, self.fragment_info(&id).await) }),
        )
        .buffer_unordered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
        let mut stored: HashMap<FragmentId, (Encoding, u64)> = HashMap::new();
        let mut damaged_ids = HashSet::new();
        let mut warnings = Vec::new();
        for (id, info) in infos {
            match info {
                Ok(Some(info)) => {
                    stored.insert(id, (info.encoding, info.stored_len));
                }
                Ok(None) => warnings.push(format!(
                    "fragment {} is referenced but not stored (counted as unique, or missing)",
                    id.short()
                )),
                // Contained: the report covers everything intact and names the damage.
                Err(e) if e.is_corruption() => {
                    damaged_ids.insert(id);
                    warnings.push(format!("fragment {} is damaged: {e}", id.short()));
                }
                Err(e) => return Err(e),
            }
        }
        warnings.sort();
        let encodings: HashMap<FragmentId, Encoding> =
            stored.iter().map(|(id, (e, _))| (*id, *e)).collect();

        // Savings: each model against the fragments of every model ingested before it.
        let mut order: Vec<&ModelManifest> = all.iter().collect();
        order.sort_by(|a, b| (a.created_unix_ms, &a.name).cmp(&(b.created_unix_ms, &b.name)));
        let mut earlier: HashSet<FragmentId> = HashSet::new();
        let mut savings: BTreeMap<String, ModelSavings> = BTreeMap::new();
        for m in order {
            if selected.iter().any(|s| s.name == m.name) {
                let (mut report, own) = classify_savings(m, &earlier);
                for (id, len) in own {
                    let known = match stored.get(&id) {
                        Some((e, stored_len)) => Stored::Known((StoredKind::of(e), *stored_len)),
                        None if damaged_ids.contains(&id) => Stored::Damaged,
                        None => Stored::Missing,
                    };
                    report.add_own(len, known);
                }
                report.finish();
                savings.insert(m.name.clone(), report);
            }
            earlier.extend(m.fragments().map(|r| r.id));
        }

        let counts = pair_counts(&selected, &encodings);
        let mut pairs: Vec<(usize, usize)> = counts.keys().copied().collect();
        pairs.sort_by(|x, y| {
            (&selected[x.0].name, &selected[x.1].name)
                .cmp(&(&selected[y.0].name, &selected[y.1].name))
        });
        let relations = pairs
            .into_iter()
            .map(|(i, o)| relation(&selected, i, o, &counts))
            .collect();
        Ok(FamilyReport {
            models: savings.into_values().collect(),
            relations,
            lossy: lossy_links(&selected),
            damaged,
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
        let (mut report, own) = classify_savings(&manifest, &earlier);
        // How each own fragment is stored: from the manifest's table (format 3), else a
        // header read and a HEAD each. A damaged header is counted, not fatal.
        let tabled: HashMap<FragmentId, (StoredKind, u64)> = manifest
            .objects
            .iter()
            .map(|o| (o.id, (o.kind, o.stored_len)))
            .collect();
        let infos = futures::stream::iter(own.into_iter().map(|(id, len)| {
            let tabled = tabled.get(&id).copied();
            async move {
                if let Some(stored) = tabled {
                    return Ok::<_, FragmentError>((len, Stored::Known(stored)));
                }
                Ok(match self.fragment_info(&id).await {
                    Ok(Some(i)) => (
                        len,
                        Stored::Known((StoredKind::of(&i.encoding), i.stored_len)),
                    ),
                    Ok(None) => (len, Stored::Missing),
                    Err(e) if e.is_corruption() => (len, Stored::Damaged),
                    Err(e) => return Err(e),
                })
            }
        }))
        .buffer_unordered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
        for info in infos {
            let (len, stored) = info?;
            report.add_own(len, stored);
        }
        report.finish();
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

impl ModelSavings {
    /// Counts a fragment first referenced by this model: `info` is how it is stored
    /// (encoding, object size), `None` when it is not.
    fn add_own(&mut self, len: u32, stored: Stored) {
        let (kind, stored_len) = match stored {
            Stored::Known(known) => known,
            Stored::Missing => return self.missing.add(len),
            Stored::Damaged => return self.damaged.add(len),
        };
        let class = match kind {
            StoredKind::Standalone => &mut self.standalone,
            StoredKind::Delta => &mut self.delta,
            StoredKind::Cast => &mut self.cast,
            StoredKind::Quant => &mut self.quant,
        };
        class.add(u64::from(len), stored_len);
    }

    /// Sums the savings once every reference is counted.
    fn finish(&mut self) {
        self.savings = Savings {
            exact_dedup_bytes: self.shared.bytes + self.repeated.bytes,
            delta_bytes: self.delta.saved(),
            cast_bytes: self.cast.saved().max(0) as u64,
            compression_bytes: self.standalone.saved(),
            lossy_bytes: self.lossy.bytes,
            quant_bytes: self.quant.saved().max(0) as u64,
        };
    }
}

/// The references of `manifest` classified as lossy, repeated or shared with `earlier`
/// (the fragments of the models ingested before it); the rest, first references to the
/// model's own fragments, are returned to be classified by how they are stored.
fn classify_savings(
    manifest: &ModelManifest,
    earlier: &HashSet<FragmentId>,
) -> (ModelSavings, Vec<(FragmentId, u32)>) {
    let lossy: HashSet<(&str, &str, u32)> = manifest
        .lossy
        .iter()
        .map(|l| (l.file.as_str(), l.tensor.as_str(), l.fragment))
        .collect();
    let mut report = ModelSavings {
        model: manifest.name.clone(),
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
        let blob_refs = f.untyped_fragments().into_iter().map(|r| (None, r));
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
    (report, own)
}

/// Identical, delta-coded and cast-derived references of one model against another.
#[derive(Clone, Copy, Debug, Default)]
struct PairCounts {
    identical: ByteCount,
    delta: ByteCount,
    cast: ByteCount,
    quant: ByteCount,
}

/// How a reference derives from another model's fragment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Derived {
    Delta,
    Cast,
    Quant,
}

/// For every ordered pair (model, other) of `manifests` that relates by anything, how
/// `model`'s references classify against `other` (the rest is unique): a reference is
/// identical when `other` references the same fragment; else delta-coded when it is an
/// XOR delta against a fragment of `other` or against the cast of an f32 fragment that
/// `other` references (or whose cast `other` references); else cast-derived when it is
/// the exact cast of a fragment of `other`. `encodings` holds how every fragment that
/// depends on another is stored (a fragment missing from it counts as standalone).
/// One pass: each model's distinct fragments meet only the models holding them or
/// their dependency, never every other model.
fn pair_counts(
    manifests: &[ModelManifest],
    encodings: &HashMap<FragmentId, Encoding>,
) -> HashMap<(usize, usize), PairCounts> {
    // Models referencing each fragment, and each cast (source, dtype), ascending.
    let mut users: HashMap<FragmentId, Vec<usize>> = HashMap::new();
    let mut cast_users: HashMap<(FragmentId, Dtype), Vec<usize>> = HashMap::new();
    let push = |list: &mut Vec<usize>, i: usize| {
        if list.last() != Some(&i) {
            list.push(i);
        }
    };
    for (i, m) in manifests.iter().enumerate() {
        for r in m.fragments() {
            push(users.entry(r.id).or_default(), i);
            if let Some(Encoding::Cast { source, to, .. }) = encodings.get(&r.id) {
                push(cast_users.entry((*source, *to)).or_default(), i);
            }
        }
    }
    let none: &[usize] = &[];
    let mut pairs: HashMap<(usize, usize), PairCounts> = HashMap::new();
    let mut related: Vec<usize> = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        let mut refs: HashMap<FragmentId, ByteCount> = HashMap::new();
        for r in m.fragments() {
            refs.entry(r.id).or_default().add(r.len);
        }
        for (id, count) in refs {
            let same = users.get(&id).map_or(none, Vec::as_slice);
            for &o in same.iter().filter(|&&o| o != i) {
                pairs.entry((i, o)).or_default().identical.add_all(count);
            }
            related.clear();
            let derived = match encodings.get(&id) {
                Some(Encoding::Delta { base, .. }) => {
                    related.extend(users.get(base).into_iter().flatten());
                    Derived::Delta
                }
                Some(Encoding::CastDelta { source, to, .. }) => {
                    related.extend(users.get(source).into_iter().flatten());
                    related.extend(cast_users.get(&(*source, *to)).into_iter().flatten());
                    Derived::Delta
                }
                Some(Encoding::Cast { source, .. }) => {
                    related.extend(users.get(source).into_iter().flatten());
                    Derived::Cast
                }
                Some(Encoding::Quant { source, .. } | Encoding::QuantDelta { source, .. }) => {
                    related.extend(users.get(source).into_iter().flatten());
                    Derived::Quant
                }
                Some(Encoding::Standalone { .. }) | None => continue,
            };
            related.sort_unstable();
            related.dedup();
            for &o in related.iter().filter(|&&o| o != i) {
                if same.binary_search(&o).is_ok() {
                    continue; // identical already
                }
                let entry = pairs.entry((i, o)).or_default();
                match derived {
                    Derived::Delta => entry.delta.add_all(count),
                    Derived::Cast => entry.cast.add_all(count),
                    Derived::Quant => entry.quant.add_all(count),
                }
            }
        }
    }
    pairs
}

/// The [`Relation`] of `manifests[model]` against `manifests[other]` from [`pair_counts`].
fn relation(
    manifests: &[ModelManifest],
    model: usize,
    other: usize,
    counts: &HashMap<(usize, usize), PairCounts>,
) -> Relation {
    let m = &manifests[model];
    let mut total = ByteCount::default();
    for r in m.fragments() {
        total.add(r.len);
    }
    let c = counts.get(&(model, other)).copied().unwrap_or_default();
    Relation {
        model: m.name.clone(),
        other: manifests[other].name.clone(),
        total,
        identical: c.identical,
        delta: c.delta,
        cast: c.cast,
        quant: c.quant,
        unique: total
            .minus(c.identical)
            .minus(c.delta)
            .minus(c.cast)
            .minus(c.quant),
    }
}

/// For every lossily ingested model of `manifests`, the other models referencing the
/// fragments that replaced its own.
fn lossy_links(manifests: &[ModelManifest]) -> Vec<LossyLink> {
    let mut links: BTreeMap<(String, String), ByteCount> = BTreeMap::new();
    for m in manifests.iter().filter(|m| m.is_lossy()) {
        let subs: Vec<&crate::manifest::FragmentRef> = m
            .lossy
            .iter()
            .filter_map(|l| m.substituted_ref(l))
            .collect();
        for other in manifests.iter().filter(|o| o.name != m.name) {
            let ids: HashSet<FragmentId> = other.fragments().map(|r| r.id).collect();
            for r in subs.iter().filter(|r| ids.contains(&r.id)) {
                links
                    .entry((m.name.clone(), other.name.clone()))
                    .or_default()
                    .add(r.len);
            }
        }
    }
    links
        .into_iter()
        .map(|((model, other), substituted)| LossyLink {
            model,
            other,
            substituted,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FileContent, FileManifest, FragmentRef};

    /// The per-pair definition of a relation, as `compare_models` computed it before the
    /// one-pass [`pair_counts`]: the reference the one pass must agree with.
    fn naive(
        model: &ModelManifest,
        other: &ModelManifest,
        encodings: &HashMap<FragmentId, Encoding>,
    ) -> [ByteCount; 4] {
        let other_ids: HashSet<FragmentId> = other.fragments().map(|r| r.id).collect();
        let other_casts: HashSet<(FragmentId, Dtype)> = other
            .fragments()
            .filter_map(|r| match encodings.get(&r.id)? {
                Encoding::Cast { source, to, .. } => Some((*source, *to)),
                _ => None,
            })
            .collect();
        let [mut identical, mut delta, mut cast, mut unique] = [ByteCount::default(); 4];
        for r in model.fragments() {
            let class = if other_ids.contains(&r.id) {
                &mut identical
            } else {
                match encodings.get(&r.id) {
                    Some(Encoding::Delta { base, .. }) if other_ids.contains(base) => &mut delta,
                    Some(Encoding::CastDelta { source, to, .. })
                        if other_ids.contains(source) || other_casts.contains(&(*source, *to)) =>
                    {
                        &mut delta
                    }
                    Some(Encoding::Cast { source, .. }) if other_ids.contains(source) => &mut cast,
                    _ => &mut unique,
                }
            };
            class.add(r.len);
        }
        [identical, delta, cast, unique]
    }

    #[test]
    fn one_pass_relations_equal_the_per_pair_definition() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let id = |i: u64| FragmentId::of(&i.to_le_bytes());
        let dtype = |k: u64| if k == 0 { Dtype::BF16 } else { Dtype::F16 };
        for round in 0..20 {
            // Fragments 0..10 standalone, then casts, deltas and cast deltas of them; 40..45
            // have no known encoding (counted as standalone).
            let mut encodings = HashMap::new();
            for i in 10..40u64 {
                let (source, to) = (id(next(10)), dtype(next(2)));
                let e = match i {
                    10..20 => Encoding::Cast {
                        source,
                        from: Dtype::F32,
                        to,
                    },
                    20..30 => Encoding::Delta {
                        codec: 0,
                        base: id(next(20)),
                    },
                    _ => Encoding::CastDelta {
                        codec: 0,
                        source,
                        from: Dtype::F32,
                        to,
                    },
                };
                encodings.insert(id(i), e);
            }
            let manifests: Vec<ModelManifest> = (0..6)
                .map(|m| ModelManifest {
                    name: format!("m{m}"),
                    created_unix_ms: m,
                    files: (0..2)
                        .map(|f| FileManifest {
                            path: format!("f{f}"),
                            size: 0,
                            blake3: [0; 32],
                            content: FileContent::Blob {
                                chunks: (0..1 + next(25))
                                    .map(|_| {
                                        let i = next(45);
                                        FragmentRef {
                                            id: id(i),
                                            len: 1 + (i as u32 * 37) % 1000,
                                            depends_on: None,
                                        }
                                    })
                                    .collect(),
                            },
                        })
                        .collect(),
                    lossy: vec![],
                    revision: None,
                    objects: vec![],
                })
                .collect();
            let counts = pair_counts(&manifests, &encodings);
            for a in 0..manifests.len() {
                for b in (0..manifests.len()).filter(|&b| b != a) {
                    let r = relation(&manifests, a, b, &counts);
                    let want = naive(&manifests[a], &manifests[b], &encodings);
                    assert_eq!(
                        [r.identical, r.delta, r.cast, r.unique],
                        want,
                        "round {round}: m{a} against m{b}"
                    );
                }
            }
        }
    }
}
