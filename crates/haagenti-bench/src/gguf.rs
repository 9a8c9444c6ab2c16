//! The GGUF section: a Llama-shaped quant set written by llama.cpp's own gguf-py (F16,
//! Q8_0, Q5_1, Q5_0, Q4_1, Q4_0; `crates/haagenti-cli/tests/py/gguf_quant_set.py`),
//! ingested F16 first by haagenti, next to per-file zstd -3 and restic on the same files:
//! stored ratio, ingest and restore MB/s, and what each file adds to the library.
//!
//! It also measures the quant-aware codec of issue 16 (item 5) without adding one to the
//! format: each quantized tensor of each quant file, cut as ingest cuts it, encoded
//! standalone by the library's encoder as one stream, against the same bytes split into
//! the blocks' fp16 scales (and mins) and the packed quants, each encoded apart. The
//! format gains a codec only if the split pays (see ARCHITECTURE.md, decisions).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use haagenti_core::codec::{CodecRegistry, EncodeHint};
use haagenti_core::gguf::{self, GgmlType};
use haagenti_core::{CodecPolicy, Dtype, LibraryConfig};
use haagenti_testkit::synth::{Family, FamilyModel, FamilySpec, ModelKind};
use serde::Serialize;

use crate::system::SystemResult;
use crate::{baselines, haagenti, util};

/// The files of the set, in ingest order (F16 first).
const SET: [&str; 6] = ["F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"];

/// One file of the set.
#[derive(Clone, Debug, Serialize)]
pub struct GgufFile {
    pub name: String,
    pub bytes: u64,
    /// Bytes the file added to the haagenti library (fragments and manifest).
    pub added_bytes: u64,
}

/// What splitting block scales from quants would save on one quant file.
#[derive(Clone, Debug, Serialize)]
pub struct QuantSplit {
    pub ggml_type: String,
    /// Bytes of its quantized tensors.
    pub quant_bytes: u64,
    /// Encoded as the library stores them standalone (one stream per fragment).
    pub standalone_bytes: u64,
    /// Encoded as scales and quants apart (per fragment).
    pub split_bytes: u64,
}

impl QuantSplit {
    /// Share of the standalone bytes the split saves.
    pub fn saving(&self) -> f64 {
        1.0 - self.split_bytes as f64 / self.standalone_bytes.max(1) as f64
    }
}

/// The section's figures.
#[derive(Clone, Debug, Serialize)]
pub struct GgufBench {
    pub layers: u32,
    pub files: Vec<GgufFile>,
    pub systems: Vec<SystemResult>,
    /// The quant-aware codec measurement, one row per quant type.
    pub quant_split: Vec<QuantSplit>,
}

impl GgufBench {
    /// Every system that ran restored every file byte for byte.
    pub fn check(&self) -> Result<()> {
        match self.systems.iter().find(|s| s.verified == Some(false)) {
            Some(s) => bail!("{}: a restored GGUF file differs from its source", s.name),
            None => Ok(()),
        }
    }
}

