//! `similar`, `compare` and `reindex`: how models relate, and the index behind it.

use anyhow::{Context, Result, bail};
use haagenti_core::{ByteCount, FragmentLibrary, ModelSavings, Relation};

use crate::commands::{human, human_signed};

pub async fn similar(
    lib: &FragmentLibrary,
    model: &str,
    tensor: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<()> {
    let report = lib
        .similar_tensors(model, tensor, limit)
        .await
        .with_context(|| format!("finding tensors similar to model {model:?}"))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
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

pub async fn compare(lib: &FragmentLibrary, models: &[String], json: bool) -> Result<()> {
    let [a, b] = models else {
        bail!(
            "compare needs exactly two --model options (got {})",
            models.len()
        );
    };
    let report = lib
        .compare_models(a, b)
        .await
        .with_context(|| format!("comparing models {a:?} and {b:?}"))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
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
    row("unique", &r.unique)?;
    row("total", &r.total)
}

pub async fn reindex(lib: &FragmentLibrary, json: bool) -> Result<()> {
    let report = lib
        .rebuild_index()
        .await
        .context("rebuilding the similarity index")?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
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

/// The savings lines of `show`.
pub fn print_savings(s: &ModelSavings) -> std::io::Result<()> {
    let saved = s.savings.exact_dedup_bytes as i64
        + s.savings.delta_bytes
        + s.savings.cast_bytes as i64
        + s.savings.compression_bytes
        + s.savings.lossy_bytes as i64;
    outln!(
        "  savings: {} of {} fragment bytes",
        human_signed(saved),
        human(s.fragments.bytes)
    )?;
    outln!(
        "    exact        {} ({} stored by models ingested earlier, {} repeated in this model)",
        human(s.savings.exact_dedup_bytes),
        human(s.shared.bytes),
        human(s.repeated.bytes)
    )?;
    outln!(
        "    delta        {} ({} fragments, {} stored as {})",
        human_signed(s.savings.delta_bytes),
        s.delta.fragments,
        human(s.delta.bytes),
        human(s.delta.stored_bytes)
    )?;
    outln!(
        "    cast         {} ({} fragments, {} rebuilt from f32 sources)",
        human(s.savings.cast_bytes),
        s.cast.fragments,
        human(s.cast.bytes)
    )?;
    outln!(
        "    compression  {} ({} standalone fragments, {} stored as {})",
        human_signed(s.savings.compression_bytes),
        s.standalone.fragments,
        human(s.standalone.bytes),
        human(s.standalone.stored_bytes)
    )?;
    if s.lossy.fragments > 0 {
        outln!(
            "    lossy        {} ({} fragments replaced by similar stored ones)",
            human(s.savings.lossy_bytes),
            s.lossy.fragments
        )?;
    }
    if s.missing.fragments > 0 {
        outln!(
            "    MISSING      {} ({} referenced fragments are not stored; run `haagenti verify`)",
            human(s.missing.bytes),
            s.missing.fragments
        )?;
    }
    Ok(())
}
