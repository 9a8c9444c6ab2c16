//! A real FUSE mount for the tests: whether one can run here, and `haagenti mount
//! --foreground` that unmounts when dropped, whatever happened.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Lib;

pub const SKIP_FUSE: &str = "HAAGENTI_SKIP_FUSE";

/// `Some(())` when FUSE mounts can run here; a panic saying what is missing otherwise
/// (`None` after printing the skip when `HAAGENTI_SKIP_FUSE=1`).
pub fn fuse_available(test: &str) -> Option<()> {
    let fusermount = Command::new("fusermount3")
        .arg("--version")
        .output()
        .is_ok();
    if !fusermount {
        panic!(
            "{test}: `fusermount3` is not on PATH: `apt-get install fuse3` \
             (`cargo xtask test` installs it when run as root)"
        );
    }
    if !Path::new("/dev/fuse").exists() {
        return haagenti_testkit::env::unavailable(
            test,
            SKIP_FUSE,
            "/dev/fuse is absent: FUSE mounts cannot run on this machine",
        );
    }
    Some(())
}

/// A running `haagenti mount --foreground`; dropping it unmounts, whatever happened.
/// Its standard error goes to `MOUNTPOINT.log` (printed when a test fails).
pub struct Mounted {
    pub child: Child,
    pub mountpoint: PathBuf,
    log: PathBuf,
}

impl Mounted {
    pub fn start(lib: &Lib, mountpoint: &Path, extra: &[&str]) -> Mounted {
        std::fs::create_dir_all(mountpoint).unwrap();
        let before = std::fs::metadata(mountpoint).unwrap().dev();
        let log = mountpoint.with_extension("log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = lib
            .command()
            .arg("mount")
            .arg(mountpoint)
            .arg("--foreground")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut m = Mounted {
            child,
            mountpoint: mountpoint.to_path_buf(),
            log,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = m.child.try_wait().unwrap() {
                panic!("haagenti mount exited before mounting: {status}");
            }
            if std::fs::metadata(mountpoint).is_ok_and(|md| md.dev() != before) {
                return m;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} not mounted within 60s",
                mountpoint.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// What the mount wrote to its standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("haagenti mount's log:\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The killed process leaves the mount point disconnected: clear it, bounded.
        if let Ok(mut u) = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .spawn()
        {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if u.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = u.kill();
            let _ = u.wait();
        }
    }
}
