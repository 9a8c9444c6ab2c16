//! haagenti-core: the traits ([`Codec`], [`SignatureScheme`], [`FragmentStore`]), the data
//! types and the [`FragmentLibrary`] engine of haagenti, written against the traits only.
//!
//! Backends (`haagenti-store-fs`, `haagenti-store-s3`), codecs (`haagenti-codec`) and
//! signature schemes (`haagenti-lsh`) depend on this crate and nothing else of haagenti.

pub mod cast;
pub mod codec;
pub mod error;
mod library;
pub mod manifest;
pub mod object;
pub mod safetensors;
pub mod signature;
pub mod store;
pub mod types;

pub use codec::{Codec, CodecRegistry, CodecTag, EncodeHint, RawCodec};
pub use error::{FragmentError, Result};
pub use library::{
    ByteCount, DELTA_MAX_FRACTION, ExportReport, FragmentLibrary, GcOptions, GcReport, IndexReport,
    IngestOptions, IngestReport, LossyModel, MERGE_SEGMENTS_AT, MetricsSnapshot, ModelComparison,
    ModelHandle, ModelSavings, Progress, PutFragment, Relation, SIMILAR_FRAGMENT_THRESHOLD,
    SimilarTensors, StoredCount, Tensor, TensorInfo, TensorMatch, TensorSimilarity, VerifyReport,
};
pub use manifest::{
    FileContent, FileManifest, FragmentRef, LayerMapping, ModelManifest, TensorRef,
};
pub use signature::{
    CandidateIndex, EntryMeta, IndexFactory, SchemeTag, Signature, SignatureScheme, Similarity,
};
pub use store::{FragmentStore, MemoryStore, ObjectKey, ObjectMeta, PutOutcome};
pub use types::*;
