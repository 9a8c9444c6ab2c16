//! haagenti on the corpus, through the library API. Every ingest and export runs in a
//! child process (this binary re-invoked as `child ingest|export`), so its time and peak
//! RSS (`VmHWM`, the kernel's accounting) belong to that phase alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use haagenti_core::{
    Codec, CodecRegistry, CodecTag, Dtype, EncodeHint, FragmentLibrary, IngestOptions,
};
use haagenti_fragments::OpenOptions;
use haagenti_testkit::synth::{Family, FamilyModel, generate_model};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ceiling::UnitSpeeds;
use crate::system::SystemResult;
use crate::util;

/// One model's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ModelResult {
    pub name: String,
    pub kind: String,
    pub logical_bytes: u64,
    /// Bytes this model's ingest added to the store (new fragments plus its manifest).
    pub stored_bytes_added: u64,
    pub ingest_secs: f64,
    pub export_secs: f64,
    pub peak_rss_ingest_bytes: Option<u64>,
    pub peak_rss_export_bytes: Option<u64>,
    /// Every exported file equals its source, byte for byte.
    pub identical: bool,
    pub ingest_profile: Profile,
    pub export_profile: Profile,
    /// The library's own `IngestReport`.
    pub ingest_report: Value,
}

/// Where a phase's CPU time went.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Profile {
    pub wall_secs: f64,
    /// User + system CPU seconds of the child process (kernel accounting).
    pub cpu_secs: Option<f64>,
    /// CPU seconds inside codec encode/decode calls, summed over threads (measured).
    pub codec_secs: f64,
    /// BLAKE3 seconds, estimated: two passes over the bytes (fragment ids and whole-file
    /// hashes) at the single-thread speed measured in the same child.
    pub hash_secs_est: f64,
    /// Signature seconds, estimated from the speed measured in the same child (ingest).
    pub signature_secs_est: f64,
    /// The bytes' time at the CPU ceiling computed from the speeds measured in the same
    /// child (`ceiling.rs`).
    pub ceiling_secs: f64,
}

impl Profile {
    fn add(&mut self, other: &Profile) {
        self.wall_secs += other.wall_secs;
        self.cpu_secs = match (self.cpu_secs, other.cpu_secs) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.codec_secs += other.codec_secs;
        self.hash_secs_est += other.hash_secs_est;
        self.signature_secs_est += other.signature_secs_est;
        self.ceiling_secs += other.ceiling_secs;
    }
}

/// haagenti's part of a run.
#[derive(Debug)]
pub struct HaagentiRun {
    pub summary: SystemResult,
    pub models: Vec<ModelResult>,
    pub stats: Option<Value>,
    /// Sums over every model.
    pub ingest_profile: Profile,
    pub export_profile: Profile,
}

impl HaagentiRun {
    /// Fails unless every exported file was byte-identical to its source.
    pub fn check(&self) -> Result<()> {
        let bad: Vec<&str> = self
            .models
            .iter()
            .filter(|m| !m.identical)
            .map(|m| m.name.as_str())
            .collect();
        if !bad.is_empty() {
            bail!(
                "haagenti exported files that differ from their sources: {}",
                bad.join(", ")
            );
        }
        Ok(())
    }
}

/// What a child prints (one JSON line on stdout).
#[derive(Debug, Serialize, Deserialize)]
struct ChildOutput {
    /// Seconds the library call took inside the child.
    secs: f64,
    cpu_secs: Option<f64>,
    codec_secs: f64,
    /// Single-core speeds measured in the child right after the operation.
    unit_speeds: UnitSpeeds,
    peak_rss_bytes: Option<u64>,
    report: Value,
}

impl ChildOutput {
    fn profile(&self, bytes: u64, op: ChildOp) -> Profile {
        let speeds = &self.unit_speeds;
        let mb = bytes as f64 / 1e6;
        let secs_at = |mb_s: f64| if mb_s > 0.0 { mb / mb_s } else { 0.0 };
        let (signature_secs_est, ceiling_mb_s) = match op {
            ChildOp::Ingest => (secs_at(speeds.signature_mb_s), speeds.ingest_ceiling()),
            // Verify does export's work but for the writes.
            ChildOp::Export | ChildOp::Verify => (0.0, speeds.export_ceiling()),
        };
        Profile {
            wall_secs: self.secs,
            cpu_secs: self.cpu_secs,
            codec_secs: self.codec_secs,
            hash_secs_est: 2.0 * secs_at(speeds.blake3_mb_s),
            signature_secs_est,
            ceiling_secs: secs_at(ceiling_mb_s),
        }
    }
}

