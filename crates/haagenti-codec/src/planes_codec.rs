//! [`PlanesCodec`] (tag 3): byte planes by element width, each plane coded by the method
//! that suits it: raw, a constant, Huffman, LZ4 or zstd.
//!
//! # Payload format, version 1
//!
//! All integers little-endian. `decoded_len` is stored beside the fragment, not here.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, `1`; other values are rejected |
//! | 1 | `width` W: 1, 2, 4 or 8 (1 = no split) |
//! | 1 | layout: `0` plain planes, `1` each element rotated left one bit first (only with W > 1) |
//! | … | W plane records, plane `j` holding byte `j` of each of the `n = decoded_len / W` elements |
//! | `decoded_len % W` | the trailing partial element, verbatim |
//!
//! Nothing may follow. A plane record is a method byte and its data:
//!
//! | method | data |
//! |---|---|
//! | `0` raw | the `n` plane bytes |
//! | `1` constant | 1 byte, repeated `n` times |
//! | `2` Huffman | `u32` size, then a Huffman body (see below) decoding to `n` bytes |
//! | `3` LZ4 | `u32` size, then one LZ4 block decoding to exactly `n` bytes |
//! | `4` zstd | `u32` size, then zstd frame(s) decoding to exactly `n` bytes |
//!
//! A Huffman body is:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | `max_symbol`: the highest symbol that has a code |
//! | `(max_symbol + 2) / 2` | code lengths of symbols `0..=max_symbol`, 4 bits each, low nibble first; 0 = no code, at most 11; they must form a complete prefix code (Kraft sum exactly 1) |
//! | 3 × 4 | `u32` byte sizes of streams 0, 1 and 2; stream 3 takes the rest of the body |
//! | … | the four streams, back to back |
//!
//! The `n` plane bytes are cut into four segments of `ceil(n / 4)` bytes (the last one
//! shorter, possibly empty); stream `k` codes segment `k`. Codes are canonical and packed
//! exactly as in DEFLATE (RFC 1951, 3.1.1 and 3.2.2): codes of one length are consecutive
//! integers in symbol order, shorter lengths first; bytes fill from their least
//! significant bit; each code goes out most significant bit first. Each stream ends in
//! its last byte, padded with zero bits; a stream that decodes past that byte, or ends
//! before it, is corrupt.
//!
//! Rotation (layout 1) treats each element as a W-byte little-endian integer and rotates
//! it left by one bit before splitting; it is chosen for bf16 and f32, where it makes the
//! top plane exactly the 8-bit exponent.
//!
//! # Choosing a method per plane
//!
//! A plane whose bytes are all equal is stored as a constant. Otherwise, under `Fast` and
//! `Balanced`, a histogram of a sample (32 blocks of 1 KiB spread over the plane)
//! estimates the order-0 entropy: a plane that would shrink by less than 1/16 (a float's
//! low mantissa bytes) is stored raw at the cost of a copy. LZ4 on the first 16 KiB tells whether repetition beats the
//! entropy estimate by 10 % or more (blobs, sparse or quantised data); only then an LZ coder
//! is tried on the whole plane. A plane estimated below 2 bits per byte (XOR deltas of
//! fine-tunes, mostly-zero tensors) always tries the LZ coder too: Huffman cannot spend
//! less than one bit per byte, zstd's entropy stage can. Whatever is chosen, a plane never costs more than raw + 1.
//!
//! | policy | entropy coder | LZ coder when the probe favours it |
//! |---|---|---|
//! | `Fast` | Huffman | LZ4 |
//! | `Balanced` | Huffman | zstd level 3 |
//! | `Max` | Huffman, LZ4 and zstd level 9 are tried on every plane, zstd level 19 too where level 9 won; the smallest wins | |
//!
//! On dense floats `Fast` and `Balanced` make the same choice (the probe never fires); they
//! differ on data with repetition.

use haagenti_core::codec::CodecTag;
use haagenti_core::{Codec, CodecPolicy, EncodeHint, FragmentError, Result};

