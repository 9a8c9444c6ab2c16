//! Response bodies: small JSON or nothing, or a file range streamed from the library under
//! the server's fetch cap; every body writes the request's access-log line when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use haagenti_core::FileReader;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response that keeps fetching for this many bytes while others wait gives its turn
/// to the next one (responses fetch in FIFO turns when more than the cap want to).
const TURN_BYTES: u64 = 32 << 20;
/// ... or after this long.
const TURN_TIME: Duration = Duration::from_millis(250);

/// The cap on responses fetching fragments at once (each fetches up to the reader's
/// `in_flight` fragments ahead), so memory is bounded by the cap, not by the number of
/// clients. Others wait their turn in FIFO order.
#[derive(Debug)]
pub struct FetchGate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl FetchGate {
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            waiting: AtomicUsize::new(0),
        }
    }

    async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let permit = self.slots.clone().acquire_owned().await.ok();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        permit
    }

    fn others_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }
}

/// What the access log says about a request once its body has ended.
#[derive(Debug)]
pub struct AccessLog {
    pub peer: std::net::SocketAddr,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub started: Instant,
    pub enabled: bool,
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Stream(BoxStream<'static, Result<Bytes, BodyError>>),
}

/// A response body: see the module doc.
pub struct ResponseBody {
    inner: Inner,
    len: u64,
    sent: u64,
    failed: bool,
    log: Option<AccessLog>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("len", &self.len)
            .field("sent", &self.sent)
            .finish()
    }
}

impl ResponseBody {
    pub fn empty() -> Self {
        Self::new(Inner::Empty, 0)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        Self::new(Inner::Full(Some(bytes)), len)
    }

    /// `len` bytes of `reader` from `offset`, fetched in turns through `gate`. A fragment
    /// that fails (verification included) ends the body with an error: the connection is
    /// cut short of its `Content-Length`, so the client never takes a partial file for a
    /// whole one.
    pub fn file(reader: FileReader, offset: u64, len: u64, gate: Arc<FetchGate>) -> Self {
        Self::new(Inner::Stream(file_stream(reader, offset, len, gate)), len)
    }

    fn new(inner: Inner, len: u64) -> Self {
        Self {
            inner,
            len,
            sent: 0,
            failed: false,
            log: None,
        }
    }

    pub fn set_log(&mut self, log: AccessLog) {
        self.log = Some(log);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(Ok)),
            Inner::Stream(s) => s.poll_next_unpin(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(bytes))) => {
                this.sent += bytes.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                this.inner = Inner::Empty;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(b) => b.is_none(),
            Inner::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent.min(self.len))
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let Some(log) = &self.log else { return };
        if !log.enabled {
            return;
        }
        let outcome = if self.failed {
            " aborted"
        } else if self.sent < self.len && matches!(self.inner, Inner::Stream(_)) {
            " incomplete"
        } else {
            ""
        };
        eprintln!(
            "{} {} {} {} {} {} {}ms{outcome}",
            super::time::iso8601_now(),
            log.peer,
            log.method,
            log.path,
            log.status,
            self.sent,
            log.started.elapsed().as_millis()
        );
    }
}

struct FileStream {
    reader: FileReader,
    pos: u64,
    end: u64,
    gate: Arc<FetchGate>,
    turn: Option<(
        OwnedSemaphorePermit,
        BoxStream<'static, haagenti_core::Result<Bytes>>,
    )>,
    turn_bytes: u64,
    turn_started: Instant,
}

fn file_stream(
    reader: FileReader,
    offset: u64,
    len: u64,
    gate: Arc<FetchGate>,
) -> BoxStream<'static, Result<Bytes, BodyError>> {
    let state = FileStream {
        reader,
        pos: offset,
        end: offset + len,
        gate,
        turn: None,
        turn_bytes: 0,
        turn_started: Instant::now(),
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        if s.pos >= s.end {
            return None;
        }
        if s.turn.is_none() {
            let permit = s.gate.turn().await?;
            let stream = s.reader.stream(s.pos, s.end - s.pos).boxed();
            s.turn = Some((permit, stream));
            s.turn_bytes = 0;
            s.turn_started = Instant::now();
        }
        let (_, stream) = s.turn.as_mut()?;
        match stream.next().await {
            Some(Ok(bytes)) => {
                s.pos += bytes.len() as u64;
                s.turn_bytes += bytes.len() as u64;
                if (s.turn_bytes >= TURN_BYTES || s.turn_started.elapsed() >= TURN_TIME)
                    && s.gate.others_waiting()
                {
                    // Drops the stream (its read-ahead) with the permit.
                    s.turn = None;
                }
                Some((Ok(bytes), Some(s)))
            }
            Some(Err(e)) => {
                let file = s.reader.file().path.clone();
                eprintln!(
                    "{} error serving {file} at byte {}: {e:#}; response aborted",
                    super::time::iso8601_now(),
                    s.pos
                );
                Some((Err(Box::new(e) as BodyError), None))
            }
            None => {
                let e = format!(
                    "the read of {} ended at byte {} of {}",
                    s.reader.file().path,
                    s.pos,
                    s.end
                );
                Some((Err(e.into()), None))
            }
        }
    })
    .boxed()
}
