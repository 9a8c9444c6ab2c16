//! The similarity family (issue 5 acceptance): the savings of LSH-driven ingest (XOR
//! deltas, cast references, deltas against casts) on exactly the family the issue names,
//! measured against its targets.
//!
//! The family is `haagenti_testkit::synth::lineage_family` (fixed seed): `base-fp32` (a
//! Llama-shaped fp32 parent), its round-to-nearest-even casts `base-bf16` and `base-fp16`,
//! `finetune-bf16` (half of the layers frozen, every other weight moved by N(0, (1e-3 ·
//! spread)²)) and `lora-bf16` (a rank-8 update merged into every attention weight).
//!
//! Each of two ingest orders runs into a fresh `FsStore` library (fsync on) with
//! similarity on, in this process; then every model is exported and compared byte for
//! byte. What a model's ingest adds is the growth of the library directory (fragment
//! objects, manifest, index segment).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use haagenti_core::{FragmentLibrary, IngestOptions, LibraryConfig};
use haagenti_store_fs::FsStore;
use haagenti_testkit::synth::lineage_family;
use serde::Serialize;
use serde_json::Value;

use crate::util::{self, human, mb_per_s};

/// Size of the fp32 parent in a full run (the family is about three times this).
pub const FULL_PARENT_BYTES: u64 = 400_000_000;
/// Size of the fp32 parent in `--quick`.
pub const QUICK_PARENT_BYTES: u64 = 16_000_000;

/// The targets.
const FINETUNE_MAX_ADDED_PCT: f64 = 15.0;
const CAST_MAX_ADDED_PCT: f64 = 1.0;
const FAMILY_MIN_REDUCTION_PCT: f64 = 54.0;
const SIGNATURE_MAX_SHARE_PCT: f64 = 10.0;

/// The two ingest orders: (label, model names in order).
const ORDERS: [(&str, [&str; 5]); 2] = [
    (
        "bf16 first",
        [
            "base-bf16",
            "finetune-bf16",
            "lora-bf16",
            "base-fp32",
            "base-fp16",
        ],
    ),
    (
        "fp32 first",
        [
            "base-fp32",
            "base-bf16",
            "base-fp16",
            "finetune-bf16",
            "lora-bf16",
        ],
    ),
];

/// Everything the similarity-family benchmark measured.
#[derive(Debug, Serialize)]
pub struct SimilarityBench {
    pub quick: bool,
    pub seed: u64,
    /// Requested size of the fp32 parent.
    pub parent_bytes_target: u64,
    /// Fragment size of the library (bytes of a 16-bit fragment).
    pub fragment_size: usize,
    pub generate_secs: f64,
    pub models: Vec<Member>,
    pub orders: Vec<OrderResult>,
}

/// One model of the family.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub name: String,
    pub kind: String,
    pub dtype: String,
    pub bytes: u64,
    pub description: String,
    #[serde(skip)]
    pub path: PathBuf,
}

/// One ingest order into one fresh library.
#[derive(Debug, Serialize)]
pub struct OrderResult {
    pub label: String,
    pub models: Vec<ModelRow>,
    /// Sum of the models' sizes.
    pub raw_bytes: u64,
    /// Size of the library directory after every ingest.
    pub stored_bytes: u64,
    /// `100 · (1 - stored / raw)`.
    pub reduction_pct: f64,
    pub ingest_secs: f64,
    pub ingest_cpu_secs: Option<f64>,
    /// Sum of the ingests' `signature_seconds` (summed over workers).
    pub signature_secs: f64,
    /// `100 · signature_secs / ingest_secs` (wall).
    pub signature_share_pct: f64,
    /// `100 · signature_secs / ingest_cpu_secs`: both summed over threads.
    pub signature_cpu_share_pct: Option<f64>,
    /// The library's `LibraryStats` after the last ingest.
    pub stats: Value,
    pub targets: Vec<Target>,
}

