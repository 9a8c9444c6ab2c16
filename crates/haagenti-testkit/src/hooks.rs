//! A [`HookStore`] wraps another [`FragmentStore`] and passes every call to it, counting
//! the calls, and runs the hooks a test installs: a put that fails, a store that stops
//! accepting writes (a full disk), reads cut short, slow reads, and a pause before the
//! `n`th write under a prefix until the test releases it.
//!
//! ```
//! # use std::sync::Arc;
//! # use haagenti_core::MemoryStore;
//! # use haagenti_testkit::hooks::{HookStore, PutFault};
//! let store = HookStore::new(Arc::new(MemoryStore::new()));
//! store.fail_put(3, PutFault::Refuse); // the third put from now fails and writes nothing
//! store.truncate_reads("fragments/", 7); // fragment reads lose their last 7 bytes
//! store.heal(); // back to normal
//! let pause = store.pause_before_put("fragments/", 10); // `pause.paused().await`, `pause.resume()`
//! assert_eq!(store.counts().puts, 0);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use haagenti_core::store::{FragmentStore, ObjectKey, ObjectMeta, PutOutcome};
use haagenti_core::{FragmentError, Result};
use tokio::sync::Notify;

/// How an injected put failure behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutFault {
    /// The put fails and writes nothing (a refused request, a full disk).
    Refuse,
    /// The object is written, then the put reports an error anyway (a timeout after the
    /// server committed, an fsync error after the rename): the caller cannot tell.
    AfterWrite,
}

/// Calls a [`HookStore`] received, by operation, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// `put` calls, failed ones included.
    pub puts: u64,
    /// `get` calls.
    pub gets: u64,
    /// `get_range` calls.
    pub get_ranges: u64,
    /// `head` calls (`exists` is a `head`).
    pub heads: u64,
    /// `list` calls.
    pub lists: u64,
    /// `delete` calls.
    pub deletes: u64,
}

#[derive(Debug, Default)]
struct State {
    counts: OpCounts,
    /// Puts attempted since the last put fault was planned.
    plan_puts: u64,
    /// Fail exactly this put (1-based, counted from the plan change).
    fail_put: Option<(u64, PutFault)>,
    /// Fail every put after this many (a disk that fills up).
    fail_puts_after: Option<u64>,
    /// Reads of keys under this prefix lose this many trailing bytes.
    truncate: Option<(String, usize)>,
    /// The next this-many `get`s of keys under this prefix see one bit flipped.
    flip: Option<(String, u64)>,
    /// `get` waits this long before reading.
    get_delay: Option<Duration>,
    /// `get`s by key since the last [`HookStore::take_gets`].
    gets: HashMap<ObjectKey, u64>,
    /// Every put attempted, in order (key, succeeded).
    put_log: Vec<(ObjectKey, bool)>,
    pause: Option<Arc<Gate>>,
}

/// A [`FragmentStore`] that delegates to another, counts every call and runs the hooks a
/// test installs. Every hook applies from the moment it is installed; [`heal`](Self::heal)
/// removes them all.
pub struct HookStore {
    inner: Arc<dyn FragmentStore>,
    state: Mutex<State>,
}

impl fmt::Debug for HookStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HookStore({:?})", self.inner)
    }
}

