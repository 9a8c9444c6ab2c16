//! The error type of every haagenti library crate.
//!
//! [`FragmentError`] is `Clone` (sources are held in [`Arc`]s), so that one failed fetch
//! can be handed to every caller that waited for it, without losing the cause chain.
//! Messages name the key, file or operation involved and never a command-line flag: how
//! to get out of an error is the front end's to say.

use std::path::PathBuf;
use std::sync::Arc;

use crate::id::{FragmentId, ParseFragmentIdError};

/// Result alias used across haagenti.
pub type Result<T, E = FragmentError> = std::result::Result<T, E>;

/// The underlying cause of a backend error, kept for [`std::error::Error::source`].
pub type BoxedCause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong, each variant carrying the key, file or operation involved.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FragmentError {
    /// A file or directory could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create directory", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// A safetensors file is malformed.
    #[error("{}: invalid safetensors file: {reason}", path.display())]
    InvalidSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A GGUF file is malformed.
    #[error("{}: invalid GGUF file: {error}", path.display())]
    InvalidGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: crate::gguf::GgufError,
    },

    /// A model name is not acceptable.
    #[error("invalid model name {name:?}: {reason}")]
    InvalidModelName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },

    /// A library location (directory, `file://` or `s3://` URL) cannot be opened as given.
    #[error("library location {location:?}: {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A caller-supplied value (an option, a path inside a model, an id) is out of range
    /// or malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The library holds no model of this name.
    #[error("model {0:?} not found in the library")]
    ModelNotFound(String),

    /// A model of this name exists and the operation does not replace models.
    #[error("model {0:?} already exists in the library")]
    ModelExists(String),

    /// A model has no file, or no tensor, of this name.
    #[error("model {model:?} has no {what} {name:?}")]
    NotInModel {
        /// The model.
        model: String,
        /// "file" or "tensor".
        what: &'static str,
        /// The name looked for.
        name: String,
    },

    /// A tensor name is ambiguous: several files of the model hold one of that name.
    #[error("model {model:?}: tensor {tensor:?} is in several files ({files})")]
    AmbiguousTensor {
        /// The model.
        model: String,
        /// The tensor name.
        tensor: String,
        /// Some of the files holding it, comma-separated.
        files: String,
    },

    /// A byte range reaches past the end of a file.
    #[error(
        "model {model:?} file {file}: range {offset}+{len} reaches past its end ({size} bytes)"
    )]
    RangeOutOfBounds {
        /// The model.
        model: String,
        /// The file's relative path.
        file: String,
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The file's size.
        size: u64,
    },

    /// A source file changed (size or content) while it was being ingested.
    #[error("{}: file changed while it was being ingested", path.display())]
    FileChanged {
        /// The file.
        path: PathBuf,
    },

    /// A worker task panicked or was cancelled.
    #[error("{task} task failed: {reason}")]
    TaskFailed {
        /// Which task ("decode", "ingest worker", …).
        task: &'static str,
        /// The panic message or cancellation.
        reason: String,
    },

    /// Another process holds a lock that conflicts with this operation.
    #[error("{op}: another process holds the conflicting lock {key}")]
    Locked {
        /// The operation that wanted the lock ("gc", "ingest").
        op: &'static str,
        /// The key of the lock held by the other process.
        key: String,
    },

    /// The store has no object under this key.
    #[error("object {key} not found ({op})")]
    NotFound {
        /// The object's key.
        key: String,
        /// The store operation.
        op: &'static str,
    },

    /// A create-only put found an object that differs from the one being written.
    #[error("object {key} already exists with different content")]
    Conflict {
        /// The object's key.
        key: String,
    },

    /// A stored object failed validation (bad magic, checksum, truncated, …).
    #[error("corrupt object {key}: {reason}")]
    CorruptObject {
        /// The object's key.
        key: String,
        /// What failed.
        reason: String,
    },

    /// A manifest object cannot be decoded, so the fragments it references are unknown:
    /// garbage collection refuses to run rather than delete them.
    #[error("manifest {key} of model {model:?} cannot be read: {reason}")]
    ManifestUnreadable {
        /// The model the manifest belongs to.
        model: String,
        /// The manifest object's key.
        key: String,
        /// What failed.
        reason: String,
    },

    /// A fragment decoded, but not to the bytes its id names.
    #[error("fragment {id} is corrupt: decoded bytes hash to {actual}")]
    HashMismatch {
        /// The fragment's id.
        id: FragmentId,
        /// The hash of what was decoded.
        actual: FragmentId,
    },

    /// An object was written by a newer (or unknown) format version.
    #[error("object {key} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The object's key.
        key: String,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },

    /// A codec or signature tag this build does not know.
    #[error("object {key} uses unknown {what} tag {tag}")]
    UnknownTag {
        /// The object's key.
        key: String,
        /// "codec", "signature scheme", …
        what: &'static str,
        /// The tag found.
        tag: u32,
    },

    /// A codec failed to encode or decode.
    #[error("codec {codec}: {reason}")]
    Codec {
        /// The codec's name.
        codec: &'static str,
        /// What failed.
        reason: String,
    },

    /// A storage backend failed.
    #[error("store {backend}: {op} {key}: {reason}")]
    Backend {
        /// "fs", "s3", …
        backend: &'static str,
        /// The store operation.
        op: &'static str,
        /// The object's key, or the location.
        key: String,
        /// A summary of the cause.
        reason: String,
        /// The cause itself, when the backend has one.
        #[source]
        source: Option<BoxedCause>,
    },

    /// Rebuilding a file produced bytes whose hash differs from the one recorded at ingest.
    #[error("model {model:?} file {file}: rebuilt bytes do not match the hash recorded at ingest")]
    FileHashMismatch {
        /// The model.
        model: String,
        /// The file's relative path.
        file: String,
    },

    /// Context added on the way up: which model/tensor needed the failing fragment.
    #[error("model {model:?} {location}: {source}")]
    InModel {
        /// The model.
        model: String,
        /// Where in the model ("file x tensor y fragment 3 (id)").
        location: String,
        /// The error underneath.
        #[source]
        source: Arc<FragmentError>,
    },
}