/// One model's ingest and export in one order.
#[derive(Debug, Serialize)]
pub struct ModelRow {
    pub name: String,
    pub kind: String,
    pub logical_bytes: u64,
    /// Growth of the library directory during this ingest.
    pub stored_added_bytes: u64,
    /// `100 · stored_added / logical`.
    pub added_pct: f64,
    pub dedup_bytes: u64,
    pub delta_fragment_bytes: u64,
    pub delta_stored_bytes: u64,
    pub cast_fragment_bytes: u64,
    /// New fragments stored on their own: decoded and stored bytes.
    pub standalone_fragment_bytes: u64,
    pub standalone_stored_bytes: u64,
    pub manifest_bytes: u64,
    pub ingest_secs: f64,
    pub ingest_mb_s: f64,
    /// CPU seconds of this process during the ingest (all threads).
    pub ingest_cpu_secs: Option<f64>,
    pub signature_secs: f64,
    /// `100 · signature_secs / ingest_secs`.
    pub signature_pct: f64,
    pub export_secs: f64,
    pub export_mb_s: f64,
    pub identical: bool,
    /// The library's own `IngestReport`.
    pub ingest_report: Value,
}

/// One of the targets, measured in one order.
#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub measured: f64,
    pub limit: f64,
    /// `true`: measured must be at most `limit`; `false`: at least.
    pub at_most: bool,
    pub met: bool,
}

impl Target {
    fn new(what: String, measured: f64, limit: f64, at_most: bool) -> Self {
        let met = if at_most {
            measured <= limit
        } else {
            measured >= limit
        };
        Self {
            what,
            measured,
            limit,
            at_most,
            met,
        }
    }
}

impl SimilarityBench {
    /// Fails unless every export in every order was byte-identical to its source.
    pub fn check(&self) -> Result<()> {
        let bad: Vec<String> = self
            .orders
            .iter()
            .flat_map(|o| {
                o.models
                    .iter()
                    .filter(|m| !m.identical)
                    .map(move |m| format!("{} ({})", m.name, o.label))
            })
            .collect();
        if !bad.is_empty() {
            bail!(
                "similarity family: exports differ from their sources: {}",
                bad.join(", ")
            );
        }
        Ok(())
    }
}

