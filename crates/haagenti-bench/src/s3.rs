//! Ingest and export speed of a library on S3 next to the filesystem store (issue 6).
//!
//! One generated bf16 model goes through [`FragmentLibrary`] on [`FsStore`] and on
//! [`S3Store`], alternating in the same run, each run into a fresh, empty library (so
//! ingest writes every fragment). The S3 server is the one `HAAGENTI_TEST_S3_ENDPOINT`
//! names (`scripts/s3-server.sh` starts a local moto): its numbers measure the client and
//! the protocol round trips against an in-memory Python server on the same machine, not
//! AWS. S3 is measured at the library's default parallelism (the core count) and at a
//! higher one, since on S3 a fragment's cost is mostly request latency.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use haagenti_core::{Dtype, FragmentLibrary, FragmentStore, IngestOptions, LibraryConfig};
use haagenti_store_fs::FsStore;
use haagenti_store_s3::{S3Credentials, S3Options, S3Store};
use haagenti_testkit::synth::generate_model;
use serde::Serialize;

/// Model size of a full run and of `--quick`.
const MODEL_BYTES: u64 = 64 << 20;
const QUICK_MODEL_BYTES: u64 = 16 << 20;
const SEED: u64 = 6;
/// Library parallelism of the extra S3 configuration.
const S3_HIGH_PARALLELISM: usize = 16;

/// Every number the S3 benchmark measures.
#[derive(Debug, Serialize)]
pub struct S3Bench {
    pub quick: bool,
    /// Size of the model file.
    pub model_bytes: u64,
    pub runs: usize,
    pub endpoint: String,
    pub rows: Vec<StoreSpeed>,
}

/// One store configuration: medians over the runs.
#[derive(Debug, Serialize)]
pub struct StoreSpeed {
    pub store: String,
    /// Fragments hashed, encoded and stored (or fetched and decoded) at once.
    pub parallelism: usize,
    pub ingest_mb_per_s: f64,
    pub export_mb_per_s: f64,
    /// Bytes of the store's objects after one ingest.
    pub stored_bytes: u64,
}

/// Runs the benchmark, or returns `None` (saying why) when no S3 server is configured.
pub fn run(quick: bool) -> Result<Option<S3Bench>> {
    let endpoint = match std::env::var("HAAGENTI_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => {
            eprintln!(
                "s3 benchmark skipped: HAAGENTI_TEST_S3_ENDPOINT is not set (start a local \
                 server with scripts/s3-server.sh and export what it prints)"
            );
            return Ok(None);
        }
    };
    let bucket =
        std::env::var("HAAGENTI_TEST_S3_BUCKET").unwrap_or_else(|_| "haagenti-test".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(measure(quick, endpoint, bucket)).map(Some)
}

/// A store configuration under test.
struct Config {
    label: &'static str,
    parallelism: usize,
    s3: bool,
}

async fn measure(quick: bool, endpoint: String, bucket: String) -> Result<S3Bench> {
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let src_dir = work.path().join("src");
    std::fs::create_dir_all(&src_dir)?;
    let src = src_dir.join("model.safetensors");
    let bytes = if quick {
        QUICK_MODEL_BYTES
    } else {
        MODEL_BYTES
    };
    let model_bytes = generate_model(&src, bytes, SEED, Dtype::BF16)
        .with_context(|| format!("generating {}", src.display()))?;
    let source = std::fs::read(&src)?;

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let configs = [
        Config {
            label: "fs",
            parallelism: cores,
            s3: false,
        },
        Config {
            label: "s3",
            parallelism: cores,
            s3: true,
        },
        Config {
            label: "s3",
            parallelism: S3_HIGH_PARALLELISM,
            s3: true,
        },
    ];
    let runs = if quick { 3 } else { 5 };
    let mut times: Vec<(Vec<Duration>, Vec<Duration>, u64)> = configs
        .iter()
        .map(|_| (Vec::new(), Vec::new(), 0))
        .collect();
    // Configurations alternate within each run, so machine noise hits them alike.
    for run in 0..runs {
        for (config, slot) in configs.iter().zip(&mut times) {
            let dir = work
                .path()
                .join(format!("run-{run}-{}", config.parallelism));
            let store: Arc<dyn FragmentStore> = if config.s3 {
                Arc::new(s3_store(&endpoint, &bucket)?)
            } else {
                // Both transports with the written objects in the page cache, as before
                // the filesystem store wrote them past it: this compares transports.
                Arc::new(FsStore::open(dir.join("library"))?.page_cache_writes())
            };
            let mut lib_config = LibraryConfig::default();
            lib_config.parallelism = config.parallelism;
            let lib = FragmentLibrary::new(
                store.clone(),
                haagenti_codec::default_registry(),
                lib_config,
            )?;

            let t = Instant::now();
            lib.ingest("model", &src, IngestOptions::default()).await?;
            slot.0.push(t.elapsed());
            let out = dir.join("out");
            let t = Instant::now();
            lib.export("model", &out, None).await?;
            slot.1.push(t.elapsed());

            if std::fs::read(out.join("model.safetensors"))? != source {
                bail!("{} export differs from the source", store.location());
            }
            let objects = store.list("").await?;
            slot.2 = objects.iter().map(|m| m.size).sum();
            // Empty the prefix again: moto keeps every object in memory.
            if config.s3 {
                for meta in objects {
                    store.delete(&meta.key).await?;
                }
            }
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let rows = configs
        .iter()
        .zip(times)
        .map(|(c, (mut ingest, mut export, stored_bytes))| StoreSpeed {
            store: c.label.to_string(),
            parallelism: c.parallelism,
            ingest_mb_per_s: mb_s(model_bytes, median(&mut ingest)),
            export_mb_per_s: mb_s(model_bytes, median(&mut export)),
            stored_bytes,
        })
        .collect();
    Ok(S3Bench {
        quick,
        model_bytes,
        runs,
        endpoint,
        rows,
    })
}

/// A store under a fresh prefix of the bucket. Credentials come from the standard AWS
/// environment when set; otherwise dummy ones (a local moto does not check them).
fn s3_store(endpoint: &str, bucket: &str) -> Result<S3Store> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let url = format!("s3://{bucket}/bench/s3-{}-{nanos}", std::process::id());
    let env_keys = std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
    let options = S3Options {
        endpoint: Some(endpoint.to_string()),
        region: Some(std::env::var("AWS_DEFAULT_REGION").unwrap_or_else(|_| "us-east-1".into())),
        credentials: (!env_keys).then(|| S3Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        }),
        ..S3Options::default()
    };
    Ok(S3Store::from_url(&url, options)?)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn mb_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64().max(1e-9)
}

/// The numbers as a markdown table.
pub fn markdown(b: &S3Bench) -> String {
    let mut s = format!(
        "One {:.1} MB bf16 model, median of {} runs each, configurations alternating; S3 is \
         the server at {} (a local moto: client and round-trip costs, not AWS).\n\n\
         | store | parallelism | ingest MB/s | export MB/s | stored MB |\n|---|---:|---:|---:|---:|\n",
        b.model_bytes as f64 / 1e6,
        b.runs,
        b.endpoint
    );
    for r in &b.rows {
        s += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.store,
            r.parallelism,
            r.ingest_mb_per_s,
            r.export_mb_per_s,
            r.stored_bytes as f64 / 1e6
        );
    }
    s
}
