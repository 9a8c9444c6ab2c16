//! haagenti-store-fs: [`FsStore`], a [`FragmentStore`] in a local directory.
//!
//! Each object is one file at `ROOT/<key>`, except fragments: the object of key
//! `fragments/<aa>/<bb>/<64 hex>` is the file `ROOT/fragments-flat/<aa>/<64 hex>`, one
//! shard level instead of two. With two levels nearly every new fragment of a library
//! under 65,536 fragments made a directory of its own, and on ext4 those `mkdir`s cost
//! about 5% of a large ingest's time (ARCHITECTURE.md, *Decisions*); 256 directories
//! hold millions of files well. Fragments written at their key's own path, as stores
//! before the flat layout did, are still found, listed, replaced and deleted there, and
//! a haagenti that predates the flat layout does not see the flat directory at all, so
//! its gc cannot take the fragments in it for garbage. No global index file exists, so
//! any number of threads and processes can write into one store at once.
//!
//! # The store contract, as the filesystem keeps it
//!
//! * **Create-only, atomic puts.** The bytes go to a temporary file under `ROOT/tmp/`
//!   and are published with a hard link, which fails if the destination exists: of
//!   concurrent writers of one key exactly one gets [`PutOutcome::Created`], and readers
//!   see the whole object or none. A put finding the key taken writes nothing and answers
//!   [`PutOutcome::AlreadyExists`]. Leftover temporary files of a crashed writer are
//!   swept by the library's gc.
//! * **Durability** (unless [`FsStore::without_sync`]): a file's bytes are fsynced
//!   before it is published under its key, always, so no key ever names bytes a power
//!   cut could lose. A `put` then fsyncs the directory it was published in, and each
//!   directory it created, so the object it reported survives a power cut. A
//!   `put_deferred` (an ingest's fragments) leaves the directories to
//!   [`flush`](FragmentStore::flush), which fsyncs, once each, every directory that a
//!   deferred put published in or found its key in, and every directory holding an
//!   object a read returned, with their parents up to the root: so every name this store
//!   reported, this process's and any other's, is durable when it returns; the library
//!   flushes before it writes the manifest. (Not a `syncfs`: that waits for every dirty
//!   page of the filesystem, other programs' too.) Elsewhere than Linux, and with
//!   [`FsStore::sync_each_put`], a `put_deferred` is a `put`. A delete fsyncs the directory it removed the name from,
//!   so an object a delete reported gone stays gone. Nothing spanning several objects is
//!   atomic. `tests/powercut.rs` of `haagenti-fragments` checks this against every power
//!   cut the journal of feature `crash-journal` allows (module `powercut`).
//! * **Writes past the page cache** (Linux, unless [`FsStore::page_cache_writes`]):
//!   objects of 64 KiB to 16 MiB are written with `O_DIRECT`, so an ingest does not fill
//!   the page cache with objects nothing reads soon; a file system that refuses it gets
//!   them through the page cache. Reads always go through the page cache.
//! * A missing object: [`FragmentError::NotFound`] from `get` and `get_range`, `None`
//!   from `head`; `delete` of it succeeds. `list` skips files that are not valid keys
//!   (editor backups, …). Keys under `fragments-flat/` are the store's own:
//!   [`FragmentError::InvalidInput`].
//!
//! # Errors
//!
//! Any other failure is [`FragmentError::Io`] naming the operation and the file, with the
//! operating system's error as its source (a full disk, for example, fails a put with
//! the system's no-space error); a panicked blocking task is
//! [`FragmentError::TaskFailed`].

#![warn(missing_docs, unreachable_pub)]

mod direct;
#[cfg(feature = "crash-journal")]
pub mod journal;
#[cfg(feature = "crash-journal")]
pub mod powercut;
mod sys;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use haagenti_core::buffers;
use haagenti_core::store::{FRAGMENTS_PREFIX, TMP_PREFIX};
use haagenti_core::{FragmentError, FragmentStore, ObjectKey, ObjectMeta, PutOutcome, Result};

use crate::sys::Sys;

/// A [`FragmentStore`] rooted at a directory; see the crate docs for its guarantees.
/// Blocking file I/O runs on tokio's blocking pool, so calls need a tokio runtime.
#[derive(Debug)]
pub struct FsStore {
    sys: Sys,
    sync: bool,
    /// `put_deferred` leaves directory fsyncs to `flush`.
    defer: bool,
    /// The directories `flush` makes durable (see the crate docs).
    reported: Reported,
}

