//! `haagenti ingest`: store .safetensors files or model directories under names, one or
//! many in one process (the library, its index and its cache opened once).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use haagenti_core::{CodecPolicy, FragmentError, FragmentLibrary, IngestOptions, IngestReport};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::progress::Bar;
use crate::render::{human, print_json, speed, warn_all};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Several models in one command: `ingest --model a PATH_A --model b PATH_B` \
(names and paths pair up in order), or `ingest --each DIR` (every model directory and \
.safetensors file in DIR, named after it). A model that fails is reported and the others \
go on; the command then exits 1."
)]
pub struct Args {
    /// Name to store the model under: `name` or `org/name`, each part up to 128 of
    /// A-Z a-z 0-9 . _ - (not starting with .). Repeat with one PATH each.
    #[arg(long = "model", value_name = "NAME", required_unless_present = "each")]
    models: Vec<String>,
    /// A .safetensors file or a model directory, one per --model.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Ingest every model directory and .safetensors file in DIR, each named after its
    /// directory or file name (without `.safetensors`).
    #[arg(long, value_name = "DIR", conflicts_with = "models")]
    each: Option<PathBuf>,
    /// Replace an existing model of the same name.
    #[arg(long)]
    replace: bool,
    /// Codec effort.
    #[arg(
        long,
        default_value = "balanced",
        value_parser = PossibleValuesParser::new(["fast", "balanced", "max"])
            .map(|s| s.parse::<CodecPolicy>().unwrap_or_default())
    )]
    codec: CodecPolicy,
    /// Fragment size in bytes of 16-bit tensors (65536 to 8388608; f32 fragments cover the
    /// same elements and are twice as large).
    #[arg(long)]
    fragment_size: Option<usize>,
    /// Opt-in lossy sharing: reference a stored fragment of the same dtype and length
    /// whose values are within this relative L2 error (e.g. 0.001) instead of storing the
    /// new one. Every substitution and its measured error is recorded in the manifest.
    #[arg(long, value_name = "E")]
    lossy_max_rel_error: Option<f64>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let models = models_to_ingest(&args)?;
    let lib = location
        .open(
            OpenOptions::default()
                .codec_policy(args.codec)
                .fragment_size(args.fragment_size),
        )
        .await?;
    let mut reports = Vec::with_capacity(models.len());
    let mut failed = Vec::new();
    for (name, path) in &models {
        match ingest_one(&lib, &args, name, path).await {
            Ok(report) => reports.push(report),
            // One model is enough to stop a single ingest; of several, the rest go on.
            Err(e) if models.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("error: {}", crate::one_line(&e));
                failed.push(name.clone());
            }
        }
    }
    if args.json {
        match reports.as_slice() {
            [one] if models.len() == 1 => print_json(one)?,
            _ => print_json(&serde_json::json!({ "models": reports, "failed": failed }))?,
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} models not ingested: {}",
            failed.len(),
            models.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The `(name, path)` pairs the arguments name, checked before anything is opened.
fn models_to_ingest(args: &Args) -> Result<Vec<(String, PathBuf)>> {
    if let Some(dir) = &args.each {
        return models_in(dir);
    }
    if args.models.len() != args.paths.len() {
        bail!(
            "{} --model name(s) and {} path(s): give one PATH after each --model NAME",
            args.models.len(),
            args.paths.len()
        );
    }
    Ok(args
        .models
        .iter()
        .cloned()
        .zip(args.paths.iter().cloned())
        .collect())
}

/// Every model directory and `.safetensors` file directly in `dir`, by name.
fn models_in(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut models = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            bail!("{}: file name is not UTF-8", path.display());
        };
        let name = if path.is_dir() {
            file_name
        } else if let Some(stem) = file_name.strip_suffix(".safetensors") {
            stem
        } else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        haagenti_core::validate_model_name(name)
            .with_context(|| format!("{} cannot name a model", path.display()))?;
        models.push((name.to_string(), path));
    }
    if models.is_empty() {
        bail!(
            "{}: no model directory or .safetensors file in it",
            dir.display()
        );
    }
    models.sort();
    Ok(models)
}

/// Ingests one model, printing its report (unless `--json`).
async fn ingest_one(
    lib: &FragmentLibrary,
    args: &Args,
    name: &str,
    path: &Path,
) -> Result<IngestReport> {
    let bar = Bar::new("ingest", args.json);
    let mut opts = IngestOptions::default()
        .replace(args.replace)
        .lossy_max_rel_error(args.lossy_max_rel_error);
    if let Some(bar) = bar {
        opts = opts.progress(bar);
    }
    let report = lib
        .ingest(name, path, opts)
        .await
        .map_err(|e| match e {
            FragmentError::ModelExists(_) => {
                anyhow::anyhow!("{e} (use --replace to overwrite it)")
            }
            e => e.into(),
        })
        .with_context(|| format!("ingesting {} as model {name:?}", path.display()))?;
    if !args.json {
        outln!(
            "ingested {} ({} files, {} tensors, {}) in {:.2}s ({})",
            report.model,
            report.files,
            report.tensors,
            human(report.logical_bytes),
            report.seconds,
            speed(report.logical_bytes, report.seconds),
        )?;
        outln!(
            "  {} already stored (exact dedup), {} new fragments: {} stored as {}",
            human(report.dedup_bytes),
            report.new_fragments,
            human(report.new_fragment_bytes),
            human(report.stored_bytes),
        )?;
        if report.delta_fragments + report.cast_fragments > 0 {
            outln!(
                "  of which {} as deltas ({} stored) and {} as casts of f32 fragments (no payload)",
                human(report.delta_fragment_bytes),
                human(report.delta_stored_bytes),
                human(report.cast_fragment_bytes),
            )?;
        }
        if report.quant_fragments > 0 {
            outln!(
                "  of which {} as quantizations of stored float fragments ({} stored)",
                human(report.quant_fragment_bytes),
                human(report.quant_stored_bytes),
            )?;
        }
        if report.lossy_fragments > 0 {
            outln!(
                "  LOSSY: {} fragments ({}) reference a similar stored fragment; largest relative L2 error {:.3e}",
                report.lossy_fragments,
                human(report.lossy_fragment_bytes),
                report.max_rel_error,
            )?;
        }
        if report.healed_fragments > 0 {
            outln!(
                "  HEALED {} damaged stored fragments with the bytes read",
                report.healed_fragments
            )?;
        }
        if report.index_segments_merged > 0 {
            outln!(
                "  merged {} similarity index segments into one",
                report.index_segments_merged
            )?;
        }
    }
    warn_all(&report.warnings);
    Ok(report)
}
