//! The native `Library`: a [`FragmentLibrary`] with its own tokio runtime, and the
//! library operations of the CLI (ingest, export, verify, stats, rm, gc, compare,
//! similar), each returning the CLI's `--json` report.
//!
//! Every call releases the GIL while the library works (`Python::detach`), so other
//! Python threads run meanwhile and several threads can read at once.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use haagenti_fragments::{
    CodecPolicy, FragmentError, FragmentLibrary, GcOptions, IngestOptions, OpenOptions,
};
use pyo3::prelude::*;
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::errors::{invalid, to_py};
use crate::model::Model;

/// A runtime shared by a library and the models it opens.
pub type Rt = Arc<Runtime>;

/// Runs the future `make` returns to completion on `rt` with the GIL released. The
/// future is made on the detached thread, so it need not be `Send` (some of the
/// library's futures are not provably so).
pub fn block<T, F, M>(py: Python<'_>, rt: &Runtime, make: M) -> PyResult<T>
where
    M: FnOnce() -> F + Send,
    F: Future<Output = Result<T, FragmentError>>,
    T: Send,
{
    py.detach(|| rt.block_on(make())).map_err(to_py)
}

fn json<T: Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| invalid(format!("serializing a report: {e}")))
}

/// A model library (see `haagenti.open`).
#[pyclass(frozen, module = "haagenti._native")]
#[derive(Debug)]
pub struct Library {
    lib: FragmentLibrary,
    rt: Rt,
    location: String,
    s3_endpoint: Option<String>,
}

#[pymethods]
impl Library {
    #[new]
    #[pyo3(signature = (location, s3_endpoint=None, cache_mb=1024))]
    fn new(
        py: Python<'_>,
        location: String,
        s3_endpoint: Option<String>,
        cache_mb: u64,
    ) -> PyResult<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("haagenti")
            .build()
            .map_err(|e| crate::errors::StoreError::new_err(format!("starting a runtime: {e}")))?;
        let cache_bytes = cache_mb
            .checked_mul(1 << 20)
            .ok_or_else(|| invalid(format!("cache_mb {cache_mb} is too large")))?;
        let options = OpenOptions::default()
            .s3_endpoint(s3_endpoint.clone())
            .cache_bytes(cache_bytes);
        let lib = block(py, &rt, || haagenti_fragments::open(&location, options))?;
        Ok(Self {
            lib,
            rt: Arc::new(rt),
            location,
            s3_endpoint,
        })
    }

    /// The location this library was opened from.
    #[getter]
    fn location(&self) -> &str {
        &self.location
    }

    fn models(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        block(py, &self.rt, || self.lib.models())
    }

    #[pyo3(signature = (name, path, replace=false, codec="balanced", lossy_max_rel_error=None))]
    fn ingest(
        &self,
        py: Python<'_>,
        name: &str,
        path: PathBuf,
        replace: bool,
        codec: &str,
        lossy_max_rel_error: Option<f64>,
    ) -> PyResult<String> {
        let policy: CodecPolicy = codec.parse().map_err(to_py)?;
        let opts = IngestOptions::default()
            .replace(replace)
            .lossy_max_rel_error(lossy_max_rel_error);
        // The codec policy is the library's configuration: ingest through a library
        // opened with it (the directory or bucket is the same; this one's cache is not
        // needed for writing).
        let options = OpenOptions::default()
            .s3_endpoint(self.s3_endpoint.clone())
            .codec_policy(policy);
        let location = self.location.clone();
        let report = block(py, &self.rt, || async move {
            let lib = haagenti_fragments::open(&location, options).await?;
            lib.ingest(name, &path, opts).await
        })?;
        json(&report)
    }

    fn export(&self, py: Python<'_>, name: &str, out_dir: PathBuf) -> PyResult<String> {
        json(&block(py, &self.rt, || {
            self.lib.export(name, &out_dir, None)
        })?)
    }

    #[pyo3(signature = (name=None))]
    fn verify(&self, py: Python<'_>, name: Option<&str>) -> PyResult<String> {
        json(&block(py, &self.rt, || self.lib.verify(name, None))?)
    }

    fn stats(&self, py: Python<'_>) -> PyResult<String> {
        json(&block(py, &self.rt, || self.lib.stats())?)
    }

    fn remove(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        block(py, &self.rt, || self.lib.remove(name))
    }

    #[pyo3(signature = (grace_seconds=3600.0, dry_run=false))]
    fn gc(&self, py: Python<'_>, grace_seconds: f64, dry_run: bool) -> PyResult<String> {
        let grace = Duration::try_from_secs_f64(grace_seconds)
            .map_err(|e| invalid(format!("grace_seconds {grace_seconds}: {e}")))?;
        let opts = GcOptions { dry_run, grace };
        json(&block(py, &self.rt, || self.lib.gc(opts))?)
    }

    fn compare(&self, py: Python<'_>, a: &str, b: &str) -> PyResult<String> {
        json(&block(py, &self.rt, || self.lib.compare_models(a, b))?)
    }

    #[pyo3(signature = (name, tensor=None, limit=5))]
    fn similar(
        &self,
        py: Python<'_>,
        name: &str,
        tensor: Option<&str>,
        limit: usize,
    ) -> PyResult<String> {
        json(&block(py, &self.rt, || {
            self.lib.similar_tensors(name, tensor, limit)
        })?)
    }

    /// Opens model `name` for reading (reads its manifest only).
    fn model(&self, py: Python<'_>, name: &str) -> PyResult<Model> {
        let handle = block(py, &self.rt, || self.lib.open_model(name))?;
        Ok(Model::new(handle, self.rt.clone()))
    }

    /// The read counters and the cache's state (JSON of `MetricsSnapshot`).
    fn metrics(&self, py: Python<'_>) -> PyResult<String> {
        let lib = self.lib.clone();
        block(py, &self.rt, || async move {
            lib.sync_cache().await;
            Ok(lib.metrics())
        })
        .and_then(|m| json(&m))
    }
}
