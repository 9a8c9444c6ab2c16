//! Random access to the bytes of a stored file: [`FileReader`], the one read path.
//!
//! A stored file is a sequence of *pieces*: the verbatim safetensors header (kept in the
//! manifest), then the fragments of its tensors in file order; or, for any other file, its
//! content-defined chunks. A read of any byte range maps the range to the pieces it
//! touches, fetches only those fragments (in parallel, verified against their ids), and
//! returns exactly the source bytes. Export, verify and tensor reads
//! ([`ModelHandle`](super::ModelHandle)) are all clients of this path.
//!
//! Sequential readers get read-ahead: a read that continues where an earlier one (or one
//! close to it) ended starts fetching the next fragments before they are asked for; any
//! other read that lands in a tensor fetches the rest of that tensor. The reader keeps at
//! most the fragments of the current read plus the read-ahead window, so memory stays
//! bounded whatever the file size.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use futures::{Stream, StreamExt, TryStreamExt};

use super::objects::Via;
use super::{FragmentLibrary, join_error};
use crate::error::{FragmentError, Result};
use crate::manifest::{FileContent, FileManifest, GgufGap, GgufPart};
use crate::types::FragmentId;

/// One file of a stored model, as [`ModelHandle::files`](super::ModelHandle::files)
/// lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFile {
    /// Relative path with `/` separators.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// BLAKE3 of the whole file as ingested.
    pub blake3: [u8; 32],
    /// True when lossy substitutions (opt-in at ingest) make the stored bytes differ from
    /// the ingested file: then `blake3` does not describe what a reader returns.
    pub lossy: bool,
}

/// How a file's bytes are laid out: its pieces in file order.
#[derive(Debug)]
pub(super) struct FileLayout {
    pub(super) file: ModelFile,
    /// Offset of each piece in the file; `starts[i + 1]` ends piece `i`.
    starts: Vec<u64>,
    pieces: Vec<Piece>,
    /// Tensor names, for error messages.
    tensors: Vec<String>,
}

#[derive(Debug)]
enum Piece {
    /// Bytes kept in the manifest (the safetensors header).
    Inline(Bytes),
    /// A fragment: chunk `index` of a blob, or fragment `index` of tensor `tensor`.
    Fragment {
        id: FragmentId,
        tensor: Option<usize>,
        index: usize,
    },
}

impl FileLayout {
    pub(super) fn new(file: &FileManifest, lossy: bool) -> Self {
        let mut layout = FileLayout {
            file: ModelFile {
                path: file.path.clone(),
                size: file.size,
                blake3: file.blake3,
                lossy,
            },
            starts: vec![0],
            pieces: Vec::new(),
            tensors: Vec::new(),
        };
        let push = |piece: Piece, len: u64, layout: &mut FileLayout| {
            if len > 0 {
                let end = layout.starts[layout.starts.len() - 1] + len;
                layout.starts.push(end);
                layout.pieces.push(piece);
            }
        };
        match &file.content {
            FileContent::Safetensors { header, tensors } => {
                push(
                    Piece::Inline(Bytes::copy_from_slice(header)),
                    header.len() as u64,
                    &mut layout,
                );
                for (t, tensor) in tensors.iter().enumerate() {
                    layout.tensors.push(tensor.name.clone());
                    for (index, r) in tensor.fragments.iter().enumerate() {
                        let piece = Piece::Fragment {
                            id: r.id,
                            tensor: Some(t),
                            index,
                        };
                        push(piece, u64::from(r.len), &mut layout);
                    }
                }
            }
            FileContent::Blob { chunks } => {
                for (index, r) in chunks.iter().enumerate() {
                    let piece = Piece::Fragment {
                        id: r.id,
                        tensor: None,
                        index,
                    };
                    push(piece, u64::from(r.len), &mut layout);
                }
            }
            FileContent::Gguf {
                metadata, tensors, ..
            } => {
                // Metadata chunks, then the parts; chunked gaps continue the chunk count.
                let mut chunk = 0;
                for r in metadata {
                    let piece = Piece::Fragment {
                        id: r.id,
                        tensor: None,
                        index: chunk,
                    };
                    chunk += 1;
                    push(piece, u64::from(r.len), &mut layout);
                }
                layout.tensors = tensors.iter().map(|t| t.name.clone()).collect();
                // A manifest is validated before it is laid out: the parts tile the file.
                let parts = file.gguf_parts().and_then(|p| p.ok()).unwrap_or_default();
                for part in parts {
                    match part {
                        GgufPart::Tensor(t, tensor) => {
                            for (index, r) in tensor.fragments.iter().enumerate() {
                                let piece = Piece::Fragment {
                                    id: r.id,
                                    tensor: Some(t),
                                    index,
                                };
                                push(piece, u64::from(r.len), &mut layout);
                            }
                        }
                        GgufPart::Gap(GgufGap::Inline { bytes, .. }) => push(
                            Piece::Inline(Bytes::copy_from_slice(bytes)),
                            bytes.len() as u64,
                            &mut layout,
                        ),
                        GgufPart::Gap(GgufGap::Chunks { chunks, .. }) => {
                            for r in chunks {
                                let piece = Piece::Fragment {
                                    id: r.id,
                                    tensor: None,
                                    index: chunk,
                                };
                                chunk += 1;
                                push(piece, u64::from(r.len), &mut layout);
                            }
                        }
                    }
                }
            }
        }
        layout
    }

