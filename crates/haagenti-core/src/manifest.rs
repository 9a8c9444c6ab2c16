//! Model manifests: how to rebuild every file of a model from fragments.
//!
//! Manifests are immutable objects. Encoding (see `docs/format.md`):
//! `"HGMF"`, manifest format version (1 byte), BLAKE3 of the body (32 bytes), body
//! (bincode 2, standard config, decoded with a size limit). Version 2 added
//! [`ModelManifest::revision`], version 3 [`ModelManifest::objects`]; version 1 and 2
//! bodies still decode (without them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::MAX_DECODED_LEN;
use crate::error::{FragmentError, Result};
use crate::types::{Dtype, Encoding, FragmentId, FragmentType, validate_model_name};

/// The first four bytes of every manifest object.
pub const MANIFEST_MAGIC: [u8; 4] = *b"HGMF";
/// The manifest format version [`ModelManifest::encode`] writes. Manifests have their own
/// version (fragment objects keep `LIBRARY_FORMAT_VERSION`): 1 is the body without
/// `revision`, 2 added it, 3 added `objects`. Decoding accepts all three.
pub const MANIFEST_FORMAT_VERSION: u8 = 3;
/// Upper bound on a decoded manifest; a hostile length prefix cannot allocate more.
pub(crate) const MAX_MANIFEST_LEN: usize = 1 << 30;

/// A reference from a file to one fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentRef {
    /// The fragment's content address.
    pub id: FragmentId,
    /// Decoded length in bytes.
    pub len: u32,
    /// The fragment this one's stored object depends on (delta base or cast source), so
    /// garbage collection can mark from manifests alone.
    pub depends_on: Option<FragmentId>,
}

/// How a fragment object is stored, as far as statistics care. Persisted by its variant
/// index (bincode): 0, 1, 2, 3 are fixed forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StoredKind {
    /// Compressed (or raw) on its own.
    Standalone,
    /// An XOR delta against a base (of the same dtype, or of a cast of an f32 source).
    Delta,
    /// A cast of an f32 source: a header, no payload.
    Cast,
    /// A quantized GGUF fragment derived from a float source: the reference quantization
    /// (a header, no payload) or a correction against it.
    Quant,
}

impl StoredKind {
    /// The kind of an object stored with `encoding`.
    pub fn of(encoding: &Encoding) -> Self {
        match encoding {
            Encoding::Standalone { .. } => StoredKind::Standalone,
            Encoding::Delta { .. } | Encoding::CastDelta { .. } => StoredKind::Delta,
            Encoding::Cast { .. } => StoredKind::Cast,
            Encoding::Quant { .. } | Encoding::QuantDelta { .. } => StoredKind::Quant,
        }
    }
}

/// The stored object of one fragment a model needs (manifest format 3): what `stats` and
/// `show` report without reading the object, so their cost does not grow with the
/// library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// The fragment.
    pub id: FragmentId,
    /// Size of its object in the store, header included.
    pub stored_len: u64,
    /// How it is stored.
    pub kind: StoredKind,
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorRef {
    /// The tensor's name, as in the safetensors header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Absolute byte offset of the tensor's data in its file.
    pub offset: u64,
    /// Length of the tensor's data in bytes; its fragments' lengths add up to it.
    pub len: u64,
    /// Its fragments, in order; together exactly the tensor's data.
    pub fragments: Vec<FragmentRef>,
}

impl TensorRef {
    /// What the tensor holds, inferred from its name.
    pub fn fragment_type(&self) -> FragmentType {
        FragmentType::from_tensor_name(&self.name)
    }
}

/// How a file's bytes are laid out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileContent {
    /// The original header bytes (length prefix included), then tensors in offset order.
    Safetensors {
        /// The header bytes verbatim, its 8-byte length prefix included.
        header: Vec<u8>,
        /// The tensors in offset order, tiling the rest of the file.
        tensors: Vec<TensorRef>,
    },
    /// Any other file: content-defined chunks in order.
    Blob {
        /// The chunks in file order; their lengths add up to the file's size.
        chunks: Vec<FragmentRef>,
    },
    /// A GGUF file (manifest format 3): its metadata verbatim as content-defined chunks,
    /// then its tensors and the bytes between them (alignment padding) in file order.
    Gguf {
        /// The metadata (fixed header, key-values, tensor infos) verbatim, as
        /// content-defined chunks from byte 0; their lengths add up to the metadata's.
        metadata: Vec<FragmentRef>,
        /// The tensors in file (offset) order. A plain type (F32, F16, BF16, F64, I8…I64)
        /// has its dtype and shape (outermost first); a block type has dtype `U8` and
        /// shape `[len]`. Fragments are cut on the elements of safetensors fragments
        /// (rounded down to whole blocks for block types).
        tensors: Vec<TensorRef>,
        /// The ggml type id of each tensor, in the order of `tensors`.
        ggml_types: Vec<u32>,
        /// The bytes after the metadata that no tensor covers, in file order.
        gaps: Vec<GgufGap>,
    },
}

