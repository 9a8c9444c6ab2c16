//! Hand-built GGUF bytes, for tests of what the reader refuses (hostile counts, bad
//! offsets, truncations): little-endian, exactly as the format lays them out, with no
//! checking of their own. Well-formed files for acceptance come from gguf-py instead.

/// Appends a GGUF string: its length (u64), then its bytes.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// A key-value pair: key, value type id, then the value's bytes as given.
pub fn kv(key: &str, type_id: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, key.as_bytes());
    out.extend_from_slice(&type_id.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// An array value's bytes: element type, count, then the elements as given.
pub fn array(elem_type: u32, count: u64, elements: &[u8]) -> Vec<u8> {
    let mut out = elem_type.to_le_bytes().to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(elements);
    out
}

/// A tensor info: name, dimensions (innermost first), ggml type id, data offset.
pub fn tensor_info(name: &str, dims: &[u64], type_id: u32, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, name.as_bytes());
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&type_id.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out
}

/// A whole file: magic, `version`, counts, `kvs`, `infos`, zero padding to `align`, then
/// `data_len` bytes of data (`0, 1, 2, …` wrapping).
pub fn file(
    version: u32,
    kvs: &[Vec<u8>],
    infos: &[Vec<u8>],
    align: usize,
    data_len: usize,
) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(infos.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    kvs.iter().for_each(|k| out.extend_from_slice(k));
    infos.iter().for_each(|i| out.extend_from_slice(i));
    out.resize(out.len().div_ceil(align) * align, 0);
    out.extend((0..data_len).map(|i| i as u8));
    out
}
