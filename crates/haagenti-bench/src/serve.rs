//! Downloading over HTTP from `haagenti serve` next to `python3 -m http.server` serving the
//! exported file from the page cache, in one run: one client's MB/s, eight concurrent
//! clients' aggregate MB/s, and the time to the first body byte.
//!
//! The server is the real `haagenti` binary (`HAAGENTI_BENCH_CLI`, which `cargo xtask
//! bench` builds); the client is a plain std-only HTTP/1.1 GET loop that discards what it
//! reads (one read per 1 MiB), so the client is not what is measured. Without the binary
//! or a `python3`, the section says it was skipped and why.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use haagenti_core::Dtype;
use haagenti_testkit::synth::generate_model;
use serde::Serialize;

use crate::util;

/// One client from `haagenti serve` must reach this (decimal MB/s, 2 cores).
const TARGET_ONE_CLIENT_MB_S: f64 = 500.0;
/// Concurrent clients of the aggregate measurement.
const CLIENTS: usize = 8;
/// Cache budget of the server (its default).
const CACHE_MB: u64 = 256;
/// Peak RSS of the server may exceed its cache budget by at most this.
const RSS_HEADROOM: u64 = 128 << 20;
/// Runs of each measurement; medians are reported.
const RUNS: usize = 3;
/// Requests whose time to first byte is measured per server; the median is reported.
const TTFB_REQUESTS: usize = 20;

#[derive(Clone, Debug, Serialize)]
pub struct ServeBench {
    /// Why the section did not run (`None` when it ran).
    pub skipped: Option<String>,
    pub model_bytes: u64,
    pub cache_mb: u64,
    pub runs: usize,
    pub clients: usize,
    pub haagenti_one_client_mb_s: f64,
    pub http_server_one_client_mb_s: f64,
    pub haagenti_clients_mb_s: f64,
    pub http_server_clients_mb_s: f64,
    /// Median time from connecting to the first body byte of a range at a random offset
    /// (milliseconds).
    pub haagenti_ttfb_ms: f64,
    pub http_server_ttfb_ms: f64,
    /// Highest `VmHWM` of the server process.
    pub haagenti_peak_rss_bytes: Option<u64>,
    /// A download from each server equalled the source.
    pub identical: bool,
}

impl ServeBench {
    fn skipped(why: String) -> ServeBench {
        ServeBench {
            skipped: Some(why),
            model_bytes: 0,
            cache_mb: CACHE_MB,
            runs: 0,
            clients: CLIENTS,
            haagenti_one_client_mb_s: 0.0,
            http_server_one_client_mb_s: 0.0,
            haagenti_clients_mb_s: 0.0,
            http_server_clients_mb_s: 0.0,
            haagenti_ttfb_ms: 0.0,
            http_server_ttfb_ms: 0.0,
            haagenti_peak_rss_bytes: None,
            identical: true,
        }
    }

    /// Fails when a download differed from the source.
    pub fn check(&self) -> Result<()> {
        if !self.identical {
            bail!("a download from haagenti serve differs from the source file");
        }
        Ok(())
    }
}

fn prerequisites() -> std::result::Result<(PathBuf, PathBuf), String> {
    let cli = util::bench_cli()?;
    let python = PathBuf::from("python3");
    if Command::new(&python).arg("--version").output().is_err() {
        return Err("python3 is not on PATH (for `python3 -m http.server`)".into());
    }
    Ok((cli, python))
}

pub fn run(work: &Path, model_bytes: u64, seed: u64) -> Result<ServeBench> {
    let (cli, python) = match prerequisites() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("  serve section skipped: {why}");
            return Ok(ServeBench::skipped(why));
        }
    };
    let dir = work.join("serve");
    util::remove_dir_if_exists(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, &cli, &python, model_bytes, seed);
    util::discard(&dir)?;
    result
}

