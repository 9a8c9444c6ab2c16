//! Ingest: validate every input file up front, then stream fragments through a bounded
//! pipeline (one sequential reader, `parallelism` hash/encode/store workers), then write
//! the manifest last.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use super::gguf::{Board, BoardKey, GgufSource, QuantOrigin, Role};
use super::locks::LockKind;
use super::similarity::{Placement, Policy};
use super::{FragmentLibrary, join_error, now_unix_ms};
use crate::buffers;
use crate::error::{FragmentError, Result};
use crate::manifest::{
    FileContent, FileManifest, FragmentRef, LossySubstitution, ModelManifest, StoredKind,
    StoredObject, TensorRef, validate_relative_path, validate_revision,
};
use crate::safetensors::{self, SafetensorsHeader};
use crate::signature::EntryMeta;
use crate::store::ObjectKey;
use crate::types::{Dtype, Encoding, FragmentId, fragment_elements, validate_model_name};

/// Receives progress of long operations (ingest, export, verify). Implementations must
/// be cheap: `advance` is called once per fragment.
pub trait Progress: Send + Sync {
    /// Work is about to start on `total_bytes` bytes.
    fn begin(&self, total_bytes: u64);
    /// `bytes` more bytes are done (an increment, not a running total).
    fn advance(&self, bytes: u64);
    /// The work is done. An operation that fails may return without calling it.
    fn finish(&self);
}

/// Options of [`FragmentLibrary::ingest`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct IngestOptions {
    /// Replace an existing model of the same name instead of failing.
    pub replace: bool,
    /// Receives the ingest's progress, in bytes of input.
    pub progress: Option<Arc<dyn Progress>>,
    /// Opt-in lossy sharing: a fragment whose values are within this relative L2 error of
    /// a stored fragment of the same dtype and length references that fragment instead of
    /// being stored. Every substitution is recorded in the manifest. `None` (the default)
    /// keeps every byte.
    pub lossy_max_rel_error: Option<f64>,
    /// The source's revision to record in the manifest ([`ModelManifest::revision`]).
    pub revision: Option<String>,
    /// With `replace`: keep the model's older generations instead of deleting them once
    /// the new one is durable. The new generation becomes the current one (the newest);
    /// the older ones stay readable through [`FragmentLibrary::generations`], keep their
    /// fragments alive through gc, and go with the model at `remove`.
    pub keep_older_generations: bool,
}

impl std::fmt::Debug for IngestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestOptions")
            .field("replace", &self.replace)
            .field("lossy_max_rel_error", &self.lossy_max_rel_error)
            .field("revision", &self.revision)
            .field("keep_older_generations", &self.keep_older_generations)
            .finish_non_exhaustive()
    }
}

impl IngestOptions {
    /// Whether to replace an existing model of the same name instead of failing.
    pub fn replace(mut self, replace: bool) -> Self {
        self.replace = replace;
        self
    }

    /// Reports the ingest's progress to `progress`.
    pub fn progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Turns on lossy sharing with the largest relative L2 error allowed per fragment.
    pub fn lossy_max_rel_error(mut self, max: Option<f64>) -> Self {
        self.lossy_max_rel_error = max;
        self
    }

    /// Records the source's revision in the manifest (1 to 64 of `[0-9A-Za-z._-]`, see
    /// [`validate_revision`]; checked before anything is written).
    pub fn revision(mut self, revision: Option<String>) -> Self {
        self.revision = revision;
        self
    }

    /// With [`replace`](Self::replace): whether to keep the model's older generations
    /// rather than delete them (see [`IngestOptions::keep_older_generations`]).
    pub fn keep_older_generations(mut self, keep: bool) -> Self {
        self.keep_older_generations = keep;
        self
    }
}

