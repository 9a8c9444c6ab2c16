//! The markdown table, `latest.json` and `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use haagenti_testkit::synth::Family;
use serde::Serialize;
use serde_json::{Value, json};

use crate::haagenti::{BigModelResult, ModelResult, Profile};
use crate::system::SystemResult;
use crate::util::{self, human, mb_per_s};

/// Version of the `latest.json` layout (docs/benchmarks.md describes it).
pub const SCHEMA_VERSION: u32 = 2;

/// The machine the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub mem_total_bytes: Option<u64>,
    pub kernel: String,
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let mem_total_bytes = fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
        });
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
            |_| std::env::consts::OS.to_string(),
            |s| s.trim().to_string(),
        );
        Self {
            cpu,
            cores: util::cores(),
            mem_total_bytes,
            kernel,
            date: utc_date(),
        }
    }

    fn line(&self) -> String {
        let mem = self.mem_total_bytes.map_or_else(String::new, |m| {
            format!(", {:.0} GiB RAM", m as f64 / (1u64 << 30) as f64)
        });
        format!(
            "{} cores ({}){mem}, Linux {}, {}",
            self.cores, self.cpu, self.kernel, self.date
        )
    }
}

fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Everything one run measured.
#[derive(Debug)]
pub struct Results<'a> {
    pub quick: bool,
    pub machine: Machine,
    pub family: &'a Family,
    pub systems: Vec<SystemResult>,
    pub haagenti_models: Vec<ModelResult>,
    /// `stats` of the haagenti library after the run, as the library reports it.
    pub haagenti_stats: Option<Value>,
    pub haagenti_ingest_profile: Profile,
    pub haagenti_export_profile: Profile,
    pub big_model: Option<BigModelResult>,
    /// The similarity family (issue 5 acceptance), as `src/similarity.rs` renders it;
    /// `None` when skipped.
    pub similarity_markdown: Option<String>,
    pub similarity: Value,
    /// Distance to the CPU ceiling (issue 17), as `src/ceiling.rs` renders it; `None`
    /// when a micro-benchmark row it needs is missing.
    pub ceiling_markdown: Option<String>,
    pub ceiling: Value,
    /// The GGUF quant set (issue 16), as `src/gguf.rs` renders it; `None` when skipped.
    pub gguf_markdown: Option<String>,
    pub gguf: Value,
    pub micro: Micro,
    pub wall_secs: f64,
}

/// The codec (issue 4) and signature/index (issue 5) micro-benchmarks, as their modules
/// render them.
#[derive(Debug)]
pub struct Micro {
    pub codecs_markdown: String,
    pub codecs: Value,
    pub lsh_markdown: String,
    pub lsh: Value,
    /// `None` when no S3 server was configured.
    pub s3_markdown: Option<String>,
    pub s3: Value,
    pub switch_markdown: String,
    pub switch: Value,
    pub mount_markdown: String,
    pub mount: Value,
    pub serve_markdown: String,
    pub serve: Value,
    pub python_markdown: String,
    pub python: Value,
}

fn profile_line(phase: &str, p: &Profile) -> String {
    let share = |secs: f64| match p.cpu_secs {
        Some(cpu) if cpu > 0.0 => format!("{secs:.2} s ({:.0}%)", 100.0 * secs / cpu),
        _ => format!("{secs:.2} s"),
    };
    format!(
        "- {phase}: {:.1} s wall, {} CPU (kernel); codec calls {}; BLAKE3 ≈ {} (estimate: 2 passes at single-thread speed); signatures: not measured separately (the library does not expose their time)",
        p.wall_secs,
        p.cpu_secs
            .map_or_else(|| "?".to_string(), |c| format!("{c:.1} s")),
        share(p.codec_secs),
        share(p.hash_secs_est),
    )
}

fn opt_secs(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |s| format!("{s:.2}"))
}

fn opt_rate(bytes: u64, secs: Option<f64>) -> String {
    secs.map_or_else(|| "–".into(), |s| format!("{:.0}", mb_per_s(bytes, s)))
}

fn opt_mib(v: Option<u64>) -> String {
    v.map_or_else(
        || "–".into(),
        |b| format!("{:.0}", b as f64 / (1u64 << 20) as f64),
    )
}

/// The corpus: one row per model.
pub fn corpus_table(family: &Family) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| model | kind | size | files | new tensor bytes | what it is |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|");
    for m in &family.models {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            m.name,
            m.kind,
            human(m.bytes),
            m.files.len(),
            human(m.new_tensor_bytes),
            m.description
        );
    }
    let _ = writeln!(
        s,
        "| **total** | | **{}** | {} | {} | seed {}, fp32 parent ≈ {} |",
        human(family.total_bytes()),
        family.models.iter().map(|m| m.files.len()).sum::<usize>(),
        human(family.models.iter().map(|m| m.new_tensor_bytes).sum()),
        family.spec.seed,
        human(family.spec.scale_bytes)
    );
    s
}

