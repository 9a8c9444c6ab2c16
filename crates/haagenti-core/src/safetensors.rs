//! Validating reader of safetensors headers. Never loads tensor data.
//!
//! A file is accepted only when the header is fully consistent with the file: every
//! violation is a [`FragmentError::InvalidSafetensors`] naming the file and the problem.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::error::{FragmentError, Result};
use crate::types::Dtype;

/// Largest header accepted (the reference implementation uses the same bound).
pub const MAX_SAFETENSORS_HEADER_LEN: u64 = 100 << 20;

/// One tensor as the header describes it. Offsets are absolute within the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTensor {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Absolute byte range in the file.
    pub start: u64,
    /// End of that range (exclusive); never before `start`.
    pub end: u64,
}

impl HeaderTensor {
    /// Length of the tensor's data in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the tensor has no data.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// A parsed, validated header.
#[derive(Clone, Debug)]
pub struct SafetensorsHeader {
    /// The first `8 + n` bytes of the file, verbatim (re-serialising would change them).
    pub raw: Vec<u8>,
    /// Tensors in file order (sorted by offset; ties keep header order).
    pub tensors: Vec<HeaderTensor>,
    /// Size of the whole file in bytes.
    pub file_len: u64,
}

impl SafetensorsHeader {
    /// Offset of the data region.
    pub fn data_start(&self) -> u64 {
        self.raw.len() as u64
    }
}

/// Reads and validates the header of the safetensors file at `path`.
pub fn read_header(path: &Path) -> Result<SafetensorsHeader> {
    let mut file = std::fs::File::open(path).map_err(|e| FragmentError::io("open", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| FragmentError::io("stat", path, e))?
        .len();
    read_header_from(&mut file, file_len, path)
}

/// Reads and validates a header from `reader`, positioned at the start of a file of
/// `file_len` bytes. `path` is only used in error messages.
pub fn read_header_from(
    reader: &mut impl Read,
    file_len: u64,
    path: &Path,
) -> Result<SafetensorsHeader> {
    let bad = |reason: String| FragmentError::InvalidSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    if file_len < 8 {
        return Err(bad(format!(
            "file is {file_len} bytes, shorter than the 8-byte header length"
        )));
    }
    let mut len_bytes = [0u8; 8];
    reader
        .read_exact(&mut len_bytes)
        .map_err(|e| FragmentError::io("read", path, e))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_SAFETENSORS_HEADER_LEN {
        return Err(bad(format!(
            "header length {n} exceeds the limit of {MAX_SAFETENSORS_HEADER_LEN} bytes"
        )));
    }
    if n > file_len - 8 {
        return Err(bad(format!(
            "header length {n} runs past the end of the file ({file_len} bytes): truncated file?"
        )));
    }
    // n <= 100 MiB and <= the file size, so this allocation is bounded by real input.
    let mut raw = Vec::with_capacity(8 + n as usize);
    raw.extend_from_slice(&len_bytes);
    raw.resize(8 + n as usize, 0);
    reader
        .read_exact(&mut raw[8..])
        .map_err(|e| FragmentError::io("read", path, e))?;
    let tensors = parse_json(&raw[8..], file_len, path)?;
    Ok(SafetensorsHeader {
        raw,
        tensors,
        file_len,
    })
}

/// Validates the JSON header against a file of `file_len` bytes.
fn parse_json(json: &[u8], file_len: u64, path: &Path) -> Result<Vec<HeaderTensor>> {
    let bad = |reason: String| FragmentError::InvalidSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(json).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let entries: Entries = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let data_start = 8 + json.len() as u64;
    let data_len = file_len - data_start;

    let mut names = HashSet::new();
    let mut tensors = Vec::with_capacity(entries.0.len());
    for (name, raw) in entries.0 {
        if name == "__metadata__" {
            serde_json::from_value::<std::collections::BTreeMap<String, String>>(raw)
                .map_err(|e| bad(format!("__metadata__ must map strings to strings: {e}")))?;
            continue;
        }
        if !names.insert(name.clone()) {
            return Err(bad(format!("tensor {name:?} appears twice")));
        }
        let entry: RawEntry = serde_json::from_value(raw)
            .map_err(|e| bad(format!("tensor {name:?}: malformed entry: {e}")))?;
        let dtype = Dtype::from_safetensors_name(&entry.dtype)
            .ok_or_else(|| bad(format!("tensor {name:?}: unknown dtype {:?}", entry.dtype)))?;
        let [begin, end] = entry.data_offsets;
        if begin > end {
            return Err(bad(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] are reversed"
            )));
        }
        if end > data_len {
            return Err(bad(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] are out of bounds (data region is {data_len} bytes)"
            )));
        }
        let bytes = entry
            .shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                bad(format!(
                    "tensor {name:?}: shape {:?} overflows",
                    entry.shape
                ))
            })?;
        if bytes != end - begin {
            return Err(bad(format!(
                "tensor {name:?}: shape {:?} of {dtype} is {bytes} bytes but data_offsets span {}",
                entry.shape,
                end - begin
            )));
        }
        tensors.push(HeaderTensor {
            name,
            dtype,
            shape: entry.shape,
            start: data_start + begin,
            end: data_start + end,
        });
    }
    // Stable sort: zero-length tensors sharing an offset keep header order.
    tensors.sort_by_key(|t| (t.start, t.end));
    let mut cursor = data_start;
    for t in &tensors {
        if t.start < cursor {
            return Err(bad(format!(
                "tensor {:?} overlaps the tensor before it",
                t.name
            )));
        }
        if t.start > cursor {
            return Err(bad(format!(
                "{} bytes before tensor {:?} belong to no tensor",
                t.start - cursor,
                t.name
            )));
        }
        cursor = t.end;
    }
    if cursor != file_len {
        return Err(bad(format!(
            "{} bytes at the end of the data region belong to no tensor",
            file_len - cursor
        )));
    }
    Ok(tensors)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Top-level header entries in order, keeping duplicates (serde_json's maps drop them).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data_len: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.resize(v.len() + data_len, 7);
        v
    }

    fn parse(bytes: &[u8]) -> Result<SafetensorsHeader> {
        read_header_from(
            &mut &bytes[..],
            bytes.len() as u64,
            Path::new("t.safetensors"),
        )
    }

    fn err(bytes: &[u8]) -> String {
        parse(bytes).unwrap_err().to_string()
    }

    #[test]
    fn accepts_valid_files_and_sorts_by_offset() {
        let json = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[0],"data_offsets":[12,12]},"__metadata__":{"format":"pt"}}"#;
        let h = parse(&file(json, 12)).unwrap();
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "z"]);
        assert_eq!(h.data_start(), 8 + json.len() as u64);
        assert_eq!(h.raw.len() as u64, h.data_start());
    }

    #[test]
    fn empty_model_is_valid() {
        assert!(parse(&file("{}", 0)).unwrap().tensors.is_empty());
    }

    #[test]
    fn rejects_each_violation_with_a_reason() {
        let one = |dtype: &str, shape: &str, offs: &str| {
            format!(r#"{{"t":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offs}}}}}"#)
        };
        assert!(err(&[1, 2, 3]).contains("shorter than"));
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(err(&huge).contains("exceeds the limit"));
        let mut past = 1000u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(err(&past).contains("past the end"));
        assert!(err(&file("{not json", 0)).contains("not valid JSON"));
        assert!(err(&file(&one("F33", "[1]", "[0,4]"), 4)).contains("unknown dtype"));
        assert!(err(&file(&one("F32", "[1]", "[0,8]"), 4)).contains("out of bounds"));
        assert!(err(&file(&one("F32", "[3]", "[0,4]"), 4)).contains("span"));
        assert!(err(&file(&one("F32", "[1]", "[4,0]"), 4)).contains("reversed"));
        assert!(
            err(&file(
                &one("F32", "[4294967296,4294967296,4294967296]", "[0,4]"),
                4
            ))
            .contains("overflows")
        );
        assert!(err(&file(&one("F32", "[1]", "[0,4]"), 8)).contains("belong to no tensor"));
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(err(&file(overlap, 8)).contains("overlaps"));
        let dup = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(err(&file(dup, 8)).contains("twice"));
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&file(&nested, 0)).contains("JSON"));
        assert!(
            err(&file(
                r#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}"#,
                4
            ))
            .contains("malformed")
        );
    }

    #[test]
    fn header_padding_spaces_are_accepted() {
        let json = format!(
            "{}{}",
            r#"{"t":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}"#, "   "
        );
        assert_eq!(parse(&file(&json, 3)).unwrap().tensors.len(), 1);
    }
}
