//! Power-cut states (feature `crash-journal`, tests only), in the manner of ALICE and
//! CrashMonkey: from a store directory as it was before a run ([`Snapshot`]) and the
//! [`Journal`](crate::journal::Journal) of what the run did, [`crash_states`] builds the
//! directories a power cut could leave at every **durability point** (just before each
//! fsync or syncfs, and after the last operation).
//!
//! The model is POSIX's, not one filesystem's:
//!
//! * a directory entry change (new file, mkdir, link, rename's new and old name, unlink)
//!   is durable once an fsync of its parent directory that started after it returned;
//! * a file's bytes are durable once an fsync of that file that started after the write
//!   returned; until then the file may be present with only a prefix of them (or none);
//! * a `syncfs` makes every change that returned before it started durable;
//! * anything not yet durable may independently have reached the disk or not, in any
//!   order: each state keeps a subset of those changes (all, none, and seeded random
//!   ones, each change kept with probability 1/2, 7/8 or 1/8), applied in program order. An entry in a directory whose own entry was lost is
//!   lost with it.
//!
//! The directory before the run is taken as durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::Path;

use bytes::Bytes;

use crate::journal::Op;

/// A store directory's files and directories, read into memory (small test libraries).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    dirs: BTreeSet<String>,
    files: BTreeMap<String, Bytes>,
}

impl Snapshot {
    /// Reads every file and directory under `root`.
    pub fn take(root: &Path) -> io::Result<Self> {
        let mut snap = Self::default();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            for entry in std::fs::read_dir(root.join(&rel))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if entry.file_type()?.is_dir() {
                    snap.dirs.insert(path.clone());
                    stack.push(path);
                } else {
                    snap.files
                        .insert(path, Bytes::from(std::fs::read(entry.path())?));
                }
            }
        }
        Ok(snap)
    }
}

/// One directory a power cut could leave.
#[derive(Clone, Debug)]
pub struct CrashState {
    /// Which durability point (0-based, in journal order).
    pub point: usize,
    /// How the not-yet-durable changes were chosen, and where the cut fell.
    pub label: String,
    /// The [`Op::Mark`] labels recorded before the cut: what the test knows completed.
    pub marks: Vec<String>,
    /// Equal for two states with the same directories, files and marks (states repeat
    /// across points: a caller checks each once).
    pub key: u64,
    dirs: BTreeSet<String>,
    files: BTreeMap<String, Bytes>,
}

impl CrashState {
    /// Writes the state into the empty (or missing) directory `dir`.
    pub fn materialize(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        // Sorted, so every directory comes after its parent.
        for d in &self.dirs {
            std::fs::create_dir_all(dir.join(d))?;
        }
        for (path, bytes) in &self.files {
            std::fs::write(dir.join(path), bytes)?;
        }
        Ok(())
    }

    /// The bytes of the file at `path` in this state, if one is there.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(|b| &b[..])
    }

    /// Whether the directory `path` exists in this state.
    pub fn has_dir(&self, path: &str) -> bool {
        self.dirs.contains(path)
    }
}

/// What [`crash_states`] built.
#[derive(Clone, Debug)]
pub struct CrashStates {
    /// The durability points: fsyncs in the journal, plus its end.
    pub points: usize,
    /// The states, point by point (identical ones at one point are built once).
    pub states: Vec<CrashState>,
}

/// How the changes that were not durable at a cut are chosen.
#[derive(Clone, Copy, Debug)]
enum Choice {
    AllKept,
    AllLost,
    /// Each pending change kept with probability `keep / 8`, from the seed.
    Random {
        seed: u64,
        keep: u64,
    },
}