/// What an ingest did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IngestReport {
    /// The model's name.
    pub model: String,
    /// Files ingested.
    pub files: u64,
    /// Tensors of the safetensors files.
    pub tensors: u64,
    /// Fragment references in the manifest.
    pub fragments: u64,
    /// Sum of the input files' sizes.
    pub logical_bytes: u64,
    /// Fragments that were not stored yet and were written.
    pub new_fragments: u64,
    /// Decoded bytes of those new fragments.
    pub new_fragment_bytes: u64,
    /// Bytes written to the store for them (after compression).
    pub stored_bytes: u64,
    /// Bytes of fragments that were already stored (exact dedup).
    pub dedup_bytes: u64,
    /// New fragments stored as deltas (against a similar fragment or a cast of one).
    pub delta_fragments: u64,
    /// Decoded bytes of those delta fragments.
    pub delta_fragment_bytes: u64,
    /// Stored bytes of those delta fragments.
    pub delta_stored_bytes: u64,
    /// New fragments stored as casts of an f32 fragment (no payload).
    pub cast_fragments: u64,
    /// Decoded bytes of those cast fragments.
    pub cast_fragment_bytes: u64,
    /// New quantized GGUF fragments stored as the reference quantization of a stored
    /// float fragment (no payload) or a correction against it.
    pub quant_fragments: u64,
    /// Decoded bytes of those quant-derived fragments.
    pub quant_fragment_bytes: u64,
    /// Stored bytes of those quant-derived fragments.
    pub quant_stored_bytes: u64,
    /// Fragments replaced by a similar stored one (lossy mode only).
    pub lossy_fragments: u64,
    /// Decoded bytes of those substituted fragments.
    pub lossy_fragment_bytes: u64,
    /// Largest relative L2 error of those substitutions.
    pub max_rel_error: f64,
    /// Time spent computing signatures, summed over workers.
    pub signature_seconds: f64,
    /// Size of the manifest object written.
    pub manifest_bytes: u64,
    /// Wall-clock duration of the ingest.
    pub seconds: f64,
    /// Problems that cost savings but not data (for example a damaged index segment).
    pub warnings: Vec<String>,
    /// Similarity index segments merged into one after this ingest (an ingest merges them
    /// once there are more than 32).
    pub index_segments_merged: u64,
    /// Stored fragments found damaged (recorded by `verify` or `repair`, or with a header
    /// that does not decode) and written again from this ingest's bytes.
    pub healed_fragments: u64,
}

/// One input file, validated.
struct SourceFile {
    abs: PathBuf,
    rel: String,
    size: u64,
    header: Option<SafetensorsHeader>,
    /// Set for a `.gguf` file.
    gguf: Option<GgufSource>,
}

/// A piece of a file on its way to the store.
struct Job {
    file: usize,
    seq: usize,
    data: Bytes,
    dtype: Option<Dtype>,
    /// Where a piece of a GGUF file goes in its manifest.
    role: Option<Role>,
    /// What a quantized GGUF fragment may be the quantization of.
    quant: Option<QuantOrigin>,
    /// Where to publish a float GGUF fragment's id for later files of the ingest.
    publish: Option<(Arc<Board>, BoardKey)>,
}

enum ReaderMsg {
    Job(Job),
    FileDone { file: usize, blake3: [u8; 32] },
}

impl FragmentLibrary {
    /// Ingests a `.safetensors` file or a model directory as model `name`.
    ///
    /// Every input file is validated before anything is written, so bad input changes
    /// nothing. Memory stays bounded by `io_concurrency` fragments whatever the model size.
    pub async fn ingest(
        &self,
        name: &str,
        path: &Path,
        opts: IngestOptions,
    ) -> Result<IngestReport> {
        let started = Instant::now();
        self.check_ingest(name, &opts).await?;
        let root = path.to_path_buf();
        let sources = tokio::task::spawn_blocking(move || scan_sources(&root))
            .await
            .map_err(join_error)??;
        self.ingest_sources(name, sources, opts, started).await
    }

    /// Ingests an explicit list of files as model `name`: each `(path, source)` stores the
    /// file at `source` (symlinks followed, wherever they point) under the relative
    /// `path` of the model. For sources that are not one directory tree, such as a
    /// Hugging Face cache snapshot whose files are symlinks into a shared blob directory.
    /// Validated up front like [`Self::ingest`]: paths must be safe and distinct, sources
    /// regular files.
    pub async fn ingest_files(
        &self,
        name: &str,
        files: Vec<(String, PathBuf)>,
        opts: IngestOptions,
    ) -> Result<IngestReport> {
        let started = Instant::now();
        self.check_ingest(name, &opts).await?;
        let mut files: Vec<(PathBuf, String)> =
            files.into_iter().map(|(rel, abs)| (abs, rel)).collect();
        files.sort_by(|a, b| a.1.cmp(&b.1));
        if let Some(w) = files.windows(2).find(|w| w[0].1 == w[1].1) {
            return Err(FragmentError::InvalidInput(format!(
                "file path {:?} given twice",
                w[0].1
            )));
        }
        let sources = tokio::task::spawn_blocking(move || validate_sources(files))
            .await
            .map_err(join_error)??;
        self.ingest_sources(name, sources, opts, started).await
    }

