//! `haagenti repair`: find damaged fragment objects, say what depends on them, and put
//! back verified bytes from the original files.

use std::path::PathBuf;

use anyhow::{Result, bail};
use haagenti_core::{DamageStatus, RepairOptions, SourceMatch};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::render::print_json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model's original file, a model directory, or a directory of models (walked
    /// recursively); repeatable. Files identical to a stored file heal its damaged
    /// fragments; a model whose manifest is damaged is ingested again from the source
    /// that holds the files it listed (or, when nothing of it decodes, the one named
    /// after it: `NAME/`, `NAME.safetensors`, `NAME.gguf`). Without it, repair only
    /// reports.
    #[arg(long = "from", value_name = "PATH")]
    sources: Vec<PathBuf>,
    /// Only this model; repeatable (default: every model).
    #[arg(long = "model", value_name = "NAME")]
    models: Vec<String>,
    /// Find and match, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Temporary objects younger than this many seconds (and than a minute) are left to
    /// the writes that may still use them; so are unreadable locks younger than this or than 5 minutes (a
    /// live lock is rewritten every minute), whichever is shorter.
    #[arg(long, default_value_t = 3600)]
    grace: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let report = lib
        .repair(
            RepairOptions::default()
                .sources(args.sources.clone())
                .models(args.models.clone())
                .dry_run(args.dry_run)
                .grace(std::time::Duration::from_secs(args.grace)),
        )
        .await?;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "checked {} fragments of {} models{}",
            report.fragments_checked,
            report.models,
            if args.sources.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} source files read, {} identical to a stored file",
                    report.source_files_read, report.source_files_matched
                )
            }
        )?;
        for d in &report.damaged {
            outln!("DAMAGED {}: {}", d.key, d.error)?;
            for u in d.used_by.iter().take(5) {
                match &u.tensor {
                    Some(t) => outln!("  used by {} file {} tensor {t}", u.model, u.file)?,
                    None => outln!("  used by {} file {}", u.model, u.file)?,
                }
            }
            if d.used_by.len() > 5 {
                outln!("  … and {} more", d.used_by.len() - 5)?;
            }
            if !d.dependants.is_empty() {
                outln!(
                    "  {} fragment(s) stored as deltas or casts of it",
                    d.dependants.len()
                )?;
            }
            let how = match (d.status, &d.source) {
                (DamageStatus::Healed, Some(p)) => format!("HEALED from {}", p.display()),
                (DamageStatus::Healable, Some(p)) => {
                    format!("healable from {} (dry run: not written)", p.display())
                }
                _ if d.healable_from.is_empty() => {
                    "LOST: no model's files hold these bytes".to_string()
                }
                _ => format!(
                    "not healed: run `haagenti repair --from PATH` with the original files of {}",
                    d.healable_from.join(", ")
                ),
            };
            outln!("  {how}")?;
        }
        for r in &report.rebuilt_manifests {
            let how = match r.matched_by {
                SourceMatch::FileHashes => "holds every file it listed",
                SourceMatch::Name => "named after the model; nothing of the manifest decodes",
            };
            match r.status {
                DamageStatus::Healed => outln!(
                    "REBUILT manifest of {}: ingested again from {} ({how})",
                    r.model,
                    r.source.display()
                )?,
                DamageStatus::Healable => outln!(
                    "manifest {} of {} can be rebuilt from {} ({how}; dry run: not written)",
                    r.key,
                    r.model,
                    r.source.display()
                )?,
                DamageStatus::Unhealed => outln!(
                    "manifest {} of {}: ingesting {} failed: {}",
                    r.key,
                    r.model,
                    r.source.display(),
                    r.error.as_deref().unwrap_or("unknown error")
                )?,
            }
        }
        for m in &report.damaged_manifests {
            if report
                .rebuilt_manifests
                .iter()
                .any(|r| r.key == m.key && r.status == DamageStatus::Healable)
            {
                continue;
            }
            outln!(
                "DAMAGED manifest {} of model {}: {} (`haagenti repair --from` its original files, `haagenti rm --model {}` or `haagenti ingest --replace --model {} PATH`)",
                m.key,
                m.model,
                m.error,
                m.model,
                m.model
            )?;
        }
        let done = if args.dry_run { "found" } else { "removed" };
        for key in &report.damaged_segments {
            outln!("DAMAGED index segment {key}")?;
        }
        if report.index_rebuilt {
            outln!("similarity index rebuilt from the fragments")?;
        }
        for key in &report.damaged_locks {
            outln!("damaged lock object {key}: {done}")?;
        }
        if !report.stale_temporaries.is_empty() {
            outln!(
                "{} temporary object(s) older than {} s: {done}",
                report.stale_temporaries.len(),
                args.grace
            )?;
        }
        if report.damaged.is_empty()
            && report.damaged_manifests.is_empty()
            && report.rebuilt_manifests.is_empty()
            && report.damaged_segments.is_empty()
        {
            outln!("no damage found")?;
        } else {
            outln!(
                "{} damaged object(s): {} healed, {} not",
                report.damaged.len(),
                report.healed,
                report.unhealed
            )?;
        }
    }
    if report.still_damaged() {
        let segments = if report.index_rebuilt {
            0
        } else {
            report.damaged_segments.len()
        };
        bail!(
            "{} damaged object(s), {} unreadable manifest(s) and {segments} damaged index segment(s) remain",
            report.unhealed,
            report.damaged_manifests.len()
        );
    }
    Ok(())
}
