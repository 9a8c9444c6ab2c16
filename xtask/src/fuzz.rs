//! `cargo xtask fuzz [--smoke] [--seconds N] [TARGET]`: runs the cargo-fuzz targets in
//! `fuzz/` one after another and reports how many inputs each executed.
//!
//! cargo-fuzz needs nightly `-Z` flags; the project builds on one stable toolchain, so the
//! targets are built with `RUSTC_BOOTSTRAP=1` and without a sanitizer (`-s none`: the code
//! is safe Rust, and the sanitizer would not instrument the C of zstd anyway). cargo-fuzz
//! is installed with `cargo install cargo-fuzz --locked` when missing.
//!
//! Crashing inputs land in `fuzz/artifacts/TARGET/`; keep each as a regular regression
//! test (see `fuzz/src/lib.rs`). The growing corpus stays in `fuzz/corpus/TARGET/`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Seconds per target: `--smoke`, and the default for a real run.
const SMOKE_SECONDS: u64 = 15;
const DEFAULT_SECONDS: u64 = 300;

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut seconds = DEFAULT_SECONDS;
    let mut only: Option<&str> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => seconds = SMOKE_SECONDS,
            "--seconds" => {
                seconds = it
                    .next()
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds takes a whole number")?;
            }
            flag if flag.starts_with('-') => {
                bail!("unknown option {flag:?} (usage: fuzz [--smoke] [--seconds N] [TARGET])")
            }
            target => only = Some(target),
        }
    }
    let fuzz_dir = root.join("fuzz");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ensure_cargo_fuzz(&cargo)?;

    let listed = fuzz_cmd(&cargo, &fuzz_dir)
        .args(["fuzz", "list"])
        .output()
        .context("running cargo fuzz list")?;
    if !listed.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let all: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let targets: Vec<String> = match only {
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_string()],
        Some(t) => bail!("no fuzz target {t:?} (targets: {})", all.join(", ")),
        None => all,
    };

    println!("$ cargo fuzz build -s none (RUSTC_BOOTSTRAP=1)");
    let status = fuzz_cmd(&cargo, &fuzz_dir)
        .args(["fuzz", "build", "-s", "none"])
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }

    let mut crashed = Vec::new();
    for target in &targets {
        std::fs::create_dir_all(fuzz_dir.join("corpus").join(target))?;
        let mut libfuzzer_args = vec![format!("-max_total_time={seconds}"), "-timeout=20".into()];
        let dict = fuzz_dir.join("dicts").join(format!("{target}.dict"));
        if dict.exists() {
            libfuzzer_args.push(format!("-dict={}", dict.display()));
        }
        if target == "codec_roundtrip" {
            // Room for inputs spanning several codec blocks.
            libfuzzer_args.push("-max_len=65536".into());
        }
        println!(
            "$ cargo fuzz run -s none {target} -- {}",
            libfuzzer_args.join(" ")
        );
        let out = fuzz_cmd(&cargo, &fuzz_dir)
            .args(["fuzz", "run", "-s", "none", target, "--"])
            .args(&libfuzzer_args)
            .output()
            .with_context(|| format!("running fuzz target {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        match log.lines().rev().find(|l| l.starts_with("Done ")) {
            Some(done) if out.status.success() => println!("  {target}: {done}"),
            _ => {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                for line in tail.iter().rev() {
                    eprintln!("  | {line}");
                }
                eprintln!(
                    "  {target}: FAILED ({}); the input is under fuzz/artifacts/{target}/",
                    out.status
                );
                crashed.push(target.clone());
            }
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets failed: {}", crashed.join(", "));
    }
    Ok(())
}

fn fuzz_cmd(cargo: &str, fuzz_dir: &Path) -> Command {
    let mut cmd = Command::new(cargo);
    cmd.current_dir(fuzz_dir).env("RUSTC_BOOTSTRAP", "1");
    cmd
}

fn ensure_cargo_fuzz(cargo: &str) -> Result<()> {
    let present = Command::new(cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("$ {cargo} install cargo-fuzz --locked   (cargo-fuzz is missing)");
    let status = Command::new(cargo)
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("installing cargo-fuzz failed ({status})");
    }
    Ok(())
}
