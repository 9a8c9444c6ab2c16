//! Random access to a model's tensors: [`ModelHandle`].
//!
//! Reading a tensor fetches only its fragments, through the library's shared cache, so
//! switching to a model that shares fragments with one loaded before fetches only the rest.
//! A tensor holds its fragments' cached bytes as they are: loading never copies them.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};

use super::{FragmentLibrary, join_error};
use crate::error::{FragmentError, Result};
use crate::manifest::FragmentRef;
use crate::types::{Dtype, FragmentId};

/// Where a tensor of a model lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
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
    pub name: String,
    pub file: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// The fragments' bytes, in order; together exactly the tensor's data.
    pub parts: Vec<Bytes>,
}

impl Tensor {
    /// Length of the tensor's data in bytes.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    /// The data in one buffer: the single fragment's bytes without a copy, or the parts
    /// concatenated once.
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut joined = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
                many.iter().for_each(|p| joined.extend_from_slice(p));
                joined.freeze()
            }
        }
    }
}

/// An open model: its tensor list, and reads of single tensors or all of them.
///
/// Cheap to clone. Reads go through the library's fragment cache, shared by every handle
/// and clone of the library.
#[derive(Clone, Debug)]
pub struct ModelHandle {
    library: FragmentLibrary,
    name: String,
    tensors: Arc<[TensorInfo]>,
}

impl FragmentLibrary {
    /// Opens model `name` for reading tensors (reads its manifest, nothing else).
    pub async fn open_model(&self, name: &str) -> Result<ModelHandle> {
        let manifest = self.manifest(name).await?;
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
        Ok(ModelHandle {
            library: self.clone(),
            name: manifest.name,
            tensors,
        })
    }
}

impl ModelHandle {
    pub fn name(&self) -> &str {
        &self.name
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
            model: self.name.clone(),
            what: "tensor",
            name: name.to_string(),
        })?;
        if let Some(other) = found.next() {
            return Err(FragmentError::AmbiguousTensor {
                model: self.name.clone(),
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
            .fetch(info)
            .buffered(self.in_flight())
            .try_collect()
            .await?;
        self.assemble(info, parts)
    }

    /// Reads every tensor, in [`tensors`](Self::tensors) order, keeping
    /// [`in_flight`](Self::in_flight) fragments in flight across tensor boundaries.
    pub async fn load_all(&self) -> Result<Vec<Tensor>> {
        let mut fetched = futures::stream::iter(self.tensors.iter())
            .flat_map(|t| self.fetch(t))
            .buffered(self.in_flight());
        let mut out = Vec::with_capacity(self.tensors.len());
        for info in self.tensors.iter() {
            let mut parts = Vec::with_capacity(info.fragments.len());
            for _ in 0..info.fragments.len() {
                match fetched.next().await {
                    Some(part) => parts.push(part?),
                    None => return Err(self.corrupt(info, "fragment stream ended early")),
                }
            }
            out.push(self.assemble(info, parts)?);
        }
        Ok(out)
    }

    /// Fragments fetched at once: twice the library's `parallelism` (as export does), so
    /// that decoding never waits for a read.
    pub fn in_flight(&self) -> usize {
        self.library.config().parallelism.saturating_mul(2)
    }

    /// One future per fragment of `info`, each fetching on its own task so fetches advance
    /// while the caller assembles earlier tensors.
    fn fetch<'a>(
        &'a self,
        info: &'a TensorInfo,
    ) -> impl futures::Stream<Item = impl Future<Output = Result<Bytes>> + 'a> + 'a {
        futures::stream::iter(info.fragments.iter().enumerate()).map(move |(i, r)| {
            let library = self.library.clone();
            let id = r.id;
            async move {
                let task = tokio::spawn(async move { library.get_fragment(&id).await });
                task.await
                    .map_err(join_error)?
                    .map_err(|e| self.context(info, i, &id, e))
            }
        })
    }

    /// The tensor from its fragments, checked against its length.
    fn assemble(&self, info: &TensorInfo, parts: Vec<Bytes>) -> Result<Tensor> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if total != info.len {
            return Err(self.corrupt(info, "fragments do not add up to the tensor's length"));
        }
        Ok(Tensor {
            name: info.name.clone(),
            file: info.file.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            parts,
        })
    }

    fn context(
        &self,
        info: &TensorInfo,
        i: usize,
        id: &FragmentId,
        e: FragmentError,
    ) -> FragmentError {
        e.in_model(
            &self.name,
            format!(
                "file {} tensor {} fragment {i} ({})",
                info.file,
                info.name,
                id.short()
            ),
        )
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
