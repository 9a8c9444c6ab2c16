//! The read-only FUSE filesystem behind `haagenti mount`: the tree of directories and
//! files (plain or Hugging Face cache layout) built from the manifests, and the
//! [`fuser::Filesystem`] that serves it, reading through [`FileReader::read_at`].
//!
//! Inodes: 1 is the root; every other node gets the next number when it first appears
//! and keeps it for the life of the mount (never reused). A model that appears while
//! mounted gets new nodes; a removed model's nodes are detached from their directory.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, Request,
};
use haagenti_core::{FileReader, FragmentError, FragmentLibrary, ModelHandle};

/// How stored models appear under the mount point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `/<model>/<file path>`; `org/name` is directory `org/` holding `name/`.
    Plain,
    /// The Hugging Face hub cache: `models--{org}--{name}/refs/main` (the newest
    /// generation's revision id) and `models--{org}--{name}/snapshots/{revision}/{file
    /// path}` for every stored generation (`ModelManifest::revision_id`).
    Hf,
}

/// The directory a model lives in under the `hf` layout: `models--{org}--{name}`.
pub fn hf_repo_dir(name: &str) -> String {
    format!("models--{}", name.replace('/', "--"))
}

/// Attribute and entry lifetime in the kernel for directories (they change when models
/// come and go) and for files (immutable).
const DIR_TTL: Duration = Duration::from_secs(1);
const FILE_TTL: Duration = Duration::from_secs(60);
/// Listing the library again at most this often from `readdir`/`lookup` hits.
const RELIST_EVERY: Duration = Duration::from_secs(3);

/// One stored generation of a model as mounted.
#[derive(Debug)]
struct Model {
    handle: ModelHandle,
    mtime: SystemTime,
    /// `ModelManifest::revision_id`: its snapshot directory in the `hf` layout.
    revision: String,
}

#[derive(Debug)]
enum Kind {
    Dir {
        children: BTreeMap<OsString, u64>,
        /// Root or a namespace directory: a lookup miss here lists the library again.
        listing: bool,
    },
    /// A file of a model: index into `ModelHandle::files()`.
    File { model: Arc<Model>, index: usize },
    /// Bytes held in memory (`refs/main`).
    Inline(Arc<[u8]>),
}

#[derive(Debug)]
struct Node {
    parent: u64,
    kind: Kind,
    mtime: SystemTime,
}

impl Node {
    fn size(&self) -> u64 {
        match &self.kind {
            Kind::Dir { .. } => 0,
            Kind::File { model, index } => model.handle.files()[*index].size,
            Kind::Inline(bytes) => bytes.len() as u64,
        }
    }

    fn file_type(&self) -> FileType {
        match self.kind {
            Kind::Dir { .. } => FileType::Directory,
            _ => FileType::RegularFile,
        }
    }
}

/// The tree: nodes by inode, and which nodes each mounted model owns.
#[derive(Debug)]
struct Tree {
    nodes: HashMap<u64, Node>,
    next: u64,
    /// Model name → (its generation ids when added, its top node, which its removal
    /// detaches).
    models: HashMap<String, (Vec<String>, u64)>,
}