    /// Every fragment of the file with its byte range, in file order.
    pub(super) fn fragment_ranges(&self) -> impl Iterator<Item = (FragmentId, Range<u64>)> + '_ {
        self.pieces.iter().enumerate().filter_map(|(i, p)| match p {
            Piece::Fragment { id, .. } => Some((*id, self.starts[i]..self.starts[i + 1])),
            Piece::Inline(_) => None,
        })
    }

    /// The pieces overlapping `offset..end` (`end > offset`, `end <= size`).
    fn span(&self, offset: u64, end: u64) -> Range<usize> {
        // starts[0] = 0 <= offset, so the partition point is at least 1.
        let first = self.starts.partition_point(|&s| s <= offset) - 1;
        let last = self.starts.partition_point(|&s| s < end) - 1;
        first..last + 1
    }

    fn piece_len(&self, i: usize) -> u64 {
        self.starts[i + 1] - self.starts[i]
    }

    /// One past the last piece, below `limit`, of the tensor piece `i` belongs to (`i + 1`
    /// when it belongs to none).
    fn tensor_end(&self, i: usize, limit: usize) -> usize {
        let tensor_of = |j: usize| match self.pieces.get(j) {
            Some(Piece::Fragment {
                tensor: Some(t), ..
            }) => Some(*t),
            _ => None,
        };
        let Some(t) = tensor_of(i) else {
            return i + 1;
        };
        (i + 1..limit)
            .find(|&j| tensor_of(j) != Some(t))
            .unwrap_or(limit.max(i + 1))
    }

    /// Where piece `i` is, for error messages.
    fn location(&self, i: usize) -> String {
        match &self.pieces[i] {
            Piece::Inline(_) => format!("file {} header or padding", self.file.path),
            Piece::Fragment {
                id,
                tensor: Some(t),
                index,
            } => format!(
                "file {} tensor {} fragment {index} ({})",
                self.file.path,
                self.tensors[*t],
                id.short()
            ),
            Piece::Fragment {
                id,
                tensor: None,
                index,
            } => format!(
                "file {} chunk {index} (fragment {})",
                self.file.path,
                id.short()
            ),
        }
    }
}

type SharedFetch = Shared<BoxFuture<'static, Result<Bytes>>>;
type WeakFetch = WeakShared<BoxFuture<'static, Result<Bytes>>>;

/// Fetches of pieces a reader keeps: those of its last read and its read-ahead window.
#[derive(Debug, Default)]
struct Window {
    /// Each piece's fetch.
    fetches: HashMap<usize, SharedFetch>,
    /// The pieces of the last read.
    last: Range<usize>,
    /// How many bytes of each piece reads have returned so far (at most its length; empty
    /// before the first read). A read-once reader's consumer keeps them, so read-ahead
    /// skips pieces returned whole.
    returned: Vec<u64>,
    /// Pieces a read-once reader put in the cache unread ([`FileReader::keep_unread`]),
    /// with their fetch while it is still on its way there: a read coming back for
    /// the piece meanwhile joins it instead of decoding the piece again.
    kept: HashMap<usize, WeakFetch>,
}

