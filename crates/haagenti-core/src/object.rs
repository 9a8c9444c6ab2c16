//! Binary envelope of stored fragment objects (see `docs/format.md`).
//!
//! ```text
//! offset size
//!  0     4   magic "HGFR"
//!  4     1   format version (LIBRARY_FORMAT_VERSION)
//!  5     1   encoding: 0 standalone, 1 delta, 2 cast, 3 delta against a cast,
//!              4 quant, 5 correction against a quant
//!  6     2   codec tag, u16 LE (0 for cast)
//!  8     8   decoded length, u64 LE
//! 16     1   dtype tag (0: none)
//! 17     7   reserved, zero
//! 24     8   checksum: xxh3-64 of bytes 32.. seeded with xxh3-64 of bytes 0..24
//! 32    32   delta: base id | cast, cast delta, quant, quant delta: source id
//!              (absent for standalone)
//! 64     2   cast, cast delta: from dtype tag, to dtype tag; quant, quant delta:
//!              from dtype tag, to ggml type id (absent otherwise)
//! ..         payload (codec output; empty for cast)
//! ```
//!
//! The checksum catches damage to the stored form even where a codec would decode
//! damaged bytes to the right output (padding bits, unused fields): corruption is
//! reported as soon as it happens, not when it finally changes the data. The BLAKE3
//! check of the decoded bytes remains the authority.

use crate::codec::MAX_DECODED_LEN;
use crate::error::{FragmentError, Result};
use crate::types::{Dtype, Encoding, FragmentId, LIBRARY_FORMAT_VERSION, LegacyQuant};

/// The first four bytes of every fragment object.
pub const FRAGMENT_MAGIC: [u8; 4] = *b"HGFR";
const FIXED_HEADER: usize = 32;
const CHECKSUM_AT: usize = 24;
/// Bytes needed to read any fragment header (the longest, cast, is 66 bytes).
pub const MAX_OBJECT_HEADER_LEN: usize = FIXED_HEADER + 32 + 2;

/// The decoded header of a stored fragment object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectHeader {
    /// How the payload decodes to the fragment.
    pub encoding: Encoding,
    /// Length of the decoded fragment in bytes.
    pub decoded_len: u64,
    /// Element type of the tensor the fragment was first stored for, if any.
    pub dtype: Option<Dtype>,
    /// Where the payload starts.
    pub header_len: usize,
}

impl ObjectHeader {
    /// The fragment this one needs to be decoded (delta base or cast source).
    pub fn dependency(&self) -> Option<FragmentId> {
        self.encoding.dependency()
    }
}

/// Writes a fragment header into `out`; the payload is appended by the caller.
pub fn write_header(
    out: &mut Vec<u8>,
    encoding: &Encoding,
    decoded_len: u64,
    dtype: Option<Dtype>,
) {
    out.extend_from_slice(&FRAGMENT_MAGIC);
    out.push(LIBRARY_FORMAT_VERSION);
    let (kind, codec) = match encoding {
        Encoding::Standalone { codec } => (0u8, *codec),
        Encoding::Delta { codec, .. } => (1, *codec),
        Encoding::Cast { .. } => (2, 0),
        Encoding::CastDelta { codec, .. } => (3, *codec),
        Encoding::Quant { .. } => (4, 0),
        Encoding::QuantDelta { codec, .. } => (5, *codec),
    };
    out.push(kind);
    out.extend_from_slice(&codec.to_le_bytes());
    out.extend_from_slice(&decoded_len.to_le_bytes());
    out.push(dtype.map_or(0, Dtype::tag));
    out.extend_from_slice(&[0u8; 7]);
    out.extend_from_slice(&[0u8; 8]); // checksum, filled in by `seal`
    match encoding {
        Encoding::Standalone { .. } => {}
        Encoding::Delta { base, .. } => out.extend_from_slice(base.as_bytes()),
        Encoding::Cast { source, from, to }
        | Encoding::CastDelta {
            source, from, to, ..
        } => {
            out.extend_from_slice(source.as_bytes());
            out.push(from.tag());
            out.push(to.tag());
        }
        Encoding::Quant { source, from, to }
        | Encoding::QuantDelta {
            source, from, to, ..
        } => {
            out.extend_from_slice(source.as_bytes());
            out.push(from.tag());
            // Legacy ggml type ids are below 256.
            out.push(to.ggml_type().id() as u8);
        }
    }
}

