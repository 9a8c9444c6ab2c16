//! `haagenti serve`: the real `huggingface_hub` client, raw HTTP requests (ranges, hostile
//! paths, slow clients) and a load of concurrent clients against a server started by the
//! test on a free loopback port.
#![cfg(feature = "serve")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{Lib, files_of, objects, run_python};
use haagenti_testkit::synth;

mod common;

// ---------------------------------------------------------------------------------------
// Libraries and servers

/// A running `haagenti serve` on a free loopback port; dropping it kills it, whatever
/// happened. Its stderr (the access log) is collected.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(lib: &Lib, extra: &[&str]) -> Server {
        let mut child = lib
            .command()
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("on http://").nth(1) {
                    let addr = rest.split(' ').next().unwrap_or_default().to_string();
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => server.addr = addr.parse().unwrap(),
            Err(_) => panic!(
                "haagenti serve did not start: {:?}",
                server.log.lock().unwrap()
            ),
        }
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Access-log lines so far that contain every one of `parts`.
    fn logged(&self, parts: &[&str]) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Waits (10 s at most) for an access-log line containing every one of `parts`.
    fn wait_logged(&self, parts: &[&str]) {
        let started = Instant::now();
        while self.logged(parts) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no log line with {parts:?}: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: requests exactly as written (no path normalisation), one
// connection each.

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Sends `head` (the request line and headers, without the final empty line) and reads
/// the reply to the end of the connection. `None` when the server closed without a reply.
fn raw(addr: SocketAddr, head: &str) -> Option<Reply> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut all = Vec::new();
    // A reset after a cut-short body still leaves what arrived.
    let _ = s.read_to_end(&mut all);
    parse_reply(&all)
}

fn parse_reply(all: &[u8]) -> Option<Reply> {
    let end = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&all[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: all[end + 4..].to_vec(),
    })
}

fn get(addr: SocketAddr, path: &str, extra: &[&str]) -> Reply {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}");
    for h in extra {
        head.push_str("\r\n");
        head.push_str(h);
    }
    raw(addr, &head).unwrap_or_else(|| panic!("GET {path}: no reply"))
}

fn head_req(addr: SocketAddr, path: &str, extra: &[&str]) -> Reply {
    let mut head = format!("HEAD {path} HTTP/1.1\r\nHost: {addr}");
    for h in extra {
        head.push_str("\r\n");
        head.push_str(h);
    }
    raw(addr, &head).unwrap_or_else(|| panic!("HEAD {path}: no reply"))
}

// ---------------------------------------------------------------------------------------
// Models

/// A model the tests serve: its repo id and `(relative path, source)` files.
struct Served {
    repo: String,
    files: Vec<(String, PathBuf)>,
}

impl Served {
    fn arg(&self) -> String {
        let pairs: Vec<String> = self
            .files
            .iter()
            .map(|(rel, src)| format!("{rel}::{}", src.display()))
            .collect();
        format!("{}={}", self.repo, pairs.join(","))
    }
}

/// A namespaced directory model (config, tokenizer, sharded safetensors) and a
/// single-file model without a namespace, ingested into `lib`.
fn ingest_family(dir: &Path, seed: u64, lib: &Lib) -> Vec<Served> {
    let family = synth::small_family(&dir.join("src"), seed).unwrap();
    let base = family.model("base-fp32").unwrap();
    let lora = family.model("lora-bf16").unwrap();
    let base_files = files_of(base);
    let rels: Vec<&str> = base_files.iter().map(|(r, _)| r.as_str()).collect();
    assert!(rels.contains(&"config.json"), "{rels:?}");
    assert!(rels.contains(&"tokenizer.json"), "{rels:?}");
    assert!(
        rels.iter().filter(|r| r.ends_with(".safetensors")).count() >= 2,
        "{rels:?}"
    );
    lib.ok(&["ingest", "--model", "org/base", base.path.to_str().unwrap()]);
    lib.ok(&["ingest", "--model", "lora", lora.path.to_str().unwrap()]);
    vec![
        Served {
            repo: "org/base".into(),
            files: base_files,
        },
        Served {
            repo: "lora".into(),
            files: files_of(lora),
        },
    ]
}

