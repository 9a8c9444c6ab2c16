//! The native `Model`: an open model's tensors, and reads of a whole tensor or of some of
//! its fragments, as [`FragmentBuffer`]s over the fragment bytes.
//!
//! Whole tensors are read with `FileReader::read_owned` (one buffer per tensor, the
//! fragments decoded into it), and may name the tensors expected next, which are then
//! read ahead ([`ReadAhead`]). Chosen fragments are read with `FileReader::stream`, which
//! fetches exactly the fragments of the range (no read-ahead), so a slice costs only the
//! fragments it touches.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use haagenti_fragments::{FragmentError, ModelHandle, TensorInfo};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::ahead::ReadAhead;
use crate::buffer::FragmentBuffer;
use crate::errors::invalid;
use crate::library::{Rt, block};

/// Tensors read at once by [`Model::read_tensors`] (each with its own fragments in
/// flight).
const TENSORS_IN_FLIGHT: usize = 2;

/// One tensor as Python sees it: `(name, dtype, shape, file, fragment lengths, key)`.
/// `key` names the tensor's content (BLAKE3 over its fragment ids): two tensors of equal
/// key hold the same bytes.
type TensorRow = (String, &'static str, Vec<u64>, String, Vec<u32>, String);

/// An open model (see `Library.safe_open`).
#[pyclass(frozen, module = "haagenti._native")]
#[derive(Debug)]
pub struct Model {
    handle: ModelHandle,
    rt: Rt,
    ahead: ReadAhead,
}

impl Model {
    pub fn new(handle: ModelHandle, rt: Rt) -> Self {
        // What one read keeps in flight: `in_flight` fragments of the model's largest.
        let largest = handle
            .tensors()
            .iter()
            .flat_map(|t| t.fragments.iter().map(|f| u64::from(f.len)))
            .max()
            .unwrap_or(0);
        let budget = largest.saturating_mul(handle.in_flight() as u64);
        Self {
            handle,
            rt,
            ahead: ReadAhead::new(budget),
        }
    }

    fn info(&self, index: usize) -> PyResult<&TensorInfo> {
        self.handle.tensors().get(index).ok_or_else(|| {
            invalid(format!(
                "tensor index {index} out of range for model {:?}",
                self.handle.name()
            ))
        })
    }
}

#[pymethods]
impl Model {
    #[getter]
    fn name(&self) -> &str {
        self.handle.name()
    }

    /// Every file: `(path, size)`, in manifest order.
    fn files(&self) -> Vec<(String, u64)> {
        let files = self.handle.files();
        files.iter().map(|f| (f.path.clone(), f.size)).collect()
    }

    /// Every tensor of every safetensors file, in file order (see [`TensorRow`]).
    fn tensors(&self) -> Vec<TensorRow> {
        self.handle
            .tensors()
            .iter()
            .map(|t| {
                let mut key = blake3::Hasher::new();
                for f in &t.fragments {
                    key.update(f.id.as_bytes());
                }
                (
                    t.name.clone(),
                    t.dtype.safetensors_name(),
                    t.shape.clone(),
                    t.file.clone(),
                    t.fragments.iter().map(|f| f.len).collect(),
                    key.finalize().to_hex().to_string(),
                )
            })
            .collect()
    }

    /// The ids (hex) of tensor `index`'s fragments, in order.
    fn fragment_ids(&self, index: usize) -> PyResult<Vec<String>> {
        Ok(self
            .info(index)?
            .fragments
            .iter()
            .map(|f| f.id.to_hex())
            .collect())
    }

    /// The JSON header of safetensors file `file` (without its length prefix), read from
    /// the manifest (no fragment is fetched).
    fn header<'py>(&self, py: Python<'py>, file: &str) -> PyResult<Bound<'py, PyBytes>> {
        let reader = self.handle.file(file).map_err(crate::errors::to_py)?;
        let bytes = block(py, &self.rt, || async move {
            let prefix = reader.read_at(0, 8).await?;
            let mut len = [0u8; 8];
            len.copy_from_slice(&prefix);
            let len = u64::from_le_bytes(len);
            reader.read_at(8, len).await
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The bytes of tensor `index`: its one fragment's bytes, or one buffer its fragments
    /// were decoded into. `next`: the tensors expected to be asked for next, in order, to
    /// read ahead (none: nothing is read ahead, and reads under way for other tensors are
    /// dropped).
    #[pyo3(signature = (index, next=Vec::new()))]
    fn read_tensor(
        &self,
        py: Python<'_>,
        index: usize,
        next: Vec<usize>,
    ) -> PyResult<FragmentBuffer> {
        let info = self.info(index)?.clone();
        let next = next
            .into_iter()
            .map(|i| Ok((i, self.info(i)?.clone())))
            .collect::<PyResult<Vec<_>>>()?;
        let bytes = block(py, &self.rt, || {
            self.ahead.read(&self.handle, index, &info, next)
        })?;
        Ok(FragmentBuffer::new(bytes))
    }

    /// `(tensors, bytes)` being read ahead now (for tests).
    fn _ahead(&self) -> (usize, u64) {
        self.ahead.size()
    }

    /// The most bytes read ahead at once, unless one tensor alone is larger (for tests).
    #[getter]
    fn _ahead_budget(&self) -> u64 {
        self.ahead.budget()
    }

    /// The bytes of tensors `indices` (as [`read_tensor`](Self::read_tensor) returns
    /// them), several tensors in flight at once so that small tensors do not wait for
    /// each other.
    fn read_tensors(&self, py: Python<'_>, indices: Vec<usize>) -> PyResult<Vec<FragmentBuffer>> {
        let infos = indices
            .iter()
            .map(|&i| self.info(i).cloned())
            .collect::<PyResult<Vec<TensorInfo>>>()?;
        let handle = self.handle.clone();
        let tensors: Vec<Bytes> = block(py, &self.rt, || async move {
            let handle = &handle;
            futures::stream::iter(infos.iter())
                .map(|info| read_whole(handle, info))
                .buffered(TENSORS_IN_FLIGHT)
                .try_collect()
                .await
        })?;
        Ok(tensors.into_iter().map(FragmentBuffer::new).collect())
    }

    /// The bytes of fragments `fragments` (indices, ascending) of tensor `index`, each
    /// one fragment's bytes as the cache holds them; runs of neighbouring fragments are
    /// fetched together.
    fn read_fragments(
        &self,
        py: Python<'_>,
        index: usize,
        fragments: Vec<usize>,
    ) -> PyResult<Vec<FragmentBuffer>> {
        let info = self.info(index)?;
        let mut starts = Vec::with_capacity(info.fragments.len() + 1);
        let mut at = info.offset;
        starts.push(at);
        for f in &info.fragments {
            at += u64::from(f.len);
            starts.push(at);
        }
        if fragments.windows(2).any(|w| w[0] >= w[1])
            || fragments.last().is_some_and(|&i| i >= info.fragments.len())
        {
            return Err(invalid(format!(
                "fragment indices {fragments:?} are not ascending indices of tensor {:?} ({} fragments)",
                info.name,
                info.fragments.len()
            )));
        }
        // Runs of consecutive indices: one stream each.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &i in &fragments {
            match runs.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => runs.push((i, i + 1)),
            }
        }
        let reader = self.handle.file(&info.file).map_err(crate::errors::to_py)?;
        let in_flight = reader.in_flight();
        let parts: Vec<Vec<Bytes>> = block(py, &self.rt, || async move {
            futures::stream::iter(runs.into_iter().map(|(a, b)| {
                reader
                    .stream(starts[a], starts[b] - starts[a])
                    .try_collect::<Vec<Bytes>>()
            }))
            .buffered(in_flight)
            .try_collect()
            .await
        })?;
        let parts: Vec<Bytes> = parts.into_iter().flatten().collect();
        if parts.len() != fragments.len() {
            return Err(to_corrupt(
                &self.handle,
                "fragment count differs from the manifest's",
            ));
        }
        Ok(parts.into_iter().map(FragmentBuffer::new).collect())
    }
}

/// Tensor `info`'s bytes in one buffer: its one fragment's bytes as they are (no copy),
/// or one buffer of the tensor's length into which its fragments are decoded
/// ([`FileReader::read_owned`](haagenti_fragments::FileReader::read_owned)).
pub async fn read_whole(handle: &ModelHandle, info: &TensorInfo) -> Result<Bytes, FragmentError> {
    handle
        .file(&info.file)?
        .read_owned(info.offset, info.len)
        .await
}

fn to_corrupt(handle: &ModelHandle, why: &str) -> PyErr {
    crate::errors::to_py(FragmentError::corrupt(
        format!("model {:?}", handle.name()),
        why,
    ))
}
