//! The global `--library`, `--s3-endpoint` and `--s3-retry-timeout` options, and opening
//! the library they name.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use haagenti_core::{FragmentError, FragmentLibrary, FragmentStore};
use haagenti_fragments::OpenOptions;

/// The store of the library this process opened, for [`retry_summary`].
static OPENED: OnceLock<Arc<dyn FragmentStore>> = OnceLock::new();

#[derive(Args, Debug)]
pub struct Location {
    /// Library location: a directory, file:///path, or s3://bucket/prefix.
    #[arg(
        long,
        global = true,
        env = "HAAGENTI_LIBRARY",
        default_value = "./haagenti-library"
    )]
    pub library: String,

    /// Endpoint of an S3-compatible service (MinIO, R2, Ceph, a local test server).
    #[arg(long, global = true, env = "HAAGENTI_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Seconds one S3 operation may keep retrying throttling, resets and cut responses
    /// before it fails.
    #[arg(long, global = true, env = "HAAGENTI_S3_RETRY_TIMEOUT", value_name = "SECS",
          value_parser = parse_seconds)]
    pub s3_retry_timeout: Option<Duration>,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

/// One line on what the opened library's store rode out ("s3: 12 requests retried
/// (5 HTTP 503 SlowDown, 7 connection reset or cut)"), when it retried anything.
pub fn retry_summary() -> Option<String> {
    let store = OPENED.get()?;
    let stats = store.retry_stats();
    if stats.retried == 0 && stats.exhausted == 0 {
        return None;
    }
    let causes: Vec<String> = stats
        .causes
        .iter()
        .map(|(cause, n)| format!("{n} {cause}"))
        .collect();
    let mut line = format!(
        "{}: {} requests retried ({})",
        store.location(),
        stats.retried,
        causes.join(", ")
    );
    if stats.exhausted > 0 {
        line.push_str(&format!(
            "; {} operations ran out of retries",
            stats.exhausted
        ));
    }
    Some(line)
}

impl Location {
    /// Opens the library with `options` (the endpoint comes from `--s3-endpoint`). A
    /// location that names nothing usable is its own error; any other failure (a missing
    /// bucket, an unreachable endpoint) is prefixed with "opening library LOCATION".
    pub async fn open(&self, options: OpenOptions) -> Result<FragmentLibrary> {
        let options = options
            .s3_endpoint(self.s3_endpoint.clone())
            .s3_retry_timeout(self.s3_retry_timeout);
        let lib = haagenti_fragments::open(&self.library, options)
            .await
            .map_err(|e| match e {
                FragmentError::InvalidLocation { .. } => e.into(),
                e => anyhow::Error::from(e).context(format!("opening library {}", self.library)),
            })?;
        // The first library opened is the one the summary is about.
        let _ = OPENED.set(lib.store().clone());
        Ok(lib)
    }
}
