//! Reading through `haagenti mount` next to `export` and next to the source file in the
//! page cache, in one run: sequential read MB/s (cold: the first read after mounting;
//! warm: the second, from the kernel's page cache), peak RSS of the mount process with a
//! small cache budget, and the time from mounting to the last tensor read with the real
//! `safetensors` package against export-then-open.
//!
//! The mount is the real `haagenti` binary (`HAAGENTI_BENCH_CLI`, which `cargo xtask
//! bench` builds) and the tensors are read by the test venv's Python
//! (`HAAGENTI_TEST_PYTHON`). Without either, or without FUSE, the section says it was
//! skipped and why.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use haagenti_core::Dtype;
use haagenti_testkit::synth::generate_model;
use serde::Serialize;

use crate::util;

/// Sequential reads through the mount must reach this (decimal MB/s, 2 cores).
const TARGET_SEQ_MB_S: f64 = 600.0;
/// Peak RSS of the mount process may exceed its cache budget by at most this.
const RSS_HEADROOM: u64 = 128 << 20;
/// Cache budget of the mount while reading (the 256 MiB).
const CACHE_MB: u64 = 256;
/// Runs of each measurement; medians are reported.
const RUNS: usize = 3;

/// Reads every tensor of each file given with the real `safetensors` package (mmap) and
/// prints the bytes of tensor data it saw.
const READ_ALL_TENSORS: &str = "\
import sys
import ml_dtypes
from safetensors import safe_open
n = 0
for p in sys.argv[1:]:
    with safe_open(p, framework='np') as f:
        for k in f.keys():
            n += f.get_tensor(k).nbytes
print(n)
";

#[derive(Clone, Debug, Serialize)]
pub struct MountBench {
    /// Why the section did not run (`None` when it ran).
    pub skipped: Option<String>,
    pub model_bytes: u64,
    pub cache_mb: u64,
    pub runs: usize,
    /// Reading the source file, already in the page cache.
    pub source_mb_s: f64,
    /// `haagenti export` of the model (whole process, output to the page cache).
    pub export_mb_s: f64,
    /// First sequential read after mounting.
    pub mount_cold_mb_s: f64,
    /// Second sequential read (the kernel keeps the immutable files' pages).
    pub mount_warm_mb_s: f64,
    /// Highest `VmHWM` of the mount process over the runs.
    pub mount_peak_rss_bytes: Option<u64>,
    /// Size of the model read with `safe_open`.
    pub tensors_model_bytes: u64,
    /// Mount, then `safe_open` and read every tensor (seconds, median).
    pub mount_to_last_tensor_secs: f64,
    /// `haagenti export`, then `safe_open` and read every tensor of the copy.
    pub export_then_open_secs: f64,
    /// Every read equalled the source.
    pub identical: bool,
}

impl MountBench {
    fn skipped(why: String) -> MountBench {
        MountBench {
            skipped: Some(why),
            model_bytes: 0,
            cache_mb: CACHE_MB,
            runs: 0,
            source_mb_s: 0.0,
            export_mb_s: 0.0,
            mount_cold_mb_s: 0.0,
            mount_warm_mb_s: 0.0,
            mount_peak_rss_bytes: None,
            tensors_model_bytes: 0,
            mount_to_last_tensor_secs: 0.0,
            export_then_open_secs: 0.0,
            identical: true,
        }
    }

    /// Fails when a read through the mount differed from the source.
    pub fn check(&self) -> Result<()> {
        if !self.identical {
            bail!("a read through the mount differs from the source file");
        }
        Ok(())
    }
}

/// What the section needs from the machine, or why it cannot run.
fn prerequisites() -> std::result::Result<(PathBuf, PathBuf), String> {
    let cli = util::bench_cli()?;
    let python = std::env::var_os("HAAGENTI_TEST_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .ok_or("HAAGENTI_TEST_PYTHON is not set (run `cargo xtask bench`)")?;
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is absent".into());
    }
    if Command::new("fusermount3")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("fusermount3 is missing (apt-get install fuse3)".into());
    }
    Ok((cli, python))
}