/// The full report in markdown.
pub fn markdown(r: &Results<'_>) -> String {
    let mut s = String::new();
    let total = r.family.total_bytes();
    let _ = writeln!(
        s,
        "### Side by side: {} corpus of {} ({} models){}\n",
        if r.quick { "quick" } else { "full" },
        human(total),
        r.family.models.len(),
        if r.quick {
            " — smoke run, numbers not representative"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| system | stored | ratio | ingest s | ingest MB/s | restore s | restore MB/s | peak RSS ingest / restore MiB | byte-identical | notes |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for sys in &r.systems {
        if sys.status != "ok" {
            let _ = writeln!(
                s,
                "| {} | {} | | | | | | | | {} |",
                sys.name,
                sys.status,
                sys.reason.as_deref().unwrap_or("")
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            sys.name,
            sys.stored_bytes.map_or_else(|| "–".into(), human),
            sys.ratio()
                .map_or_else(|| "–".into(), |x| format!("{x:.2}x")),
            opt_secs(sys.ingest_secs),
            opt_rate(sys.logical_bytes, sys.ingest_secs),
            opt_secs(sys.restore_secs),
            opt_rate(sys.logical_bytes, sys.restore_secs),
            opt_mib(sys.peak_rss_ingest_bytes),
            opt_mib(sys.peak_rss_restore_bytes),
            match sys.verified {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "–",
            },
            sys.note
        );
    }
    if !r.haagenti_models.is_empty() {
        let _ = writeln!(
            s,
            "\n### haagenti, model by model (ingested in this order)\n"
        );
        let _ = writeln!(
            s,
            "| model | kind | size | stored (added) | ratio | ingest MB/s | export MB/s | peak RSS ingest / export MiB | byte-identical |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|");
        for m in &r.haagenti_models {
            let ratio = if m.stored_bytes_added > 0 {
                format!(
                    "{:.2}x",
                    m.logical_bytes as f64 / m.stored_bytes_added as f64
                )
            } else {
                "∞".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {} / {} | {} |",
                m.name,
                m.kind,
                human(m.logical_bytes),
                human(m.stored_bytes_added),
                ratio,
                mb_per_s(m.logical_bytes, m.ingest_secs),
                mb_per_s(m.logical_bytes, m.export_secs),
                opt_mib(m.peak_rss_ingest_bytes),
                opt_mib(m.peak_rss_export_bytes),
                if m.identical { "yes" } else { "**NO**" }
            );
        }
    }
    if !r.haagenti_models.is_empty() {
        let _ = writeln!(
            s,
            "\nWhere haagenti's time went (shares of the phase's CPU time):\n"
        );
        let _ = writeln!(s, "{}", profile_line("ingest", &r.haagenti_ingest_profile));
        let _ = writeln!(s, "{}", profile_line("export", &r.haagenti_export_profile));
    }
    if let Some(b) = &r.big_model {
        let _ = writeln!(s, "\n### haagenti, one large model on its own\n");
        let _ = writeln!(
            s,
            "| model | ingest MB/s | export MB/s | verify MB/s (target >= export) | plain copy MB/s | peak RSS ingest / export MiB | byte-identical |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|");
        let _ = writeln!(
            s,
            "| {} {} (single file) | {:.0} | {:.0} | {:.0} {} | {:.0} | {} / {} | {} |",
            human(b.bytes),
            b.dtype,
            mb_per_s(b.bytes, b.ingest_secs),
            mb_per_s(b.bytes, b.export_secs),
            mb_per_s(b.bytes, b.verify_secs),
            util::mark(b.verify_secs <= b.export_secs),
            mb_per_s(b.bytes, b.copy_secs),
            opt_mib(b.peak_rss_ingest_bytes),
            opt_mib(b.peak_rss_export_bytes),
            if b.identical { "yes" } else { "**NO**" }
        );
        let each = |secs: &[f64]| {
            secs.iter()
                .map(|t| format!("{:.0}", mb_per_s(b.bytes, *t)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "\nMedians of {} rounds, each ingesting into a fresh library, exporting it \
             (every round's export compared byte for byte) and verifying it (every fragment \
             and the file's hash checked, nothing written). Each round in MB/s: ingest {}; \
             export {}; verify {}.",
            b.rounds,
            each(&b.ingest_secs_each),
            each(&b.export_secs_each),
            each(&b.verify_secs_each)
        );
        let _ = writeln!(
            s,
            "\n*Plain copy*: `std::fs::copy` of the source file (the kernel's \
             `copy_file_range`) right after each export, after a `sync` (median): how fast \
             the machine wrote that many new bytes into the page cache at that moment, which \
             bounds any export. On the 2-core VM of `docs/benchmarks.md` four such copies \
             of the 2 GiB model took 0.6 to 6.1 s (0.35 to 3.6 GB/s), slower the longer the \
             memory freed before them had sat unused (an export after a 10 s pause: 4.6 s, \
             without: 3.2 s), as when a VM hands freed pages back to its host \
             (virtio-balloon free page reporting) and each first touch is then a host fault."
        );
    }
    if let Some(md) = &r.ceiling_markdown {
        let _ = writeln!(s, "\n{}", md.trim_end());
    }
    if let Some(stats) = &r.haagenti_stats {
        let _ = writeln!(
            s,
            "\n### haagenti library stats after the run\n\n```json\n{}\n```",
            serde_json::to_string_pretty(stats).unwrap_or_default()
        );
    }
    if let Some(md) = &r.similarity_markdown {
        let _ = writeln!(s, "\n{}", md.trim_end());
    }
    if let Some(md) = &r.gguf_markdown {
        let _ = writeln!(s, "\n{}", md.trim_end());
    }
    let _ = writeln!(
        s,
        "\n### Codec micro-benchmarks (one core, 1 MiB fragments)\n\n{}",
        r.micro.codecs_markdown.trim_end()
    );
    let _ = writeln!(s, "\n{}", r.micro.lsh_markdown.trim_end());
    if let Some(md) = &r.micro.s3_markdown {
        let _ = writeln!(s, "\n{}", md.trim_end());
    }
    let _ = writeln!(s, "\n{}", r.micro.switch_markdown.trim_end());
    let _ = writeln!(s, "\n{}", r.micro.mount_markdown.trim_end());
    let _ = writeln!(s, "\n{}", r.micro.serve_markdown.trim_end());
    let _ = writeln!(s, "\n{}", r.micro.python_markdown.trim_end());
    let _ = writeln!(s, "\n### Corpus\n");
    s.push_str(&corpus_table(r.family));
    let _ = writeln!(
        s,
        "\nMachine: {}. Whole run {:.0} s. MB = 10^6 bytes; ratio = corpus bytes / stored bytes; peak RSS from the kernel (`VmHWM`) of the child process that ran the phase.",
        r.machine.line(),
        r.wall_secs
    );
    s
}

/// `latest.json` (schema in docs/benchmarks.md).
pub fn json(r: &Results<'_>) -> Value {
    let models: Vec<Value> = r
        .family
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "kind": m.kind.as_str(),
                "description": m.description,
                "bytes": m.bytes,
                "files": m.files.len(),
                "new_tensor_bytes": m.new_tensor_bytes,
            })
        })
        .collect();
    json!({
        "schema": SCHEMA_VERSION,
        "quick": r.quick,
        "wall_secs": r.wall_secs,
        "machine": r.machine,
        "corpus": {
            "seed": r.family.spec.seed,
            "parent_bytes": r.family.spec.scale_bytes,
            "total_bytes": r.family.total_bytes(),
            "models": models,
        },
        "systems": r.systems.iter().map(SystemResult::to_json).collect::<Vec<_>>(),
        "haagenti": {
            "models": r.haagenti_models,
            "stats": r.haagenti_stats,
            "ingest_profile": r.haagenti_ingest_profile,
            "export_profile": r.haagenti_export_profile,
            "big_model": r.big_model,
            "ceiling": r.ceiling,
        },
        "similarity_family": r.similarity,
        "gguf_quant_set": r.gguf,
        "micro": {
            "codecs": r.micro.codecs,
            "lsh": r.micro.lsh,
            "s3": r.micro.s3,
            "switch": r.micro.switch,
            "mount": r.micro.mount,
            "serve": r.micro.serve,
            "python": r.micro.python,
        },
    })
}

const BEGIN: &str = "<!-- bench:begin (generated by `cargo xtask bench`; do not edit by hand) -->";
const END: &str = "<!-- bench:end -->";

/// Replaces the generated section of docs/benchmarks.md with `markdown`.
pub fn update_docs(path: &Path, markdown: &str) -> Result<()> {
    let doc = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let (Some(a), Some(b)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("{}: generated-section markers not found", path.display());
    };
    if b < a {
        bail!("{}: markers out of order", path.display());
    }
    let updated = format!("{}{BEGIN}\n{markdown}\n{}", &doc[..a], &doc[b..]);
    fs::write(path, updated).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_generated_section() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.md");
        fs::write(&p, format!("intro\n{BEGIN}\nold\n{END}\noutro\n")).unwrap();
        update_docs(&p, "new table").unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            format!("intro\n{BEGIN}\nnew table\n{END}\noutro\n")
        );
        fs::write(&p, "no markers").unwrap();
        assert!(update_docs(&p, "x").is_err());
    }

    #[test]
    fn date_is_plausible() {
        let d = utc_date();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"), "{d}");
    }
}
