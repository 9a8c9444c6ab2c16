//! haagenti-codec: lossless codecs with stable tags, and the float-aware default.
//!
//! | tag | codec | payload |
//! |---|---|---|
//! | 0 | [`RawCodec`](haagenti_core::RawCodec) (in `haagenti-core`) | the bytes themselves |
//! | 1 | [`Lz4Codec`] (feature `lz4`) | one LZ4 block, no size prefix |
//! | 2 | [`ZstdCodec`] (feature `zstd`) | one zstd frame; the level is an encoder setting only |
//! | 3 | [`PlanesCodec`] | byte planes, each raw, constant, Huffman, LZ4 or zstd; see [`planes_codec`] |
//!
//! Tags are stored with every fragment and never reused. Every decoder treats its input
//! as hostile: declared sizes are checked against the payload and the expected output,
//! nothing is allocated beyond the expected output (itself capped at
//! [`MAX_DECODED_LEN`]), and no input panics.
//!
//! [`PlanesCodec`] reads [`CodecPolicy`](haagenti_core::CodecPolicy) from the
//! [`EncodeHint`](haagenti_core::EncodeHint): `Fast`, `Balanced` (the default) or `Max`.
//! On dense bf16 weights it reaches the entropy of the exponent plane (about 1.5x) at
//! GB/s speeds on one core; see the crate's benchmark in `haagenti-bench`.

#![warn(missing_docs, unreachable_pub)]

mod huffman;
#[cfg(feature = "lz4")]
mod lz4;
mod planes;
pub mod planes_codec;
#[cfg(feature = "zstd")]
mod zstd_codec;

use std::sync::Arc;

use haagenti_core::codec::MAX_DECODED_LEN;
use haagenti_core::{CodecRegistry, FragmentError, Result};

#[cfg(feature = "lz4")]
pub use lz4::{LZ4_CODEC_TAG, Lz4Codec};
pub use planes_codec::{PLANES_CODEC_TAG, PLANES_FORMAT_VERSION, PlanesCodec};
#[cfg(feature = "zstd")]
pub use zstd_codec::{ZSTD_CODEC_TAG, ZstdCodec};

/// A registry of every codec compiled into this build, for reading (raw, LZ4 and zstd
/// with their features, planes), with [`PlanesCodec`] as the encoder. A fragment written
/// by a codec this build lacks (its feature off) finds no codec for its tag.
pub fn default_registry() -> CodecRegistry {
    let registry = CodecRegistry::default();
    #[cfg(feature = "lz4")]
    let registry = registry.register(Arc::new(Lz4Codec));
    #[cfg(feature = "zstd")]
    let registry = registry.register(Arc::new(ZstdCodec::default()));
    registry.with_encoder(Arc::new(PlanesCodec))
}

/// Fails unless `decoded_len` is within [`MAX_DECODED_LEN`]: checked before a decoder
/// allocates anything.
pub(crate) fn check_decoded_len(codec: &'static str, decoded_len: usize) -> Result<()> {
    if decoded_len > MAX_DECODED_LEN {
        return Err(FragmentError::codec(
            codec,
            format!("declared length {decoded_len} exceeds the limit {MAX_DECODED_LEN}"),
        ));
    }
    Ok(())
}

/// Appends `decoded_len` bytes to `out` and lets `fill` write them; on failure `out` is
/// left as it was. The length is checked before anything is allocated.
#[cfg(any(feature = "lz4", feature = "zstd"))]
pub(crate) fn decode_appending(
    codec: &'static str,
    out: &mut Vec<u8>,
    decoded_len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<()>,
) -> Result<()> {
    check_decoded_len(codec, decoded_len)?;
    let start = out.len();
    out.resize(start + decoded_len, 0);
    let result = fill(&mut out[start..]);
    if result.is_err() {
        out.truncate(start);
    }
    result
}
