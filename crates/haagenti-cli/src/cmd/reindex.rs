//! `haagenti reindex`: rebuild the similarity index from the stored fragments.

use anyhow::{Context, Result};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::render::{print_json, warn_all};

pub use crate::render::JsonOnly as Args;

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let json = args.json;
    let report = lib
        .rebuild_index()
        .await
        .context("rebuilding the similarity index")?;
    warn_all(&report.warnings);
    if json {
        print_json(&report)?;
    } else {
        outln!(
            "rebuilt the similarity index: {} fragments in {} segment (replaced {} segments), {} warnings",
            report.entries,
            report.segments,
            report.removed_segments,
            report.warnings.len()
        )?;
    }
    Ok(())
}