use crate::huffman::{self, Histogram};
use crate::{check_decoded_len, planes};

/// Byte planes with a per-plane entropy coder or LZ coder; the library's default encoder.
/// The element width comes from the hint's dtype (none: one plane) and the effort from its
/// [`CodecPolicy`]; see the module docs for the format and the choices.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanesCodec;

/// Codec tag of [`PlanesCodec`], stored with every fragment it encodes (never reused).
pub const PLANES_CODEC_TAG: CodecTag = 3;

/// Version byte at the start of every [`PlanesCodec`] payload (see the module docs for the
/// format); decoding a payload of any other version fails with a codec error.
pub const PLANES_FORMAT_VERSION: u8 = 1;

const LAYOUT_PLAIN: u8 = 0;
const LAYOUT_ROTATED: u8 = 1;

const METHOD_RAW: u8 = 0;
const METHOD_CONST: u8 = 1;
const METHOD_HUFFMAN: u8 = 2;
const METHOD_LZ4: u8 = 3;
const METHOD_ZSTD: u8 = 4;

const SAMPLE_BLOCKS: usize = 32;
const SAMPLE_BLOCK: usize = 1024;
const PROBE_LEN: usize = 16 << 10;
#[cfg(feature = "zstd")]
const BALANCED_ZSTD_LEVEL: i32 = 3;
#[cfg(feature = "zstd")]
const MAX_ZSTD_LEVEL_FIRST: i32 = 9;
#[cfg(feature = "zstd")]
const MAX_ZSTD_LEVEL: i32 = 19;

impl Codec for PlanesCodec {
    fn tag(&self) -> CodecTag {
        PLANES_CODEC_TAG
    }

    fn name(&self) -> &'static str {
        "planes"
    }

    fn encode(&self, input: &[u8], hint: EncodeHint, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        let result = encode(input, hint, out);
        if result.is_err() {
            out.truncate(start);
        }
        result.map_err(|e| FragmentError::codec("planes", e))
    }

    fn decode(&self, input: &[u8], decoded_len: usize, out: &mut Vec<u8>) -> Result<()> {
        check_decoded_len("planes", decoded_len)?;
        decode(input, decoded_len, Out::Append(out)).map_err(|e| FragmentError::codec("planes", e))
    }

    fn decode_into(&self, input: &[u8], out: &mut [u8]) -> Result<()> {
        check_decoded_len("planes", out.len())?;
        decode(input, out.len(), Out::Fill(out)).map_err(|e| FragmentError::codec("planes", e))
    }
}

fn encode(input: &[u8], hint: EncodeHint, out: &mut Vec<u8>) -> Result<(), String> {
    let (width, rotate) = planes::layout_for(hint.dtype);
    let n = input.len() / width;
    let body = n * width;
    out.extend([
        PLANES_FORMAT_VERSION,
        width as u8,
        if rotate { LAYOUT_ROTATED } else { LAYOUT_PLAIN },
    ]);
    let mut scratch = Vec::new();
    if width == 1 {
        encode_plane(input, hint.policy, out, &mut scratch)?;
    } else {
        with_planes_buffer(body, |split| {
            planes::split(input, width, rotate, split);
            for j in 0..width {
                encode_plane(&split[j * n..(j + 1) * n], hint.policy, out, &mut scratch)?;
            }
            Ok::<_, String>(())
        })?;
    }
    out.extend_from_slice(&input[body..]);
    Ok(())
}

/// A byte histogram of up to [`SAMPLE_BLOCKS`] blocks spread over `plane`.
struct Sample {
    hist: Histogram,
    len: usize,
}