/// A codec that adds up the CPU time of its inner codec's calls.
#[derive(Debug)]
struct TimedCodec {
    inner: Arc<dyn Codec>,
    nanos: Arc<AtomicU64>,
}

/// CPU nanoseconds the calling thread has run (`CLOCK_THREAD_CPUTIME_ID`, the running
/// slice included): unlike wall time, this does not count time the thread waited for a
/// core on a busy machine. One system call per reading; reading `/proc` files instead
/// (about 20 calls per codec call, and a walk over every thread of the process) cost the
/// measured phase itself a few percent of its CPU time.
fn thread_cpu_nanos() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let secs = u64::try_from(t.tv_sec).ok()?;
    let nanos = u64::try_from(t.tv_nsec).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

impl TimedCodec {
    fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let (cpu, wall) = (thread_cpu_nanos(), Instant::now());
        let out = f();
        let spent = match (cpu, thread_cpu_nanos()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => u64::try_from(wall.elapsed().as_nanos()).unwrap_or(u64::MAX),
        };
        self.nanos.fetch_add(spent, Ordering::Relaxed);
        out
    }
}

impl Codec for TimedCodec {
    fn tag(&self) -> CodecTag {
        self.inner.tag()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn encode(
        &self,
        input: &[u8],
        hint: EncodeHint,
        out: &mut Vec<u8>,
    ) -> haagenti_core::Result<()> {
        self.time(|| self.inner.encode(input, hint, out))
    }

    fn decode(
        &self,
        input: &[u8],
        decoded_len: usize,
        out: &mut Vec<u8>,
    ) -> haagenti_core::Result<()> {
        self.time(|| self.inner.decode(input, decoded_len, out))
    }

    // Forwarded, not left to the trait's default (a fresh vector and a copy): the
    // measured process must decode as the `haagenti` command does.
    fn decode_into(&self, input: &[u8], out: &mut [u8]) -> haagenti_core::Result<()> {
        self.time(|| self.inner.decode_into(input, out))
    }
}

/// `codecs()` with every codec wrapped in a [`TimedCodec`] sharing `nanos`.
fn timed_codecs(nanos: &Arc<AtomicU64>) -> CodecRegistry {
    let base = haagenti_fragments::default_codecs();
    let wrap = |c: &Arc<dyn Codec>| -> Arc<dyn Codec> {
        Arc::new(TimedCodec {
            inner: c.clone(),
            nanos: nanos.clone(),
        })
    };
    let registry = base
        .codecs()
        .fold(CodecRegistry::default(), |r, c| r.register(wrap(c)));
    registry.with_encoder(wrap(base.encoder()))
}

/// Opens the library in `dir` as the `haagenti` command does (similarity on: deltas and
/// cast references), with `codecs`.
fn open_library(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    codecs: CodecRegistry,
) -> Result<FragmentLibrary> {
    let location = dir
        .to_str()
        .with_context(|| format!("library path {} is not UTF-8", dir.display()))?;
    rt.block_on(haagenti_fragments::open(
        location,
        OpenOptions::default().codecs(codecs),
    ))
    .with_context(|| format!("open library {}", dir.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// What a child does.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ChildOp {
    Ingest,
    Export,
    Verify,
}

/// `child ingest LIBRARY NAME PATH`, `child export LIBRARY NAME OUT_DIR` or `child verify
/// LIBRARY NAME -` (no path: verify writes nothing).
#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    op: ChildOp,
    library: PathBuf,
    name: String,
    path: PathBuf,
}

/// Runs one ingest or export and prints its [`ChildOutput`] as one JSON line.
pub fn child(args: ChildArgs) -> Result<()> {
    let ChildArgs {
        op,
        library,
        name,
        path,
    } = args;
    let nanos = Arc::new(AtomicU64::new(0));
    let rt = runtime()?;
    let library = open_library(&rt, &library, timed_codecs(&nanos))?;
    let started = Instant::now();
    let report = match op {
        ChildOp::Ingest => serde_json::to_value(
            rt.block_on(library.ingest(&name, &path, IngestOptions::default()))
                .with_context(|| format!("ingest {name} from {}", path.display()))?,
        )?,
        ChildOp::Export => serde_json::to_value(
            rt.block_on(library.export(&name, &path, None))
                .with_context(|| format!("export {name} to {}", path.display()))?,
        )?,
        ChildOp::Verify => {
            let report = rt
                .block_on(library.verify(Some(&name), None))
                .with_context(|| format!("verify {name}"))?;
            if !report.problems.is_empty() {
                bail!("verify {name}: {}", report.problems.join("; "));
            }
            serde_json::to_value(report)?
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let (cpu_secs, peak_rss_bytes) = (util::cpu_secs(), util::peak_rss_bytes());
    let out = ChildOutput {
        secs,
        cpu_secs,
        codec_secs: nanos.load(Ordering::Relaxed) as f64 / 1e9,
        unit_speeds: UnitSpeeds::measure()?,
        peak_rss_bytes,
        report,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn run_child(op: &str, lib: &Path, name: &str, path: &Path) -> Result<ChildOutput> {
    util::settle()?;
    let args = [
        "child".as_ref(),
        op.as_ref(),
        lib.as_os_str(),
        name.as_ref(),
        path.as_os_str(),
    ];
    util::run_self(&args, &format!("child {op} {name}"))
}

/// Where the export of `model` under `out` puts each of its source files.
fn exported_pairs(model: &FamilyModel, out: &Path) -> Vec<(PathBuf, PathBuf)> {
    if model.path.is_dir() {
        model
            .files
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    out.join(f.strip_prefix(&model.path).unwrap_or(f)),
                )
            })
            .collect()
    } else {
        let file_name = model
            .path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        vec![(model.path.clone(), out.join(file_name))]
    }
}

/// Ingests every model of the family (in order) into a fresh library, then exports and
/// compares each one.
pub fn run(family: &Family, work: &Path) -> Result<HaagentiRun> {
    let lib = work.join("haagenti-library");
    let export_root = work.join("haagenti-export");
    let mut models = Vec::new();
    for m in &family.models {
        let child = run_child("ingest", &lib, &m.name, &m.path)?;
        let added = ["stored_bytes", "manifest_bytes"]
            .iter()
            .filter_map(|k| child.report.get(*k).and_then(Value::as_u64))
            .sum();
        models.push(ModelResult {
            name: m.name.clone(),
            kind: m.kind.to_string(),
            logical_bytes: m.bytes,
            stored_bytes_added: added,
            ingest_secs: child.secs,
            export_secs: 0.0,
            peak_rss_ingest_bytes: child.peak_rss_bytes,
            peak_rss_export_bytes: None,
            identical: false,
            ingest_profile: child.profile(m.bytes, ChildOp::Ingest),
            export_profile: Profile::default(),
            ingest_report: child.report,
        });
    }
    // Exports read a library in the page cache, as restic's restore reads its repository.
    util::warm(&lib)?;
    for (m, result) in family.models.iter().zip(&mut models) {
        let out = export_root.join(&m.name);
        let child = run_child("export", &lib, &m.name, &out)?;
        result.export_secs = child.secs;
        result.export_profile = child.profile(m.bytes, ChildOp::Export);
        result.peak_rss_export_bytes = child.peak_rss_bytes;
        let pairs = exported_pairs(m, &out);
        let mut identical = util::files_under(&out)?.len() == pairs.len();
        for (src, exported) in &pairs {
            identical &= util::same_bytes(src, exported).unwrap_or(false);
        }
        result.identical = identical;
        util::remove_dir_if_exists(&out)?;
    }
    let rt = runtime()?;
    let library = open_library(&rt, &lib, haagenti_fragments::default_codecs())?;
    let stats = rt.block_on(library.stats())?;
    let encoder = library.codecs().encoder().name();
    let (mut ingest_profile, mut export_profile) = (Profile::default(), Profile::default());
    ingest_profile.cpu_secs = Some(0.0);
    export_profile.cpu_secs = Some(0.0);
    for m in &models {
        ingest_profile.add(&m.ingest_profile);
        export_profile.add(&m.export_profile);
    }
    let stats_json = serde_json::to_value(&stats)?;
    let summary = SystemResult {
        stored_bytes: Some(stats.stored_bytes),
        ingest_secs: Some(models.iter().map(|m| m.ingest_secs).sum()),
        restore_secs: Some(models.iter().map(|m| m.export_secs).sum()),
        peak_rss_ingest_bytes: models.iter().filter_map(|m| m.peak_rss_ingest_bytes).max(),
        peak_rss_restore_bytes: models.iter().filter_map(|m| m.peak_rss_export_bytes).max(),
        verified: Some(models.iter().all(|m| m.identical)),
        note: format!(
            "library API, fs store (fsync on), {} codecs; one ingest per model, restore = export of every model",
            encoder
        ),
        ..SystemResult::new("haagenti".into(), family.total_bytes())
    };
    util::discard(&lib)?;
    Ok(HaagentiRun {
        summary,
        models,
        stats: Some(stats_json),
        ingest_profile,
        export_profile,
    })
}

/// Rounds of the large model: each ingests into a fresh library and exports it, so that
/// one moment of the shared host (its speed moves by tens of percent within minutes)
/// does not decide a target alone.
pub const BIG_MODEL_ROUNDS: usize = 3;

/// One large single-file model on its own: ingest and export time and peak RSS (peak
/// RSS must not grow with model size); medians of [`BIG_MODEL_ROUNDS`] rounds.
#[derive(Clone, Debug, Serialize)]
pub struct BigModelResult {
    pub bytes: u64,
    pub dtype: String,
    pub rounds: usize,
    /// Medians of the rounds.
    pub ingest_secs: f64,
    pub export_secs: f64,
    /// `verify` of the model at the end of its round: export's work without the writes.
    pub verify_secs: f64,
    /// Every round, in order.
    pub ingest_secs_each: Vec<f64>,
    pub export_secs_each: Vec<f64>,
    pub verify_secs_each: Vec<f64>,
    /// The highest of the rounds.
    pub peak_rss_ingest_bytes: Option<u64>,
    pub peak_rss_export_bytes: Option<u64>,
    /// Every round's export equals the source.
    pub identical: bool,
    /// The profiles of the median rounds.
    pub ingest_profile: Profile,
    pub export_profile: Profile,
    pub verify_profile: Profile,
    /// `std::fs::copy` of the source file right after each export (`copy_file_range`, in
    /// the kernel), median: how fast this machine writes that many new bytes into the
    /// page cache at that moment, the bound of any export.
    pub copy_secs: f64,
}

/// The round of median time (the upper one of an even count).
fn median_round(rounds: &[ChildOutput]) -> Result<&ChildOutput> {
    let mut order: Vec<&ChildOutput> = rounds.iter().collect();
    order.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    order.get(order.len() / 2).copied().context("no round ran")
}

pub fn big_model(work: &Path, bytes: u64, seed: u64) -> Result<BigModelResult> {
    let dir = work.join("big-model");
    let src = dir.join("big.safetensors");
    let started = Instant::now();
    let size = generate_model(&src, bytes, seed, Dtype::BF16)
        .with_context(|| format!("generate {}", src.display()))?;
    eprintln!(
        "  generated {} in {:.1} s",
        util::human(size),
        started.elapsed().as_secs_f64()
    );
    let (mut ingests, mut exports, mut verifies, mut copies) = (vec![], vec![], vec![], vec![]);
    let mut identical = true;
    for round in 0..BIG_MODEL_ROUNDS {
        eprintln!("  round {}/{BIG_MODEL_ROUNDS} ...", round + 1);
        // Libraries stay until the end of the run (`util::discard`).
        let lib = dir.join(format!("library-{round}"));
        let out = dir.join("export");
        ingests.push(run_child("ingest", &lib, "big", &src)?);
        util::warm(&lib)?;
        exports.push(run_child("export", &lib, "big", &out)?);
        util::settle()?;
        let copy = dir.join("copy.safetensors");
        let started = Instant::now();
        std::fs::copy(&src, &copy).with_context(|| format!("copy {}", src.display()))?;
        copies.push(started.elapsed().as_secs_f64());
        identical &= util::same_bytes(&src, &out.join("big.safetensors"))?;
        util::remove_dir_if_exists(&out)?;
        std::fs::remove_file(&copy).with_context(|| format!("remove {}", copy.display()))?;
        // After the plain copy, which must follow the export it is compared with.
        verifies.push(run_child("verify", &lib, "big", Path::new("-"))?);
    }
    std::fs::remove_file(&src).with_context(|| format!("remove {}", src.display()))?;
    util::discard(&dir)?;
    let (ingest, export) = (median_round(&ingests)?, median_round(&exports)?);
    let verify = median_round(&verifies)?;
    let peak = |runs: &[ChildOutput]| runs.iter().filter_map(|c| c.peak_rss_bytes).max();
    Ok(BigModelResult {
        bytes: size,
        dtype: "BF16".into(),
        rounds: BIG_MODEL_ROUNDS,
        ingest_secs: ingest.secs,
        export_secs: export.secs,
        verify_secs: verify.secs,
        ingest_secs_each: ingests.iter().map(|c| c.secs).collect(),
        export_secs_each: exports.iter().map(|c| c.secs).collect(),
        verify_secs_each: verifies.iter().map(|c| c.secs).collect(),
        peak_rss_ingest_bytes: peak(&ingests),
        peak_rss_export_bytes: peak(&exports),
        identical,
        ingest_profile: ingest.profile(size, ChildOp::Ingest),
        export_profile: export.profile(size, ChildOp::Export),
        verify_profile: verify.profile(size, ChildOp::Verify),
        copy_secs: util::median(copies),
    })
}
