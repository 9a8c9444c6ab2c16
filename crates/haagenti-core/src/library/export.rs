//! Export and verify: rebuild files from fragments, streaming, checking every fragment
//! against its id and every file against the hash recorded at ingest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use super::{FragmentLibrary, join_error};
use crate::error::{FragmentError, Result};
use crate::manifest::{FileContent, FileManifest, ModelManifest};
use crate::types::FragmentId;

use super::ingest::Progress;

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ExportReport {
    pub model: String,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// True when the model was ingested with a lossy option (bytes differ from the source).
    pub lossy: bool,
    /// Largest relative L2 error of a substituted fragment (0 when lossless).
    pub max_rel_error: f64,
    /// Files whose bytes differ from the ingested ones (their fragments are still verified).
    pub lossy_files: u64,
}

/// What a verification found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    pub models: u64,
    pub files: u64,
    pub bytes: u64,
    /// One line per damaged file, naming model, file, tensor and fragment.
    pub problems: Vec<String>,
    /// Files with lossy substitutions: every fragment and the length were checked, but not
    /// the source's whole-file hash, which their bytes cannot match.
    pub lossy_files: u64,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Where rebuilt bytes go.
trait Sink: Send {
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
}

struct NullSink;
impl Sink for NullSink {
    fn write(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
}

struct FileSink {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}
impl Sink for FileSink {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| FragmentError::io("write", &self.path, e))
    }
}

impl FragmentLibrary {
    /// Rebuilds every file of `name` under `out_dir` at its original relative path.
    /// Each file is written to a temporary name and renamed once its hash checks out.
    pub async fn export(
        &self,
        name: &str,
        out_dir: &Path,
        progress: Option<&dyn Progress>,
    ) -> Result<ExportReport> {
        let started = Instant::now();
        let manifest = self.manifest(name).await?;
        if let Some(p) = progress {
            p.begin(manifest.logical_bytes());
        }
        let mut report = ExportReport {
            model: name.to_string(),
            lossy: manifest.is_lossy(),
            max_rel_error: manifest.max_rel_error(),
            ..Default::default()
        };
        for file in &manifest.files {
            let dest = out_dir.join(&file.path); // path validated when the manifest was decoded
            let partial = dest.with_file_name(format!(
                ".{}.haagenti-partial",
                dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
            ));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| FragmentError::io("create directory", parent, e))?;
            }
            let out = std::fs::File::create(&partial)
                .map_err(|e| FragmentError::io("create", &partial, e))?;
            let mut sink = FileSink {
                path: partial.clone(),
                out: std::io::BufWriter::with_capacity(1 << 20, out),
            };
            let written = self
                .rebuild_file(&manifest, file, &mut sink, progress)
                .await;
            let flushed = written.and_then(|()| {
                sink.out
                    .flush()
                    .map_err(|e| FragmentError::io("write", &partial, e))
            });
            if let Err(e) = flushed {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            drop(sink);
            std::fs::rename(&partial, &dest).map_err(|e| FragmentError::io("rename", &dest, e))?;
            report.files += 1;
            report.bytes += file.size;
            report.lossy_files += u64::from(manifest.file_is_lossy(&file.path));
        }
        if let Some(p) = progress {
            p.finish();
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Rebuilds every file of one model (or of all models) without writing anything,
    /// checking every fragment and file hash. Damage is reported, not returned as an error.
    pub async fn verify(
        &self,
        name: Option<&str>,
        progress: Option<&dyn Progress>,
    ) -> Result<VerifyReport> {
        let names = match name {
            Some(n) => vec![n.to_string()],
            None => self.models().await?,
        };
        let mut manifests = Vec::with_capacity(names.len());
        for n in &names {
            manifests.push(self.manifest(n).await?);
        }
        if let Some(p) = progress {
            p.begin(manifests.iter().map(ModelManifest::logical_bytes).sum());
        }
        let mut report = VerifyReport {
            models: manifests.len() as u64,
            ..Default::default()
        };
        for manifest in &manifests {
            for file in &manifest.files {
                report.files += 1;
                report.bytes += file.size;
                report.lossy_files += u64::from(manifest.file_is_lossy(&file.path));
                if let Err(e) = self
                    .rebuild_file(manifest, file, &mut NullSink, progress)
                    .await
                {
                    report.problems.push(e.to_string());
                }
            }
        }
        if let Some(p) = progress {
            p.finish();
        }
        Ok(report)
    }

    /// Streams one file's bytes into `sink`, fetching fragments `parallelism` ahead.
    ///
    /// Export and verify read the stored objects, never the fragment cache: their job is
    /// to check what is stored, and a bulk rebuild would only evict the fragments that
    /// model handles share.
    async fn rebuild_file(
        &self,
        manifest: &ModelManifest,
        file: &FileManifest,
        sink: &mut dyn Sink,
        progress: Option<&dyn Progress>,
    ) -> Result<()> {
        let mut hasher = blake3::Hasher::new();
        // (where, fragment) in file order; `where` names the tensor for error messages.
        let pieces: Vec<(String, usize, FragmentId)> = match &file.content {
            FileContent::Safetensors { header, tensors } => {
                hasher.update(header);
                sink.write(header)?;
                tensors
                    .iter()
                    .flat_map(|t| {
                        t.fragments
                            .iter()
                            .enumerate()
                            .map(move |(i, r)| (t.name.clone(), i, r.id))
                    })
                    .collect()
            }
            FileContent::Blob { chunks } => chunks
                .iter()
                .enumerate()
                .map(|(i, r)| (String::new(), i, r.id))
                .collect(),
        };
        let mut fetched =
            futures::stream::iter(pieces.into_iter().map(|(tensor, i, id)| async move {
                self.uncached_fragment(&id).await.map_err(|e| {
                    let location = if tensor.is_empty() {
                        format!("file {} chunk {i} (fragment {})", file.path, id.short())
                    } else {
                        format!(
                            "file {} tensor {tensor} fragment {i} ({})",
                            file.path,
                            id.short()
                        )
                    };
                    e.in_model(&manifest.name, location)
                })
            }))
            .buffered(self.config().parallelism * 2);
        while let Some(data) = fetched.next().await {
            let data = data?;
            // Hash on a blocking thread: it is the one CPU-heavy step of a sequential writer.
            let (data, h) = tokio::task::spawn_blocking(move || {
                hasher.update(&data);
                (data, hasher)
            })
            .await
            .map_err(join_error)?;
            hasher = h;
            sink.write(&data)?;
            if let Some(p) = progress {
                p.advance(data.len() as u64);
            }
        }
        // A file with lossy substitutions cannot match the source's hash; its fragments were
        // each verified against their ids, and its length must still match.
        let hash_ok =
            manifest.file_is_lossy(&file.path) || hasher.finalize().as_bytes() == &file.blake3;
        if hasher.count() != file.size || !hash_ok {
            return Err(FragmentError::FileHashMismatch {
                model: manifest.name.clone(),
                file: file.path.clone(),
            });
        }
        Ok(())
    }
}
