//! `haagenti-bench`: run by `cargo xtask bench`; prints a markdown table and writes JSON.
//!
//! Subcommands:
//! - `run [--quick] [--scale BYTES] [--seed N] [--out DIR] [--big-model BYTES]
//!   [--sim-parent BYTES]`: generate the corpus, run haagenti and the baselines on it side
//!   by side, ingest and export one large model on its own (peak RSS), run the similarity
//!   family, print the table, write `OUT/latest.json` and, for a full run,
//!   `docs/benchmarks.md`.
//! - `similarity [--quick] [--sim-parent BYTES] [--seed N] [--out DIR]`: only the
//!   similarity family (issue 5 acceptance); prints its section and writes
//!   `OUT/similarity.json`.
//! - `mount [--quick]`: only reading through `haagenti mount`.
//! - `serve [--quick]`: only downloading from `haagenti serve` next to `http.server`.
//! - `python [--quick]`: only the Python package next to `safetensors`.
//! - `gen-corpus DIR [--quick] [--scale BYTES] [--seed N]`: write the corpus for inspection.
//! - `child ...`: internal; the ingest and export phases run in a child process so their
//!   peak RSS is the kernel's own accounting (`VmHWM`) of that process alone.

mod baselines;
mod ceiling;
mod codecs;
mod corpus;
mod gguf;
mod haagenti;
mod lsh;
mod mount;
mod python;
mod report;
mod s3;
mod serve;
mod similarity;
mod switch;
mod system;
mod util;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Default corpus size of a full run (all models together).
const DEFAULT_SCALE: u64 = 1_000_000_000;
/// Corpus size of `--quick`.
const QUICK_SCALE: u64 = 50_000_000;
/// Size of the single large model of a full run (0 in `--quick`).
const DEFAULT_BIG_MODEL: u64 = 2 << 30;
const DEFAULT_SEED: u64 = 42;
/// Models of the mount section: read sequentially (peak RSS with a 256 MiB cache), and
/// read tensor by tensor with `safe_open`.
const DEFAULT_MOUNT_MODEL: u64 = 2 << 30;
const DEFAULT_MOUNT_TENSORS: u64 = 400_000_000;
const QUICK_MOUNT_MODEL: u64 = 64 << 20;
const QUICK_MOUNT_TENSORS: u64 = 32 << 20;
/// Base model of the Python section (its fine-tune is made from it).
const DEFAULT_PYTHON_MODEL: u64 = 400_000_000;
const QUICK_PYTHON_MODEL: u64 = 32 << 20;
/// Model of the serve section, downloaded whole by one and by eight clients.
const DEFAULT_SERVE_MODEL: u64 = 1 << 30;
const QUICK_SERVE_MODEL: u64 = 64 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "haagenti-bench",
    about = "The benchmark harness behind `cargo xtask bench`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate the corpus, run haagenti and the baselines on it, the large model, the
    /// similarity family and the micro-benchmarks; print the table, write OUT/latest.json
    /// and, for a full run, docs/benchmarks.md.
    Run(OptionArgs),
    /// Only the similarity family; prints its section and writes OUT/similarity.json.
    Similarity(OptionArgs),
    /// Only model switching through the shared fragment cache.
    Switch {
        /// The quick configuration.
        #[arg(long)]
        quick: bool,
        /// Print the result as one JSON line (how `run` reads it from a child process).
        #[arg(long)]
        json: bool,
    },
    /// Only reading through `haagenti mount` (needs HAAGENTI_BENCH_CLI and
    /// HAAGENTI_TEST_PYTHON, which `cargo xtask bench` sets).
    Mount {
        /// The quick configuration.
        #[arg(long)]
        quick: bool,
    },
    /// Only downloading from `haagenti serve` next to `python3 -m http.server` (needs
    /// HAAGENTI_BENCH_CLI, which `cargo xtask bench` sets).
    Serve {
        /// The quick configuration.
        #[arg(long)]
        quick: bool,
    },
    /// Only the Python package next to `safetensors` (needs HAAGENTI_TEST_PYTHON and the
    /// package built into it, which `cargo xtask bench` does).
    Python {
        /// The quick configuration.
        #[arg(long)]
        quick: bool,
    },
    /// The GGUF quant set section alone (needs HAAGENTI_TEST_PYTHON with gguf-py).
    Gguf {
        /// Small sizes, for CI and a first look.
        #[arg(long)]
        quick: bool,
    },
    /// Write the corpus under DIR for inspection.
    GenCorpus {
        /// Directory to write the corpus into.
        dir: PathBuf,
        #[command(flatten)]
        options: OptionArgs,
    },
    /// Internal: one ingest or export in a process of its own (its peak RSS is the
    /// kernel's accounting of that process alone).
    #[command(hide = true)]
    Child(haagenti::ChildArgs),
}

