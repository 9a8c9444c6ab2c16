//! `haagenti ingest`: store a .safetensors file or a model directory under a name.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use haagenti_core::{CodecPolicy, FragmentError, IngestOptions};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::progress::Bar;
use crate::render::{human, print_json, speed, warn_all};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Name to store the model under: up to 128 of A-Z a-z 0-9 . _ - (not starting with .).
    #[arg(long)]
    model: String,
    /// A .safetensors file or a model directory.
    path: PathBuf,
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
    let lib = location
        .open(
            OpenOptions::default()
                .codec_policy(args.codec)
                .fragment_size(args.fragment_size),
        )
        .await?;
    let bar = Bar::new("ingest", args.json);
    let mut opts = IngestOptions::default()
        .replace(args.replace)
        .lossy_max_rel_error(args.lossy_max_rel_error);
    if let Some(bar) = bar {
        opts = opts.progress(bar);
    }
    let report = lib
        .ingest(&args.model, &args.path, opts)
        .await
        .map_err(|e| match e {
            FragmentError::ModelExists(_) => {
                anyhow::anyhow!("{e} (use --replace to overwrite it)")
            }
            e => e.into(),
        })
        .with_context(|| {
            format!(
                "ingesting {} as model {:?}",
                args.path.display(),
                args.model
            )
        })?;
    if args.json {
        print_json(&report)?;
    } else {
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
    Ok(())
}
