//! `haagenti load`: loads models in sequence through one fragment cache, as a program
//! switching between models of a family would, and reports what each load fetched.

use std::time::Instant;

use anyhow::{Context, Result};

use haagenti_core::FragmentLibrary;
use haagenti_fragments::OpenOptions;
use serde::Serialize;
use serde_json::json;

use crate::location::Location;
use crate::render::{human, print_json, speed};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model to load; repeat to load several, in order.
    #[arg(long = "model", value_name = "NAME", required = true)]
    pub models: Vec<String>,
    /// Fragment cache budget in MiB, shared by all the loads.
    #[arg(long, default_value_t = 1024)]
    pub cache_mb: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What loading one model did.
#[derive(Clone, Debug, Serialize)]
pub struct ModelLoad {
    pub model: String,
    pub tensors: u64,
    /// Bytes of tensor data loaded.
    pub bytes: u64,
    pub seconds: f64,
    /// Stored (encoded) bytes read from the store.
    pub bytes_fetched: u64,
    /// Decoded bytes the cache served, delta bases included.
    pub bytes_from_cache: u64,
    pub store_reads: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub decode_seconds: f64,
    /// Tensors left out because a fragment of theirs is damaged, with the error.
    pub damaged: Vec<String>,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location
        .open(OpenOptions::default().cache_bytes(args.cache_mb.saturating_mul(1 << 20)))
        .await?;
    let mut loads = Vec::with_capacity(args.models.len());
    for model in &args.models {
        let load = load_model(&lib, model).await?;
        for d in &load.damaged {
            eprintln!("DAMAGED: {d}");
        }
        if !args.json {
            outln!(
                "loaded {} ({} tensors, {}) in {:.3}s ({}): fetched {} in {} reads, {} from cache",
                load.model,
                load.tensors,
                human(load.bytes),
                load.seconds,
                speed(load.bytes, load.seconds),
                human(load.bytes_fetched),
                load.store_reads,
                human(load.bytes_from_cache),
            )?;
        }
        loads.push(load);
    }
    lib.sync_cache().await;
    let totals = lib.metrics();
    if args.json {
        print_json(&json!({ "models": loads, "totals": totals }))?;
    } else {
        outln!(
            "cache holds {} in {} fragments (budget {})",
            human(totals.cache_bytes),
            totals.cache_entries,
            human(totals.cache_budget)
        )?;
    }
    let damaged: usize = loads.iter().map(|l| l.damaged.len()).sum();
    if damaged > 0 {
        anyhow::bail!(
            "{damaged} tensor(s) not loaded: a fragment is damaged; `haagenti repair --from PATH` heals them from the original files"
        );
    }
    Ok(())
}

/// Loads every tensor of `model`, then drops them (the cache keeps what fits).
pub async fn load_model(lib: &FragmentLibrary, model: &str) -> Result<ModelLoad> {
    let before = lib.metrics();
    let started = Instant::now();
    let handle = lib
        .open_model(model)
        .await
        .with_context(|| format!("opening model {model:?}"))?;
    let (tensors, damaged) = match handle.load_all().await {
        Ok(tensors) => (tensors, Vec::new()),
        // Contained: every intact tensor still loads, and each damaged one is named.
        Err(e) if e.is_corruption() => {
            let (mut tensors, mut damaged) = (Vec::new(), Vec::new());
            for info in handle.tensors() {
                match handle.read(info).await {
                    Ok(t) => tensors.push(t),
                    Err(e) if e.is_corruption() => damaged.push(e.to_string()),
                    Err(e) => return Err(e).with_context(|| format!("loading model {model:?}")),
                }
            }
            (tensors, damaged)
        }
        Err(e) => return Err(e).with_context(|| format!("loading model {model:?}")),
    };
    let seconds = started.elapsed().as_secs_f64();
    let used = lib.metrics().since(&before);
    Ok(ModelLoad {
        model: model.to_string(),
        tensors: tensors.len() as u64,
        bytes: tensors.iter().map(|t| t.len()).sum(),
        seconds,
        bytes_fetched: used.bytes_fetched,
        bytes_from_cache: used.cache_hit_bytes,
        store_reads: used.store_reads,
        cache_hits: used.cache_hits,
        cache_misses: used.cache_misses,
        decode_seconds: used.decode_seconds,
        damaged,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use haagenti_core::IngestOptions;
    use haagenti_testkit::synth;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_load_comes_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let family = synth::small_family(&dir.path().join("src"), 3).unwrap();
        let location = dir.path().join("lib");
        let options = OpenOptions::default()
            .similarity(false)
            .cache_bytes(64 << 20);
        let lib = haagenti_fragments::open(location.to_str().unwrap(), options)
            .await
            .unwrap();
        let m = family.model("base-bf16").unwrap();
        lib.ingest(&m.name, &m.path, IngestOptions::default())
            .await
            .unwrap();

        let cold = load_model(&lib, "base-bf16").await.unwrap();
        assert!(cold.bytes > 0 && cold.bytes_fetched > 0);
        assert_eq!(cold.bytes_from_cache, 0);
        let warm = load_model(&lib, "base-bf16").await.unwrap();
        assert_eq!((warm.bytes_fetched, warm.store_reads), (0, 0));
        assert_eq!(warm.bytes_from_cache, warm.bytes);
        assert!(load_model(&lib, "missing").await.is_err());
    }
}