/// Bytes of a GGUF file after its metadata that no tensor covers: alignment padding, or
/// whatever else a writer left there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GgufGap {
    /// Kept in the manifest (at most [`MAX_INLINE_GAP`] bytes).
    Inline {
        /// Absolute offset in the file.
        offset: u64,
        /// The bytes verbatim (not empty).
        bytes: Vec<u8>,
    },
    /// Stored as content-defined chunks (a larger gap).
    Chunks {
        /// Absolute offset in the file.
        offset: u64,
        /// The chunks in order (not empty).
        chunks: Vec<FragmentRef>,
    },
}

/// Largest GGUF gap kept inline in a manifest; larger ones are chunked.
pub const MAX_INLINE_GAP: usize = 4096;

impl GgufGap {
    /// Absolute offset in the file.
    pub fn offset(&self) -> u64 {
        match self {
            GgufGap::Inline { offset, .. } | GgufGap::Chunks { offset, .. } => *offset,
        }
    }

    /// Length in bytes (saturating: validation rejects overflows).
    pub fn len(&self) -> u64 {
        match self {
            GgufGap::Inline { bytes, .. } => bytes.len() as u64,
            GgufGap::Chunks { chunks, .. } => chunks
                .iter()
                .fold(0u64, |acc, r| acc.saturating_add(u64::from(r.len))),
        }
    }

    /// Whether the gap is empty (never, in a valid manifest).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One part of a GGUF file after its metadata, in file order (see
/// [`FileManifest::gguf_parts`]).
#[derive(Clone, Copy, Debug)]
pub enum GgufPart<'a> {
    /// Tensor `index` of the file's `tensors`.
    Tensor(usize, &'a TensorRef),
    /// Bytes no tensor covers.
    Gap(&'a GgufGap),
}

/// One file of a model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileManifest {
    /// Relative path with `/` separators (a single-file model: the file name).
    pub path: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// BLAKE3 of the whole original file.
    pub blake3: [u8; 32],
    /// How to rebuild the file from fragments.
    pub content: FileContent,
}

impl FileManifest {
    /// Every fragment reference of the file, in file order.
    pub fn fragments(&self) -> Box<dyn Iterator<Item = &FragmentRef> + '_> {
        match &self.content {
            FileContent::Safetensors { tensors, .. } => {
                Box::new(tensors.iter().flat_map(|t| t.fragments.iter()))
            }
            FileContent::Blob { chunks } => Box::new(chunks.iter()),
            FileContent::Gguf {
                metadata,
                tensors,
                gaps,
                ..
            } => Box::new(
                metadata
                    .iter()
                    .chain(tensors.iter().flat_map(|t| t.fragments.iter()))
                    .chain(gaps.iter().flat_map(|g| match g {
                        GgufGap::Inline { .. } => [].iter(),
                        GgufGap::Chunks { chunks, .. } => chunks.iter(),
                    })),
            ),
        }
    }

    /// The fragment references that are not tensor data (blob chunks; a GGUF file's
    /// metadata chunks and chunked gaps), in file order.
    pub fn untyped_fragments(&self) -> Vec<&FragmentRef> {
        match &self.content {
            FileContent::Safetensors { .. } => Vec::new(),
            FileContent::Blob { chunks } => chunks.iter().collect(),
            FileContent::Gguf { metadata, gaps, .. } => metadata
                .iter()
                .chain(gaps.iter().flat_map(|g| match g {
                    GgufGap::Inline { .. } => [].iter(),
                    GgufGap::Chunks { chunks, .. } => chunks.iter(),
                }))
                .collect(),
        }
    }

    /// The file's tensors in offset order (none for a blob file).
    pub fn tensors(&self) -> &[TensorRef] {
        match &self.content {
            FileContent::Safetensors { tensors, .. } | FileContent::Gguf { tensors, .. } => tensors,
            FileContent::Blob { .. } => &[],
        }
    }

    /// The ggml type of tensor `index` of a GGUF file (`None` for other files).
    pub fn ggml_type(&self, index: usize) -> Option<crate::gguf::GgmlType> {
        match &self.content {
            FileContent::Gguf { ggml_types, .. } => ggml_types
                .get(index)
                .and_then(|&id| crate::gguf::GgmlType::from_id(id)),
            _ => None,
        }
    }

