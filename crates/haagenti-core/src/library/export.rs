//! Export and verify: rebuild files through the read path (`reader.rs`), streaming, checking
//! every fragment against its id and every file against the hash recorded at ingest. File
//! writes and the whole-file hash run on a blocking thread fed by a bounded channel, so the
//! async runtime never waits on the disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::ingest::Progress;
use super::model::ModelHandle;
use super::reader::ModelFile;
use super::{DamagedManifest, FragmentLibrary, join_error};
use crate::error::{FragmentError, Result};
use crate::manifest::ModelManifest;

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ExportReport {
    /// The model's name.
    pub model: String,
    /// Files written.
    pub files: u64,
    /// Bytes written (the sum of the files' sizes).
    pub bytes: u64,
    /// Wall-clock duration of the export.
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
    /// Models checked.
    pub models: u64,
    /// Files rebuilt and checked, damaged ones included.
    pub files: u64,
    /// Bytes rebuilt (the sum of the checked files' sizes).
    pub bytes: u64,
    /// One line per damaged file, naming model, file, tensor and fragment.
    pub problems: Vec<String>,
    /// Files with lossy substitutions: every fragment and the length were checked, but not
    /// the source's whole-file hash, which their bytes cannot match.
    pub lossy_files: u64,
    /// Each model checked, with what was found (models with a damaged manifest are in
    /// `damaged` instead).
    pub per_model: Vec<ModelVerified>,
    /// Models whose current manifest cannot be read: each is also one line of `problems`;
    /// every other model is still verified in full.
    pub damaged: Vec<DamagedManifest>,
    /// When a file failed: every damaged fragment object of the checked models, once,
    /// with its users and dependants (the scan `repair` makes without sources).
    pub damaged_objects: Vec<super::DamagedFragment>,
}

/// One model's outcome in a [`VerifyReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelVerified {
    /// The model's name.
    pub model: String,
    /// Files rebuilt and checked.
    pub files: u64,
    /// Bytes rebuilt.
    pub bytes: u64,
    /// Damaged files found (each is a line of the report's `problems`).
    pub problems: u64,
}

