//! The family map: one self-contained HTML page (inline CSS and SVG, no script, nothing
//! fetched) showing how the models of a library relate and what each one costs.
//!
//! [`ReportData::collect`] gathers the library's own report types (`stats`, the
//! `family_report` whose relations and savings are those of `compare` and `show`) and
//! [`render`] draws them: the page never recomputes a figure, so it shows what
//! `stats --json` and `compare --json` print. `haagenti report` writes it; `serve` serves
//! it.

mod html;
mod layout;

use anyhow::{Context, Result};
use haagenti_core::{FamilyReport, FragmentLibrary, LibraryStats, LossyModel};
use serde::Serialize;

pub use html::render;

/// Largest tensors listed per model on the page.
const LARGEST_TENSORS: usize = 5;
/// Files listed per model on the page (the rest are counted).
const LISTED_FILES: usize = 12;

/// Everything the page shows, as the library reports it (also `report --json`).
#[derive(Clone, Debug, Serialize)]
pub struct ReportData {
    /// Library totals, exactly as `stats --json` prints them (without `ratio`).
    pub stats: LibraryStats,
    /// `stats.ratio()`: logical bytes per stored byte.
    pub ratio: f64,
    /// Models ingested with lossy sharing.
    pub lossy_models: Vec<LossyModel>,
    /// How the shown models relate, pair by pair, and where each one's savings come from.
    pub family: FamilyReport,
    /// Files and largest tensors of each shown model, by name.
    pub models: Vec<ModelDetail>,
    /// The models asked for (`--model`), or `None` for every model.
    pub selection: Option<Vec<String>>,
}

/// What the page lists about one model besides its figures.
#[derive(Clone, Debug, Serialize)]
pub struct ModelDetail {
    /// The model's name.
    pub model: String,
    /// Number of files.
    pub file_count: usize,
    /// The first files (path order) with their sizes.
    pub files: Vec<FileEntry>,
    /// Number of tensors.
    pub tensor_count: usize,
    /// The largest tensors, largest first.
    pub largest_tensors: Vec<TensorEntry>,
}

/// A file of a model.
#[derive(Clone, Debug, Serialize)]
pub struct FileEntry {
    /// Relative path in the model.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// A tensor of a model.
#[derive(Clone, Debug, Serialize)]
pub struct TensorEntry {
    /// Relative path of its file.
    pub file: String,
    /// Its name.
    pub name: String,
    /// Safetensors spelling of its element type.
    pub dtype: String,
    /// Its data's size in bytes.
    pub bytes: u64,
}

impl ReportData {
    /// Gathers the report of every model, or of `models` only (the totals stay the
    /// library's).
    pub async fn collect(lib: &FragmentLibrary, models: Option<&[String]>) -> Result<Self> {
        let stats = lib.stats().await.context("computing library statistics")?;
        let family = lib
            .family_report(models)
            .await
            .context("relating the models")?;
        let lossy_models = lib.lossy_models().await?;
        let (manifests, _) = lib.manifests_report().await?;
        let details = family
            .models
            .iter()
            .filter_map(|s| manifests.iter().find(|m| m.name == s.model))
            .map(|m| {
                let mut tensors: Vec<TensorEntry> = m
                    .files
                    .iter()
                    .flat_map(|f| {
                        f.tensors().iter().map(|t| TensorEntry {
                            file: f.path.clone(),
                            name: t.name.clone(),
                            dtype: t.dtype.to_string(),
                            bytes: t.fragments.iter().map(|r| u64::from(r.len)).sum(),
                        })
                    })
                    .collect();
                let tensor_count = tensors.len();
                tensors.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
                tensors.truncate(LARGEST_TENSORS);
                ModelDetail {
                    model: m.name.clone(),
                    file_count: m.files.len(),
                    files: m
                        .files
                        .iter()
                        .take(LISTED_FILES)
                        .map(|f| FileEntry {
                            path: f.path.clone(),
                            size: f.size,
                        })
                        .collect(),
                    tensor_count,
                    largest_tensors: tensors,
                }
            })
            .collect();
        Ok(Self {
            ratio: stats.ratio(),
            stats,
            lossy_models,
            family,
            models: details,
            selection: models.map(<[String]>::to_vec),
        })
    }
}
