//! haagenti-fragments: the umbrella crate. Re-exports `haagenti-core` and, by feature, the
//! filesystem (`fs`, default) and S3 (`s3`) stores, the codecs (`zstd`, `lz4`) and the
//! similarity schemes (`lsh`), and [`open()`]: a library from a directory, `file://` or
//! `s3://` location.
//!
//! The project README follows; its examples are compiled as doc tests.
#![doc = include_str!("../../../README.md")]
#![warn(missing_docs, unreachable_pub)]

pub use haagenti_core::*;

pub mod open;

pub use open::{OpenOptions, default_codecs, open, open_store};

#[cfg(any(feature = "zstd", feature = "lz4"))]
pub use haagenti_codec as codec_impls;
#[cfg(feature = "lsh")]
pub use haagenti_lsh as lsh;
#[cfg(feature = "fs")]
pub use haagenti_store_fs as fs;
#[cfg(feature = "s3")]
pub use haagenti_store_s3 as s3;

/// The names most programs need: open a library, ingest a model, read its tensors.
pub mod prelude {
    pub use crate::open::{OpenOptions, open};
    pub use haagenti_core::{
        CodecPolicy, Dtype, FileReader, Fragment, FragmentError, FragmentId, FragmentLibrary,
        FragmentStore, IngestOptions, LibraryConfig, LibraryStats, ModelFile, ModelHandle, Tensor,
    };
}
