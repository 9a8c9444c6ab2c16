//! `haagenti list`: the models in the library.

use anyhow::{Result, bail};
use haagenti_fragments::OpenOptions;
use serde_json::json;

use crate::location::Location;
use crate::render::{human, print_json};

pub use crate::render::JsonOnly as Args;

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    // A model whose manifest cannot be read is listed and marked, never hides the others.
    let (intact, damaged) = lib.manifests_report().await?;
    let mut rows = Vec::new();
    for m in &intact {
        rows.push(json!({
            "model": m.name,
            "files": m.files.len(),
            "tensors": m.files.iter().map(|f| f.tensors().len()).sum::<usize>(),
            "logical_bytes": m.logical_bytes(),
            "created_unix_ms": m.created_unix_ms,
            "lossy": m.is_lossy(),
        }));
    }
    for d in &damaged {
        rows.push(json!({ "model": d.model, "damaged": d.error }));
    }
    rows.sort_by(|a, b| a["model"].as_str().cmp(&b["model"].as_str()));
    if args.json {
        print_json(&json!({ "models": rows }))?;
    } else if rows.is_empty() {
        outln!("no models in {}", lib.store().location())?;
    } else {
        for r in &rows {
            if let Some(error) = r["damaged"].as_str() {
                outln!(
                    "{:<32} (manifest damaged: {error})",
                    r["model"].as_str().unwrap_or_default()
                )?;
                continue;
            }
            outln!(
                "{:<32} {:>4} files {:>6} tensors {:>10}",
                r["model"].as_str().unwrap_or_default(),
                r["files"],
                r["tensors"],
                human(r["logical_bytes"].as_u64().unwrap_or(0))
            )?;
        }
    }
    if !damaged.is_empty() {
        let names: Vec<&str> = damaged.iter().map(|d| d.model.as_str()).collect();
        bail!(
            "{} model(s) with an unreadable manifest: {}",
            damaged.len(),
            names.join(", ")
        );
    }
    Ok(())
}
