//! An open model: [`ModelHandle`], its files and its tensors.
//!
//! Reading a tensor fetches only its fragments, through the library's shared cache, so
//! switching to a model that shares fragments with one loaded before fetches only the rest.
//! A tensor holds its fragments' cached bytes as they are: loading never copies them.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::FragmentLibrary;
use super::objects::Via;
use super::reader::{FileLayout, FileReader, ModelFile, join};
use crate::error::{FragmentError, Result};
use crate::manifest::{FragmentRef, ModelManifest};
use crate::types::Dtype;

/// Where a tensor of a model lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, as in the safetensors header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// The model file holding it (relative path).
    pub file: String,
    /// Byte offset of its data in that file.
    pub offset: u64,
    /// Length of its data in bytes.
    pub len: u64,
    /// Its fragments, in order.
    pub fragments: Vec<FragmentRef>,
}

/// A tensor read from the library: its bytes as in the source file, held as the bytes of
/// its fragments, shared with the cache and every other reader (never copied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    /// The tensor's name, as in the safetensors header.
    pub name: String,
    /// The model file holding it (relative path).
    pub file: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// The fragments' bytes, in order; together exactly the tensor's data.
    pub parts: Vec<Bytes>,
}

impl Tensor {
    /// Length of the tensor's data in bytes.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    /// Whether the tensor has no data (a tensor of zero elements).
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    /// The data in one buffer: the single fragment's bytes without a copy, or the parts
    /// concatenated once.
    pub fn to_bytes(&self) -> Bytes {
        join(&self.parts)
    }
}

/// An open model: its files and tensors, and reads of any byte range of a file, of one
/// tensor or of all of them.
///
/// Cheap to clone. Reads go through the library's fragment cache, shared by every handle
/// and clone of the library, and through the one read path of [`FileReader`].
#[derive(Clone, Debug)]
pub struct ModelHandle {
    library: FragmentLibrary,
    name: Arc<str>,
    files: Arc<[ModelFile]>,
    layouts: Arc<[Arc<FileLayout>]>,
    tensors: Arc<[TensorInfo]>,
}

impl FragmentLibrary {
    /// Opens model `name` for reading (reads its manifest, nothing else).
    pub async fn open_model(&self, name: &str) -> Result<ModelHandle> {
        let manifest = self.manifest(name).await?;
        Ok(ModelHandle::new(self.clone(), &manifest))
    }

    /// Opens one generation of a model for reading, as [`Self::generations`] returns it
    /// (or any manifest of this library; it is validated first).
    pub fn open_generation(&self, manifest: &ModelManifest) -> Result<ModelHandle> {
        manifest.validate()?;
        Ok(ModelHandle::new(self.clone(), manifest))
    }
}

impl ModelHandle {
    pub(super) fn new(library: FragmentLibrary, manifest: &ModelManifest) -> Self {
        let layouts: Arc<[Arc<FileLayout>]> = manifest
            .files
            .iter()
            .map(|f| Arc::new(FileLayout::new(f, manifest.file_is_lossy(&f.path))))
            .collect();
        let tensors = manifest
            .files
            .iter()
            .flat_map(|f| {
                f.tensors().iter().map(|t| TensorInfo {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    file: f.path.clone(),
                    offset: t.offset,
                    len: t.len,
                    fragments: t.fragments.clone(),
                })
            })
            .collect();
        Self {
            library,
            name: Arc::from(manifest.name.as_str()),
            files: layouts.iter().map(|l| l.file.clone()).collect(),
            layouts,
            tensors,
        }
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every file of the model, in manifest order.
    pub fn files(&self) -> &[ModelFile] {
        &self.files
    }

    /// A reader of any byte range of the file at relative path `path`, through the
    /// library's fragment cache.
    pub fn file(&self, path: &str) -> Result<FileReader> {
        self.reader(path, Via::Cache)
    }

    /// A reader for bytes read once because the consumer keeps them, as the kernel's page
    /// cache does behind `haagenti mount`: it serves what the fragment cache holds and
    /// caches delta bases and cast sources as [`file`](Self::file) does, but does not
    /// keep the fragments it reads (decoding then reuses pooled buffers instead of fresh
    /// memory for every fragment).
    pub fn file_read_once(&self, path: &str) -> Result<FileReader> {
        self.reader(path, Via::Peek)
    }

    /// A reader that bypasses the cache for the file and the fragments it depends on: what
    /// export and verify use, since their job is to check what is stored.
    pub(super) fn uncached_file(&self, path: &str) -> Result<FileReader> {
        self.reader(path, Via::Store)
    }

    fn reader(&self, path: &str, via: Via) -> Result<FileReader> {
        let layout = self
            .layouts
            .iter()
            .find(|l| l.file.path == path)
            .ok_or_else(|| FragmentError::NotInModel {
                model: self.name.to_string(),
                what: "file",
                name: path.to_string(),
            })?;
        Ok(FileReader::new(
            self.library.clone(),
            self.name.clone(),
            layout.clone(),
            via,
        ))
    }

    /// Every tensor of every safetensors file of the model, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Sum of the tensors' lengths.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len).sum()
    }

