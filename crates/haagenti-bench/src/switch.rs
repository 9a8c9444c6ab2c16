//! Model-switching benchmark (issue 7): load model B after model A through one fragment
//! cache, against a cold B (a fresh library and cache over the same store).
//!
//! A is a Llama-shaped bf16 model; B is its fine-tune with the embeddings and the first
//! half of the layers frozen, so at least half of B's fragments are A's. Stores: the
//! filesystem (in a temporary directory; the page cache is warm, the files having just
//! been written), and an S3 server when `HAAGENTI_TEST_S3_ENDPOINT` is set (`cargo xtask`
//! starts moto and sets it; the S3 run uses the quick model size, moto keeping every
//! object in memory).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use haagenti_core::{Dtype, FragmentLibrary, FragmentStore, IngestOptions, LibraryConfig};
use haagenti_testkit::synth::{self, Recipe, SynthTensor};
use serde::{Deserialize, Serialize};

use crate::util;

/// Targets from the issue.
pub const TARGET_BYTES_RATIO: f64 = 0.55;
pub const TARGET_TIME_RATIO: f64 = 0.60;
pub const TARGET_THROUGHPUT: f64 = 1e9;

/// Results on every store measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwitchBench {
    pub rows: Vec<SwitchRow>,
}

/// One store's measurements; times are medians of `runs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwitchRow {
    pub store: String,
    pub runs: usize,
    /// Tensor bytes of A and of B.
    pub model_a_bytes: u64,
    pub model_b_bytes: u64,
    /// Fragments of B that A also has, by count and by bytes.
    pub shared_fragments: f64,
    pub shared_bytes: f64,
    pub cache_budget: u64,
    /// Loading A into an empty cache.
    pub a_seconds: f64,
    /// Loading B into an empty cache.
    pub cold_seconds: f64,
    pub cold_bytes_fetched: u64,
    /// Seconds spent decoding and verifying fragments in a cold load of B, summed over
    /// threads (wall time inside the decoder).
    pub cold_decode_seconds: f64,
    /// CPU seconds (user + system, all threads) of a cold load of B.
    pub cold_cpu_seconds: f64,
    /// Loading B right after A.
    pub warm_seconds: f64,
    pub warm_bytes_fetched: u64,
    pub warm_bytes_from_cache: u64,
    /// `warm_bytes_fetched / cold_bytes_fetched` (target <= 0.55).
    pub bytes_ratio: f64,
    /// `warm_seconds / cold_seconds` (target <= 0.60).
    pub time_ratio: f64,
    /// B's tensor bytes per second of a cold load (target >= 1 GB/s on the filesystem).
    pub cold_throughput: f64,
    /// The same from CPU time, as if two cores were free for the load alone: what wall
    /// time shows on an idle two-core machine.
    pub cold_throughput_2_cores: f64,
}

/// Model shape: hidden size, MLP size, layers, vocabulary.
struct Dims {
    hidden: u64,
    mlp: u64,
    layers: u64,
    vocab: u64,
}

const QUICK: Dims = Dims {
    hidden: 512,
    mlp: 1408,
    layers: 8,
    vocab: 8000,
};
const FULL: Dims = Dims {
    hidden: 1024,
    mlp: 2816,
    layers: 16,
    vocab: 32000,
};

/// Runs the benchmark in a process of its own (`haagenti-bench switch --json`), like the
/// ingest and export phases: a load's time then owes nothing to the heap and threads the
/// earlier phases of a full run left behind (in-process, the time ratio of the full run
/// drifted to 0.68-0.73 where a fresh process measured 0.46-0.53 minutes apart).
pub fn run_in_child(quick: bool) -> Result<SwitchBench> {
    let mut args = vec!["switch".as_ref(), "--json".as_ref()];
    if quick {
        args.push("--quick".as_ref());
    }
    crate::util::run_self(&args, "the switching benchmark")
}

/// Runs the benchmark: about 120 MB of models (quick) or about 940 MB (full).
pub fn run(quick: bool) -> Result<SwitchBench> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(quick))
}

async fn run_async(quick: bool) -> Result<SwitchBench> {
    let work = TempDir::new()?;
    let runs = if quick { 3 } else { 5 };
    let mut rows = Vec::new();

    let (a, b) = write_pair(&work.0.join("src"), if quick { &QUICK } else { &FULL })?;
    let fs = haagenti_store_fs::FsStore::open(work.0.join("library"))?
        .without_sync()
        // Loads are measured with the library in the page cache.
        .page_cache_writes();
    rows.push(measure("fs", Arc::new(fs), &a, &b, runs).await?);

    if let Some(store) = s3_store()? {
        let (a, b) = if quick {
            (a, b)
        } else {
            write_pair(&work.0.join("src-s3"), &QUICK)?
        };
        let store: Arc<dyn FragmentStore> = Arc::new(store);
        let row = measure("s3", store.clone(), &a, &b, runs).await;
        // Leave nothing behind in the bucket, whatever happened.
        for meta in store.list("").await.unwrap_or_default() {
            let _ = store.delete(&meta.key).await;
        }
        rows.push(row?);
    }
    Ok(SwitchBench { rows })
}