fn measure(
    dir: &Path,
    cli: &Path,
    python: &Path,
    model_bytes: u64,
    seed: u64,
) -> Result<ServeBench> {
    let lib = dir.join("library");
    let src = dir.join("model.safetensors");
    let model_bytes = generate_model(&src, model_bytes, seed, Dtype::BF16)?;
    let status = Command::new(cli)
        .arg("--library")
        .arg(&lib)
        .args(["ingest", "--model", "org/model"])
        .arg(&src)
        .env_remove("HAAGENTI_LIBRARY")
        .stdout(Stdio::null())
        .status()
        .context("running haagenti ingest")?;
    if !status.success() {
        bail!("haagenti ingest failed ({status})");
    }
    util::warm(&lib)?;
    let want = blake3::hash(&std::fs::read(&src)?);
    // http.server serves the same bytes as a plain file (in the page cache).
    let exported = dir.join("export");
    std::fs::create_dir_all(&exported)?;
    std::fs::rename(&src, exported.join("model.safetensors"))?;

    let haagenti = Server::haagenti(cli, &lib)?;
    let h_path = "/org/model/resolve/main/model.safetensors";
    let http = Server::http_server(python, &exported)?;
    let p_path = "/model.safetensors";

    let mut identical = true;
    for (server, path) in [(&haagenti, h_path), (&http, p_path)] {
        let (len, hash) = download(server.addr, path, true)?;
        identical &= len == model_bytes && hash == Some(want);
    }

    let (mut h1, mut p1, mut h8, mut p8) = (vec![], vec![], vec![], vec![]);
    for run in 0..RUNS {
        eprintln!("  serve run {}/{RUNS} ...", run + 1);
        h1.push(one_client(haagenti.addr, h_path, model_bytes)?);
        p1.push(one_client(http.addr, p_path, model_bytes)?);
        h8.push(clients(haagenti.addr, h_path, model_bytes)?);
        p8.push(clients(http.addr, p_path, model_bytes)?);
    }
    let h_ttfb = ttfb(haagenti.addr, h_path, model_bytes, seed)?;
    let p_ttfb = ttfb(http.addr, p_path, model_bytes, seed)?;
    Ok(ServeBench {
        skipped: None,
        model_bytes,
        cache_mb: CACHE_MB,
        runs: RUNS,
        clients: CLIENTS,
        haagenti_one_client_mb_s: util::median(h1),
        http_server_one_client_mb_s: util::median(p1),
        haagenti_clients_mb_s: util::median(h8),
        http_server_clients_mb_s: util::median(p8),
        haagenti_ttfb_ms: h_ttfb,
        http_server_ttfb_ms: p_ttfb,
        haagenti_peak_rss_bytes: haagenti.peak_rss(),
        identical,
    })
}

fn one_client(addr: SocketAddr, path: &str, bytes: u64) -> Result<f64> {
    let started = Instant::now();
    let (len, _) = download(addr, path, false)?;
    if len != bytes {
        bail!("{path}: {len} bytes of {bytes}");
    }
    Ok(util::mb_per_s(bytes, started.elapsed().as_secs_f64()))
}

/// `CLIENTS` concurrent downloads of the whole file: aggregate MB/s.
fn clients(addr: SocketAddr, path: &str, bytes: u64) -> Result<f64> {
    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| s.spawn(move || download(addr, path, false)))
            .collect();
        for h in handles {
            let (len, _) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            if len != bytes {
                bail!("{path}: {len} bytes of {bytes}");
            }
        }
        Ok(())
    })?;
    Ok(util::mb_per_s(
        bytes * CLIENTS as u64,
        started.elapsed().as_secs_f64(),
    ))
}

/// Median milliseconds from connecting to the first body byte of a GET from a random
/// offset to the end (a ranged GET where the server supports it; http.server sends the
/// file from its start).
fn ttfb(addr: SocketAddr, path: &str, bytes: u64, seed: u64) -> Result<f64> {
    let mut rng = haagenti_testkit::synth::Rng::new(seed);
    let mut times = Vec::with_capacity(TTFB_REQUESTS);
    for _ in 0..TTFB_REQUESTS {
        let offset = rng.below(bytes);
        let started = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nRange: bytes={offset}-\r\nConnection: close\r\n\r\n"
        )?;
        let mut r = BufReader::new(s);
        read_head(&mut r)?;
        let mut one = [0u8; 1];
        r.read_exact(&mut one)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(util::median(times))
}

