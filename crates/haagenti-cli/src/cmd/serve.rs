//! `haagenti serve`: the library as a Hugging Face Hub–compatible HTTP endpoint (see
//! `haagenti_cli::serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use haagenti_cli::serve::{ServeConfig, serve};
use haagenti_fragments::OpenOptions;

use crate::location::Location;

/// The address served when `--addr` is not given: loopback only.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on [default: 127.0.0.1:8080, loopback only]. Serving other
    /// machines (e.g. 0.0.0.0:8080) should go with --token-file.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// A file holding the token every request must send as `Authorization: Bearer TOKEN`
    /// (clients: `HF_TOKEN=TOKEN`); surrounding whitespace is ignored.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Fragment cache budget in MiB (memory is about this plus the fetch cap's fragments
    /// and a constant).
    #[arg(long, default_value_t = 256)]
    pub cache_mb: u64,
    /// Fragments fetched at once by all responses together (responses beyond the cap
    /// take turns).
    #[arg(long, default_value_t = 32)]
    pub max_fetches: usize,
    /// Connections served at once (more wait to be accepted).
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds for a request's headers to arrive (also how long an idle keep-alive
    /// connection stays open).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds a response may make no progress (a client that stopped reading) before its
    /// connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub stall_timeout: u64,
    /// No access log (one line per request on stderr).
    #[arg(long)]
    pub quiet: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    haagenti_cli::process::limit_malloc_arenas();
    let token = match &args.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let explicit = args.addr.is_some();
    let addr = match args.addr {
        Some(a) => a,
        None => DEFAULT_ADDR.parse().context("the default address")?,
    };
    let lib = location
        .open(OpenOptions::default().cache_bytes(args.cache_mb.saturating_mul(1 << 20)))
        .await?;
    let models = lib.models().await?.len();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    let access = match (&token, explicit, bound.ip().is_loopback()) {
        (Some(_), _, _) => "every request needs the token",
        (None, false, _) => "loopback only: pass --addr to serve other machines, with --token-file",
        (None, true, true) => "loopback only, no token",
        (None, true, false) => {
            "WARNING: no token, anyone who can reach this address can read every model"
        }
    };
    eprintln!(
        "serving {} ({models} models) on http://{bound} ({access}); \
         clients: HF_ENDPOINT=http://{bound}; Ctrl-C stops",
        location.library
    );
    let config = ServeConfig {
        token,
        max_connections: args.max_connections,
        max_fetches: args.max_fetches,
        header_timeout: Duration::from_secs(args.header_timeout.max(1)),
        stall_timeout: Duration::from_secs(args.stall_timeout.max(1)),
        access_log: !args.quiet,
        ..ServeConfig::default()
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("shutting down: finishing the responses in flight");
    };
    serve(lib, listener, config, shutdown).await?;
    eprintln!("stopped");
    Ok(())
}

fn read_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "the token in {} contains whitespace or control characters",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: the token file {} is readable by other users (chmod 600 it)",
                    path.display()
                );
            }
        }
    }
    Ok(token.to_string())
}