/// Directories holding names this store reported since the last flush, with their
/// parents up to the root.
#[derive(Clone, Debug, Default)]
struct Reported(Arc<Mutex<BTreeSet<PathBuf>>>);

impl Reported {
    /// Notes `file`'s directory and its parents up to `root`.
    fn note(&self, root: &Path, file: &Path) {
        let mut dirs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut at = file.parent();
        while let Some(dir) = at {
            // A noted directory's parents are noted already (and a read, which notes the
            // same directories over and over, allocates nothing).
            if !dir.starts_with(root) || dirs.contains(dir) {
                break;
            }
            dirs.insert(dir.to_path_buf());
            at = dir.parent();
        }
    }

    fn take(&self) -> BTreeSet<PathBuf> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn put_back(&self, dirs: BTreeSet<PathBuf>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(dirs);
    }
}

impl FsStore {
    /// Opens a store at `root`, creating the directory (and `root/tmp/`) if needed. The
    /// store syncs to disk; see [`FsStore::without_sync`].
    ///
    /// Errors: [`FragmentError::Io`] when the directories cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join(TMP_PREFIX))
            .map_err(|e| FragmentError::io("create library directory", &root, e))?;
        Ok(Self {
            sys: Sys::new(root),
            sync: true,
            defer: cfg!(target_os = "linux"),
            reported: Reported::default(),
        })
    }

    /// Turns fsync off (tests and throwaway libraries only: a crash may then lose data).
    pub fn without_sync(mut self) -> Self {
        self.sync = false;
        self
    }

    /// Writes every object through the page cache. By default, on Linux, objects from
    /// 64 KiB to 16 MiB are written past it (`O_DIRECT`, where the file system allows
    /// it): an ingest's objects are not read back soon, and filling the page cache with
    /// them costs CPU time and evicts what programs do read. For a library whose
    /// objects are read right after they are written.
    pub fn page_cache_writes(mut self) -> Self {
        self.sys.uncached = false;
        self
    }

    /// Makes every `put_deferred` durable when it returns, as a `put` (file and
    /// directory fsyncs per object; `flush` then does nothing): the scheme before
    /// batching, kept for comparison and as the power-cut tests' control.
    pub fn sync_each_put(mut self) -> Self {
        self.defer = false;
        self
    }

    /// Records every filesystem change into `journal` (feature `crash-journal`: the
    /// power-cut tests, see [`powercut`]).
    #[cfg(feature = "crash-journal")]
    pub fn with_journal(mut self, journal: std::sync::Arc<journal::Journal>) -> Self {
        self.sys.journal = Some(journal);
        self
    }

    /// Leaves out one durability step (feature `crash-journal`, tests only): the
    /// power-cut harness must find the data this loses.
    #[cfg(feature = "crash-journal")]
    pub fn with_flaw(mut self, flaw: journal::Flaw) -> Self {
        self.sys.flaw = Some(flaw);
        self
    }

    /// The store's directory, as given to [`FsStore::open`].
    pub fn root(&self) -> &Path {
        self.sys.root()
    }

    /// The file holding `key`'s object: where it is stored, or where a put would write
    /// it. For tools and tests that look at a library on disk.
    ///
    /// Errors: [`FragmentError::InvalidInput`] for a key under `fragments-flat/`.
    pub fn object_path(&self, key: &ObjectKey) -> Result<PathBuf> {
        let paths = Paths::of(self.sys.root(), key)?;
        Ok(paths.existing().unwrap_or(paths.main))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Sys, bool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let sys = self.sys.clone();
        let sync = self.sync;
        tokio::task::spawn_blocking(move || f(&sys, sync))
            .await
            .map_err(|e| FragmentError::task_failed("fs store", e))?
    }

    /// Where reads and deferred puts note the directories of the names they report, when
    /// a `flush` is to make those durable.
    fn reported(&self) -> Option<Reported> {
        (self.sync && self.defer).then(|| self.reported.clone())
    }
}

fn not_found(key: &ObjectKey, op: &'static str) -> FragmentError {
    FragmentError::NotFound {
        key: key.to_string(),
        op,
    }
}

fn map_io(key: &ObjectKey, op: &'static str, path: &Path, e: std::io::Error) -> FragmentError {
    if e.kind() == std::io::ErrorKind::NotFound {
        not_found(key, op)
    } else {
        FragmentError::io(op, path, e)
    }
}

