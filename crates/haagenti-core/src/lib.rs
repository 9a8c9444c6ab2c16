//! haagenti-core: the traits ([`Codec`], [`SignatureScheme`], [`FragmentStore`]), the data
//! types and the [`FragmentLibrary`] engine of haagenti, written against the traits only.
//!
//! Backends (`haagenti-store-fs`, `haagenti-store-s3`), codecs (`haagenti-codec`) and
//! signature schemes (`haagenti-lsh`) depend on this crate and nothing else of haagenti.

#![warn(missing_docs, unreachable_pub)]

pub mod buffers;
pub mod cast;
pub mod codec;
pub mod error;
pub mod gguf;
mod id;
mod library;
pub mod manifest;
// Format internals: reached by tests and fuzz targets through feature `internals`.
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub, dead_code))]
mod object;
pub mod safetensors;
pub mod signature;
pub mod store;
pub mod types;

/// The stored-object format's encoder and decoder, for tests and fuzz targets only
/// (feature `internals`): not a stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::object::{
        FRAGMENT_MAGIC, MAX_OBJECT_HEADER_LEN, ObjectHeader, decode_header, seal, verify_checksum,
        write_header,
    };
}

pub use codec::{Codec, CodecRegistry, CodecTag, EncodeHint, RawCodec};
pub use error::{FragmentError, Result};
pub use library::{
    ByteCount, DamageStatus, DamagedFragment, DamagedManifest, ExportReport, FamilyReport,
    FileReader, FragmentLibrary, FragmentUse, GcOptions, GcReport, IndexReport, IngestOptions,
    IngestReport, LossyLink, LossyModel, MetricsSnapshot, ModelComparison, ModelFile, ModelHandle,
    ModelSavings, ModelVerified, Progress, PutFragment, RebuiltManifest, Relation, RepairOptions,
    RepairReport, SimilarTensors, SourceMatch, StartedRead, StoredCount, Tensor, TensorInfo,
    TensorMatch, TensorSimilarity, VerifyReport,
};
pub use manifest::{
    FileContent, FileManifest, FragmentRef, LayerMapping, MANIFEST_FORMAT_VERSION, ModelManifest,
    StoredKind, StoredObject, TensorRef, validate_revision,
};
pub use signature::{
    CandidateIndex, EntryMeta, IndexFactory, SchemeTag, Signature, SignatureScheme, Similarity,
};
pub use store::{FragmentStore, MemoryStore, ObjectKey, ObjectMeta, PutOutcome, RetryStats};
pub use types::*;