/// Computes the checksum of a complete object (header written by [`write_header`], then
/// the payload) and stores it in the header.
pub fn seal(object: &mut [u8]) {
    let sum = checksum(object);
    object[CHECKSUM_AT..FIXED_HEADER].copy_from_slice(&sum.to_le_bytes());
}

fn checksum(object: &[u8]) -> u64 {
    let seed = xxhash_rust::xxh3::xxh3_64(&object[..CHECKSUM_AT]);
    xxhash_rust::xxh3::xxh3_64_with_seed(&object[FIXED_HEADER..], seed)
}

/// Checks the checksum of a complete object whose header parsed.
pub fn verify_checksum(object: &[u8], key: &str) -> Result<()> {
    if object.len() < FIXED_HEADER {
        return Err(FragmentError::corrupt(
            key,
            "shorter than a fragment header",
        ));
    }
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&object[CHECKSUM_AT..FIXED_HEADER]);
    if u64::from_le_bytes(stored) != checksum(object) {
        return Err(FragmentError::corrupt(
            key,
            "checksum mismatch: the stored object is damaged",
        ));
    }
    Ok(())
}

/// Parses and validates a fragment header. `key` names the object in errors.
pub fn decode_header(bytes: &[u8], key: &str) -> Result<ObjectHeader> {
    let corrupt = |why: &str| FragmentError::corrupt(key, why);
    if bytes.len() < FIXED_HEADER {
        return Err(corrupt("shorter than a fragment header"));
    }
    if bytes[..4] != FRAGMENT_MAGIC {
        return Err(corrupt("bad magic (not a haagenti fragment)"));
    }
    if bytes[4] != LIBRARY_FORMAT_VERSION {
        return Err(FragmentError::UnsupportedVersion {
            key: key.to_string(),
            found: u32::from(bytes[4]),
            supported: u32::from(LIBRARY_FORMAT_VERSION),
        });
    }
    let codec = u16::from_le_bytes([bytes[6], bytes[7]]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let decoded_len = u64::from_le_bytes(len);
    if decoded_len > MAX_DECODED_LEN as u64 {
        return Err(corrupt(&format!(
            "declared length {decoded_len} exceeds {MAX_DECODED_LEN}"
        )));
    }
    let dtype = match bytes[16] {
        0 => None,
        t => Some(Dtype::from_tag(t).ok_or_else(|| corrupt(&format!("unknown dtype tag {t}")))?),
    };
    if bytes[17..CHECKSUM_AT].iter().any(|&b| b != 0) {
        return Err(corrupt("reserved header bytes are not zero"));
    }
    let id_at = |at: usize| -> Result<FragmentId> {
        let raw = bytes
            .get(at..at + 32)
            .ok_or_else(|| corrupt("truncated header"))?;
        let mut id = [0u8; 32];
        id.copy_from_slice(raw);
        Ok(FragmentId(id))
    };
    let (encoding, header_len) = match bytes[5] {
        0 => (Encoding::Standalone { codec }, FIXED_HEADER),
        1 => (
            Encoding::Delta {
                codec,
                base: id_at(FIXED_HEADER)?,
            },
            FIXED_HEADER + 32,
        ),
        kind @ (2 | 3) => {
            let source = id_at(FIXED_HEADER)?;
            let tags = bytes
                .get(FIXED_HEADER + 32..MAX_OBJECT_HEADER_LEN)
                .ok_or_else(|| corrupt("truncated header"))?;
            let dt = |t: u8| {
                Dtype::from_tag(t).ok_or_else(|| corrupt(&format!("unknown dtype tag {t}")))
            };
            let (from, to) = (dt(tags[0])?, dt(tags[1])?);
            let encoding = if kind == 2 {
                Encoding::Cast { source, from, to }
            } else {
                Encoding::CastDelta {
                    codec,
                    source,
                    from,
                    to,
                }
            };
            (encoding, MAX_OBJECT_HEADER_LEN)
        }
        kind @ (4 | 5) => {
            let source = id_at(FIXED_HEADER)?;
            let tags = bytes
                .get(FIXED_HEADER + 32..MAX_OBJECT_HEADER_LEN)
                .ok_or_else(|| corrupt("truncated header"))?;
            let from = Dtype::from_tag(tags[0])
                .filter(|d| matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16))
                .ok_or_else(|| corrupt(&format!("bad quant source dtype tag {}", tags[0])))?;
            let to = crate::gguf::GgmlType::from_id(u32::from(tags[1]))
                .and_then(LegacyQuant::from_ggml)
                .ok_or_else(|| corrupt(&format!("unknown quant type {}", tags[1])))?;
            let encoding = if kind == 4 {
                Encoding::Quant { source, from, to }
            } else {
                Encoding::QuantDelta {
                    codec,
                    source,
                    from,
                    to,
                }
            };
            (encoding, MAX_OBJECT_HEADER_LEN)
        }
        k => return Err(corrupt(&format!("unknown encoding kind {k}"))),
    };
    Ok(ObjectHeader {
        encoding,
        decoded_len,
        dtype,
        header_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let base = FragmentId::of(b"base");
        for enc in [
            Encoding::Standalone { codec: 3 },
            Encoding::Delta { codec: 2, base },
            Encoding::Cast {
                source: base,
                from: Dtype::F32,
                to: Dtype::BF16,
            },
            Encoding::CastDelta {
                codec: 3,
                source: base,
                from: Dtype::F32,
                to: Dtype::F16,
            },
            Encoding::Quant {
                source: base,
                from: Dtype::F16,
                to: LegacyQuant::Q4_1,
            },
            Encoding::QuantDelta {
                codec: 2,
                source: base,
                from: Dtype::BF16,
                to: LegacyQuant::Q8_0,
            },
        ] {
            let mut buf = Vec::new();
            write_header(&mut buf, &enc, 1234, Some(Dtype::BF16));
            buf.extend_from_slice(b"payload");
            seal(&mut buf);
            verify_checksum(&buf, "k").unwrap();
            let h = decode_header(&buf, "k").unwrap();
            assert_eq!(h.encoding, enc);
            assert_eq!(h.decoded_len, 1234);
            assert_eq!(h.dtype, Some(Dtype::BF16));
            assert_eq!(&buf[h.header_len..], b"payload");
            // Any flipped bit anywhere is caught by the checksum.
            for i in 0..buf.len() {
                let mut bad = buf.clone();
                bad[i] ^= 0x10;
                assert!(verify_checksum(&bad, "k").is_err(), "flip at {i}");
            }
            // Every truncation of the header is an error, never a panic.
            for cut in 0..h.header_len {
                assert!(decode_header(&buf[..cut], "k").is_err());
            }
        }
    }

    #[test]
    fn rejects_unknown_version_and_lengths() {
        let mut buf = Vec::new();
        write_header(&mut buf, &Encoding::Standalone { codec: 0 }, 1, None);
        let mut v2 = buf.clone();
        v2[4] = 99;
        assert!(matches!(
            decode_header(&v2, "k"),
            Err(FragmentError::UnsupportedVersion { found: 99, .. })
        ));
        let mut huge = buf.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_header(&huge, "k").is_err());
        let mut kind = buf;
        kind[5] = 7;
        assert!(decode_header(&kind, "k").is_err());
        // A quant object with a source dtype that is not a float, or an unknown or
        // non-legacy quant type, is corrupt.
        let quant = Encoding::Quant {
            source: FragmentId::of(b"s"),
            from: Dtype::F16,
            to: LegacyQuant::Q4_0,
        };
        let mut q = Vec::new();
        write_header(&mut q, &quant, 18, None);
        assert_eq!(decode_header(&q, "k").unwrap().encoding, quant);
        for (at, value) in [
            (64, Dtype::I32.tag()),
            (64, 0),
            (65, 1),
            (65, 12),
            (65, 255),
        ] {
            let mut bad = q.clone();
            bad[at] = value;
            assert!(decode_header(&bad, "k").is_err(), "byte {at} = {value}");
        }
    }
}
