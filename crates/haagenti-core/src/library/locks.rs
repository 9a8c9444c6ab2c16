//! The lock objects that keep `gc` from racing an ingest.
//!
//! Locks are ordinary create-only objects under `locks/`. An ingest writes an `ingest`
//! lock and then lists the locks; `gc` writes a `gc` lock and then lists. Each side writes
//! before it looks, so of two that overlap at least one sees the other: an ingest that
//! sees a `gc` lock backs off and retries, a `gc` that sees an ingest lock gives up.
//! Live locks are refreshed every [`LOCK_REFRESH`]; one older than [`LOCK_STALE`] is left
//! by a dead process and ignored.
//!
//! A lock object also names its owner (see [`LockOwner`]): a conflicting lock whose owner
//! runs on this machine, in this PID namespace, and is no longer alive was left by a
//! killed process; it is deleted at once instead of blocking for [`LOCK_STALE`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::FragmentLibrary;
use crate::error::{FragmentError, Result};
use crate::store::{FragmentStore, LOCKS_PREFIX, ObjectKey};

pub(super) const LOCK_REFRESH: Duration = Duration::from_secs(60);
pub(super) const LOCK_STALE: Duration = Duration::from_secs(300);
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LockKind {
    Ingest,
    Gc,
}

impl LockKind {
    fn as_str(self) -> &'static str {
        match self {
            LockKind::Ingest => "ingest",
            LockKind::Gc => "gc",
        }
    }
}

/// A held lock; refreshed in the background until released.
pub(super) struct LockGuard {
    store: Arc<dyn FragmentStore>,
    current: Arc<tokio::sync::Mutex<ObjectKey>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    pub(super) async fn release(self) {
        self.refresher.abort();
        let key = self.current.lock().await.clone();
        // A lock that cannot be deleted goes stale and is ignored after LOCK_STALE.
        let _ = self.store.delete(&key).await;
    }
}

fn unique_lock_key(kind: LockKind) -> Result<ObjectKey> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let salt = blake3::hash(
        format!(
            "{nanos}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .as_bytes(),
    );
    ObjectKey::new(format!(
        "{LOCKS_PREFIX}{}-{nanos:020}-{}",
        kind.as_str(),
        &salt.to_hex()[..12]
    ))
}