impl Tree {
    fn new(mtime: SystemTime) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                parent: 1,
                kind: Kind::Dir {
                    children: BTreeMap::new(),
                    listing: true,
                },
                mtime,
            },
        );
        Self {
            nodes,
            next: 2,
            models: HashMap::new(),
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        match &self.nodes.get(&parent)?.kind {
            Kind::Dir { children, .. } => children.get(name).copied(),
            _ => None,
        }
    }

    /// Adds node `kind` as `name` under `parent` (replacing nothing: an existing child of
    /// that name is returned instead when it is a directory and `kind` is one too).
    fn add(&mut self, parent: u64, name: &str, kind: Kind, mtime: SystemTime) -> u64 {
        if let Some(existing) = self.child(parent, OsStr::new(name))
            && matches!(kind, Kind::Dir { .. })
            && matches!(self.nodes[&existing].kind, Kind::Dir { .. })
        {
            return existing;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                kind,
                mtime,
            },
        );
        if let Some(Node {
            kind: Kind::Dir { children, .. },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            children.insert(OsString::from(name), ino);
        }
        ino
    }

    fn dir(&mut self, parent: u64, name: &str, listing: bool, mtime: SystemTime) -> u64 {
        let kind = Kind::Dir {
            children: BTreeMap::new(),
            listing,
        };
        self.add(parent, name, kind, mtime)
    }

    /// Adds a model's nodes for `layout`: `generations` oldest first (not empty); the plain
    /// layout shows only the newest, the `hf` layout a snapshot of each.
    fn insert(&mut self, layout: Layout, generations: Vec<Model>, ids: Vec<String>) {
        let Some(newest) = generations.last() else {
            return;
        };
        let name = newest.handle.name().to_string();
        let mtime = newest.mtime;
        let top = match layout {
            Layout::Plain => {
                let mut parent = 1;
                let parts: Vec<&str> = name.split('/').collect();
                for ns in &parts[..parts.len() - 1] {
                    parent = self.dir(parent, ns, true, mtime);
                }
                let top = self.dir(parent, parts[parts.len() - 1], false, mtime);
                if let Some(model) = generations.into_iter().last() {
                    self.insert_files(top, Arc::new(model));
                }
                top
            }
            Layout::Hf => {
                let top = self.dir(1, &hf_repo_dir(&name), false, mtime);
                let refs = self.dir(top, "refs", false, mtime);
                let bytes: Arc<[u8]> = Arc::from(newest.revision.as_bytes());
                self.add(refs, "main", Kind::Inline(bytes), mtime);
                let snapshots = self.dir(top, "snapshots", false, mtime);
                for model in generations {
                    let snap = self.dir(snapshots, &model.revision, false, model.mtime);
                    self.insert_files(snap, Arc::new(model));
                }
                top
            }
        };
        self.models.insert(name, (ids, top));
    }

    /// Adds the files of one generation under directory `files_dir`.
    fn insert_files(&mut self, files_dir: u64, model: Arc<Model>) {
        let mtime = model.mtime;
        for (index, file) in model.handle.files().iter().enumerate() {
            let parts: Vec<&str> = file.path.split('/').filter(|p| !p.is_empty()).collect();
            let Some((leaf, dirs)) = parts.split_last() else {
                continue;
            };
            let mut parent = files_dir;
            for d in dirs {
                parent = self.dir(parent, d, false, mtime);
            }
            let kind = Kind::File {
                model: model.clone(),
                index,
            };
            self.add(parent, leaf, kind, mtime);
        }
    }

    /// Detaches a model's top node from its directory (open files keep reading).
    fn remove(&mut self, name: &str) {
        let Some((_, top)) = self.models.remove(name) else {
            return;
        };
        let Some(parent) = self.nodes.get(&top).map(|n| n.parent) else {
            return;
        };
        if let Some(Node {
            kind: Kind::Dir { children, .. },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            children.retain(|_, ino| *ino != top);
        }
    }
}

/// The mounted filesystem.
#[derive(Debug)]
pub struct MountFs {
    library: FragmentLibrary,
    runtime: tokio::runtime::Handle,
    layout: Layout,
    /// Only these models (all when empty).
    only: Vec<String>,
    tree: RwLock<Tree>,
    /// When the library was last listed; held while listing (one listing at a time).
    listed: Mutex<Instant>,
    readers: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    /// Models left out because a manifest cannot be read, with the generation ids that
    /// failed: each is logged once, not at every listing.
    unreadable: Mutex<HashMap<String, Vec<String>>>,
}

impl MountFs {
    /// A filesystem over `library`'s models (or only `only`), listed now: a name of
    /// `only` that is not stored is an error.
    pub async fn new(
        library: FragmentLibrary,
        layout: Layout,
        only: Vec<String>,
        uid: u32,
        gid: u32,
    ) -> Result<Self> {
        let stored = library
            .model_generations()
            .await
            .context("listing models")?;
        if let Some(missing) = only.iter().find(|m| !stored.contains_key(*m)) {
            anyhow::bail!("no model {missing:?} in the library");
        }
        let fs = Self {
            library,
            runtime: tokio::runtime::Handle::current(),
            layout,
            only,
            tree: RwLock::new(Tree::new(SystemTime::now())),
            listed: Mutex::new(Instant::now()),
            readers: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid,
            gid,
            unreadable: Mutex::new(HashMap::new()),
        };
        fs.sync(stored).await?;
        Ok(fs)
    }

    /// Number of models mounted.
    pub fn model_count(&self) -> usize {
        self.tree.read().map(|t| t.models.len()).unwrap_or(0)
    }