    /// The checks of an ingest's name and options, before any input is read.
    async fn check_ingest(&self, name: &str, opts: &IngestOptions) -> Result<()> {
        validate_model_name(name)?;
        if let Some(e) = opts.lossy_max_rel_error
            && !(e.is_finite() && e > 0.0 && e < 1.0)
        {
            return Err(FragmentError::InvalidInput(format!(
                "lossy max relative error {e} is outside (0, 1)"
            )));
        }
        if let Some(r) = &opts.revision {
            validate_revision(r)?;
        }
        if !opts.replace && !self.manifest_generations(name).await?.is_empty() {
            return Err(FragmentError::ModelExists(name.to_string()));
        }
        Ok(())
    }

    async fn ingest_sources(
        &self,
        name: &str,
        sources: Vec<SourceFile>,
        opts: IngestOptions,
        started: Instant,
    ) -> Result<IngestReport> {
        let lock = self.acquire_lock(LockKind::Ingest).await?;
        let result = self.ingest_locked(name, sources, &opts).await;
        lock.release().await;
        let mut report = result?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    async fn ingest_locked(
        &self,
        name: &str,
        sources: Vec<SourceFile>,
        opts: &IngestOptions,
    ) -> Result<IngestReport> {
        // Segments written since this library last looked (by other processes too).
        let index = self.refresh_index().await?;
        let total: u64 = sources.iter().map(|s| s.size).sum();
        if let Some(p) = &opts.progress {
            p.begin(total);
        }
        let sources = Arc::new(self.with_float_sources(sources).await?);
        // Fragments in flight: CPU work inside them is gated by `parallelism` (on_cpu).
        let in_flight = self.config().io_concurrency;
        // The fragments in flight are the reader's buffer; the channel only keeps the next
        // ones ready (a longer queue would hold that many more input buffers, beyond what
        // the buffer pool keeps, and each a fresh allocation).
        let queued = self.config().parallelism.max(1);
        let (tx, mut rx) = mpsc::channel::<ReaderMsg>(queued);
        let reader = {
            let sources = sources.clone();
            let fragment_size = self.config().fragment_size;
            let chunk_avg = self.config().blob_chunk_avg;
            tokio::task::spawn_blocking(move || {
                read_sources(&sources, fragment_size, chunk_avg, &tx)
            })
        };

        let policy = Policy {
            threshold: self.config().similarity_threshold,
            candidates: self.config().similarity_candidates,
            lossy_max_rel_error: opts.lossy_max_rel_error,
        };
        let session: Arc<Mutex<HashMap<FragmentId, Resolved>>> = Arc::default();
        // Stored fragments known damaged: met here, they are healed, not deduplicated.
        let damaged = Arc::new(self.damage_markers().await?);
        let mut slots: Vec<Vec<Option<Slot>>> = vec![Vec::new(); sources.len()];
        let mut hashes: Vec<Option<[u8; 32]>> = vec![None; sources.len()];
        let mut new_index_entries = Vec::new();
        let mut report = IngestReport {
            model: name.to_string(),
            warnings: index.warnings,
            ..Default::default()
        };

        let jobs = futures::stream::poll_fn(|cx| rx.poll_recv(cx)).filter_map(|msg| {
            let done = match msg {
                ReaderMsg::Job(job) => return futures::future::ready(Some(job)),
                ReaderMsg::FileDone { file, blake3 } => (file, blake3),
            };
            hashes[done.0] = Some(done.1);
            futures::future::ready(None)
        });
        let mut results = jobs
            .map(|job| {
                let (session, damaged) = (session.clone(), damaged.clone());
                async move { self.ingest_fragment(job, &session, &damaged, policy).await }
            })
            .buffer_unordered(in_flight);
        // What this ingest learnt of every stored object the model needs.
        let mut objects: HashMap<FragmentId, Learnt> = HashMap::new();
        while let Some(done) = results.next().await {
            let done = done?;
            let len = u64::from(done.fref.len);
            let learnt = objects.entry(done.fref.id).or_default();
            learnt.kind = learnt.kind.or(done.kind);
            if let Outcome::Written { stored_len, .. } = done.outcome {
                learnt.stored_len = Some(stored_len);
            }
            if let Some(dep) = done.fref.depends_on {
                // A dependency is standalone: deltas and casts have depth 1.
                objects.entry(dep).or_default().kind = Some(StoredKind::Standalone);
            }
            report.signature_seconds += done.signature_seconds;
            let mut lossy = None;
            match done.outcome {
                Outcome::Written {
                    encoding,
                    stored_len,
                    indexed,
                } => {
                    report.new_fragments += 1;
                    report.new_fragment_bytes += len;
                    report.stored_bytes += stored_len;
                    match encoding {
                        Encoding::Standalone { .. } => {}
                        Encoding::Delta { .. } | Encoding::CastDelta { .. } => {
                            report.delta_fragments += 1;
                            report.delta_fragment_bytes += len;
                            report.delta_stored_bytes += stored_len;
                        }
                        Encoding::Cast { .. } => {
                            report.cast_fragments += 1;
                            report.cast_fragment_bytes += len;
                        }
                        Encoding::Quant { .. } | Encoding::QuantDelta { .. } => {
                            report.quant_fragments += 1;
                            report.quant_fragment_bytes += len;
                            report.quant_stored_bytes += stored_len;
                        }
                    }
                    if indexed {
                        new_index_entries.push(done.original);
                    }
                }
                Outcome::Dedup => report.dedup_bytes += len,
                Outcome::Healed => {
                    report.healed_fragments += 1;
                    report.dedup_bytes += len;
                }
                Outcome::Substituted { rel_error } => {
                    report.lossy_fragments += 1;
                    report.lossy_fragment_bytes += len;
                    report.max_rel_error = report.max_rel_error.max(rel_error);
                    lossy = Some((done.original, rel_error));
                }
            }
            let file_slots = &mut slots[done.file];
            if file_slots.len() <= done.seq {
                file_slots.resize(done.seq + 1, None);
            }
            file_slots[done.seq] = Some(Slot {
                fref: done.fref,
                lossy,
                role: done.role,
            });
            if let Some(p) = &opts.progress {
                p.advance(len);
            }
        }
        drop(results);
        reader.await.map_err(join_error)??;

        let mut files = Vec::with_capacity(sources.len());
        let mut substitutions = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            let refs: Vec<Slot> = std::mem::take(&mut slots[i])
                .into_iter()
                .flatten()
                .collect();
            let blake3 = hashes[i].ok_or_else(|| {
                FragmentError::InvalidInput(format!("{}: file was not read completely", src.rel))
            })?;
            files.push(build_file_manifest(src, refs, blake3, &mut substitutions)?);
        }
        let objects = self.stored_objects(objects).await?;
        // Every fragment the manifest names durable first: those written here (deferred
        // puts) and those found stored (another writer's may not be durable yet).
        self.store().flush().await?;
        // The index is advisory, but written before the manifest so that a model that
        // exists always has its fragments indexed.
        self.write_index_segment(&new_index_entries).await?;
        let manifest = ModelManifest {
            name: name.to_string(),
            created_unix_ms: now_unix_ms(),
            files,
            lossy: substitutions,
            revision: opts.revision.clone(),
            objects,
        };
        report.files = manifest.files.len() as u64;
        report.tensors = manifest
            .files
            .iter()
            .map(|f| f.tensors().len() as u64)
            .sum();
        report.fragments = manifest.fragments().count() as u64;
        report.logical_bytes = manifest.logical_bytes();
        let key = self.put_manifest(&manifest).await?;
        report.manifest_bytes = self.store().head(&key).await?.map_or(0, |m| m.size);
        // Older generations are superseded only once the new one is durable.
        if !opts.keep_older_generations {
            for old in self.manifest_generations(name).await? {
                if old != key {
                    self.store().delete(&old).await?;
                }
            }
        }
        // The model is stored: from here on a failure costs savings, not the ingest.
        match self.merge_index_segments().await {
            Ok(n) => report.index_segments_merged = n,
            Err(e) => report.warnings.push(format!(
                "similarity index segments not merged ({e}); the next ingest or gc retries"
            )),
        }
        if let Some(p) = &opts.progress {
            p.finish();
        }
        Ok(report)
    }

