//! The Python environment of the acceptance tests: the real `safetensors`,
//! `huggingface_hub` and `gguf` packages (and what they need), pinned in
//! `scripts/test-requirements.txt` and installed into `target/py-venv`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

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
