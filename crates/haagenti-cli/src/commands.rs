//! One function per subcommand.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use haagenti_core::{
    CodecPolicy, Encoding, FileContent, FragmentError, FragmentId, FragmentLibrary, GcOptions,
    IngestOptions, LibraryStats, LossyModel, ModelManifest, Progress,
};
use serde_json::json;

use crate::open::open_library;
use crate::progress::Bar;
use crate::{Cli, Command, IngestArgs};

pub async fn run(cli: Cli) -> Result<()> {
    let endpoint = cli.s3_endpoint.as_deref();
    let open = |policy: CodecPolicy, fragment_size: Option<usize>| {
        open_library(&cli.library, endpoint, policy, fragment_size)
    };
    match cli.command {
        Command::Ingest(args) => {
            let policy: CodecPolicy = args.codec.parse()?;
            ingest(&open(policy, args.fragment_size).await?, args).await
        }
        Command::Export { model, out, json } => {
            let lib = open(CodecPolicy::default(), None).await?;
            let bar = Bar::new("export", json);
            let report = lib
                .export(&model, &out, bar.as_deref().map(|b| b as &dyn Progress))
                .await
                .with_context(|| format!("exporting model {model:?}"))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                outln!(
                    "exported {} ({} files, {}) to {} in {:.2}s ({}/s)",
                    model,
                    report.files,
                    human(report.bytes),
                    out.display(),
                    report.seconds,
                    human(rate(report.bytes, report.seconds)),
                )?;
                if report.lossy {
                    outln!(
                        "LOSSY: {} of {} files differ from the ingested bytes; max relative L2 error {:.3e}",
                        report.lossy_files,
                        report.files,
                        report.max_rel_error
                    )?;
                }
            }
            Ok(())
        }
        Command::List { json } => list(&open(CodecPolicy::default(), None).await?, json).await,
        Command::Show { model, json } => {
            show(&open(CodecPolicy::default(), None).await?, &model, json).await
        }
        Command::Stats { json } => {
            let lib = open(CodecPolicy::default(), None).await?;
            let stats = lib.stats().await?;
            print_stats(&stats, &lib.lossy_models().await?, json)
        }
        Command::Verify { model, json } => {
            let lib = open(CodecPolicy::default(), None).await?;
            let bar = Bar::new("verify", json);
            let report = lib
                .verify(model.as_deref(), bar.as_deref().map(|b| b as &dyn Progress))
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                outln!(
                    "verified {} models, {} files, {}",
                    report.models,
                    report.files,
                    human(report.bytes)
                )?;
                if report.lossy_files > 0 {
                    outln!(
                        "LOSSY: {} files hold lossy substitutions: their fragments and lengths were checked, not the source's whole-file hash",
                        report.lossy_files
                    )?;
                }
                for p in &report.problems {
                    outln!("DAMAGED: {p}")?;
                }
            }
            if !report.is_ok() {
                bail!("verification failed: {}", report.problems.join("; "));
            }
            Ok(())
        }
        Command::Rm { model } => {
            let lib = open(CodecPolicy::default(), None).await?;
            lib.remove(&model).await?;
            outln!("removed {model} (run `haagenti gc` to free its unshared fragments)")?;
            Ok(())
        }
        Command::Gc {
            dry_run,
            grace,
            json,
        } => {
            let lib = open(CodecPolicy::default(), None).await?;
            let report = lib
                .gc(GcOptions {
                    dry_run,
                    grace: Duration::from_secs(grace),
                })
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                outln!(
                    "{} {} unreferenced objects ({}); kept {} live fragments and {} objects younger than {grace}s",
                    if dry_run { "would delete" } else { "deleted" },
                    report.garbage_objects,
                    human(report.garbage_bytes),
                    report.live_fragments,
                    report.young_objects,
                )?;
                if report.index_segments_merged > 0 {
                    outln!(
                        "merged {} similarity index segments into one",
                        report.index_segments_merged
                    )?;
                }
            }
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Command::Similar {
            model,
            tensor,
            limit,
            json,
        } => {
            let lib = open(CodecPolicy::default(), None).await?;
            crate::relations::similar(&lib, &model, tensor.as_deref(), limit as usize, json).await
        }
        Command::Compare { models, json } => {
            crate::relations::compare(&open(CodecPolicy::default(), None).await?, &models, json)
                .await
        }
        Command::Reindex { json } => {
            crate::relations::reindex(&open(CodecPolicy::default(), None).await?, json).await
        }
        Command::Demo { json } => crate::demo::run(json).await,
        Command::Load(args) => crate::load::run(&cli.library, endpoint, args).await,
    }
}

