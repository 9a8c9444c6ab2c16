//! [`Lz4Codec`] (tag 1): one LZ4 block (lz4_flex, safe decoder), no size prefix, since
//! the decoded length is stored beside every fragment.

use haagenti_core::codec::CodecTag;
use haagenti_core::{Codec, EncodeHint, FragmentError, Result};

use crate::{check_decoded_len, decode_appending};

/// LZ4 block compression: fast, modest ratio; no entropy coding. The block must decode
/// to exactly the declared length.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lz4Codec;

/// Codec tag of [`Lz4Codec`], stored with every fragment it encodes (never reused).
pub const LZ4_CODEC_TAG: CodecTag = 1;

impl Codec for Lz4Codec {
    fn tag(&self) -> CodecTag {
        LZ4_CODEC_TAG
    }

    fn name(&self) -> &'static str {
        "lz4"
    }

    fn encode(&self, input: &[u8], _hint: EncodeHint, out: &mut Vec<u8>) -> Result<()> {
        compress(input, out).map_err(|e| FragmentError::codec("lz4", e))
    }

    fn decode(&self, input: &[u8], decoded_len: usize, out: &mut Vec<u8>) -> Result<()> {
        decode_appending("lz4", out, decoded_len, |dst| {
            decompress(input, dst).map_err(|e| FragmentError::codec("lz4", e))
        })
    }

    fn decode_into(&self, input: &[u8], out: &mut [u8]) -> Result<()> {
        check_decoded_len("lz4", out.len())?;
        decompress(input, out).map_err(|e| FragmentError::codec("lz4", e))
    }
}

/// Appends one LZ4 block of `input` to `out`.
pub(crate) fn compress(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    out.resize(
        start + lz4_flex::block::get_maximum_output_size(input.len()),
        0,
    );
    match lz4_flex::block::compress_into(input, &mut out[start..]) {
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

/// Decodes one LZ4 block that must fill `dst` exactly.
pub(crate) fn decompress(input: &[u8], dst: &mut [u8]) -> Result<(), String> {
    let n = lz4_flex::block::decompress_into(input, dst).map_err(|e| format!("decompress: {e}"))?;
    if n != dst.len() {
        return Err(format!(
            "block decodes to {n} bytes, expected {}",
            dst.len()
        ));
    }
    Ok(())
}