impl VerifyReport {
    /// Whether no damage was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
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
        let manifest = self.manifest(name).await?;
        self.export_generation(&manifest, out_dir, progress).await
    }

    /// [`Self::export`] of one generation of a model, as [`Self::generations`] returns it.
    pub async fn export_generation(
        &self,
        manifest: &ModelManifest,
        out_dir: &Path,
        progress: Option<&dyn Progress>,
    ) -> Result<ExportReport> {
        let started = Instant::now();
        let model = self.open_generation(manifest)?;
        if let Some(p) = progress {
            p.begin(manifest.logical_bytes());
        }
        let mut report = ExportReport {
            model: manifest.name.clone(),
            lossy: manifest.is_lossy(),
            max_rel_error: manifest.max_rel_error(),
            ..Default::default()
        };
        for file in model.files() {
            let dest = out_dir.join(&file.path); // path validated when the manifest was decoded
            let partial = dest.with_file_name(format!(
                ".{}.haagenti-partial",
                dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
            ));
            let written = self
                .rebuild_file(&model, file, Some(partial.clone()), progress)
                .await;
            if let Err(e) = written {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            tokio::fs::rename(&partial, &dest)
                .await
                .map_err(|e| FragmentError::io("rename", &dest, e))?;
            report.files += 1;
            report.bytes += file.size;
            report.lossy_files += u64::from(file.lossy);
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
        // One model: its manifest must be readable. Every model: a damaged manifest is a
        // problem of its own and the other models are verified in full.
        let (manifests, damaged) = match name {
            Some(n) => (vec![self.manifest(n).await?], Vec::new()),
            None => self.manifests_report().await?,
        };
        if let Some(p) = progress {
            p.begin(manifests.iter().map(ModelManifest::logical_bytes).sum());
        }
        let mut report = VerifyReport {
            models: manifests.len() as u64,
            problems: damaged
                .iter()
                .map(|d| format!("{}: manifest {} unreadable: {}", d.model, d.key, d.error))
                .collect(),
            damaged,
            ..Default::default()
        };
        for manifest in &manifests {
            let model = ModelHandle::new(self.clone(), manifest);
            let mut status = ModelVerified {
                model: manifest.name.clone(),
                ..Default::default()
            };
            for file in model.files() {
                status.files += 1;
                status.bytes += file.size;
                report.lossy_files += u64::from(file.lossy);
                if let Err(e) = self.rebuild_file(&model, file, None, progress).await {
                    status.problems += 1;
                    report.problems.push(e.to_string());
                }
            }
            report.files += status.files;
            report.bytes += status.bytes;
            report.per_model.push(status);
        }
        if report.per_model.iter().any(|m| m.problems > 0) {
            // Name each damaged object once, with what depends on it. Verify stays
            // read-only (a dry run records nothing), so it works with read-only access.
            let models = report.per_model.iter().map(|m| m.model.clone()).collect();
            report.damaged_objects = self
                .repair(super::RepairOptions::default().models(models).dry_run(true))
                .await?
                .damaged;
        }
        if let Some(p) = progress {
            p.finish();
        }
        Ok(report)
    }

    /// Streams one file's bytes through the read path into a blocking writer that hashes
    /// them and, given a path, writes them there; then checks length and hash.
    ///
    /// Export and verify read the stored objects, never the fragment cache: their job is
    /// to check what is stored, and a bulk rebuild would only evict the fragments that
    /// model handles share.
    async fn rebuild_file(
        &self,
        model: &ModelHandle,
        file: &ModelFile,
        dest: Option<PathBuf>,
        progress: Option<&dyn Progress>,
    ) -> Result<()> {
        let reader = model.uncached_file(&file.path)?;
        // Hashing and writing run on two blocking threads, each fed the same pieces, so
        // the whole-file hash and the copy into the output file proceed side by side.
        let (hash_tx, hash_rx) = mpsc::channel::<Bytes>(reader.in_flight());
        let hasher = tokio::task::spawn_blocking(move || hash_pieces(hash_rx));
        let writer = dest.map(|dest| {
            let (tx, rx) = mpsc::channel::<Bytes>(reader.in_flight());
            (
                tx,
                tokio::task::spawn_blocking(move || write_pieces(rx, &dest)),
            )
        });
        let (write_tx, writer) = match writer {
            Some((tx, task)) => (Some(tx), Some(task)),
            None => (None, None),
        };
        let mut pieces = reader.stream(0, file.size);
        let mut streamed = Ok(());
        while let Some(piece) = pieces.next().await {
            let piece = match piece {
                Ok(p) => p,
                Err(e) => {
                    streamed = Err(e);
                    break;
                }
            };
            let len = piece.len() as u64;
            if let Some(tx) = &write_tx {
                if tx.send(piece.clone()).await.is_err() {
                    break; // the writer failed: its error is the one to report
                }
            }
            if hash_tx.send(piece).await.is_err() {
                break;
            }
            if let Some(p) = progress {
                p.advance(len);
            }
        }
        drop(write_tx);
        drop(hash_tx);
        let written = match writer {
            Some(task) => task.await.map_err(join_error)?,
            None => Ok(()),
        };
        let hashed = hasher.await.map_err(join_error)?;
        streamed?;
        written?;
        let (hash, count) = hashed;
        // A file with lossy substitutions cannot match the source's hash; its fragments were
        // each verified against their ids, and its length must still match.
        if count != file.size || (!file.lossy && hash != file.blake3) {
            return Err(FragmentError::FileHashMismatch {
                model: model.name().to_string(),
                file: file.path.clone(),
            });
        }
        Ok(())
    }
}

/// The hashing end of a rebuild: the BLAKE3 of what arrives and the byte count.
fn hash_pieces(mut rx: mpsc::Receiver<Bytes>) -> ([u8; 32], u64) {
    let mut hasher = blake3::Hasher::new();
    while let Some(bytes) = rx.blocking_recv() {
        hasher.update(&bytes);
    }
    (*hasher.finalize().as_bytes(), hasher.count())
}

/// The writing end of a rebuild: writes what arrives to `dest` (creating its directory),
/// flushing at the end.
fn write_pieces(mut rx: mpsc::Receiver<Bytes>, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| FragmentError::io("create directory", parent, e))?;
    }
    let file = std::fs::File::create(path).map_err(|e| FragmentError::io("create", path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    while let Some(bytes) = rx.blocking_recv() {
        out.write_all(&bytes)
            .map_err(|e| FragmentError::io("write", path, e))?;
    }
    out.flush().map_err(|e| FragmentError::io("write", path, e))
}
