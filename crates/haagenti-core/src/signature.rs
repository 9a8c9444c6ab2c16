//! The [`SignatureScheme`] trait: compact sketches whose distance estimates similarity.
//!
//! Signatures only nominate candidates; what is stored is always decided on the real
//! bytes. Implementations are pure computation and never do I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::Dtype;

/// Stable numeric tag of a signature scheme, persisted with every stored signature.
pub type SchemeTag = u16;

/// A fixed-length bit signature (SimHash-style) or a MinHash vector, as the scheme decides.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature {
    pub scheme: SchemeTag,
    pub words: Vec<u64>,
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature(scheme {}, {} words)",
            self.scheme,
            self.words.len()
        )
    }
}

/// Maps fragment contents to signatures whose comparison estimates similarity.
pub trait SignatureScheme: Send + Sync + fmt::Debug {
    /// Stable tag persisted with every signature this scheme computes.
    fn tag(&self) -> SchemeTag;

    /// Short human name.
    fn name(&self) -> &'static str;

    /// Signature of a fragment; `dtype` is `None` for blob bytes. Returns `None` when the
    /// scheme does not apply to this data (e.g. too short, or an unsupported dtype).
    fn signature(&self, data: &[u8], dtype: Option<Dtype>) -> Option<Signature>;

    /// Estimated similarity of two signatures of this scheme, in `[-1, 1]`.
    fn similarity(&self, a: &Signature, b: &Signature) -> f32;
}
