//! The operation journal (feature `crash-journal`, tests only): what the store did to the
//! filesystem, in the order it happened, so that `powercut` can rebuild every state a
//! power cut could leave.
//!
//! An operation is appended once it returned; an fsync records the journal length when
//! it *started*, since only what was done before that is covered by it.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// One filesystem operation of the store. Paths are relative to the store's root,
/// `/`-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new file (`open(O_CREAT|O_TRUNC)` then one write of `bytes`).
    Create {
        /// The file.
        path: String,
        /// Everything written to it.
        bytes: Bytes,
    },
    /// A new directory.
    Mkdir {
        /// The directory.
        path: String,
    },
    /// A hard link: `to` names the file `from` names.
    Link {
        /// The existing name.
        from: String,
        /// The new name.
        to: String,
    },
    /// `from` renamed over `to`.
    Rename {
        /// The old name.
        from: String,
        /// The new name (replaced if it existed).
        to: String,
    },
    /// A name removed.
    Unlink {
        /// The removed name.
        path: String,
    },
    /// An fsync of a file (its bytes) or of a directory (its entries) that returned.
    Fsync {
        /// What was synced.
        path: String,
        /// Whether `path` is a directory.
        dir: bool,
        /// The journal length when the fsync started: it covers operations `0..covers`.
        covers: usize,
    },
    /// A `syncfs` of the store's filesystem that returned: every change before
    /// `covers` is durable.
    Syncfs {
        /// The journal length when it started: it covers operations `0..covers`.
        covers: usize,
    },
    /// A label the test recorded between operations (e.g. "ingest of m returned").
    Mark(String),
}

/// An append-only list of [`Op`]s, shared by a store and the test that reads it.
#[derive(Debug, Default)]
pub struct Journal {
    ops: Mutex<Vec<Op>>,
}

impl Journal {
    /// An empty journal, ready to attach with `FsStore::with_journal`.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records a label between operations (what the test knows has completed).
    pub fn mark(&self, label: impl Into<String>) {
        self.push(Op::Mark(label.into()));
    }

    /// Every operation so far, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }

    pub(crate) fn push(&self, op: Op) {
        self.lock().push(op);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        // A panic while holding the lock cannot leave the Vec half-updated.
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A durability step to leave out, to show that the power-cut harness catches it
/// (test-only: a store with a flaw loses data in a power cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    /// Never fsync a directory (new names may vanish).
    NoDirSync,
    /// Never fsync a file before publishing it (published files may be empty).
    NoFileSync,
    /// `flush` does nothing (the names of deferred puts may vanish).
    NoFlush,
}
