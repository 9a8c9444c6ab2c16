//! Ingest: validate every input file up front, then stream fragments through a bounded
//! pipeline (one sequential reader, `parallelism` hash/encode/store workers), then write
//! the manifest last.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::maintenance::LockKind;
use super::{FragmentLibrary, hash_blocking, join_error, now_unix_ms};
use crate::error::{FragmentError, Result};
use crate::manifest::{
    FileContent, FileManifest, FragmentRef, ModelManifest, TensorRef, validate_relative_path,
};
use crate::safetensors::{self, SafetensorsHeader};
use crate::types::{Dtype, FragmentId, validate_model_name};

/// Receives progress of long operations (ingest, export, verify). Implementations must
/// be cheap: `advance` is called once per fragment.
pub trait Progress: Send + Sync {
    /// Work is about to start on `total_bytes` bytes.
    fn begin(&self, total_bytes: u64);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// Options of [`FragmentLibrary::ingest`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct IngestOptions {
    /// Replace an existing model of the same name instead of failing.
    pub replace: bool,
    pub progress: Option<Arc<dyn Progress>>,
}

impl std::fmt::Debug for IngestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestOptions")
            .field("replace", &self.replace)
            .finish_non_exhaustive()
    }
}

impl IngestOptions {
    pub fn replace(mut self, replace: bool) -> Self {
        self.replace = replace;
        self
    }

    pub fn progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// What an ingest did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IngestReport {
    pub model: String,
    pub files: u64,
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
    pub manifest_bytes: u64,
    pub seconds: f64,
}

/// One input file, validated.
struct SourceFile {
    abs: PathBuf,
    rel: String,
    size: u64,
    header: Option<SafetensorsHeader>,
}

/// A piece of a file on its way to the store.
struct Job {
    file: usize,
    seq: usize,
    data: Bytes,
    dtype: Option<Dtype>,
}

enum ReaderMsg {
    Job(Job),
    FileDone { file: usize, blake3: [u8; 32] },
}

impl FragmentLibrary {
    /// Ingests a `.safetensors` file or a model directory as model `name`.
    ///
    /// Every input file is validated before anything is written, so bad input changes
    /// nothing. Memory stays bounded by `parallelism` fragments whatever the model size.
    pub async fn ingest(
        &self,
        name: &str,
        path: &Path,
        opts: IngestOptions,
    ) -> Result<IngestReport> {
        let started = Instant::now();
        validate_model_name(name)?;
        if !opts.replace && !self.manifest_generations(name).await?.is_empty() {
            return Err(FragmentError::ModelExists(name.to_string()));
        }
        let root = path.to_path_buf();
        let sources = tokio::task::spawn_blocking(move || scan_sources(&root))
            .await
            .map_err(join_error)??;

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
        let total: u64 = sources.iter().map(|s| s.size).sum();
        if let Some(p) = &opts.progress {
            p.begin(total);
        }
        let sources = Arc::new(sources);
        let parallelism = self.config().parallelism;
        let (tx, mut rx) = mpsc::channel::<ReaderMsg>(parallelism * 2);
        let reader = {
            let sources = sources.clone();
            let fragment_size = self.config().fragment_size;
            let chunk_avg = self.config().blob_chunk_avg;
            tokio::task::spawn_blocking(move || {
                read_sources(&sources, fragment_size, chunk_avg, &tx)
            })
        };

        let session: Arc<Mutex<HashMap<FragmentId, Option<FragmentId>>>> = Arc::default();
        let mut slots: Vec<Vec<Option<FragmentRef>>> = vec![Vec::new(); sources.len()];
        let mut hashes: Vec<Option<[u8; 32]>> = vec![None; sources.len()];
        let mut report = IngestReport {
            model: name.to_string(),
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
                let session = session.clone();
                async move { self.ingest_fragment(job, &session).await }
            })
            .buffer_unordered(parallelism);
        while let Some(done) = results.next().await {
            let (file, seq, fref, stored) = done?;
            let len = u64::from(fref.len);
            match stored {
                Some(bytes) => {
                    report.new_fragments += 1;
                    report.new_fragment_bytes += len;
                    report.stored_bytes += bytes;
                }
                None => report.dedup_bytes += len,
            }
            let file_slots = &mut slots[file];
            if file_slots.len() <= seq {
                file_slots.resize(seq + 1, None);
            }
            file_slots[seq] = Some(fref);
            if let Some(p) = &opts.progress {
                p.advance(len);
            }
        }
        drop(results);
        reader.await.map_err(join_error)??;

