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

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::FragmentLibrary;
use super::objects::{delta_object, quantize_source, standalone_object};
use super::similarity::{DELTA_MAX_FRACTION, Placement};
use crate::codec::EncodeHint;
use crate::error::{FragmentError, Result};
use crate::gguf::{GgmlType, GgufHeader, GgufPiece, GgufTensor};
use crate::manifest::{
    FileContent, FragmentRef, GgufGap, MAX_INLINE_GAP, ModelManifest, TensorRef,
};
use crate::types::{Dtype, Encoding, FragmentId, LegacyQuant, fragment_elements};

/// Most stored float fragments a quantized fragment is compared against.
const MAX_QUANT_CANDIDATES: usize = 2;

/// A stored float tensor a quantized tensor may have been made from: its dtype and
/// fragments.
#[derive(Clone, Debug)]
pub(super) struct FloatTensor {
    dtype: Dtype,
    fragments: Vec<FragmentRef>,
}

/// A fragment of a legacy quant type: its type and the stored float fragments covering
/// the same elements (possibly none).
#[derive(Clone, Debug)]
pub(super) struct QuantOrigin {
    pub(super) to: LegacyQuant,
    pub(super) candidates: Vec<(FragmentId, Dtype)>,
    /// Float fragments of earlier files of this ingest covering the same elements, by
    /// their place on the board.
    pending: Vec<(BoardKey, Dtype)>,
    board: Option<Arc<Board>>,
}

/// A float fragment of a GGUF file of this ingest: (file, tensor, first element).
pub(super) type BoardKey = (usize, usize, u64);

/// How long a quantized fragment waits for the float fragment of an earlier file of the
/// same ingest to be resolved (it was read first, so it is already on its way).
const BOARD_WAIT: Duration = Duration::from_secs(120);

/// The float fragments of the GGUF files of one ingest, published as they are resolved,
/// so that the quantized fragments of later files of the same ingest (a quant set in one
/// model directory) find their source.
#[derive(Debug, Default)]
pub(super) struct Board {
    resolved: Mutex<HashMap<BoardKey, FragmentId>>,
    notify: tokio::sync::Notify,
}

