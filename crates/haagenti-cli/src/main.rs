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

mod cmd;
mod location;
#[cfg(all(feature = "mount", target_os = "linux"))]
mod mount;
mod progress;
mod render;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cmd::*;
use crate::location::Location;

#[derive(Parser, Debug)]
#[command(
    name = "haagenti",
    version,
    about = "Deduplicated, compressed storage for families of ML models",
    after_help = "Examples:
  haagenti demo                                    try it on a generated model family
  haagenti ingest --model sdxl-base ./sdxl-base/   a directory or one .safetensors file
  haagenti import-hf-cache                         every model of ~/.cache/huggingface/hub
  haagenti show --model sdxl-base                  how each file and tensor is stored
  haagenti compare --model sdxl-base --model sdxl-turbo
  haagenti export --model sdxl-base --out ./restored/
  haagenti --library s3://bucket/models stats      any command, on S3 storage
  haagenti mount ./models                          every model as read-only files
  haagenti repair --from ./originals/              heal damaged objects from the sources

Exit codes: 0 success, 1 error (one line on stderr), 2 bad command line."
)]
struct Cli {
    #[command(flatten)]
    location: Location,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ingest a .safetensors file or a model directory under a model name.
    Ingest(ingest::Args),
    /// Store every model snapshot of a Hugging Face hub cache, each revision a generation
    /// (refs/main's the newest); snapshots already stored are skipped.
    ImportHfCache(import_hf_cache::Args),
    /// Rebuild every file of a model, bit-exact, under a directory.
    Export(export::Args),
    /// List the models in the library.
    List(list::Args),
    /// Files, tensors and fragments of a model: how each is stored, who shares it.
    Show(show::Args),
    /// Library totals and where the savings come from.
    Stats(stats::Args),
    /// Rebuild models without writing, checking every fragment and file hash.
    Verify(verify::Args),
    /// Remove a model (its fragments go at the next gc).
    Rm(rm::Args),
    /// Delete fragments no model references.
    Gc(gc::Args),
    /// For each tensor of a model, the most similar tensors elsewhere in the library.
    Similar(similar::Args),
    /// How the bytes of two models relate: identical, delta-coded, cast-derived, unique.
    Compare(compare::Args),
    /// Rebuild the similarity index from the stored fragments (after losing or damaging
    /// `index/`).
    Reindex(reindex::Args),
    /// Find damaged stored objects, what depends on them, and heal them from the
    /// original files (`--from`).
    Repair(repair::Args),
    /// Load models in sequence through one fragment cache and report what each fetched.
    Load(load::Args),
    /// Every stored model as read-only files (FUSE): plain or Hugging Face cache layout.
    #[cfg(all(feature = "mount", target_os = "linux"))]
    Mount(cmd::mount::Args),
    /// The family map: one self-contained HTML page of how the models relate and what each costs.
    Report(cmd::report::Args),
    /// Generate a small model family, ingest, export and verify it, and report.
    Demo(demo::Args),
    /// Serve every model over HTTP as a Hugging Face Hub (HF_ENDPOINT=http://ADDR).
    #[cfg(feature = "serve")]
    Serve(cmd::serve::Args),
}

/// Runs the command the line names.
async fn run(cli: Cli) -> Result<()> {
    let location = &cli.location;
    match cli.command {
        Command::Ingest(args) => ingest::run(location, args).await,
        Command::ImportHfCache(args) => import_hf_cache::run(location, args).await,
        Command::Export(args) => export::run(location, args).await,
        Command::List(args) => list::run(location, args).await,
        Command::Show(args) => show::run(location, args).await,
        Command::Stats(args) => stats::run(location, args).await,
        Command::Verify(args) => verify::run(location, args).await,
        Command::Rm(args) => rm::run(location, args).await,
        Command::Gc(args) => gc::run(location, args).await,
        Command::Similar(args) => similar::run(location, args).await,
        Command::Compare(args) => compare::run(location, args).await,
        Command::Reindex(args) => reindex::run(location, args).await,
        Command::Repair(args) => repair::run(location, args).await,
        Command::Load(args) => load::run(location, args).await,
        #[cfg(all(feature = "mount", target_os = "linux"))]
        Command::Mount(args) => cmd::mount::run(location, args).await,
        Command::Report(args) => cmd::report::run(location, args).await,
        Command::Demo(args) => demo::run(args).await,
        #[cfg(feature = "serve")]
        Command::Serve(args) => cmd::serve::run(location, args).await,
    }
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
    let result = runtime.block_on(run(cli));
    if let Some(line) = location::retry_summary() {
        eprintln!("{line}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing left to say, like any Unix filter.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The chain of causes joined on one line, down to a store's error: its reason already
/// says what went wrong in a few words, and what lies below (an HTTP client's error and
/// the whole request) buries them.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        // An error that shows its cause in its own message: say it once.
        if parts
            .last()
            .is_some_and(|last: &String| last.ends_with(&text))
        {
            continue;
        }
        parts.push(text);
        if matches!(
            cause.downcast_ref::<haagenti_core::FragmentError>(),
            Some(haagenti_core::FragmentError::Backend { .. })
        ) {
            break;
        }
    }
    parts.join(": ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