    /// Hashes one fragment and, unless it is already stored, decides how to keep it
    /// (standalone, delta, cast reference or, in lossy mode, a substitute) and does it.
    async fn ingest_fragment(
        &self,
        job: Job,
        session: &Mutex<HashMap<FragmentId, Resolved>>,
        damaged: &HashSet<FragmentId>,
        policy: Policy,
    ) -> Result<Done> {
        let len = u32::try_from(job.data.len())
            .map_err(|_| FragmentError::InvalidInput("fragment larger than 4 GiB".into()))?;
        let id = self.hash(job.data.clone()).await?;
        let role = job.role;
        let publish = job.publish.clone();
        let done = |resolved: Resolved, outcome: Outcome, signature_seconds: f64| {
            // A float fragment a later file of this ingest may be quantized from.
            if let Some((board, key)) = &publish
                && resolved.id == id
            {
                board.publish(*key, id);
            }
            Done {
                file: job.file,
                seq: job.seq,
                role,
                fref: FragmentRef {
                    id: resolved.id,
                    len,
                    depends_on: resolved.depends_on,
                },
                original: id,
                kind: resolved.kind,
                outcome,
                signature_seconds,
            }
        };
        let lock = |s: &Mutex<HashMap<FragmentId, Resolved>>| {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .copied()
        };
        if let Some(resolved) = lock(session) {
            let outcome = match resolved.rel_error {
                Some(rel_error) => Outcome::Substituted { rel_error },
                None => Outcome::Dedup,
            };
            return Ok(done(resolved, outcome, 0.0));
        }
        // A stored copy whose header does not decode, or that `repair` recorded as
        // damaged, is written again from the bytes in hand instead of deduplicated.
        let (header, suspect) = match self.fragment_header(&id).await {
            Ok(header) => {
                let known = header.is_some() && damaged.contains(&id);
                (header, known)
            }
            Err(e) if e.is_corruption() => (None, true),
            Err(e) => return Err(e),
        };
        if suspect && self.heal_with(&id, job.data.clone()).await? {
            let resolved = Resolved {
                id,
                depends_on: None,
                kind: Some(StoredKind::Standalone),
                rel_error: None,
            };
            remember(session, id, resolved);
            return Ok(done(resolved, Outcome::Healed, 0.0));
        }
        if let Some(header) = header {
            let resolved = Resolved {
                id,
                depends_on: header.dependency(),
                kind: Some(StoredKind::of(&header.encoding)),
                rel_error: None,
            };
            remember(session, id, resolved);
            return Ok(done(resolved, Outcome::Dedup, 0.0));
        }

        // A quantized GGUF fragment: the reference quantization of a stored float one?
        let quant = match &job.quant {
            Some(origin) => self.place_quant(id, &job.data, origin).await?,
            None => None,
        };
        let state = self.similarity_state().cloned();
        let (signature, signature_seconds) = match (&state, job.dtype) {
            // A quantized fragment is signed over its dequantized values, so that it meets
            // its float source (and the other quants of it) in the index.
            (Some(state), _) if job.quant.is_some() => {
                let (state, data) = (state.clone(), job.data.clone());
                let to = job.quant.as_ref().map(|q| q.to);
                self.on_cpu(move || {
                    let started = Instant::now();
                    let values = to.and_then(|to| to.dequantize(&data));
                    let sig = values.and_then(|v| {
                        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        state.similarity.scheme.signature(&bytes, Some(Dtype::F32))
                    });
                    (sig, started.elapsed().as_secs_f64())
                })
                .await?
            }
            (Some(state), Some(dtype)) => {
                let (state, data) = (state.clone(), job.data.clone());
                self.on_cpu(move || {
                    let started = Instant::now();
                    let sig = state.similarity.scheme.signature(&data, Some(dtype));
                    (sig, started.elapsed().as_secs_f64())
                })
                .await?
            }
            _ => (None, 0.0),
        };
        let placement = match quant {
            Some(placement) => placement,
            None => {
                self.place_similar(id, job.data, job.dtype, signature.clone(), policy)
                    .await?
            }
        };
        let (resolved, outcome) = match placement {
            Placement::Written {
                encoding,
                stored_len,
            } => {
                if let (Some(state), Some(sig)) = (&state, &signature) {
                    let meta = EntryMeta {
                        len,
                        dtype: job.dtype,
                        standalone: matches!(encoding, Encoding::Standalone { .. }),
                    };
                    state.index().insert(id, sig, meta.pack())?;
                }
                let resolved = Resolved {
                    id,
                    depends_on: encoding.dependency(),
                    kind: Some(StoredKind::of(&encoding)),
                    rel_error: None,
                };
                (
                    resolved,
                    Outcome::Written {
                        encoding,
                        stored_len,
                        indexed: signature.is_some(),
                    },
                )
            }
            Placement::Raced { depends_on } => (
                Resolved {
                    id,
                    depends_on,
                    kind: None,
                    rel_error: None,
                },
                Outcome::Dedup,
            ),
            Placement::Substituted {
                substitute,
                depends_on,
                rel_error,
            } => (
                Resolved {
                    id: substitute,
                    depends_on,
                    kind: None,
                    rel_error: Some(rel_error),
                },
                Outcome::Substituted { rel_error },
            ),
        };
        remember(session, id, resolved);
        Ok(done(resolved, outcome, signature_seconds))
    }
}

