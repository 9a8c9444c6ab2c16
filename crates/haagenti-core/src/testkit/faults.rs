//! Fault-injecting store wrappers: a [`FaultyStore`] passes every call to the store it
//! wraps until told to fail a write or to cut reads short.
//!
//! ```
//! # use std::sync::Arc;
//! # use haagenti_core::MemoryStore;
//! # use haagenti_core::testkit::faults::{FaultyStore, PutFault};
//! let store = FaultyStore::new(Arc::new(MemoryStore::new()));
//! store.fail_put(3, PutFault::Refuse); // the third put from now fails and writes nothing
//! store.truncate_reads("fragments/", 7); // fragment reads lose their last 7 bytes
//! store.heal(); // back to normal
//! ```

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{FragmentError, Result};
use crate::store::{FragmentStore, ObjectKey, ObjectMeta, PutOutcome};

/// How an injected put failure behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutFault {
    /// The put fails and writes nothing (a refused request, a full disk).
    Refuse,
    /// The object is written, then the put reports an error anyway (a timeout after the
    /// server committed, an fsync error after the rename): the caller cannot tell.
    AfterWrite,
}

#[derive(Debug, Default)]
struct State {
    /// Puts attempted since the last plan change.
    puts: u64,
    /// Fail exactly this put (1-based, counted from the plan change).
    fail_put: Option<(u64, PutFault)>,
    /// Fail every put after this many succeeded (a disk that fills up).
    fail_puts_after: Option<u64>,
    /// Reads of keys under this prefix lose this many trailing bytes.
    truncate: Option<(String, usize)>,
    /// Every put attempted, in order (key, succeeded).
    put_log: Vec<(ObjectKey, bool)>,
}

/// A [`FragmentStore`] wrapper that injects write failures and truncated reads.
pub struct FaultyStore {
    inner: Arc<dyn FragmentStore>,
    state: Mutex<State>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({:?})", self.inner)
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn FragmentStore>) -> Self {
        Self {
            inner,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a few plain assignments: a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `n`th put from now (1-based) fails as `fault` says; later puts succeed.
    /// Replaces any earlier put fault.
    pub fn fail_put(&self, n: u64, fault: PutFault) {
        let mut s = self.state();
        s.puts = 0;
        s.fail_put = Some((n, fault));
        s.fail_puts_after = None;
    }

    /// The next `n` puts succeed and every one after them fails, writing nothing.
    /// Replaces any earlier put fault.
    pub fn fail_puts_after(&self, n: u64) {
        let mut s = self.state();
        s.puts = 0;
        s.fail_put = None;
        s.fail_puts_after = Some(n);
    }

    /// `get` and `get_range` of keys starting with `prefix` see each object without its
    /// last `cut` bytes (an empty object when it is shorter).
    pub fn truncate_reads(&self, prefix: &str, cut: usize) {
        self.state().truncate = Some((prefix.to_string(), cut));
    }

    /// Removes every fault and resets the put counter.
    pub fn heal(&self) {
        let mut s = self.state();
        s.puts = 0;
        s.fail_put = None;
        s.fail_puts_after = None;
        s.truncate = None;
    }

    /// Puts attempted since the last plan change.
    pub fn puts(&self) -> u64 {
        self.state().puts
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
}

fn injected(key: &ObjectKey, what: &str) -> FragmentError {
    FragmentError::backend(
        "faulty",
        "put",
        key.to_string(),
        format!("injected fault: {what}"),
    )
}

#[async_trait]
impl FragmentStore for FaultyStore {
    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        let fault = {
            let mut s = self.state();
            s.puts += 1;
            let n = s.puts;
            if s.fail_puts_after.is_some_and(|after| n > after) {
                Some(PutFault::Refuse)
            } else {
                s.fail_put.filter(|(at, _)| *at == n).map(|(_, f)| f)
            }
        };
        let result = match fault {
            None => self.inner.put(key, bytes).await,
            Some(PutFault::Refuse) => Err(injected(key, "write refused")),
            Some(PutFault::AfterWrite) => {
                self.inner.put(key, bytes).await?;
                Err(injected(key, "error reported after the write"))
            }
        };
        self.state().put_log.push((key.clone(), result.is_ok()));
        result
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let bytes = self.inner.get(key).await?;
        Ok(match self.cut_for(key) {
            Some(cut) => bytes.slice(..bytes.len().saturating_sub(cut)),
            None => bytes,
        })
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes> {
        if self.cut_for(key).is_none() {
            return self.inner.get_range(key, range).await;
        }
        let all = self.get(key).await?;
        let end = usize::try_from(range.end)
            .unwrap_or(usize::MAX)
            .min(all.len());
        let start = usize::try_from(range.start).unwrap_or(usize::MAX).min(end);
        Ok(all.slice(start..end))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.inner.delete(key).await
    }

    fn location(&self) -> String {
        format!("faulty({})", self.inner.location())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn key(s: &str) -> ObjectKey {
        ObjectKey::new(s).unwrap()
    }

    #[tokio::test]
    async fn faults_fire_where_planned() {
        let inner = Arc::new(MemoryStore::new());
        let store = FaultyStore::new(inner.clone());
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
}