impl FragmentLibrary {
    /// Takes a lock of `kind`, waiting (ingest) or failing (gc) while the other kind is held.
    pub(super) async fn acquire_lock(&self, kind: LockKind) -> Result<LockGuard> {
        let store = self.store().clone();
        let mut attempts = 0u32;
        loop {
            let key = unique_lock_key(kind)?;
            if let Err(e) = store.put(&key, lock_contents()).await {
                // The put may have written the lock before failing: a lock left behind
                // by this live process would block gc until it goes stale.
                let _ = store.delete(&key).await;
                return Err(e);
            }
            let now = SystemTime::now();
            let candidates: Vec<ObjectKey> = store
                .list(LOCKS_PREFIX)
                .await?
                .into_iter()
                .filter(|m| m.key != key)
                .filter(|m| now.duration_since(m.modified).unwrap_or_default() < LOCK_STALE)
                .filter(|m| match kind {
                    LockKind::Ingest => m.key.as_str().starts_with("locks/gc-"),
                    LockKind::Gc => {
                        m.key.as_str().starts_with("locks/ingest-")
                            || m.key.as_str().starts_with("locks/gc-")
                    }
                })
                .map(|m| m.key)
                .collect();
            let mut blockers = Vec::with_capacity(candidates.len());
            for other in candidates {
                match store.get(&other).await {
                    Ok(contents) if LockOwner::parse(&contents).is_some_and(|o| o.is_dead()) => {
                        store.delete(&other).await?;
                    }
                    Err(e) if e.is_not_found() => {} // released meanwhile
                    _ => blockers.push(other),
                }
            }
            if blockers.is_empty() {
                let current = Arc::new(tokio::sync::Mutex::new(key));
                let refresher = tokio::spawn(refresh_lock(store.clone(), current.clone(), kind));
                return Ok(LockGuard {
                    store,
                    current,
                    refresher,
                });
            }
            store.delete(&key).await?;
            attempts += 1;
            if kind == LockKind::Gc || attempts >= 600 {
                return Err(FragmentError::Locked {
                    op: if kind == LockKind::Gc { "gc" } else { "ingest" },
                    key: blockers[0].to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Keeps a lock fresh: writes a new lock object, then deletes the previous one.
async fn refresh_lock(
    store: Arc<dyn FragmentStore>,
    current: Arc<tokio::sync::Mutex<ObjectKey>>,
    kind: LockKind,
) {
    loop {
        tokio::time::sleep(LOCK_REFRESH).await;
        let Ok(next) = unique_lock_key(kind) else {
            continue;
        };
        if store.put(&next, lock_contents()).await.is_ok() {
            let old = std::mem::replace(&mut *current.lock().await, next);
            let _ = store.delete(&old).await;
        }
    }
}

/// Who wrote a lock object: enough to tell, on the same machine, whether that process
/// still runs. Lock objects are text: a first line `haagenti lock`, then `name=value` lines
/// (`host`, `boot`, `pidns`, `pid`, `start`); unknown lines are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LockOwner {
    /// The kernel's boot id: equal only on the same machine since its last boot.
    boot: String,
    /// The PID namespace (`pid:[inode]`): PIDs mean the same process only inside it.
    pidns: String,
    pid: u32,
    /// Start time of the process in clock ticks since boot: tells a reused PID apart.
    start: u64,
}

impl LockOwner {
    /// This process, where the system tells (Linux `/proc`); `None` elsewhere.
    fn current() -> Option<&'static LockOwner> {
        static CURRENT: std::sync::OnceLock<Option<LockOwner>> = std::sync::OnceLock::new();
        CURRENT
            .get_or_init(|| {
                let pid = std::process::id();
                Some(LockOwner {
                    boot: read_trimmed("/proc/sys/kernel/random/boot_id")?,
                    pidns: std::fs::read_link("/proc/self/ns/pid")
                        .ok()?
                        .to_str()?
                        .to_string(),
                    pid,
                    start: process_start(pid)?.0,
                })
            })
            .as_ref()
    }

    fn parse(contents: &[u8]) -> Option<LockOwner> {
        let text = std::str::from_utf8(contents).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(LockOwner {
            boot: field("boot")?,
            pidns: field("pidns")?,
            pid: field("pid")?.parse().ok()?,
            start: field("start")?.parse().ok()?,
        })
    }

    /// True only when the owner provably no longer runs: same boot and PID namespace as
    /// this process, and its PID is gone, a zombie, or now names a process started later.
    fn is_dead(&self) -> bool {
        let Some(me) = Self::current() else {
            return false;
        };
        if self.boot != me.boot || self.pidns != me.pidns {
            return false;
        }
        match process_start(self.pid) {
            None => !std::path::Path::new(&format!("/proc/{}", self.pid)).exists(),
            Some((start, state)) => start != self.start || matches!(state, 'Z' | 'X'),
        }
    }
}

/// The contents of a new lock object.
/// Whether `contents` is a lock object (its first line); anything else under `locks/` is
/// damage.
pub(super) fn is_lock_object(contents: &[u8]) -> bool {
    contents.starts_with(b"haagenti lock\n")
}

fn lock_contents() -> Bytes {
    let mut text = String::from("haagenti lock\n");
    if let Some(me) = LockOwner::current() {
        let host = read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default();
        text.push_str(&format!(
            "host={host}\nboot={}\npidns={}\npid={}\nstart={}\n",
            me.boot, me.pidns, me.pid, me.start
        ));
    }
    Bytes::from(text)
}

fn read_trimmed(path: &str) -> Option<String> {
    Some(std::fs::read_to_string(path).ok()?.trim().to_string())
}

/// Start time (clock ticks after boot) and state of a process, from `/proc/PID/stat`.
fn process_start(pid: u32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last
    // ')' are state (3) .. starttime (22).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_owners_are_recorded_and_judged() {
        let contents = lock_contents();
        assert!(contents.starts_with(b"haagenti lock\n"));
        let Some(me) = LockOwner::current() else {
            // No /proc: owners are not recorded and locks go stale by age only.
            assert!(LockOwner::parse(&contents).is_none());
            return;
        };
        let parsed = LockOwner::parse(&contents).unwrap();
        assert_eq!(&parsed, me);
        assert!(!parsed.is_dead(), "this process is alive");

        // The same PID started at another time: the PID was reused.
        let reused = LockOwner {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(reused.is_dead());
        // A PID above any pid_max.
        let gone = LockOwner {
            pid: 1 << 30,
            ..me.clone()
        };
        assert!(gone.is_dead());
        // Another machine or PID namespace: cannot tell, so never dead.
        for other in [
            LockOwner {
                boot: "another-boot".into(),
                ..gone.clone()
            },
            LockOwner {
                pidns: "pid:[1]".into(),
                ..gone.clone()
            },
        ] {
            assert!(!other.is_dead());
        }
        // Old lock objects carry no owner.
        assert!(LockOwner::parse(b"haagenti lock\n").is_none());
    }
}
