//! `haagenti list`: the models in the library.

use anyhow::Result;
use haagenti_fragments::OpenOptions;
use serde_json::json;

use crate::location::Location;
use crate::render::{human, print_json};

pub use crate::render::JsonOnly as Args;

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    let mut rows = Vec::new();
    for name in lib.models().await? {
        let m = lib.manifest(&name).await?;
        rows.push(json!({
            "model": name,
            "files": m.files.len(),
            "tensors": m.files.iter().map(|f| f.tensors().len()).sum::<usize>(),
            "logical_bytes": m.logical_bytes(),
            "created_unix_ms": m.created_unix_ms,
            "lossy": m.is_lossy(),
        }));
    }
    if args.json {
        print_json(&json!({ "models": rows }))?;
    } else if rows.is_empty() {
        outln!("no models in {}", lib.store().location())?;
    } else {
        for r in &rows {
            outln!(
                "{:<32} {:>4} files {:>6} tensors {:>10}",
                r["model"].as_str().unwrap_or_default(),
                r["files"],
                r["tensors"],
                human(r["logical_bytes"].as_u64().unwrap_or(0))
            )?;
        }
    }
    Ok(())
}