        let mut files = Vec::with_capacity(sources.len());
        for (i, src) in sources.iter().enumerate() {
            let refs: Vec<FragmentRef> = std::mem::take(&mut slots[i])
                .into_iter()
                .flatten()
                .collect();
            let blake3 = hashes[i].ok_or_else(|| {
                FragmentError::InvalidInput(format!("{}: file was not read completely", src.rel))
            })?;
            files.push(build_file_manifest(src, refs, blake3)?);
        }
        let manifest = ModelManifest {
            name: name.to_string(),
            created_unix_ms: now_unix_ms(),
            files,
            lossy: Vec::new(),
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
        for old in self.manifest_generations(name).await? {
            if old != key {
                self.store().delete(&old).await?;
            }
        }
        if let Some(p) = &opts.progress {
            p.finish();
        }
        Ok(report)
    }

    /// Hashes one fragment and stores it unless it is already stored. Returns its place,
    /// its reference and, when written, the stored size.
    async fn ingest_fragment(
        &self,
        job: Job,
        session: &Mutex<HashMap<FragmentId, Option<FragmentId>>>,
    ) -> Result<(usize, usize, FragmentRef, Option<u64>)> {
        let len = u32::try_from(job.data.len())
            .map_err(|_| FragmentError::InvalidInput("fragment larger than 4 GiB".into()))?;
        let id = hash_blocking(job.data.clone()).await?;
        let known = session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied();
        let (depends_on, stored) = match known {
            Some(dep) => (dep, None),
            None => {
                let put = self.put_hashed(id, job.data, job.dtype).await?;
                session
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, put.depends_on);
                (put.depends_on, put.created.then_some(put.stored_len))
            }
        };
        Ok((
            job.file,
            job.seq,
            FragmentRef {
                id,
                len,
                depends_on,
            },
            stored,
        ))
    }
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
    files
        .into_iter()
        .map(|(abs, rel)| {
            validate_relative_path(&rel)?;
            let size = std::fs::metadata(&abs)
                .map_err(|e| FragmentError::io("stat", &abs, e))?
                .len();
            let header = if rel.ends_with(".safetensors") {
                Some(safetensors::read_header(&abs)?)
            } else {
                None
            };
            Ok(SourceFile {
                abs,
                rel,
                size,
                header,
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
        let mut send =
            |data: Vec<u8>, dtype: Option<Dtype>, hasher: &mut blake3::Hasher| -> Result<()> {
                hasher.update(&data);
                let job = Job {
                    file: file_idx,
                    seq,
                    data: Bytes::from(data),
                    dtype,
                };
                seq += 1;
                // A closed channel means the consumer failed; its error is the one to report.
                tx.blocking_send(ReaderMsg::Job(job))
                    .map_err(|_| FragmentError::InvalidInput("ingest aborted".into()))
            };
        match &src.header {
            Some(header) => {
                let mut raw = vec![0u8; header.raw.len()];
                read_exact(&mut file, &mut raw, &src.abs)?;
                if raw != header.raw {
                    return Err(changed(&src.abs));
                }
                hasher.update(&raw);
                for t in &header.tensors {
                    let step = (fragment_size / t.dtype.size()).max(1) * t.dtype.size();
                    let mut left = t.len();
                    while left > 0 {
                        let n = left.min(step as u64) as usize;
                        let mut buf = vec![0u8; n];
                        read_exact(&mut file, &mut buf, &src.abs)?;
                        send(buf, Some(t.dtype), &mut hasher)?;
                        left -= n as u64;
                    }
                }
            }
            None => {
                let avg = u32::try_from(chunk_avg).unwrap_or(u32::MAX);
                let chunker = fastcdc::v2020::StreamCDC::new(&mut file, avg / 4, avg, avg * 4);
                for chunk in chunker {
                    let chunk = chunk.map_err(|e| {
                        FragmentError::io("read", &src.abs, std::io::Error::other(e.to_string()))
                    })?;
                    send(chunk.data, None, &mut hasher)?;
                }
            }
        }
        // The file must end where validation said it would.
        let mut probe = [0u8; 1];
        let extra = file
            .read(&mut probe)
            .map_err(|e| FragmentError::io("read", &src.abs, e))?;
        let read_total = match &src.header {
            Some(h) => h.file_len,
            None => src.size,
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
    FragmentError::InvalidInput(format!(
        "{}: file changed while it was being ingested",
        path.display()
    ))
}

/// Assembles a file's manifest from its fragment references in file order.
fn build_file_manifest(
    src: &SourceFile,
    refs: Vec<FragmentRef>,
    blake3: [u8; 32],
) -> Result<FileManifest> {
    let content = match &src.header {
        None => FileContent::Blob { chunks: refs },
        Some(header) => {
            let mut refs = refs.into_iter();
            let tensors = header
                .tensors
                .iter()
                .map(|t| {
                    let mut fragments = Vec::new();
                    let mut covered = 0u64;
                    while covered < t.len() {
                        let r = refs.next().ok_or_else(|| {
                            FragmentError::InvalidInput(format!("{}: missing fragments", src.rel))
                        })?;
                        covered += u64::from(r.len);
                        fragments.push(r);
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
