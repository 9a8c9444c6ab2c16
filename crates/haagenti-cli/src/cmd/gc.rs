//! `haagenti gc`: delete fragments no model references.

use std::time::Duration;

use anyhow::Result;
use haagenti_core::{FragmentError, GcOptions};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::render::{human, print_json, warn_all};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Report what would be deleted without deleting it.
    #[arg(long)]
    dry_run: bool,
    /// Keep unreferenced objects younger than this many seconds.
    #[arg(long, default_value_t = 3600)]
    grace: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let report = lib
        .gc(GcOptions {
            dry_run: args.dry_run,
            grace: Duration::from_secs(args.grace),
        })
        .await
        .map_err(|e| match e {
            FragmentError::ManifestUnreadable { ref model, .. } => anyhow::anyhow!(
                "{e}; gc refuses to run while a manifest is unreadable. Remove the model \
                 (`haagenti rm --model {model}`) or ingest it again \
                 (`haagenti ingest --replace --model {model} PATH`), then run gc"
            ),
            e => e.into(),
        })?;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "{} {} unreferenced objects ({}); kept {} live fragments and {} objects younger than {}s",
            if args.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            report.garbage_objects,
            human(report.garbage_bytes),
            report.live_fragments,
            report.young_objects,
            args.grace,
        )?;
        if report.index_segments_merged > 0 {
            outln!(
                "merged {} similarity index segments into one",
                report.index_segments_merged
            )?;
        }
    }
    warn_all(&report.warnings);
    Ok(())
}