    /// The parts of a GGUF file after its metadata, in file order: tensors and gaps
    /// merged by offset (a tensor first when both start at the same byte; an empty
    /// tensor wherever it comes in `tensors`). An error
    /// says why they do not tile the file from `metadata_len` to `size`; `None` for
    /// other files.
    pub fn gguf_parts(&self) -> Option<std::result::Result<Vec<GgufPart<'_>>, String>> {
        let FileContent::Gguf {
            metadata,
            tensors,
            gaps,
            ..
        } = &self.content
        else {
            return None;
        };
        let mut cursor = metadata
            .iter()
            .fold(0u64, |acc, r| acc.saturating_add(u64::from(r.len)));
        let mut out = Vec::with_capacity(tensors.len() + gaps.len());
        let (mut t, mut g) = (0, 0);
        while t < tensors.len() || g < gaps.len() {
            // An empty tensor holds no bytes: it may sit anywhere up to the end (inside
            // padding, say), in its place in the offset order.
            if let Some(tensor) = tensors
                .get(t)
                .filter(|x| x.len == 0 && x.fragments.is_empty() && x.offset <= self.size)
            {
                out.push(GgufPart::Tensor(t, tensor));
                t += 1;
                continue;
            }
            if let Some(tensor) = tensors.get(t).filter(|x| x.offset == cursor) {
                let sum = tensor
                    .fragments
                    .iter()
                    .fold(0u64, |acc, r| acc.saturating_add(u64::from(r.len)));
                if sum != tensor.len {
                    return Some(Err(format!(
                        "tensor {:?}: fragments do not add up to its length",
                        tensor.name
                    )));
                }
                out.push(GgufPart::Tensor(t, tensor));
                cursor = cursor.saturating_add(tensor.len);
                t += 1;
            } else if let Some(gap) = gaps.get(g).filter(|x| x.offset() == cursor) {
                if gap.is_empty() {
                    return Some(Err(format!("empty gap at byte {cursor}")));
                }
                if matches!(gap, GgufGap::Inline { bytes, .. } if bytes.len() > MAX_INLINE_GAP) {
                    return Some(Err(format!("inline gap at byte {cursor} is too long")));
                }
                out.push(GgufPart::Gap(gap));
                cursor = cursor.saturating_add(gap.len());
                g += 1;
            } else {
                return Some(Err(format!("nothing starts at byte {cursor}")));
            }
        }
        if cursor != self.size {
            return Some(Err("tensors and gaps do not add up to its size".into()));
        }
        Some(Ok(out))
    }
}

/// A fragment stored in place of a different original one (opt-in lossy mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossySubstitution {
    /// File of the substituted fragment.
    pub file: String,
    /// Tensor of the substituted fragment.
    pub tensor: String,
    /// Index of the fragment within its tensor.
    pub fragment: u32,
    /// Id of the original bytes, which were not stored.
    pub original: FragmentId,
    /// The stored fragment used instead.
    pub substitute: FragmentId,
    /// Measured relative L2 error of the values.
    pub rel_error: f64,
}

/// Everything needed to rebuild one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// The model's name: `name` or `org/name` (see [`validate_model_name`]).
    pub name: String,
    /// Milliseconds since the Unix epoch at ingest.
    pub created_unix_ms: u64,
    /// Every file of the model, each path once.
    pub files: Vec<FileManifest>,
    /// Empty unless the model was ingested with a lossy option.
    pub lossy: Vec<LossySubstitution>,
    /// The source's revision when the ingest recorded one (for a model imported from the
    /// Hugging Face hub cache: the commit hash of the snapshot). See [`validate_revision`].
    pub revision: Option<String>,
    /// The stored object of every fragment the model references and of every fragment
    /// those depend on, sorted by id, each once, as ingest wrote or found them. Empty in
    /// manifests written before format version 3 (readers then ask the store).
    pub objects: Vec<StoredObject>,
}

/// The body of a version 2 manifest: [`ModelManifest`] before `objects`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ModelManifestV2 {
    name: String,
    created_unix_ms: u64,
    files: Vec<FileManifest>,
    lossy: Vec<LossySubstitution>,
    revision: Option<String>,
}

impl From<ModelManifestV2> for ModelManifest {
    fn from(v2: ModelManifestV2) -> Self {
        Self {
            name: v2.name,
            created_unix_ms: v2.created_unix_ms,
            files: v2.files,
            lossy: v2.lossy,
            revision: v2.revision,
            objects: Vec::new(),
        }
    }
}

/// The body of a version 1 manifest: [`ModelManifest`] before `revision`. bincode encodes
/// a struct as its fields in order, so the old shape is needed to read old bodies.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ModelManifestV1 {
    name: String,
    created_unix_ms: u64,
    files: Vec<FileManifest>,
    lossy: Vec<LossySubstitution>,
}

impl From<ModelManifestV1> for ModelManifest {
    fn from(v1: ModelManifestV1) -> Self {
        Self {
            name: v1.name,
            created_unix_ms: v1.created_unix_ms,
            files: v1.files,
            lossy: v1.lossy,
            revision: None,
            objects: Vec::new(),
        }
    }
}

