//! `haagenti similar`: for each tensor of a model, the most similar tensors elsewhere.

use anyhow::{Context, Result, bail};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::render::{print_json, warn_all};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model whose tensors are looked up.
    #[arg(long)]
    model: String,
    /// Only this tensor (every file of the model is searched for it).
    #[arg(long)]
    tensor: Option<String>,
    /// Matches listed per tensor.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let (model, tensor, limit, json) = (
        args.model.as_str(),
        args.tensor.as_deref(),
        args.limit as usize,
        args.json,
    );
    let report = lib
        .similar_tensors(model, tensor, limit)
        .await
        .with_context(|| format!("finding tensors similar to model {model:?}"))?;
    warn_all(&report.warnings);
    if json {
        print_json(&report)?;
    } else {
        print_report(&report)?;
    }
    // Every intact model was searched; each one left out is named once.
    if !report.damaged.is_empty() {
        for d in &report.damaged {
            eprintln!("DAMAGED: {}: {}", d.model, d.error);
        }
        let names: Vec<&str> = report.damaged.iter().map(|d| d.model.as_str()).collect();
        bail!(
            "{} model(s) with an unreadable manifest were not searched: {}",
            names.len(),
            names.join(", ")
        );
    }
    Ok(())
}

fn print_report(report: &haagenti_fragments::SimilarTensors) -> Result<()> {
    outln!(
        "model {}: most similar tensors elsewhere in the library (estimated cosine)",
        report.model
    )?;
    for t in &report.tensors {
        outln!("  {} ({}, {} fragments)", t.tensor, t.dtype, t.fragments)?;
        if t.unsigned_fragments > 0 {
            outln!(
                "      {} of {} fragments have no signature and are not compared",
                t.unsigned_fragments,
                t.fragments
            )?;
        }
        if t.matches.is_empty() {
            outln!("      no similar tensor found")?;
            continue;
        }
        let model_w = t.matches.iter().map(|m| m.model.len()).max().unwrap_or(0);
        let tensor_w = t.matches.iter().map(|m| m.tensor.len()).max().unwrap_or(0);
        for m in &t.matches {
            let identical = if m.identical_fragments > 0 {
                format!(
                    ", {}/{} fragments identical",
                    m.identical_fragments, t.fragments
                )
            } else {
                String::new()
            };
            outln!(
                "      {:>6.4}  {:<model_w$}  {:<tensor_w$}  ({}{identical})",
                m.cosine,
                m.model,
                m.tensor,
                m.dtype
            )?;
        }
    }
    Ok(())
}
