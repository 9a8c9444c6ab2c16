//! `haagenti stats`: library totals and where the savings come from.

use anyhow::{Result, bail};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::render::print_stats;

pub use crate::render::JsonOnly as Args;

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let stats = lib.stats().await?;
    print_stats(&stats, &lib.lossy_models().await?, args.json)?;
    // The figures cover the intact models; each damaged manifest is named once.
    if !stats.damaged.is_empty() {
        if !args.json {
            for d in &stats.damaged {
                outln!("DAMAGED: {}: {}", d.model, d.error)?;
            }
        }
        let names: Vec<&str> = stats.damaged.iter().map(|d| d.model.as_str()).collect();
        bail!(
            "{} model(s) with an unreadable manifest, left out of the figures: {}",
            stats.damaged.len(),
            names.join(", ")
        );
    }
    Ok(())
}