impl FragmentLibrary {
    /// Gives the GGUF sources with legacy-quant tensors the stored float tensors they may
    /// have been quantized from (reading the current manifests, only when there is one).
    async fn with_float_sources(&self, mut sources: Vec<SourceFile>) -> Result<Vec<SourceFile>> {
        let quantized = |s: &SourceFile| s.gguf.as_ref().is_some_and(|g| g.has_legacy_quants());
        if !sources.iter().any(quantized) {
            return Ok(sources);
        }
        // Damaged manifests only cost this saving.
        let (manifests, _) = self.manifests_report().await?;
        for g in sources.iter_mut().filter_map(|s| s.gguf.as_mut()) {
            if g.has_legacy_quants() {
                g.find_float_sources(&manifests);
            }
        }
        // Float GGUF files read before quantized ones in this same ingest.
        let board = Arc::new(Board::default());
        let fragment_size = self.config().fragment_size;
        let mut files: Vec<Option<&mut GgufSource>> =
            sources.iter_mut().map(|s| s.gguf.as_mut()).collect();
        for j in 0..files.len() {
            if files[j].as_ref().is_some_and(|g| g.has_legacy_quants()) {
                GgufSource::link_same_ingest(&mut files, j, &board, fragment_size);
            }
        }
        Ok(sources)
    }
}