async fn ingest(lib: &FragmentLibrary, args: IngestArgs) -> Result<()> {
    let bar = Bar::new("ingest", args.json);
    let mut opts = IngestOptions::default()
        .replace(args.replace)
        .lossy_max_rel_error(args.lossy_max_rel_error);
    if let Some(bar) = bar {
        opts = opts.progress(bar);
    }
    let report = lib
        .ingest(&args.model, &args.path, opts)
        .await
        .map_err(|e| match e {
            FragmentError::ModelExists(_) => {
                anyhow::anyhow!("{e} (use --replace to overwrite it)")
            }
            e => e.into(),
        })
        .with_context(|| {
            format!(
                "ingesting {} as model {:?}",
                args.path.display(),
                args.model
            )
        })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        outln!(
            "ingested {} ({} files, {} tensors, {}) in {:.2}s ({}/s)",
            report.model,
            report.files,
            report.tensors,
            human(report.logical_bytes),
            report.seconds,
            human(rate(report.logical_bytes, report.seconds)),
        )?;
        outln!(
            "  {} already stored (exact dedup), {} new fragments: {} stored as {}",
            human(report.dedup_bytes),
            report.new_fragments,
            human(report.new_fragment_bytes),
            human(report.stored_bytes),
        )?;
        if report.delta_fragments + report.cast_fragments > 0 {
            outln!(
                "  of which {} as deltas ({} stored) and {} as casts of f32 fragments (no payload)",
                human(report.delta_fragment_bytes),
                human(report.delta_stored_bytes),
                human(report.cast_fragment_bytes),
            )?;
        }
        if report.lossy_fragments > 0 {
            outln!(
                "  LOSSY: {} fragments ({}) reference a similar stored fragment; largest relative L2 error {:.3e}",
                report.lossy_fragments,
                human(report.lossy_fragment_bytes),
                report.max_rel_error,
            )?;
        }
        if report.index_segments_merged > 0 {
            outln!(
                "  merged {} similarity index segments into one",
                report.index_segments_merged
            )?;
        }
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

async fn list(lib: &FragmentLibrary, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for name in lib.models().await? {
        let m = lib.manifest(&name).await?;
        rows.push(json!({
            "model": name,
            "files": m.files.len(),
            "tensors": m.files.iter().map(|f| f.tensors().len()).sum::<usize>(),
            "logical_bytes": m.logical_bytes(),
            "created_unix_ms": m.created_unix_ms,
            "lossy": m.is_lossy(),
        }));
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "models": rows }))?
        )?;
    } else if rows.is_empty() {
        outln!("no models in {}", lib.store().location())?;
    } else {
        for r in &rows {
            outln!(
                "{:<32} {:>4} files {:>6} tensors {:>10}",
                r["model"].as_str().unwrap_or_default(),
                r["files"],
                r["tensors"],
                human(r["logical_bytes"].as_u64().unwrap_or(0))
            )?;
        }
    }
    Ok(())
}

