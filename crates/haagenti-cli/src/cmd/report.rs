//! `haagenti report`: the family map, one self-contained HTML page.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::render::{human, print_json, warn_all};
use haagenti_cli::report::{ReportData, render};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the page (default report.html; with --json, only if given).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Show only these models (repeatable); the totals stay the library's.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Print the report's data as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let only = (!args.models.is_empty()).then_some(args.models.as_slice());
    let data = ReportData::collect(&lib, only).await?;
    warn_all(&data.family.warnings);
    let out = match (&args.out, args.json) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => Some(PathBuf::from("report.html")),
        (None, true) => None,
    };
    if let Some(path) = &out {
        let page = render(&data);
        std::fs::write(path, &page).with_context(|| format!("writing {}", path.display()))?;
        if !args.json {
            outln!(
                "wrote {} ({}, {} model{}): open it in a browser",
                path.display(),
                human(page.len() as u64),
                data.family.models.len(),
                if data.family.models.len() == 1 {
                    ""
                } else {
                    "s"
                }
            )?;
        }
    }
    if args.json {
        print_json(&data)?;
    }
    // Like `stats`: the page covers the intact models and names the damaged ones.
    if !data.family.damaged.is_empty() {
        let names: Vec<&str> = data
            .family
            .damaged
            .iter()
            .map(|d| d.model.as_str())
            .collect();
        bail!(
            "{} model(s) with an unreadable manifest, left out of the report: {}",
            names.len(),
            names.join(", ")
        );
    }
    Ok(())
}