/// Tensors grouped by layer (the name up to the last component), for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerMapping {
    /// The layer's name: its tensors' names up to their last `.`.
    pub layer: String,
    /// What the layer holds, inferred from the name of its first tensor.
    pub fragment_type: FragmentType,
    /// Names of the layer's tensors, in file order.
    pub tensors: Vec<String>,
    /// Sum of the tensors' data lengths.
    pub bytes: u64,
}

impl ModelManifest {
    /// Sum of the sizes of the model's files.
    pub fn logical_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Every fragment reference, in file order.
    pub fn fragments(&self) -> impl Iterator<Item = &FragmentRef> {
        self.files.iter().flat_map(|f| f.fragments())
    }

    /// Whether the model was ingested with lossy substitutions (its files may differ from
    /// the source).
    pub fn is_lossy(&self) -> bool {
        !self.lossy.is_empty()
    }

    /// The largest relative L2 error of any substitution (0 for a lossless model).
    pub fn max_rel_error(&self) -> f64 {
        self.lossy.iter().map(|l| l.rel_error).fold(0.0, f64::max)
    }

    /// The fragment reference a substitution record names, if the manifest has it.
    pub fn substituted_ref(&self, l: &LossySubstitution) -> Option<&FragmentRef> {
        self.files
            .iter()
            .find(|f| f.path == l.file)?
            .tensors()
            .iter()
            .find(|t| t.name == l.tensor)?
            .fragments
            .get(l.fragment as usize)
    }

    /// Whether some fragment of `file` was substituted (its bytes differ from the source).
    pub fn file_is_lossy(&self, file: &str) -> bool {
        self.lossy.iter().any(|l| l.file == file)
    }

    /// Tensors grouped by layer across all files.
    pub fn layers(&self) -> Vec<LayerMapping> {
        let mut map: BTreeMap<String, LayerMapping> = BTreeMap::new();
        for t in self.files.iter().flat_map(|f| f.tensors()) {
            let layer = t
                .name
                .rsplit_once('.')
                .map_or(t.name.as_str(), |(l, _)| l)
                .to_string();
            let entry = map.entry(layer.clone()).or_insert_with(|| LayerMapping {
                layer,
                fragment_type: t.fragment_type(),
                tensors: Vec::new(),
                bytes: 0,
            });
            entry.tensors.push(t.name.clone());
            entry.bytes += t.len;
        }
        map.into_values().collect()
    }

