//! Errors as the Hugging Face Hub sends them: a status, `X-Error-Code` (which
//! `huggingface_hub`'s `hf_raise_for_status` maps to its exception classes), `X-Error-Message`
//! and a JSON `{"error": ...}` body.

use hyper::StatusCode;

/// A request that cannot be served, and how to say so.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("Repository not found")]
    RepoNotFound,
    #[error("Revision not found")]
    RevisionNotFound,
    /// A file (or tree path) absent from a resolved revision; carries that revision so the
    /// client can cache the absence.
    #[error("Entry not found")]
    EntryNotFound { revision: String },
    #[error("Invalid credentials in Authorization header")]
    Unauthorized,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("URI too long")]
    UriTooLong,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
    #[error("the library cannot be read: {0}")]
    Internal(String),
}

impl HubError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RepoNotFound | Self::RevisionNotFound | Self::EntryNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Hub's `X-Error-Code`, for the errors the client classifies.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::RepoNotFound => Some("RepoNotFound"),
            Self::RevisionNotFound => Some("RevisionNotFound"),
            Self::EntryNotFound { .. } => Some("EntryNotFound"),
            _ => None,
        }
    }

    /// The revision to send as `X-Repo-Commit` with the error.
    pub fn revision(&self) -> Option<&str> {
        match self {
            Self::EntryNotFound { revision } => Some(revision),
            _ => None,
        }
    }
}
