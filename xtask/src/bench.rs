//! `cargo xtask bench` and `cargo xtask gen-corpus`: build `haagenti-bench` in release and
//! run it from the workspace root (it writes `target/bench/latest.json` and, for a full
//! run, `docs/benchmarks.md`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What the tests and the bench's mount section need besides the S3 server: the Python
/// clients (`HAAGENTI_TEST_PYTHON`), the release `haagenti` binary the bench mounts
/// with (`HAAGENTI_BENCH_CLI`), and the Python package `haagenti` built into the same
/// venv (`HAAGENTI_PY_PACKAGE=1`; not set when `HAAGENTI_SKIP_PYTHON=1` skips it).
pub fn prepare(root: &Path) -> Result<Vec<(&'static str, String)>> {
    let python = crate::python::test_python(root)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::cmd(
        &cargo,
        &["build", "--quiet", "--release", "-p", "haagenti-cli"],
        &[],
    )?;
    // Where cargo put it: CARGO_TARGET_DIR when set (relative to the workspace root).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"));
    let cli = target.join("release").join("haagenti");
    let mut env = vec![
        ("HAAGENTI_TEST_PYTHON", python.display().to_string()),
        ("HAAGENTI_BENCH_CLI", cli.display().to_string()),
    ];
    if !crate::python::package_skipped() {
        crate::python::build_package(&python)?;
        env.push((PY_PACKAGE, "1".to_string()));
    }
    Ok(env)
}

/// Set in the environment `prepare` returns when the Python package was built.
pub const PY_PACKAGE: &str = "HAAGENTI_PY_PACKAGE";

/// `cargo xtask bench [--quick] [--scale BYTES] [--seed N] [--out DIR]`.
/// `env` points the bench at a running S3 server (its S3 rows are skipped without one).
pub fn run(args: &[String], env: &[(&str, &str)]) -> Result<()> {
    bench_binary("run", args, env)
}

/// `cargo xtask gen-corpus DIR [--quick] [--scale BYTES] [--seed N]`.
pub fn gen_corpus(args: &[String]) -> Result<()> {
    if !args.iter().any(|a| !a.starts_with('-')) {
        bail!("usage: cargo xtask gen-corpus DIR [--quick] [--scale BYTES] [--seed N]");
    }
    bench_binary("gen-corpus", args, &[])
}

fn bench_binary(subcommand: &str, args: &[String], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "haagenti-bench",
            "--",
            subcommand,
        ])
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {cargo} run -p haagenti-bench"))?;
    if !status.success() {
        bail!("haagenti-bench {subcommand} failed ({status})");
    }
    Ok(())
}
