//! Fragment objects: every write and read of a fragment goes through here.
//!
//! * Writes encode a fragment (standalone with the registry's encoder, or as a cast or
//!   delta object built by the similarity decision), seal it, and put it create-only: an
//!   object that already exists is never touched (content addressing makes it the same).
//! * Reads fetch an object, read its header, fetch its one dependency (delta base or cast
//!   source; depth 1, so at most two reads), decode, and check the BLAKE3 of the result
//!   against the id. Nothing leaves this module unverified.
//!
//! The fragment cache (`cache.rs`) wraps [`FragmentLibrary::read_fragment`]; which reads go
//! through it is the caller's choice ([`Via`]).

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::FragmentLibrary;
use crate::buffers;
use crate::cast;
use crate::codec::{CodecRegistry, EncodeHint, MAX_DECODED_LEN, RAW_CODEC_TAG};
use crate::error::{FragmentError, Result};
use crate::object::{self, ObjectHeader};
use crate::store::{ObjectKey, PutOutcome};
use crate::types::{Dtype, Encoding, Fragment, FragmentId, FragmentMetadata, LegacyQuant};

/// What [`FragmentLibrary::put_fragment`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutFragment {
    /// The fragment's id (BLAKE3 of its bytes).
    pub id: FragmentId,
    /// False when an object with this id was already stored.
    pub created: bool,
    /// Size of the stored object (0 when it already existed and was not written).
    pub stored_len: u64,
    /// The fragment the stored object depends on (delta base or cast source).
    pub depends_on: Option<FragmentId>,
}

/// What a create-only write of a fragment object did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Stored {
    /// Written by this call in `encoding`, `stored_len` bytes.
    Written { encoding: Encoding, stored_len: u64 },
    /// Another writer created the object first; it depends on `depends_on`.
    Raced { depends_on: Option<FragmentId> },
}

/// Where a read gets a fragment's dependency (and, for the caller, the fragment itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// The fragment cache, else the store (then cached): what model readers use.
    Cache,
    /// The fragment cache when it holds the fragment, else the store without keeping
    /// the result (its dependency still comes through, and stays in, the cache): for
    /// readers whose consumer keeps the bytes itself, as the kernel's page cache does
    /// behind `haagenti mount`. Caching them twice would cost memory, and every new
    /// cache entry is fresh memory the allocator must fault in.
    Peek,
    /// The store, bypassing the cache: what export, verify and repair-minded code use,
    /// since their job is to check the stored objects.
    Store,
}

/// Where [`FragmentLibrary::read_fragment`] gets a dependency; `Refused` for the
/// dependency itself, which must not have one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DependencyFrom {
    Cache,
    Store,
    Refused,
}

impl DependencyFrom {
    /// Where a read `via` gets the fragment's dependency.
    fn of(via: Via) -> Self {
        match via {
            Via::Cache | Via::Peek => DependencyFrom::Cache,
            Via::Store => DependencyFrom::Store,
        }
    }
}

impl FragmentLibrary {
    /// The id of `data`, hashed holding a CPU permit.
    pub(super) async fn hash(&self, data: Bytes) -> Result<FragmentId> {
        self.on_cpu(move || FragmentId::of(&data)).await
    }

    /// Stores `data` as a standalone fragment unless an object with its id exists; the
    /// object is durable when this returns.
    pub async fn put_fragment(&self, data: Bytes, dtype: Option<Dtype>) -> Result<PutFragment> {
        let id = self.hash(data.clone()).await?;
        if let Some(header) = self.fragment_header(&id).await? {
            self.store().flush().await?;
            return Ok(PutFragment {
                id,
                created: false,
                stored_len: 0,
                depends_on: header.dependency(),
            });
        }
        let stored = self.write_standalone(id, data, dtype).await?;
        self.store().flush().await?;
        Ok(match stored {
            Stored::Written { stored_len, .. } => PutFragment {
                id,
                created: true,
                stored_len,
                depends_on: None,
            },
            Stored::Raced { depends_on } => PutFragment {
                id,
                created: false,
                stored_len: 0,
                depends_on,
            },
        })
    }

    /// How a fragment is stored (`None` if it is not): its header plus the object size.
    pub async fn fragment_info(&self, id: &FragmentId) -> Result<Option<FragmentMetadata>> {
        let Some(header) = self.fragment_header(id).await? else {
            return Ok(None);
        };
        let stored_len = self
            .store()
            .head(&ObjectKey::fragment(id))
            .await?
            .map_or(0, |m| m.size);
        Ok(Some(FragmentMetadata {
            id: *id,
            len: header.decoded_len,
            stored_len,
            encoding: header.encoding,
            dtype: header.dtype,
        }))
    }

