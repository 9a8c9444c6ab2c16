//! A local S3-compatible server (moto) for the S3 tests.
//!
//! moto runs from a virtual environment under `target/moto-venv`, installed on first use
//! (slim: `moto[s3]` plus its server's flask dependencies). The server listens on a free
//! port of 127.0.0.1, logs to `target/moto-server.log`, gets one bucket, and is killed by
//! its PID when the [`MotoServer`] is dropped, so it stops even when tests fail.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Bucket created in every server this module starts.
const BUCKET: &str = "haagenti-test";
/// How long the server may take to answer after it was spawned.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A running moto S3 server; stopped (killed by PID) on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl MotoServer {
    /// Installs moto if needed, starts it on a free port of 127.0.0.1 and creates the bucket.
    pub fn start(workspace_root: &Path) -> Result<MotoServer> {
        let target = workspace_root.join("target");
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let venv = target.join("moto-venv");
        let server_bin = venv.join("bin").join("moto_server");
        if !server_bin.exists() {
            install(&venv)?;
        }

        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = target.join("moto-server.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let child = Command::new(&server_bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", server_bin.display()))?;
        // From here on, Drop stops the server whatever goes wrong.
        let mut server = MotoServer { child, addr, log };
        server.wait_until_ready()?;
        let status = http_request(addr, "PUT", &format!("/{BUCKET}"))
            .with_context(|| format!("creating bucket {BUCKET}"))?;
        if status != 200 {
            bail!("creating bucket {BUCKET}: moto answered HTTP {status}");
        }
        println!(
            "moto S3 server started on {addr} (pid {}), bucket {BUCKET}, log {}",
            server.child.id(),
            server.log.display()
        );
        Ok(server)
    }

    /// Base URL of the server, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Name of the bucket created at start.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// Environment for a test process using this server: the endpoint and bucket the S3
    /// tests read, and dummy AWS credentials (moto does not check signatures; without any
    /// credentials the client would wait on the EC2 metadata service).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HAAGENTI_TEST_S3_ENDPOINT", self.endpoint()),
            ("HAAGENTI_TEST_S3_BUCKET", self.bucket().to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ]
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("polling moto_server")? {
                bail!(
                    "moto_server exited with {status} before answering; log {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            if http_request(self.addr, "GET", "/").is_ok() {
                return Ok(());
            }
            if start.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "moto_server did not answer on {} within {STARTUP_TIMEOUT:?}; log {}:\n{}",
                    self.addr,
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to the server's PID; wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        println!("moto S3 server stopped (pid {})", self.child.id());
    }
}

/// Creates the virtual environment and installs moto's S3 server into it.
fn install(venv: &Path) -> Result<()> {
    println!("installing moto into {} (one time, ~20 s)", venv.display());
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))
        .context("creating the moto virtual environment (is python3 with venv installed?)")?;
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "moto[s3]",
        "flask",
        "flask-cors",
    ]))
    .context("installing moto")?;
    Ok(())
}

/// Runs `cmd`, echoing it, and fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("  $ {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// A port that was free a moment ago (the OS picks it; the listener closes at once).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Sends a body-less HTTP/1.1 request and returns the response status code.
fn http_request(addr: SocketAddr, method: &str, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let _ = stream.shutdown(Shutdown::Both);
    let head = String::from_utf8_lossy(&response);
    let status_line = head.lines().next().unwrap_or_default();
    // "HTTP/1.1 200 OK"
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok());
    code.with_context(|| format!("{method} {path}: not an HTTP response: {status_line:?}"))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
