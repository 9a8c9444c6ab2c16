//! Plain data types shared by every haagenti crate.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::FragmentError;
pub use crate::gguf::quant::LegacyQuant;
pub use crate::id::{FragmentId, ParseFragmentIdError};

/// Format version of the fragment objects the library writes;
/// manifests have their own, `MANIFEST_FORMAT_VERSION`. Readers reject any other version.
pub const LIBRARY_FORMAT_VERSION: u8 = 1;

/// Default cosine similarity above which two fragments are considered related.
pub const DEFAULT_SIMILARITY_THRESHOLD: SimilarityThreshold = SimilarityThreshold(0.97);

/// Element type of a tensor, with its safetensors spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float with 4 exponent and 3 mantissa bits.
    F8E4M3,
    /// 8-bit float with 5 exponent and 2 mantissa bits.
    F8E5M2,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16: the upper half of an f32.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE 754 single precision.
    F32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// IEEE 754 double precision.
    F64,
}

impl Dtype {
    /// Every dtype, in tag order.
    pub const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::I64,
        Dtype::U64,
        Dtype::F64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }

    /// The name used in safetensors headers.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::F64 => "F64",
        }
    }

    /// The dtype a safetensors header spells `name` (`F16`, `BF16`, …), if known.
    pub fn from_safetensors_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.safetensors_name() == name)
    }

    /// Whether values are floating point (signatures and float codecs apply).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64
        )
    }

    /// Stable numeric tag used in persisted objects.
    pub fn tag(self) -> u8 {
        match self {
            Dtype::Bool => 1,
            Dtype::U8 => 2,
            Dtype::I8 => 3,
            Dtype::F8E4M3 => 4,
            Dtype::F8E5M2 => 5,
            Dtype::I16 => 6,
            Dtype::U16 => 7,
            Dtype::F16 => 8,
            Dtype::BF16 => 9,
            Dtype::I32 => 10,
            Dtype::U32 => 11,
            Dtype::F32 => 12,
            Dtype::I64 => 13,
            Dtype::U64 => 14,
            Dtype::F64 => 15,
        }
    }

    /// Inverse of [`Self::tag`]; `None` for an unknown tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.tag() == tag)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

/// What a fragment holds, inferred from the tensor name (used for reporting and to steer
/// similarity search towards like-for-like candidates).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FragmentType {
    /// Attention projections (`q_proj`, `to_k`, `qkv`, …).
    Attention,
    /// Feed-forward layers (`mlp`, `gate_proj`, `fc1`, …).
    Mlp,
    /// Normalisation weights (`layernorm`, `rmsnorm`, `ln_f`, …).
    Norm,
    /// Token and position embeddings and the output head (`embed`, `wte`, `lm_head`, …).
    Embedding,
    /// Biases (names ending in `.bias` or `_bias`).
    Bias,
    /// Convolution kernels.
    Convolution,
    /// A tensor whose name says nothing we recognise.
    Tensor,
    /// Bytes that are not tensor data (other files, headers of unparsed formats).
    Blob,
}

impl FragmentType {
    /// Infers the type from a tensor name such as `model.layers.3.self_attn.q_proj.weight`.
    pub fn from_tensor_name(name: &str) -> Self {
        let n = name.to_ascii_lowercase();
        let has = |pats: &[&str]| pats.iter().any(|p| n.contains(p));
        if n.ends_with(".bias") || n.ends_with("_bias") {
            FragmentType::Bias
        } else if has(&["norm", ".ln_", "ln_f", "layernorm", "rmsnorm"]) {
            FragmentType::Norm
        } else if has(&[
            "embed",
            "wte",
            "wpe",
            "token_embedding",
            "lm_head",
            "shared.weight",
        ]) {
            FragmentType::Embedding
        } else if has(&[
            "attn",
            "attention",
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "to_q",
            "to_k",
            "to_v",
            "to_out",
            "qkv",
            "query",
            "key",
            "value",
        ]) {
            FragmentType::Attention
        } else if has(&[
            "mlp",
            "ffn",
            "feed_forward",
            "fc1",
            "fc2",
            "gate_proj",
            "up_proj",
            "down_proj",
            "dense",
            "wi",
            "wo",
        ]) {
            FragmentType::Mlp
        } else if has(&["conv"]) {
            FragmentType::Convolution
        } else {
            FragmentType::Tensor
        }
    }