/// Options of `run`, `similarity` and `gen-corpus`. Sizes take K/M/G (decimal) or
/// Ki/Mi/Gi (binary) suffixes.
#[derive(clap::Args, Debug)]
struct OptionArgs {
    /// Small sizes, for CI and a first look.
    #[arg(long)]
    quick: bool,
    /// Total corpus size in bytes [default: 1G, or 50M with --quick].
    #[arg(long, value_parser = util::parse_bytes)]
    scale: Option<u64>,
    /// Seed of every generated model.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Output directory [default: target/bench].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Size of the single large model, 0 to skip [default: 2Gi, or 0 with --quick].
    #[arg(long, value_parser = util::parse_bytes)]
    big_model: Option<u64>,
    /// Size of the similarity family's fp32 parent, 0 to skip.
    #[arg(long, value_parser = util::parse_bytes)]
    sim_parent: Option<u64>,
}

/// Resolved options: the defaults filled in.
#[derive(Debug)]
struct Options {
    quick: bool,
    /// Total corpus size in bytes.
    scale: u64,
    seed: u64,
    out: PathBuf,
    /// Size of the single large model (0: skip).
    big_model: u64,
    /// Size of the similarity family's fp32 parent (0: skip).
    sim_parent: u64,
}

impl From<OptionArgs> for Options {
    fn from(a: OptionArgs) -> Self {
        let quick = a.quick;
        Self {
            quick,
            scale: a
                .scale
                .unwrap_or(if quick { QUICK_SCALE } else { DEFAULT_SCALE }),
            seed: a.seed,
            out: a
                .out
                .unwrap_or_else(|| util::workspace_root().join("target/bench")),
            big_model: a
                .big_model
                .unwrap_or(if quick { 0 } else { DEFAULT_BIG_MODEL }),
            sim_parent: a.sim_parent.unwrap_or(if quick {
                similarity::QUICK_PARENT_BYTES
            } else {
                similarity::FULL_PARENT_BYTES
            }),
        }
    }
}

/// `(sequentially read model, safe_open model)` sizes of the mount section.
fn mount_sizes(quick: bool) -> (u64, u64) {
    if quick {
        (QUICK_MOUNT_MODEL, QUICK_MOUNT_TENSORS)
    } else {
        (DEFAULT_MOUNT_MODEL, DEFAULT_MOUNT_TENSORS)
    }
}

fn python_size(quick: bool) -> u64 {
    if quick {
        QUICK_PYTHON_MODEL
    } else {
        DEFAULT_PYTHON_MODEL
    }
}

