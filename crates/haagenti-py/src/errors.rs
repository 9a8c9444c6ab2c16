//! The exception hierarchy of the package and the mapping from [`FragmentError`].
//!
//! `HaagentiError` is the base of everything the library raises; its four subclasses say
//! what kind of failure it was, and the message is the library's own (it names the
//! model, file, tensor or fragment involved).

use haagenti_fragments::FragmentError;
use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::PyException;

create_exception!(
    haagenti,
    HaagentiError,
    PyException,
    "Base class of every error haagenti raises."
);
create_exception!(
    haagenti,
    NotFound,
    HaagentiError,
    "A model, a file of a model or a tensor that the library does not hold."
);
create_exception!(
    haagenti,
    Corrupt,
    HaagentiError,
    "Stored data is damaged (a fragment that fails verification, a missing or unreadable \
     object); the message names the fragment or object."
);
create_exception!(
    haagenti,
    InvalidInput,
    HaagentiError,
    "An argument the library cannot use: a bad location, model name, option, index or \
     slice, an existing model to ingest without replace, a missing path, or a malformed \
     file given to ingest."
);
create_exception!(
    haagenti,
    StoreError,
    HaagentiError,
    "The store (directory or S3) failed, or another process holds a conflicting lock."
);

/// The Python exception for a library error, carrying its message.
pub fn to_py(e: FragmentError) -> PyErr {
    let message = e.to_string();
    if e.is_corruption() {
        return Corrupt::new_err(message);
    }
    match e.root() {
        FragmentError::ModelNotFound(_) | FragmentError::NotInModel { .. } => {
            NotFound::new_err(message)
        }
        // An object a manifest references is missing: the library is damaged.
        FragmentError::NotFound { .. }
        | FragmentError::UnsupportedVersion { .. }
        | FragmentError::UnknownTag { .. }
        | FragmentError::Codec { .. } => Corrupt::new_err(message),
        FragmentError::InvalidSafetensors { .. }
        | FragmentError::InvalidModelName { .. }
        | FragmentError::InvalidLocation { .. }
        | FragmentError::InvalidInput(_)
        | FragmentError::ModelExists(_)
        | FragmentError::AmbiguousTensor { .. }
        | FragmentError::RangeOutOfBounds { .. }
        | FragmentError::FileChanged { .. } => InvalidInput::new_err(message),
        // A path the caller gave that does not exist (a source to ingest); the fs store
        // reports its own missing objects as `NotFound`.
        FragmentError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            InvalidInput::new_err(message)
        }
        _ => StoreError::new_err(message),
    }
}

/// An [`InvalidInput`] error with `message`.
pub fn invalid(message: impl Into<String>) -> PyErr {
    InvalidInput::new_err(message.into())
}
