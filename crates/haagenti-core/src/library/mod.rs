//! [`FragmentLibrary`]: the engine, written against the [`FragmentStore`] and [`Codec`]
//! traits only.
//!
//! [`Codec`]: crate::Codec

mod cache;
mod compare;
mod cpu;
mod export;
mod gguf;
mod ingest;
mod locks;
mod maintenance;
mod model;
mod objects;
mod reader;
mod repair;
mod similarity;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use crate::types::DamagedManifest;
pub use cache::MetricsSnapshot;
pub use compare::{
    ByteCount, FamilyReport, LossyLink, LossyModel, ModelComparison, ModelSavings, Relation,
    SimilarTensors, StoredCount, TensorMatch, TensorSimilarity,
};
pub use export::{ExportReport, ModelVerified, VerifyReport};
pub use ingest::{IngestOptions, IngestReport, Progress};
pub use maintenance::{GcOptions, GcReport};
pub use model::{ModelHandle, Tensor, TensorInfo};
pub use objects::PutFragment;
pub use reader::{FileReader, ModelFile, StartedRead};
pub use repair::{
    DamageStatus, DamagedFragment, FragmentUse, RebuiltManifest, RepairOptions, RepairReport,
    SourceMatch,
};
pub use similarity::IndexReport;

use crate::codec::CodecRegistry;
use crate::error::{FragmentError, Result};
use crate::manifest::ModelManifest;
use crate::store::{FragmentStore, MANIFESTS_PREFIX, ObjectKey};
use crate::types::{LibraryConfig, validate_model_name};

/// A library of models stored as content-addressed fragments in one store.
///
/// Cheap to clone: clones share the store, codecs and fragment cache.
#[derive(Clone, Debug)]
pub struct FragmentLibrary {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn FragmentStore>,
    codecs: CodecRegistry,
    config: LibraryConfig,
    cache: Arc<cache::FragmentCache>,
    similarity: Option<Arc<similarity::SimilarityState>>,
    /// Ingest's and reads' CPU work runs on these threads, so that `io_concurrency`
    /// fragments in flight do not mean as many busy threads.
    cpu: Arc<cpu::CpuPool>,
}