impl HookStore {
    /// A store passing every call to `inner`, with no hook installed.
    pub fn new(inner: Arc<dyn FragmentStore>) -> Self {
        Self {
            inner,
            state: Mutex::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn FragmentStore> {
        &self.inner
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is a few plain assignments: a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `n`th put from now (1-based) fails as `fault` says; later puts succeed.
    /// Replaces any earlier put fault.
    pub fn fail_put(&self, n: u64, fault: PutFault) {
        let mut s = self.state();
        s.plan_puts = 0;
        s.fail_put = Some((n, fault));
        s.fail_puts_after = None;
    }

    /// The next `n` puts succeed and every one after them fails, writing nothing (a disk
    /// that fills up). Replaces any earlier put fault.
    pub fn fail_puts_after(&self, n: u64) {
        let mut s = self.state();
        s.plan_puts = 0;
        s.fail_put = None;
        s.fail_puts_after = Some(n);
    }

    /// `get` and `get_range` of keys starting with `prefix` see each object without its
    /// last `cut` bytes (an empty object when it is shorter).
    pub fn truncate_reads(&self, prefix: &str, cut: usize) {
        self.state().truncate = Some((prefix.to_string(), cut));
    }

    /// The next `n` `get`s of keys starting with `prefix` see the object with one bit
    /// flipped in its middle: damage on the way from a network store, gone on the next read.
    pub fn flip_next_gets(&self, prefix: &str, n: u64) {
        self.state().flip = Some((prefix.to_string(), n));
    }

    /// Every `get` waits `delay` before reading (`None`: no wait), so that concurrent
    /// readers overlap.
    pub fn delay_gets(&self, delay: Option<Duration>) {
        self.state().get_delay = delay;
    }

    /// The `n`th put (1-based, counted from now) of a key starting with `prefix` waits,
    /// once every earlier put under `prefix` has finished, until the returned
    /// [`Pause`] is resumed: a test can act while a writer is provably part way through.
    /// Replaces any earlier pause.
    pub fn pause_before_put(&self, prefix: &str, n: u64) -> Pause {
        assert!(n >= 1, "puts are counted from 1");
        let gate = Arc::new(Gate {
            prefix: prefix.to_string(),
            at: n,
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            paused: Notify::new(),
            resume: Notify::new(),
        });
        self.state().pause = Some(gate.clone());
        Pause { gate }
    }

    /// Removes every hook (put faults, truncation, delay, pause: a put already paused
    /// still waits for its resume) and restarts the count of planned puts.
    pub fn heal(&self) {
        let mut s = self.state();
        s.plan_puts = 0;
        s.fail_put = None;
        s.fail_puts_after = None;
        s.truncate = None;
        s.flip = None;
        s.get_delay = None;
        s.pause = None;
    }

    /// Calls received so far, by operation.
    pub fn counts(&self) -> OpCounts {
        self.state().counts
    }

    /// The keys starting with `prefix` read with `get` since the last call, with how many
    /// times each was read. Forgets every counted `get`, under any prefix. (`get_range`,
    /// a header read, is not counted here.)
    pub fn take_gets(&self, prefix: &str) -> HashMap<ObjectKey, u64> {
        std::mem::take(&mut self.state().gets)
            .into_iter()
            .filter(|(k, _)| k.as_str().starts_with(prefix))
            .collect()
    }

    /// Every put attempted so far, in order, with whether it succeeded.
    pub fn put_log(&self) -> Vec<(ObjectKey, bool)> {
        self.state().put_log.clone()
    }

    fn cut_for(&self, key: &ObjectKey) -> Option<usize> {
        let s = self.state();
        let (prefix, cut) = s.truncate.as_ref()?;
        key.as_str().starts_with(prefix.as_str()).then_some(*cut)
    }

    /// The inner store's `get`, truncated if a hook says so.
    async fn read(&self, key: &ObjectKey) -> Result<Bytes> {
        let bytes = self.inner.get(key).await?;
        Ok(match self.cut_for(key) {
            Some(cut) => bytes.slice(..bytes.len().saturating_sub(cut)),
            None => bytes,
        })
    }
}

/// The handle of a pause installed with [`HookStore::pause_before_put`].
#[derive(Clone, Debug)]
pub struct Pause {
    gate: Arc<Gate>,
}

impl Pause {
    /// Returns once the paused put has arrived and every earlier put under the prefix
    /// has finished.
    pub async fn paused(&self) {
        self.gate.paused.notified().await;
    }

    /// Lets the paused put go on (or, called before it arrives, lets it pass at once).
    pub fn resume(&self) {
        self.gate.resume.notify_one();
    }
}

#[derive(Debug)]
struct Gate {
    prefix: String,
    at: u64,
    /// Puts under the prefix started and finished since the pause was installed.
    started: AtomicU64,
    finished: AtomicU64,
    paused: Notify,
    resume: Notify,
}

impl Gate {
    async fn before_put(&self) {
        if self.started.fetch_add(1, Ordering::SeqCst) + 1 != self.at {
            return;
        }
        // Writers put in parallel: put `at - 1` may still be in flight when put `at`
        // arrives. Signal only once every earlier one has finished.
        while self.finished.load(Ordering::SeqCst) < self.at - 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.paused.notify_one();
        self.resume.notified().await;
    }
}

fn injected(key: &ObjectKey, what: &str) -> FragmentError {
    FragmentError::backend(
        "hook",
        "put",
        key.to_string(),
        format!("injected fault: {what}"),
    )
}

#[async_trait]
impl FragmentStore for HookStore {
    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        let (fault, gate) = {
            let mut s = self.state();
            s.counts.puts += 1;
            s.plan_puts += 1;
            let n = s.plan_puts;
            let fault = if s.fail_puts_after.is_some_and(|after| n > after) {
                Some(PutFault::Refuse)
            } else {
                s.fail_put.filter(|(at, _)| *at == n).map(|(_, f)| f)
            };
            let gate = s
                .pause
                .clone()
                .filter(|g| key.as_str().starts_with(g.prefix.as_str()));
            (fault, gate)
        };
        if let Some(gate) = &gate {
            gate.before_put().await;
        }
        let result = match fault {
            None => self.inner.put(key, bytes).await,
            Some(PutFault::Refuse) => Err(injected(key, "write refused")),
            Some(PutFault::AfterWrite) => match self.inner.put(key, bytes).await {
                Ok(_) => Err(injected(key, "error reported after the write")),
                Err(e) => Err(e),
            },
        };
        if let Some(gate) = &gate {
            gate.finished.fetch_add(1, Ordering::SeqCst);
        }
        self.state().put_log.push((key.clone(), result.is_ok()));
        result
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let delay = {
            let mut s = self.state();
            s.counts.gets += 1;
            *s.gets.entry(key.clone()).or_default() += 1;
            s.get_delay
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let bytes = self.read(key).await?;
        let flip = {
            let mut s = self.state();
            match &mut s.flip {
                Some((prefix, n)) if *n > 0 && key.as_str().starts_with(prefix.as_str()) => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        if !flip || bytes.is_empty() {
            return Ok(bytes);
        }
        let mut damaged = bytes.to_vec();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0x10;
        Ok(Bytes::from(damaged))
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes> {
        self.state().counts.get_ranges += 1;
        let mut range = range;
        if let Some(cut) = self.cut_for(key) {
            // The object ends `cut` bytes early: clip the range there.
            if let Some(meta) = self.inner.head(key).await? {
                let end = meta
                    .size
                    .saturating_sub(u64::try_from(cut).unwrap_or(u64::MAX));
                range = range.start.min(end)..range.end.min(end);
            }
        }
        self.inner.get_range(key, range).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        self.state().counts.heads += 1;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.state().counts.lists += 1;
        self.inner.list(prefix).await
    }

    // `put_deferred` keeps its default (this store's `put`, hooks and counts included).
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.state().counts.deletes += 1;
        self.inner.delete(key).await
    }

    async fn replace(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        self.state().counts.puts += 1;
        self.inner.replace(key, bytes).await
    }

    fn location(&self) -> String {
        format!("hook({})", self.inner.location())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haagenti_core::MemoryStore;

    fn key(s: &str) -> ObjectKey {
        ObjectKey::new(s).unwrap()
    }

    #[tokio::test]
    async fn faults_fire_where_planned() {
        let inner = Arc::new(MemoryStore::new());
        let store = HookStore::new(inner.clone());
        store.fail_put(2, PutFault::Refuse);
        assert!(store.put(&key("a"), Bytes::from_static(b"1")).await.is_ok());
        assert!(
            store
                .put(&key("b"), Bytes::from_static(b"2"))
                .await
                .is_err()
        );
        assert!(!inner.exists(&key("b")).await.unwrap());
        assert!(store.put(&key("c"), Bytes::from_static(b"3")).await.is_ok());

        store.fail_put(1, PutFault::AfterWrite);
        assert!(
            store
                .put(&key("d"), Bytes::from_static(b"4"))
                .await
                .is_err()
        );
        assert!(inner.exists(&key("d")).await.unwrap());

        store.fail_puts_after(1);
        assert!(store.put(&key("e"), Bytes::from_static(b"5")).await.is_ok());
        for k in ["f", "g"] {
            assert!(store.put(&key(k), Bytes::from_static(b"6")).await.is_err());
        }
        store.heal();
        assert!(store.put(&key("f"), Bytes::from_static(b"6")).await.is_ok());
        assert_eq!(store.put_log().len(), 8);
        assert_eq!(store.counts().puts, 8);

        store.truncate_reads("a", 1);
        store
            .put(&key("ab"), Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(&store.get(&key("ab")).await.unwrap()[..], b"hell");
        assert_eq!(
            &store.get_range(&key("ab"), 2..10).await.unwrap()[..],
            b"ll"
        );
        assert!(store.get(&key("a")).await.unwrap().is_empty());
        assert_eq!(&store.get(&key("c")).await.unwrap()[..], b"3");
    }

    #[tokio::test]
    async fn calls_are_counted_by_operation_and_key() {
        let store = HookStore::new(Arc::new(MemoryStore::new()));
        for k in ["x/1", "x/2", "y/1"] {
            store.put(&key(k), Bytes::from_static(b"v")).await.unwrap();
        }
        for k in ["x/1", "x/1", "y/1"] {
            store.get(&key(k)).await.unwrap();
        }
        store.get_range(&key("x/2"), 0..1).await.unwrap();
        assert!(store.exists(&key("x/2")).await.unwrap());
        store.list("x/").await.unwrap();
        store.delete(&key("y/1")).await.unwrap();
        let expected = OpCounts {
            puts: 3,
            gets: 3,
            get_ranges: 1,
            heads: 1,
            lists: 1,
            deletes: 1,
        };
        assert_eq!(store.counts(), expected);
        let gets = store.take_gets("x/");
        assert_eq!(gets, HashMap::from([(key("x/1"), 2)]));
        assert!(store.take_gets("").is_empty(), "taking forgets every get");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_put_waits_for_its_resume() {
        let store = Arc::new(HookStore::new(Arc::new(MemoryStore::new())));
        let pause = store.pause_before_put("f/", 2);
        store
            .put(&key("g/0"), Bytes::from_static(b"v"))
            .await
            .unwrap();
        store
            .put(&key("f/1"), Bytes::from_static(b"v"))
            .await
            .unwrap();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move { store.put(&key("f/2"), Bytes::from_static(b"v")).await })
        };
        pause.paused().await;
        assert!(!store.exists(&key("f/2")).await.unwrap());
        pause.resume();
        writer.await.unwrap().unwrap();
        assert!(store.exists(&key("f/2")).await.unwrap());
        // Later puts pass.
        store
            .put(&key("f/3"), Bytes::from_static(b"v"))
            .await
            .unwrap();
    }
}
