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
    /// Fragment cache budget in MiB (the mount's memory is about this plus a constant).
    #[arg(long, default_value_t = 256)]
    pub cache_mb: u64,
    /// `plain`: MOUNTPOINT/MODEL/FILE; `hf`: the Hugging Face hub cache layout, for
    /// `HF_HUB_CACHE=MOUNTPOINT HF_HUB_OFFLINE=1`.
    #[arg(long, value_enum, default_value_t = Layout::Plain)]
    pub layout: Layout,
    /// Stay in the terminal (logs on stderr) until Ctrl-C; else detach and print the PID.
    #[arg(long)]
    pub foreground: bool,
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
    let lib = location
        .open(OpenOptions::default().cache_bytes(args.cache_mb.saturating_mul(1 << 20)))
        .await?;
    let meta = std::fs::metadata(&args.mountpoint)?;
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
    eprintln!("unmounting {}", args.mountpoint.display());
    tokio::task::spawn_blocking(move || session.umount_and_join())
        .await?
        .with_context(|| format!("unmounting {}", args.mountpoint.display()))?;
    Ok(())
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
