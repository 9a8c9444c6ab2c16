//! [`FaultProxy`]: an HTTP/1.1 proxy on 127.0.0.1 in front of the real local S3 server that
//! misbehaves the way object stores do in production: it resets connections, answers
//! `503 SlowDown`, loses responses to requests the server did carry out, cuts response
//! bodies short and adds latency, for a seeded share of requests.
//!
//! Each client connection carries one request on an upstream connection of its own, and
//! every response tells the client to close, so one fault never spills into the next.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request or response head the proxy reads.
const MAX_HEAD: usize = 64 << 10;

/// What the proxy does to a request chosen for a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The connection is reset before the request reaches the server.
    Reset,
    /// `503 SlowDown` with S3's error document, the request not forwarded.
    SlowDown,
    /// The server carries out the request; the client's connection is reset instead of
    /// the response (a put that landed without its writer knowing).
    LostResponse,
    /// The response's head and half its body, then a reset (a body shorter than its
    /// `Content-Length`). Responses without a body get [`Fault::LostResponse`] instead.
    CutBody,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::Reset,
        Fault::SlowDown,
        Fault::LostResponse,
        Fault::CutBody,
    ];
}

/// Counts of what the proxy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received.
    pub requests: u64,
    /// Connections reset before forwarding.
    pub reset: u64,
    /// `503 SlowDown` answers.
    pub slow_down: u64,
    /// Requests carried out whose response was replaced by a reset.
    pub lost_response: u64,
    /// Responses cut mid-body.
    pub cut_body: u64,
}

impl FaultCounts {
    /// Faults of every kind.
    pub fn faults(&self) -> u64 {
        self.reset + self.slow_down + self.lost_response + self.cut_body
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// Faulty share of requests in millionths.
    rate_ppm: AtomicU64,
    latency_us: AtomicU64,
    rng: AtomicU64,
    requests: AtomicU64,
    counts: [AtomicU64; 4],
}

impl Shared {
    fn random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The fault for the next request, if it gets one.
    fn draw(&self) -> Option<Fault> {
        let rate = self.rate_ppm.load(Ordering::Relaxed);
        (self.random() % 1_000_000 < rate).then(|| Fault::ALL[(self.random() % 4) as usize])
    }

    fn count(&self, fault: Fault) {
        let i = Fault::ALL.iter().position(|f| *f == fault).unwrap_or(0);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A running fault proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`
    /// (`http://127.0.0.1:PORT`), faulting `rate` (0 to 1) of requests, chosen by a
    /// generator seeded with `seed`, and delaying each request by up to `latency`.
    pub fn start(upstream: &str, seed: u64, rate: f64, latency: Duration) -> io::Result<Self> {
        let upstream: SocketAddr = upstream
            .strip_prefix("http://")
            .unwrap_or(upstream)
            .trim_end_matches('/')
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{upstream}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            rng: AtomicU64::new(seed),
            ..Shared::default()
        });
        let proxy = FaultProxy {
            addr,
            shared: shared.clone(),
            _runtime: runtime,
        };
        proxy.set_rate(rate);
        proxy.set_latency(latency);
        proxy._runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    // A client that goes away mid-request is the client's business.
                    let _ = serve(client, upstream, &shared).await;
                });
            }
        });
        Ok(proxy)
    }

    /// `http://127.0.0.1:PORT`, the endpoint to give clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the faulty share of requests (0 to 1) from the next request on.
    pub fn set_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1e6).round() as u64;
        self.shared.rate_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Changes the most latency added to a request.
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.shared.latency_us.store(us, Ordering::Relaxed);
    }

    /// What the proxy has done so far.
    pub fn counts(&self) -> FaultCounts {
        let c = |i: usize| self.shared.counts[i].load(Ordering::Relaxed);
        FaultCounts {
            requests: self.shared.requests.load(Ordering::Relaxed),
            reset: c(0),
            slow_down: c(1),
            lost_response: c(2),
            cut_body: c(3),
        }
    }
}