    /// The tensor called `name`; an error if there is none, or if several files of the
    /// model hold one of that name (then pick from [`tensors`](Self::tensors) and use
    /// [`read`](Self::read)).
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        let mut found = self.tensors.iter().filter(|t| t.name == name);
        let first = found.next().ok_or_else(|| FragmentError::NotInModel {
            model: self.name.to_string(),
            what: "tensor",
            name: name.to_string(),
        })?;
        if let Some(other) = found.next() {
            return Err(FragmentError::AmbiguousTensor {
                model: self.name.to_string(),
                tensor: name.to_string(),
                files: format!("{}, {}, ...", first.file, other.file),
            });
        }
        Ok(first)
    }

    /// Reads the tensor called `name` (see [`tensor`](Self::tensor)).
    pub async fn read_tensor(&self, name: &str) -> Result<Tensor> {
        self.read(self.tensor(name)?).await
    }

    /// Reads one tensor, fetching its fragments [`in_flight`](Self::in_flight) at a time.
    pub async fn read(&self, info: &TensorInfo) -> Result<Tensor> {
        let parts: Vec<Bytes> = self
            .file(&info.file)?
            .stream(info.offset, info.len)
            .try_collect()
            .await?;
        Ok(tensor(info, parts))
    }

    /// Reads every tensor, in [`tensors`](Self::tensors) order, keeping
    /// [`in_flight`](Self::in_flight) fragments in flight across tensor boundaries.
    pub async fn load_all(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.tensors.len());
        let mut infos = self.tensors.iter().peekable();
        for file in self.files.iter() {
            let in_file: Vec<&TensorInfo> =
                std::iter::from_fn(|| infos.next_if(|t| t.file == file.path)).collect();
            let (Some(first), Some(last)) = (in_file.first(), in_file.last()) else {
                continue;
            };
            // Padding between tensors (GGUF): one read per tensor.
            if in_file
                .windows(2)
                .any(|w| w[0].offset + w[0].len != w[1].offset)
            {
                for info in in_file {
                    out.push(self.read(info).await?);
                }
                continue;
            }
            // The tensors tile the file after its header: one stream reads them all.
            let start = first.offset;
            let mut parts = self
                .file(&file.path)?
                .stream(start, last.offset + last.len - start);
            // Fragments never cross a tensor boundary, so each tensor takes whole parts.
            for info in in_file {
                let mut tensor_parts = Vec::with_capacity(info.fragments.len());
                let mut got = 0;
                while got < info.len {
                    match parts.next().await {
                        Some(part) => {
                            let part = part?;
                            got += part.len() as u64;
                            tensor_parts.push(part);
                        }
                        None => return Err(self.corrupt(info, "fragment stream ended early")),
                    }
                }
                if got != info.len {
                    return Err(self.corrupt(info, "fragments cross the tensor's end"));
                }
                out.push(tensor(info, tensor_parts));
            }
        }
        Ok(out)
    }

    /// Fragments fetched at once: twice the library's `parallelism` (as export does), so
    /// that decoding never waits for a read.
    pub fn in_flight(&self) -> usize {
        self.library.config().parallelism.saturating_mul(2).max(1)
    }

    fn corrupt(&self, info: &TensorInfo, why: &str) -> FragmentError {
        FragmentError::corrupt(
            format!(
                "model {:?} file {} tensor {}",
                self.name, info.file, info.name
            ),
            why,
        )
    }
}

/// A tensor from its parts (the read path checked their lengths against the manifest).
fn tensor(info: &TensorInfo, parts: Vec<Bytes>) -> Tensor {
    Tensor {
        name: info.name.clone(),
        file: info.file.clone(),
        dtype: info.dtype,
        shape: info.shape.clone(),
        parts,
    }
}
