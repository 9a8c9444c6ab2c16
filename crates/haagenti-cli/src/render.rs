//! Human units and the tables several commands print.

use anyhow::Result;
use haagenti_core::{HumanBytes, LibraryStats, LossyModel};
use serde_json::json;

/// The arguments of a command whose only option is `--json`.
#[derive(clap::Args, Debug)]
pub struct JsonOnly {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A size in binary units (see [`HumanBytes`]).
pub fn human(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

/// [`human`] with a sign, for savings that can be negative.
pub fn human_signed(bytes: i64) -> String {
    if bytes < 0 {
        format!("-{}", HumanBytes(bytes.unsigned_abs()))
    } else {
        human(bytes.unsigned_abs())
    }
}

/// A speed in binary units per second: `120.5 MiB/s`.
pub fn speed(bytes: u64, seconds: f64) -> String {
    let per_second = if seconds > 0.0 {
        (bytes as f64 / seconds) as u64
    } else {
        0
    };
    format!("{}/s", HumanBytes(per_second))
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Library totals, savings by kind, and the models ingested lossily (if any).
pub fn print_stats(stats: &LibraryStats, lossy: &[LossyModel], json: bool) -> Result<()> {
    let ratio = stats.ratio();
    if json {
        let mut doc = serde_json::to_value(stats)?;
        doc["ratio"] = json!(ratio);
        doc["lossy_models"] = serde_json::to_value(lossy)?;
        return print_json(&doc);
    }
    outln!("models         {}", stats.models)?;
    outln!("fragments      {}", stats.fragments)?;
    outln!("logical bytes  {}", human(stats.logical_bytes))?;
    outln!(
        "stored bytes   {} (fragments {}, manifests {}, indexes {})",
        human(stats.stored_bytes),
        human(stats.fragment_bytes),
        human(stats.manifest_bytes),
        human(stats.index_bytes)
    )?;
    outln!("ratio          {ratio:.2}x")?;
    outln!(
        "saved by exact dedup   {}",
        human(stats.savings.exact_dedup_bytes)
    )?;
    outln!(
        "saved by deltas        {}",
        human_signed(stats.savings.delta_bytes)
    )?;
    outln!("saved by casts         {}", human(stats.savings.cast_bytes))?;
    if stats.savings.quant_bytes > 0 {
        outln!(
            "saved by quant refs    {}",
            human(stats.savings.quant_bytes)
        )?;
    }
    outln!(
        "saved by compression   {}",
        human_signed(stats.savings.compression_bytes)
    )?;
    if stats.savings.lossy_bytes > 0 {
        outln!(
            "saved by lossy sharing {}",
            human(stats.savings.lossy_bytes)
        )?;
    }
    if !lossy.is_empty() {
        let list: Vec<String> = lossy
            .iter()
            .map(|m| {
                format!(
                    "{} (max relative L2 error {:.3e})",
                    m.model, m.max_rel_error
                )
            })
            .collect();
        outln!("LOSSY: {}", list.join(", "))?;
    }
    Ok(())
}

/// Prints the warnings of a report on stderr.
pub fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}
