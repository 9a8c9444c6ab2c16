//! The benchmark corpus: a model family from `haagenti_testkit::synth`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use haagenti_testkit::synth::{Family, FamilySpec, generate_family};

use crate::util;

/// Writes a fresh family of about `total_bytes` under `dir` (replacing what was there).
/// Always regenerated: it is deterministic and cheap, and a stale corpus from an older
/// generator would silently change the numbers.
pub fn generate(dir: &Path, seed: u64, total_bytes: u64) -> Result<Family> {
    util::remove_dir_if_exists(dir)?;
    let started = Instant::now();
    let family = generate_family(dir, &FamilySpec::for_total_bytes(seed, total_bytes))
        .with_context(|| format!("generate corpus in {}", dir.display()))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "generated {} in {} models in {secs:.1} s ({}/s)",
        util::human(family.total_bytes()),
        family.models.len(),
        util::human((family.total_bytes() as f64 / secs.max(1e-9)) as u64)
    );
    Ok(family)
}