    /// Brings the tree in line with `stored` (each model's generation ids): opens new
    /// models, re-opens replaced ones (new generation ids), detaches removed ones. Files
    /// already open keep reading the generation they were opened on.
    async fn sync(&self, stored: BTreeMap<String, Vec<String>>) -> Result<()> {
        let wanted: BTreeMap<String, Vec<String>> = stored
            .into_iter()
            .filter(|(m, _)| self.only.is_empty() || self.only.contains(m))
            .collect();
        let known: HashMap<String, Vec<String>> = match self.tree.read() {
            Ok(t) => t
                .models
                .iter()
                .map(|(name, (ids, _))| (name.clone(), ids.clone()))
                .collect(),
            Err(_) => return Ok(()),
        };
        let mut added = Vec::new();
        for (name, ids) in wanted.iter().filter(|(m, ids)| known.get(*m) != Some(ids)) {
            let manifests = match self.library.generations(name).await {
                Ok(manifests) => manifests,
                // Removed between the listing and here: simply not added.
                Err(e) if e.is_not_found() || matches!(e, FragmentError::ModelNotFound(_)) => {
                    continue;
                }
                // Damaged: left out (the other models stay mounted), said once.
                Err(e) => {
                    if let Ok(mut unreadable) = self.unreadable.lock()
                        && unreadable.get(name) != Some(ids)
                    {
                        eprintln!("haagenti mount: model {name} left out: {e}");
                        unreadable.insert(name.clone(), ids.clone());
                    }
                    continue;
                }
            };
            let generations: Vec<Model> = manifests
                .iter()
                .filter_map(|manifest| {
                    let handle = self.library.open_generation(manifest).ok()?;
                    Some(Model {
                        handle,
                        mtime: UNIX_EPOCH + Duration::from_millis(manifest.created_unix_ms),
                        revision: manifest.revision_id(),
                    })
                })
                .collect();
            added.push((name.clone(), generations, ids.clone()));
        }
        if let Ok(mut tree) = self.tree.write() {
            for name in known.keys().filter(|m| !wanted.contains_key(*m)) {
                tree.remove(name);
            }
            for (name, generations, ids) in added {
                tree.remove(&name); // a replaced model: its old nodes go
                tree.insert(self.layout, generations, ids);
            }
        }
        Ok(())
    }

