//! The [`Codec`] trait and the registry that maps persisted tags to codecs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{FragmentError, Result};
use crate::types::{CodecPolicy, Dtype};

/// Stable numeric tag of a codec, persisted in every stored fragment.
///
/// Tags are assigned once and never reused; see `docs/format.md` for the table.
pub type CodecTag = u16;

/// Tag of [`RawCodec`]; always registered.
pub const RAW_CODEC_TAG: CodecTag = 0;

/// Largest decoded size a codec is ever asked to produce (bounds every allocation
/// made while decoding stored data).
pub const MAX_DECODED_LEN: usize = 16 << 20;

/// What the encoder knows about the bytes it is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeHint {
    /// Element type when the bytes are tensor data.
    pub dtype: Option<Dtype>,
    /// How hard to work for a smaller encoding (the library's configured policy).
    pub policy: CodecPolicy,
}

/// A lossless byte transform with a stable tag.
///
/// Implementations must be deterministic (same input, hint and build: same output) and
/// their `decode` must treat its input as hostile: never panic, never allocate more than
/// `decoded_len` plus a small constant, and fail unless exactly `decoded_len` bytes result.
pub trait Codec: Send + Sync + fmt::Debug {
    /// Stable tag persisted with every object this codec encodes.
    fn tag(&self) -> CodecTag;

    /// Short human name, e.g. `zstd` or `planes`.
    fn name(&self) -> &'static str;

    /// Appends the encoding of `input` to `out`.
    fn encode(&self, input: &[u8], hint: EncodeHint, out: &mut Vec<u8>) -> Result<()>;

    /// Appends exactly `decoded_len` decoded bytes to `out`.
    fn decode(&self, input: &[u8], decoded_len: usize, out: &mut Vec<u8>) -> Result<()>;

    /// Decodes into `out`, whose length is the decoded length, writing every byte of it:
    /// its prior contents are never read and never matter, so bulk readers decode into
    /// reused buffers without clearing them. Fails exactly when [`decode`](Self::decode)
    /// would (then `out` holds unspecified bytes). The default decodes into a new vector
    /// and copies; codecs override it to decode in place.
    fn decode_into(&self, input: &[u8], out: &mut [u8]) -> Result<()> {
        let decoded = self.decode_to_vec(input, out.len())?;
        out.copy_from_slice(&decoded);
        Ok(())
    }

    /// Convenience: encode into a fresh vector.
    fn encode_to_vec(&self, input: &[u8], hint: EncodeHint) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        self.encode(input, hint, &mut out)?;
        Ok(out)
    }

    /// Convenience: decode into a fresh vector, with the length checked against
    /// [`MAX_DECODED_LEN`] before anything is allocated.
    fn decode_to_vec(&self, input: &[u8], decoded_len: usize) -> Result<Vec<u8>> {
        if decoded_len > MAX_DECODED_LEN {
            return Err(FragmentError::codec(
                self.name(),
                format!("declared length {decoded_len} exceeds the limit {MAX_DECODED_LEN}"),
            ));
        }
        let mut out = Vec::with_capacity(decoded_len);
        self.decode(input, decoded_len, &mut out)?;
        if out.len() != decoded_len {
            return Err(FragmentError::codec(
                self.name(),
                format!("decoded {} bytes, expected {decoded_len}", out.len()),
            ));
        }
        Ok(out)
    }
}

/// The identity codec: stored bytes are the fragment.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    fn tag(&self) -> CodecTag {
        RAW_CODEC_TAG
    }

    fn name(&self) -> &'static str {
        "raw"
    }

    fn encode(&self, input: &[u8], _hint: EncodeHint, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(input);
        Ok(())
    }

    fn decode(&self, input: &[u8], decoded_len: usize, out: &mut Vec<u8>) -> Result<()> {
        if input.len() != decoded_len {
            return Err(FragmentError::codec(
                "raw",
                format!("payload is {} bytes, expected {decoded_len}", input.len()),
            ));
        }
        out.extend_from_slice(input);
        Ok(())
    }

    fn decode_into(&self, input: &[u8], out: &mut [u8]) -> Result<()> {
        if input.len() != out.len() {
            return Err(FragmentError::codec(
                "raw",
                format!("payload is {} bytes, expected {}", input.len(), out.len()),
            ));
        }
        out.copy_from_slice(input);
        Ok(())
    }
}

/// The codecs a library can read, by tag, and the one it writes with.
#[derive(Clone)]
pub struct CodecRegistry {
    by_tag: BTreeMap<CodecTag, Arc<dyn Codec>>,
    encoder: Arc<dyn Codec>,
}

impl fmt::Debug for CodecRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodecRegistry")
            .field(
                "codecs",
                &self.by_tag.values().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .field("encoder", &self.encoder.name())
            .finish()
    }
}

impl Default for CodecRegistry {
    /// Only the raw codec: reads and writes uncompressed fragments.
    fn default() -> Self {
        let raw: Arc<dyn Codec> = Arc::new(RawCodec);
        Self {
            by_tag: BTreeMap::from([(RAW_CODEC_TAG, raw.clone())]),
            encoder: raw,
        }
    }
}

impl CodecRegistry {
    /// Adds a codec for reading. Panics on a tag clash, which is a programming error.
    pub fn register(mut self, codec: Arc<dyn Codec>) -> Self {
        let tag = codec.tag();
        if let Some(old) = self.by_tag.get(&tag) {
            assert_eq!(old.name(), codec.name(), "codec tag {tag} registered twice");
        }
        self.by_tag.insert(tag, codec);
        self
    }

    /// Registers `codec` and makes it the one new fragments are written with.
    pub fn with_encoder(self, codec: Arc<dyn Codec>) -> Self {
        let mut me = self.register(codec.clone());
        me.encoder = codec;
        me
    }

    /// The codec new fragments are written with: [`RawCodec`] unless
    /// [`Self::with_encoder`] chose another.
    pub fn encoder(&self) -> &Arc<dyn Codec> {
        &self.encoder
    }

    /// The codec registered under `tag`; `None` means objects with this tag cannot be
    /// read by this registry.
    pub fn get(&self, tag: CodecTag) -> Option<&Arc<dyn Codec>> {
        self.by_tag.get(&tag)
    }

    /// The name of the codec registered under `tag`, or `unknown(<tag>)`, for reports.
    pub fn name_of(&self, tag: CodecTag) -> String {
        self.get(tag)
            .map_or_else(|| format!("unknown({tag})"), |c| c.name().to_string())
    }

    /// Every registered codec, in tag order.
    pub fn codecs(&self) -> impl Iterator<Item = &Arc<dyn Codec>> {
        self.by_tag.values()
    }
}
