//! `haagenti stats`: library totals and where the savings come from.

use anyhow::Result;
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::render::print_stats;

pub use crate::render::JsonOnly as Args;

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let stats = lib.stats().await?;
    print_stats(&stats, &lib.lossy_models().await?, args.json)
}
