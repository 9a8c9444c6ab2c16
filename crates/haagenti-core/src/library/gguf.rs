//! How ingest cuts a GGUF file and describes it in a manifest
//! ([`FileContent::Gguf`]).
//!
//! The metadata (fixed header, key-values, tensor infos) is kept verbatim as small
//! content-defined chunks, so that the nearly identical metadata of a quant set (the
//! same tokenizer, another `general.file_type` and other tensor infos) is stored once but
//! for a few chunks. Each tensor is cut like a safetensors tensor: a plain type on the
//! elements [`fragment_elements`] gives (an F16 tensor stored in both formats is one set
//! of fragments), a block type on the same elements rounded down to whole blocks (so a
//! quantized fragment covers the elements of one float fragment). Padding up to
//! [`MAX_INLINE_GAP`] bytes goes into the manifest; a larger gap is chunked.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{FragmentError, Result};
use crate::gguf::{GgmlType, GgufHeader, GgufPiece, GgufTensor};
use crate::manifest::{FileContent, FragmentRef, GgufGap, MAX_INLINE_GAP, TensorRef};
use crate::types::{Dtype, fragment_elements};

/// Average content-defined chunk of GGUF metadata (minimum a quarter, maximum 4x): small,
/// so that the key-value that differs between the files of a quant set costs one small
/// chunk.
pub(super) const METADATA_CHUNK_AVG: u32 = 16 << 10;

/// A GGUF input file, validated: its header and its small gaps' bytes.
#[derive(Debug)]
pub(super) struct GgufSource {
    pub(super) header: GgufHeader,
    /// The bytes of each gap of at most [`MAX_INLINE_GAP`] bytes, by piece index.
    inline_gaps: Vec<(usize, Vec<u8>)>,
}

/// What one piece of a GGUF file became, as the reader sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// A chunk of the metadata.
    Metadata,
    /// A fragment of tensor `i`.
    Tensor(usize),
    /// A chunk of the gap that is piece `i` of [`GgufHeader::pieces`].
    Gap(usize),
}

/// A fragment of a GGUF file on its way to the store.
pub(super) struct Cut {
    pub(super) data: Vec<u8>,
    /// The dtype of a plain-type tensor's fragment.
    pub(super) dtype: Option<Dtype>,
    pub(super) role: Role,
}

impl GgufSource {
    /// Reads and validates the header of the GGUF file at `path`, and the bytes of its
    /// small gaps.
    pub(super) fn open(path: &Path) -> Result<Self> {
        let header = crate::gguf::read_header(path)?;
        let mut inline_gaps = Vec::new();
        let mut file = File::open(path).map_err(|e| FragmentError::io("open", path, e))?;
        for (i, piece) in header.pieces.iter().enumerate() {
            if let GgufPiece::Padding(r) = piece
                && r.end - r.start <= MAX_INLINE_GAP as u64
            {
                let mut bytes = vec![0u8; (r.end - r.start) as usize];
                file.seek(SeekFrom::Start(r.start))
                    .map_err(|e| FragmentError::io("seek", path, e))?;
                read_exact(&mut file, &mut bytes, path)?;
                inline_gaps.push((i, bytes));
            }
        }
        Ok(Self {
            header,
            inline_gaps,
        })
    }

    /// Streams the file (positioned at its start) once, in order, as fragments handed to
    /// `send`; `hasher` sees every byte. Fails with [`FragmentError::FileChanged`] if the
    /// bytes differ from what validation read.
    pub(super) fn read(
        &self,
        file: &mut File,
        path: &Path,
        fragment_size: usize,
        hasher: &mut blake3::Hasher,
        send: &mut dyn FnMut(Cut) -> Result<()>,
    ) -> Result<()> {
        let h = &self.header;
        for (i, piece) in h.pieces.iter().enumerate() {
            match piece {
                GgufPiece::Metadata(_) => {
                    let mut raw = vec![0u8; h.raw.len()];
                    read_exact(file, &mut raw, path)?;
                    if raw != h.raw {
                        return Err(changed(path));
                    }
                    hasher.update(&raw);
                    let avg = METADATA_CHUNK_AVG;
                    for c in fastcdc::v2020::FastCDC::new(&raw, avg / 4, avg, avg * 4) {
                        send(Cut {
                            data: raw[c.offset..c.offset + c.length].to_vec(),
                            dtype: None,
                            role: Role::Metadata,
                        })?;
                    }
                }
                GgufPiece::Tensor(t) => {
                    let tensor = &h.tensors[*t];
                    let (_, step) = fragment_step(tensor.ggml_type, fragment_size);
                    let mut left = tensor.len;
                    while left > 0 {
                        let n = left.min(step);
                        let mut buf = vec![0u8; n as usize];
                        read_exact(file, &mut buf, path)?;
                        hasher.update(&buf);
                        send(Cut {
                            data: buf,
                            dtype: tensor.ggml_type.dtype(),
                            role: Role::Tensor(*t),
                        })?;
                        left -= n;
                    }
                }
                GgufPiece::Padding(r) => {
                    if let Some((_, bytes)) = self.inline_gaps.iter().find(|(p, _)| *p == i) {
                        let mut buf = vec![0u8; bytes.len()];
                        read_exact(file, &mut buf, path)?;
                        if &buf != bytes {
                            return Err(changed(path));
                        }
                        hasher.update(&buf);
                        continue;
                    }
                    let avg = METADATA_CHUNK_AVG * 16;
                    let take = Read::take(&mut *file, r.end - r.start);
                    for chunk in fastcdc::v2020::StreamCDC::new(take, avg / 4, avg, avg * 4) {
                        let chunk = chunk.map_err(|e| {
                            FragmentError::io("read", path, std::io::Error::other(e.to_string()))
                        })?;
                        hasher.update(&chunk.data);
                        send(Cut {
                            data: chunk.data,
                            dtype: None,
                            role: Role::Gap(i),
                        })?;
                    }
                }
            }
        }
        if hasher.count() != h.file_len {
            return Err(changed(path));
        }
        Ok(())
    }