/// `model_bytes`: the model read sequentially (2 GiB in a full run); `tensors_bytes`: the
/// model read with `safe_open` (400 MB in a full run).
pub fn run(work: &Path, model_bytes: u64, tensors_bytes: u64, seed: u64) -> Result<MountBench> {
    let (cli, python) = match prerequisites() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("  mount section skipped: {why}");
            return Ok(MountBench::skipped(why));
        }
    };
    let dir = work.join("mount");
    util::remove_dir_if_exists(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, &cli, &python, model_bytes, tensors_bytes, seed);
    util::discard(&dir)?;
    result
}

fn measure(
    dir: &Path,
    cli: &Path,
    python: &Path,
    model_bytes: u64,
    tensors_bytes: u64,
    seed: u64,
) -> Result<MountBench> {
    let lib = dir.join("library");
    let big = dir.join("big.safetensors");
    let small = dir.join("small.safetensors");
    let model_bytes = generate_model(&big, model_bytes, seed, Dtype::BF16)?;
    let tensors_model_bytes = generate_model(&small, tensors_bytes, seed + 1, Dtype::BF16)?;
    for (name, src) in [("big", &big), ("small", &small)] {
        haagenti(cli, &lib, &["ingest", "--model", name, path_str(src)?])?;
    }
    util::warm(&lib)?;
    let want = std::fs::read(&big).context("reading the source")?;
    let tensor_bytes = tensor_data_bytes(&small)?;
    let mountpoint = dir.join("mnt");
    let out = dir.join("export");

    let (mut source, mut export, mut cold, mut warm) = (vec![], vec![], vec![], vec![]);
    let (mut via_mount, mut via_export) = (vec![], vec![]);
    let mut peak_rss: Option<u64> = None;
    let mut identical = true;
    for run in 0..RUNS {
        eprintln!("  mount run {}/{RUNS} ...", run + 1);
        // The source from the page cache (read once before, above).
        source.push(util::mb_per_s(model_bytes, timed_read(&big)?));

        util::remove_dir_if_exists(&out)?;
        let started = Instant::now();
        haagenti(
            cli,
            &lib,
            &["export", "--model", "big", "--out", path_str(&out)?],
        )?;
        export.push(util::mb_per_s(model_bytes, started.elapsed().as_secs_f64()));
        util::remove_dir_if_exists(&out)?;

        let cache = CACHE_MB.to_string();
        let mounted = Mount::start(cli, &lib, &mountpoint, &["--cache-mb", &cache])?;
        let file = mountpoint.join("big/big.safetensors");
        cold.push(util::mb_per_s(model_bytes, timed_read(&file)?));
        warm.push(util::mb_per_s(model_bytes, timed_read(&file)?));
        identical &= equals(&file, &want)?;
        let rss = mounted.peak_rss();
        peak_rss = peak_rss.max(rss);
        drop(mounted);

        // Time to the last tensor: mount then read, against export then read.
        let started = Instant::now();
        let mounted = Mount::start(cli, &lib, &mountpoint, &[])?;
        let seen = read_all_tensors(python, &mountpoint.join("small/small.safetensors"))?;
        via_mount.push(started.elapsed().as_secs_f64());
        drop(mounted);
        identical &= seen == tensor_bytes;

        let started = Instant::now();
        haagenti(
            cli,
            &lib,
            &["export", "--model", "small", "--out", path_str(&out)?],
        )?;
        let seen = read_all_tensors(python, &out.join("small.safetensors"))?;
        via_export.push(started.elapsed().as_secs_f64());
        identical &= seen == tensor_bytes;
        util::remove_dir_if_exists(&out)?;
    }
    Ok(MountBench {
        skipped: None,
        model_bytes,
        cache_mb: CACHE_MB,
        runs: RUNS,
        source_mb_s: util::median(source),
        export_mb_s: util::median(export),
        mount_cold_mb_s: util::median(cold),
        mount_warm_mb_s: util::median(warm),
        mount_peak_rss_bytes: peak_rss,
        tensors_model_bytes,
        mount_to_last_tensor_secs: util::median(via_mount),
        export_then_open_secs: util::median(via_export),
        identical,
    })
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn haagenti(cli: &Path, lib: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(cli)
        .arg("--library")
        .arg(lib)
        .args(args)
        .env_remove("HAAGENTI_LIBRARY")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", cli.display()))?;
    if !out.status.success() {
        bail!(
            "haagenti {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Reads `path` front to back in 1 MiB requests and drops the bytes, as `cat > /dev/null`
/// would: seconds.
fn timed_read(path: &Path) -> Result<f64> {
    let started = Instant::now();
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    while file
        .read(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?
        > 0
    {}
    Ok(started.elapsed().as_secs_f64())
}

/// Whether `path` holds exactly `want` (read outside the timings).
fn equals(path: &Path, want: &[u8]) -> Result<bool> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(at == want.len());
        }
        if want.get(at..at + n) != Some(&buf[..n]) {
            return Ok(false);
        }
        at += n;
    }
}

/// Sum of the tensors' data lengths of a safetensors file (what `safe_open` must see).
fn tensor_data_bytes(path: &Path) -> Result<u64> {
    let bytes = std::fs::read(path)?;
    let n = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .context("not a safetensors file")?;
    Ok((bytes.len() as u64).saturating_sub(8 + n))
}

fn read_all_tensors(python: &Path, file: &Path) -> Result<u64> {
    let out = Command::new(python)
        .arg("-c")
        .arg(READ_ALL_TENSORS)
        .arg(file)
        .output()
        .context("running python")?;
    if !out.status.success() {
        bail!(
            "safe_open of {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("python printed {text:?}"))
}

/// A running `haagenti mount --foreground`; unmounted (SIGTERM, then forced) on drop.
struct Mount {
    child: Child,
    mountpoint: PathBuf,
}

impl Mount {
    fn start(cli: &Path, lib: &Path, mountpoint: &Path, extra: &[&str]) -> Result<Mount> {
        std::fs::create_dir_all(mountpoint)?;
        let before = std::fs::metadata(mountpoint)?.dev();
        // Its messages (mounted, unmounting, any EIO) go to a log beside the mount point.
        let log_path = mountpoint.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = Command::new(cli)
            .arg("--library")
            .arg(lib)
            .arg("mount")
            .arg(mountpoint)
            .arg("--foreground")
            .args(extra)
            .env_remove("HAAGENTI_LIBRARY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting haagenti mount")?;
        let mut mount = Mount {
            child,
            mountpoint: mountpoint.to_path_buf(),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = mount.child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "haagenti mount exited before mounting: {status}: {}",
                    log.trim()
                );
            }
            if std::fs::metadata(mountpoint).is_ok_and(|m| m.dev() != before) {
                return Ok(mount);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{} not mounted within 60 s", mountpoint.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        util::vm_hwm_bytes(&status)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mountpoint)
            .status();
    }
}

pub fn markdown(b: &MountBench) -> String {
    let mut out = String::from("### Reading through `haagenti mount`\n\n");
    if let Some(why) = &b.skipped {
        out.push_str(&format!("Skipped: {why}.\n"));
        return out;
    }
    let budget = (b.cache_mb << 20) + RSS_HEADROOM;
    out.push_str(&format!(
        "One {} bf16 model read front to back in 1 MiB requests, medians of {} runs side by \
         side (MB/s, decimal):\n\n\
         | source file (page cache) | `export` | mount, cold (target >= {TARGET_SEQ_MB_S:.0}) | mount, warm (kernel page cache) | mount peak RSS, `--cache-mb {}` (target < {}) |\n\
         |---|---|---|---|---|\n\
         | {:.0} | {:.0} | {:.0} {} | {:.0} | {} {} |\n\n",
        util::human(b.model_bytes),
        b.runs,
        b.cache_mb,
        util::human(budget),
        b.source_mb_s,
        b.export_mb_s,
        b.mount_cold_mb_s,
        util::mark(b.mount_cold_mb_s >= TARGET_SEQ_MB_S),
        b.mount_warm_mb_s,
        b.mount_peak_rss_bytes.map_or("n/a".into(), util::human),
        util::mark(b.mount_peak_rss_bytes.is_some_and(|r| r < budget)),
    ));
    out.push_str(&format!(
        "Time to the last tensor of a {} model with `safetensors.safe_open` (every tensor \
         read; Python start-up included in both): mount then open **{:.2} s**, export then \
         open {:.2} s {}.\n",
        util::human(b.tensors_model_bytes),
        b.mount_to_last_tensor_secs,
        b.export_then_open_secs,
        util::mark(b.mount_to_last_tensor_secs < b.export_then_open_secs),
    ));
    out
}