fn serve_size(quick: bool) -> u64 {
    if quick {
        QUICK_SERVE_MODEL
    } else {
        DEFAULT_SERVE_MODEL
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Libraries moved aside (`util::discard`) are deleted once nothing is measured.
    let result = dispatch(cli.command);
    // The run's own failure, if any, is the one to report.
    let emptied = util::empty_trash();
    let result = result.and(emptied);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("haagenti-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(options) => run(&options.into()),
        Command::Similarity(options) => similarity_only(&options.into()),
        Command::GenCorpus { dir, options } => {
            let opts = Options::from(options);
            let family = corpus::generate(&dir, opts.seed, opts.scale)?;
            print!("{}", report::corpus_table(&family));
            Ok(())
        }
        Command::Switch { quick, json } => {
            // Model switching alone: to profile or re-check it, and as the child process
            // `run` measures it in (`--json`).
            let bench = switch::run(quick)?;
            if json {
                println!("{}", serde_json::to_string(&bench)?);
            } else {
                println!("{}", switch::markdown(&bench));
            }
            Ok(())
        }
        Command::Mount { quick } => {
            let (model, tensors) = mount_sizes(quick);
            let work = util::workspace_root().join("target/bench/work-mount");
            let bench = mount::run(&work, model, tensors, DEFAULT_SEED)?;
            util::remove_dir_if_exists(&work)?;
            println!("{}", mount::markdown(&bench));
            bench.check()
        }
        Command::Serve { quick } => {
            let work = util::workspace_root().join("target/bench/work-serve");
            let bench = serve::run(&work, serve_size(quick), DEFAULT_SEED)?;
            util::remove_dir_if_exists(&work)?;
            println!("{}", serve::markdown(&bench));
            bench.check()
        }
        Command::Python { quick } => {
            let work = util::workspace_root().join("target/bench/work-python");
            let bench = python::run(&work, python_size(quick), DEFAULT_SEED)?;
            util::remove_dir_if_exists(&work)?;
            println!("{}", python::markdown(&bench));
            bench.check()
        }
        Command::Gguf { quick } => {
            let work = util::workspace_root().join("target/bench/work-gguf");
            let bench = gguf::run(quick, DEFAULT_SEED, &work)?;
            util::remove_dir_if_exists(&work)?;
            match bench {
                Some(bench) => {
                    println!("{}", gguf::markdown(&bench));
                    bench.check()
                }
                None => anyhow::bail!("HAAGENTI_TEST_PYTHON is not set"),
            }
        }
        Command::Child(args) => haagenti::child(args),
    }
}

fn run(opts: &Options) -> Result<()> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let corpus_dir = opts
        .out
        .join(format!("corpus-{}-{}", opts.seed, opts.scale));
    eprintln!(
        "corpus: {} ({} bytes, seed {})",
        corpus_dir.display(),
        opts.scale,
        opts.seed
    );
    let family = corpus::generate(&corpus_dir, opts.seed, opts.scale)?;
    let work = opts.out.join("work");
    util::remove_dir_if_exists(&work)?;
    std::fs::create_dir_all(&work)?;

    let mut systems = Vec::new();
    eprintln!("haagenti ...");
    let haagenti = haagenti::run(&family, &work)?;
    systems.push(haagenti.summary.clone());
    for threads in [1, util::cores()] {
        eprintln!("zstd -3, {threads} thread(s) ...");
        systems.push(baselines::zstd(&family, &work, threads)?);
    }
    eprintln!("restic ...");
    systems.push(baselines::restic(&family, &work)?);
    let big_model = if opts.big_model > 0 {
        eprintln!("one {} model on its own ...", util::human(opts.big_model));
        Some(haagenti::big_model(&work, opts.big_model, opts.seed)?)
    } else {
        None
    };

    let similarity = if opts.sim_parent > 0 {
        eprintln!(
            "similarity family (fp32 parent {}) ...",
            util::human(opts.sim_parent)
        );
        Some(similarity::run(
            opts.quick,
            opts.seed,
            opts.sim_parent,
            &work,
        )?)
    } else {
        None
    };

    eprintln!("GGUF quant set ...");
    let gguf_bench = gguf::run(opts.quick, opts.seed, &work)?;

    eprintln!("codec micro-benchmarks ...");
    let codec_rows = codecs::run(opts.quick)?;
    eprintln!("signature and index micro-benchmarks ...");
    let lsh_bench = lsh::run(opts.quick)?;
    eprintln!("S3 (local server) next to the filesystem store ...");
    let s3_bench = s3::run(opts.quick)?;
    eprintln!("model switching through the shared fragment cache ...");
    let switch_bench = switch::run_in_child(opts.quick)?;
    eprintln!("reading through haagenti mount ...");
    let (mount_bytes, tensors_bytes) = mount_sizes(opts.quick);
    let mount_bench = mount::run(&work, mount_bytes, tensors_bytes, opts.seed)?;
    eprintln!("downloading from haagenti serve ...");
    let serve_bench = serve::run(&work, serve_size(opts.quick), opts.seed)?;
    eprintln!("the Python package next to safetensors ...");
    let python_bench = python::run(&work, python_size(opts.quick), opts.seed)?;

    let micro_speeds = ceiling::UnitSpeeds::from_micro(&codec_rows, &lsh_bench);
    let ceiling = {
        let corpus_bytes: u64 = family.models.iter().map(|m| m.bytes).sum();
        let mut rows = vec![
            ceiling::PhaseRow::new(
                "corpus ingest (one per model)",
                corpus_bytes,
                &haagenti.ingest_profile,
            ),
            ceiling::PhaseRow::new("corpus export", corpus_bytes, &haagenti.export_profile),
        ];
        if let Some(b) = &big_model {
            let phases = [
                ("ingest", &b.ingest_profile),
                ("export", &b.export_profile),
                ("verify", &b.verify_profile),
            ];
            for (phase, profile) in phases {
                let name = format!("{} {} {phase}", util::human(b.bytes), b.dtype);
                rows.push(ceiling::PhaseRow::new(&name, b.bytes, profile));
            }
        }
        (micro_speeds, rows)
    };

    // Checked after the report is out, so a failure still leaves the numbers to look at.
    let identical = haagenti.check().and_then(|()| match &big_model {
        Some(b) if !b.identical => {
            anyhow::bail!("the large model's export differs from its source")
        }
        _ => Ok(()),
    });
    let identical = identical.and_then(|()| {
        similarity
            .as_ref()
            .map_or(Ok(()), similarity::SimilarityBench::check)
    });
    let identical =
        identical.and_then(|()| gguf_bench.as_ref().map_or(Ok(()), gguf::GgufBench::check));
    let identical = identical
        .and_then(|()| mount_bench.check())
        .and_then(|()| serve_bench.check())
        .and_then(|()| python_bench.check());
    let results = report::Results {
        quick: opts.quick,
        machine: report::Machine::detect(),
        family: &family,
        systems,
        haagenti_models: haagenti.models,
        haagenti_stats: haagenti.stats,
        haagenti_ingest_profile: haagenti.ingest_profile,
        haagenti_export_profile: haagenti.export_profile,
        big_model,
        ceiling_markdown: Some(ceiling::markdown(ceiling.0.as_ref(), &ceiling.1)),
        ceiling: serde_json::to_value(&ceiling)?,
        similarity_markdown: similarity.as_ref().map(similarity::markdown),
        similarity: serde_json::to_value(&similarity)?,
        gguf_markdown: gguf_bench.as_ref().map(gguf::markdown),
        gguf: serde_json::to_value(&gguf_bench)?,
        micro: report::Micro {
            codecs_markdown: codecs::markdown(&codec_rows),
            codecs: serde_json::to_value(&codec_rows)?,
            lsh_markdown: lsh::markdown(&lsh_bench),
            lsh: serde_json::to_value(&lsh_bench)?,
            s3_markdown: s3_bench.as_ref().map(s3::markdown),
            s3: serde_json::to_value(&s3_bench)?,
            switch_markdown: switch::markdown(&switch_bench),
            switch: serde_json::to_value(&switch_bench)?,
            mount_markdown: mount::markdown(&mount_bench),
            mount: serde_json::to_value(&mount_bench)?,
            serve_markdown: serve::markdown(&serve_bench),
            serve: serde_json::to_value(&serve_bench)?,
            python_markdown: python::markdown(&python_bench),
            python: serde_json::to_value(&python_bench)?,
        },
        wall_secs: started.elapsed().as_secs_f64(),
    };
    let markdown = report::markdown(&results);
    println!("{markdown}");
    let json_path = opts.out.join("latest.json");
    std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&report::json(&results))?,
    )
    .with_context(|| format!("write {}", json_path.display()))?;
    eprintln!("wrote {}", json_path.display());
    if !opts.quick {
        let docs = util::workspace_root().join("docs/benchmarks.md");
        report::update_docs(&docs, &markdown)?;
        eprintln!("updated {}", docs.display());
    }
    util::remove_dir_if_exists(&work)?;
    identical
}

/// `similarity`: the similarity family on its own.
fn similarity_only(opts: &Options) -> Result<()> {
    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let work = opts.out.join("work-similarity");
    util::remove_dir_if_exists(&work)?;
    let bench = similarity::run(opts.quick, opts.seed, opts.sim_parent.max(1), &work)?;
    util::remove_dir_if_exists(&work)?;
    println!("{}", similarity::markdown(&bench));
    let json_path = opts.out.join("similarity.json");
    let json = serde_json::json!({
        "machine": report::Machine::detect(),
        "similarity_family": bench,
    });
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("write {}", json_path.display()))?;
    eprintln!("wrote {}", json_path.display());
    bench.check()
}
