//! `haagenti export`: rebuild every file of a model, bit-exact.

use std::path::PathBuf;

use anyhow::{Context, Result};
use haagenti_core::Progress;
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::progress::Bar;
use crate::render::{human, print_json, speed};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to rebuild.
    #[arg(long)]
    model: String,
    /// Directory to write the model's files into, at their original relative paths
    /// (created if missing; each file appears only once its hash checks out).
    #[arg(long)]
    out: PathBuf,
    /// Rebuild this stored generation instead of the newest: its recorded revision (for
    /// an imported Hugging Face snapshot, the commit hash) or its revision id (see
    /// `show`).
    #[arg(long)]
    revision: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let bar = Bar::new("export", args.json);
    let progress = bar.as_deref().map(|b| b as &dyn Progress);
    let report =
        match &args.revision {
            None => lib.export(&args.model, &args.out, progress).await,
            Some(rev) => {
                let generations = lib
                    .generations(&args.model)
                    .await
                    .with_context(|| format!("exporting model {:?}", args.model))?;
                // The newest generation of that revision (a revision may be stored twice).
                let Some(manifest) = generations.iter().rev().find(|m| {
                    m.revision.as_deref() == Some(rev.as_str()) || m.revision_id() == *rev
                }) else {
                    anyhow::bail!("model {:?} has no stored revision {rev:?}", args.model);
                };
                lib.export_generation(manifest, &args.out, progress).await
            }
        }
        .with_context(|| format!("exporting model {:?}", args.model))?;
    if args.json {
        return print_json(&report);
    }
    outln!(
        "exported {} ({} files, {}) to {} in {:.2}s ({})",
        args.model,
        report.files,
        human(report.bytes),
        args.out.display(),
        report.seconds,
        speed(report.bytes, report.seconds),
    )?;
    if report.lossy {
        outln!(
            "LOSSY: {} of {} files differ from the ingested bytes; max relative L2 error {:.3e}",
            report.lossy_files,
            report.files,
            report.max_rel_error
        )?;
    }
    Ok(())
}