    /// Lower-case name for reports, as `Display` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            FragmentType::Attention => "attention",
            FragmentType::Mlp => "mlp",
            FragmentType::Norm => "norm",
            FragmentType::Embedding => "embedding",
            FragmentType::Bias => "bias",
            FragmentType::Convolution => "convolution",
            FragmentType::Tensor => "tensor",
            FragmentType::Blob => "blob",
        }
    }
}

impl fmt::Display for FragmentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a fragment's bytes are kept in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encoding {
    /// The payload is the fragment, run through one codec.
    Standalone {
        /// Tag of the codec.
        codec: u16,
    },
    /// The payload is a codec-encoded XOR difference against `base` (never itself a delta).
    Delta {
        /// Tag of the codec that encoded the difference.
        codec: u16,
        /// The fragment the difference is taken against.
        base: FragmentId,
    },
    /// No payload: the fragment is the round-to-nearest-even cast of `source` to `to`.
    Cast {
        /// The fragment whose values are cast.
        source: FragmentId,
        /// Element type of `source`.
        from: Dtype,
        /// Element type of this fragment.
        to: Dtype,
    },
    /// The payload is a codec-encoded XOR difference against the round-to-nearest-even
    /// cast of `source` to `to`: a bf16 fine-tune stored against its fp32 parent. `source`
    /// is standalone, so this too decodes with two reads.
    CastDelta {
        /// Tag of the codec that encoded the difference.
        codec: u16,
        /// The fragment whose cast the difference is taken against.
        source: FragmentId,
        /// Element type of `source`.
        from: Dtype,
        /// Element type of this fragment.
        to: Dtype,
    },
    /// No payload: the fragment is the reference quantization (ggml's, as gguf-py
    /// computes it) to `to` of the values of `source` (a float fragment covering the same
    /// elements). `source` is standalone, so this decodes with two reads.
    Quant {
        /// The float fragment whose values are quantized.
        source: FragmentId,
        /// Element type of `source` (F32, F16 or BF16).
        from: Dtype,
        /// The quant type of this fragment.
        to: LegacyQuant,
    },
    /// The payload is a codec-encoded XOR difference against the reference quantization
    /// to `to` of the values of `source`: a quantized fragment that another quantizer
    /// made from the same values differs in a few blocks. `source` is standalone.
    QuantDelta {
        /// Tag of the codec that encoded the difference.
        codec: u16,
        /// The float fragment whose quantization the difference is taken against.
        source: FragmentId,
        /// Element type of `source` (F32, F16 or BF16).
        from: Dtype,
        /// The quant type of this fragment.
        to: LegacyQuant,
    },
}

impl Encoding {
    /// The fragment this encoding needs to be decoded (delta base or cast source).
    pub fn dependency(&self) -> Option<FragmentId> {
        match *self {
            Encoding::Standalone { .. } => None,
            Encoding::Delta { base, .. } => Some(base),
            Encoding::Cast { source, .. }
            | Encoding::CastDelta { source, .. }
            | Encoding::Quant { source, .. }
            | Encoding::QuantDelta { source, .. } => Some(source),
        }
    }
}

/// A decoded, verified fragment: its id and bytes, as
/// [`FragmentLibrary::get_fragment`](crate::FragmentLibrary::get_fragment) returns it. The
/// bytes are shared, never copied, between users (the fragment cache and every reader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// BLAKE3 of `data`.
    pub id: FragmentId,
    /// The decoded bytes.
    pub data: Bytes,
}

impl Fragment {
    /// The fragment of `data`, its id computed from the bytes.
    pub fn new(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            id: FragmentId::of(&data),
            data,
        }
    }
}

/// What the library knows about one stored fragment object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentMetadata {
    /// The fragment's content address.
    pub id: FragmentId,
    /// Decoded length in bytes.
    pub len: u64,
    /// Size of the stored object in bytes (header included).
    pub stored_len: u64,
    /// How it is stored.
    pub encoding: Encoding,
    /// Element type of the tensor the fragment was first stored for, if any.
    pub dtype: Option<Dtype>,
}

/// Cosine similarity threshold in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
pub struct SimilarityThreshold(f32);