/// What an ingest learnt of one stored object on the way (see [`StoredObject`]).
#[derive(Clone, Copy, Debug, Default)]
struct Learnt {
    stored_len: Option<u64>,
    kind: Option<StoredKind>,
}

impl FragmentLibrary {
    /// The manifest's table of stored objects: what the ingest learnt, completed with a
    /// HEAD (size) or a header read and a HEAD (kind too) for objects it found stored.
    /// Costs requests only for fragments of this model, never for the rest of the library.
    async fn stored_objects(
        &self,
        learnt: HashMap<FragmentId, Learnt>,
    ) -> Result<Vec<StoredObject>> {
        let lookups = learnt.into_iter().map(|(id, l)| async move {
            let key = ObjectKey::fragment(&id);
            let (stored_len, kind) = match (l.stored_len, l.kind) {
                (Some(len), Some(kind)) => (Some(len), Some(kind)),
                (_, Some(kind)) => (self.store().head(&key).await?.map(|m| m.size), Some(kind)),
                (_, None) => match self.fragment_info(&id).await? {
                    Some(meta) => (Some(meta.stored_len), Some(StoredKind::of(&meta.encoding))),
                    None => (None, None),
                },
            };
            Ok::<_, FragmentError>(match (stored_len, kind) {
                (Some(stored_len), Some(kind)) => Some(StoredObject {
                    id,
                    stored_len,
                    kind,
                }),
                // Gone meanwhile: left out; readers then ask the store, as for old manifests.
                _ => None,
            })
        });
        let mut objects: Vec<StoredObject> = futures::stream::iter(lookups)
            .buffer_unordered(self.config().io_concurrency)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        objects.sort_by_key(|o| o.id);
        Ok(objects)
    }
}

/// How the fragments with one id were resolved earlier in the same ingest.
#[derive(Clone, Copy, Debug)]
struct Resolved {
    /// The fragment the manifest references: the original, or a lossy substitute.
    id: FragmentId,
    depends_on: Option<FragmentId>,
    /// How its object is stored, when this ingest learnt it on the way.
    kind: Option<StoredKind>,
    /// Set for a lossy substitute.
    rel_error: Option<f64>,
}

fn remember(session: &Mutex<HashMap<FragmentId, Resolved>>, id: FragmentId, r: Resolved) {
    session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, r);
}

enum Outcome {
    /// Already stored (before this ingest, earlier in it, or by a concurrent writer).
    Dedup,
    /// Stored but damaged, and written again (standalone) from the bytes read.
    Healed,
    Written {
        encoding: Encoding,
        stored_len: u64,
        /// Its signature went into the index.
        indexed: bool,
    },
    Substituted {
        rel_error: f64,
    },
}

/// One fragment, resolved.
struct Done {
    file: usize,
    seq: usize,
    role: Option<Role>,
    fref: FragmentRef,
    /// The id of the bytes read from the file.
    original: FragmentId,
    /// How the referenced fragment's object is stored, when known on the way.
    kind: Option<StoredKind>,
    outcome: Outcome,
    signature_seconds: f64,
}

/// A fragment reference in its file, with the original id when it was substituted.
#[derive(Clone, Copy, Debug)]
struct Slot {
    fref: FragmentRef,
    lossy: Option<(FragmentId, f64)>,
    role: Option<Role>,
}

/// Lists and validates the input: one safetensors or other file, or every regular file
/// under a directory (sorted by relative path).
fn scan_sources(path: &Path) -> Result<Vec<SourceFile>> {
    let meta = std::fs::metadata(path).map_err(|e| FragmentError::io("read", path, e))?;
    let mut files = Vec::new();
    if meta.is_file() {
        let rel = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            FragmentError::InvalidInput(format!("{}: file name is not UTF-8", path.display()))
        })?;
        files.push((path.to_path_buf(), rel.to_string()));
    } else if meta.is_dir() {
        let root =
            std::fs::canonicalize(path).map_err(|e| FragmentError::io("resolve", path, e))?;
        walk(&root, &root, &mut files)?;
        files.sort_by(|a, b| a.1.cmp(&b.1));
    } else {
        return Err(FragmentError::InvalidInput(format!(
            "{}: not a file or directory",
            path.display()
        )));
    }
    validate_sources(files)
}