/// For every fragment, the models that reference it.
async fn sharing(lib: &FragmentLibrary) -> Result<BTreeMap<FragmentId, BTreeSet<String>>> {
    let mut users: BTreeMap<FragmentId, BTreeSet<String>> = BTreeMap::new();
    for name in lib.models().await? {
        let m = lib.manifest(&name).await?;
        for r in m.fragments() {
            users.entry(r.id).or_default().insert(name.clone());
        }
    }
    Ok(users)
}

async fn show(lib: &FragmentLibrary, model: &str, json: bool) -> Result<()> {
    let manifest: ModelManifest = lib.manifest(model).await?;
    let savings = lib.model_savings(model).await?;
    let users = sharing(lib).await?;
    let mut files = Vec::new();
    for file in &manifest.files {
        let mut frag_rows = Vec::new();
        let describe = |tensor: Option<&str>, i: usize, r: &haagenti_core::FragmentRef| {
            (tensor.map(str::to_string), i, *r)
        };
        let refs: Vec<_> = match &file.content {
            FileContent::Safetensors { tensors, .. } => tensors
                .iter()
                .flat_map(|t| {
                    t.fragments
                        .iter()
                        .enumerate()
                        .map(move |(i, r)| describe(Some(&t.name), i, r))
                })
                .collect(),
            FileContent::Blob { chunks } => chunks
                .iter()
                .enumerate()
                .map(|(i, r)| describe(None, i, r))
                .collect(),
        };
        // Two reads per fragment (header and size): in flight together, in file order.
        let infos: Vec<_> =
            futures::stream::iter(refs.iter().map(|(_, _, r)| lib.fragment_info(&r.id)))
                .buffered(32)
                .collect()
                .await;
        for ((tensor, i, r), info) in refs.into_iter().zip(infos) {
            let info = info?;
            let (stored, encoding) = match &info {
                Some(meta) => (meta.stored_len, describe_encoding(lib, &meta.encoding)),
                None => (0, "MISSING".to_string()),
            };
            let shared: Vec<&String> = users
                .get(&r.id)
                .into_iter()
                .flatten()
                .filter(|m| *m != model)
                .collect();
            frag_rows.push(json!({
                "tensor": tensor, "index": i, "id": r.id.to_hex(), "len": r.len,
                "stored_len": stored, "encoding": encoding, "shared_with": shared,
            }));
        }
        let tensors: Vec<_> = file
            .tensors()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name, "dtype": t.dtype.to_string(), "shape": t.shape,
                    "offset": t.offset, "len": t.len, "fragments": t.fragments.len(),
                    "type": t.fragment_type().as_str(),
                })
            })
            .collect();
        files.push(json!({
            "path": file.path, "size": file.size, "blake3": blake3::Hash::from(file.blake3).to_hex().to_string(),
            "kind": if matches!(file.content, FileContent::Safetensors { .. }) { "safetensors" } else { "blob" },
            "tensors": tensors, "fragments": frag_rows,
        }));
    }
    let lossy = manifest.is_lossy().then(|| manifest.max_rel_error());
    if json {
        let doc = json!({
            "model": manifest.name, "created_unix_ms": manifest.created_unix_ms,
            "logical_bytes": manifest.logical_bytes(), "lossy": manifest.is_lossy(),
            "max_rel_error": lossy, "savings": savings, "files": files,
        });
        outln!("{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    outln!(
        "model {} ({})",
        manifest.name,
        human(manifest.logical_bytes())
    )?;
    if let Some(e) = lossy {
        outln!(
            "  LOSSY: {} fragments replaced by similar ones; max relative L2 error {e:.3e}",
            manifest.lossy.len()
        )?;
    }
    crate::relations::print_savings(&savings)?;
    for f in &files {
        outln!(
            "  file {} ({}, {}), blake3 {}",
            f["path"].as_str().unwrap_or_default(),
            f["kind"].as_str().unwrap_or_default(),
            human(f["size"].as_u64().unwrap_or(0)),
            f["blake3"].as_str().unwrap_or_default()
        )?;
        for t in f["tensors"].as_array().into_iter().flatten() {
            outln!(
                "    tensor {} {} {} ({} fragments, {})",
                t["name"].as_str().unwrap_or_default(),
                t["dtype"].as_str().unwrap_or_default(),
                t["shape"],
                t["fragments"],
                t["type"].as_str().unwrap_or_default()
            )?;
        }
        for r in f["fragments"].as_array().into_iter().flatten() {
            let shared = r["shared_with"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            outln!(
                "      {} {}#{} {} -> {} {}{}",
                &r["id"].as_str().unwrap_or_default()[..12],
                r["tensor"].as_str().unwrap_or("chunk"),
                r["index"],
                human(r["len"].as_u64().unwrap_or(0)),
                human(r["stored_len"].as_u64().unwrap_or(0)),
                r["encoding"].as_str().unwrap_or_default(),
                if shared.is_empty() {
                    String::new()
                } else {
                    format!(" shared with {shared}")
                },
            )?;
        }
    }
    Ok(())
}

fn describe_encoding(lib: &FragmentLibrary, e: &Encoding) -> String {
    match e {
        Encoding::Standalone { codec } => lib.codecs().name_of(*codec),
        Encoding::Delta { codec, base } => format!(
            "delta({}) vs {}",
            lib.codecs().name_of(*codec),
            base.short()
        ),
        Encoding::Cast { source, from, to } => format!("cast {from}->{to} of {}", source.short()),
        Encoding::CastDelta {
            codec,
            source,
            from,
            to,
        } => format!(
            "delta({}) vs cast {from}->{to} of {}",
            lib.codecs().name_of(*codec),
            source.short()
        ),
    }
}

/// Library totals, savings by kind, and the models ingested lossily (if any).
pub fn print_stats(stats: &LibraryStats, lossy: &[LossyModel], json: bool) -> Result<()> {
    let ratio = if stats.stored_bytes == 0 {
        0.0
    } else {
        stats.logical_bytes as f64 / stats.stored_bytes as f64
    };
    if json {
        let mut doc = serde_json::to_value(stats)?;
        doc["ratio"] = json!(ratio);
        doc["lossy_models"] = serde_json::to_value(lossy)?;
        outln!("{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    outln!("models         {}", stats.models)?;
    outln!("fragments      {}", stats.fragments)?;
    outln!("logical bytes  {}", human(stats.logical_bytes))?;
    outln!(
        "stored bytes   {} (fragments {}, manifests {}, indexes {})",
        human(stats.stored_bytes),
        human(stats.fragment_bytes),
        human(stats.manifest_bytes),
        human(stats.index_bytes)
    )?;
    outln!("ratio          {ratio:.2}x")?;
    outln!(
        "saved by exact dedup   {}",
        human(stats.savings.exact_dedup_bytes)
    )?;
    outln!(
        "saved by deltas        {}",
        human_signed(stats.savings.delta_bytes)
    )?;
    outln!("saved by casts         {}", human(stats.savings.cast_bytes))?;
    outln!(
        "saved by compression   {}",
        human_signed(stats.savings.compression_bytes)
    )?;
    if stats.savings.lossy_bytes > 0 {
        outln!(
            "saved by lossy sharing {}",
            human(stats.savings.lossy_bytes)
        )?;
    }
    if !lossy.is_empty() {
        let list: Vec<String> = lossy
            .iter()
            .map(|m| {
                format!(
                    "{} (max relative L2 error {:.3e})",
                    m.model, m.max_rel_error
                )
            })
            .collect();
        outln!("LOSSY: {}", list.join(", "))?;
    }
    Ok(())
}

pub fn rate(bytes: u64, seconds: f64) -> u64 {
    if seconds > 0.0 {
        (bytes as f64 / seconds) as u64
    } else {
        0
    }
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn human_signed(bytes: i64) -> String {
    if bytes < 0 {
        format!("-{}", human(bytes.unsigned_abs()))
    } else {
        human(bytes as u64)
    }
}