/// Where fragment objects are kept, one shard level: see the crate docs.
const FLAT_DIR: &str = "fragments-flat";

/// The files an object may be: where this store writes it, and for a fragment also its
/// key's own path, where stores before the flat layout wrote it.
struct Paths {
    main: PathBuf,
    legacy: Option<PathBuf>,
}

impl Paths {
    fn of(root: &Path, key: &ObjectKey) -> Result<Self> {
        let own = root.join(key.as_str());
        if let Some(id) = key.fragment_id() {
            let hex = id.to_hex();
            let main = root.join(FLAT_DIR).join(&hex[..2]).join(&hex);
            return Ok(Self {
                main,
                legacy: Some(own),
            });
        }
        if key.as_str().split('/').next() == Some(FLAT_DIR) {
            return Err(FragmentError::InvalidInput(format!(
                "key {key}: `{FLAT_DIR}/` is the filesystem store's own directory"
            )));
        }
        Ok(Self {
            main: own,
            legacy: None,
        })
    }

    /// The file that holds the object now, if any (the flat one when both do).
    fn existing(&self) -> Option<PathBuf> {
        std::iter::once(&self.main)
            .chain(&self.legacy)
            .find(|p| p.is_file())
            .cloned()
    }

    /// `read` of the main file or, if that does not exist, of the legacy one.
    fn read<T>(&self, read: impl Fn(&Path) -> std::io::Result<T>) -> (PathBuf, std::io::Result<T>) {
        match (read(&self.main), &self.legacy) {
            (Err(e), Some(legacy)) if e.kind() == std::io::ErrorKind::NotFound => {
                (legacy.clone(), read(legacy))
            }
            (r, _) => (self.main.clone(), r),
        }
    }
}

/// The key a file under the root holds (`rel`: its path from the root, `/`-separated),
/// if it is an object.
fn key_of(rel: &str) -> Option<ObjectKey> {
    let Some(flat) = rel.strip_prefix(FLAT_DIR).and_then(|r| r.strip_prefix('/')) else {
        return ObjectKey::new(rel).ok();
    };
    let (_, hex) = flat.split_once('/')?;
    let key = ObjectKey::fragment(&hex.parse().ok()?);
    // Only the path the store writes for that key: no stray file passes for a fragment.
    (Paths::of(Path::new(""), &key).ok()?.main == Path::new(rel)).then_some(key)
}

fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{}-{nanos}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn sync_dir(sys: &Sys, dir: &Path) -> Result<()> {
    sys.sync_dir(dir)
        .map_err(|e| FragmentError::io("fsync directory", dir, e))
}

/// Writes `key` create-only. The file's bytes are fsynced (with `sync`) before it is
/// published; the directories it changed are fsynced too unless `defer_dirs` (then the
/// next `flush` makes them durable).
fn put_blocking(
    sys: &Sys,
    sync: bool,
    defer_dirs: Option<&Reported>,
    key: &ObjectKey,
    bytes: &[u8],
) -> Result<PutOutcome> {
    let sync_dirs = sync && defer_dirs.is_none();
    let root = sys.root();
    let paths = Paths::of(root, key)?;
    if let Some(existing) = paths.existing() {
        if let Some(reported) = defer_dirs {
            reported.note(root, &existing);
        }
        return Ok(PutOutcome::AlreadyExists);
    }
    let dest = paths.main;
    let parent = dest.parent().unwrap_or(root);
    if !parent.is_dir() {
        let mut first_existing = parent;
        while !first_existing.is_dir() {
            match first_existing.parent() {
                Some(up) => first_existing = up,
                None => break,
            }
        }
        sys.create_dir_all(parent)
            .map_err(|e| FragmentError::io("create directory", parent, e))?;
        if sync_dirs {
            // The new directories' entries must be durable too, or a power cut could
            // lose the object while the manifest naming it (another directory) survives:
            // fsync each directory that gained an entry (usually one, for a new shard).
            let mut dir = parent;
            while let Some(up) = dir.parent() {
                sync_dir(sys, up)?;
                if up == first_existing {
                    break;
                }
                dir = up;
            }
        }
    }
    let tmp = root.join(TMP_PREFIX).join(temp_name());
    if let Err(e) = sys.create_file(&tmp, bytes, sync) {
        let _ = sys.remove_file(&tmp);
        return Err(FragmentError::io("write", &tmp, e));
    }
    // A hard link is an atomic create-only publish: it fails if `dest` exists.
    let outcome = match sys.hard_link(&tmp, &dest) {
        Ok(()) => PutOutcome::Created,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => PutOutcome::AlreadyExists,
        Err(e) => {
            let _ = sys.remove_file(&tmp);
            return Err(FragmentError::io("publish", &dest, e));
        }
    };
    let _ = sys.remove_file(&tmp);
    if sync_dirs && outcome == PutOutcome::Created {
        sync_dir(sys, parent)?;
    }
    if let Some(reported) = defer_dirs {
        // Published here or by a concurrent writer (not durable yet, maybe).
        reported.note(root, &dest);
    }
    Ok(outcome)
}