impl SimilarityThreshold {
    /// The threshold `value`; an [`InvalidInput`](FragmentError::InvalidInput) error unless
    /// it lies in `[0, 1]`.
    pub fn new(value: f32) -> Result<Self, FragmentError> {
        if (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(FragmentError::InvalidInput(format!(
                "similarity threshold {value} is outside [0, 1]"
            )))
        }
    }

    /// The threshold as a cosine.
    pub fn get(self) -> f32 {
        self.0
    }
}

/// A candidate returned by a similarity index.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimilarityMatch {
    /// The candidate fragment.
    pub id: FragmentId,
    /// Estimated cosine similarity in `[-1, 1]`.
    pub similarity: f32,
}

/// How hard the codecs work. `Balanced` is the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CodecPolicy {
    /// Cheapest transform that still saves bytes.
    Fast,
    /// A good ratio at moderate cost.
    #[default]
    Balanced,
    /// Best ratio, slower.
    Max,
}

impl FromStr for CodecPolicy {
    type Err = FragmentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(Self::Fast),
            "balanced" => Ok(Self::Balanced),
            "max" => Ok(Self::Max),
            other => Err(FragmentError::InvalidInput(format!(
                "unknown codec policy {other:?} (expected fast, balanced or max)"
            ))),
        }
    }
}

impl fmt::Display for CodecPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fast => "fast",
            Self::Balanced => "balanced",
            Self::Max => "max",
        })
    }
}

/// Smallest allowed [`LibraryConfig::fragment_size`], in bytes (64 KiB).
pub const MIN_FRAGMENT_SIZE: usize = 64 << 10;
/// Largest allowed [`LibraryConfig::fragment_size`], in bytes (8 MiB).
pub const MAX_FRAGMENT_SIZE: usize = 8 << 20;

/// Elements per fragment of a `dtype` tensor: `fragment_size / 2` for 2- and 4-byte
/// dtypes, so an f32 tensor and its bf16 or f16 cast are cut at the same elements (the
/// f32 fragments are twice `fragment_size`) and every cast fragment lines up with one
/// f32 fragment; `fragment_size / size` for the others.
pub fn fragment_elements(fragment_size: usize, dtype: Dtype) -> usize {
    match dtype.size() {
        2 | 4 => fragment_size / 2,
        size => fragment_size / size,
    }
    .max(1)
}

/// Tunables of a [`crate::FragmentLibrary`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LibraryConfig {
    /// Tensor fragment size in bytes for 16-bit dtypes (64 KiB to 8 MiB); see
    /// [`fragment_elements`] for the others.
    pub fragment_size: usize,
    /// Average content-defined chunk size for blob files.
    pub blob_chunk_avg: usize,
    /// How hard the codec works when writing fragments.
    pub codec_policy: CodecPolicy,
    /// CPU work (hashing, encoding, signatures) running at once: one per core.
    pub parallelism: usize,
    /// Fragments an ingest has in flight at once: being hashed, encoded, checked against
    /// the store or written. Beyond `parallelism` they wait on store requests, which a
    /// network store wants many of (32 to 64); it also bounds ingest memory (about two
    /// fragments each).
    #[serde(default = "default_io_concurrency")]
    pub io_concurrency: usize,
    /// Estimated cosine from which a stored fragment is tried as a delta base, cast
    /// source or lossy substitute (with similarity on).
    pub similarity_threshold: SimilarityThreshold,
    /// How many candidates of each kind ingest tries per fragment (bounds the work).
    pub similarity_candidates: usize,
}

impl Default for LibraryConfig {
    fn default() -> Self {
        Self {
            fragment_size: 1 << 20,
            blob_chunk_avg: 256 << 10,
            codec_policy: CodecPolicy::default(),
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            io_concurrency: default_io_concurrency(),
            similarity_threshold: DEFAULT_SIMILARITY_THRESHOLD,
            similarity_candidates: 2,
        }
    }
}