/// Reads any byte range of one stored file. Obtained from
/// [`ModelHandle::file`](super::ModelHandle::file); cheap to clone (clones share the
/// read-ahead window).
///
/// Every byte returned was verified: each fragment against its id as it is decoded (the
/// whole-file hash can only be checked by reading the whole file, as export and verify do).
#[derive(Clone, Debug)]
pub struct FileReader {
    library: FragmentLibrary,
    model: Arc<str>,
    layout: Arc<FileLayout>,
    via: Via,
    window: Arc<Mutex<Window>>,
}

impl FileReader {
    pub(super) fn new(
        library: FragmentLibrary,
        model: Arc<str>,
        layout: Arc<FileLayout>,
        via: Via,
    ) -> Self {
        Self {
            library,
            model,
            layout,
            via,
            window: Arc::default(),
        }
    }

    /// The file this reader reads.
    pub fn file(&self) -> &ModelFile {
        &self.layout.file
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.layout.file.size
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.layout.file.size == 0
    }

    /// Fragments fetched at once by one read: twice the library's `parallelism`, so that
    /// decoding never waits for a store read. Also the read-ahead window of sequential
    /// readers, in fragments.
    pub fn in_flight(&self) -> usize {
        self.library.config().parallelism.saturating_mul(2).max(1)
    }

    /// Exactly `len` bytes of the file from `offset`: one fragment's bytes without a copy
    /// when the range lies in one piece, else the pieces joined once. A range reaching
    /// past the end is an error ([`FragmentError::RangeOutOfBounds`]); an empty range at
    /// or before the end returns no bytes and fetches nothing.
    pub async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes> {
        Ok(join(&self.read_parts(offset, len).await?))
    }

    /// Like [`read_at`](Self::read_at), with the range's bytes as the slices of the
    /// pieces it touches, in order (never copied).
    pub async fn read_parts(&self, offset: u64, len: u64) -> Result<Vec<Bytes>> {
        self.start_read(offset, len)?.finish().await
    }

    /// Starts a read of `offset..offset + len` (moving the read-ahead window as
    /// [`read_parts`](Self::read_parts) does) without waiting for it: a caller on a thread
    /// of its own (a FUSE request loop) answers at once when the pieces are fetched
    /// already ([`StartedRead::ready`]), and hands the read to the runtime only when they
    /// are not. Must be called within a Tokio runtime's context.
    pub fn start_read(&self, offset: u64, len: u64) -> Result<StartedRead> {
        let end = self.check_range(offset, len)?;
        let (span, fetches) = if len == 0 {
            (0..0, Vec::new())
        } else {
            let span = self.layout.span(offset, end);
            let fetches = self.window_fetches(span.clone(), offset, end);
            (span, fetches)
        };
        Ok(StartedRead {
            layout: self.layout.clone(),
            in_flight: self.in_flight(),
            span,
            fetches,
            offset,
            end,
        })
    }

    /// The bytes of `offset..offset + len` as a stream of slices in file order, fetching
    /// [`in_flight`](Self::in_flight) fragments ahead. For bulk reads (export, verify,
    /// loading every tensor): it bypasses the read-ahead window.
    pub fn stream(&self, offset: u64, len: u64) -> impl Stream<Item = Result<Bytes>> + use<> {
        let this = self.clone();
        let span = match self.check_range(offset, len) {
            Ok(_) if len == 0 => Err(None),
            Ok(end) => Ok((self.layout.span(offset, end), end)),
            Err(e) => Err(Some(e)),
        };
        let (span, end, error) = match span {
            Ok((span, end)) => (span, end, None),
            Err(e) => (0..0, 0, e),
        };
        let pieces = futures::stream::iter(span.map(move |i| {
            let layout = this.layout.clone();
            this.fetch(i)
                .map(move |r| r.map(|b| slice(&layout, i, b, offset, end)))
        }))
        .buffered(self.in_flight());
        futures::stream::iter(error.map(Err)).chain(pieces)
    }