/// Ingests A and B into `store`, then loads: cold B, and A then B, `runs` times each.
async fn measure(
    label: &str,
    store: Arc<dyn FragmentStore>,
    a: &Path,
    b: &Path,
    runs: usize,
) -> Result<SwitchRow> {
    let library = |budget: u64| -> Result<FragmentLibrary> {
        Ok(FragmentLibrary::new(
            store.clone(),
            haagenti_codec::default_registry(),
            LibraryConfig::default(),
        )?
        .with_cache_bytes(budget))
    };
    let setup = library(0)?;
    for (name, path) in [("a", a), ("b", b)] {
        setup
            .ingest(name, path, IngestOptions::default().replace(true))
            .await
            .with_context(|| format!("ingesting {}", path.display()))?;
    }
    let (ha, hb) = (setup.open_model("a").await?, setup.open_model("b").await?);
    let ids_a: HashSet<_> = ha
        .tensors()
        .iter()
        .flat_map(|t| t.fragments.iter().map(|r| r.id))
        .collect();
    let frags_b: Vec<_> = hb
        .tensors()
        .iter()
        .flat_map(|t| t.fragments.clone())
        .collect();
    let shared: Vec<_> = frags_b.iter().filter(|r| ids_a.contains(&r.id)).collect();
    let shared_bytes: u64 = shared.iter().map(|r| u64::from(r.len)).sum();
    // Room for all of A: B after A finds every shared fragment.
    let budget = ha.tensor_bytes() + (64 << 20);

    let (mut a_secs, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let lib = library(budget)?;
        cold.push(load(&lib, "b").await?);

        let lib = library(budget)?;
        a_secs.push(load(&lib, "a").await?.seconds);
        warm.push(load(&lib, "b").await?);
    }
    let cold_seconds = median(cold.iter().map(|l| l.seconds).collect());
    let warm_seconds = median(warm.iter().map(|l| l.seconds).collect());
    // Bytes do not vary between runs; the last run's are reported.
    let (c, w) = (cold.last(), warm.last());
    let cold_bytes_fetched = c.map_or(0, |l| l.fetched);
    let warm_bytes_fetched = w.map_or(0, |l| l.fetched);
    Ok(SwitchRow {
        store: label.to_string(),
        runs,
        model_a_bytes: ha.tensor_bytes(),
        model_b_bytes: hb.tensor_bytes(),
        shared_fragments: shared.len() as f64 / frags_b.len().max(1) as f64,
        shared_bytes: shared_bytes as f64 / hb.tensor_bytes().max(1) as f64,
        cache_budget: budget,
        a_seconds: median(a_secs),
        cold_seconds,
        cold_bytes_fetched,
        cold_decode_seconds: median(cold.iter().map(|l| l.decode_seconds).collect()),
        cold_cpu_seconds: median(cold.iter().map(|l| l.cpu_seconds).collect()),
        warm_seconds,
        warm_bytes_fetched,
        warm_bytes_from_cache: w.map_or(0, |l| l.from_cache),
        bytes_ratio: warm_bytes_fetched as f64 / cold_bytes_fetched.max(1) as f64,
        time_ratio: warm_seconds / cold_seconds,
        cold_throughput: hb.tensor_bytes() as f64 / cold_seconds,
        cold_throughput_2_cores: hb.tensor_bytes() as f64
            / (median(cold.iter().map(|l| l.cpu_seconds).collect()) / 2.0).max(1e-9),
    })
}

struct Load {
    seconds: f64,
    fetched: u64,
    from_cache: u64,
    decode_seconds: f64,
    cpu_seconds: f64,
}