fn sample(plane: &[u8]) -> Sample {
    if plane.len() <= SAMPLE_BLOCKS * SAMPLE_BLOCK * 2 {
        return Sample {
            hist: huffman::histogram(plane),
            len: plane.len(),
        };
    }
    let stride = plane.len() / SAMPLE_BLOCKS;
    let mut hist = [0u32; 256];
    for i in 0..SAMPLE_BLOCKS {
        let block = &plane[i * stride..i * stride + SAMPLE_BLOCK];
        for (h, c) in hist.iter_mut().zip(huffman::histogram(block)) {
            *h += c;
        }
    }
    Sample {
        hist,
        len: SAMPLE_BLOCKS * SAMPLE_BLOCK,
    }
}

/// `part / of` of `len`, without overflow.
fn scale(len: usize, part: usize, of: usize) -> usize {
    (len as u128 * part as u128 / of.max(1) as u128) as usize
}

/// Estimated bits per byte below which a plane counts as sparse (see `encode_plane`).
const SPARSE_BITS: usize = 2;

fn encode_plane(
    plane: &[u8],
    policy: CodecPolicy,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    let Some(&first) = plane.first() else {
        out.push(METHOD_RAW);
        return Ok(());
    };
    let s = sample(plane);
    if s.hist.iter().filter(|&&c| c > 0).count() == 1 && plane.iter().all(|&b| b == first) {
        out.extend([METHOD_CONST, first]);
        return Ok(());
    }
    let mark = out.len();
    let mut best = Best { out, mark, scratch };

    if policy == CodecPolicy::Max {
        return encode_plane_max(plane, best);
    }

    let estimate = scale(plane.len(), huffman::entropy_bytes(&s.hist), s.len);
    if estimate < plane.len() - plane.len() / 16 {
        best.offer(METHOD_HUFFMAN, |o| {
            huffman::encode(plane, o);
            Ok(())
        })?;
    }
    // Huffman spends at least one bit per byte: on sparse planes (XOR deltas, mostly-zero
    // tensors) the LZ coder's entropy stage does better, so it is tried outright there.
    let sparse = estimate < plane.len() * SPARSE_BITS / 8;
    let to_beat = best.size().unwrap_or(plane.len()).min(estimate);
    if sparse || lz_probe_wins(plane, to_beat) {
        offer_lz(&mut best, plane, policy)?;
    }
    best.finish(plane)
}

/// Tries every method; zstd at its highest level only where it already beat the
/// entropy coder at a moderate one (where matches exist, the search pays).
fn encode_plane_max(plane: &[u8], mut best: Best<'_>) -> Result<(), String> {
    best.offer(METHOD_HUFFMAN, |o| {
        huffman::encode(plane, o);
        Ok(())
    })?;
    #[cfg(feature = "lz4")]
    best.offer(METHOD_LZ4, |o| crate::lz4::compress(plane, o))?;
    #[cfg(feature = "zstd")]
    {
        best.offer(METHOD_ZSTD, |o| {
            crate::zstd_codec::compress(plane, MAX_ZSTD_LEVEL_FIRST, o)
        })?;
        if best.method() == Some(METHOD_ZSTD) {
            best.offer(METHOD_ZSTD, |o| {
                crate::zstd_codec::compress(plane, MAX_ZSTD_LEVEL, o)
            })?;
        }
    }
    best.finish(plane)
}

/// Whether an LZ coder on the start of `plane` beats `to_beat` (bytes for the whole
/// plane) by 10 %.
fn lz_probe_wins(plane: &[u8], to_beat: usize) -> bool {
    let probe = &plane[..plane.len().min(PROBE_LEN)];
    lz_probe_size(probe)
        .is_some_and(|size| scale(plane.len(), size, probe.len()) < to_beat - to_beat / 10)
}

/// Size of `probe` under LZ4 (zstd -1 without LZ4); `None` when neither is compiled in.
fn lz_probe_size(probe: &[u8]) -> Option<usize> {
    #[cfg(any(feature = "lz4", feature = "zstd"))]
    {
        let mut buf = Vec::new();
        #[cfg(feature = "lz4")]
        crate::lz4::compress(probe, &mut buf).ok()?;
        #[cfg(not(feature = "lz4"))]
        crate::zstd_codec::compress(probe, 1, &mut buf).ok()?;
        Some(buf.len())
    }
    #[cfg(not(any(feature = "lz4", feature = "zstd")))]
    {
        _ = probe;
        None
    }
}

