//! The Python package `haagenti` next to `safetensors`, in one run: time to the first
//! tensor and to every tensor of a bf16 model (`haagenti`'s `safe_open` over the library
//! against `safetensors.safe_open` on the exported file, both warm: library objects and
//! file in the page cache), and the resident memory of a base and its fine-tune loaded
//! together through one `Library` against the two exported files loaded with
//! `safetensors`.
//!
//! The measurements are Python processes of the test venv (`HAAGENTI_TEST_PYTHON`),
//! where `cargo xtask bench` builds the package (`HAAGENTI_PY_PACKAGE=1`); the script is
//! `py/python_bench.py`. Without them the section says it was skipped and why.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use haagenti_core::Dtype;
use haagenti_testkit::synth::generate_model;
use serde::{Deserialize, Serialize};

use crate::util;

/// Loading every tensor through haagenti may take at most this many times safetensors'.
const TARGET_LOAD_RATIO: f64 = 1.5;
/// Both models through one Library may hold at most this many times their distinct bytes.
const TARGET_RSS_RATIO: f64 = 1.1;
/// Runs of each timing; medians are reported.
const RUNS: usize = 5;

const SCRIPT: &str = include_str!("py/python_bench.py");

#[derive(Clone, Debug, Default, Serialize)]
pub struct PythonBench {
    /// Why the section did not run (`None` when it ran).
    pub skipped: Option<String>,
    /// Tensor bytes of the base model.
    pub model_bytes: u64,
    pub tensors: u64,
    /// Base plus the fine-tune's changed tensors.
    pub distinct_bytes: u64,
    pub runs: usize,
    pub haagenti_first_secs: f64,
    pub safetensors_first_secs: f64,
    pub haagenti_all_secs: f64,
    pub safetensors_all_secs: f64,
    /// `haagenti.load_file` against `safetensors.numpy.load_file`.
    pub haagenti_load_file_secs: f64,
    pub safetensors_load_file_secs: f64,
    /// Resident memory added by loading both models (VmRSS after minus before).
    pub haagenti_both_rss_bytes: u64,
    /// The same through `haagenti.load_file` (two tensors in flight at once).
    pub haagenti_load_file_rss_bytes: u64,
    pub safetensors_both_rss_bytes: u64,
    /// Every tensor read through haagenti equalled safetensors' of the export.
    pub identical: bool,
}

impl PythonBench {
    fn skipped(why: String) -> PythonBench {
        PythonBench {
            skipped: Some(why),
            identical: true,
            ..PythonBench::default()
        }
    }