/// Serves one client connection: one request, answered (or faulted), then closed.
async fn serve(mut client: TcpStream, upstream: SocketAddr, shared: &Shared) -> io::Result<()> {
    let mut request = Vec::new();
    let Some(head_len) = read_head(&mut client, &mut request).await? else {
        return Ok(());
    };
    let head = String::from_utf8_lossy(&request[..head_len]).into_owned();
    let body_len = content_length(&head).unwrap_or(0);
    while request.len() < head_len + body_len {
        let mut chunk = [0u8; 64 << 10];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    request.truncate(head_len + body_len);
    shared.requests.fetch_add(1, Ordering::Relaxed);

    let latency = shared.latency_us.load(Ordering::Relaxed);
    if latency > 0 {
        let us = shared.random() % (latency + 1);
        tokio::time::sleep(Duration::from_micros(us)).await;
    }
    let fault = shared.draw();
    match fault {
        Some(Fault::Reset) => {
            shared.count(Fault::Reset);
            return reset(client);
        }
        Some(Fault::SlowDown) => {
            shared.count(Fault::SlowDown);
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                <Message>Please reduce your request rate.</Message></Error>";
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(response.as_bytes()).await?;
            return client.shutdown().await;
        }
        _ => {}
    }
    let head_only = head.starts_with("HEAD ");
    let (response_head, response_body) = forward(upstream, &request, head_len).await?;
    match fault {
        Some(Fault::CutBody) if !head_only && response_body.len() > 1 => {
            shared.count(Fault::CutBody);
            client.write_all(&response_head).await?;
            client
                .write_all(&response_body[..response_body.len() / 2])
                .await?;
            client.flush().await?;
            reset(client)
        }
        Some(Fault::LostResponse | Fault::CutBody) => {
            shared.count(Fault::LostResponse);
            reset(client)
        }
        _ => {
            client.write_all(&response_head).await?;
            client.write_all(&response_body).await?;
            client.shutdown().await
        }
    }
}

/// Sends one request upstream on a connection of its own and reads the whole response:
/// its head (rewritten to close the client's connection) and its body.
async fn forward(
    upstream: SocketAddr,
    request: &[u8],
    head_len: usize,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut server = TcpStream::connect(upstream).await?;
    let head = String::from_utf8_lossy(&request[..head_len]);
    server
        .write_all(with_connection_close(&head).as_bytes())
        .await?;
    server.write_all(&request[head_len..]).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    let Some(end) = find_head_end(&response) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upstream response without a complete head",
        ));
    };
    let body = response.split_off(end);
    let head = String::from_utf8_lossy(&response);
    Ok((with_connection_close(&head).into_bytes(), body))
}

/// A head (ending in a blank line) with its `Connection` header set to `close`.
fn with_connection_close(head: &str) -> String {
    let mut out = String::with_capacity(head.len() + 20);
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

/// Reads until `buffered` holds a whole request head; its length, or `None` when the
/// client closed first.
async fn read_head(client: &mut TcpStream, buffered: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(end) = find_head_end(buffered) {
            return Ok(Some(end));
        }
        if buffered.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let mut chunk = [0u8; 16 << 10];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffered.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

fn content_length(head: &str) -> Option<usize> {
    head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// Closes with a TCP reset rather than an orderly shutdown.
// A zero linger never blocks on drop (the deprecation warns of the blocking kind): it is
// what makes the close a reset.
#[allow(deprecated)]
fn reset(stream: TcpStream) -> io::Result<()> {
    stream.set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_and_rewritten() {
        let head =
            "PUT /b/k HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(content_length(head), Some(12));
        assert_eq!(find_head_end(head.as_bytes()), Some(head.len()));
        let closed = with_connection_close(head);
        assert_eq!(
            closed,
            "PUT /b/k HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn the_rate_is_the_share_of_faulty_requests() {
        let shared = Shared {
            rng: AtomicU64::new(7),
            ..Shared::default()
        };
        shared.rate_ppm.store(150_000, Ordering::Relaxed);
        let mut kinds = [0u32; 4];
        let mut faults = 0;
        for _ in 0..20_000 {
            if let Some(f) = shared.draw() {
                faults += 1;
                kinds[Fault::ALL.iter().position(|k| *k == f).unwrap_or(0)] += 1;
            }
        }
        assert!((2_600..3_400).contains(&faults), "{faults}");
        assert!(kinds.iter().all(|&k| k > 500), "{kinds:?}");
        shared.rate_ppm.store(0, Ordering::Relaxed);
        assert!((0..1000).all(|_| shared.draw().is_none()));
    }
}
