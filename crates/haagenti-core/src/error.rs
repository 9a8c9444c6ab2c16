//! The error type of every haagenti library crate.

use std::path::PathBuf;

use crate::types::FragmentId;

/// Result alias used across haagenti.
pub type Result<T, E = FragmentError> = std::result::Result<T, E>;

/// Everything that can go wrong, each variant carrying the key, file or operation involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FragmentError {
    /// A file or directory could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A safetensors file is malformed.
    #[error("{}: invalid safetensors file: {reason}", path.display())]
    InvalidSafetensors { path: PathBuf, reason: String },

    /// A model name is not acceptable.
    #[error("invalid model name {name:?}: {reason}")]
    InvalidModelName { name: String, reason: String },

    /// A caller-supplied value is out of range or malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("model {0:?} not found in the library")]
    ModelNotFound(String),

    #[error("model {0:?} already exists in the library (use --replace to overwrite)")]
    ModelExists(String),

    /// The store has no object under this key.
    #[error("object {key} not found ({op})")]
    NotFound { key: String, op: &'static str },

    /// A create-only put found an object that differs from the one being written.
    #[error("object {key} already exists with different content")]
    Conflict { key: String },

    /// A stored object failed validation (bad magic, checksum, truncated, …).
    #[error("corrupt object {key}: {reason}")]
    CorruptObject { key: String, reason: String },

    /// A fragment decoded, but not to the bytes its id names.
    #[error("fragment {id} is corrupt: decoded bytes hash to {actual}")]
    HashMismatch { id: FragmentId, actual: FragmentId },

    /// An object was written by a newer (or unknown) format version.
    #[error("object {key} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        key: String,
        found: u32,
        supported: u32,
    },

    /// A codec or signature tag this build does not know.
    #[error("object {key} uses unknown {what} tag {tag}")]
    UnknownTag {
        key: String,
        what: &'static str,
        tag: u32,
    },

    /// A codec failed to encode or decode.
    #[error("codec {codec}: {reason}")]
    Codec { codec: &'static str, reason: String },

    /// A storage backend failed.
    #[error("store {backend}: {op} {key}: {reason}")]
    Backend {
        backend: &'static str,
        op: &'static str,
        key: String,
        reason: String,
    },

    /// Rebuilding a file produced bytes whose hash differs from the one recorded at ingest.
    #[error("model {model:?} file {file}: rebuilt bytes do not match the hash recorded at ingest")]
    FileHashMismatch { model: String, file: String },

    /// Context added on the way up: which model/tensor needed the failing fragment.
    #[error("model {model:?} {location}: {source}")]
    InModel {
        model: String,
        location: String,
        #[source]
        source: Box<FragmentError>,
    },
}

impl FragmentError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn codec(codec: &'static str, reason: impl Into<String>) -> Self {
        Self::Codec {
            codec,
            reason: reason.into(),
        }
    }

    pub fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::CorruptObject {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub fn in_model(self, model: &str, location: impl Into<String>) -> Self {
        Self::InModel {
            model: model.to_string(),
            location: location.into(),
            source: Box::new(self),
        }
    }

    /// Whether this error (or what it wraps) means stored data is damaged.
    pub fn is_corruption(&self) -> bool {
        match self {
            Self::CorruptObject { .. }
            | Self::HashMismatch { .. }
            | Self::FileHashMismatch { .. } => true,
            Self::InModel { source, .. } => source.is_corruption(),
            _ => false,
        }
    }

    /// Whether this error means the object does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::NotFound { .. } => true,
            Self::InModel { source, .. } => source.is_not_found(),
            _ => false,
        }
    }
}
