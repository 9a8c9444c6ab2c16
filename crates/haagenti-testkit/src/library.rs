//! Library helpers the integration tests share: [`test_library`] opens a library with
//! test-sized fragments over a store ([`TestLibrary`] for what varies),
//! [`store_listing`] snapshots a store, and [`assert_only_live_objects`] checks what gc
//! must leave behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use haagenti_core::store::{FRAGMENTS_PREFIX, LOCKS_PREFIX, TMP_PREFIX};
use haagenti_core::{
    CodecRegistry, FragmentId, FragmentLibrary, FragmentStore, LibraryConfig, Similarity,
};

/// The fragment size of a [`test_library`]: small models still get several fragments
/// per tensor.
pub const TEST_FRAGMENT_SIZE: usize = 64 << 10;

/// A library over `store` with [`TEST_FRAGMENT_SIZE`] fragments, the raw codec only
/// ([`CodecRegistry::default`]), no similarity and no fragment cache; otherwise the
/// default configuration.
pub fn test_library(store: Arc<dyn FragmentStore>) -> FragmentLibrary {
    TestLibrary::new().open(store)
}

/// What a test library varies from [`test_library`]:
///
/// ```
/// # use std::sync::Arc;
/// # use haagenti_core::MemoryStore;
/// # use haagenti_testkit::library::TestLibrary;
/// let lib = TestLibrary::new()
///     .parallelism(2)
///     .cache_bytes(64 << 20)
///     .open(Arc::new(MemoryStore::new()));
/// assert_eq!(lib.config().parallelism, 2);
/// ```
#[derive(Clone)]
#[must_use]
pub struct TestLibrary {
    config: LibraryConfig,
    codecs: CodecRegistry,
    similarity: Option<Similarity>,
    cache_bytes: Option<u64>,
}

impl fmt::Debug for TestLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestLibrary")
            .field("config", &self.config)
            .field("similarity", &self.similarity.is_some())
            .field("cache_bytes", &self.cache_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for TestLibrary {
    fn default() -> Self {
        Self::new()
    }
}

impl TestLibrary {
    /// What [`test_library`] opens.
    pub fn new() -> Self {
        let mut config = LibraryConfig::default();
        config.fragment_size = TEST_FRAGMENT_SIZE;
        Self {
            config,
            codecs: CodecRegistry::default(),
            similarity: None,
            cache_bytes: None,
        }
    }

    /// Fragments of `bytes` instead of [`TEST_FRAGMENT_SIZE`].
    pub fn fragment_size(mut self, bytes: usize) -> Self {
        self.config.fragment_size = bytes;
        self
    }

    /// At most `n` fragments in flight.
    pub fn parallelism(mut self, n: usize) -> Self {
        self.config.parallelism = n;
        self
    }

    /// Reads and writes with `codecs` (e.g. the real codecs of `haagenti-codec`).
    pub fn codecs(mut self, codecs: CodecRegistry) -> Self {
        self.codecs = codecs;
        self
    }

    /// Turns on similarity ([`FragmentLibrary::with_similarity`]).
    pub fn similarity(mut self, similarity: Similarity) -> Self {
        self.similarity = Some(similarity);
        self
    }

    /// A fragment cache of `bytes` ([`FragmentLibrary::with_cache_bytes`]).
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = Some(bytes);
        self
    }

    /// The library over `store`. Panics on an invalid configuration.
    pub fn open(&self, store: Arc<dyn FragmentStore>) -> FragmentLibrary {
        let mut lib = FragmentLibrary::new(store, self.codecs.clone(), self.config.clone())
            .expect("a valid test library configuration");
        if let Some(similarity) = &self.similarity {
            lib = lib.with_similarity(similarity.clone());
        }
        if let Some(bytes) = self.cache_bytes {
            lib = lib.with_cache_bytes(bytes);
        }
        lib
    }
}

/// Every object key in `store` with its size: two listings are equal when the store holds
/// the same objects.
pub async fn store_listing(store: &dyn FragmentStore) -> BTreeMap<String, u64> {
    store
        .list("")
        .await
        .expect("listing the store")
        .into_iter()
        .map(|m| (m.key.to_string(), m.size))
        .collect()
}

/// What gc with no grace must leave: the stored fragments are exactly those the models'
/// manifests reference (with what they depend on), and nothing is left under `tmp/` or
/// `locks/`. `ctx` starts every failure message.
pub async fn assert_only_live_objects(lib: &FragmentLibrary, ctx: &str) {
    let mut live = BTreeSet::new();
    for name in lib.models().await.expect("listing the models") {
        for r in lib
            .manifest(&name)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: manifest of {name}: {e}"))
            .fragments()
        {
            live.insert(r.id);
            live.extend(r.depends_on);
        }
    }
    let stored: BTreeSet<FragmentId> = lib
        .store()
        .list(FRAGMENTS_PREFIX)
        .await
        .expect("listing the fragments")
        .iter()
        .map(|m| m.key.fragment_id().expect("only fragment objects"))
        .collect();
    assert_eq!(stored, live, "{ctx}: fragments other than the live ones");
    for prefix in [TMP_PREFIX, LOCKS_PREFIX] {
        let left = lib.store().list(prefix).await.expect("listing the store");
        assert!(left.is_empty(), "{ctx}: left under {prefix}: {left:?}");
    }
}