#[allow(unused_variables, reason = "unused when no LZ coder is compiled in")]
fn offer_lz(best: &mut Best<'_>, plane: &[u8], policy: CodecPolicy) -> Result<(), String> {
    #[cfg(feature = "zstd")]
    if policy != CodecPolicy::Fast || cfg!(not(feature = "lz4")) {
        let level = if policy == CodecPolicy::Fast {
            1
        } else {
            BALANCED_ZSTD_LEVEL
        };
        return best.offer(METHOD_ZSTD, |o| {
            crate::zstd_codec::compress(plane, level, o)
        });
    }
    #[cfg(feature = "lz4")]
    best.offer(METHOD_LZ4, |o| crate::lz4::compress(plane, o))?;
    Ok(())
}

/// The smallest plane record offered so far, kept at `out[mark..]`.
struct Best<'a> {
    out: &'a mut Vec<u8>,
    mark: usize,
    scratch: &'a mut Vec<u8>,
}

impl Best<'_> {
    #[cfg(feature = "zstd")]
    fn method(&self) -> Option<u8> {
        self.out.get(self.mark).copied()
    }

    fn size(&self) -> Option<usize> {
        (self.out.len() > self.mark).then(|| self.out.len() - self.mark)
    }

    /// Writes `[method][u32 size][body]`, in place when nothing is held yet, else into
    /// the scratch buffer, keeping it only when smaller.
    fn offer(
        &mut self,
        method: u8,
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        match self.size() {
            None => write_sized(self.out, method, body),
            Some(held) => {
                self.scratch.clear();
                write_sized(self.scratch, method, body)?;
                if self.scratch.len() < held {
                    self.out.truncate(self.mark);
                    self.out.extend_from_slice(self.scratch);
                }
                Ok(())
            }
        }
    }

    /// Falls back to raw unless what is held is smaller.
    fn finish(self, plane: &[u8]) -> Result<(), String> {
        if self.size().is_none_or(|held| held > plane.len()) {
            self.out.truncate(self.mark);
            self.out.push(METHOD_RAW);
            self.out.extend_from_slice(plane);
        }
        Ok(())
    }
}

fn write_sized(
    out: &mut Vec<u8>,
    method: u8,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    let start = out.len();
    out.extend([method, 0, 0, 0, 0]);
    body(out)?;
    let size = u32::try_from(out.len() - start - 5)
        .map_err(|_| "plane record exceeds 4 GiB".to_string())?;
    out[start + 1..start + 5].copy_from_slice(&size.to_le_bytes());
    Ok(())
}

/// Bounds-checked reads from a payload.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let (head, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or_else(|| format!("payload truncated in {what}"))?;
        self.rest = rest;
        Ok(head)
    }

    /// A `u32` size followed by that many bytes.
    fn sized(&mut self, what: &str) -> Result<&'a [u8], String> {
        let size = self.take(4, what)?;
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
        self.take(size as usize, what)
    }
}

