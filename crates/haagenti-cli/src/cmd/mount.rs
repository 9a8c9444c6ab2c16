//! `haagenti mount`: every stored model as read-only files (FUSE, through `fusermount3`),
//! in the plain or the Hugging Face cache layout. See `crate::mount` for the filesystem.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use haagenti_fragments::OpenOptions;

use crate::location::Location;
use crate::mount::{Layout, MountFs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// An empty directory to mount the library on.
    pub mountpoint: PathBuf,
    /// Mount only this model; repeat for several (default: every model, and models
    /// ingested while mounted appear).
    #[arg(long = "model", value_name = "NAME")]
    pub models: Vec<String>,
    /// Fragment cache budget in MiB, for delta bases and cast sources (the kernel's page
    /// cache keeps the files' bytes); the mount's memory is about this plus a constant.
    #[arg(long, default_value_t = 256)]
    pub cache_mb: u64,
    /// `plain`: MOUNTPOINT/MODEL/FILE; `hf`: the Hugging Face hub cache layout, for
    /// `HF_HUB_CACHE=MOUNTPOINT HF_HUB_OFFLINE=1`.
    #[arg(long, value_enum, default_value_t = Layout::Plain)]
    pub layout: Layout,
    /// Stay in the terminal (logs on stderr) until Ctrl-C; else detach and print the PID.
    #[arg(long)]
    pub foreground: bool,
    /// Kernel read-ahead of the mount in KiB (the kernel's default for FUSE is 128; larger
    /// requests make sequential reads and mmap'd loads faster). Needs write access to
    /// `/sys/class/bdi` (root); otherwise the default stays and a line says so.
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    pub read_ahead_kb: u32,
    /// When detached: append the mount's log (read errors) to this file.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// How long the detached mount gets to come up.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(location: &Location, args: Args) -> Result<()> {
    check_mountpoint(&args.mountpoint)?;
    if !args.foreground {
        return detach(&args.mountpoint, args.log.as_deref());
    }
    haagenti_cli::process::limit_malloc_arenas();
    let lib = location
        .open(OpenOptions::default().cache_bytes(args.cache_mb.saturating_mul(1 << 20)))
        .await?;
    let meta = std::fs::metadata(&args.mountpoint)?;
    let metrics = lib.clone();
    let fs = MountFs::new(
        lib,
        args.layout,
        args.models.clone(),
        meta.uid(),
        meta.gid(),
    )
    .await?;
    let models = fs.model_count();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("haagenti".into()),
        fuser::MountOption::Subtype("haagenti".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::DefaultPermissions,
    ];
    // Lookups and directory reads run on these threads; file reads go to the runtime.
    config.n_threads = Some(4);
    let mountpoint = args.mountpoint.clone();
    let session = tokio::task::spawn_blocking(move || fuser::spawn_mount(fs, &mountpoint, &config))
        .await?
        .with_context(|| format!("mounting on {}", args.mountpoint.display()))?;
    if let Err(e) = set_read_ahead(&args.mountpoint, args.read_ahead_kb) {
        eprintln!("read-ahead stays at the kernel's default: {e:#}");
    }
    eprintln!(
        "mounted {} ({models} models, layout {:?}) on {}; Ctrl-C or `fusermount3 -u {}` unmounts",
        location.library,
        args.layout,
        args.mountpoint.display(),
        args.mountpoint.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                if session.guard.is_finished() {
                    // Unmounted from outside (`fusermount3 -u`).
                    eprintln!("{} was unmounted", args.mountpoint.display());
                    return Ok(());
                }
            }
        }
    }
    let m = metrics.metrics();
    eprintln!(
        "unmounting {}: {} store reads ({}), {} cache hits, {} misses, {:.2} s decoding",
        args.mountpoint.display(),
        m.store_reads,
        crate::render::human(m.bytes_fetched),
        m.cache_hits,
        m.cache_misses,
        m.decode_seconds
    );
    tokio::task::spawn_blocking(move || session.umount_and_join())
        .await?
        .with_context(|| format!("unmounting {}", args.mountpoint.display()))?;
    Ok(())
}

/// Sets the kernel read-ahead of the filesystem mounted on `mountpoint` (its backing
/// device's `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`).
fn set_read_ahead(mountpoint: &Path, kb: u32) -> Result<()> {
    let dev = std::fs::metadata(mountpoint)?.dev();
    // glibc's gnu_dev_major/gnu_dev_minor encoding of dev_t.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    std::fs::write(&path, kb.to_string()).with_context(|| format!("writing {path}"))
}

/// The mount point must be a directory, and not one left behind by a killed mount.
fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    // Listing it, not only `stat`: the kernel may answer a `stat` of a dead mount from its
    // attribute cache, never an `opendir`.
    match std::fs::metadata(mountpoint).and_then(|m| std::fs::read_dir(mountpoint).map(|_| m)) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("mount point {} is not a directory", mountpoint.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => bail!(
            "mount point {} is left behind by a mount whose process ended \
             (Transport endpoint is not connected): run `fusermount3 -u {}` first",
            mountpoint.display(),
            mountpoint.display()
        ),
        Err(e) => Err(e).with_context(|| format!("mount point {}", mountpoint.display())),
    }
}

/// Runs this command again with `--foreground` as a detached child (own process group,
/// no terminal), prints its PID, and returns once the mount is live.
fn detach(mountpoint: &Path, log: Option<&Path>) -> Result<()> {
    let before = std::fs::metadata(mountpoint)?.dev();
    let exe = std::env::current_exe().context("finding the haagenti executable")?;
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .context("starting the mount process")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the mount process exited ({status}) before mounting{}",
                if log.is_some() {
                    " (see its log)"
                } else {
                    ": run with --foreground to see why"
                }
            );
        }
        if std::fs::metadata(mountpoint).is_ok_and(|m| m.dev() != before) {
            outln!("{}", child.id())?;
            return Ok(());
        }
        if started.elapsed() > MOUNT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} was not mounted within {}s: run with --foreground to see why",
                mountpoint.display(),
                MOUNT_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