impl LibraryConfig {
    /// Checks every field's range; an [`InvalidInput`](FragmentError::InvalidInput) error
    /// names the first one out of range.
    pub fn validate(&self) -> Result<(), FragmentError> {
        if !(MIN_FRAGMENT_SIZE..=MAX_FRAGMENT_SIZE).contains(&self.fragment_size) {
            return Err(FragmentError::InvalidInput(format!(
                "fragment size {} is outside {MIN_FRAGMENT_SIZE}..={MAX_FRAGMENT_SIZE}",
                self.fragment_size
            )));
        }
        if !(4096..=MAX_FRAGMENT_SIZE / 4).contains(&self.blob_chunk_avg) {
            return Err(FragmentError::InvalidInput(format!(
                "blob chunk size {} is outside 4096..={}",
                self.blob_chunk_avg,
                MAX_FRAGMENT_SIZE / 4
            )));
        }
        if !(1..=16).contains(&self.similarity_candidates) {
            return Err(FragmentError::InvalidInput(format!(
                "similarity candidates {} is outside 1..=16",
                self.similarity_candidates
            )));
        }
        if self.parallelism == 0 {
            return Err(FragmentError::InvalidInput(
                "parallelism must be at least 1".into(),
            ));
        }
        if !(1..=4096).contains(&self.io_concurrency) {
            return Err(FragmentError::InvalidInput(format!(
                "I/O concurrency {} is outside 1..=4096",
                self.io_concurrency
            )));
        }
        Ok(())
    }
}

fn default_io_concurrency() -> usize {
    32
}

/// Library-wide figures, computed from the manifests and a listing of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryStats {
    /// Models in the library.
    pub models: u64,
    /// Distinct fragment objects the current models need: their fragments and the ones
    /// those depend on (unreferenced objects awaiting `gc` are not counted).
    pub fragments: u64,
    /// Sum of the sizes of every ingested file.
    pub logical_bytes: u64,
    /// Sum of the sizes of every object the models need (fragments, manifests, indexes).
    pub stored_bytes: u64,
    /// Sum of the sizes of the fragment objects counted in `fragments`.
    pub fragment_bytes: u64,
    /// Sum of the sizes of the manifest objects, every generation.
    pub manifest_bytes: u64,
    /// Sum of the sizes of the similarity index's segments.
    pub index_bytes: u64,
    /// Where the difference between logical and stored bytes comes from.
    pub savings: Savings,
    /// Models whose current manifest cannot be read: left out of every figure above but
    /// `manifest_bytes`, which comes from a listing.
    #[serde(default)]
    pub damaged: Vec<DamagedManifest>,
}

/// A model whose current manifest cannot be read (missing, corrupt, naming another
/// model), from `FragmentLibrary::manifests_report`. Its fragments are untouched and
/// `FragmentLibrary::remove` still deletes it: removing never decodes manifests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedManifest {
    /// The model's name.
    pub model: String,
    /// The store key of its current manifest.
    pub key: String,
    /// Why it could not be read.
    pub error: String,
}

impl LibraryStats {
    /// Logical bytes per stored byte (how many times smaller the library is than the
    /// files it rebuilds); 0 for an empty library.
    pub fn ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            0.0
        } else {
            self.logical_bytes as f64 / self.stored_bytes as f64
        }
    }
}

/// Where the difference between logical and stored bytes comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Savings {
    /// Bytes not stored because an identical fragment was already there.
    pub exact_dedup_bytes: u64,
    /// Bytes saved by storing fragments as deltas against a similar fragment.
    pub delta_bytes: i64,
    /// Bytes saved by storing cast-derived fragments as references.
    pub cast_bytes: u64,
    /// Bytes saved by compressing standalone fragments.
    pub compression_bytes: i64,
    /// Bytes not stored because lossy mode referenced a similar fragment instead (opt-in;
    /// counted here, not as exact dedup).
    pub lossy_bytes: u64,
    /// Bytes saved by storing quantized GGUF fragments as references to (or corrections
    /// against) the reference quantization of their float source.
    #[serde(default)]
    pub quant_bytes: u64,
}

impl Savings {
    /// Bytes saved by every kind together (negative when deltas or compression cost more
    /// than the rest saved).
    pub fn total(&self) -> i64 {
        let unsigned = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        unsigned(self.exact_dedup_bytes)
            .saturating_add(self.delta_bytes)
            .saturating_add(unsigned(self.cast_bytes))
            .saturating_add(self.compression_bytes)
            .saturating_add(unsigned(self.lossy_bytes))
            .saturating_add(unsigned(self.quant_bytes))
    }
}

