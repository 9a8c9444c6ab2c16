//! `haagenti compare`: how the bytes of two models relate.

use anyhow::{Context, Result, bail};
use haagenti_core::{ByteCount, Relation};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::render::{human, print_json, warn_all};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Give it twice: --model A --model B.
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let (models, json) = (args.models.as_slice(), args.json);
    let [a, b] = models else {
        bail!(
            "compare needs exactly two --model options (got {})",
            models.len()
        );
    };
    let lib = location.open(OpenOptions::default()).await?;
    let report = lib
        .compare_models(a, b)
        .await
        .with_context(|| format!("comparing models {a:?} and {b:?}"))?;
    warn_all(&report.warnings);
    if json {
        return print_json(&report);
    }
    print_relation(&report.b_against_a)?;
    print_relation(&report.a_against_b)?;
    Ok(())
}

fn print_relation(r: &Relation) -> std::io::Result<()> {
    outln!(
        "{} against {}: {:>9} {:>12} {:>7}",
        r.model,
        r.other,
        "fragments",
        "bytes",
        "share"
    )?;
    let pad = r.model.len() + r.other.len() + 9;
    let row = |label: &str, c: &ByteCount| {
        let share = if r.total.bytes == 0 {
            0.0
        } else {
            100.0 * c.bytes as f64 / r.total.bytes as f64
        };
        outln!(
            "  {label:<w$} {:>9} {:>12} {share:>6.1}%",
            c.fragments,
            human(c.bytes),
            w = pad - 1
        )
    };
    row("identical", &r.identical)?;
    row("delta-coded", &r.delta)?;
    row("cast-derived", &r.cast)?;
    if r.quant.fragments > 0 {
        row("quant-derived", &r.quant)?;
    }
    row("unique", &r.unique)?;
    row("total", &r.total)
}