/// Writes `bytes` to a temporary file and renames it over `key`: readers see the old
/// object or the new one, whole.
fn replace_blocking(sys: &Sys, sync: bool, key: &ObjectKey, bytes: &[u8]) -> Result<()> {
    let root = sys.root();
    // In place: a damaged legacy fragment is replaced where it is.
    let paths = Paths::of(root, key)?;
    let dest = paths.existing().unwrap_or(paths.main);
    let parent = dest.parent().unwrap_or(root);
    sys.create_dir_all(parent)
        .map_err(|e| FragmentError::io("create directory", parent, e))?;
    let tmp = root.join(TMP_PREFIX).join(temp_name());
    let write = || -> std::io::Result<()> {
        sys.create_file(&tmp, bytes, sync)?;
        sys.rename(&tmp, &dest)
    };
    if let Err(e) = write() {
        let _ = sys.remove_file(&tmp);
        return Err(FragmentError::io("replace", &dest, e));
    }
    if sync {
        sync_dir(sys, parent)?;
    }
    Ok(())
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>> {
    // Walk only the deepest directory the prefix names (and, for fragments, the flat
    // directory first, so that a fragment stored both ways is listed as reads find it).
    let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
    let mut starts = Vec::new();
    if let Some(rest) = prefix.strip_prefix(FRAGMENTS_PREFIX) {
        let shard = rest.split_once('/').map_or("", |(aa, _)| aa);
        starts.push(root.join(FLAT_DIR).join(shard));
    } else if FRAGMENTS_PREFIX.starts_with(prefix) {
        starts.push(root.join(FLAT_DIR));
    }
    starts.push(if dir_part.is_empty() {
        root.to_path_buf()
    } else {
        root.join(dir_part)
    });
    let mut out = Vec::new();
    // Only a library with fragments in both layouts can list one twice.
    let mut seen = root
        .join(FRAGMENTS_PREFIX)
        .is_dir()
        .then(std::collections::HashSet::new);
    for start in starts {
        list_dir(root, prefix, start, seen.as_mut(), &mut out)?;
    }
    Ok(out)
}

/// Lists the objects under `start` whose keys begin with `prefix` and, given `seen`, are
/// not in it (adding them).
fn list_dir(
    root: &Path,
    prefix: &str,
    start: PathBuf,
    mut seen: Option<&mut std::collections::HashSet<ObjectKey>>,
    out: &mut Vec<ObjectMeta>,
) -> Result<()> {
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(FragmentError::io("list", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| FragmentError::io("list", &dir, e))?;
            let path = entry.path();
            let ty = entry
                .file_type()
                .map_err(|e| FragmentError::io("stat", &path, e))?;
            if ty.is_dir() {
                // The flat directory is walked only as a start of its own (above).
                if path != root.join(FLAT_DIR) {
                    stack.push(path);
                }
                continue;
            }
            // Files that are not valid keys (editor backups, …) are not objects.
            let Some(rel) = path.strip_prefix(root).ok().and_then(|r| r.to_str()) else {
                continue;
            };
            let Some(key) = key_of(&rel.replace(std::path::MAIN_SEPARATOR, "/")) else {
                continue;
            };
            if !key.as_str().starts_with(prefix)
                || seen.as_mut().is_some_and(|seen| !seen.insert(key.clone()))
            {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted meanwhile
                Err(e) => return Err(FragmentError::io("stat", &path, e)),
            };
            let modified = meta
                .modified()
                .map_err(|e| FragmentError::io("stat", &path, e))?;
            out.push(ObjectMeta {
                key,
                size: meta.len(),
                modified,
            });
        }
    }
    Ok(())
}

