//! The library's fragment cache and read metrics.
//!
//! Every clone of a [`FragmentLibrary`] (and every [`ModelHandle`](super::ModelHandle) it
//! opens) shares one cache of *decoded, verified* fragments, weighted by their length, so
//! a fragment used by several models is fetched and decoded once while it stays cached,
//! and every reader gets the same [`Bytes`] without a copy.
//!
//! The cache is off (a budget of 0) unless [`FragmentLibrary::with_cache_bytes`] turns it
//! on: by default every read goes to the store and is verified there, and memory stays
//! what the caller holds. Concurrent reads of one fragment share one fetch either way.
//!
//! Policy: plain LRU. Reads of a model are scans, and a fragment fetched ahead of its
//! reader (read-ahead, prefetch) must still be there when the reader comes: TinyLFU's
//! admission would reject it in a full cache (it has been seen once) and have it fetched
//! and decoded again. What a second model shares with the first is what was used last.
//!
//! Budget guarantee: the cache (moka) applies evictions
//! in batches; every insertion here is followed by `run_pending_tasks`, so once a read
//! has returned, the cached bytes are within the budget again. While reads are in
//! flight the cache may exceed it by at most the fragments being inserted at that moment
//! (about `parallelism` fragments). A fragment larger than the whole budget is never kept.
//! Bytes handed to callers stay alive as long as the callers hold them, whatever the cache
//! evicts: the budget bounds what the cache itself keeps.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::FragmentLibrary;
use super::objects::Via;
use crate::error::{FragmentError, Result};
use crate::types::FragmentId;

/// The shared cache of decoded fragments, with the counters of every fragment read.
pub(super) struct FragmentCache {
    cache: moka::future::Cache<FragmentId, Bytes>,
    budget: u64,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    store_reads: AtomicU64,
    store_bytes: AtomicU64,
    hits: AtomicU64,
    hit_bytes: AtomicU64,
    misses: AtomicU64,
    miss_bytes: AtomicU64,
    decode_nanos: AtomicU64,
}

impl fmt::Debug for FragmentCache {
    // moka's own Debug lists every entry; a summary is enough.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FragmentCache")
            .field("budget", &self.budget)
            .field("weighted_size", &self.cache.weighted_size())
            .finish_non_exhaustive()
    }
}

impl FragmentCache {
    pub(super) fn new(budget: u64) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(budget)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            // Fragments are at most MAX_DECODED_LEN (16 MiB) long, well within u32.
            .weigher(|_: &FragmentId, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .build();
        Self {
            cache,
            budget,
            counters: Counters::default(),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn hit(&self, bytes: &Bytes) {
        Self::add(&self.counters.hits, 1);
        Self::add(&self.counters.hit_bytes, bytes.len() as u64);
    }

    fn miss(&self, bytes: &Bytes) {
        Self::add(&self.counters.misses, 1);
        Self::add(&self.counters.miss_bytes, bytes.len() as u64);
    }

    /// Counts one fragment object of `len` stored bytes read from the store.
    pub(super) fn count_store_read(&self, len: usize) {
        Self::add(&self.counters.store_reads, 1);
        Self::add(&self.counters.store_bytes, len as u64);
    }

    /// Counts time spent decoding and verifying a fragment.
    pub(super) fn count_decode(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        Self::add(&self.counters.decode_nanos, nanos);
    }
}

/// Counters of a library's fragment reads since it was opened, and the cache's state.
///
/// Cache lookups include those of delta bases and cast sources, so a fragment stored as
/// a delta against a cached base counts one miss (its own object) and one hit (the base).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Fragment objects read from the store.
    pub store_reads: u64,
    /// Bytes of those objects (stored, encoded size).
    pub bytes_fetched: u64,
    /// Lookups answered by the cache, or by waiting for a concurrent fetch of the same
    /// fragment.
    pub cache_hits: u64,
    /// Decoded bytes of those lookups.
    pub cache_hit_bytes: u64,
    /// Lookups that fetched and decoded the fragment.
    pub cache_misses: u64,
    /// Decoded bytes of those lookups.
    pub cache_miss_bytes: u64,
    /// Time spent decoding and verifying fragments, summed over threads.
    pub decode_seconds: f64,
    /// Decoded bytes the cache holds now.
    pub cache_bytes: u64,
    /// Fragments the cache holds now.
    pub cache_entries: u64,
    /// The cache's budget in bytes.
    pub cache_budget: u64,
}

impl MetricsSnapshot {
    /// The counters accumulated between `earlier` and `self`; the cache's state is `self`'s.
    pub fn since(&self, earlier: &MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            store_reads: self.store_reads.saturating_sub(earlier.store_reads),
            bytes_fetched: self.bytes_fetched.saturating_sub(earlier.bytes_fetched),
            cache_hits: self.cache_hits.saturating_sub(earlier.cache_hits),
            cache_hit_bytes: self.cache_hit_bytes.saturating_sub(earlier.cache_hit_bytes),
            cache_misses: self.cache_misses.saturating_sub(earlier.cache_misses),
            cache_miss_bytes: self
                .cache_miss_bytes
                .saturating_sub(earlier.cache_miss_bytes),
            decode_seconds: (self.decode_seconds - earlier.decode_seconds).max(0.0),
            ..*self
        }
    }
}

