//! The Python environment of the acceptance tests: the real `safetensors`,
//! `huggingface_hub` and `gguf` packages (and what they need), pinned in
//! `scripts/test-requirements.txt` and installed into `target/py-venv`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::moto::run;

const REQUIREMENTS: &str = "scripts/test-requirements.txt";

/// Creates or updates `target/py-venv` so it holds exactly the pinned requirements, and
/// returns its interpreter. Reinstalls only when the requirements file changed since the
/// last install (a copy of it is kept in the venv as the stamp).
pub fn test_python(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join("py-venv");
    let python = venv.join("bin").join("python");
    let requirements = root.join(REQUIREMENTS);
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("haagenti-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    println!(
        "installing the Python test clients into {} (from {REQUIREMENTS})",
        venv.display()
    );
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("creating the test virtual environment (is python3 with venv installed?)")?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))
    .context("installing the Python test clients")?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

/// The variable that skips the Python package's build, suite and bench section.
const SKIP_PYTHON: &str = "HAAGENTI_SKIP_PYTHON";

/// Whether the Python package is skipped (`HAAGENTI_SKIP_PYTHON=1`); says so when it is.
pub fn package_skipped() -> bool {
    let skipped = std::env::var(SKIP_PYTHON).is_ok_and(|v| v == "1");
    if skipped {
        println!(
            "SKIPPED: the Python package haagenti (build, pytest suite, bench section): {SKIP_PYTHON}=1"
        );
    }
    skipped
}

/// A tool of the test venv, or an error saying how to get it.
fn venv_tool(python: &Path, tool: &str) -> Result<PathBuf> {
    let path = python.with_file_name(tool);
    if !path.exists() {
        bail!(
            "{tool} is missing from the test venv ({} is absent): install it with `{} -m pip \
             install -r {REQUIREMENTS}` (or set {SKIP_PYTHON}=1 to skip the Python package)",
            path.display(),
            python.display()
        );
    }
    Ok(path)
}

/// Builds `crates/haagenti-py` into the test venv with `maturin develop --release` (an
/// editable install: the extension lands in `crates/haagenti-py/python/haagenti/`), in
/// the workspace's target directory. The first build compiles the package's dependency
/// tree with its own features (the CLI's release build turns on others), 3 to 6 minutes
/// on 2 cores; later ones only what changed.
pub fn build_package(python: &Path) -> Result<()> {
    let maturin = venv_tool(python, "maturin")?;
    let venv = python
        .parent()
        .and_then(Path::parent)
        .context("the test interpreter is not in a venv")?;
    let started = std::time::Instant::now();
    run(Command::new(maturin)
        .args([
            "develop",
            "--release",
            "--quiet",
            "-m",
            "crates/haagenti-py/Cargo.toml",
        ])
        .env("VIRTUAL_ENV", venv))
    .context("building the Python package haagenti into the test venv")?;
    println!("  ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs the Python package's pytest suite with `env` (the S3 test server's variables);
/// pytest's last line counts the tests passed.
pub fn run_pytest(python: &Path, env: &[(&str, &str)]) -> Result<()> {
    venv_tool(python, "pytest")?;
    let started = std::time::Instant::now();
    println!("$ python -m pytest crates/haagenti-py/tests");
    let status = Command::new(python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "crates/haagenti-py/tests",
        ])
        .envs(env.iter().copied())
        .status()
        .context("running pytest")?;
    if !status.success() {
        bail!("the Python package's pytest suite failed ({status})");
    }
    println!(
        "  Python package suite passed ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
