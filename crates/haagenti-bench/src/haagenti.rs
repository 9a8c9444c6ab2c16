//! haagenti on the corpus, through the library API. Every ingest and export runs in a
//! child process (this binary re-invoked as `child ingest|export`), so its time and peak
//! RSS (`VmHWM`, the kernel's accounting) belong to that phase alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use haagenti_core::synth::{Family, FamilyModel};
use haagenti_core::{CodecRegistry, FragmentLibrary, IngestOptions, LibraryConfig};
use haagenti_store_fs::FsStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::report::SystemResult;
use crate::util;

/// One model's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ModelResult {
    pub name: String,
    pub kind: String,
    pub logical_bytes: u64,
    /// Bytes this model's ingest added to the store (new fragments plus its manifest).
    pub stored_bytes_added: u64,
    pub ingest_secs: f64,
    pub export_secs: f64,
    pub peak_rss_ingest_bytes: Option<u64>,
    pub peak_rss_export_bytes: Option<u64>,
    /// Every exported file equals its source, byte for byte.
    pub identical: bool,
    /// The library's own `IngestReport`.
    pub ingest_report: Value,
}

/// haagenti's part of a run.
#[derive(Debug)]
pub struct HaagentiRun {
    pub summary: SystemResult,
    pub models: Vec<ModelResult>,
    pub stats: Option<Value>,
}

impl HaagentiRun {
    /// Fails unless every exported file was byte-identical to its source.
    pub fn check(&self) -> Result<()> {
        let bad: Vec<&str> = self
            .models
            .iter()
            .filter(|m| !m.identical)
            .map(|m| m.name.as_str())
            .collect();
        if !bad.is_empty() {
            bail!(
                "haagenti exported files that differ from their sources: {}",
                bad.join(", ")
            );
        }
        Ok(())
    }
}

/// What a child prints (one JSON line on stdout).
#[derive(Debug, Serialize, Deserialize)]
struct ChildOutput {
    /// Seconds the library call took inside the child.
    secs: f64,
    peak_rss_bytes: Option<u64>,
    report: Value,
}

/// The codecs haagenti stores with.
// TODO(issue 4): switch to `haagenti_codec::default_registry()` once the codec crate
// exports it; until then fragments are stored raw and the ratio shows dedup alone.
fn codecs() -> CodecRegistry {
    CodecRegistry::default()
}

fn open_library(dir: &Path) -> Result<FragmentLibrary> {
    let store = FsStore::open(dir).with_context(|| format!("open library {}", dir.display()))?;
    Ok(FragmentLibrary::new(
        Arc::new(store),
        codecs(),
        LibraryConfig::default(),
    )?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `child ingest LIBRARY NAME PATH` or `child export LIBRARY NAME OUT_DIR`.
pub fn child(args: &[String]) -> Result<()> {
    let [op, lib, name, path] = args else {
        bail!("usage: haagenti-bench child ingest|export LIBRARY NAME PATH");
    };
    let library = open_library(Path::new(lib))?;
    let rt = runtime()?;
    let started = Instant::now();
    let report = match op.as_str() {
        "ingest" => serde_json::to_value(
            rt.block_on(library.ingest(name, Path::new(path), IngestOptions::default()))
                .with_context(|| format!("ingest {name} from {path}"))?,
        )?,
        "export" => serde_json::to_value(
            rt.block_on(library.export(name, Path::new(path), None))
                .with_context(|| format!("export {name} to {path}"))?,
        )?,
        other => bail!("unknown child operation {other:?}"),
    };
    let out = ChildOutput {
        secs: started.elapsed().as_secs_f64(),
        peak_rss_bytes: util::peak_rss_bytes(),
        report,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn run_child(op: &str, lib: &Path, name: &str, path: &Path) -> Result<ChildOutput> {
    let exe = std::env::current_exe().context("locate haagenti-bench")?;
    let out = Command::new(exe)
        .arg("child")
        .arg(op)
        .arg(lib)
        .arg(name)
        .arg(path)
        .output()
        .with_context(|| format!("run child {op} {name}"))?;
    if !out.status.success() {
        bail!(
            "child {op} {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("child {op} {name} printed {line:?}"))
}

/// Where the export of `model` under `out` puts each of its source files.
fn exported_pairs(model: &FamilyModel, out: &Path) -> Vec<(PathBuf, PathBuf)> {
    if model.path.is_dir() {
        model
            .files
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    out.join(f.strip_prefix(&model.path).unwrap_or(f)),
                )
            })
            .collect()
    } else {
        let file_name = model
            .path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        vec![(model.path.clone(), out.join(file_name))]
    }
}

/// Ingests every model of the family (in order) into a fresh library, then exports and
/// compares each one.
pub fn run(family: &Family, work: &Path) -> Result<HaagentiRun> {
    let lib = work.join("haagenti-library");
    let export_root = work.join("haagenti-export");
    let mut models = Vec::new();
    for m in &family.models {
        let child = run_child("ingest", &lib, &m.name, &m.path)?;
        let added = ["stored_bytes", "manifest_bytes"]
            .iter()
            .filter_map(|k| child.report.get(*k).and_then(Value::as_u64))
            .sum();
        models.push(ModelResult {
            name: m.name.clone(),
            kind: m.kind.to_string(),
            logical_bytes: m.bytes,
            stored_bytes_added: added,
            ingest_secs: child.secs,
            export_secs: 0.0,
            peak_rss_ingest_bytes: child.peak_rss_bytes,
            peak_rss_export_bytes: None,
            identical: false,
            ingest_report: child.report,
        });
    }
    for (m, result) in family.models.iter().zip(&mut models) {
        let out = export_root.join(&m.name);
        let child = run_child("export", &lib, &m.name, &out)?;
        result.export_secs = child.secs;
        result.peak_rss_export_bytes = child.peak_rss_bytes;
        let pairs = exported_pairs(m, &out);
        let mut identical = util::files_under(&out)?.len() == pairs.len();
        for (src, exported) in &pairs {
            identical &= util::same_bytes(src, exported).unwrap_or(false);
        }
        result.identical = identical;
        util::remove_dir_if_exists(&out)?;
    }
    let stats = runtime()?.block_on(open_library(&lib)?.stats())?;
    let stats_json = serde_json::to_value(&stats)?;
    let summary = SystemResult {
        stored_bytes: Some(stats.stored_bytes),
        ingest_secs: Some(models.iter().map(|m| m.ingest_secs).sum()),
        restore_secs: Some(models.iter().map(|m| m.export_secs).sum()),
        peak_rss_ingest_bytes: models.iter().filter_map(|m| m.peak_rss_ingest_bytes).max(),
        peak_rss_restore_bytes: models.iter().filter_map(|m| m.peak_rss_export_bytes).max(),
        verified: Some(models.iter().all(|m| m.identical)),
        note: format!(
            "library API, fs store (fsync on), {} codecs; one ingest per model, restore = export of every model",
            codecs().encoder().name()
        ),
        ..SystemResult::new("haagenti".into(), family.total_bytes())
    };
    util::remove_dir_if_exists(&lib)?;
    Ok(HaagentiRun {
        summary,
        models,
        stats: Some(stats_json),
    })
}