/// The states a power cut could leave at every durability point of `ops` run on
/// `before`: at each, all pending changes lost, all kept, and `random` seeded subsets.
///
/// Errors: a journal that names a file it never created (not a journal of one store).
pub fn crash_states(
    before: &Snapshot,
    ops: &[Op],
    random: usize,
    seed: u64,
) -> io::Result<CrashStates> {
    let replay = Replay::new(before, ops)?;
    let cuts: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(op, Op::Fsync { .. } | Op::Syncfs { .. }))
        .map(|(i, _)| i)
        .chain([ops.len()])
        .collect();
    let mut states = Vec::new();
    for (point, &cut) in cuts.iter().enumerate() {
        let mut seen = HashSet::new();
        let choices = [Choice::AllLost, Choice::AllKept]
            .into_iter()
            .chain((0..random as u64).map(|r| Choice::Random {
                seed: mix(seed ^ mix(cut as u64) ^ r),
                // Half, then mostly kept (one change lost among many), then mostly lost.
                keep: [4, 7, 1][r as usize % 3],
            }));
        for choice in choices {
            let (state, key) = replay.state(cut, choice);
            if seen.insert(key) {
                let at = match ops.get(cut) {
                    Some(Op::Fsync { path, dir, .. }) => {
                        format!(
                            "before fsync of {} {path:?}",
                            if *dir { "dir" } else { "file" }
                        )
                    }
                    Some(Op::Syncfs { .. }) => "before syncfs".to_string(),
                    _ => "after the last operation".to_string(),
                };
                states.push(CrashState {
                    point,
                    key,
                    label: format!("point {point}/{} (op {cut}, {at}), {choice:?}", cuts.len()),
                    ..state
                });
            }
        }
    }
    Ok(CrashStates {
        points: cuts.len(),
        states,
    })
}

/// The journal resolved to inodes: which file each name and each fsync meant.
struct Replay<'a> {
    before: &'a Snapshot,
    ops: &'a [Op],
    /// Contents of every inode: the snapshot's files first, then one per `Create`.
    inodes: Vec<Bytes>,
    /// Per op: the inode it created, linked, renamed or fsynced.
    inode_of: Vec<Option<usize>>,
}

impl<'a> Replay<'a> {
    fn new(before: &'a Snapshot, ops: &'a [Op]) -> io::Result<Self> {
        let mut inodes: Vec<Bytes> = before.files.values().cloned().collect();
        let mut names: HashMap<&str, usize> = before
            .files
            .keys()
            .enumerate()
            .map(|(i, p)| (p.as_str(), i))
            .collect();
        let unknown = |p: &str| io::Error::other(format!("journal names unknown file {p:?}"));
        let mut inode_of = Vec::with_capacity(ops.len());
        for op in ops {
            inode_of.push(match op {
                Op::Create { path, bytes } => {
                    inodes.push(bytes.clone());
                    names.insert(path, inodes.len() - 1);
                    Some(inodes.len() - 1)
                }
                Op::Link { from, to } => {
                    let inode = *names.get(from.as_str()).ok_or_else(|| unknown(from))?;
                    names.insert(to, inode);
                    Some(inode)
                }
                Op::Rename { from, to } => {
                    let inode = names.remove(from.as_str()).ok_or_else(|| unknown(from))?;
                    names.insert(to, inode);
                    Some(inode)
                }
                Op::Unlink { path } => {
                    names.remove(path.as_str());
                    None
                }
                Op::Fsync {
                    path, dir: false, ..
                } => Some(*names.get(path.as_str()).ok_or_else(|| unknown(path))?),
                Op::Mkdir { .. } | Op::Fsync { .. } | Op::Syncfs { .. } | Op::Mark(_) => None,
            });
        }
        Ok(Self {
            before,
            ops,
            inodes,
            inode_of,
        })
    }

