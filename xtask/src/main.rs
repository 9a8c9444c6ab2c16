//! Project automation: `cargo xtask test`, `cargo xtask bench`, `cargo xtask gen-corpus`,
//! `cargo xtask py`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod bench;
mod fuzz;
mod moto;
mod python;

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("test") => test(&root, &args[1..]),
        Some("bench") => {
            ensure_fusermount()?;
            let mut env = bench::prepare(&root)?;
            let server = moto::MotoServer::start(&root).context("starting the local S3 server")?;
            env.extend(server.env());
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            bench::run(&args[1..], &env)
        }
        Some("gen-corpus") => bench::gen_corpus(&args[1..]),
        Some("py") => python_package(&root),
        Some("fuzz") => fuzz::run(&root, &args[1..]),
        Some("help") | None => {
            println!("usage: cargo xtask <command>\n");
            println!(
                "  test [--no-lint]  fmt check, clippy -D warnings, docs, every test (installs the Python test\n                    clients into target/py-venv, builds the Python package haagenti into it\n                    and runs its pytest suite, starts a local S3 server; HAAGENTI_SKIP_PYTHON=1\n                    skips the Python package)"
            );
            println!(
                "  py                only the Python package: build it into target/py-venv, run its pytest\n                    suite (starts a local S3 server)"
            );
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?} (try `cargo xtask help`)"),
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest_dir
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

/// Runs a command, echoing it, and fails if it fails.
fn cmd(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    println!("$ {program} {}", args.join(" "));
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    println!("  ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    let lint = !args.iter().any(|a| a == "--no-lint");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if lint {
        cmd(&cargo, &["fmt", "--all", "--check"], &[])?;
        // Default features (what a downstream build sees), then every feature (the
        // codec and backend code the tests compile).
        for features in [None, Some("--all-features")] {
            let mut args = vec!["clippy", "--workspace", "--all-targets"];
            args.extend(features);
            args.extend(["--", "-D", "warnings"]);
            cmd(&cargo, &args, &[])?;
        }
        cmd(
            &cargo,
            &["doc", "--workspace", "--no-deps"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        )?;
    }
    ensure_fusermount()?;
    ensure_chromium()?;
    // Build first so the S3 server does not idle through compilation.
    cmd(
        &cargo,
        &["test", "--workspace", "--all-features", "--no-run"],
        &[],
    )?;
    let mut env = bench::prepare(root)?;
    let server = moto::MotoServer::start(root).context("starting the local S3 test server")?;
    env.extend(server.env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tests = cmd(
        &cargo,
        &["test", "--workspace", "--all-features", "--no-fail-fast"],
        &env,
    );
    // The Python package's suite, in the venv `prepare` built it into.
    let python_package = env.iter().any(|(k, _)| *k == bench::PY_PACKAGE);
    let tests = tests.and_then(
        |()| match env.iter().find(|(k, _)| *k == "HAAGENTI_TEST_PYTHON") {
            Some((_, python)) if python_package => python::run_pytest(Path::new(python), &env),
            _ => Ok(()),
        },
    );
    // Smoke test: the quick bench must complete and every export must be byte-identical.
    let bench = tests.and_then(|()| bench::run(&["--quick".to_string()], &env));
    drop(server); // stops the server (by PID) whether or not the tests passed
    bench
}

/// `cargo xtask py`: the Python package alone, as `test` builds and runs it.
fn python_package(root: &Path) -> Result<()> {
    let python = python::test_python(root)?;
    if python::package_skipped() {
        return Ok(());
    }
    python::build_package(&python)?;
    let server = moto::MotoServer::start(root).context("starting the local S3 test server")?;
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    python::run_pytest(&python, &env)
}

/// Whether this process runs as root (Linux; elsewhere never).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The report tests drive a real browser: when `chromium` is missing (and no
/// `HAAGENTI_TEST_CHROMIUM` names another) and we are root, install Debian's `chromium`;
/// otherwise the tests fail saying what to install (or skip with
/// `HAAGENTI_SKIP_BROWSER=1`).
fn ensure_chromium() -> Result<()> {
    let named = std::env::var_os("HAAGENTI_TEST_CHROMIUM").is_some_and(|p| !p.is_empty());
    let present = Command::new("chromium").arg("--version").output().is_ok();
    if named || present || !cfg!(target_os = "linux") {
        return Ok(());
    }
    if !is_root() {
        println!(
            "chromium is missing and we are not root: the report tests will fail (apt-get install chromium)"
        );
        return Ok(());
    }
    println!("chromium is missing: installing Debian's chromium for the report tests");
    cmd("apt-get", &["update"], &[])?;
    cmd(
        "apt-get",
        &["install", "-y", "chromium"],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )
}

/// The mount tests need `fusermount3`: when it is missing and we are root (as CI is),
/// install Debian's `fuse3`; otherwise the tests fail saying what to install.
fn ensure_fusermount() -> Result<()> {
    let present = Command::new("fusermount3")
        .arg("--version")
        .output()
        .is_ok();
    if present || !cfg!(target_os = "linux") {
        return Ok(());
    }
    if !is_root() {
        println!(
            "fusermount3 is missing and we are not root: the mount tests will fail (apt-get install fuse3)"
        );
        return Ok(());
    }
    println!("fusermount3 is missing: installing fuse3 for the mount tests");
    cmd("apt-get", &["update"], &[])?;
    cmd(
        "apt-get",
        &["install", "-y", "fuse3"],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )
}
