//! [`FragmentId`]: the content address of a fragment. A leaf module: it names no other
//! module of the crate, so that the error type can carry ids without an import cycle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Content address of a fragment: the full 32-byte BLAKE3 hash of its *decoded* bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FragmentId(pub [u8; 32]);

impl FragmentId {
    /// Hashes `data` (multi-threaded hashing is left to callers: fragments are small).
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// First 12 hex characters, for humans.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for FragmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FragmentId({})", self.short())
    }
}

impl fmt::Display for FragmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A string that is not a fragment id (64 lower-case hex characters).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a 64-character lower-case hex fragment id: {0:?}")]
pub struct ParseFragmentIdError(pub String);

impl FromStr for FragmentId {
    type Err = ParseFragmentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseFragmentIdError(s.to_string());
        let raw = s.as_bytes();
        if raw.len() != 64 {
            return Err(bad());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            let hi = nibble(pair[0]).ok_or_else(bad)?;
            let lo = nibble(pair[1]).ok_or_else(bad)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_id_hex_round_trip() {
        let id = FragmentId::of(b"haagenti");
        let parsed: FragmentId = id.to_hex().parse().unwrap();
        assert_eq!(parsed, id);
        assert!("zz".parse::<FragmentId>().is_err());
        assert!(id.to_hex().to_uppercase().parse::<FragmentId>().is_err());
    }
}
