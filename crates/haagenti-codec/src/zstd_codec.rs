//! [`ZstdCodec`] (tag 2): one zstd frame. The level only steers the encoder; any frame
//! decodes without it.

use haagenti_core::codec::CodecTag;
use haagenti_core::{Codec, EncodeHint, FragmentError, Result};

use crate::{check_decoded_len, decode_appending};

/// zstd at a fixed level over the raw bytes. Decoding needs no level: any zstd frame
/// decodes, and the output must be exactly the declared length.
#[derive(Clone, Copy, Debug)]
pub struct ZstdCodec {
    /// Compression level used by `encode` (1..=22; zstd clamps out-of-range values).
    pub level: i32,
}

/// Codec tag of [`ZstdCodec`], stored with every fragment it encodes (never reused).
pub const ZSTD_CODEC_TAG: CodecTag = 2;

impl Default for ZstdCodec {
    /// Level 3, zstd's own default.
    fn default() -> Self {
        Self { level: 3 }
    }
}

impl Codec for ZstdCodec {
    fn tag(&self) -> CodecTag {
        ZSTD_CODEC_TAG
    }

    fn name(&self) -> &'static str {
        "zstd"
    }

    fn encode(&self, input: &[u8], _hint: EncodeHint, out: &mut Vec<u8>) -> Result<()> {
        compress(input, self.level, out).map_err(|e| FragmentError::codec("zstd", e))
    }

    fn decode(&self, input: &[u8], decoded_len: usize, out: &mut Vec<u8>) -> Result<()> {
        decode_appending("zstd", out, decoded_len, |dst| {
            decompress(input, dst).map_err(|e| FragmentError::codec("zstd", e))
        })
    }

    fn decode_into(&self, input: &[u8], out: &mut [u8]) -> Result<()> {
        check_decoded_len("zstd", out.len())?;
        decompress(input, out).map_err(|e| FragmentError::codec("zstd", e))
    }
}

/// Appends one zstd frame of `input` at `level` to `out`.
pub(crate) fn compress(input: &[u8], level: i32, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    out.resize(start + zstd::zstd_safe::compress_bound(input.len()), 0);
    match zstd::bulk::compress_to_buffer(input, &mut out[start..], level) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(format!("compress: {e}"))
        }
    }
}

/// Decodes one zstd frame that must fill `dst` exactly. zstd writes only into `dst`, so
/// a frame that declares (or produces) more fails instead of allocating.
pub(crate) fn decompress(input: &[u8], dst: &mut [u8]) -> Result<(), String> {
    let n = zstd::bulk::decompress_to_buffer(input, dst).map_err(|e| format!("decompress: {e}"))?;
    if n != dst.len() {
        return Err(format!(
            "frame decodes to {n} bytes, expected {}",
            dst.len()
        ));
    }
    Ok(())
}