/// A byte count for people: binary (IEC) units, `Display`ed as `512 B`, `1.5 KiB`,
/// `24.0 MiB`, `2.1 GiB`, `1.0 TiB` (one decimal from KiB up). The one convention of every
/// human-readable size haagenti prints; a speed is the same with `/s`.
///
/// ```
/// use haagenti_core::HumanBytes;
/// assert_eq!(HumanBytes(1536).to_string(), "1.5 KiB");
/// assert_eq!(format!("{}/s", HumanBytes(200 << 20)), "200.0 MiB/s");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

/// Checks a model name: `name` or `org/name` (the Hugging Face repo-id convention), each
/// part non-empty, `[A-Za-z0-9._-]`, not starting with `.`, at most 128 bytes in all.
/// A valid name is a safe path segment (or two) and S3 key segment.
pub fn validate_model_name(name: &str) -> Result<(), FragmentError> {
    let bad = |why: &str| FragmentError::InvalidModelName {
        name: name.to_string(),
        reason: why.to_string(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 128 {
        return Err(bad("it is longer than 128 bytes"));
    }
    if name.contains('\\') {
        return Err(bad("it contains a backslash"));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 2 {
        return Err(bad("it has more than one '/' (use name or org/name)"));
    }
    for part in parts {
        if part.is_empty() {
            return Err(bad("it has an empty part around '/'"));
        }
        if part.starts_with('.') {
            return Err(bad("a part starts with '.'"));
        }
        if part.len() == 20 && part.bytes().all(|b| b.is_ascii_digit()) {
            // Manifest keys end in a 20-digit generation; a part like it would be ambiguous.
            return Err(bad("a part of 20 digits reads as a manifest generation"));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(bad(&format!(
                "character {c:?} is not allowed (use A-Z a-z 0-9 . _ - and one /)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_tags_and_names_are_unique() {
        for a in Dtype::ALL {
            assert_eq!(Dtype::from_tag(a.tag()), Some(a));
            assert_eq!(Dtype::from_safetensors_name(a.safetensors_name()), Some(a));
        }
    }

    #[test]
    fn fragment_type_inference() {
        use FragmentType::*;
        for (name, want) in [
            ("model.layers.3.self_attn.q_proj.weight", Attention),
            ("model.layers.3.mlp.down_proj.weight", Mlp),
            ("model.layers.3.input_layernorm.weight", Norm),
            ("model.embed_tokens.weight", Embedding),
            ("encoder.block.0.layer.0.SelfAttention.q.bias", Bias),
            ("conv_in.weight", Convolution),
            ("something", Tensor),
        ] {
            assert_eq!(FragmentType::from_tensor_name(name), want, "{name}");
        }
    }

    #[test]
    fn human_bytes() {
        for (bytes, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (24 << 20, "24.0 MiB"),
            ((5 << 30) / 2, "2.5 GiB"),
            (3 << 40, "3.0 TiB"),
            (2048 << 40, "2048.0 TiB"),
        ] {
            assert_eq!(HumanBytes(bytes).to_string(), want, "{bytes}");
        }
    }

    #[test]
    fn stats_ratio_and_savings_total() {
        let mut stats = LibraryStats::default();
        assert_eq!(stats.ratio(), 0.0);
        stats.logical_bytes = 300;
        stats.stored_bytes = 100;
        assert_eq!(stats.ratio(), 3.0);
        let savings = Savings {
            exact_dedup_bytes: 100,
            delta_bytes: -20,
            cast_bytes: 30,
            compression_bytes: 40,
            lossy_bytes: 5,
            quant_bytes: 7,
        };
        assert_eq!(savings.total(), 162);
    }

    #[test]
    fn model_names() {
        for ok in [
            "llama-3.1-8b",
            "sdxl_base",
            "a",
            "meta-llama/Llama-3.1-8B",
            "a..b",
        ] {
            validate_model_name(ok).unwrap();
        }
        let long = format!("{}/{}", "a".repeat(64), "b".repeat(64));
        for bad in [
            "",
            "..",
            ".hidden",
            "a b",
            "é",
            "/a",
            "a/",
            "a//b",
            "a/b/c",
            "org/.x",
            "../x",
            "a\\b",
            &long,
            "org/01234567890123456789",
        ] {
            assert!(validate_model_name(bad).is_err(), "{bad:?}");
        }
    }
}
