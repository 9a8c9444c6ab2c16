//! Small helpers: sizes, paths, file comparison, the kernel's peak-RSS accounting.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Runs this benchmark binary again with `args` (a phase in a process of its own, so its
/// time and peak RSS belong to it alone) and parses the JSON of its last stdout line.
pub fn run_self<T: serde::de::DeserializeOwned>(
    args: &[&std::ffi::OsStr],
    what: &str,
) -> Result<T> {
    let exe = std::env::current_exe().context("locate haagenti-bench")?;
    let out = std::process::Command::new(exe)
        .args(args)
        .output()
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{what} printed {line:?}"))
}

/// Writes back every dirty page of the machine (`sync`) before a timed phase, so that
/// no phase pays for the writeback of what an earlier one, or a generator, left dirty
/// (a `syncfs` in the phase, or the kernel's flusher competing for the cores, would).
pub fn settle() -> Result<()> {
    let status = std::process::Command::new("sync")
        .status()
        .context("run sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

/// The median of `v` (the upper one of an even count); 0 for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// How a table marks a target: `(met)` or `(MISSED)`.
pub fn mark(ok: bool) -> &'static str {
    if ok { "(met)" } else { "(MISSED)" }
}

/// The built `haagenti` the mount and serve sections run (`HAAGENTI_BENCH_CLI`, which
/// `cargo xtask bench` sets), or why there is none.
pub fn bench_cli() -> std::result::Result<PathBuf, String> {
    std::env::var_os("HAAGENTI_BENCH_CLI")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .ok_or_else(|| {
            "HAAGENTI_BENCH_CLI does not name a built `haagenti` (run `cargo xtask bench`)".into()
        })
}

/// The workspace root (this crate lives in `crates/haagenti-bench`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// Parses `1000000`, `50M`, `1G`, `512Mi`, `2GiB` (K/M/G decimal, Ki/Mi/Gi binary).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim().trim_end_matches(['B', 'b']);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().with_context(|| format!("not a size: {s:?}"))?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => bail!("unknown size unit in {s:?}"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("size too large: {s:?}"))
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", dir.display())),
    }
}

/// Directories [`discard`] moved aside, deleted by [`empty_trash`].
static TRASH: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Takes `dir` (a library: thousands of files) out of the way now and deletes it when
/// the run ends ([`empty_trash`]). On ext4 without a journal (this bench's VM), every
/// file created within minutes of a delete first skips the freed inodes
/// (`recently_deleted`): a 2 GiB ingest right after removing a library took 5.70 s
/// instead of 3.24 s (one binary), the cost of the bench's cleanup, which no user's
/// ingest pays, charged to the phase after it. Outputs of a few large files are removed
/// at once ([`remove_dir_if_exists`]), or the disk would fill.
pub fn discard(dir: &Path) -> Result<()> {
    static MOVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MOVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let aside = dir.with_file_name(format!(".trash-{}-{n}-{name}", std::process::id()));
    match fs::rename(dir, &aside) {
        Ok(()) => {
            TRASH.lock().unwrap_or_else(|e| e.into_inner()).push(aside);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("move {} aside", dir.display())),
    }
}

/// Deletes what [`discard`] moved aside (at the end of a run, once nothing
/// is measured any more).
pub fn empty_trash() -> Result<()> {
    let trash = std::mem::take(&mut *TRASH.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in trash {
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", dir.display())),
        }
    }
    Ok(())
}

/// Reads every file under `dir` once, so that what is measured next finds a library in
/// the page cache, as a library in use is (its objects are written past it).
pub fn warm(dir: &Path) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for path in files_under(dir)? {
        let mut file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        while file
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?
            > 0
        {}
    }
    Ok(())
}

/// Every regular file under `dir` (or `dir` itself if it is a file), sorted.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&p).with_context(|| format!("read {}", p.display()))? {
                stack.push(entry?.path());
            }
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Sum of the sizes of every file under `dir`.
pub fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for f in files_under(dir)? {
        total += fs::metadata(&f)?.len();
    }
    Ok(total)
}

/// Whether two files have the same bytes (streamed, constant memory).
pub fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let (ma, mb) = (fs::metadata(a)?, fs::metadata(b)?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let open = |p: &Path| -> Result<BufReader<File>> {
        Ok(BufReader::with_capacity(
            1 << 20,
            File::open(p).with_context(|| format!("open {}", p.display()))?,
        ))
    };
    let (mut ra, mut rb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = ra.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        rb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Peak resident set size of this process so far (`VmHWM` in `/proc/self/status`).
pub fn peak_rss_bytes() -> Option<u64> {
    vm_hwm_bytes(&fs::read_to_string("/proc/self/status").ok()?)
}

/// `VmHWM` (peak RSS) from the text of a `/proc/PID/status` file.
pub fn vm_hwm_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / 1e6 / secs
    } else {
        0.0
    }
}

/// A size for people, in binary units (`1.5 GiB`): the same formatter as the `haagenti`
/// command ([`haagenti_core::HumanBytes`]).
pub fn human(bytes: u64) -> String {
    haagenti_core::HumanBytes(bytes).to_string()
}

/// User + system CPU seconds of this process, all threads (`/proc/self/stat`, in 1/100 s
/// ticks); `None` where there is no procfs. Unlike wall time, it does not count waiting
/// for a core while other programs use the machine.
pub fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("50M").unwrap(), 50_000_000);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512Mi").unwrap(), 512 << 20);
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("M").is_err());
    }

    #[test]
    fn compares_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        fs::write(&a, vec![7u8; 3 << 20]).unwrap();
        fs::write(&b, vec![7u8; 3 << 20]).unwrap();
        let mut other = vec![7u8; 3 << 20];
        other[2 << 20] = 8;
        fs::write(&c, other).unwrap();
        assert!(same_bytes(&a, &b).unwrap());
        assert!(!same_bytes(&a, &c).unwrap());
        assert_eq!(files_under(dir.path()).unwrap().len(), 3);
        assert_eq!(dir_size(dir.path()).unwrap(), 9 << 20);
        assert!(peak_rss_bytes().unwrap() > 0);
    }
}