impl FragmentLibrary {
    /// This library with a fragment cache of `bytes` (0, the default, keeps nothing;
    /// concurrent reads of one fragment still share one fetch). The returned library and
    /// its clones share the new cache and fresh metrics; clones made before keep the old
    /// ones. Reads served by the cache are not checked against the store again; export
    /// and verify always read the store.
    pub fn with_cache_bytes(self, bytes: u64) -> Self {
        let inner = super::Inner {
            store: self.inner.store.clone(),
            codecs: self.inner.codecs.clone(),
            config: self.inner.config.clone(),
            cache: Arc::new(FragmentCache::new(bytes)),
            similarity: self.inner.similarity.clone(),
            cpu: self.inner.cpu.clone(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Read counters and the cache's state.
    pub fn metrics(&self) -> MetricsSnapshot {
        let cache = &self.inner.cache;
        let c = &cache.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            store_reads: get(&c.store_reads),
            bytes_fetched: get(&c.store_bytes),
            cache_hits: get(&c.hits),
            cache_hit_bytes: get(&c.hit_bytes),
            cache_misses: get(&c.misses),
            cache_miss_bytes: get(&c.miss_bytes),
            decode_seconds: get(&c.decode_nanos) as f64 * 1e-9,
            cache_bytes: cache.cache.weighted_size(),
            cache_entries: cache.cache.entry_count(),
            cache_budget: cache.budget,
        }
    }

    /// Applies the cache's pending evictions, so that [`MetricsSnapshot::cache_bytes`] is
    /// exact and within the budget.
    pub async fn sync_cache(&self) {
        self.inner.cache.cache.run_pending_tasks().await;
    }

    /// Whether the cache keeps anything (its budget is not 0).
    pub(super) fn caches(&self) -> bool {
        self.inner.cache.budget > 0
    }

    /// A fragment through the cache: concurrent callers for one fragment share one fetch.
    pub(super) async fn cached_fragment(&self, id: &FragmentId) -> Result<Bytes> {
        let cache = &self.inner.cache;
        let entry = cache
            .cache
            .entry(*id)
            .or_try_insert_with(self.read_fragment(id, Via::Cache))
            .await
            .map_err(unshare)?;
        let fresh = entry.is_fresh();
        let bytes = entry.into_value();
        if fresh {
            cache.miss(&bytes);
            cache.cache.run_pending_tasks().await;
        } else {
            cache.hit(&bytes);
        }
        Ok(bytes)
    }

    /// A fragment from the cache when it holds it, else read (its dependency through
    /// the cache) and not kept: [`Via::Peek`](super::objects::Via::Peek).
    pub(super) async fn peeked_fragment(&self, id: &FragmentId) -> Result<Bytes> {
        let cache = &self.inner.cache;
        if let Some(bytes) = cache.cache.get(id).await {
            cache.hit(&bytes);
            return Ok(bytes);
        }
        let bytes = self.read_fragment(id, Via::Peek).await?;
        cache.miss(&bytes);
        Ok(bytes)
    }

    /// Puts verified fragment bytes in the cache (read-ahead no read asked for yet).
    pub(super) async fn keep_in_cache(&self, id: FragmentId, bytes: Bytes) {
        self.inner.cache.cache.insert(id, bytes).await;
    }

    /// Removes fragment `id` from the cache (a read-once reader's consumer keeps it).
    pub(super) async fn drop_from_cache(&self, id: &FragmentId) {
        self.inner.cache.cache.invalidate(id).await;
    }

    /// A delta base or cast source from the cache, else `load`ed and cached.
    ///
    /// Not single-flight: waiting here for another fetch while the dependant holds its own
    /// slot could deadlock on a hostile pair of objects that depend on each other.
    pub(super) async fn cached_dependency<F>(
        &self,
        dep: &FragmentId,
        load: impl FnOnce() -> F,
    ) -> Result<Bytes>
    where
        F: Future<Output = Result<Bytes>>,
    {
        let cache = &self.inner.cache;
        if let Some(bytes) = cache.cache.get(dep).await {
            cache.hit(&bytes);
            return Ok(bytes);
        }
        let bytes = load().await?;
        cache.miss(&bytes);
        cache.cache.insert(*dep, bytes.clone()).await;
        Ok(bytes)
    }
}

/// The error of a fetch several callers may have waited for (moka shares it).
fn unshare(e: Arc<FragmentError>) -> FragmentError {
    Arc::try_unwrap(e).unwrap_or_else(|shared| (*shared).clone())
}
