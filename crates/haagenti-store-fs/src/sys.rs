//! Every filesystem call that changes a store's directory, in one place: with feature
//! `crash-journal` and a journal attached, each is also recorded (see `journal.rs`), so
//! the power-cut tests replay exactly what the store did. Without a journal, recording
//! costs one branch per call and copies nothing.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
#[cfg(feature = "crash-journal")]
use std::sync::Arc;

#[cfg(feature = "crash-journal")]
use crate::journal::{Flaw, Journal, Op};

/// Records an operation when a journal is attached; compiled out without the feature.
macro_rules! record {
    ($sys:expr, $op:expr) => {
        #[cfg(feature = "crash-journal")]
        $sys.record(|| $op);
    };
}

/// A store's root and, for tests, the journal its operations go to.
#[derive(Clone, Debug)]
pub(crate) struct Sys {
    root: PathBuf,
    /// Large files are written past the page cache (`direct.rs`).
    pub(crate) uncached: bool,
    #[cfg(feature = "crash-journal")]
    pub(crate) journal: Option<Arc<Journal>>,
    #[cfg(feature = "crash-journal")]
    pub(crate) flaw: Option<Flaw>,
}

impl Sys {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            uncached: true,
            #[cfg(feature = "crash-journal")]
            journal: None,
            #[cfg(feature = "crash-journal")]
            flaw: None,
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Creates `path` (truncating), writes `bytes` (past the page cache when the file
    /// system allows it and `uncached`), and fsyncs it when `sync`.
    pub(crate) fn create_file(&self, path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
        let direct = if self.uncached {
            crate::direct::create(path, bytes)?
        } else {
            None
        };
        let f = match direct {
            Some(f) => f,
            None => {
                let mut f = File::create(path)?;
                f.write_all(bytes)?;
                f
            }
        };
        record!(
            self,
            Op::Create {
                path: self.rel(path),
                bytes: bytes::Bytes::copy_from_slice(bytes),
            }
        );
        #[cfg(feature = "crash-journal")]
        let sync = sync && self.flaw != Some(Flaw::NoFileSync);
        if sync {
            #[cfg(feature = "crash-journal")]
            let covers = self.started();
            f.sync_all()?;
            record!(
                self,
                Op::Fsync {
                    path: self.rel(path),
                    dir: false,
                    covers,
                }
            );
        }
        Ok(())
    }

    /// Fsyncs directory `dir`, making the entries created or removed in it durable.
    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(feature = "crash-journal")]
        if self.flaw == Some(Flaw::NoDirSync) {
            return Ok(());
        }
        #[cfg(feature = "crash-journal")]
        let covers = self.started();
        File::open(dir)?.sync_all()?;
        record!(
            self,
            Op::Fsync {
                path: self.rel(dir),
                dir: true,
                covers,
            }
        );
        Ok(())
    }

    /// Fsyncs every directory of `dirs` (a few threads at once: each waits for its own
    /// write), making the entries created or removed in them durable; the first failure
    /// with its directory.
    pub(crate) fn sync_dirs(&self, dirs: &[PathBuf]) -> Result<(), (PathBuf, io::Error)> {
        #[cfg(feature = "crash-journal")]
        if self.flaw == Some(Flaw::NoFlush) {
            return Ok(());
        }
        const THREADS: usize = 8;
        let per_thread = dirs.len().div_ceil(THREADS).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = dirs
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        for dir in chunk {
                            self.sync_dir(dir).map_err(|e| (dir.clone(), e))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join().unwrap_or_else(|_| {
                    Err((self.root.clone(), io::Error::other("fsync thread panicked")))
                })
            })
        })
    }

    /// Creates `dir` and its missing parents (`create_dir_all`, one level at a time so
    /// each new directory is recorded).
    pub(crate) fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut at = dir;
        while !at.is_dir() {
            missing.push(at);
            match at.parent() {
                Some(up) => at = up,
                None => break,
            }
        }
        for d in missing.into_iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => {
                    record!(self, Op::Mkdir { path: self.rel(d) });
                }
                // Another writer created it meanwhile (and records it).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(crate) fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)?;
        record!(
            self,
            Op::Link {
                from: self.rel(from),
                to: self.rel(to),
            }
        );
        Ok(())
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)?;
        record!(
            self,
            Op::Rename {
                from: self.rel(from),
                to: self.rel(to),
            }
        );
        Ok(())
    }

    pub(crate) fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)?;
        record!(
            self,
            Op::Unlink {
                path: self.rel(path),
            }
        );
        Ok(())
    }

    /// The journal position an fsync starting now covers up to.
    #[cfg(feature = "crash-journal")]
    fn started(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.len())
    }

    #[cfg(feature = "crash-journal")]
    fn record(&self, op: impl FnOnce() -> Op) {
        if let Some(j) = &self.journal {
            j.push(op());
        }
    }

    #[cfg(feature = "crash-journal")]
    fn rel(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        rel.to_string_lossy()
            .replace(std::path::MAIN_SEPARATOR, "/")
    }
}