#[async_trait]
impl FragmentStore for FsStore {
    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        let key = key.clone();
        self.blocking(move |sys, sync| put_blocking(sys, sync, None, &key, &bytes))
            .await
    }

    async fn put_deferred(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        let key = key.clone();
        let reported = self.reported();
        self.blocking(move |sys, sync| put_blocking(sys, sync, reported.as_ref(), &key, &bytes))
            .await
    }

    async fn flush(&self) -> Result<()> {
        let Some(reported) = self.reported() else {
            return Ok(());
        };
        let dirs = reported.take();
        if dirs.is_empty() {
            return Ok(());
        }
        self.blocking(move |sys, _| {
            let dirs: Vec<PathBuf> = dirs.into_iter().collect();
            sys.sync_dirs(&dirs).map_err(|(dir, e)| {
                reported.put_back(dirs.iter().cloned().collect());
                FragmentError::io("fsync directory", &dir, e)
            })
        })
        .await
    }

    async fn replace(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        let key = key.clone();
        self.blocking(move |sys, sync| replace_blocking(sys, sync, &key, &bytes))
            .await
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let key = key.clone();
        let reported = self.reported();
        self.blocking(move |sys, _| {
            let paths = Paths::of(sys.root(), &key)?;
            // Into a reused buffer with room for the file's size (read to its end, as
            // `fs::read` does: one read, then the one that sees the end). A file larger
            // than a pooled buffer (an object of a large fragment size, or a hostile
            // file) is read as `fs::read` reads it: a failed allocation is an error.
            let read = |path: &Path| -> std::io::Result<Bytes> {
                let mut f = File::open(path)?;
                let len = f.metadata()?.len();
                if len > buffers::KEPT_LEN as u64 {
                    return fs::read(path).map(Bytes::from);
                }
                let mut buf = buffers::OBJECTS.take(len as usize);
                f.read_to_end(&mut buf)?;
                Ok(buffers::OBJECTS.into_bytes(buf))
            };
            let (path, read) = paths.read(read);
            let bytes = read.map_err(|e| map_io(&key, "get", &path, e))?;
            if let Some(reported) = reported {
                reported.note(sys.root(), &path);
            }
            Ok(bytes)
        })
        .await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes> {
        let key = key.clone();
        let reported = self.reported();
        self.blocking(move |sys, _| {
            let paths = Paths::of(sys.root(), &key)?;
            let read = |path: &Path| -> std::io::Result<Vec<u8>> {
                let mut f = File::open(path)?;
                let len = f.metadata()?.len();
                let end = range.end.min(len);
                let start = range.start.min(end);
                f.seek(SeekFrom::Start(start))?;
                let mut buf = Vec::with_capacity((end - start) as usize);
                f.take(end - start).read_to_end(&mut buf)?;
                Ok(buf)
            };
            let (path, read) = paths.read(read);
            let bytes = read.map_err(|e| map_io(&key, "get_range", &path, e))?;
            if let Some(reported) = reported {
                reported.note(sys.root(), &path);
            }
            Ok(Bytes::from(bytes))
        })
        .await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        let key = key.clone();
        let reported = self.reported();
        self.blocking(move |sys, _| {
            let (path, meta) = Paths::of(sys.root(), &key)?.read(|p| fs::metadata(p));
            match meta {
                Ok(m) if m.is_file() => {
                    let modified = m
                        .modified()
                        .map_err(|e| FragmentError::io("stat", &path, e))?;
                    if let Some(reported) = reported {
                        reported.note(sys.root(), &path);
                    }
                    Ok(Some(ObjectMeta {
                        key,
                        size: m.len(),
                        modified,
                    }))
                }
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(FragmentError::io("stat", &path, e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = prefix.to_string();
        self.blocking(move |sys, _| list_blocking(sys.root(), &prefix))
            .await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let key = key.clone();
        self.blocking(move |sys, sync| {
            let paths = Paths::of(sys.root(), &key)?;
            for path in std::iter::once(&paths.main).chain(&paths.legacy) {
                match sys.remove_file(path) {
                    // Durable before it returns: a manifest `rm` deleted must not come
                    // back after a power cut without the fragments a later gc deleted.
                    Ok(()) if sync => sync_dir(sys, path.parent().unwrap_or(sys.root()))?,
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(FragmentError::io("delete", path, e)),
                }
            }
            Ok(())
        })
        .await
    }

    fn location(&self) -> String {
        self.sys.root().display().to_string()
    }
}