    /// The 40-hex-digit revision id of this stored generation, as the Hugging Face hub
    /// names revisions: the recorded [`revision`](Self::revision) when it is exactly 40
    /// lowercase hex digits (a hub commit hash, so `revision=<commit>` keeps resolving
    /// after an import), else the first 40 hex digits of BLAKE3 over
    /// `haagenti-revision\0{name}\0{created_unix_ms}`: stable for one generation, new for
    /// every re-ingest.
    pub fn revision_id(&self) -> String {
        match &self.revision {
            Some(r)
                if r.len() == 40 && r.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                r.clone()
            }
            _ => derived_revision_id(&self.name, self.created_unix_ms),
        }
    }

    /// Serialises into the versioned, checksummed envelope (always the current
    /// [`MANIFEST_FORMAT_VERSION`]).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| FragmentError::InvalidInput(format!("cannot encode manifest: {e}")))?;
        Ok(envelope(MANIFEST_FORMAT_VERSION, &body))
    }

    /// Parses and validates an envelope; `key` names the object in errors.
    pub fn decode(bytes: &[u8], key: &str) -> Result<Self> {
        Self::decode_checked(bytes, key, true)
    }

    /// Decodes a manifest whose checksum fails, as far as it still decodes and validates:
    /// for identifying what the damaged manifest described (its files' sizes and
    /// hashes), never for rebuilding from. Same bounds as [`ModelManifest::decode`].
    pub fn salvage(bytes: &[u8], key: &str) -> Result<Self> {
        Self::decode_checked(bytes, key, false)
    }

    fn decode_checked(bytes: &[u8], key: &str, checksum: bool) -> Result<Self> {
        let corrupt = |why: String| FragmentError::corrupt(key, why);
        if bytes.len() < 37 || bytes[..4] != MANIFEST_MAGIC {
            return Err(corrupt(
                "not a haagenti manifest (bad magic or too short)".into(),
            ));
        }
        let version = bytes[4];
        if !(1..=MANIFEST_FORMAT_VERSION).contains(&version) {
            return Err(FragmentError::UnsupportedVersion {
                key: key.to_string(),
                found: u32::from(version),
                supported: u32::from(MANIFEST_FORMAT_VERSION),
            });
        }
        let body = &bytes[37..];
        if checksum && blake3::hash(body).as_bytes() != &bytes[5..37] {
            return Err(corrupt("checksum mismatch".into()));
        }
        let config = bincode::config::standard().with_limit::<MAX_MANIFEST_LEN>();
        let undecodable =
            |e: bincode::error::DecodeError| corrupt(format!("undecodable body: {e}"));
        let (manifest, used): (Self, usize) = if version == 1 {
            let (v1, used): (ModelManifestV1, usize) =
                bincode::serde::decode_from_slice(body, config).map_err(undecodable)?;
            (v1.into(), used)
        } else if version == 2 {
            let (v2, used): (ModelManifestV2, usize) =
                bincode::serde::decode_from_slice(body, config).map_err(undecodable)?;
            (v2.into(), used)
        } else {
            bincode::serde::decode_from_slice(body, config).map_err(undecodable)?
        };
        if used != body.len() {
            return Err(corrupt("trailing bytes after the body".into()));
        }
        manifest.validate().map_err(|e| corrupt(e.to_string()))?;
        Ok(manifest)
    }

    /// Structural checks that make a manifest safe to rebuild from: safe relative paths,
    /// fragment lengths that add up, offsets that tile each file.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |why: String| FragmentError::InvalidInput(format!("manifest {:?}: {why}", self.name));
        validate_model_name(&self.name)?;
        if let Some(r) = &self.revision {
            validate_revision(r).map_err(|e| bad(e.to_string()))?;
        }
        let mut paths = std::collections::HashSet::new();
        for f in &self.files {
            validate_relative_path(&f.path).map_err(|e| bad(e.to_string()))?;
            if !paths.insert(f.path.as_str()) {
                return Err(bad(format!("file {:?} listed twice", f.path)));
            }
            let frag_total = f.fragments().try_fold(0u64, |acc, r| {
                if r.len as usize > MAX_DECODED_LEN {
                    None
                } else {
                    acc.checked_add(u64::from(r.len))
                }
            });
            let frag_total =
                frag_total.ok_or_else(|| bad(format!("file {:?}: fragment too large", f.path)))?;
            match &f.content {
                FileContent::Blob { .. } => {
                    if frag_total != f.size {
                        return Err(bad(format!(
                            "file {:?}: chunks do not add up to its size",
                            f.path
                        )));
                    }
                }
                FileContent::Gguf {
                    tensors,
                    ggml_types,
                    ..
                } => {
                    if ggml_types.len() != tensors.len()
                        || ggml_types
                            .iter()
                            .any(|&id| crate::gguf::GgmlType::from_id(id).is_none())
                    {
                        return Err(bad(format!(
                            "file {:?}: tensor types do not match its tensors",
                            f.path
                        )));
                    }
                    if let Some(Err(why)) = f.gguf_parts() {
                        return Err(bad(format!("file {:?}: {why}", f.path)));
                    }
                }
                FileContent::Safetensors { header, tensors } => {
                    let mut cursor = header.len() as u64;
                    for t in tensors {
                        let sum: u64 = t.fragments.iter().map(|r| u64::from(r.len)).sum();
                        if t.offset != cursor || sum != t.len {
                            return Err(bad(format!(
                                "file {:?}: tensor {:?} does not tile the file",
                                f.path, t.name
                            )));
                        }
                        cursor += t.len;
                    }
                    if cursor != f.size {
                        return Err(bad(format!(
                            "file {:?}: tensors do not add up to its size",
                            f.path
                        )));
                    }
                }
            }
        }
        // The stored-object table: sorted, each id once, sizes an object can have.
        let max_object = MAX_DECODED_LEN as u64 + 4096;
        for pair in self.objects.windows(2) {
            if pair[0].id >= pair[1].id {
                return Err(bad("stored objects are not sorted by id, each once".into()));
            }
        }
        if self.objects.iter().any(|o| o.stored_len > max_object) {
            return Err(bad(
                "a stored object is larger than any fragment object".into()
            ));
        }
        // Every substitution names a fragment reference that points at its substitute, and
        // a measured error: export and stats rely on both.
        for l in &self.lossy {
            let points_there = self
                .substituted_ref(l)
                .is_some_and(|r| r.id == l.substitute);
            if !(points_there && l.rel_error.is_finite() && l.rel_error >= 0.0) {
                return Err(bad(format!(
                    "lossy substitution in {:?} tensor {:?} fragment {} does not match the file",
                    l.file, l.tensor, l.fragment
                )));
            }
        }
        Ok(())
    }
}

