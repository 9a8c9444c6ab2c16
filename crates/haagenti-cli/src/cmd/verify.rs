//! `haagenti verify`: rebuild models without writing, checking every hash.

use anyhow::{Result, bail};
use haagenti_core::Progress;
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::progress::Bar;
use crate::render::{human, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this model (default: every model).
    #[arg(long)]
    model: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let bar = Bar::new("verify", args.json);
    let report = lib
        .verify(
            args.model.as_deref(),
            bar.as_deref().map(|b| b as &dyn Progress),
        )
        .await?;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "verified {} models, {} files, {}",
            report.models,
            report.files,
            human(report.bytes)
        )?;
        if report.lossy_files > 0 {
            outln!(
                "LOSSY: {} files hold lossy substitutions: their fragments and lengths were checked, not the source's whole-file hash",
                report.lossy_files
            )?;
        }
        for p in &report.problems {
            outln!("DAMAGED: {p}")?;
        }
        if !report.damaged_objects.is_empty() {
            outln!(
                "{} damaged object(s): `haagenti repair` lists what depends on each; \
                 `haagenti repair --from PATH` heals them from the original files",
                report.damaged_objects.len()
            )?;
        }
    }
    if !report.is_ok() {
        bail!("verification failed: {}", report.problems.join("; "));
    }
    Ok(())
}
