//! `haagenti show`: files, tensors and fragments of a model, how each is stored and who
//! shares it.

use anyhow::Result;
use futures::StreamExt;
use haagenti_core::{Encoding, FileContent, FragmentLibrary, ModelManifest, ModelSavings};
use haagenti_fragments::OpenOptions;
use serde_json::json;

use crate::location::Location;
use crate::render::{human, human_signed, print_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to describe.
    #[arg(long)]
    model: String,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = &location.open(OpenOptions::default()).await?;
    let (model, json) = (args.model.as_str(), args.json);
    let manifest: ModelManifest = lib.manifest(model).await?;
    let savings = lib.model_savings(model).await?;
    let users = lib.fragment_users().await?;
    let mut files = Vec::new();
    // Fragments whose stored header is damaged: shown as such, the rest as usual.
    let mut damaged = 0u64;
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
            FileContent::Gguf { tensors, .. } => file
                .untyped_fragments()
                .into_iter()
                .enumerate()
                .map(|(i, r)| describe(None, i, r))
                .chain(tensors.iter().flat_map(|t| {
                    t.fragments
                        .iter()
                        .enumerate()
                        .map(move |(i, r)| describe(Some(&t.name), i, r))
                }))
                .collect(),
        };
        // Two reads per fragment (header and size): in flight together, in file order.
        let infos: Vec<_> =
            futures::stream::iter(refs.iter().map(|(_, _, r)| lib.fragment_info(&r.id)))
                .buffered(32)
                .collect()
                .await;
        for ((tensor, i, r), info) in refs.into_iter().zip(infos) {
            let (stored, encoding) = match info {
                Ok(Some(meta)) => (meta.stored_len, describe_encoding(lib, &meta.encoding)),
                Ok(None) => (0, "MISSING".to_string()),
                Err(e) if e.is_corruption() => {
                    damaged += 1;
                    (0, "DAMAGED".to_string())
                }
                Err(e) => return Err(e.into()),
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
            .enumerate()
            .map(|(i, t)| {
                // A GGUF tensor: its ggml type (a quant type such as Q4_0, or F16…).
                let ggml_type = file.ggml_type(i).map(|g| g.name());
                json!({
                    "name": t.name, "dtype": t.dtype.to_string(), "shape": t.shape,
                    "ggml_type": ggml_type,
                    "offset": t.offset, "len": t.len, "fragments": t.fragments.len(),
                    "type": t.fragment_type().as_str(),
                })
            })
            .collect();
        files.push(json!({
            "path": file.path, "size": file.size, "blake3": blake3::Hash::from(file.blake3).to_hex().to_string(),
            "kind": match file.content {
                FileContent::Safetensors { .. } => "safetensors",
                FileContent::Gguf { .. } => "gguf",
                FileContent::Blob { .. } => "blob",
            },
            "tensors": tensors, "fragments": frag_rows,
        }));
    }
    let lossy = manifest.is_lossy().then(|| manifest.max_rel_error());
    if json {
        let doc = json!({
            "model": manifest.name, "created_unix_ms": manifest.created_unix_ms,
            "revision": manifest.revision, "revision_id": manifest.revision_id(),
            "logical_bytes": manifest.logical_bytes(), "lossy": manifest.is_lossy(),
            "max_rel_error": lossy, "savings": savings, "files": files,
            "layers": manifest.layers(),
        });
        print_json(&doc)?;
        return damage_found(model, damaged);
    }
    outln!(
        "model {} ({}), revision {}",
        manifest.name,
        human(manifest.logical_bytes()),
        manifest.revision.as_deref().unwrap_or("(none recorded)"),
    )?;
    if let Some(e) = lossy {
        outln!(
            "  LOSSY: {} fragments replaced by similar ones; max relative L2 error {e:.3e}",
            manifest.lossy.len()
        )?;
    }
    print_savings(&savings)?;
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
                t["ggml_type"]
                    .as_str()
                    .or(t["dtype"].as_str())
                    .unwrap_or_default(),
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
    damage_found(model, damaged)
}

/// Exit 1 at the end when a fragment of the model was found damaged.
fn damage_found(model: &str, damaged: u64) -> Result<()> {
    if damaged > 0 {
        anyhow::bail!(
            "model {model:?}: {damaged} fragment(s) DAMAGED; `haagenti repair --from PATH` heals them from the original files"
        );
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
        Encoding::Quant { source, from, to } => {
            format!("quant {from}->{to:?} of {}", source.short())
        }
        Encoding::QuantDelta {
            codec,
            source,
            from,
            to,
        } => format!(
            "delta({}) vs quant {from}->{to:?} of {}",
            lib.codecs().name_of(*codec),
            source.short()
        ),
    }
}

/// The savings lines of `show`.
fn print_savings(s: &ModelSavings) -> std::io::Result<()> {
    outln!(
        "  savings: {} of {} fragment bytes",
        human_signed(s.savings.total()),
        human(s.fragments.bytes)
    )?;
    outln!(
        "    exact        {} ({} stored by models ingested earlier, {} repeated in this model)",
        human(s.savings.exact_dedup_bytes),
        human(s.shared.bytes),
        human(s.repeated.bytes)
    )?;
    outln!(
        "    delta        {} ({} fragments, {} stored as {})",
        human_signed(s.savings.delta_bytes),
        s.delta.fragments,
        human(s.delta.bytes),
        human(s.delta.stored_bytes)
    )?;
    outln!(
        "    cast         {} ({} fragments, {} rebuilt from f32 sources)",
        human(s.savings.cast_bytes),
        s.cast.fragments,
        human(s.cast.bytes)
    )?;
    if s.quant.fragments > 0 {
        outln!(
            "    quant        {} ({} quantized fragments, {} rebuilt from float sources, stored as {})",
            human(s.savings.quant_bytes),
            s.quant.fragments,
            human(s.quant.bytes),
            human(s.quant.stored_bytes)
        )?;
    }
    outln!(
        "    compression  {} ({} standalone fragments, {} stored as {})",
        human_signed(s.savings.compression_bytes),
        s.standalone.fragments,
        human(s.standalone.bytes),
        human(s.standalone.stored_bytes)
    )?;
    if s.lossy.fragments > 0 {
        outln!(
            "    lossy        {} ({} fragments replaced by similar stored ones)",
            human(s.savings.lossy_bytes),
            s.lossy.fragments
        )?;
    }
    if s.missing.fragments > 0 {
        outln!(
            "    MISSING      {} ({} referenced fragments are not stored; run `haagenti verify`)",
            human(s.missing.bytes),
            s.missing.fragments
        )?;
    }
    Ok(())
}