    /// The state after a cut just before op `cut`, and a key identifying it.
    fn state(&self, cut: usize, choice: Choice) -> (CrashState, u64) {
        let ops = &self.ops[..cut];
        // What completed fsyncs made durable: a directory's entries and a file's bytes
        // changed by ops before `covers`.
        let mut dir_durable: HashMap<&str, usize> = HashMap::new();
        let mut data_durable: HashMap<usize, usize> = HashMap::new();
        // Every change before this is durable (a syncfs covered it).
        let mut all_durable = 0;
        for (i, op) in ops.iter().enumerate() {
            if let Op::Syncfs { covers } = op {
                all_durable = all_durable.max(*covers);
            }
            if let Op::Fsync { path, dir, covers } = op {
                if *dir {
                    let c = dir_durable.entry(path.as_str()).or_default();
                    *c = (*c).max(*covers);
                } else if let Some(inode) = self.inode_of[i] {
                    let c = data_durable.entry(inode).or_default();
                    *c = (*c).max(*covers);
                }
            }
        }
        let entry_durable = |i: usize, path: &str| {
            i < all_durable || dir_durable.get(parent(path)).is_some_and(|&c| c > i)
        };
        let mut chooser = Chooser { choice };
        let mut dirs = self.before.dirs.clone();
        let mut names: BTreeMap<String, usize> = self
            .before
            .files
            .keys()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        let mut len_of: HashMap<usize, usize> = HashMap::new();
        let mut marks = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let inode = self.inode_of[i];
            let mut add = |dirs: &BTreeSet<String>, path: &str, inode: Option<usize>| {
                let p = parent(path);
                if let Some(inode) = inode
                    && (p.is_empty() || dirs.contains(p))
                {
                    names.insert(path.to_string(), inode);
                }
            };
            match op {
                Op::Create { path, bytes } => {
                    let data = i < all_durable
                        || data_durable
                            .get(&inode.unwrap_or(usize::MAX))
                            .is_some_and(|&c| c > i);
                    if !chooser.kept(data)
                        && let Some(inode) = inode
                    {
                        len_of.insert(inode, chooser.prefix(bytes.len()));
                    }
                    if chooser.kept(entry_durable(i, path)) {
                        add(&dirs, path, inode);
                    }
                }
                Op::Link { to, .. } => {
                    if chooser.kept(entry_durable(i, to)) {
                        add(&dirs, to, inode);
                    }
                }
                Op::Rename { from, to } => {
                    if chooser.kept(entry_durable(i, to)) {
                        add(&dirs, to, inode);
                    }
                    if chooser.kept(entry_durable(i, from)) {
                        names.remove(from);
                    }
                }
                Op::Unlink { path } => {
                    if chooser.kept(entry_durable(i, path)) {
                        names.remove(path);
                    }
                }
                Op::Mkdir { path } => {
                    let p = parent(path);
                    if chooser.kept(entry_durable(i, path)) && (p.is_empty() || dirs.contains(p)) {
                        dirs.insert(path.clone());
                    }
                }
                Op::Mark(label) => marks.push(label.clone()),
                Op::Fsync { .. } | Op::Syncfs { .. } => {}
            }
        }
        let mut key = std::collections::hash_map::DefaultHasher::new();
        (&dirs, marks.len()).hash(&mut key);
        let files = names
            .into_iter()
            .map(|(path, inode)| {
                let bytes = &self.inodes[inode];
                let bytes = match len_of.get(&inode) {
                    Some(&len) => bytes.slice(..len.min(bytes.len())),
                    None => bytes.clone(),
                };
                (&path, inode, bytes.len()).hash(&mut key);
                (path, bytes)
            })
            .collect();
        let state = CrashState {
            point: 0,
            key: 0,
            label: String::new(),
            marks,
            dirs,
            files,
        };
        (state, key.finish())
    }
}

/// Decides, change by change, what reached the disk.
struct Chooser {
    choice: Choice,
}

impl Chooser {
    /// Whether a change reached the disk: always when durable, else as chosen.
    fn kept(&mut self, durable: bool) -> bool {
        durable
            || match &mut self.choice {
                Choice::AllKept => true,
                Choice::AllLost => false,
                Choice::Random { seed, keep } => {
                    *seed = mix(*seed);
                    *seed % 8 < *keep
                }
            }
    }

    /// How much of a file of `len` bytes whose data was lost survives: nothing, or
    /// (random choices) half the time a prefix.
    fn prefix(&mut self, len: usize) -> usize {
        match &mut self.choice {
            Choice::Random { seed: s, .. } => {
                *s = mix(*s);
                if *s & 1 == 0 {
                    0
                } else {
                    (*s >> 1) as usize % len.max(1)
                }
            }
            _ => 0,
        }
    }
}

/// The parent directory of a `/`-separated relative path ("" for the root).
fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// SplitMix64's finalizer: a seeded, platform-independent stream without a dependency.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