    /// The manifest content of the file from its fragment references, given in the order
    /// [`read`](Self::read) sent them, each with its role. `record(tensor, index, ref)`
    /// is called for every tensor fragment.
    pub(super) fn content(
        &self,
        rel: &str,
        refs: Vec<(Role, FragmentRef)>,
        record: &mut dyn FnMut(&str, usize, usize),
    ) -> Result<FileContent> {
        let h = &self.header;
        let missing = || FragmentError::InvalidInput(format!("{rel}: missing fragments"));
        let mut metadata = Vec::new();
        let mut per_tensor: Vec<Vec<FragmentRef>> = vec![Vec::new(); h.tensors.len()];
        let mut chunked_gaps: Vec<(usize, Vec<FragmentRef>)> = Vec::new();
        for (pos, (role, r)) in refs.into_iter().enumerate() {
            match role {
                Role::Metadata => metadata.push(r),
                Role::Tensor(t) => {
                    let frags = per_tensor.get_mut(t).ok_or_else(missing)?;
                    record(&h.tensors[t].name, frags.len(), pos);
                    frags.push(r);
                }
                Role::Gap(i) => match chunked_gaps.last_mut() {
                    Some((p, chunks)) if *p == i => chunks.push(r),
                    _ => chunked_gaps.push((i, vec![r])),
                },
            }
        }
        let mut tensors = Vec::with_capacity(h.tensors.len());
        let mut ggml_types = Vec::with_capacity(h.tensors.len());
        let mut gaps = Vec::new();
        for (i, piece) in h.pieces.iter().enumerate() {
            match piece {
                GgufPiece::Metadata(_) => {}
                GgufPiece::Tensor(t) => {
                    let tensor = &h.tensors[*t];
                    let fragments = std::mem::take(&mut per_tensor[*t]);
                    let sum: u64 = fragments.iter().map(|r| u64::from(r.len)).sum();
                    if sum != tensor.len {
                        return Err(missing());
                    }
                    tensors.push(tensor_ref(tensor, fragments));
                    ggml_types.push(tensor.ggml_type.id());
                }
                GgufPiece::Padding(r) => {
                    if let Some((_, bytes)) = self.inline_gaps.iter().find(|(p, _)| *p == i) {
                        gaps.push(GgufGap::Inline {
                            offset: r.start,
                            bytes: bytes.clone(),
                        });
                    } else {
                        let chunks = chunked_gaps
                            .iter_mut()
                            .find(|(p, _)| *p == i)
                            .map(|(_, c)| std::mem::take(c))
                            .ok_or_else(missing)?;
                        gaps.push(GgufGap::Chunks {
                            offset: r.start,
                            chunks,
                        });
                    }
                }
            }
        }
        Ok(FileContent::Gguf {
            metadata,
            tensors,
            ggml_types,
            gaps,
        })
    }
}

/// Elements and bytes of one fragment of a `ty` tensor: a plain type as safetensors cuts
/// it, a block type on the same elements rounded down to whole blocks (one block at
/// least).
pub(super) fn fragment_step(ty: GgmlType, fragment_size: usize) -> (u64, u64) {
    match ty.dtype() {
        Some(dtype) => {
            let elements = fragment_elements(fragment_size, dtype) as u64;
            (elements, elements * dtype.size() as u64)
        }
        None => {
            let plain = fragment_elements(fragment_size, Dtype::F16) as u64;
            let blocks = (plain / ty.block_size()).max(1);
            (blocks * ty.block_size(), blocks * ty.type_size())
        }
    }
}

/// A tensor's manifest entry: a plain type with its dtype and shape, a block type as
/// `U8` bytes.
fn tensor_ref(t: &GgufTensor, fragments: Vec<FragmentRef>) -> TensorRef {
    let (dtype, shape) = match t.ggml_type.dtype() {
        Some(dtype) => (dtype, t.shape()),
        None => (Dtype::U8, vec![t.len]),
    };
    TensorRef {
        name: t.name.clone(),
        dtype,
        shape,
        offset: t.start,
        len: t.len,
        fragments,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_types_cut_on_the_elements_of_float_fragments() {
        let fs = 1 << 20;
        assert_eq!(fragment_step(GgmlType::F16, fs), (1 << 19, 1 << 20));
        assert_eq!(fragment_step(GgmlType::F32, fs), (1 << 19, 2 << 20));
        assert_eq!(fragment_step(GgmlType::Q8_0, fs), (1 << 19, (1 << 14) * 34));
        assert_eq!(fragment_step(GgmlType::Q4_0, fs), (1 << 19, (1 << 14) * 18));
        assert_eq!(
            fragment_step(GgmlType::Q6_K, fs),
            (1 << 19, (1 << 11) * 210)
        );
        // A fragment size that is not a multiple of the block: rounded down.
        let (elements, bytes) = fragment_step(GgmlType::Q4_K, 100_000);
        assert_eq!((elements % 256, bytes % 144), (0, 0));
        assert!(elements <= 50_000);
    }
}