/// Loads every tensor of `model`, then drops them.
async fn load(lib: &FragmentLibrary, model: &str) -> Result<Load> {
    let before = lib.metrics();
    let cpu = crate::util::cpu_secs().unwrap_or(0.0);
    let started = Instant::now();
    let tensors = lib.open_model(model).await?.load_all().await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = crate::util::cpu_secs().unwrap_or(0.0) - cpu;
    drop(tensors);
    let used = lib.metrics().since(&before);
    Ok(Load {
        seconds,
        fetched: used.bytes_fetched,
        from_cache: used.cache_hit_bytes,
        decode_seconds: used.decode_seconds,
        cpu_seconds,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Writes A and its half-frozen fine-tune B under `dir`.
fn write_pair(dir: &Path, d: &Dims) -> Result<(PathBuf, PathBuf)> {
    let mut defs: Vec<(String, Vec<u64>, Option<u64>)> = vec![(
        "model.embed_tokens.weight".into(),
        vec![d.vocab, d.hidden],
        None,
    )];
    for l in 0..d.layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![d.hidden]),
            ("self_attn.q_proj.weight", vec![d.hidden, d.hidden]),
            ("self_attn.k_proj.weight", vec![d.hidden, d.hidden]),
            ("self_attn.v_proj.weight", vec![d.hidden, d.hidden]),
            ("self_attn.o_proj.weight", vec![d.hidden, d.hidden]),
            ("post_attention_layernorm.weight", vec![d.hidden]),
            ("mlp.gate_proj.weight", vec![d.mlp, d.hidden]),
            ("mlp.up_proj.weight", vec![d.mlp, d.hidden]),
            ("mlp.down_proj.weight", vec![d.hidden, d.mlp]),
        ] {
            defs.push((format!("{p}.{name}"), shape, Some(l)));
        }
    }
    defs.push(("model.norm.weight".into(), vec![d.hidden], None));

    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, (name, shape, layer)) in defs.into_iter().enumerate() {
        let seed = 7000 + i as u64;
        let base = if shape.len() == 1 {
            Recipe::Normal {
                seed,
                mean: 1.0,
                std: 0.02,
            }
        } else {
            Recipe::Normal {
                seed,
                mean: 0.0,
                std: 0.02,
            }
        };
        let frozen = layer.is_none_or(|l| l < d.layers / 2);
        let tuned = if frozen {
            base.clone()
        } else {
            Recipe::Perturb {
                base: Box::new(base.clone()),
                seed: seed + 1_000_000,
                std: 0.02 * 3e-3,
            }
        };
        a.push(SynthTensor::new(
            name.clone(),
            Dtype::BF16,
            shape.clone(),
            base,
        ));
        b.push(SynthTensor::new(name, Dtype::BF16, shape, tuned));
    }
    let (pa, pb) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    synth::write_safetensors(&pa, &a, None)?;
    synth::write_safetensors(&pb, &b, None)?;
    Ok((pa, pb))
}

/// The S3 test server named by `HAAGENTI_TEST_S3_ENDPOINT`, under a fresh key prefix.
fn s3_store() -> Result<Option<haagenti_store_s3::S3Store>> {
    let Some(endpoint) = std::env::var("HAAGENTI_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    else {
        return Ok(None);
    };
    let bucket =
        std::env::var("HAAGENTI_TEST_S3_BUCKET").unwrap_or_else(|_| "haagenti-test".into());
    let options = haagenti_store_s3::S3Options {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        // A local test server does not check signatures; explicit keys keep the client
        // off the instance-metadata service.
        credentials: Some(haagenti_store_s3::S3Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        }),
        ..Default::default()
    };
    let url = format!("s3://{bucket}/bench/switch-{}", unique());
    Ok(Some(haagenti_store_s3::S3Store::from_url(&url, options)?))
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("haagenti-switch-{}", unique()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The results as a markdown table, with the targets.
pub fn markdown(bench: &SwitchBench) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let mut out = String::from(
        "### Model switching (B after A vs cold B)\n\n\
         | store | A / B tensor MB | B's fragments shared with A (count / bytes) | load A s | cold B s (CPU s) | B after A s | time ratio (<= 0.60) | cold B fetched MB | B after A fetched MB | bytes ratio (<= 0.55) | cold B GB/s (from CPU time, 2 cores) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &bench.rows {
        out.push_str(&format!(
            "| {} | {:.0} / {:.0} | {:.0}% / {:.0}% | {:.3} | {:.3} ({:.2}) | {:.3} | {:.2} {} | {:.1} | {:.1} | {:.2} {} | {:.2} {} |\n",
            r.store,
            mb(r.model_a_bytes),
            mb(r.model_b_bytes),
            r.shared_fragments * 100.0,
            r.shared_bytes * 100.0,
            r.a_seconds,
            r.cold_seconds,
            r.cold_cpu_seconds,
            r.warm_seconds,
            r.time_ratio,
            util::mark(r.time_ratio <= TARGET_TIME_RATIO),
            mb(r.cold_bytes_fetched),
            mb(r.warm_bytes_fetched),
            r.bytes_ratio,
            util::mark(r.bytes_ratio <= TARGET_BYTES_RATIO),
            r.cold_throughput / 1e9,
            // The CPU-time figure and the target concern the local filesystem only: an S3
            // load waits on the server.
            if r.store == "fs" {
                format!(
                    "({:.2}) {}",
                    r.cold_throughput_2_cores / 1e9,
                    util::mark(r.cold_throughput >= TARGET_THROUGHPUT)
                )
            } else {
                String::new()
            },
        ));
    }
    out.push_str(&format!(
        "\nMedians of {} runs; B is A's fine-tune with embeddings and half the layers frozen; \
         every load is a fresh library, the page cache warm.\n",
        bench.rows.first().map_or(0, |r| r.runs)
    ));
    out
}
