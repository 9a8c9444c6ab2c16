//! The global `--library` and `--s3-endpoint` options, and opening the library they name.

use anyhow::Result;
use clap::Args;
use haagenti_core::{FragmentError, FragmentLibrary};
use haagenti_fragments::OpenOptions;

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
}

impl Location {
    /// Opens the library with `options` (the endpoint comes from `--s3-endpoint`). A
    /// location that names nothing usable is its own error; any other failure (a missing
    /// bucket, an unreachable endpoint) is prefixed with "opening library LOCATION".
    pub async fn open(&self, options: OpenOptions) -> Result<FragmentLibrary> {
        let options = options.s3_endpoint(self.s3_endpoint.clone());
        haagenti_fragments::open(&self.library, options)
            .await
            .map_err(|e| match e {
                FragmentError::InvalidLocation { .. } => e.into(),
                e => anyhow::Error::from(e).context(format!("opening library {}", self.library)),
            })
    }
}