    /// Fails when a tensor read through the package differed from the exported file's.
    pub fn check(&self) -> Result<()> {
        if !self.identical {
            bail!("a tensor read through the Python package differs from safetensors'");
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Setup {
    tensors: u64,
    base_bytes: u64,
    distinct_bytes: u64,
    identical: bool,
}

#[derive(Deserialize)]
struct Timing {
    first_secs: f64,
    all_secs: f64,
    load_file_secs: f64,
    bytes: u64,
}

#[derive(Deserialize)]
struct Rss {
    rss_bytes: i64,
    bytes: u64,
}

/// The venv's interpreter with the package importable, or why there is none.
fn prerequisites() -> std::result::Result<PathBuf, String> {
    let python = std::env::var_os("HAAGENTI_TEST_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .ok_or("HAAGENTI_TEST_PYTHON is not set (run `cargo xtask bench`)")?;
    if std::env::var_os("HAAGENTI_PY_PACKAGE").is_none_or(|v| v != "1") {
        return Err(
            "the Python package was not built (HAAGENTI_SKIP_PYTHON=1, or run \
                    `cargo xtask bench`)"
                .into(),
        );
    }
    let ok = Command::new(&python)
        .args(["-c", "import haagenti, ml_dtypes, safetensors"])
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    if !ok.status.success() {
        return Err(format!(
            "the test venv cannot import haagenti: {}",
            String::from_utf8_lossy(&ok.stderr).trim()
        ));
    }
    Ok(python)
}

/// `model_bytes`: the base model's size (400 MB in a full run).
pub fn run(work: &Path, model_bytes: u64, seed: u64) -> Result<PythonBench> {
    let python = match prerequisites() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("  python section skipped: {why}");
            return Ok(PythonBench::skipped(why));
        }
    };
    let dir = work.join("python");
    util::remove_dir_if_exists(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, &python, model_bytes, seed);
    util::discard(&dir)?;
    result
}

fn measure(dir: &Path, python: &Path, model_bytes: u64, seed: u64) -> Result<PythonBench> {
    let script = dir.join("python_bench.py");
    std::fs::write(&script, SCRIPT)?;
    let base = dir.join("base.safetensors");
    generate_model(&base, model_bytes, seed, Dtype::BF16)?;
    let (fine, lib, out) = (
        dir.join("fine.safetensors"),
        dir.join("lib"),
        dir.join("out"),
    );
    let setup: Setup = py(python, &script, &[&"setup", &base, &fine, &lib, &out])?;
    // The source files are not needed any more: the exports are what safetensors reads.
    std::fs::remove_file(&base)?;
    std::fs::remove_file(&fine)?;
    let exported = |name: &str| out.join(name).join(format!("{name}.safetensors"));
    let (base_export, fine_export) = (exported("base"), exported("fine"));
    let mut identical = setup.identical;

    let (mut hf, mut sf, mut ha, mut sa) = (vec![], vec![], vec![], vec![]);
    let (mut h_load, mut s_load) = (vec![], vec![]);
    // One untimed run of each first: both read from the page cache after it.
    for run in 0..=RUNS {
        eprintln!("  python run {run}/{RUNS} ...");
        let h: Timing = py(python, &script, &[&"time", &"haagenti", &lib, &"base"])?;
        let s: Timing = py(python, &script, &[&"time", &"safetensors", &base_export])?;
        identical &= h.bytes == setup.base_bytes && s.bytes == setup.base_bytes;
        if run > 0 {
            hf.push(h.first_secs);
            ha.push(h.all_secs);
            sf.push(s.first_secs);
            sa.push(s.all_secs);
            h_load.push(h.load_file_secs);
            s_load.push(s.load_file_secs);
        }
    }
    let h: Rss = py(
        python,
        &script,
        &[&"rss", &"haagenti", &lib, &"base", &"fine"],
    )?;
    let hl: Rss = py(
        python,
        &script,
        &[&"rss", &"haagenti-load-file", &lib, &"base", &"fine"],
    )?;
    let s: Rss = py(
        python,
        &script,
        &[&"rss", &"safetensors", &base_export, &fine_export],
    )?;
    identical &= h.bytes == s.bytes && hl.bytes == s.bytes;
    Ok(PythonBench {
        skipped: None,
        model_bytes: setup.base_bytes,
        tensors: setup.tensors,
        distinct_bytes: setup.distinct_bytes,
        runs: RUNS,
        haagenti_first_secs: util::median(hf),
        safetensors_first_secs: util::median(sf),
        haagenti_all_secs: util::median(ha),
        safetensors_all_secs: util::median(sa),
        haagenti_load_file_secs: util::median(h_load),
        safetensors_load_file_secs: util::median(s_load),
        haagenti_both_rss_bytes: u64::try_from(h.rss_bytes).unwrap_or(0),
        haagenti_load_file_rss_bytes: u64::try_from(hl.rss_bytes).unwrap_or(0),
        safetensors_both_rss_bytes: u64::try_from(s.rss_bytes).unwrap_or(0),
        identical,
    })
}

/// Runs the bench script with `args` and parses the JSON of its last stdout line.
fn py<T: serde::de::DeserializeOwned>(
    python: &Path,
    script: &Path,
    args: &[&dyn AsRef<std::ffi::OsStr>],
) -> Result<T> {
    let out = Command::new(python)
        .arg(script)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .context("running python")?;
    let what = args
        .iter()
        .take(2)
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if !out.status.success() {
        bail!(
            "python bench {what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("python bench {what} printed {line:?}"))
}

pub fn markdown(b: &PythonBench) -> String {
    let mut out = String::from("### The Python package `haagenti` next to `safetensors`\n\n");
    if let Some(why) = &b.skipped {
        out.push_str(&format!("Skipped: {why}.\n"));
        return out;
    }
    let load_ratio = b.haagenti_all_secs / b.safetensors_all_secs.max(f64::EPSILON);
    let rss_ratio = b.haagenti_both_rss_bytes as f64 / (b.distinct_bytes.max(1)) as f64;
    out.push_str(&format!(
        "One {} bf16 model ({} tensors), medians of {} warm runs (library objects and the \
         exported file in the page cache; a new `Library` or file handle each time, \
         `cache_mb=0`):\n\n\
         | | `haagenti` `safe_open` | `safetensors.safe_open` on the export |\n\
         |---|---|---|\n\
         | open, first tensor | {:.3} s | {:.3} s |\n\
         | open, every tensor (target <= {TARGET_LOAD_RATIO}x) | {:.3} s ({:.2}x) {} | {:.3} s |\n\
         | `load_file` | {:.3} s ({:.2}x) | {:.3} s |\n\n",
        util::human(b.model_bytes),
        b.tensors,
        b.runs,
        b.haagenti_first_secs,
        b.safetensors_first_secs,
        b.haagenti_all_secs,
        load_ratio,
        util::mark(load_ratio <= TARGET_LOAD_RATIO),
        b.safetensors_all_secs,
        b.haagenti_load_file_secs,
        b.haagenti_load_file_secs / b.safetensors_load_file_secs.max(f64::EPSILON),
        b.safetensors_load_file_secs,
    ));
    out.push_str(&format!(
        "Base and fine-tune (every 4th tensor changed) loaded together: distinct tensor \
         bytes {}; resident memory added: through one `Library`'s `safe_open` **{}** \
         ({:.2}x the distinct bytes, target <= {TARGET_RSS_RATIO}x) {}, through \
         `haagenti.load_file` {} ({:.2}x); with `safetensors` {} (both files).\n",
        util::human(b.distinct_bytes),
        util::human(b.haagenti_both_rss_bytes),
        rss_ratio,
        util::mark(rss_ratio <= TARGET_RSS_RATIO),
        util::human(b.haagenti_load_file_rss_bytes),
        b.haagenti_load_file_rss_bytes as f64 / (b.distinct_bytes.max(1)) as f64,
        util::human(b.safetensors_both_rss_bytes),
    ));
    out
}
