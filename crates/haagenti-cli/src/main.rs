//! `haagenti`: ingest, export, inspect and verify model libraries.
//!
//! Exit status: 0 on success, 1 on an error (one line naming what failed), 2 on bad usage.

/// `println!` that returns the write error instead of panicking, so output into a closed
/// pipe (`haagenti show ... | head`) ends the command quietly (see `main`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod commands;
mod demo;
mod load;
mod open;
mod progress;
mod relations;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "haagenti",
    version,
    about = "Deduplicated, compressed storage for families of ML models",
    after_help = "Examples:
  haagenti demo                                    try it on a generated model family
  haagenti ingest --model sdxl-base ./sdxl-base/   a directory or one .safetensors file
  haagenti show --model sdxl-base                  how each file and tensor is stored
  haagenti compare --model sdxl-base --model sdxl-turbo
  haagenti export --model sdxl-base --out ./restored/
  haagenti --library s3://bucket/models stats      any command, on S3 storage

Exit codes: 0 success, 1 error (one line on stderr), 2 bad command line."
)]
struct Cli {
    /// Library location: a directory, file:///path, or s3://bucket/prefix.
    #[arg(
        long,
        global = true,
        env = "HAAGENTI_LIBRARY",
        default_value = "./haagenti-library"
    )]
    library: String,

    /// Endpoint of an S3-compatible service (MinIO, R2, Ceph, a local test server).
    #[arg(long, global = true, env = "HAAGENTI_S3_ENDPOINT")]
    s3_endpoint: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ingest a .safetensors file or a model directory under a model name.
    Ingest(IngestArgs),
    /// Rebuild every file of a model, bit-exact, under a directory.
    Export {
        /// The model to rebuild.
        #[arg(long)]
        model: String,
        /// Directory to write the model's files into, at their original relative paths
        /// (created if missing; each file appears only once its hash checks out).
        #[arg(long)]
        out: PathBuf,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the models in the library.
    List {
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Files, tensors and fragments of a model: how each is stored, who shares it.
    Show {
        /// The model to describe.
        #[arg(long)]
        model: String,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Library totals and where the savings come from.
    Stats {
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild models without writing, checking every fragment and file hash.
    Verify {
        /// Only this model (default: every model).
        #[arg(long)]
        model: Option<String>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove a model (its fragments go at the next gc).
    Rm {
        /// The model to remove.
        #[arg(long)]
        model: String,
    },
    /// Delete fragments no model references.
    Gc {
        /// Report what would be deleted without deleting it.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced objects younger than this many seconds.
        #[arg(long, default_value_t = 3600)]
        grace: u64,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// For each tensor of a model, the most similar tensors elsewhere in the library.
    Similar {
        /// The model whose tensors are looked up.
        #[arg(long)]
        model: String,
        /// Only this tensor (every file of the model is searched for it).
        #[arg(long)]
        tensor: Option<String>,
        /// Matches listed per tensor.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// How the bytes of two models relate: identical, delta-coded, cast-derived, unique.
    Compare {
        /// Give it twice: --model A --model B.
        #[arg(long = "model", required = true)]
        models: Vec<String>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the similarity index from the stored fragments (after losing or damaging
    /// `index/`).
    Reindex {
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Load models in sequence through one fragment cache and report what each fetched.
    Load(load::LoadArgs),
    /// Generate a small model family, ingest, export and verify it, and report.
    Demo {
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// Name to store the model under: up to 128 of A-Z a-z 0-9 . _ - (not starting with .).
    #[arg(long)]
    model: String,
    /// A .safetensors file or a model directory.
    path: PathBuf,
    /// Replace an existing model of the same name.
    #[arg(long)]
    replace: bool,
    /// Codec effort: fast, balanced or max.
    #[arg(long, default_value = "balanced")]
    codec: String,
    /// Fragment size in bytes of 16-bit tensors (65536 to 8388608; f32 fragments cover the
    /// same elements and are twice as large).
    #[arg(long)]
    fragment_size: Option<usize>,
    /// Opt-in lossy sharing: reference a stored fragment of the same dtype and length
    /// whose values are within this relative L2 error (e.g. 0.001) instead of storing the
    /// new one. Every substitution and its measured error is recorded in the manifest.
    #[arg(long, value_name = "E")]
    lossy_max_rel_error: Option<f64>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing left to say, like any Unix filter.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
