//! Which models and revisions the server sees: one listing of the library's manifests,
//! reused for [`LISTING_TTL`], and the generations of each model read once per change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use haagenti_core::{FragmentLibrary, ModelHandle};
use tokio::sync::Mutex;

use super::error::HubError;

/// How long one listing of the library answers: a model ingested (or replaced) shows
/// within this time, and a burst of requests costs one listing, not one per request.
pub const LISTING_TTL: Duration = Duration::from_secs(2);

/// One stored generation of a model, ready to read.
#[derive(Debug)]
pub struct Generation {
    /// `ModelManifest::revision_id`: the commit the client sees (the same the mount's `hf`
    /// layout shows).
    pub revision: String,
    pub created_unix_ms: u64,
    pub handle: ModelHandle,
}

/// A model's generations, oldest first (the last is `main`).
#[derive(Debug)]
pub struct Model {
    /// The generation ids of the listing this was read for.
    ids: Vec<String>,
    pub generations: Vec<Arc<Generation>>,
}

impl Model {
    /// The generation a revision names: `main` is the newest, a 40-hex-digit id the newest
    /// generation with that revision id.
    pub fn resolve(&self, revision: &str) -> Result<Arc<Generation>, HubError> {
        let found = if revision == "main" {
            self.generations.last()
        } else {
            self.generations
                .iter()
                .rev()
                .find(|g| g.revision == revision)
        };
        found.cloned().ok_or(HubError::RevisionNotFound)
    }

    pub fn first_created_unix_ms(&self) -> u64 {
        self.generations.first().map_or(0, |g| g.created_unix_ms)
    }
}

#[derive(Debug, Default)]
struct State {
    listed_at: Option<Instant>,
    listing: BTreeMap<String, Vec<String>>,
    models: HashMap<String, Arc<Model>>,
    /// The family map and the listing it was made from.
    report: Option<(Listing, Arc<RenderedReport>)>,
}

/// Model name → its generation ids: what one listing of the library says.
type Listing = BTreeMap<String, Vec<String>>;

/// `haagenti report`'s page and its data, rendered once per state of the library.
#[derive(Debug)]
pub struct RenderedReport {
    pub html: Bytes,
    pub json: Bytes,
}

/// The server's view of the library.
#[derive(Debug)]
pub struct Catalog {
    library: FragmentLibrary,
    state: Mutex<State>,
}

impl Catalog {
    pub fn new(library: FragmentLibrary) -> Self {
        Self {
            library,
            state: Mutex::default(),
        }
    }

    /// Every model name, sorted.
    pub async fn names(&self) -> Result<Vec<String>, HubError> {
        let mut state = self.state.lock().await;
        self.refresh(&mut state).await?;
        Ok(state.listing.keys().cloned().collect())
    }

    /// Model `name` as the current listing has it.
    pub async fn model(&self, name: &str) -> Result<Arc<Model>, HubError> {
        // One lock for listing and manifest reads: concurrent first requests for a model
        // read its manifests once.
        let mut state = self.state.lock().await;
        self.refresh(&mut state).await?;
        let ids = state
            .listing
            .get(name)
            .ok_or(HubError::RepoNotFound)?
            .clone();
        if let Some(model) = state.models.get(name).filter(|m| m.ids == ids) {
            return Ok(model.clone());
        }
        let manifests = match self.library.generations(name).await {
            Ok(m) => m,
            Err(haagenti_core::FragmentError::ModelNotFound(_)) => {
                return Err(HubError::RepoNotFound);
            }
            Err(e) => return Err(HubError::Internal(format!("{e:#}"))),
        };
        let mut generations = Vec::with_capacity(manifests.len());
        for m in &manifests {
            let handle = self
                .library
                .open_generation(m)
                .map_err(|e| HubError::Internal(format!("{e:#}")))?;
            generations.push(Arc::new(Generation {
                revision: m.revision_id(),
                created_unix_ms: m.created_unix_ms,
                handle,
            }));
        }
        let model = Arc::new(Model { ids, generations });
        state.models.insert(name.to_string(), model.clone());
        Ok(model)
    }

    /// The family map of every model, made again when a model was ingested, replaced or
    /// removed since (the listing changed).
    pub async fn report(&self) -> Result<Arc<RenderedReport>, HubError> {
        let mut state = self.state.lock().await;
        self.refresh(&mut state).await?;
        if let Some((listing, report)) = &state.report {
            if *listing == state.listing {
                return Ok(report.clone());
            }
        }
        let internal = |e: anyhow::Error| HubError::Internal(format!("{e:#}"));
        // On a blocking thread: the collection's future is not provably `Send` (rustc's
        // higher-ranked lifetime inference), and `block_on` does not need it to be.
        let (lib, runtime) = (self.library.clone(), tokio::runtime::Handle::current());
        let data = tokio::task::spawn_blocking(move || {
            runtime.block_on(crate::report::ReportData::collect(&lib, None))
        })
        .await
        .map_err(|e| internal(e.into()))?
        .map_err(internal)?;
        let json = serde_json::to_vec(&data).map_err(|e| internal(e.into()))?;
        let report = Arc::new(RenderedReport {
            html: Bytes::from(crate::report::render(&data)),
            json: Bytes::from(json),
        });
        state.report = Some((state.listing.clone(), report.clone()));
        Ok(report)
    }

    async fn refresh(&self, state: &mut State) -> Result<(), HubError> {
        if state.listed_at.is_some_and(|t| t.elapsed() < LISTING_TTL) {
            return Ok(());
        }
        let listing = self
            .library
            .model_generations()
            .await
            .map_err(|e| HubError::Internal(format!("{e:#}")))?;
        state.models.retain(|name, _| listing.contains_key(name));
        state.listing = listing;
        state.listed_at = Some(Instant::now());
        Ok(())
    }
}