// ---------------------------------------------------------------------------------------
// The real client

#[test]
fn huggingface_hub_downloads_byte_identical_files() {
    let test = "huggingface_hub_downloads_byte_identical_files";
    let Some(python) = haagenti_testkit::env::test_python(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    real_client(dir.path(), &Lib::fs(&dir.path().join("lib")), &python);
}

#[test]
fn huggingface_hub_downloads_from_an_s3_library() {
    let test = "huggingface_hub_downloads_from_an_s3_library";
    let Some(python) = haagenti_testkit::env::test_python(test) else {
        return;
    };
    let Some(lib) = Lib::s3(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    real_client(dir.path(), &lib, &python);
}

/// `snapshot_download` and `hf_hub_download` (by branch and by commit) equal the sources;
/// the client's cache holds blobs named by our ETags; a second round fetches no file
/// again (HEAD and the ETag only); the client's own exceptions for an unknown repo, file
/// and revision; and a conditional GET with the ETag is a 304.
fn real_client(dir: &Path, lib: &Lib, python: &Path) {
    let served = ingest_family(dir, 31, lib);
    let server = Server::start(lib, &[]);
    let hf_home = dir.join("hf-home");
    let url = server.url();
    let envs: [(&str, &Path); 2] = [("HF_ENDPOINT", Path::new(&url)), ("HF_HOME", &hf_home)];
    let args = |mode: &str| {
        let mut a = vec![mode.to_string()];
        a.extend(served.iter().map(Served::arg));
        a
    };
    run_python(python, "hf_serve.py", &args("first"), &envs);
    let file_gets = server.logged(&["GET ", "/resolve/", " 200 "]);
    let total_files: usize = served.iter().map(|s| s.files.len()).sum();
    assert!(
        file_gets >= total_files,
        "{file_gets} file GETs for {total_files} files"
    );

    // The client names its blobs by the ETag: the BLAKE3 of each file.
    for s in &served {
        let blobs = hf_home
            .join("hub")
            .join(format!("models--{}", s.repo.replace('/', "--")))
            .join("blobs");
        let names: HashSet<String> = std::fs::read_dir(&blobs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        for (rel, src) in &s.files {
            let hash = blake3::hash(&std::fs::read(src).unwrap())
                .to_hex()
                .to_string();
            assert!(names.contains(&hash), "{}: {rel}: no blob {hash}", s.repo);
        }
    }

    run_python(python, "hf_serve.py", &args("again"), &envs);
    assert_eq!(
        server.logged(&["GET ", "/resolve/", " 200 "]),
        file_gets,
        "the second round fetched files again: {:#?}",
        server.log.lock().unwrap()
    );
    assert!(server.logged(&["HEAD ", "/resolve/main/", " 200 "]) > 0);

    // Conditional requests with the ETag the client used.
    let (rel, src) = &served[0].files[0];
    let path = format!("/{}/resolve/main/{rel}", served[0].repo);
    let full = get(server.addr, &path, &[]);
    assert_eq!(full.status, 200);
    assert!(full.body == std::fs::read(src).unwrap());
    let etag = full.header("etag").unwrap().to_string();
    let commit = full.header("x-repo-commit").unwrap().to_string();
    assert_eq!(commit.len(), 40);
    let cached = get(server.addr, &path, &[&format!("If-None-Match: {etag}")]);
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
    let weak = get(server.addr, &path, &[&format!("If-None-Match: W/{etag}")]);
    assert_eq!(weak.status, 304);
    let other = get(server.addr, &path, &["If-None-Match: \"0123\""]);
    assert_eq!(other.status, 200);
    assert!(other.body == full.body);
    // By commit, the same file and tag.
    let by_commit = get(
        server.addr,
        &format!("/{}/resolve/{commit}/{rel}", served[0].repo),
        &[],
    );
    assert_eq!(by_commit.status, 200);
    assert_eq!(by_commit.header("etag"), Some(etag.as_str()));
    assert!(by_commit.body == full.body);
}

// ---------------------------------------------------------------------------------------
// Ranges

fn check_range(addr: SocketAddr, path: &str, want: &[u8], range: &str) {
    let size = want.len() as u64;
    let reply = get(addr, path, &[&format!("Range: {range}")]);
    let expect = range_of(range, size);
    match expect {
        Some((start, end)) => {
            assert_eq!(reply.status, 206, "{path} {range}");
            assert_eq!(
                reply.header("content-range"),
                Some(format!("bytes {start}-{}/{size}", end - 1).as_str()),
                "{path} {range}"
            );
            assert_eq!(
                reply.header("content-length"),
                Some((end - start).to_string().as_str())
            );
            assert!(
                reply.body == want[start as usize..end as usize],
                "{path} {range}: bytes differ"
            );
        }
        None => {
            assert_eq!(reply.status, 416, "{path} {range}");
            assert_eq!(
                reply.header("content-range"),
                Some(format!("bytes */{size}").as_str())
            );
        }
    }
}

/// What a single byte range means for a file of `size` bytes (the test's own reading of
/// RFC 9110, independent of the server's parser).
fn range_of(range: &str, size: u64) -> Option<(u64, u64)> {
    let spec = range.strip_prefix("bytes=").unwrap();
    let (a, b) = spec.split_once('-').unwrap();
    if a.is_empty() {
        let n: u64 = b.parse().unwrap();
        return (n > 0 && size > 0).then(|| (size - n.min(size), size));
    }
    let a: u64 = a.parse().unwrap();
    let end = if b.is_empty() {
        size
    } else {
        (b.parse::<u64>().unwrap() + 1).min(size)
    };
    (a < size).then_some((a, end))
}

#[test]
fn random_ranges_and_edge_cases_equal_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let served = ingest_family(dir.path(), 32, &lib);
    let server = Server::start(&lib, &["--cache-mb", "8"]);
    let mut rng = synth::Rng::new(7);
    let mut requests = 0;
    for s in &served {
        for (rel, src) in &s.files {
            let want = std::fs::read(src).unwrap();
            let size = want.len() as u64;
            let path = format!("/{}/resolve/main/{rel}", s.repo);
            let mut ranges = vec![
                "bytes=0-0".to_string(),
                format!("bytes={}-{}", size - 1, size - 1),
                format!("bytes={}-", size - 1),
                "bytes=0-".to_string(),
                "bytes=-1".to_string(),
                format!("bytes=-{size}"),
                format!("bytes=-{}", size + 10),
                format!("bytes=0-{}", size + 1000),
                format!("bytes={size}-"),
                format!("bytes={}-{}", size, size + 5),
                "bytes=-0".to_string(),
            ];
            for _ in 0..500 {
                let start = rng.below(size);
                let len = 1 + rng.below((size - start).min(3 << 20));
                ranges.push(match rng.below(8) {
                    0 => format!("bytes={start}-"),
                    1 => format!("bytes=-{len}"),
                    _ => format!("bytes={start}-{}", start + len - 1),
                });
            }
            for r in &ranges {
                check_range(server.addr, &path, &want, r);
                requests += 1;
            }
            // Malformed: 416. Several ranges, another unit: the whole file.
            for r in ["bytes=5-4", "bytes=x-1", "bytes=1"] {
                assert_eq!(
                    get(server.addr, &path, &[&format!("Range: {r}")]).status,
                    416
                );
            }
            for r in ["bytes=0-1,4-5", "items=0-1"] {
                let reply = get(server.addr, &path, &[&format!("Range: {r}")]);
                assert_eq!(reply.status, 200, "{r}");
                assert!(reply.body == want);
            }
            // HEAD with a range: the same headers, no body.
            let h = head_req(server.addr, &path, &["Range: bytes=1-10"]);
            assert_eq!(h.status, 206);
            assert_eq!(h.header("content-length"), Some("10"));
            assert!(h.body.is_empty());
            // If-Range with another tag: the whole file.
            let r = get(
                server.addr,
                &path,
                &["Range: bytes=1-10", "If-Range: \"stale\""],
            );
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len() as u64, size);
        }
    }
    eprintln!("{requests} range requests equal the source");
}

/// In-process, over a store that counts its reads: a small range fetches exactly the
/// fragments it overlaps (and what they depend on), each once; the header fetches none.
#[test]
fn a_small_range_fetches_only_its_fragments() {
    use haagenti_core::{FragmentLibrary, LibraryConfig, ObjectKey};
    use haagenti_testkit::hooks::HookStore;

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    synth::generate_model(&src, 8 << 20, 3, haagenti_core::Dtype::BF16).unwrap();
    let lib_dir = dir.path().join("lib");
    let lib = Lib::fs(&lib_dir);
    lib.ok(&["ingest", "--model", "org/m", src.to_str().unwrap()]);
    let want = std::fs::read(&src).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let fs = haagenti_store_fs::FsStore::open(&lib_dir).unwrap();
    let hooks = Arc::new(HookStore::new(Arc::new(fs)));
    let library = FragmentLibrary::new(
        hooks.clone(),
        haagenti_fragments::default_codecs(),
        LibraryConfig::default(),
    )
    .unwrap();
    let model = rt.block_on(library.open_model("org/m")).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(haagenti_cli::serve::serve(
        library,
        listener,
        haagenti_cli::serve::ServeConfig::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let fragment_gets = || -> HashMap<ObjectKey, u64> { hooks.take_gets("fragments/") };
    let path = "/org/m/resolve/main/m.safetensors";
    // Warm the manifest.
    assert_eq!(get(addr, path, &["Range: bytes=0-7"]).status, 206);
    fragment_gets();

    // The header: inline in the manifest, nothing fetched.
    let r = get(addr, path, &["Range: bytes=8-100"]);
    assert!(r.body == want[8..=100]);
    assert!(fragment_gets().is_empty());

    // A range across the boundary between two adjacent fragments in the middle of the
    // file (of one tensor or of two).
    let mut extents: Vec<(u64, u64, haagenti_core::FragmentRef)> = Vec::new();
    for t in model.tensors() {
        let mut at = t.offset;
        for f in &t.fragments {
            extents.push((at, at + u64::from(f.len), *f));
            at += u64::from(f.len);
        }
    }
    extents.sort_by_key(|e| e.0);
    assert!(extents.len() >= 8, "{} fragments", extents.len());
    let k = (extents.len() / 2..extents.len() - 1)
        .find(|&k| extents[k].1 == extents[k + 1].0 && extents[k].1 - extents[k].0 > 100)
        .unwrap();
    let boundary = extents[k].1;
    let (start, end) = (boundary - 100, boundary + 100);
    let r = get(addr, path, &[&format!("Range: bytes={start}-{}", end - 1)]);
    assert_eq!(r.status, 206);
    assert!(r.body == want[start as usize..end as usize]);
    let gets = fragment_gets();
    let pair = [&extents[k].2, &extents[k + 1].2];
    let touched: HashSet<ObjectKey> = pair.iter().map(|f| ObjectKey::fragment(&f.id)).collect();
    let allowed: HashSet<ObjectKey> = pair
        .iter()
        .flat_map(|f| std::iter::once(f.id).chain(f.depends_on))
        .map(|id| ObjectKey::fragment(&id))
        .collect();
    for k in &touched {
        assert_eq!(gets.get(k), Some(&1), "{k:?} not fetched once: {gets:?}");
    }
    for (k, n) in &gets {
        assert!(
            allowed.contains(k),
            "{k:?} fetched ({n}x) outside the range"
        );
    }
    eprintln!(
        "a {}-byte range fetched {} of {} fragments",
        end - start,
        gets.len(),
        extents.len()
    );

    let _ = stop_tx.send(());
    rt.block_on(server).unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------
// Security

#[test]
fn a_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let src = dir.path().join("m.safetensors");
    synth::generate_model(&src, 256 << 10, 4, haagenti_core::Dtype::BF16).unwrap();
    lib.ok(&["ingest", "--model", "org/m", src.to_str().unwrap()]);
    let token = "s3cr3t-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let server = Server::start(&lib, &["--token-file", token_file.to_str().unwrap()]);
    let want = std::fs::read(&src).unwrap();
    let path = "/org/m/resolve/main/m.safetensors";
    for auth in [
        None,
        Some("Authorization: Bearer wrong".to_string()),
        Some(format!("Authorization: Bearer {token}x")),
        Some(format!(
            "Authorization: Bearer {}",
            &token[..token.len() - 1]
        )),
        Some(format!("Authorization: Basic {token}")),
        Some(format!("Authorization: {token}")),
    ] {
        let extra: Vec<&str> = auth.iter().map(String::as_str).collect();
        for p in [
            path,
            "/api/models/org/m",
            "/api/models/org/m/tree/main",
            "/health",
        ] {
            let r = get(server.addr, p, &extra);
            assert_eq!(r.status, 401, "{p} with {auth:?}");
            assert!(r.header("etag").is_none() && r.header("x-repo-commit").is_none());
            assert!(r.body.len() < 200, "{p}: {} bytes", r.body.len());
            assert!(!r.body.windows(8).any(|w| w == &want[..8]));
        }
        let r = head_req(server.addr, path, &extra);
        assert_eq!(r.status, 401);
        assert!(r.header("x-repo-commit").is_none());
    }
    let good = format!("Authorization: Bearer {token}");
    let r = get(server.addr, path, &[&good]);
    assert_eq!(r.status, 200);
    assert!(r.body == want);
    let r = get(
        server.addr,
        path,
        &[&format!("authorization: bearer {token}")],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn path_traversal_attempts_get_4xx_and_no_outside_file() {
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = dir.path().join("lib");
    let lib = Lib::fs(&lib_dir);
    let src = dir.path().join("m.safetensors");
    synth::generate_model(&src, 128 << 10, 5, haagenti_core::Dtype::BF16).unwrap();
    lib.ok(&["ingest", "--model", "org/m", src.to_str().unwrap()]);
    let secret = "TOP-SECRET-outside-the-library";
    std::fs::write(dir.path().join("secret.txt"), secret).unwrap();
    std::fs::write(lib_dir.join("secret.txt"), secret).unwrap();
    let server = Server::start(&lib, &[]);
    let long = format!("/org/m/resolve/main/{}", "a".repeat(5000));
    let longer = format!("/org/m/resolve/main/{}", "a".repeat(40_000));
    let attempts = [
        "/../secret.txt".to_string(),
        "/org/m/resolve/main/../../../secret.txt".into(),
        "/org/m/resolve/main/../../secret.txt".into(),
        "/org/m/resolve/main/%2e%2e/%2e%2e/secret.txt".into(),
        "/org/m/resolve/main/%2E%2E%2F%2E%2E%2Fsecret.txt".into(),
        "/org/m/resolve/main/..%2f..%2fsecret.txt".into(),
        "/org/m/resolve/main/..%5c..%5csecret.txt".into(),
        "/org/m/resolve/main//secret.txt".into(),
        format!(
            "/org/m/resolve/main/{}",
            dir.path().join("secret.txt").display()
        ),
        format!("/org/m/resolve/main/%2F{}", "etc/passwd"),
        "/org/m/resolve/main/%00secret.txt".into(),
        "/%2e%2e/m/resolve/main/secret.txt".into(),
        "/org%2Fm/resolve/main/m.safetensors".into(),
        "/api/models/org/m/tree/main/%2e%2e".into(),
        "/api/models/..%2F..%2Fsecret.txt".into(),
        "/secret.txt".into(),
        "/lib/secret.txt".into(),
        "//secret.txt".into(),
        "/org/m/resolve/main/secret.txt".into(),
        "http://127.0.0.1/../secret.txt".into(),
        "*".into(),
        long,
        longer,
    ];
    for p in &attempts {
        let reply = raw(server.addr, &format!("GET {p} HTTP/1.1\r\nHost: x"));
        let Some(reply) = reply else {
            // Closed without a reply: also no data.
            continue;
        };
        assert!(
            (400..500).contains(&reply.status),
            "{}: {}",
            &p[..p.len().min(80)],
            reply.status
        );
        assert!(
            !String::from_utf8_lossy(&reply.body).contains(secret),
            "{p} served the secret"
        );
    }
    // The server still serves.
    let ok = get(server.addr, "/org/m/resolve/main/m.safetensors", &[]);
    assert_eq!(ok.status, 200);
    // Only reads.
    let put = raw(
        server.addr,
        "PUT /org/m/resolve/main/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0",
    )
    .unwrap();
    assert_eq!(put.status, 405);
}

#[test]
fn a_client_sending_headers_one_byte_per_second_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let src = dir.path().join("m.safetensors");
    synth::generate_model(&src, 64 << 10, 6, haagenti_core::Dtype::BF16).unwrap();
    lib.ok(&["ingest", "--model", "m", src.to_str().unwrap()]);
    let server = Server::start(&lib, &["--header-timeout", "2"]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\nUser-Agent: slowloris-slowloris\r\n\r\n";
    let started = Instant::now();
    let mut cut = false;
    for b in request {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            // Closed (perhaps after a 408).
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(!text.contains("200 OK"), "served: {text}");
                cut = true;
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(950));
    }
    let elapsed = started.elapsed();
    assert!(cut, "the whole request went through in {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(6),
        "cut off only after {elapsed:?}"
    );
    // Others are still served.
    assert_eq!(get(server.addr, "/health", &[]).status, 200);
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let src = dir.path().join("m.safetensors");
    synth::generate_model(&src, 48 << 20, 9, haagenti_core::Dtype::BF16).unwrap();
    lib.ok(&["ingest", "--model", "m", src.to_str().unwrap()]);
    let size = std::fs::metadata(&src).unwrap().len();
    let server = Server::start(&lib, &["--stall-timeout", "2"]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /m/resolve/main/m.safetensors HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read nothing while the socket buffers fill and the server's writes stall.
    std::thread::sleep(Duration::from_secs(6));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let reply = parse_reply(&got).unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        (reply.body.len() as u64) < size,
        "the whole {size} bytes arrived after a 6 s stall"
    );
    eprintln!("cut off after {} of {size} bytes", reply.body.len());
    server.wait_logged(&["GET /m/resolve/main/m.safetensors 200"]);
    assert_eq!(get(server.addr, "/health", &[]).status, 200);
}

// ---------------------------------------------------------------------------------------
// Errors in the stored data, shutdown

#[test]
fn a_damaged_fragment_aborts_the_response_and_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = dir.path().join("lib");
    let lib = Lib::fs(&lib_dir);
    let src = dir.path().join("m.safetensors");
    synth::generate_model(&src, 2 << 20, 7, haagenti_core::Dtype::BF16).unwrap();
    lib.ok(&["ingest", "--model", "org/m", src.to_str().unwrap()]);
    let victim = objects(&lib_dir).into_iter().nth(1).unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x55;
    std::fs::write(&victim, &bytes).unwrap();
    let server = Server::start(&lib, &[]);
    let want = std::fs::read(&src).unwrap();
    let r = get(server.addr, "/org/m/resolve/main/m.safetensors", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(want.len().to_string().as_str())
    );
    assert!(
        r.body.len() < want.len(),
        "a full body despite the damaged fragment"
    );
    assert!(r.body == want[..r.body.len()], "wrong bytes before the cut");
    // The line names the model, the file and the fragment.
    server.wait_logged(&["error serving m.safetensors", "org/m", "fragment"]);
    assert!(server.logged(&["GET /org/m/resolve/main/m.safetensors 200", "aborted"]) > 0);
}

#[test]
fn a_damaged_manifest_fails_only_its_model_and_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let mut sources = Vec::new();
    for (seed, name) in [(11, "m"), (12, "n")] {
        let src = dir.path().join(format!("{name}.safetensors"));
        synth::generate_model(&src, 1 << 20, seed, haagenti_core::Dtype::BF16).unwrap();
        lib.ok(&[
            "ingest",
            "--model",
            &format!("org/{name}"),
            src.to_str().unwrap(),
        ]);
        sources.push(src);
    }
    let raw = lib.raw();
    let manifest = raw.keys("manifests/org/n/").pop().unwrap();
    raw.damage(&manifest, common::Damage::Truncate);
    let server = Server::start(&lib, &[]);
    // The intact model downloads whole; the damaged one is a server error, logged with
    // the manifest's key; the listing still names both.
    let r = get(server.addr, "/org/m/resolve/main/m.safetensors", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body == std::fs::read(&sources[0]).unwrap());
    let r = get(server.addr, "/org/n/resolve/main/n.safetensors", &[]);
    assert_eq!(r.status, 500);
    let r = get(server.addr, "/api/models/org/n", &[]);
    assert_eq!(r.status, 500);
    server.wait_logged(&["GET /org/n/resolve/main/n.safetensors", "manifests/org/n/"]);
    let r = get(server.addr, "/org/m/resolve/main/m.safetensors", &[]);
    assert_eq!(r.status, 200, "the intact model after the failure");
}

#[test]
fn sigterm_lets_the_response_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let src = dir.path().join("m.safetensors");
    synth::generate_model(&src, 8 << 20, 8, haagenti_core::Dtype::BF16).unwrap();
    lib.ok(&["ingest", "--model", "m", src.to_str().unwrap()]);
    let want = std::fs::read(&src).unwrap();
    let mut server = Server::start(&lib, &[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /m/resolve/main/m.safetensors HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read a little, then ask the server to stop while the response is in flight.
    let mut first = vec![0u8; 4096];
    s.read_exact(&mut first).unwrap();
    let status = Command::new("kill")
        .arg(server.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    first.extend_from_slice(&rest);
    let reply = parse_reply(&first).unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body == want, "the response in flight was cut");
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit}");
    // And new connections are refused.
    assert!(TcpStream::connect(server.addr).is_err());
}

// ---------------------------------------------------------------------------------------
// Load

/// The server's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb << 10
}

/// 32 clients download different files and ranges for `HAAGENTI_SERVE_LOAD_SECS`
/// (default 20, the run) and get only correct bytes; the server's peak RSS stays
/// under its cache budget plus 128 MiB.
#[test]
fn thirty_two_concurrent_clients_get_correct_bytes_in_bounded_memory() {
    let secs: u64 = std::env::var("HAAGENTI_SERVE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let mut files = Vec::new();
    for (i, (bytes, dtype)) in [
        (24 << 20, haagenti_core::Dtype::F32),
        (16 << 20, haagenti_core::Dtype::BF16),
        (12 << 20, haagenti_core::Dtype::F16),
        (6 << 20, haagenti_core::Dtype::BF16),
    ]
    .into_iter()
    .enumerate()
    {
        let src = dir.path().join(format!("m{i}.safetensors"));
        synth::generate_model(&src, bytes, 40 + i as u64, dtype).unwrap();
        lib.ok(&[
            "ingest",
            "--model",
            &format!("org/m{i}"),
            src.to_str().unwrap(),
        ]);
        files.push((
            format!("/org/m{i}/resolve/main/m{i}.safetensors"),
            Arc::new(std::fs::read(&src).unwrap()),
        ));
    }
    let cache_mb = 64u64;
    let server = Server::start(&lib, &["--cache-mb", &cache_mb.to_string(), "--quiet"]);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let totals: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32u64)
            .map(|c| {
                let files = &files;
                let addr = server.addr;
                scope.spawn(move || {
                    let mut rng = synth::Rng::new(100 + c);
                    let (mut requests, mut bytes) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        let (path, want) = &files[((c + requests) % files.len() as u64) as usize];
                        let size = want.len() as u64;
                        if rng.below(3) == 0 {
                            let r = get(addr, path, &[]);
                            assert_eq!(r.status, 200);
                            assert!(r.body == ***want, "client {c}: {path} differs");
                            bytes += size;
                        } else {
                            let start = rng.below(size);
                            let end = (start + 1 + rng.below(4 << 20)).min(size);
                            let r =
                                get(addr, path, &[&format!("Range: bytes={start}-{}", end - 1)]);
                            assert_eq!(r.status, 206);
                            assert!(
                                r.body == want[start as usize..end as usize],
                                "client {c}: {path} {start}..{end} differs"
                            );
                            bytes += end - start;
                        }
                        requests += 1;
                    }
                    (requests, bytes)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let requests: u64 = totals.iter().map(|t| t.0).sum();
    let bytes: u64 = totals.iter().map(|t| t.1).sum();
    assert!(
        totals.iter().all(|t| t.0 > 0),
        "a client got nothing done: {totals:?}"
    );
    let rss = peak_rss(server.pid());
    let limit = (cache_mb << 20) + (128 << 20);
    eprintln!(
        "32 clients, {secs} s: {requests} requests, {} MB, peak RSS {} MiB (limit {} MiB)",
        bytes / 1_000_000,
        rss >> 20,
        limit >> 20
    );
    assert!(rss < limit, "peak RSS {} MiB", rss >> 20);
}

#[test]
fn the_family_map_is_served_at_the_root_and_follows_ingests() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Lib::fs(&dir.path().join("lib"));
    let family = synth::small_family(&dir.path().join("src"), 51).unwrap();
    let (first, rest) = family.models.split_at(2);
    for m in first {
        lib.ok(&["ingest", "--model", &m.name, m.path.to_str().unwrap()]);
    }
    let server = Server::start(&lib, &[]);

    let page = get(server.addr, "/", &[]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8(page.body).unwrap();
    for m in first {
        assert!(
            html.contains(&format!("data-model=\"{}\"", m.name)),
            "{} missing from the page",
            m.name
        );
    }
    // The JSON is the page's data: the same figures `haagenti report --json` prints.
    let served: serde_json::Value =
        serde_json::from_slice(&get(server.addr, "/api/report", &[]).body).unwrap();
    let printed: serde_json::Value = serde_json::from_str(&lib.ok(&["report", "--json"])).unwrap();
    assert_eq!(served["stats"], printed["stats"]);
    assert_eq!(served["family"], printed["family"]);

    // A model ingested while serving appears (the listing is re-read every few seconds).
    let late = &rest[0];
    lib.ok(&["ingest", "--model", &late.name, late.path.to_str().unwrap()]);
    let started = std::time::Instant::now();
    loop {
        let html = String::from_utf8(get(server.addr, "/", &[]).body).unwrap();
        if html.contains(&format!("data-model=\"{}\"", late.name)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} did not appear on the page",
            late.name
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