    /// Exactly `len` bytes of the file from `offset` in a buffer that holds them alone,
    /// for callers that keep the bytes (a tensor lent to Python): one piece's bytes as
    /// [`read_at`](Self::read_at) returns them, else one new buffer into which each
    /// fragment is decoded in place (no second copy) when reads bypass the cache or the
    /// cache is off; through the cache, cached fragments are copied in. Fetches
    /// [`in_flight`](Self::in_flight) pieces at once, without read-ahead.
    pub async fn read_owned(&self, offset: u64, len: u64) -> Result<Bytes> {
        let end = self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let span = self.layout.span(offset, end);
        if span.len() == 1 {
            let parts: Vec<Bytes> = self.stream(offset, len).try_collect().await?;
            return Ok(join(&parts));
        }
        let in_place = self.via == Via::Store || !self.library.caches();
        let size = usize::try_from(len).map_err(|_| {
            FragmentError::InvalidInput(format!(
                "{} bytes of file {} do not fit in memory",
                len, self.layout.file.path
            ))
        })?;
        // Zeroed by the allocator (fresh pages for a large buffer: no second pass), then
        // cut into one part per piece, which the part's fetch fills.
        let mut rest = BytesMut::zeroed(size);
        let mut parts = Vec::with_capacity(span.len());
        for i in span {
            let (start, stop) = (self.layout.starts[i], self.layout.starts[i + 1]);
            let from = start.max(offset);
            let part = rest.split_to((stop.min(end) - from) as usize);
            let whole = start >= offset && stop <= end;
            let fill = self.fill(i, part, from - start, in_place && whole);
            parts.push(fill.map(move |part| part.map(|part| (i, part))));
        }
        // Unordered: the parts are independent, and a slow one must not hold the slots of
        // those done after it.
        let mut parts: Vec<(usize, BytesMut)> = futures::stream::iter(parts)
            .buffer_unordered(self.in_flight())
            .try_collect()
            .await?;
        parts.sort_unstable_by_key(|(i, _)| *i);
        // The parts are adjacent, so joining them back moves no bytes.
        let mut joined = BytesMut::new();
        for (_, part) in parts {
            joined.unsplit(part);
        }
        Ok(joined.freeze())
    }