/// Validates `(source, relative path)` pairs: safe paths, regular files (through
/// symlinks), safetensors headers. Keeps their order.
fn validate_sources(files: Vec<(PathBuf, String)>) -> Result<Vec<SourceFile>> {
    files
        .into_iter()
        .map(|(abs, rel)| {
            validate_relative_path(&rel)?;
            let meta = std::fs::metadata(&abs).map_err(|e| FragmentError::io("stat", &abs, e))?;
            if !meta.is_file() {
                return Err(FragmentError::InvalidInput(format!(
                    "{}: not a regular file",
                    abs.display()
                )));
            }
            let size = meta.len();
            let header = if rel.ends_with(".safetensors") {
                Some(safetensors::read_header(&abs)?)
            } else {
                None
            };
            let gguf = if rel.ends_with(".gguf") {
                Some(GgufSource::open(&abs)?)
            } else {
                None
            };
            Ok(SourceFile {
                abs,
                rel,
                size,
                header,
                gguf,
            })
        })
        .collect()
}

/// Collects regular files under `dir`. Symlinks are followed only to files inside `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| FragmentError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| FragmentError::io("list", dir, e))?;
        let path = entry.path();
        let ty = entry
            .file_type()
            .map_err(|e| FragmentError::io("stat", &path, e))?;
        let rel_of = |p: &Path| -> Result<String> {
            let rel = p.strip_prefix(root).map_err(|_| {
                FragmentError::InvalidInput(format!("{}: outside the model directory", p.display()))
            })?;
            let parts: Option<Vec<&str>> =
                rel.components().map(|c| c.as_os_str().to_str()).collect();
            parts.map(|p| p.join("/")).ok_or_else(|| {
                FragmentError::InvalidInput(format!(
                    "{}: file name is not valid UTF-8",
                    p.display()
                ))
            })
        };
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else if ty.is_file() {
            out.push((path.clone(), rel_of(&path)?));
        } else if ty.is_symlink() {
            let target = std::fs::canonicalize(&path)
                .map_err(|e| FragmentError::io("resolve symlink", &path, e))?;
            if !target.starts_with(root) {
                return Err(FragmentError::InvalidInput(format!(
                    "{}: symlink points outside the model directory (to {})",
                    path.display(),
                    target.display()
                )));
            }
            if !target.is_file() {
                return Err(FragmentError::InvalidInput(format!(
                    "{}: symlink to something other than a regular file",
                    path.display()
                )));
            }
            out.push((path.clone(), rel_of(&path)?));
        } else {
            return Err(FragmentError::InvalidInput(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The reader: streams every file once, in order, hashing it whole and cutting it into
/// jobs. Runs on a blocking thread; the bounded channel is the memory bound.
fn read_sources(
    sources: &[SourceFile],
    fragment_size: usize,
    chunk_avg: usize,
    tx: &mpsc::Sender<ReaderMsg>,
) -> Result<()> {
    for (file_idx, src) in sources.iter().enumerate() {
        let mut file = File::open(&src.abs).map_err(|e| FragmentError::io("open", &src.abs, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut seq = 0usize;
        let mut send_job = |data: Bytes,
                            dtype: Option<Dtype>,
                            role: Option<Role>,
                            quant: Option<QuantOrigin>,
                            publish: Option<(Arc<Board>, BoardKey)>| {
            let job = Job {
                file: file_idx,
                seq,
                data,
                dtype,
                role,
                quant,
                publish,
            };
            seq += 1;
            // A closed channel means the consumer failed; its error is the one to report.
            tx.blocking_send(ReaderMsg::Job(job))
                .map_err(|_| FragmentError::InvalidInput("ingest aborted".into()))
        };
        let mut send =
            |data: Bytes, dtype: Option<Dtype>, hasher: &mut blake3::Hasher| -> Result<()> {
                hasher.update(&data);
                send_job(data, dtype, None, None, None)
            };
        match (&src.header, &src.gguf) {
            (_, Some(gguf)) => {
                gguf.read(
                    &mut file,
                    &src.abs,
                    fragment_size,
                    &mut hasher,
                    &mut |cut| {
                        let data = Bytes::from(cut.data);
                        send_job(data, cut.dtype, Some(cut.role), cut.quant, cut.publish)
                    },
                )?;
            }
            (Some(header), None) => {
                let mut raw = vec![0u8; header.raw.len()];
                read_exact(&mut file, &mut raw, &src.abs)?;
                if raw != header.raw {
                    return Err(changed(&src.abs));
                }
                hasher.update(&raw);
                for t in &header.tensors {
                    let step = fragment_elements(fragment_size, t.dtype) * t.dtype.size();
                    let mut left = t.len();
                    while left > 0 {
                        let n = left.min(step as u64) as usize;
                        // A reused buffer (every byte is read over): no fresh pages per
                        // fragment; it comes back when the pipeline drops the fragment.
                        let mut buf = buffers::INPUT.take_filled(n);
                        read_exact(&mut file, &mut buf, &src.abs)?;
                        send(buffers::INPUT.into_bytes(buf), Some(t.dtype), &mut hasher)?;
                        left -= n as u64;
                    }
                }
            }
            (None, None) => {
                let avg = u32::try_from(chunk_avg).unwrap_or(u32::MAX);
                let chunker = fastcdc::v2020::StreamCDC::new(&mut file, avg / 4, avg, avg * 4);
                for chunk in chunker {
                    let chunk = chunk.map_err(|e| {
                        FragmentError::io("read", &src.abs, std::io::Error::other(e.to_string()))
                    })?;
                    send(Bytes::from(chunk.data), None, &mut hasher)?;
                }
            }
        }
        // The file must end where validation said it would.
        let mut probe = [0u8; 1];
        let extra = file
            .read(&mut probe)
            .map_err(|e| FragmentError::io("read", &src.abs, e))?;
        let read_total = match (&src.header, &src.gguf) {
            (_, Some(g)) => g.header.file_len,
            (Some(h), None) => h.file_len,
            (None, None) => src.size,
        };
        if extra != 0 || hasher.count() != read_total {
            return Err(changed(&src.abs));
        }
        tx.blocking_send(ReaderMsg::FileDone {
            file: file_idx,
            blake3: *hasher.finalize().as_bytes(),
        })
        .map_err(|_| FragmentError::InvalidInput("ingest aborted".into()))?;
    }
    Ok(())
}

fn read_exact(file: &mut File, buf: &mut [u8], path: &Path) -> Result<()> {
    file.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => changed(path),
        _ => FragmentError::io("read", path, e),
    })
}

fn changed(path: &Path) -> FragmentError {
    FragmentError::FileChanged {
        path: path.to_path_buf(),
    }
}

/// Assembles a file's manifest from its fragment references in file order, recording
/// lossy substitutions.
fn build_file_manifest(
    src: &SourceFile,
    slots: Vec<Slot>,
    blake3: [u8; 32],
    substitutions: &mut Vec<LossySubstitution>,
) -> Result<FileManifest> {
    let mut record = |tensor: &str, fragment: usize, slot: &Slot| {
        if let Some((original, rel_error)) = slot.lossy {
            substitutions.push(LossySubstitution {
                file: src.rel.clone(),
                tensor: tensor.to_string(),
                fragment: fragment as u32,
                original,
                substitute: slot.fref.id,
                rel_error,
            });
        }
    };
    let content = match &src.header {
        None if src.gguf.is_some() => {
            let gguf = src.gguf.as_ref().ok_or_else(|| {
                FragmentError::InvalidInput(format!("{}: not a GGUF file", src.rel))
            })?;
            let refs = slots
                .iter()
                .map(|s| (s.role.unwrap_or(Role::Metadata), s.fref))
                .collect();
            gguf.content(&src.rel, refs, &mut |tensor, index, pos| {
                record(tensor, index, &slots[pos]);
            })?
        }
        None => {
            slots.iter().enumerate().for_each(|(i, s)| record("", i, s));
            FileContent::Blob {
                chunks: slots.into_iter().map(|s| s.fref).collect(),
            }
        }
        Some(header) => {
            let mut slots = slots.into_iter();
            let tensors = header
                .tensors
                .iter()
                .map(|t| {
                    let mut fragments = Vec::new();
                    let mut covered = 0u64;
                    while covered < t.len() {
                        let slot = slots.next().ok_or_else(|| {
                            FragmentError::InvalidInput(format!("{}: missing fragments", src.rel))
                        })?;
                        record(&t.name, fragments.len(), &slot);
                        covered += u64::from(slot.fref.len);
                        fragments.push(slot.fref);
                    }
                    Ok(TensorRef {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        offset: t.start,
                        len: t.len(),
                        fragments,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            FileContent::Safetensors {
                header: header.raw.clone(),
                tensors,
            }
        }
    };
    Ok(FileManifest {
        path: src.rel.clone(),
        size: src.size,
        blake3,
        content,
    })
}