    /// Lists the library again when `force` or when the last listing is older than
    /// [`RELIST_EVERY`]. Runs on a FUSE thread (never a runtime thread), so it blocks on
    /// the runtime.
    fn relist(&self, force: bool) {
        let Ok(mut listed) = self.listed.lock() else {
            return;
        };
        if !force && listed.elapsed() < RELIST_EVERY {
            return;
        }
        let result = self.runtime.block_on(async {
            let stored = self.library.model_generations().await?;
            self.sync(stored).await
        });
        if let Err(e) = result {
            eprintln!("haagenti mount: listing models: {e:#}");
        }
        *listed = Instant::now();
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let size = node.size();
        let (perm, nlink) = match node.kind {
            Kind::Dir { .. } => (0o555, 2),
            _ => (0o444, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind: node.file_type(),
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    fn ttl(node: &Node) -> Duration {
        match node.kind {
            Kind::Dir { .. } => DIR_TTL,
            _ => FILE_TTL,
        }
    }

    /// `(attr, ttl)` of `name` under `parent`, if it exists.
    fn find(&self, parent: u64, name: &OsStr) -> Option<(FileAttr, Duration)> {
        let tree = self.tree.read().ok()?;
        let ino = tree.child(parent, name)?;
        let node = tree.nodes.get(&ino)?;
        Some((self.attr(ino, node), Self::ttl(node)))
    }

    fn is_listing(&self, ino: u64) -> bool {
        self.tree.read().is_ok_and(|t| {
            matches!(
                t.nodes.get(&ino),
                Some(Node {
                    kind: Kind::Dir { listing: true, .. },
                    ..
                })
            )
        })
    }
}

thread_local! {
    /// Where a reply spanning several fragments is assembled: reused, so that a 1 MiB
    /// read does not cost a fresh (page-faulting) allocation.
    static JOIN_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Replies with the concatenation of `parts` (one part: no copy).
fn reply_joined<B: AsRef<[u8]>>(reply: ReplyData, parts: &[B]) {
    match parts {
        [] => reply.data(&[]),
        [one] => reply.data(one.as_ref()),
        _ => JOIN_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            buffer.clear();
            for part in parts {
                buffer.extend_from_slice(part.as_ref());
            }
            reply.data(&buffer);
        }),
    }
}

/// Largest read the kernel sends in one request once `max_pages` allows it (the default is
/// 128 KiB): fewer round trips per fragment for big sequential reads.
const MAX_REQUEST: u32 = 1 << 20;

impl Filesystem for MountFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // The kernel sizes read requests by `max_pages`, which fuser derives from the
        // larger of max_write and max_readahead; nothing is ever written here.
        let _ = config.set_max_write(MAX_REQUEST);
        if let Err(max) = config.set_max_readahead(MAX_REQUEST) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = parent.0;
        if self.is_listing(parent) {
            self.relist(false);
        }
        let mut found = self.find(parent, name);
        if found.is_none() && self.is_listing(parent) {
            // A model ingested since the last listing: look again, now.
            self.relist(true);
            found = self.find(parent, name);
        }
        match found {
            Some((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let Ok(tree) = self.tree.read() else {
            return reply.error(Errno::EIO);
        };
        match tree.nodes.get(&ino.0) {
            Some(node) => reply.attr(&Self::ttl(node), &self.attr(ino.0, node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let reader = {
            let Ok(tree) = self.tree.read() else {
                return reply.error(Errno::EIO);
            };
            match tree.nodes.get(&ino.0).map(|n| &n.kind) {
                None => return reply.error(Errno::ENOENT),
                Some(Kind::Dir { .. }) => return reply.error(Errno::EISDIR),
                Some(Kind::Inline(_)) => None,
                Some(Kind::File { model, index }) => {
                    let path = &model.handle.files()[*index].path;
                    match model.handle.file_read_once(path) {
                        Ok(reader) => Some(OpenFile {
                            model: model.handle.name().to_string(),
                            reader,
                        }),
                        Err(e) => {
                            eprintln!(
                                "haagenti mount: opening {path} of model {}: {e}",
                                model.handle.name()
                            );
                            return reply.error(Errno::EIO);
                        }
                    }
                }
            }
        };
        let fh = match reader {
            Some(reader) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut readers) = self.readers.lock() {
                    readers.insert(fh, Arc::new(reader));
                }
                fh
            }
            None => 0,
        };
        // The files are immutable: the kernel keeps their pages across opens.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let reader = self.readers.lock().ok().and_then(|r| r.get(&fh.0).cloned());
        let Some(open) = reader else {
            // An in-memory file (`refs/main`).
            let Ok(tree) = self.tree.read() else {
                return reply.error(Errno::EIO);
            };
            return match tree.nodes.get(&ino.0).map(|n| &n.kind) {
                Some(Kind::Inline(bytes)) => {
                    let start = (offset as usize).min(bytes.len());
                    let end = start.saturating_add(size as usize).min(bytes.len());
                    reply.data(&bytes[start..end]);
                }
                _ => reply.error(Errno::EBADF),
            };
        };
        let len = u64::from(size).min(open.reader.len().saturating_sub(offset));
        let started = {
            let _runtime = self.runtime.enter();
            open.reader.start_read(offset, len)
        };
        match started {
            // Bytes read ahead already: answered from this thread, with no hand-off.
            Ok(read) => match read.ready() {
                Some(parts) => open.reply(reply, offset, len, parts),
                // Waited for on the runtime, so that concurrent readers proceed in parallel.
                None => {
                    self.runtime.spawn(async move {
                        let parts = read.finish().await;
                        open.reply(reply, offset, len, parts);
                    });
                }
            },
            Err(e) => open.reply(reply, offset, len, Err(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut readers) = self.readers.lock() {
            readers.remove(&fh.0);
        }
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if offset == 0 && self.is_listing(ino.0) {
            self.relist(false);
        }
        let Ok(tree) = self.tree.read() else {
            return reply.error(Errno::EIO);
        };
        let Some(node) = tree.nodes.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Kind::Dir { children, .. } = &node.kind else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut entries: Vec<(u64, FileType, &OsStr)> = vec![
            (ino.0, FileType::Directory, OsStr::new(".")),
            (node.parent, FileType::Directory, OsStr::new("..")),
        ];
        for (name, child) in children {
            if let Some(c) = tree.nodes.get(child) {
                entries.push((*child, c.file_type(), name.as_os_str()));
            }
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree.read().map(|t| t.nodes.len() as u64).unwrap_or(0);
        reply.statfs(0, 0, 0, files, 0, 1 << 20, 255, 1 << 20);
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }
}

/// An open file: one reader per handle, so that its sequential read-ahead follows this
/// handle's reads.
#[derive(Debug)]
struct OpenFile {
    model: String,
    reader: FileReader,
}

impl OpenFile {
    /// Answers a read of `offset..offset + len` with its bytes, or with `EIO` and a log
    /// line naming the model, file and range.
    fn reply(
        &self,
        reply: ReplyData,
        offset: u64,
        len: u64,
        parts: Result<Vec<Bytes>, FragmentError>,
    ) {
        match parts {
            Ok(parts) => reply_joined(reply, &parts),
            Err(e) => {
                eprintln!(
                    "haagenti mount: EIO reading model {} file {} at {offset} (+{len}): {e}",
                    self.model,
                    self.reader.file().path
                );
                reply.error(Errno::EIO);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_repo_dir_is_the_hub_cache_name() {
        assert_eq!(hf_repo_dir("org/model"), "models--org--model");
        assert_eq!(hf_repo_dir("gpt2"), "models--gpt2");
    }
}