    /// Reads only the header of a stored fragment; `None` if it is not stored.
    pub(crate) async fn fragment_header(&self, id: &FragmentId) -> Result<Option<ObjectHeader>> {
        let key = ObjectKey::fragment(id);
        match self
            .store()
            .get_range(&key, 0..object::MAX_OBJECT_HEADER_LEN as u64)
            .await
        {
            Ok(bytes) => object::decode_header(&bytes, key.as_str()).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Fetches, decodes and verifies a fragment (at most two reads: deltas have depth 1),
    /// through the library's fragment cache (off unless
    /// [`with_cache_bytes`](Self::with_cache_bytes) turned it on). The bytes are the
    /// cache's own (shared, never copied) and hash to `id`.
    pub async fn get_fragment(&self, id: &FragmentId) -> Result<Fragment> {
        let data = self.fragment_via(id, Via::Cache).await?;
        Ok(Fragment { id: *id, data })
    }

    /// A verified fragment, read as `via` says.
    pub(crate) async fn fragment_via(&self, id: &FragmentId, via: Via) -> Result<Bytes> {
        match via {
            Via::Cache => self.cached_fragment(id).await,
            Via::Peek => self.peeked_fragment(id).await,
            Via::Store => self.read_fragment(id, Via::Store).await,
        }
    }

    /// Fetches, decodes and verifies one fragment, getting its delta base or cast source
    /// as `via` says. The dependency must not have one itself (deltas have depth 1).
    pub(super) async fn read_fragment(&self, id: &FragmentId, via: Via) -> Result<Bytes> {
        let from = DependencyFrom::of(via);
        self.read_object(id, from).await
    }

    /// [`read_object_once`](Self::read_object_once), fetched a second time when the
    /// bytes fail verification: a body damaged on its way from a network store reads back
    /// whole the second time, while damage at rest fails again and is reported.
    async fn read_object(&self, id: &FragmentId, from: DependencyFrom) -> Result<Bytes> {
        match self.read_object_once(id, from).await {
            Err(e) if e.is_corruption() => self.read_object_once(id, from).await,
            read => read,
        }
    }

    async fn read_object_once(&self, id: &FragmentId, from: DependencyFrom) -> Result<Bytes> {
        let (raw, header, dependency) = self.read_parts(id, from).await?;
        let codecs = self.codecs().clone();
        let id = *id;
        // Decoding is CPU work like any other: at most `parallelism` at once, so that
        // readers with many fragments in flight do not multiply threads (each keeps a
        // codec scratch buffer and an allocator arena).
        let (data, elapsed) = self
            .on_cpu(move || {
                let started = Instant::now();
                let data = decode_verified(&codecs, &id, &raw, &header, dependency.as_deref());
                (data, started.elapsed())
            })
            .await?;
        self.inner.cache.count_decode(elapsed);
        data.map(|d| buffers::FRAGMENTS.into_bytes(d))
    }

    /// Fetches, decodes and verifies one fragment into `out` (of the fragment's length),
    /// its dependency read as `via` says; `out` comes back with the fragment's bytes.
    /// For readers that place fragments into a larger buffer of their own without a copy;
    /// the fragment itself is not cached. Read again once if it fails verification, as
    /// [`read_object`](Self::read_object) does.
    pub(crate) async fn read_fragment_into(
        &self,
        id: &FragmentId,
        via: Via,
        out: BytesMut,
    ) -> Result<BytesMut> {
        let from = DependencyFrom::of(via);
        let (out, done) = match self.read_object_into(id, from, out).await {
            (out, Err(e)) if e.is_corruption() => self.read_object_into(id, from, out).await,
            first => first,
        };
        done.map(|()| out)
    }

    async fn read_object_into(
        &self,
        id: &FragmentId,
        from: DependencyFrom,
        mut out: BytesMut,
    ) -> (BytesMut, Result<()>) {
        let (raw, header, dependency) = match self.read_parts(id, from).await {
            Ok(parts) => parts,
            Err(e) => return (out, Err(e)),
        };
        let codecs = self.codecs().clone();
        let id = *id;
        // `out` is a caller's buffer, typically fresh from the allocator.
        let decoded = self
            .on_cpu_fresh(move || {
                let started = Instant::now();
                let target = Out::Filled(&mut out);
                let done =
                    decode_verified_to(&codecs, &id, &raw, &header, dependency.as_deref(), target);
                (out, done, started.elapsed())
            })
            .await;
        match decoded {
            Ok((out, done, elapsed)) => {
                self.inner.cache.count_decode(elapsed);
                (out, done)
            }
            // The buffer went with the task; the caller gets the error, not its bytes.
            Err(e) => (BytesMut::new(), Err(e)),
        }
    }

    /// Fragment `id`'s object, its parsed header and its dependency's decoded bytes.
    async fn read_parts(
        &self,
        id: &FragmentId,
        from: DependencyFrom,
    ) -> Result<(Bytes, ObjectHeader, Option<Bytes>)> {
        let key = ObjectKey::fragment(id);
        let raw = self.store().get(&key).await?;
        self.inner.cache.count_store_read(raw.len());
        let header = object::decode_header(&raw, key.as_str())?;
        let dependency = match header.dependency() {
            None => None,
            Some(dep) if from == DependencyFrom::Refused || dep == *id => {
                return Err(FragmentError::corrupt(
                    key.as_str(),
                    "a fragment's dependency has a dependency itself (depth must be 1)",
                ));
            }
            Some(dep) if from == DependencyFrom::Store => {
                Some(Box::pin(self.read_object(&dep, DependencyFrom::Refused)).await?)
            }
            Some(dep) => Some(
                self.cached_dependency(&dep, || {
                    Box::pin(self.read_object(&dep, DependencyFrom::Refused))
                })
                .await?,
            ),
        };
        Ok((raw, header, dependency))
    }

    /// Reads a fragment that may serve as a delta base or cast source: `None` unless it
    /// is stored standalone (depth 1) and decodes to its id. A damaged or vanished
    /// candidate is simply not used.
    pub(super) async fn standalone_fragment(&self, id: &FragmentId) -> Result<Option<Bytes>> {
        let key = ObjectKey::fragment(id);
        let raw = match self.store().get(&key).await {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(header) = object::decode_header(&raw, key.as_str()) else {
            return Ok(None);
        };
        if header.dependency().is_some() {
            return Ok(None);
        }
        let codecs = self.codecs().clone();
        let id = *id;
        // Its buffer goes back to the pool once dropped: ingest reads a base or cast
        // source for many fragments, and fresh 1-2 MiB buffers cost a page fault per page.
        self.on_cpu(move || {
            decode_verified(&codecs, &id, &raw, &header, None)
                .ok()
                .map(|d| buffers::FRAGMENTS.into_bytes(d))
        })
        .await
    }

    /// Encodes and writes a standalone object.
    pub(super) async fn write_standalone(
        &self,
        id: FragmentId,
        data: Bytes,
        dtype: Option<Dtype>,
    ) -> Result<Stored> {
        let hint = EncodeHint {
            dtype,
            policy: self.config().codec_policy,
        };
        let codecs = self.codecs().clone();
        let (encoding, object) = self
            .on_cpu(move || standalone_object(&codecs, &data, hint))
            .await??;
        self.put_object(id, object, encoding).await
    }

    /// Writes a payload-free object (a cast or a quant: a header, no payload) for a
    /// fragment of `len` bytes.
    pub(super) async fn write_cast(
        &self,
        id: FragmentId,
        encoding: Encoding,
        len: usize,
        dtype: Option<Dtype>,
    ) -> Result<Stored> {
        let mut object = Vec::with_capacity(object::MAX_OBJECT_HEADER_LEN);
        object::write_header(&mut object, &encoding, len as u64, dtype);
        object::seal(&mut object);
        self.put_object(id, object, encoding).await
    }

    /// Writes a sealed object of `encoding` create-only, durable once the store is
    /// flushed (ingest flushes before the manifest).
    pub(super) async fn put_object(
        &self,
        id: FragmentId,
        object: Vec<u8>,
        encoding: Encoding,
    ) -> Result<Stored> {
        let stored_len = object.len() as u64;
        let key = ObjectKey::fragment(&id);
        // Back to the pool once written (a put keeps no reference).
        let object = buffers::OBJECTS.into_bytes(object);
        match self.store().put_deferred(&key, object).await? {
            PutOutcome::Created => Ok(Stored::Written {
                encoding,
                stored_len,
            }),
            _ => Ok(Stored::Raced {
                depends_on: self
                    .fragment_header(&id)
                    .await?
                    .and_then(|h| h.dependency()),
            }),
        }
    }
}

/// Encodes `data` with the registry's encoder, falling back to raw when that is no smaller.
fn encode_standalone(codecs: &CodecRegistry, data: &[u8], hint: EncodeHint) -> Result<Vec<u8>> {
    // Room for the raw fallback, from the pool ingest's writes hand back to.
    let mut out =
        buffers::OBJECTS.take((object::MAX_OBJECT_HEADER_LEN + data.len()).min(buffers::KEPT_LEN));
    let encoder = codecs.encoder();
    let standalone = |codec| Encoding::Standalone { codec };
    if encoder.tag() != RAW_CODEC_TAG && !data.is_empty() {
        object::write_header(
            &mut out,
            &standalone(encoder.tag()),
            data.len() as u64,
            hint.dtype,
        );
        let header_len = out.len();
        encoder.encode(data, hint, &mut out)?;
        if out.len() - header_len < data.len() {
            object::seal(&mut out);
            return Ok(out);
        }
        out.clear();
    }
    object::write_header(
        &mut out,
        &standalone(RAW_CODEC_TAG),
        data.len() as u64,
        hint.dtype,
    );
    out.extend_from_slice(data);
    object::seal(&mut out);
    Ok(out)
}

/// The standalone object of `data` and its encoding (the codec it settled on).
pub(super) fn standalone_object(
    codecs: &CodecRegistry,
    data: &[u8],
    hint: EncodeHint,
) -> Result<(Encoding, Vec<u8>)> {
    let object = encode_standalone(codecs, data, hint)?;
    Ok((
        object::decode_header(&object, "new object")?.encoding,
        object,
    ))
}

/// The sealed object of an XOR delta (`xor` = fragment ^ base) in `encoding`, which names
/// the base (a delta) or the cast source (a delta against a cast).
pub(super) fn delta_object(
    codecs: &CodecRegistry,
    encoding: &Encoding,
    xor: &[u8],
    hint: EncodeHint,
) -> Result<Vec<u8>> {
    let mut object = Vec::with_capacity(object::MAX_OBJECT_HEADER_LEN + xor.len() / 4);
    object::write_header(&mut object, encoding, xor.len() as u64, hint.dtype);
    codecs.encoder().encode(xor, hint, &mut object)?;
    object::seal(&mut object);
    Ok(object)
}

/// Decodes an object whose header is parsed, given its dependency's decoded bytes, and
/// checks the result against `id`: into a reused buffer when one fits, else a new one.
pub(super) fn decode_verified(
    codecs: &CodecRegistry,
    id: &FragmentId,
    raw: &[u8],
    header: &ObjectHeader,
    dependency: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let len = header.decoded_len as usize; // bounded by decode_header
    match buffers::FRAGMENTS.reuse_filled(len) {
        Some(mut out) => {
            decode_verified_to(codecs, id, raw, header, dependency, Out::Filled(&mut out))?;
            Ok(out)
        }
        None => {
            let mut out = Vec::with_capacity(len);
            decode_verified_to(codecs, id, raw, header, dependency, Out::New(&mut out))?;
            Ok(out)
        }
    }
}

/// Where a decode writes.
enum Out<'a> {
    /// A buffer of the decoded length, every byte of which is overwritten.
    Filled(&'a mut [u8]),
    /// An empty vector that codecs append to (never zero-filled first).
    New(&'a mut Vec<u8>),
}

impl Out<'_> {
    /// The output as `len` bytes, zero-filled where it had none.
    fn filled(&mut self, len: usize) -> &mut [u8] {
        match self {
            Out::Filled(out) => out,
            Out::New(out) => {
                out.resize(len, 0);
                out
            }
        }
    }
}

/// [`decode_verified`] into `out`.
fn decode_verified_to(
    codecs: &CodecRegistry,
    id: &FragmentId,
    raw: &[u8],
    header: &ObjectHeader,
    dependency: Option<&[u8]>,
    mut out: Out<'_>,
) -> Result<()> {
    let key = || ObjectKey::fragment(id).to_string();
    object::verify_checksum(raw, &key())?;
    let payload = &raw[header.header_len..];
    let len = header.decoded_len as usize; // bounded by decode_header
    if let Out::Filled(out) = &out
        && out.len() != len
    {
        return Err(FragmentError::corrupt(
            key(),
            "fragment length differs from the manifest's",
        ));
    }
    let codec = |tag: u16| {
        codecs
            .get(tag)
            .cloned()
            .ok_or_else(|| FragmentError::UnknownTag {
                key: key(),
                what: "codec",
                tag: u32::from(tag),
            })
    };
    let with_key = |e: FragmentError| FragmentError::corrupt(key(), e.to_string());
    let cast_into = |source: &[u8], from: Dtype, to: Dtype, out: &mut [u8]| {
        // `convert_into` writes every byte or fails.
        if cast::convert_into(source, from, to, out) {
            Ok(())
        } else {
            Err(FragmentError::corrupt(
                key(),
                format!("cannot rebuild a {to} cast of its source"),
            ))
        }
    };
    let quant_of = |source: &[u8], from: Dtype, to: LegacyQuant| {
        quantize_source(source, from, to)
            .filter(|v| v.len() == len)
            .ok_or_else(|| {
                FragmentError::corrupt(
                    key(),
                    format!("cannot rebuild a {to:?} quantization of its source"),
                )
            })
    };
    // The payload's codec output, every byte of `out` (or the read fails).
    let decode = |tag: u16, out: &mut Out<'_>| {
        let codec = codec(tag)?;
        if len > MAX_DECODED_LEN {
            return Err(with_key(FragmentError::codec(
                codec.name(),
                format!("declared length {len} exceeds the limit {MAX_DECODED_LEN}"),
            )));
        }
        match out {
            Out::Filled(out) => codec.decode_into(payload, out).map_err(with_key),
            Out::New(out) => {
                codec.decode(payload, len, out).map_err(with_key)?;
                if out.len() != len {
                    return Err(with_key(FragmentError::codec(
                        codec.name(),
                        format!("decoded {} bytes, expected {len}", out.len()),
                    )));
                }
                Ok(())
            }
        }
    };
    let xor_with = |out: &mut [u8], base: &[u8]| {
        if xor_into(out, base) {
            Ok(())
        } else {
            Err(FragmentError::corrupt(
                key(),
                "delta and base lengths differ",
            ))
        }
    };
    match (header.encoding, dependency) {
        (Encoding::Standalone { codec: tag }, None) => decode(tag, &mut out)?,
        (Encoding::Delta { codec: tag, .. }, Some(base)) => {
            decode(tag, &mut out)?;
            xor_with(out.filled(len), base)?;
        }
        (Encoding::Cast { from, to, .. }, Some(source)) => {
            cast_into(source, from, to, out.filled(len))?;
        }
        (
            Encoding::CastDelta {
                codec: tag,
                from,
                to,
                ..
            },
            Some(source),
        ) => {
            decode(tag, &mut out)?;
            // A reused buffer for the cast, handed back once applied.
            let mut cast = buffers::FRAGMENTS.take_filled(len);
            cast_into(source, from, to, &mut cast)?;
            xor_with(out.filled(len), &cast)?;
            drop(buffers::FRAGMENTS.into_bytes(cast));
        }
        (Encoding::Quant { from, to, .. }, Some(source)) => {
            let quant = quant_of(source, from, to)?;
            match &mut out {
                Out::New(out) => **out = quant,
                Out::Filled(out) => out.copy_from_slice(&quant),
            }
        }
        (
            Encoding::QuantDelta {
                codec: tag,
                from,
                to,
                ..
            },
            Some(source),
        ) => {
            decode(tag, &mut out)?;
            xor_with(out.filled(len), &quant_of(source, from, to)?)?;
        }
        _ => {
            return Err(FragmentError::corrupt(
                key(),
                "encoding and dependency disagree",
            ));
        }
    }
    let actual = FragmentId::of(out.filled(len));
    if actual != *id {
        return Err(FragmentError::HashMismatch { id: *id, actual });
    }
    Ok(())
}

/// The reference quantization to `to` of the values of `source` (elements of `from`,
/// a float type): `None` unless the values are a whole number of blocks.
pub(super) fn quantize_source(source: &[u8], from: Dtype, to: LegacyQuant) -> Option<Vec<u8>> {
    if !matches!(from, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return None;
    }
    let mut values = Vec::new();
    cast::decode_values(source, from, &mut values)?;
    to.quantize(&values)
}

/// `xor ^= base` element-wise; false when the lengths differ.
fn xor_into(xor: &mut [u8], base: &[u8]) -> bool {
    if xor.len() != base.len() {
        return false;
    }
    xor.iter_mut().zip(base).for_each(|(x, b)| *x ^= b);
    true
}
