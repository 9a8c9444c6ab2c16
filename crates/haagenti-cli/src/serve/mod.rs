//! `haagenti serve`: the library over HTTP/1.1 as a Hugging Face Hub that the official
//! clients (`huggingface_hub`, `transformers`, `hf download`) download from with
//! `HF_ENDPOINT` set.
//!
//! * `routes.rs`: the paths, parsed from the raw request target, and what each answers.
//! * `catalog.rs`: models and revisions (one listing per 2 s).
//! * `body.rs`: streamed file bodies under the fetch cap, and the access log.
//! * `range.rs`: the `Range` header. `error.rs`: Hub-style errors. `time.rs`: dates.
//!
//! Resources are bounded per connection and in all: headers (size, count, time to
//! arrive), idle keep-alive, writes that make no progress, connections, and responses
//! fetching fragments at once. Shutdown stops accepting and lets responses in flight
//! finish, for at most [`ServeConfig::shutdown_timeout`].

mod body;
mod catalog;
mod error;
pub mod range;
mod routes;
mod time;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use haagenti_core::FragmentLibrary;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use self::body::{AccessLog, FetchGate, ResponseBody};
use self::catalog::Catalog;
use self::error::HubError;

/// How the server runs; [`Default`] is what `haagenti serve` uses without options.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Fragments fetched (and held) at once by all responses together.
    pub max_fetches: usize,
    /// Time for a request's headers to arrive, and for an idle keep-alive connection to
    /// send its next request.
    pub header_timeout: Duration,
    /// A connection whose writes make no progress for this long is closed.
    pub stall_timeout: Duration,
    /// How long shutdown waits for responses in flight.
    pub shutdown_timeout: Duration,
    /// Writes the access log (one line per request) to stderr.
    pub access_log: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_connections: 256,
            max_fetches: 32,
            header_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            access_log: true,
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
struct State {
    catalog: Catalog,
    gate: Arc<FetchGate>,
    /// BLAKE3 of the token: compared in constant time, and of fixed length.
    token_hash: Option<[u8; 32]>,
    access_log: bool,
}

/// Largest request head (request line and headers) read; larger ones get 431.
const MAX_HEAD_BYTES: usize = 16 << 10;
const MAX_HEADERS: usize = 64;

/// Serves `library` on `listener` until `shutdown` completes, then lets responses in
/// flight finish (for at most `config.shutdown_timeout`).
pub async fn serve(
    library: FragmentLibrary,
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let in_flight = library.config().parallelism.saturating_mul(2).max(1);
    let state = Arc::new(State {
        catalog: Catalog::new(library),
        gate: Arc::new(FetchGate::new(config.max_fetches.div_ceil(in_flight))),
        token_hash: config
            .token
            .as_ref()
            .map(|t| *blake3::hash(t.as_bytes()).as_bytes()),
        access_log: config.access_log,
    });
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let builder = Arc::new(builder);

    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(StallIo::new(stream, config.stall_timeout));
        let state = state.clone();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req, peer).await) }
            });
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(config.max_connections.max(1)).unwrap_or(u32::MAX);
    if tokio::time::timeout(config.shutdown_timeout, connections.acquire_many(all))
        .await
        .is_err()
    {
        eprintln!(
            "shutdown: responses still in flight after {} s are cut",
            config.shutdown_timeout.as_secs()
        );
    }
    Ok(())
}

async fn handle(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let target = req.uri().path_and_query().map_or_else(
        || req.uri().path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let head = method == hyper::Method::HEAD;
    let result = route(state, &req).await;
    let mut response = result.unwrap_or_else(|e| {
        if let HubError::Internal(msg) = &e {
            eprintln!(
                "{} {method} {}: {msg}",
                time::iso8601_now(),
                routes::loggable(&target)
            );
        }
        routes::error_response(head, &e)
    });
    let status = response.status().as_u16();
    response.body_mut().set_log(AccessLog {
        peer,
        method: method.to_string(),
        path: routes::loggable(&target),
        status,
        started,
        enabled: state.access_log,
    });
    response
}

async fn route(state: &State, req: &Request<Incoming>) -> Result<Response<ResponseBody>, HubError> {
    if let Some(expected) = &state.token_hash {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .map(|t| *blake3::hash(t.as_bytes()).as_bytes());
        let ok = given.is_some_and(|g| bool::from(g.ct_eq(expected)));
        if !ok {
            return Err(HubError::Unauthorized);
        }
    }
    if !routes::is_allowed_method(req.method()) {
        return Err(HubError::MethodNotAllowed);
    }
    let uri = req.uri();
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > routes::MAX_URI {
        return Err(HubError::UriTooLong);
    }
    let route = routes::parse(uri.path())?;
    routes::answer(
        state,
        req.method(),
        route,
        uri.query().unwrap_or(""),
        req.headers(),
    )
    .await
}

/// A connection that fails a write which makes no progress for `timeout`: a client that
/// stops reading is cut off instead of holding its connection (and fetch turn) forever.
struct StallIo {
    inner: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallIo {
    fn new(inner: TcpStream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// `Pending` from a write: arm the timer (once) and fail when it fires.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for StallIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