/// Where [`decode`] puts the decoded bytes.
enum Out<'o> {
    /// Appended to the vector (which is never zero-filled first).
    Append(&'o mut Vec<u8>),
    /// Written over the slice, which is exactly `decoded_len` bytes long.
    Fill(&'o mut [u8]),
}

/// Decodes the payload into the planes buffer, checks it whole, then interleaves the
/// `decoded_len` bytes into `out` (nothing is appended on failure).
fn decode(input: &[u8], decoded_len: usize, out: Out<'_>) -> Result<(), String> {
    let mut r = Reader { rest: input };
    let version = r.u8("header")?;
    if version != PLANES_FORMAT_VERSION {
        return Err(format!(
            "payload format version {version}; this build reads version {PLANES_FORMAT_VERSION}"
        ));
    }
    let width = usize::from(r.u8("header")?);
    if !matches!(width, 1 | 2 | 4 | 8) {
        return Err(format!("invalid plane width {width}"));
    }
    let rotate = match r.u8("header")? {
        LAYOUT_PLAIN => false,
        LAYOUT_ROTATED if width > 1 => true,
        other => return Err(format!("invalid layout {other} for width {width}")),
    };
    let n = decoded_len / width;
    let body = n * width;
    with_planes_buffer(body, |split| {
        // Raw planes are merged straight from the payload, never copied into the buffer.
        let mut raw: [Option<&[u8]>; 8] = [None; 8];
        for j in 0..width {
            raw[j] = decode_plane(&mut r, &mut split[j * n..(j + 1) * n]).map_err(|e| {
                if width == 1 {
                    e
                } else {
                    format!("plane {j}: {e}")
                }
            })?;
        }
        let tail = r.take(decoded_len - body, "trailing element")?;
        if !r.rest.is_empty() {
            return Err(format!(
                "{} unexpected bytes after the payload",
                r.rest.len()
            ));
        }
        let planes: [&[u8]; 8] = std::array::from_fn(|j| match raw[j] {
            Some(plane) => plane,
            None => split.get(j * n..(j + 1) * n).unwrap_or_default(),
        });
        match out {
            Out::Append(out) => {
                out.reserve(decoded_len);
                planes::merge_append(&planes[..width], rotate, out);
                out.extend_from_slice(tail);
            }
            Out::Fill(out) => {
                let (elements, rest) = out.split_at_mut(body);
                planes::merge_into(&planes[..width], rotate, elements);
                rest.copy_from_slice(tail);
            }
        }
        Ok(())
    })
}

thread_local! {
    /// The byte planes of the fragment being coded on this thread, kept between calls. A
    /// fresh zeroed 1-2 MiB buffer per fragment cost a page fault every 4 KiB: about a
    /// quarter of an export's page faults. Every byte is written (by `planes::split`, or
    /// by decoding each plane in full) before it is read, so the buffer is not cleared.
    static PLANES_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest planes buffer a thread keeps between calls (default fragments need 1-2 MiB);
/// larger ones are freed after use, so what threads retain stays small.
const PLANES_BUFFER_KEPT: usize = 4 << 20;

/// Runs `f` on this thread's planes buffer, `len` bytes long (bounded by the codec's
/// callers: fragments are at most `MAX_DECODED_LEN`).
fn with_planes_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    PLANES_BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, 0);
            }
            let result = f(&mut buffer[..len]);
            if buffer.len() > PLANES_BUFFER_KEPT {
                *buffer = Vec::new();
            }
            result
        }
        // Not reentrant in practice; a fresh buffer keeps it correct if it ever is.
        Err(_) => f(&mut vec![0u8; len]),
    })
}

/// Decodes one plane into `dst`, except a raw plane, which is returned as the payload's
/// own bytes (`dst` is then left as it was).
fn decode_plane<'a>(r: &mut Reader<'a>, dst: &mut [u8]) -> Result<Option<&'a [u8]>, String> {
    match r.u8("plane method")? {
        METHOD_RAW => return r.take(dst.len(), "raw plane").map(Some),
        METHOD_CONST => dst.fill(r.u8("constant plane")?),
        METHOD_HUFFMAN => huffman::decode(r.sized("huffman plane")?, dst)?,
        #[cfg(feature = "lz4")]
        METHOD_LZ4 => crate::lz4::decompress(r.sized("lz4 plane")?, dst)?,
        #[cfg(feature = "zstd")]
        METHOD_ZSTD => crate::zstd_codec::decompress(r.sized("zstd plane")?, dst)?,
        #[cfg(not(feature = "lz4"))]
        METHOD_LZ4 => return Err("lz4 planes are not compiled into this build".into()),
        #[cfg(not(feature = "zstd"))]
        METHOD_ZSTD => return Err("zstd planes are not compiled into this build".into()),
        m => return Err(format!("unknown plane method {m}")),
    }
    Ok(None)
}