impl From<ParseFragmentIdError> for FragmentError {
    fn from(e: ParseFragmentIdError) -> Self {
        Self::InvalidInput(e.to_string())
    }
}

impl FragmentError {
    /// An [`Io`](Self::Io) error.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// A [`Codec`](Self::Codec) error.
    pub fn codec(codec: &'static str, reason: impl Into<String>) -> Self {
        Self::Codec {
            codec,
            reason: reason.into(),
        }
    }

    /// A [`CorruptObject`](Self::CorruptObject) error.
    pub fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::CorruptObject {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// A [`Backend`](Self::Backend) error without an underlying cause.
    pub fn backend(
        backend: &'static str,
        op: &'static str,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Backend {
            backend,
            op,
            key: key.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// A [`TaskFailed`](Self::TaskFailed) error from a task's join error.
    pub fn task_failed(task: &'static str, e: impl std::fmt::Display) -> Self {
        Self::TaskFailed {
            task,
            reason: e.to_string(),
        }
    }

    /// Wraps this error with the model and the place in it that needed the failing object.
    pub fn in_model(self, model: &str, location: impl Into<String>) -> Self {
        Self::InModel {
            model: model.to_string(),
            location: location.into(),
            source: Arc::new(self),
        }
    }

    /// The error underneath any [`InModel`](Self::InModel) context.
    pub fn root(&self) -> &FragmentError {
        match self {
            Self::InModel { source, .. } => source.root(),
            other => other,
        }
    }

    /// Whether this error (or what it wraps) means stored data is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self.root(),
            Self::CorruptObject { .. }
                | Self::ManifestUnreadable { .. }
                | Self::HashMismatch { .. }
                | Self::FileHashMismatch { .. }
        )
    }

    /// The backend's own error under a [`Backend`](Self::Backend) error (through any
    /// [`InModel`](Self::InModel) context), ready to downcast (e.g. to
    /// `object_store::Error`). [`std::error::Error::source`] returns it wrapped in its
    /// `Arc`, which does not downcast to the inner type.
    pub fn backend_cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self.root() {
            Self::Backend {
                source: Some(cause),
                ..
            } => Some(&**cause),
            _ => None,
        }
    }

    /// Whether this error means the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self.root(), Self::NotFound { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn clones_keep_the_message_the_class_and_the_cause() {
        let id = FragmentId::of(b"x");
        let errors = [
            FragmentError::io("read", "/a", std::io::Error::other("disk")),
            FragmentError::NotFound {
                key: "k".into(),
                op: "get",
            },
            FragmentError::corrupt("k", "bad"),
            FragmentError::HashMismatch { id, actual: id },
            FragmentError::corrupt("k", "bad").in_model("m", "tensor t"),
            FragmentError::NotFound {
                key: "k".into(),
                op: "get",
            }
            .in_model("m", "tensor t"),
        ];
        for e in &errors {
            let c = e.clone();
            assert_eq!(c.to_string(), e.to_string());
            assert_eq!(c.is_corruption(), e.is_corruption());
            assert_eq!(c.is_not_found(), e.is_not_found());
            assert_eq!(
                c.source().map(ToString::to_string),
                e.source().map(ToString::to_string)
            );
        }
        assert!(errors[4].is_corruption() && errors[5].is_not_found());
        let io = errors[0].source().expect("io errors keep their cause");
        assert_eq!(io.to_string(), "disk");
        let backend = FragmentError::Backend {
            backend: "test",
            op: "get",
            key: "k".into(),
            reason: "r".into(),
            source: Some(Arc::new(std::io::Error::other("wire"))),
        }
        .in_model("m", "somewhere");
        let cause = backend.backend_cause().expect("the backend's error");
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
        assert!(errors[0].backend_cause().is_none());
    }
}
