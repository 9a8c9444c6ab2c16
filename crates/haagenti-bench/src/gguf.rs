//! The GGUF section: a Llama-shaped quant set written by llama.cpp's own gguf-py (F16,
//! Q8_0, Q5_1, Q5_0, Q4_1, Q4_0; `crates/haagenti-cli/tests/py/gguf_quant_set.py`),
//! ingested F16 first by haagenti, next to per-file zstd -3 and restic on the same files:
//! stored ratio, ingest and restore MB/s, and what each file adds to the library.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use haagenti_testkit::synth::{Family, FamilyModel, FamilySpec, ModelKind};
use serde::Serialize;

use crate::system::SystemResult;
use crate::{baselines, haagenti, util};

/// The files of the set, in ingest order (F16 first).
const SET: [&str; 6] = ["F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"];

/// One file of the set.
#[derive(Clone, Debug, Serialize)]
pub struct GgufFile {
    pub name: String,
    pub bytes: u64,
    /// Bytes the file added to the haagenti library (fragments and manifest).
    pub added_bytes: u64,
}

/// The section's figures.
#[derive(Clone, Debug, Serialize)]
pub struct GgufBench {
    pub layers: u32,
    pub files: Vec<GgufFile>,
    pub systems: Vec<SystemResult>,
}

impl GgufBench {
    /// Every system that ran restored every file byte for byte.
    pub fn check(&self) -> Result<()> {
        match self.systems.iter().find(|s| s.verified == Some(false)) {
            Some(s) => bail!("{}: a restored GGUF file differs from its source", s.name),
            None => Ok(()),
        }
    }
}

/// Writes the quant set with the test interpreter (`HAAGENTI_TEST_PYTHON`, which
/// `cargo xtask bench` sets) and runs every system on it. `None` without an interpreter.
pub fn run(quick: bool, seed: u64, work: &Path) -> Result<Option<GgufBench>> {
    let Some(python) = std::env::var_os("HAAGENTI_TEST_PYTHON").map(PathBuf::from) else {
        eprintln!("  skipped: HAAGENTI_TEST_PYTHON is not set (cargo xtask bench sets it)");
        return Ok(None);
    };
    let layers: u32 = if quick { 4 } else { 16 };
    let dir = work.join("gguf-set");
    let script = util::workspace_root().join("crates/haagenti-cli/tests/py/gguf_quant_set.py");
    let status = Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .arg(layers.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    let mut models = Vec::new();
    for q in SET {
        let path = dir.join(format!("model-{q}.gguf"));
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        models.push(FamilyModel {
            name: format!("gguf-{q}"),
            kind: if q == "F16" {
                ModelKind::Parent
            } else {
                ModelKind::Cast
            },
            description: format!("{q} GGUF of the quant set"),
            path: path.clone(),
            files: vec![path],
            bytes,
            new_tensor_bytes: 0,
        });
    }
    let f16_bytes = models[0].bytes;
    let family = Family {
        dir: dir.clone(),
        spec: FamilySpec::new(seed, f16_bytes),
        models,
    };
    let run_dir = work.join("gguf-run");
    std::fs::create_dir_all(&run_dir)?;
    let haagenti_run = haagenti::run(&family, &run_dir)?;
    let files = family
        .models
        .iter()
        .zip(&haagenti_run.models)
        .map(|(m, r)| GgufFile {
            name: m.name.clone(),
            bytes: m.bytes,
            added_bytes: r.stored_bytes_added,
        })
        .collect();
    let mut systems = vec![haagenti_run.summary.clone()];
    systems.push(baselines::zstd(&family, &run_dir, 1)?);
    systems.push(baselines::restic(&family, &run_dir)?);
    util::remove_dir_if_exists(&run_dir)?;
    util::remove_dir_if_exists(&dir)?;
    Ok(Some(GgufBench {
        layers,
        files,
        systems,
    }))
}

/// The section of the report.
pub fn markdown(b: &GgufBench) -> String {
    let mut s = String::new();
    let total: u64 = b.files.iter().map(|f| f.bytes).sum();
    let _ = writeln!(
        s,
        "### GGUF quant set ({} layers, 32k-token tokenizer, {} in {} files, ingested F16 first)\n",
        b.layers,
        util::human(total),
        b.files.len()
    );
    let _ = writeln!(
        s,
        "| system | stored | ratio | ingest MB/s | restore MB/s | byte-identical |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
    for sys in &b.systems {
        if sys.status != "ok" {
            let _ = writeln!(
                s,
                "| {} | {} | | | | {} |",
                sys.name,
                sys.status,
                sys.reason.as_deref().unwrap_or("")
            );
            continue;
        }
        let rate = |secs: Option<f64>| {
            secs.map_or_else(
                || "–".to_string(),
                |t| format!("{:.0}", util::mb_per_s(sys.logical_bytes, t)),
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            sys.name,
            sys.stored_bytes.map_or_else(|| "–".into(), util::human),
            sys.ratio()
                .map_or_else(|| "–".into(), |x| format!("{x:.2}x")),
            rate(sys.ingest_secs),
            rate(sys.restore_secs),
            match sys.verified {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "–",
            }
        );
    }
    let _ = writeln!(s, "\n| file | size | haagenti adds | share |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for f in &b.files {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2}% |",
            f.name,
            util::human(f.bytes),
            util::human(f.added_bytes),
            100.0 * f.added_bytes as f64 / f.bytes.max(1) as f64
        );
    }
    s
}