    /// `part` filled with piece `i`'s bytes from `skip` on, on a task of its own: decoded
    /// straight into it (`in_place`, the whole piece), else fetched and copied.
    fn fill(
        &self,
        i: usize,
        mut part: BytesMut,
        skip: u64,
        in_place: bool,
    ) -> impl Future<Output = Result<BytesMut>> + Send + use<> {
        let this = self.clone();
        async move {
            let id = match &this.layout.pieces[i] {
                Piece::Fragment { id, .. } if in_place => *id,
                _ => {
                    let bytes = this.fetch(i).await?;
                    let from = skip as usize;
                    let to = from + part.len();
                    part.copy_from_slice(&bytes[from..to]);
                    return Ok(part);
                }
            };
            let (library, via) = (this.library.clone(), this.via);
            tokio::spawn(async move { library.read_fragment_into(&id, via, part).await })
                .await
                .map_err(join_error)
                .and_then(|r| r)
                .map_err(|e| e.in_model(&this.model, this.layout.location(i)))
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<u64> {
        let size = self.layout.file.size;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(end),
            _ => Err(FragmentError::RangeOutOfBounds {
                model: self.model.to_string(),
                file: self.layout.file.path.clone(),
                offset,
                len,
                size,
            }),
        }
    }

    /// The fetches of `span`, from the window where they are already under way, and the
    /// window moved on: a read that starts within [`in_flight`](Self::in_flight) pieces
    /// of the last one, either way, counts as sequential and keeps fetching the next
    /// `in_flight` pieces. Backward steps are allowed because the kernel's read-around
    /// of a memory-mapped file asks for a range centred on each faulting page.
    ///
    /// Any other read that ends inside a tensor fetches the rest of that tensor (up to
    /// `in_flight` pieces): tensors are read whole (`get_tensor`, a loader copying out
    /// of a mapping), and readers such as `safe_open` visit them in name order, not file
    /// order, so each tensor's first read is a jump that sequential read-ahead misses.
    ///
    /// Pieces within `in_flight` of the read that have not been returned whole stay too:
    /// the kernel sends a read-ahead window as several requests at once, which arrive
    /// in any order, and one of them must not push out the pieces the others are about
    /// to ask for.
    fn window_fetches(&self, span: Range<usize>, offset: u64, end: u64) -> Vec<SharedFetch> {
        let ahead = self.in_flight();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let sequential = !window.last.is_empty()
            && span.start + ahead >= window.last.start
            && span.start <= window.last.end + ahead;
        let limit = (span.end + ahead).min(self.layout.pieces.len());
        let keep = span.start..if sequential {
            limit
        } else {
            self.layout.tensor_end(span.end - 1, limit)
        };
        // A failed fetch is not kept: the next read of that piece tries again.
        let Window {
            fetches,
            last,
            returned,
            kept,
        } = &mut *window;
        if returned.is_empty() {
            returned.resize(self.layout.pieces.len(), 0);
        }
        let whole = |i: usize, returned: &[u64]| returned[i] >= self.layout.piece_len(i);
        let (mut unread, mut consumed) = (Vec::new(), Vec::new());
        fetches.retain(|&i, fetch| {
            let near = i + ahead >= span.start && i < span.end + ahead;
            let wanted = keep.contains(&i) || (near && !whole(i, returned));
            let stays = wanted && !matches!(fetch.peek(), Some(Err(_)));
            if !stays && !whole(i, returned) {
                unread.push((i, fetch.clone()));
            } else if !stays && kept.remove(&i).is_some() {
                consumed.push(i);
            }
            stays
        });
        self.keep_unread(unread, kept);
        self.drop_consumed(consumed);
        for i in keep {
            let ahead_only = !span.contains(&i);
            // What a read-once reader returned whole, its consumer has: reading it ahead
            // again would only decode it twice.
            if ahead_only && self.via == Via::Peek && whole(i, returned) {
                continue;
            }
            fetches.entry(i).or_insert_with(|| {
                if let Some(fetch) = kept.get(&i).and_then(WeakShared::upgrade) {
                    return fetch;
                }
                let fetch = self.fetch(i).boxed().shared();
                if ahead_only {
                    // Read-ahead: drive it now, keep the result for the read that comes.
                    tokio::spawn(fetch.clone());
                }
                fetch
            });
        }
        for i in span.clone() {
            let piece = self.layout.starts[i]..self.layout.starts[i + 1];
            let bytes = end.min(piece.end).saturating_sub(offset.max(piece.start));
            returned[i] = returned[i]
                .saturating_add(bytes)
                .min(piece.end - piece.start);
        }
        let wanted = span.clone().map(|i| fetches[&i].clone()).collect();
        *last = span;
        wanted
    }

    /// Pieces the window moved on from before reads returned all their bytes: read-ahead
    /// not asked for yet, and pieces a read took only part of (reads rarely end on a
    /// fragment's edge). A read-once reader ([`Via::Peek`]) puts them in the fragment
    /// cache, so that the read that does come (a reader visiting tensors in name order
    /// comes back to them) does not decode them again, and records them in `kept`. Other
    /// readers have cached them already (or bypass the cache on purpose).
    fn keep_unread(&self, unread: Vec<(usize, SharedFetch)>, kept: &mut HashMap<usize, WeakFetch>) {
        if self.via != Via::Peek {
            return;
        }
        for (i, fetch) in unread {
            let Piece::Fragment { id, .. } = self.layout.pieces[i] else {
                continue;
            };
            let Some(weak) = fetch.downgrade() else {
                continue;
            };
            kept.insert(i, weak);
            let (library, window) = (self.library.clone(), self.window.clone());
            tokio::spawn(async move {
                // Held until the bytes are in the cache, so that `kept` finds the fetch
                // until the cache has them.
                let held = fetch.clone();
                if let Ok(bytes) = fetch.await {
                    library.keep_in_cache(id, bytes).await;
                    // Consumed while this was on its way: its drop came first.
                    let consumed = !window
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .kept
                        .contains_key(&i);
                    if consumed {
                        library.drop_from_cache(&id).await;
                    }
                }
                drop(held);
            });
        }
    }

    /// Pieces [`keep_unread`](Self::keep_unread) cached whose every byte reads have now
    /// returned: a read-once reader's consumer keeps them (the kernel's page cache, for the
    /// mount), so they leave the fragment cache, and their buffers go back to be reused
    /// instead of holding memory until evicted.
    fn drop_consumed(&self, consumed: Vec<usize>) {
        for i in consumed {
            let Piece::Fragment { id, .. } = self.layout.pieces[i] else {
                continue;
            };
            let library = self.library.clone();
            tokio::spawn(async move { library.drop_from_cache(&id).await });
        }
    }

    /// The verified bytes of piece `i`, fetched on a task of its own (so fetches advance
    /// while the caller is busy elsewhere) and with the model, file and fragment named
    /// in any error.
    fn fetch(&self, i: usize) -> impl Future<Output = Result<Bytes>> + Send + use<> {
        let this = self.clone();
        async move {
            let id = match &this.layout.pieces[i] {
                Piece::Inline(bytes) => return Ok(bytes.clone()),
                Piece::Fragment { id, .. } => *id,
            };
            let (library, via) = (this.library.clone(), this.via);
            let fetched = tokio::spawn(async move { library.fragment_via(&id, via).await })
                .await
                .map_err(join_error)
                .and_then(|r| r);
            let expected = this.layout.starts[i + 1] - this.layout.starts[i];
            match fetched {
                Ok(bytes) if bytes.len() as u64 == expected => Ok(bytes),
                Ok(_) => Err(FragmentError::corrupt(
                    format!("model {:?} {}", this.model, this.layout.location(i)),
                    "fragment length differs from the manifest's",
                )),
                Err(e) => Err(e.in_model(&this.model, this.layout.location(i))),
            }
        }
    }
}

/// A read [`FileReader::start_read`] started, its pieces fetched or on their way.
#[must_use = "a started read returns its bytes through `ready` or `finish`"]
pub struct StartedRead {
    layout: Arc<FileLayout>,
    in_flight: usize,
    span: Range<usize>,
    fetches: Vec<SharedFetch>,
    offset: u64,
    end: u64,
}

impl StartedRead {
    /// The range's bytes as [`FileReader::read_parts`] returns them, if every piece it
    /// touches is fetched already (or the error of one that failed); `None` while any
    /// is still on its way.
    pub fn ready(&self) -> Option<Result<Vec<Bytes>>> {
        let mut parts = Vec::with_capacity(self.fetches.len());
        for (i, fetch) in self.span.clone().zip(&self.fetches) {
            match fetch.peek()? {
                Ok(bytes) => {
                    parts.push(slice(&self.layout, i, bytes.clone(), self.offset, self.end))
                }
                Err(e) => return Some(Err(e.clone())),
            }
        }
        Some(Ok(parts))
    }