/// GETs `path` and reads the body to its `Content-Length`: `(bytes, BLAKE3 if hashing)`.
fn download(addr: SocketAddr, path: &str, hash: bool) -> Result<(u64, Option<blake3::Hash>)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let len = read_head(&mut r)?;
    let mut hasher = hash.then(blake3::Hasher::new);
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < len {
        let want = (len - got).min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if let Some(h) = &mut hasher {
            h.update(&buf[..n]);
        }
        got += n as u64;
    }
    Ok((got, hasher.map(|h| h.finalize())))
}

/// Reads a response head; fails unless the status is 200 or 206. The `Content-Length`.
fn read_head(r: &mut impl BufRead) -> Result<u64> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split(' ').nth(1).unwrap_or_default().to_string();
    if status != "200" && status != "206" {
        bail!("HTTP status {:?}", line.trim());
    }
    let mut len = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok();
        }
    }
    len.context("no Content-Length")
}

/// A server process, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn haagenti(cli: &Path, lib: &Path) -> Result<Server> {
        let mut child = Command::new(cli)
            .arg("--library")
            .arg(lib)
            .args(["serve", "--addr", "127.0.0.1:0", "--quiet", "--cache-mb"])
            .arg(CACHE_MB.to_string())
            .env_remove("HAAGENTI_LIBRARY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting haagenti serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("on http://").nth(1) {
                    let _ = tx.send(rest.split(' ').next().unwrap_or_default().to_string());
                }
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .context("haagenti serve did not start")?;
        server.addr = addr.parse().context("the address haagenti serve printed")?;
        Ok(server)
    }

    fn http_server(python: &Path, dir: &Path) -> Result<Server> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(python)
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server")?;
        let server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let started = Instant::now();
        while TcpStream::connect(server.addr).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("http.server did not start on {}", server.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        util::vm_hwm_bytes(&status)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn markdown(b: &ServeBench) -> String {
    let mut out = String::from("### Downloading from `haagenti serve`\n\n");
    if let Some(why) = &b.skipped {
        out.push_str(&format!("Skipped: {why}.\n"));
        return out;
    }
    out.push_str(&format!(
        "One {} bf16 model downloaded whole over HTTP/1.1 on loopback by a plain GET loop, \
         medians of {} runs (MB/s, decimal); `python3 -m http.server` serves the exported \
         file from the page cache; `haagenti serve --cache-mb {}` rebuilds it from the \
         library:\n\n\
         | | one client | {} clients, aggregate | time to first byte (range at a random offset) | peak RSS (target < {}) |\n\
         |---|---|---|---|---|\n\
         | `haagenti serve` | {:.0} {} | {:.0} {} | {:.1} ms | {} {} |\n\
         | `python3 -m http.server` | {:.0} | {:.0} | {:.1} ms (from the file's start) | |\n\n\
         Targets: one client >= {TARGET_ONE_CLIENT_MB_S:.0} MB/s; {} clients at least \
         `http.server`'s aggregate.\n",
        util::human(b.model_bytes),
        b.runs,
        b.cache_mb,
        b.clients,
        util::human((b.cache_mb << 20) + RSS_HEADROOM),
        b.haagenti_one_client_mb_s,
        util::mark(b.haagenti_one_client_mb_s >= TARGET_ONE_CLIENT_MB_S),
        b.haagenti_clients_mb_s,
        util::mark(b.haagenti_clients_mb_s >= b.http_server_clients_mb_s),
        b.haagenti_ttfb_ms,
        b.haagenti_peak_rss_bytes.map_or("n/a".into(), util::human),
        util::mark(
            b.haagenti_peak_rss_bytes
                .is_some_and(|r| r < (b.cache_mb << 20) + RSS_HEADROOM)
        ),
        b.http_server_one_client_mb_s,
        b.http_server_clients_mb_s,
        b.http_server_ttfb_ms,
        b.clients,
    ));
    out
}
