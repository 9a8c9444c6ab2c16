//! `haagenti demo`: the whole job on an embedded default, with nothing to download.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use haagenti_core::IngestOptions;
use haagenti_fragments::OpenOptions;
use haagenti_testkit::synth;
use serde_json::json;

use crate::render::{human, print_json, print_stats, speed};
use haagenti_cli::report::{ReportData, render};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Where to write the family map of the demo library (the rest of its output is
    /// temporary).
    #[arg(long, default_value = "haagenti-demo-report.html")]
    report: PathBuf,
}

/// Seed and size of the demo family: small enough to run in seconds on two cores.
const DEMO_SEED: u64 = 2026;
const DEMO_PARENT_BYTES: u64 = 24 << 20;

pub async fn run(args: Args) -> Result<()> {
    let json_out = args.json;
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let src = work.path().join("models");
    let lib_dir = work.path().join("library");
    let out_dir = work.path().join("exported");

    let say = |s: String| -> std::io::Result<()> {
        if !json_out {
            outln!("{s}")?;
        }
        Ok(())
    };
    let t = Instant::now();
    let family = {
        let src = src.clone();
        tokio::task::spawn_blocking(move || {
            synth::generate_family(&src, &synth::FamilySpec::new(DEMO_SEED, DEMO_PARENT_BYTES))
        })
        .await??
    };
    say(format!(
        "generated a model family of {} models ({}) in {:.1}s under {}",
        family.models.len(),
        human(family.total_bytes()),
        t.elapsed().as_secs_f64(),
        src.display()
    ))?;

    let lib_location = lib_dir
        .to_str()
        .context("the temporary directory's path is not UTF-8")?;
    let lib = haagenti_fragments::open(lib_location, OpenOptions::default()).await?;
    let mut rows = Vec::new();
    let t_all = Instant::now();
    for m in &family.models {
        let r = lib
            .ingest(&m.name, &m.path, IngestOptions::default())
            .await?;
        say(format!(
            "  ingest {:<18} {:>10} {:>12}   new {:>10} -> stored {:>10}   ({}: {})",
            m.name,
            human(m.bytes),
            speed(m.bytes, r.seconds),
            human(r.new_fragment_bytes),
            human(r.stored_bytes),
            m.kind,
            m.description
        ))?;
        rows.push(json!({ "model": m.name, "kind": m.kind.as_str(), "bytes": m.bytes, "ingest_seconds": r.seconds,
                          "new_fragment_bytes": r.new_fragment_bytes, "stored_bytes": r.stored_bytes }));
    }
    let ingest_s = t_all.elapsed().as_secs_f64();

    let t_export = Instant::now();
    for m in &family.models {
        let dest = out_dir.join(&m.name);
        lib.export(&m.name, &dest, None).await?;
        for file in &m.files {
            let rel = if m.is_dir() {
                file.strip_prefix(&m.path)?.to_path_buf()
            } else {
                file.file_name().context("file name")?.into()
            };
            let (a, b) = (std::fs::read(file)?, std::fs::read(dest.join(&rel))?);
            if a != b {
                bail!(
                    "model {} file {} is not bit-exact after export",
                    m.name,
                    rel.display()
                );
            }
        }
    }
    let export_s = t_export.elapsed().as_secs_f64();
    let verify = lib.verify(None, None).await?;
    if !verify.is_ok() {
        bail!("verification failed: {}", verify.problems.join("; "));
    }
    let stats = lib.stats().await?;
    let total = family.total_bytes();
    // The library is temporary: the page is what stays of it.
    let page = render(&ReportData::collect(&lib, None).await?);
    std::fs::write(&args.report, page)
        .with_context(|| format!("writing {}", args.report.display()))?;
    let report = std::path::absolute(&args.report).unwrap_or_else(|_| args.report.clone());
    if json_out {
        let doc = json!({
            "models": rows, "logical_bytes": stats.logical_bytes, "stored_bytes": stats.stored_bytes,
            "ratio": stats.ratio(),
            "ingest_mb_s": total as f64 / 1e6 / ingest_s, "export_mb_s": total as f64 / 1e6 / export_s,
            "bit_exact": true, "savings": stats.savings, "report": report,
        });
        return print_json(&doc);
    }
    outln!(
        "ingested {} in {:.2}s ({}); exported and compared every file bit-exact in {:.2}s ({})",
        human(total),
        ingest_s,
        speed(total, ingest_s),
        export_s,
        speed(total, export_s)
    )?;
    outln!(
        "verified {} files against their BLAKE3 hashes\n",
        verify.files
    )?;
    print_stats(&stats, &[], false)?;
    outln!("\nfamily map: {}", report.display())?;
    Ok(())
}