    /// The range's bytes, once every piece is fetched.
    pub async fn finish(self) -> Result<Vec<Bytes>> {
        let pieces: Vec<Bytes> = futures::stream::iter(self.fetches)
            .buffered(self.in_flight)
            .try_collect()
            .await?;
        let (layout, offset, end) = (&self.layout, self.offset, self.end);
        Ok(self
            .span
            .zip(pieces)
            .map(|(i, bytes)| slice(layout, i, bytes, offset, end))
            .collect())
    }
}

impl std::fmt::Debug for StartedRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedRead")
            .field("file", &self.layout.file.path)
            .field("offset", &self.offset)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// The part of piece `i` (whose bytes are `bytes`, of the length the layout says) inside
/// `offset..end`.
fn slice(layout: &FileLayout, i: usize, bytes: Bytes, offset: u64, end: u64) -> Bytes {
    let start = layout.starts[i];
    let from = offset.saturating_sub(start) as usize;
    let to = (end.min(layout.starts[i + 1]) - start) as usize;
    bytes.slice(from..to)
}

/// `parts` in one buffer: the single part itself (no copy), or all of them joined once.
pub(super) fn join(parts: &[Bytes]) -> Bytes {
    match parts {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut joined = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            many.iter().for_each(|p| joined.extend_from_slice(p));
            joined.freeze()
        }
    }
}