/// Writes the quant set with the test interpreter (`HAAGENTI_TEST_PYTHON`, which
/// `cargo xtask bench` sets) and runs every system on it. `None` without an interpreter.
pub fn run(quick: bool, seed: u64, work: &Path) -> Result<Option<GgufBench>> {
    let Some(python) = std::env::var_os("HAAGENTI_TEST_PYTHON").map(PathBuf::from) else {
        eprintln!("  skipped: HAAGENTI_TEST_PYTHON is not set (cargo xtask bench sets it)");
        return Ok(None);
    };
    let layers: u32 = if quick { 4 } else { 16 };
    let dir = work.join("gguf-set");
    let script = util::workspace_root().join("crates/haagenti-cli/tests/py/gguf_quant_set.py");
    let status = Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .arg(layers.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    let mut models = Vec::new();
    for q in SET {
        let path = dir.join(format!("model-{q}.gguf"));
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        models.push(FamilyModel {
            name: format!("gguf-{q}"),
            kind: if q == "F16" {
                ModelKind::Parent
            } else {
                ModelKind::Cast
            },
            description: format!("{q} GGUF of the quant set"),
            path: path.clone(),
            files: vec![path],
            bytes,
            new_tensor_bytes: 0,
        });
    }
    let f16_bytes = models[0].bytes;
    let family = Family {
        dir: dir.clone(),
        spec: FamilySpec::new(seed, f16_bytes),
        models,
    };
    let run_dir = work.join("gguf-run");
    std::fs::create_dir_all(&run_dir)?;
    let haagenti_run = haagenti::run(&family, &run_dir)?;
    let files = family
        .models
        .iter()
        .zip(&haagenti_run.models)
        .map(|(m, r)| GgufFile {
            name: m.name.clone(),
            bytes: m.bytes,
            added_bytes: r.stored_bytes_added,
        })
        .collect();
    let quant_split = SET[1..]
        .iter()
        .map(|q| quant_split(&dir.join(format!("model-{q}.gguf"))))
        .collect::<Result<Vec<_>>>()?;
    let mut systems = vec![haagenti_run.summary.clone()];
    systems.push(baselines::zstd(&family, &run_dir, 1)?);
    systems.push(baselines::restic(&family, &run_dir)?);
    util::discard(&run_dir)?;
    util::discard(&dir)?;
    Ok(Some(GgufBench {
        layers,
        files,
        systems,
        quant_split,
    }))
}

/// Bytes of fp16 scale (and min) that open each block; the rest is packed quants.
fn scale_bytes(t: GgmlType) -> Option<usize> {
    match t {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => Some(2),
        GgmlType::Q4_1 | GgmlType::Q5_1 => Some(4),
        _ => None,
    }
}

/// Encoded size of `data` as the library stores a standalone object's payload: the
/// encoder's output, or the bytes raw when that is not smaller.
fn encoded_len(codecs: &CodecRegistry, data: &[u8], dtype: Option<Dtype>) -> Result<u64> {
    let mut out = Vec::new();
    let hint = EncodeHint {
        dtype,
        policy: CodecPolicy::default(),
    };
    codecs.encoder().encode(data, hint, &mut out)?;
    Ok(out.len().min(data.len()) as u64)
}

/// The quant-aware codec measurement for one quant file (see the module docs).
fn quant_split(path: &Path) -> Result<QuantSplit> {
    let header = gguf::read_header(path)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let codecs = haagenti_codec::default_registry();
    let fragment = LibraryConfig::default().fragment_size;
    let mut row = QuantSplit {
        ggml_type: String::new(),
        quant_bytes: 0,
        standalone_bytes: 0,
        split_bytes: 0,
    };
    for t in &header.tensors {
        let Some(head) = scale_bytes(t.ggml_type) else {
            continue;
        };
        row.ggml_type = t.ggml_type.name().to_string();
        let block = t.ggml_type.type_size() as usize;
        let data = &bytes[t.start as usize..t.end() as usize];
        // Fragments of whole blocks, about `fragment` bytes each, as ingest cuts them.
        for chunk in data.chunks((fragment / block).max(1) * block) {
            let (mut scales, mut quants) = (Vec::new(), Vec::new());
            for b in chunk.chunks_exact(block) {
                scales.extend_from_slice(&b[..head]);
                quants.extend_from_slice(&b[head..]);
            }
            row.quant_bytes += chunk.len() as u64;
            row.standalone_bytes += encoded_len(&codecs, chunk, None)?;
            row.split_bytes += encoded_len(&codecs, &scales, Some(Dtype::F16))?
                + encoded_len(&codecs, &quants, None)?;
        }
    }
    Ok(row)
}

/// The section of the report.
pub fn markdown(b: &GgufBench) -> String {
    let mut s = String::new();
    let total: u64 = b.files.iter().map(|f| f.bytes).sum();
    let _ = writeln!(
        s,
        "### GGUF quant set ({} layers, 32k-token tokenizer, {} in {} files, ingested F16 first)\n",
        b.layers,
        util::human(total),
        b.files.len()
    );
    let _ = writeln!(
        s,
        "| system | stored | ratio | ingest MB/s | restore MB/s | byte-identical |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
    for sys in &b.systems {
        if sys.status != "ok" {
            let _ = writeln!(
                s,
                "| {} | {} | | | | {} |",
                sys.name,
                sys.status,
                sys.reason.as_deref().unwrap_or("")
            );
            continue;
        }
        let rate = |secs: Option<f64>| {
            secs.map_or_else(
                || "–".to_string(),
                |t| format!("{:.0}", util::mb_per_s(sys.logical_bytes, t)),
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            sys.name,
            sys.stored_bytes.map_or_else(|| "–".into(), util::human),
            sys.ratio()
                .map_or_else(|| "–".into(), |x| format!("{x:.2}x")),
            rate(sys.ingest_secs),
            rate(sys.restore_secs),
            match sys.verified {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "–",
            }
        );
    }
    let _ = writeln!(s, "\n| file | size | haagenti adds | share |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for f in &b.files {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2}% |",
            f.name,
            util::human(f.bytes),
            util::human(f.added_bytes),
            100.0 * f.added_bytes as f64 / f.bytes.max(1) as f64
        );
    }
    let _ = writeln!(
        s,
        "\nA quant-aware codec (issue 16, item 5), measured on the quantized tensors of each \
         file as standalone fragments: the library's encoder on each fragment, against the \
         blocks' fp16 scales (and mins) and the packed quants encoded apart.\n"
    );
    let _ = writeln!(
        s,
        "| type | quantized bytes | standalone | split scales / quants | saving |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for q in &b.quant_split {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1}% |",
            q.ggml_type,
            util::human(q.quant_bytes),
            util::human(q.standalone_bytes),
            util::human(q.split_bytes),
            100.0 * q.saving()
        );
    }
    s
}