impl Board {
    /// Records that the float fragment at `key` is stored as `id`.
    pub(super) fn publish(&self, key: BoardKey, id: FragmentId) {
        self.resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, id);
        self.notify.notify_waiters();
    }

    /// The id of the float fragment at `key` once it is resolved; `None` after
    /// [`BOARD_WAIT`].
    async fn wait(&self, key: BoardKey) -> Option<FragmentId> {
        let deadline = tokio::time::Instant::now() + BOARD_WAIT;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(id) = self
                .resolved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
            {
                return Some(*id);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// A float tensor of an earlier GGUF file of the same ingest.
#[derive(Clone, Copy, Debug)]
struct PendingFloat {
    file: usize,
    tensor: usize,
    dtype: Dtype,
    elements: u64,
    /// Elements per fragment.
    step: u64,
}

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
    /// For a tensor of a legacy quant type: stored float tensors of the same name and
    /// shape (see [`Self::find_float_sources`]).
    float_sources: HashMap<usize, Vec<FloatTensor>>,
    /// For a tensor of a legacy quant type: float tensors of the same name and shape in
    /// earlier GGUF files of this ingest.
    pending_sources: HashMap<usize, Vec<PendingFloat>>,
    /// Set when this ingest has quantized files: where float fragments are published.
    board: Option<Arc<Board>>,
    /// This file's index in the ingest, when its float fragments are published.
    publish_as: Option<usize>,
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
    /// For a fragment of a legacy quant type: its type and what it may be the
    /// quantization of.
    pub(super) quant: Option<QuantOrigin>,
    /// For a float fragment a later file of the ingest may be quantized from: where to
    /// publish its id once resolved.
    pub(super) publish: Option<(Arc<Board>, BoardKey)>,
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
            float_sources: HashMap::new(),
            pending_sources: HashMap::new(),
            board: None,
            publish_as: None,
        })
    }

    /// Whether the file has tensors of a legacy quant type (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1).
    pub(super) fn has_legacy_quants(&self) -> bool {
        self.header
            .tensors
            .iter()
            .any(|t| LegacyQuant::from_ggml(t.ggml_type).is_some())
    }

    /// Records, for each legacy-quant tensor, the float tensors of `manifests` with its
    /// name and shape (F32, F16 or BF16, in GGUF or safetensors files).
    pub(super) fn find_float_sources(&mut self, manifests: &[ModelManifest]) {
        let mut floats: HashMap<(&str, Vec<u64>), Vec<FloatTensor>> = HashMap::new();
        for t in manifests
            .iter()
            .flat_map(|m| m.files.iter())
            .flat_map(|f| f.tensors())
        {
            if matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                let list = floats
                    .entry((t.name.as_str(), t.shape.clone()))
                    .or_default();
                if !list
                    .iter()
                    .any(|f| f.dtype == t.dtype && f.fragments == t.fragments)
                {
                    list.push(FloatTensor {
                        dtype: t.dtype,
                        fragments: t.fragments.clone(),
                    });
                }
            }
        }
        for (i, t) in self.header.tensors.iter().enumerate() {
            if LegacyQuant::from_ggml(t.ggml_type).is_none() {
                continue;
            }
            if let Some(list) = floats.get(&(t.name.as_str(), t.shape())) {
                self.float_sources.insert(i, list.clone());
            }
        }
    }

    /// Links the legacy-quant tensors of `files[quantized]` to the float tensors of the
    /// same name and shape in `files[..quantized]` (GGUF files of the same ingest), whose
    /// fragments are then published on `board` as they are resolved.
    pub(super) fn link_same_ingest(
        files: &mut [Option<&mut GgufSource>],
        quantized: usize,
        board: &Arc<Board>,
        fragment_size: usize,
    ) {
        let mut links: Vec<(usize, PendingFloat)> = Vec::new();
        let mut publishers = Vec::new();
        if let Some(Some(q)) = files.get(quantized) {
            for (i, earlier) in files[..quantized].iter().enumerate() {
                let Some(earlier) = earlier else { continue };
                for (ti, ft) in earlier.header.tensors.iter().enumerate() {
                    let Some(dtype) = ft
                        .ggml_type
                        .dtype()
                        .filter(|d| matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16))
                    else {
                        continue;
                    };
                    for (tj, qt) in q.header.tensors.iter().enumerate() {
                        if LegacyQuant::from_ggml(qt.ggml_type).is_some()
                            && qt.name == ft.name
                            && qt.dims == ft.dims
                        {
                            let (step, _) = fragment_step(ft.ggml_type, fragment_size);
                            links.push((
                                tj,
                                PendingFloat {
                                    file: i,
                                    tensor: ti,
                                    dtype,
                                    elements: ft.n_elements(),
                                    step,
                                },
                            ));
                            publishers.push(i);
                        }
                    }
                }
            }
        }
        if links.is_empty() {
            return;
        }
        for i in publishers {
            if let Some(Some(f)) = files.get_mut(i) {
                f.board = Some(board.clone());
                f.publish_as = Some(i);
            }
        }
        if let Some(Some(q)) = files.get_mut(quantized) {
            q.board = Some(board.clone());
            for (tj, p) in links {
                q.pending_sources.entry(tj).or_default().push(p);
            }
        }
    }

    /// Float fragments of earlier files of this ingest covering elements
    /// `first..first + n` of tensor `t`.
    fn pending(&self, t: usize, first: u64, n: u64) -> Vec<(BoardKey, Dtype)> {
        self.pending_sources
            .get(&t)
            .into_iter()
            .flatten()
            .filter(|p| first % p.step == 0 && n == p.step.min(p.elements - first))
            .map(|p| ((p.file, p.tensor, first), p.dtype))
            .take(MAX_QUANT_CANDIDATES)
            .collect()
    }

    /// The stored float fragments covering elements `first..first + n` of tensor `t`.
    fn candidates(&self, t: usize, first: u64, n: u64) -> Vec<(FragmentId, Dtype)> {
        let mut out = Vec::new();
        for f in self.float_sources.get(&t).into_iter().flatten() {
            let size = f.dtype.size() as u64;
            let mut at = 0u64;
            for r in &f.fragments {
                let count = u64::from(r.len) / size;
                if at == first && count == n && r.depends_on.is_none() {
                    out.push((r.id, f.dtype));
                    break;
                }
                if at > first {
                    break;
                }
                at += count;
            }
            if out.len() >= MAX_QUANT_CANDIDATES {
                break;
            }
        }
        out
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
                            quant: None,
                            publish: None,
                            role: Role::Metadata,
                        })?;
                    }
                }
                GgufPiece::Tensor(t) => {
                    let tensor = &h.tensors[*t];
                    let (_, step) = fragment_step(tensor.ggml_type, fragment_size);
                    let legacy = LegacyQuant::from_ggml(tensor.ggml_type);
                    let mut left = tensor.len;
                    let mut first = 0;
                    while left > 0 {
                        let n = left.min(step);
                        let mut buf = vec![0u8; n as usize];
                        read_exact(file, &mut buf, path)?;
                        hasher.update(&buf);
                        let elements =
                            n / tensor.ggml_type.type_size() * tensor.ggml_type.block_size();
                        let quant = legacy.map(|to| QuantOrigin {
                            to,
                            candidates: self.candidates(*t, first, elements),
                            pending: self.pending(*t, first, elements),
                            board: self.board.clone(),
                        });
                        let publish = match (&self.board, self.publish_as) {
                            (Some(board), Some(file)) if legacy.is_none() => {
                                Some((board.clone(), (file, *t, first)))
                            }
                            _ => None,
                        };
                        send(Cut {
                            data: buf,
                            dtype: tensor.ggml_type.dtype(),
                            quant,
                            publish,
                            role: Role::Tensor(*t),
                        })?;
                        first += elements;
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
                            quant: None,
                            publish: None,
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

impl FragmentLibrary {
    /// Stores a new quantized fragment as the reference quantization of one of its
    /// candidate float sources (no payload), or as a correction against it when that is
    /// at most [`DELTA_MAX_FRACTION`] of the standalone object. `None` when no candidate
    /// is a standalone fragment whose quantization is that close (the caller then stores
    /// the fragment as usual).
    pub(super) async fn place_quant(
        &self,
        id: FragmentId,
        data: &Bytes,
        origin: &QuantOrigin,
    ) -> Result<Option<Placement>> {
        let to = origin.to;
        let mut candidates = origin.candidates.clone();
        if let Some(board) = &origin.board {
            for &(key, from) in &origin.pending {
                if let Some(source) = board.wait(key).await
                    && !candidates.contains(&(source, from))
                {
                    candidates.push((source, from));
                }
            }
        }
        for &(source, from) in &candidates {
            let Some(src) = self.standalone_fragment(&source).await? else {
                continue;
            };
            let (codecs, data2) = (self.codecs().clone(), data.clone());
            let policy = self.config().codec_policy;
            let built = self
                .on_cpu(move || -> Result<Option<(Encoding, Vec<u8>)>> {
                    let Some(requant) = quantize_source(&src, from, to) else {
                        return Ok(None);
                    };
                    if requant.len() != data2.len() {
                        return Ok(None);
                    }
                    if requant[..] == data2[..] {
                        return Ok(Some((Encoding::Quant { source, from, to }, Vec::new())));
                    }
                    let hint = EncodeHint {
                        dtype: None,
                        policy,
                    };
                    let xor: Vec<u8> = requant
                        .iter()
                        .zip(data2.iter())
                        .map(|(a, b)| a ^ b)
                        .collect();
                    let encoding = Encoding::QuantDelta {
                        codec: codecs.encoder().tag(),
                        source,
                        from,
                        to,
                    };
                    let object = delta_object(&codecs, &encoding, &xor, hint)?;
                    let (_, standalone) = standalone_object(&codecs, &data2, hint)?;
                    Ok(
                        (object.len() as f64 <= DELTA_MAX_FRACTION * standalone.len() as f64)
                            .then_some((encoding, object)),
                    )
                })
                .await??;
            match built {
                Some((encoding @ Encoding::Quant { .. }, _)) => {
                    return self
                        .write_cast(id, encoding, data.len(), None)
                        .await
                        .map(|s| Some(Placement::from(s)));
                }
                Some((encoding, object)) => {
                    return self
                        .put_object(id, object, encoding)
                        .await
                        .map(|s| Some(Placement::from(s)));
                }
                None => {}
            }
        }
        Ok(None)
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
