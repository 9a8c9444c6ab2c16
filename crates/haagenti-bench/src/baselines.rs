//! The tools a user would otherwise pick, run on the same corpus in the same run:
//! per-file zstd -3 (one thread and all threads) and restic.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use haagenti_testkit::synth::Family;

use crate::system::SystemResult;
use crate::util;

const ZSTD_LEVEL: i32 = 3;

/// Every file of the corpus, compressed on its own with zstd -3 and restored.
pub fn zstd(family: &Family, work: &Path, threads: usize) -> Result<SystemResult> {
    let name = if threads == 1 {
        "zstd -3 (1 thread)".to_string()
    } else {
        format!("zstd -3 ({threads} threads)")
    };
    let files: Vec<_> = family.models.iter().flat_map(|m| m.files.clone()).collect();
    let logical: u64 = family.total_bytes();
    let packed = work.join(format!("zstd-{threads}"));
    let restored = work.join(format!("zstd-{threads}-restore"));
    fs::create_dir_all(&packed)?;
    fs::create_dir_all(&restored)?;

    util::settle()?;
    let started = Instant::now();
    for (i, f) in files.iter().enumerate() {
        let mut input = BufReader::with_capacity(1 << 20, File::open(f)?);
        let out = BufWriter::with_capacity(1 << 20, File::create(packed.join(format!("{i}.zst")))?);
        let mut enc = zstd::stream::Encoder::new(out, ZSTD_LEVEL)?;
        if threads > 1 {
            enc.multithread(u32::try_from(threads).unwrap_or(u32::MAX))?;
        }
        std::io::copy(&mut input, &mut enc).with_context(|| format!("zstd {}", f.display()))?;
        let mut out = enc.finish()?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    let stored = util::dir_size(&packed)?;

    util::settle()?;
    let started = Instant::now();
    for i in 0..files.len() {
        let input = BufReader::with_capacity(1 << 20, File::open(packed.join(format!("{i}.zst")))?);
        let mut dec = zstd::stream::Decoder::with_buffer(input)?;
        let mut out =
            BufWriter::with_capacity(1 << 20, File::create(restored.join(i.to_string()))?);
        std::io::copy(&mut dec, &mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
    }
    let restore_secs = started.elapsed().as_secs_f64();
    let mut verified = true;
    for (i, f) in files.iter().enumerate() {
        verified &= util::same_bytes(f, &restored.join(i.to_string()))?;
    }
    util::remove_dir_if_exists(&packed)?;
    util::remove_dir_if_exists(&restored)?;
    Ok(SystemResult {
        stored_bytes: Some(stored),
        ingest_secs: Some(ingest_secs),
        restore_secs: Some(restore_secs),
        verified: Some(verified),
        note: "each file compressed on its own; restore is single-threaded (zstd has no parallel decoder)".into(),
        ..SystemResult::new(name, logical)
    })
}

/// restic 0.14+ with repository version 2 and `--compression auto`, when available.
pub fn restic(family: &Family, work: &Path) -> Result<SystemResult> {
    let logical = family.total_bytes();
    let name = "restic (compression auto)".to_string();
    let version = match restic_version() {
        Ok(v) => v,
        Err(reason) => return Ok(SystemResult::skipped(name, logical, reason)),
    };
    let repo = work.join("restic-repo");
    let target = work.join("restic-restore");
    let stderr_path = work.join("restic.stderr");
    // Runs restic; returns its peak RSS, sampled from /proc every 10 ms (VmHWM only grows,
    // so the last sample misses at most the final 10 ms).
    let restic = |args: &[&str]| -> Result<Option<u64>> {
        let mut child = Command::new("restic")
            .arg("--repo")
            .arg(&repo)
            .args(["--no-cache", "--quiet"])
            .args(args)
            .env("RESTIC_PASSWORD", "haagenti-bench")
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path)?)
            .spawn()
            .context("run restic")?;
        let status_file = format!("/proc/{}/status", child.id());
        let mut peak = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if let Some(hwm) = fs::read_to_string(&status_file)
                .ok()
                .as_deref()
                .and_then(util::vm_hwm_bytes)
            {
                peak = peak.max(Some(hwm));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !status.success() {
            bail!(
                "restic {}: {}",
                args.join(" "),
                fs::read_to_string(&stderr_path).unwrap_or_default().trim()
            );
        }
        Ok(peak)
    };
    restic(&["init", "--repository-version", "2"])?;
    let corpus = family.dir.to_string_lossy().into_owned();
    util::settle()?;
    let started = Instant::now();
    let backup_rss = restic(&["--compression", "auto", "backup", &corpus])?;
    let ingest_secs = started.elapsed().as_secs_f64();
    let stored = util::dir_size(&repo)?;
    util::settle()?;
    let started = Instant::now();
    let restore_rss = restic(&["restore", "latest", "--target", &target.to_string_lossy()])?;
    let restore_secs = started.elapsed().as_secs_f64();
    // restic restores absolute paths under the target.
    let restored_root = target.join(family.dir.strip_prefix("/").unwrap_or(&family.dir));
    let mut verified = true;
    for m in &family.models {
        for f in &m.files {
            let rel = f.strip_prefix(&family.dir).unwrap_or(f);
            verified &= util::same_bytes(f, &restored_root.join(rel)).unwrap_or(false);
        }
    }
    util::remove_dir_if_exists(&repo)?;
    util::remove_dir_if_exists(&target)?;
    Ok(SystemResult {
        stored_bytes: Some(stored),
        ingest_secs: Some(ingest_secs),
        restore_secs: Some(restore_secs),
        verified: Some(verified),
        peak_rss_ingest_bytes: backup_rss,
        peak_rss_restore_bytes: restore_rss,
        note: format!(
            "{version}, repository v2, all cores, whole corpus in one backup; peak RSS sampled every 10 ms"
        ),
        ..SystemResult::new(name, logical)
    })
}

/// `restic version`, installing the Debian package first when running as root with apt.
fn restic_version() -> Result<String, String> {
    let version = || -> Option<String> {
        let out = Command::new("restic").arg("version").output().ok()?;
        out.status.success().then(|| {
            let text = String::from_utf8_lossy(&out.stdout);
            text.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
    };
    if let Some(v) = version() {
        return Ok(v);
    }
    let root = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root || Command::new("apt-get").arg("--version").output().is_err() {
        return Err("restic is not installed (install the Debian package `restic`)".into());
    }
    eprintln!("restic not found: apt-get install -y restic ...");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q", "restic"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    match version() {
        Some(v) if installed => Ok(v),
        _ => Err("restic is not installed and `apt-get install restic` failed".into()),
    }
}