/// Checks a source revision as a manifest records it: 1 to 64 bytes of `[0-9A-Za-z._-]`
/// (a Hub commit hash, a tag or a branch name without `/`).
pub fn validate_revision(revision: &str) -> Result<()> {
    let ok = (1..=64).contains(&revision.len())
        && revision
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FragmentError::InvalidInput(format!(
            "revision {revision:?}: expected 1 to 64 of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// The revision id of a generation without a recorded hub commit (see
/// [`ModelManifest::revision_id`]).
fn derived_revision_id(name: &str, created_unix_ms: u64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"haagenti-revision\0");
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(created_unix_ms.to_string().as_bytes());
    h.finalize().to_hex()[..40].to_string()
}

/// `"HGMF"`, `version`, BLAKE3 of `body`, `body`.
fn envelope(version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 37);
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.push(version);
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks a manifest path: relative, `/`-separated, no empty, `.` or `..` components,
/// no backslashes or NULs.
pub fn validate_relative_path(path: &str) -> Result<()> {
    let bad = |why: &str| FragmentError::InvalidInput(format!("unsafe file path {path:?}: {why}"));
    if path.is_empty() || path.len() > 4096 {
        return Err(bad("empty or too long"));
    }
    if path.contains('\\') || path.contains('\0') {
        return Err(bad("contains a backslash or NUL"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("absolute, or has an empty, '.' or '..' component"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ModelManifest {
        let r = |b: &[u8]| FragmentRef {
            id: FragmentId::of(b),
            len: b.len() as u32,
            depends_on: None,
        };
        ModelManifest {
            name: "m".into(),
            created_unix_ms: 1,
            files: vec![
                FileManifest {
                    path: "model.safetensors".into(),
                    size: 10 + 6,
                    blake3: [0; 32],
                    content: FileContent::Safetensors {
                        header: vec![0; 10],
                        tensors: vec![TensorRef {
                            name: "a.weight".into(),
                            dtype: Dtype::U8,
                            shape: vec![6],
                            offset: 10,
                            len: 6,
                            fragments: vec![r(b"abc"), r(b"def")],
                        }],
                    },
                },
                FileManifest {
                    path: "dir/config.json".into(),
                    size: 2,
                    blake3: [0; 32],
                    content: FileContent::Blob {
                        chunks: vec![r(b"{}")],
                    },
                },
            ],
            lossy: vec![],
            revision: None,
            objects: vec![],
        }
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(ModelManifest::decode(&bytes, "k").unwrap(), m);
        for i in [0, 4, 10, bytes.len() - 1] {
            let mut t = bytes.clone();
            t[i] ^= 1;
            assert!(ModelManifest::decode(&t, "k").is_err(), "flip at {i}");
        }
        for cut in 0..bytes.len() {
            assert!(ModelManifest::decode(&bytes[..cut], "k").is_err());
        }
    }

    #[test]
    fn salvage_decodes_past_a_bad_checksum_and_nothing_else() {
        let m = sample();
        let bytes = m.encode().unwrap();
        // A flipped checksum byte: decode refuses, salvage recovers the manifest.
        let mut t = bytes.clone();
        t[10] ^= 1;
        assert!(ModelManifest::decode(&t, "k").is_err());
        assert_eq!(ModelManifest::salvage(&t, "k").unwrap(), m);
        // Bad magic, an unknown version, a cut body: salvage fails as decode does.
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        let mut version = bytes.clone();
        version[4] = MANIFEST_FORMAT_VERSION + 1;
        for bad in [&magic[..], &version[..], &bytes[..bytes.len() - 1], &[][..]] {
            assert!(ModelManifest::salvage(bad, "k").is_err());
        }
    }

    #[test]
    fn hostile_length_prefix_is_bounded() {
        // A body claiming a huge string length must fail cleanly, not abort on allocation.
        let mut body = vec![0xfc];
        body.extend_from_slice(&[0xff; 4]);
        for version in [1, MANIFEST_FORMAT_VERSION] {
            assert!(ModelManifest::decode(&envelope(version, &body), "k").is_err());
        }
    }

    #[test]
    fn version_1_and_2_manifests_still_decode() {
        let mut m = sample();
        let v1 = ModelManifestV1 {
            name: m.name.clone(),
            created_unix_ms: m.created_unix_ms,
            files: m.files.clone(),
            lossy: m.lossy.clone(),
        };
        let body = bincode::serde::encode_to_vec(&v1, bincode::config::standard()).unwrap();
        let decoded = ModelManifest::decode(&envelope(1, &body), "k").unwrap();
        assert_eq!(decoded, m);
        assert_eq!(decoded.revision, None);
        // The same body labelled version 2 lacks the revision field: corrupt, not misread.
        assert!(ModelManifest::decode(&envelope(2, &body), "k").is_err());

        m.revision = Some("main".into());
        let v2 = ModelManifestV2 {
            name: m.name.clone(),
            created_unix_ms: m.created_unix_ms,
            files: m.files.clone(),
            lossy: m.lossy.clone(),
            revision: m.revision.clone(),
        };
        let body = bincode::serde::encode_to_vec(&v2, bincode::config::standard()).unwrap();
        let decoded = ModelManifest::decode(&envelope(2, &body), "k").unwrap();
        assert_eq!(decoded, m);
        assert!(decoded.objects.is_empty());
        assert!(ModelManifest::decode(&envelope(3, &body), "k").is_err());

        // A version 3 body is neither (its trailing table is left over).
        m.objects = vec![StoredObject {
            id: FragmentId::of(b"abc"),
            stored_len: 40,
            kind: StoredKind::Delta,
        }];
        let v3 = m.encode().unwrap();
        assert_eq!(v3[4], MANIFEST_FORMAT_VERSION);
        assert_eq!(ModelManifest::decode(&v3, "k").unwrap(), m);
        for older in [1, 2] {
            assert!(ModelManifest::decode(&envelope(older, &v3[37..]), "k").is_err());
        }
        for unknown in [0, 4, 255] {
            assert!(matches!(
                ModelManifest::decode(&envelope(unknown, &v3[37..]), "k"),
                Err(FragmentError::UnsupportedVersion { found, supported: 3, .. })
                    if found == u32::from(unknown)
            ));
        }
    }

    #[test]
    fn the_stored_object_table_is_sorted_unique_and_bounded() {
        let mut m = sample();
        let o = |b: &[u8], stored_len| StoredObject {
            id: FragmentId::of(b),
            stored_len,
            kind: StoredKind::Standalone,
        };
        let (a, b) = (o(b"abc", 10), o(b"def", 10));
        let (lo, hi) = if a.id < b.id { (a, b) } else { (b, a) };
        m.objects = vec![lo, hi];
        assert!(m.validate().is_ok());
        for bad in [vec![hi, lo], vec![lo, lo], vec![o(b"abc", u64::MAX)]] {
            m.objects = bad;
            assert!(m.validate().is_err(), "{:?}", m.objects);
        }
    }

    #[test]
    fn revision_round_trips_and_is_validated() {
        let mut m = sample();
        m.revision = Some("0123456789abcdef0123456789abcdef01234567".into());
        let bytes = m.encode().unwrap();
        assert_eq!(ModelManifest::decode(&bytes, "k").unwrap(), m);
        for ok in ["main", "v1.0_rc-2", &"a".repeat(64)] {
            assert!(validate_revision(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "refs/pr/1", "a b", "é", &"a".repeat(65)] {
            assert!(validate_revision(bad).is_err(), "{bad:?}");
            m.revision = Some(bad.to_string());
            assert!(m.validate().is_err(), "{bad:?}");
            let body = bincode::serde::encode_to_vec(&m, bincode::config::standard()).unwrap();
            assert!(ModelManifest::decode(&envelope(2, &body), "k").is_err());
        }
    }

    #[test]
    fn revision_id_is_the_hub_commit_or_derived() {
        let a = derived_revision_id("org/model", 1);
        assert_eq!(a.len(), 40);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, derived_revision_id("org/model", 1));
        assert_ne!(a, derived_revision_id("org/model", 2));
        assert_ne!(a, derived_revision_id("org/other", 1));
        // The derivation is part of what mounts expose: pin it.
        let mut h = blake3::Hasher::new();
        h.update(b"haagenti-revision\0org/model\0");
        h.update(b"1");
        assert_eq!(a, h.finalize().to_hex()[..40]);

        let mut m = sample();
        assert_eq!(m.revision_id(), derived_revision_id("m", 1));
        let commit = "0123456789abcdef0123456789abcdef01234567";
        m.revision = Some(commit.into());
        assert_eq!(m.revision_id(), commit);
        // Not a lowercase 40-hex commit: the derived id.
        for other in [
            "main",
            "0123456789ABCDEF0123456789ABCDEF01234567",
            &commit[..39],
        ] {
            m.revision = Some(other.into());
            assert_eq!(m.revision_id(), derived_revision_id("m", 1), "{other:?}");
        }
    }

    #[test]
    fn validation_rejects_unsafe_paths_and_bad_tiling() {
        for p in ["../x", "/abs", "a//b", "a/./b", "a\\b", ""] {
            let mut m = sample();
            m.files[1].path = p.into();
            assert!(m.validate().is_err(), "{p:?}");
        }
        let mut m = sample();
        m.files[0].size += 1;
        assert!(m.validate().is_err());
    }

    #[test]
    fn lossy_records_must_match_their_reference() {
        let mut m = sample();
        let sub = LossySubstitution {
            file: "model.safetensors".into(),
            tensor: "a.weight".into(),
            fragment: 1,
            original: FragmentId::of(b"deg"),
            substitute: FragmentId::of(b"def"),
            rel_error: 1e-3,
        };
        m.lossy = vec![sub.clone()];
        m.validate().unwrap();
        assert_eq!(m.max_rel_error(), 1e-3);
        assert!(m.file_is_lossy("model.safetensors") && !m.file_is_lossy("dir/config.json"));
        let bytes = m.encode().unwrap();
        assert_eq!(ModelManifest::decode(&bytes, "k").unwrap(), m);
        for bad in [
            LossySubstitution {
                fragment: 2,
                ..sub.clone()
            },
            LossySubstitution {
                tensor: "b".into(),
                ..sub.clone()
            },
            LossySubstitution {
                substitute: FragmentId::of(b"abc"),
                ..sub.clone()
            },
            LossySubstitution {
                rel_error: f64::NAN,
                ..sub.clone()
            },
            LossySubstitution {
                rel_error: -1.0,
                ..sub.clone()
            },
        ] {
            m.lossy = vec![bad.clone()];
            assert!(m.validate().is_err(), "{bad:?}");
        }
    }

    /// A GGUF file: 8 metadata bytes in two chunks, a tensor of 6 bytes at 8, 2 bytes of
    /// padding, a tensor of 3 bytes at 16, a chunked gap of 3 bytes at 19.
    fn gguf_file() -> FileManifest {
        let r = |b: &[u8]| FragmentRef {
            id: FragmentId::of(b),
            len: b.len() as u32,
            depends_on: None,
        };
        let tensor = |name: &str, offset, frags: Vec<FragmentRef>| TensorRef {
            name: name.into(),
            dtype: Dtype::U8,
            shape: vec![frags.iter().map(|f| u64::from(f.len)).sum()],
            offset,
            len: frags.iter().map(|f| u64::from(f.len)).sum(),
            fragments: frags,
        };
        FileManifest {
            path: "m.gguf".into(),
            size: 22,
            blake3: [0; 32],
            content: FileContent::Gguf {
                metadata: vec![r(b"GGUF"), r(b"meta")],
                tensors: vec![
                    tensor("a", 8, vec![r(b"abc"), r(b"def")]),
                    tensor("b", 16, vec![r(b"ghi")]),
                ],
                ggml_types: vec![8, 0],
                gaps: vec![
                    GgufGap::Inline {
                        offset: 14,
                        bytes: vec![0, 0],
                    },
                    GgufGap::Chunks {
                        offset: 19,
                        chunks: vec![r(b"xyz")],
                    },
                ],
            },
        }
    }

    #[test]
    fn gguf_files_round_trip_and_must_tile() {
        let mut m = sample();
        m.files.push(gguf_file());
        m.validate().unwrap();
        let bytes = m.encode().unwrap();
        assert_eq!(ModelManifest::decode(&bytes, "k").unwrap(), m);
        let f = &m.files[2];
        assert_eq!(f.fragments().count(), 6);
        assert_eq!(f.untyped_fragments().len(), 3);
        assert_eq!(f.ggml_type(0), Some(crate::gguf::GgmlType::Q8_0));
        let parts = f.gguf_parts().unwrap().unwrap();
        assert!(matches!(
            parts[..],
            [
                GgufPart::Tensor(0, _),
                GgufPart::Gap(_),
                GgufPart::Tensor(1, _),
                GgufPart::Gap(_)
            ]
        ));
        let broken: Vec<fn(&mut FileManifest)> = vec![
            |f| f.size += 1,
            |f| {
                if let FileContent::Gguf { tensors, .. } = &mut f.content {
                    tensors[1].offset += 1;
                }
            },
            |f| {
                if let FileContent::Gguf { gaps, .. } = &mut f.content {
                    gaps.remove(0);
                }
            },
            |f| {
                if let FileContent::Gguf { gaps, .. } = &mut f.content {
                    gaps[0] = GgufGap::Inline {
                        offset: 14,
                        bytes: vec![],
                    };
                }
            },
            |f| {
                if let FileContent::Gguf { ggml_types, .. } = &mut f.content {
                    ggml_types[0] = 99;
                }
            },
            |f| {
                if let FileContent::Gguf { ggml_types, .. } = &mut f.content {
                    ggml_types.pop();
                }
            },
            |f| {
                if let FileContent::Gguf { tensors, .. } = &mut f.content {
                    tensors[0].len += 1;
                }
            },
            |f| {
                if let FileContent::Gguf { metadata, .. } = &mut f.content {
                    metadata.pop();
                }
            },
        ];
        for (i, breaking) in broken.into_iter().enumerate() {
            let mut m = sample();
            let mut f = gguf_file();
            breaking(&mut f);
            m.files.push(f);
            assert!(m.validate().is_err(), "case {i}");
        }
    }

    #[test]
    fn layers_group_tensors() {
        let layers = sample().layers();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].layer, "a");
    }
}