impl FragmentLibrary {
    /// A library over `store` that reads every codec in `codecs` and writes with its encoder.
    pub fn new(
        store: Arc<dyn FragmentStore>,
        codecs: CodecRegistry,
        config: LibraryConfig,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                codecs,
                cache: Arc::new(cache::FragmentCache::new(0)),
                similarity: None,
                cpu: Arc::new(cpu::CpuPool::new(config.parallelism)),
                config,
            }),
        })
    }

    /// Runs CPU work `f` on one of the library's `parallelism` CPU threads (in the order
    /// work arrives; `cpu.rs`).
    pub(crate) async fn on_cpu<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        self.inner.cpu.run(false, f).await
    }

    /// [`on_cpu`](Self::on_cpu) for work that writes into memory fresh from the
    /// allocator, such as a tensor's own buffer a reader lends out: one spare thread may
    /// take it too. The first touch of each fresh page stalls its thread (a page
    /// fault; in a virtual machine often one of the host's too), so with one such decode
    /// per core the cores idle for every stall. Measured on 2 cores, every tensor of a
    /// 383 MB bf16 model through the Python package: 0.352 s with two permits, 0.306 s
    /// with three (the fragments in flight unchanged; medians of 8); export, which
    /// decodes into reused buffers, gained nothing from a third permit (0.341 / 0.336 s).
    pub(crate) async fn on_cpu_fresh<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        self.inner.cpu.run(true, f).await
    }

    /// The store the library reads and writes.
    pub fn store(&self) -> &Arc<dyn FragmentStore> {
        &self.inner.store
    }

    /// The codecs the library reads, and the one it writes with.
    pub fn codecs(&self) -> &CodecRegistry {
        &self.inner.codecs
    }

    /// The configuration the library was created with (validated).
    pub fn config(&self) -> &LibraryConfig {
        &self.inner.config
    }

    /// Names of all models, sorted.
    pub async fn models(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .manifest_keys()
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.dedup();
        Ok(names)
    }

    /// Every model with the ids of its stored generations (the 20-digit last segment of
    /// each manifest key, oldest first), from one listing and without reading a manifest:
    /// cheap enough to poll, and a changed list is how a watcher (the mount) sees that a
    /// model was replaced.
    pub async fn model_generations(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, key) in self.manifest_keys().await? {
            let generation = key.as_str().rsplit('/').next().unwrap_or_default();
            out.entry(name).or_default().push(generation.to_string());
        }
        Ok(out)
    }

    /// The current manifest of `name`: its newest generation.
    pub async fn manifest(&self, name: &str) -> Result<ModelManifest> {
        validate_model_name(name)?;
        let key = self
            .manifest_generations(name)
            .await?
            .pop()
            .ok_or_else(|| FragmentError::ModelNotFound(name.to_string()))?;
        self.read_manifest(name, &key).await
    }

    /// Every stored generation of `name`, oldest first (the last is [`Self::manifest`]).
    /// A model has more than one only when an ingest kept the older ones
    /// ([`IngestOptions::keep_older_generations`]) or when a replacing ingest has not
    /// deleted them yet. A generation deleted while this reads is left out.
    pub async fn generations(&self, name: &str) -> Result<Vec<ModelManifest>> {
        validate_model_name(name)?;
        let keys = self.manifest_generations(name).await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in &keys {
            match self.read_manifest(name, key).await {
                Ok(m) => out.push(m),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            return Err(FragmentError::ModelNotFound(name.to_string()));
        }
        Ok(out)
    }

    /// Reads and decodes the manifest at `key`, which must name model `name`. Bytes that
    /// fail their checksum are fetched once more (damaged on the way, or at rest).
    async fn read_manifest(&self, name: &str, key: &ObjectKey) -> Result<ModelManifest> {
        let bytes = self.inner.store.get(key).await?;
        let manifest = match ModelManifest::decode(&bytes, key.as_str()) {
            Err(e) if e.is_corruption() => {
                let bytes = self.inner.store.get(key).await?;
                ModelManifest::decode(&bytes, key.as_str())?
            }
            decoded => decoded?,
        };
        if manifest.name != name {
            return Err(FragmentError::corrupt(
                key.as_str(),
                format!("names model {:?}", manifest.name),
            ));
        }
        Ok(manifest)
    }

    /// The current manifest of every model, sorted by name, with the models whose current
    /// manifest cannot be read (missing, corrupt, naming another model) reported apart
    /// instead of failing the whole call: one damaged model does not hide the others.
    /// Errors only when the store cannot be listed.
    pub async fn manifests_report(&self) -> Result<(Vec<ModelManifest>, Vec<DamagedManifest>)> {
        let mut current: Vec<(String, ObjectKey)> = Vec::new();
        for (name, key) in self.manifest_keys().await? {
            // Sorted by name then generation: the last key of a name is its current one.
            match current.last_mut() {
                Some((last, k)) if *last == name => *k = key,
                _ => current.push((name, key)),
            }
        }
        use futures::StreamExt as _;
        let read = futures::stream::iter(current.into_iter().map(|(name, key)| async move {
            let result = self.manifest(&name).await;
            (name, key, result)
        }))
        .buffered(16)
        .collect::<Vec<_>>()
        .await;
        let mut intact = Vec::new();
        let mut damaged = Vec::new();
        for (name, key, result) in read {
            match result {
                Ok(m) => intact.push(m),
                // Removed while this ran.
                Err(FragmentError::ModelNotFound(_)) => {}
                Err(error) => damaged.push(DamagedManifest {
                    model: name,
                    key: key.as_str().to_string(),
                    error: error.to_string(),
                }),
            }
        }
        Ok((intact, damaged))
    }

    /// Every manifest key as (model name, key), sorted by name then generation.
    async fn manifest_keys(&self) -> Result<Vec<(String, ObjectKey)>> {
        let mut out: Vec<(String, ObjectKey)> = self
            .inner
            .store
            .list(MANIFESTS_PREFIX)
            .await?
            .into_iter()
            .filter_map(|m| {
                // `manifests/<name>/<generation>`, where a name may be `org/name`.
                let rest = m.key.as_str().strip_prefix(MANIFESTS_PREFIX)?;
                let (name, generation) = rest.rsplit_once('/')?;
                (generation.len() == 20
                    && generation.bytes().all(|b| b.is_ascii_digit())
                    && validate_model_name(name).is_ok())
                .then(|| (name.to_string(), m.key.clone()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Manifest keys of one model, oldest first.
    async fn manifest_generations(&self, name: &str) -> Result<Vec<ObjectKey>> {
        let prefix = format!("{MANIFESTS_PREFIX}{name}/");
        let mut keys: Vec<ObjectKey> = self
            .inner
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .map(|m| m.key)
            .filter(|k| k.as_str().len() == prefix.len() + 20)
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Writes `manifest` as a new generation. Generations are named by time so the newest
    /// sorts last; objects stay create-only.
    async fn put_manifest(&self, manifest: &ModelManifest) -> Result<ObjectKey> {
        manifest.validate()?;
        let bytes = manifest.encode()?;
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let key = ObjectKey::new(format!("{MANIFESTS_PREFIX}{}/{nanos:020}", manifest.name))?;
            if self
                .inner
                .store
                .put(&key, Bytes::from(bytes.clone()))
                .await?
                == crate::store::PutOutcome::Created
            {
                return Ok(key);
            }
        }
    }
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> FragmentError {
    FragmentError::task_failed("worker", e)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::MemoryStore;

    /// CPU work in flight (plain, fresh), the most at once of each, and of both.
    #[derive(Default)]
    struct Running(Mutex<[usize; 5]>);

    impl Running {
        fn work(&self, fresh: bool) {
            let at = usize::from(fresh);
            {
                let mut r = self.0.lock().unwrap();
                r[at] += 1;
                r[2 + at] = r[2 + at].max(r[at]);
                r[4] = r[4].max(r[0] + r[1]);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            self.0.lock().unwrap()[at] -= 1;
        }
    }

    /// The most plain, fresh and total CPU work at once while `plain` and `fresh` work
    /// items (50 ms each) run on a library of `parallelism` 2.
    async fn most_at_once(plain: usize, fresh: usize) -> [usize; 3] {
        let config = LibraryConfig {
            parallelism: 2,
            ..LibraryConfig::default()
        };
        let store: Arc<dyn FragmentStore> = Arc::new(MemoryStore::new());
        let lib = FragmentLibrary::new(store, CodecRegistry::default(), config).unwrap();
        let running = Arc::new(Running::default());
        let mut tasks = tokio::task::JoinSet::new();
        for fresh in std::iter::repeat_n(false, plain).chain(std::iter::repeat_n(true, fresh)) {
            let (lib, running) = (lib.clone(), running.clone());
            tasks.spawn(async move {
                let work = move || running.work(fresh);
                if fresh {
                    lib.on_cpu_fresh(work).await
                } else {
                    lib.on_cpu(work).await
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let [_, _, most_plain, most_fresh, most_total] = *running.0.lock().unwrap();
        [most_plain, most_fresh, most_total]
    }

    #[tokio::test]
    async fn cpu_work_that_panics_fails_its_caller_only() {
        let store: Arc<dyn FragmentStore> = Arc::new(MemoryStore::new());
        let config = LibraryConfig {
            parallelism: 1,
            ..LibraryConfig::default()
        };
        let lib = FragmentLibrary::new(store, CodecRegistry::default(), config).unwrap();
        let err = lib
            .on_cpu(|| -> u8 { panic!("on purpose") })
            .await
            .unwrap_err();
        assert!(matches!(err, FragmentError::TaskFailed { .. }), "{err}");
        // The one worker lives on.
        assert_eq!(lib.on_cpu(|| 7).await.unwrap(), 7);
        assert_eq!(lib.on_cpu_fresh(|| 8).await.unwrap(), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cpu_work_runs_parallelism_at_once_and_fresh_decodes_one_more() {
        assert_eq!(most_at_once(8, 0).await, [2, 0, 2]);
        assert_eq!(most_at_once(0, 8).await, [0, 3, 3]);
        // Mixed, no more than one item beyond `parallelism`, and never a plain one.
        let [plain, _, total] = most_at_once(8, 8).await;
        assert!(plain <= 2 && total <= 3, "plain {plain}, total {total}");
    }
}