/// Writes the five models under `dir` (replacing it).
fn generate(dir: &Path, seed: u64, parent_bytes: u64) -> Result<Vec<Member>> {
    util::remove_dir_if_exists(dir)?;
    let family = lineage_family(dir, seed, parent_bytes)
        .with_context(|| format!("generate the lineage family in {}", dir.display()))?;
    Ok(family
        .models
        .into_iter()
        .map(|m| Member {
            dtype: if m.name.ends_with("fp32") {
                "F32"
            } else if m.name.ends_with("fp16") {
                "F16"
            } else {
                "BF16"
            }
            .into(),
            name: m.name,
            kind: m.kind.to_string(),
            bytes: m.bytes,
            description: m.description,
            path: m.path,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Measurement.
// ---------------------------------------------------------------------------------------

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn cpu_delta(before: Option<f64>) -> Option<f64> {
    Some(util::cpu_secs()? - before?)
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// Ingests `order` into a fresh library under `work`, then exports and compares each model.
fn run_order(
    rt: &tokio::runtime::Runtime,
    members: &[Member],
    label: &str,
    order: &[&str],
    work: &Path,
) -> Result<OrderResult> {
    let lib_dir = work.join("library");
    let export_root = work.join("export");
    util::remove_dir_if_exists(work)?;
    let config = LibraryConfig::default();
    let store = FsStore::open(&lib_dir).with_context(|| format!("open {}", lib_dir.display()))?;
    let library =
        FragmentLibrary::new(Arc::new(store), haagenti_codec::default_registry(), config)?
            .with_similarity(haagenti_lsh::cosine_similarity());
    let models: Vec<&Member> = order
        .iter()
        .map(|name| {
            members
                .iter()
                .find(|m| m.name == *name)
                .with_context(|| format!("no model {name}"))
        })
        .collect::<Result<_>>()?;

    let mut rows = Vec::new();
    let mut fp32_stored = false;
    let mut cast_of_stored_fp32 = Vec::new();
    for m in &models {
        let before = util::dir_size(&lib_dir)?;
        let cpu = util::cpu_secs();
        let started = Instant::now();
        let report = rt
            .block_on(library.ingest(&m.name, &m.path, IngestOptions::default()))
            .with_context(|| format!("ingest {} ({label})", m.name))?;
        let secs = started.elapsed().as_secs_f64();
        let cpu_secs = cpu_delta(cpu);
        let added = util::dir_size(&lib_dir)?.saturating_sub(before);
        let json = serde_json::to_value(&report)?;
        let special = report.delta_fragment_bytes + report.cast_fragment_bytes;
        let special_stored = report.delta_stored_bytes;
        let row = ModelRow {
            name: m.name.clone(),
            kind: m.kind.clone(),
            logical_bytes: m.bytes,
            stored_added_bytes: added,
            added_pct: pct(added as f64, m.bytes as f64),
            dedup_bytes: report.dedup_bytes,
            delta_fragment_bytes: report.delta_fragment_bytes,
            delta_stored_bytes: report.delta_stored_bytes,
            cast_fragment_bytes: report.cast_fragment_bytes,
            standalone_fragment_bytes: report.new_fragment_bytes.saturating_sub(special),
            standalone_stored_bytes: report.stored_bytes.saturating_sub(special_stored),
            manifest_bytes: report.manifest_bytes,
            ingest_secs: secs,
            ingest_mb_s: mb_per_s(m.bytes, secs),
            ingest_cpu_secs: cpu_secs,
            signature_secs: report.signature_seconds,
            signature_pct: pct(report.signature_seconds, secs),
            export_secs: 0.0,
            export_mb_s: 0.0,
            identical: false,
            ingest_report: json,
        };
        eprintln!(
            "  {label}: {} {} -> +{} ({:.2}%) in {secs:.1} s",
            m.name,
            human(m.bytes),
            human(added),
            row.added_pct
        );
        if m.kind == "cast" && fp32_stored {
            cast_of_stored_fp32.push(rows.len());
        }
        fp32_stored |= m.dtype == "F32";
        rows.push(row);
    }

    // Exports come after every ingest: later ingests must not have changed earlier models.
    util::warm(&lib_dir)?;
    for (m, row) in models.iter().zip(&mut rows) {
        let out = export_root.join(&m.name);
        let started = Instant::now();
        rt.block_on(library.export(&m.name, &out, None))
            .with_context(|| format!("export {} ({label})", m.name))?;
        row.export_secs = started.elapsed().as_secs_f64();
        row.export_mb_s = mb_per_s(m.bytes, row.export_secs);
        let file_name = m.path.file_name().map(PathBuf::from).unwrap_or_default();
        row.identical = util::files_under(&out)?.len() == 1
            && util::same_bytes(&m.path, &out.join(file_name)).unwrap_or(false);
        util::remove_dir_if_exists(&out)?;
    }
    let stats = serde_json::to_value(rt.block_on(library.stats())?)?;
    let stored_bytes = util::dir_size(&lib_dir)?;
    util::discard(work)?;

    let raw_bytes: u64 = rows.iter().map(|r| r.logical_bytes).sum();
    let ingest_secs: f64 = rows.iter().map(|r| r.ingest_secs).sum();
    let ingest_cpu_secs: Option<f64> = rows.iter().map(|r| r.ingest_cpu_secs).sum();
    let signature_secs: f64 = rows.iter().map(|r| r.signature_secs).sum();
    let reduction_pct = 100.0 - pct(stored_bytes as f64, raw_bytes as f64);
    let signature_share_pct = pct(signature_secs, ingest_secs);

    let mut targets = Vec::new();
    for r in rows.iter().filter(|r| r.kind == "fine-tune") {
        targets.push(Target::new(
            format!("{} adds at most 15% of its size", r.name),
            r.added_pct,
            FINETUNE_MAX_ADDED_PCT,
            true,
        ));
    }
    for &i in &cast_of_stored_fp32 {
        let r = &rows[i];
        targets.push(Target::new(
            format!("{} (cast of the stored fp32) adds at most 1%", r.name),
            r.added_pct,
            CAST_MAX_ADDED_PCT,
            true,
        ));
    }
    targets.push(Target::new(
        "whole family at least 54% smaller than raw".into(),
        reduction_pct,
        FAMILY_MIN_REDUCTION_PCT,
        false,
    ));
    targets.push(Target::new(
        "signature time under 10% of ingest time".into(),
        signature_share_pct,
        SIGNATURE_MAX_SHARE_PCT,
        true,
    ));
    Ok(OrderResult {
        label: label.to_string(),
        models: rows,
        raw_bytes,
        stored_bytes,
        reduction_pct,
        ingest_secs,
        ingest_cpu_secs,
        signature_secs,
        signature_share_pct,
        signature_cpu_share_pct: ingest_cpu_secs.map(|c| pct(signature_secs, c)),
        stats,
        targets,
    })
}

/// Generates the family (fp32 parent of about `parent_bytes`) under `work`, runs both
/// orders, and removes what it wrote.
pub fn run(quick: bool, seed: u64, parent_bytes: u64, work: &Path) -> Result<SimilarityBench> {
    let family_dir = work.join("family");
    let started = Instant::now();
    let members = generate(&family_dir, seed, parent_bytes)?;
    let generate_secs = started.elapsed().as_secs_f64();
    let total: u64 = members.iter().map(|m| m.bytes).sum();
    eprintln!(
        "  generated the similarity family: {} in {generate_secs:.1} s",
        human(total)
    );
    let rt = runtime()?;
    let mut orders = Vec::new();
    for (label, order) in ORDERS {
        orders.push(run_order(
            &rt,
            &members,
            label,
            &order,
            &work.join("similarity-library"),
        )?);
    }
    util::remove_dir_if_exists(&family_dir)?;
    Ok(SimilarityBench {
        quick,
        seed,
        parent_bytes_target: parent_bytes,
        fragment_size: LibraryConfig::default().fragment_size,
        generate_secs,
        models: members,
        orders,
    })
}

// ---------------------------------------------------------------------------------------
// Report.
// ---------------------------------------------------------------------------------------

/// The section in markdown.
pub fn markdown(b: &SimilarityBench) -> String {
    let mut s = String::new();
    let total: u64 = b.models.iter().map(|m| m.bytes).sum();
    let _ = writeln!(
        s,
        "### Similarity family (issue 5 acceptance): {} in 5 models{}\n",
        human(total),
        if b.quick {
            " — smoke run, numbers not representative"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "{}, seed {}; library: fs store (fsync on), default codecs, similarity on (`haagenti_lsh::cosine_similarity`), {} fragments for 16-bit dtypes. Added = growth of the library directory (fragments, manifest, index segment).\n",
        b.models.first().map_or("", |m| m.description.as_str()),
        b.seed,
        human(b.fragment_size as u64)
    );
    let _ = writeln!(s, "| model | kind | size | what it is |");
    let _ = writeln!(s, "|---|---|---:|---|");
    for m in &b.models {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            m.name,
            m.kind,
            human(m.bytes),
            m.description
        );
    }
    for o in &b.orders {
        let _ = writeln!(s, "\n#### Order: {}\n", o.label);
        let _ = writeln!(
            s,
            "| model | size | added | added % | dedup | delta (decoded → stored) | cast | standalone (decoded → stored) | ingest MB/s | signatures % of ingest | export MB/s | byte-identical |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for r in &o.models {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2}% | {} | {} → {} | {} | {} → {} | {:.0} | {:.1}% | {:.0} | {} |",
                r.name,
                human(r.logical_bytes),
                human(r.stored_added_bytes),
                r.added_pct,
                human(r.dedup_bytes),
                human(r.delta_fragment_bytes),
                human(r.delta_stored_bytes),
                human(r.cast_fragment_bytes),
                human(r.standalone_fragment_bytes),
                human(r.standalone_stored_bytes),
                r.ingest_mb_s,
                r.signature_pct,
                r.export_mb_s,
                if r.identical { "yes" } else { "**NO**" }
            );
        }
        let _ = writeln!(
            s,
            "| **family** | **{}** | **{}** | **{:.1}%** | | | | | {:.0} | {:.1}% | | |",
            human(o.raw_bytes),
            human(o.stored_bytes),
            pct(o.stored_bytes as f64, o.raw_bytes as f64),
            mb_per_s(o.raw_bytes, o.ingest_secs),
            o.signature_share_pct
        );
        let _ = writeln!(
            s,
            "\nStored {:.1}% smaller than raw. Signatures {:.2} s of {:.1} s ingest wall time ({:.1}%){}.\n",
            o.reduction_pct,
            o.signature_secs,
            o.ingest_secs,
            o.signature_share_pct,
            o.ingest_cpu_secs.map_or_else(String::new, |c| format!(
                ", {:.1}% of {c:.1} s ingest CPU time",
                pct(o.signature_secs, c)
            ))
        );
        let _ = writeln!(s, "| target | measured | limit | met |");
        let _ = writeln!(s, "|---|---:|---:|---|");
        for t in &o.targets {
            let _ = writeln!(
                s,
                "| {} | {:.2}% | {} {:.0}% | {} |",
                t.what,
                t.measured,
                if t.at_most { "≤" } else { "≥" },
                t.limit,
                if t.met { "yes" } else { "**NO**" }
            );
        }
    }
    let _ = writeln!(
        s,
        "\nSignature time is the library's `signature_seconds` (summed over ingest workers); ingest time is wall time, so on {} cores the share is an upper bound.",
        util::cores()
    );
    s
}
