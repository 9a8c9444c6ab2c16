//! `haagenti import-hf-cache`: store every model snapshot of a Hugging Face hub cache.
//!
//! The cache holds `models--{org}--{name}/` (or `models--{name}`) with `blobs/<hash>`,
//! `refs/<branch>` (a commit hash) and `snapshots/<revision>/<path>`, each file a relative
//! symlink into `blobs/`. Every snapshot becomes a generation of model `org/name` with its
//! revision recorded; the one `refs/main` names is ingested last so it is the newest (the
//! one `list`, `export` and the plain mount show). Re-running imports only what is new.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use haagenti_core::{
    FragmentError, FragmentLibrary, IngestOptions, validate_model_name, validate_revision,
};
use haagenti_fragments::OpenOptions;
use serde::Serialize;

use crate::location::Location;
use crate::progress::Bar;
use crate::render::{human, print_json, warn_all};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The hub cache directory [default: $HF_HUB_CACHE, else $HF_HOME/hub, else
    /// ~/.cache/huggingface/hub].
    dir: Option<PathBuf>,
    /// Print one JSON report on stdout.
    #[arg(long)]
    json: bool,
}

/// The `--json` report.
#[derive(Debug, Serialize)]
struct Report {
    cache: PathBuf,
    /// One object per ingested snapshot: the ingest report plus `revision`.
    imported: Vec<serde_json::Value>,
    skipped: Vec<Skipped>,
    already_stored: Vec<Stored>,
    /// Snapshots whose ingest failed (the command exits 1 after trying the rest).
    failed: Vec<Failed>,
}

/// A repo, snapshot or snapshot file left out, and why.
#[derive(Debug, Serialize)]
struct Skipped {
    repo: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Stored {
    model: String,
    revision: String,
}

#[derive(Debug, Serialize)]
struct Failed {
    model: String,
    revision: String,
    error: String,
}

/// A model repo of the cache.
#[derive(Debug)]
struct Repo {
    /// The directory name, `models--{org}--{name}`.
    dir_name: String,
    path: PathBuf,
    model: String,
}

/// One snapshot directory of a repo.
#[derive(Clone, Debug)]
struct Snapshot {
    revision: String,
    path: PathBuf,
}

/// Collects the report and prints the human lines as it goes.
struct Out {
    json: bool,
    report: Report,
}

impl Out {
    fn skip(&mut self, skipped: Skipped) -> Result<()> {
        if !self.json {
            let mut what = skipped.repo.clone();
            if let Some(r) = &skipped.revision {
                what += &format!(" snapshot {}", short(r));
            }
            if let Some(p) = &skipped.path {
                what += &format!(" file {p}");
            }
            outln!("skipped {what}: {}", skipped.reason)?;
        }
        self.report.skipped.push(skipped);
        Ok(())
    }

    fn already_stored(&mut self, model: &str, revision: &str) -> Result<()> {
        if !self.json {
            outln!("already stored {model} @ {}", short(revision))?;
        }
        self.report.already_stored.push(Stored {
            model: model.to_string(),
            revision: revision.to_string(),
        });
        Ok(())
    }
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let dir = match args.dir {
        Some(dir) => dir,
        None => default_cache_dir()?,
    };
    // Checked before the library is opened: a wrong path writes nothing.
    let meta = std::fs::metadata(&dir)
        .with_context(|| format!("reading the hub cache {}", dir.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "the hub cache {} is not a directory",
        dir.display()
    );
    let repos = list_repos(&dir)?;
    let lib = location.open(OpenOptions::default()).await?;
    let mut out = Out {
        json: args.json,
        report: Report {
            cache: dir,
            imported: Vec::new(),
            skipped: Vec::new(),
            already_stored: Vec::new(),
            failed: Vec::new(),
        },
    };
    for repo in repos {
        match repo {
            Ok(repo) => import_repo(&lib, &repo, &mut out).await?,
            Err(skipped) => out.skip(skipped)?,
        }
    }
    let report = out.report;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "imported {} snapshots ({} new stored), {} already stored, {} skipped, {} failed",
            report.imported.len(),
            human(
                report
                    .imported
                    .iter()
                    .filter_map(|r| r["stored_bytes"].as_u64())
                    .sum()
            ),
            report.already_stored.len(),
            report.skipped.len(),
            report.failed.len(),
        )?;
    }
    anyhow::ensure!(
        report.failed.is_empty(),
        "{} of the cache's snapshots could not be imported (see the report above)",
        report.failed.len()
    );
    Ok(())
}

/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
fn default_cache_dir() -> Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE") {
        return Ok(dir.into());
    }
    if let Some(home) = var("HF_HOME") {
        return Ok(PathBuf::from(home).join("hub"));
    }
    let home = var("HOME")
        .context("no cache directory given, and none of HF_HUB_CACHE, HF_HOME, HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/huggingface/hub"))
}

/// The cache's repos, sorted by directory name: model repos, or why one is skipped.
/// Entries that are not repos (`.locks`, `version.txt`) are left out silently.
fn list_repos(dir: &Path) -> Result<Vec<Result<Repo, Skipped>>> {
    let mut entries: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            entries.push((name.to_string(), entry.path()));
        }
    }
    entries.sort();
    let mut repos = Vec::new();
    for (dir_name, path) in entries {
        let skip = |reason: String| Skipped {
            repo: dir_name.clone(),
            revision: None,
            path: None,
            reason,
        };
        if let Some(kind) = ["datasets", "spaces"]
            .into_iter()
            .find(|k| dir_name.starts_with(&format!("{k}--")))
        {
            repos.push(Err(skip(format!("a {kind} repo, not a model"))));
            continue;
        }
        let Some(repo_id) = dir_name.strip_prefix("models--") else {
            continue;
        };
        if !path.is_dir() {
            repos.push(Err(skip("not a directory".into())));
            continue;
        }
        let model = match repo_id.split("--").collect::<Vec<_>>()[..] {
            [name] => name.to_string(),
            [org, name] => format!("{org}/{name}"),
            _ => {
                repos.push(Err(skip(format!(
                    "{repo_id:?} is not a repo id (name or org--name)"
                ))));
                continue;
            }
        };
        if let Err(e) = validate_model_name(&model) {
            repos.push(Err(skip(format!("not a valid model name: {e}"))));
            continue;
        }
        repos.push(Ok(Repo {
            dir_name,
            path,
            model,
        }));
    }
    Ok(repos)
}

/// Imports the snapshots of one repo not stored yet, `refs/main`'s last.
async fn import_repo(lib: &FragmentLibrary, repo: &Repo, out: &mut Out) -> Result<()> {
    let skip = |revision: Option<&str>, reason: String| Skipped {
        repo: repo.dir_name.clone(),
        revision: revision.map(str::to_string),
        path: None,
        reason,
    };
    let (snapshots, main) = match list_snapshots(repo, out) {
        Ok(s) => s,
        Err(e) => return out.skip(skip(None, format!("{e:#}"))),
    };
    // The stored generations of the model, oldest first.
    let mut stored: Vec<StoredGeneration> = match lib.generations(&repo.model).await {
        Ok(generations) => generations
            .into_iter()
            .map(|m| StoredGeneration {
                revision: m.revision,
                files: m.files.into_iter().map(|f| (f.path, f.size)).collect(),
            })
            .collect(),
        Err(FragmentError::ModelNotFound(_)) => Vec::new(),
        Err(e) => {
            out.report.failed.push(Failed {
                model: repo.model.clone(),
                revision: String::new(),
                error: format!("reading its stored generations: {e}"),
            });
            if !out.json {
                outln!("FAILED {}: reading its stored generations: {e}", repo.model)?;
            }
            return Ok(());
        }
    };
    let mut imported_any = false;
    for snap in &snapshots {
        let files = scan_snapshot(repo, snap, out)?;
        // Stored already when a generation of this revision has every complete file (a
        // file whose download finished since then makes the snapshot new again).
        let complete = stored.iter().any(|g| {
            g.is(&snap.revision)
                && files
                    .iter()
                    .all(|f| g.files.contains(&(f.rel.clone(), f.size)))
        });
        if complete {
            out.already_stored(&repo.model, &snap.revision)?;
            continue;
        }
        let generation = StoredGeneration {
            revision: Some(snap.revision.clone()),
            files: files.iter().map(|f| (f.rel.clone(), f.size)).collect(),
        };
        if import_snapshot(lib, repo, snap, files, false, out).await? {
            imported_any = true;
            stored.push(generation);
        }
    }
    // New snapshots went in after main, which was stored by an earlier run: ingest main
    // again (it dedups fully) so that it is the newest generation.
    if let Some(main) = main
        && imported_any
        && stored.iter().any(|g| g.is(&main.revision))
        && !stored.last().is_some_and(|g| g.is(&main.revision))
    {
        // Its skipped files were reported above.
        let files = collect_files(&main.path, &main.path).0;
        import_snapshot(lib, repo, &main, files, true, out).await?;
    }
    Ok(())
}

/// What a stored generation of a model holds, to tell whether a snapshot is in it.
#[derive(Debug)]
struct StoredGeneration {
    revision: Option<String>,
    /// (path, size) of each file.
    files: HashSet<(String, u64)>,
}

impl StoredGeneration {
    fn is(&self, revision: &str) -> bool {
        self.revision.as_deref() == Some(revision)
    }
}

/// The complete files of a snapshot; reports the entries left out as skipped.
fn scan_snapshot(repo: &Repo, snap: &Snapshot, out: &mut Out) -> Result<Vec<SnapshotFile>> {
    let (files, skipped) = collect_files(&snap.path, &snap.path);
    for (path, reason) in skipped {
        out.skip(Skipped {
            repo: repo.dir_name.clone(),
            revision: Some(snap.revision.clone()),
            path: Some(path),
            reason,
        })?;
    }
    Ok(files)
}

/// Ingests one snapshot as a new generation (older ones kept). Returns whether it was
/// stored; a failed ingest is reported and returns `false`.
async fn import_snapshot(
    lib: &FragmentLibrary,
    repo: &Repo,
    snap: &Snapshot,
    files: Vec<SnapshotFile>,
    again_as_newest: bool,
    out: &mut Out,
) -> Result<bool> {
    if files.is_empty() {
        out.skip(Skipped {
            repo: repo.dir_name.clone(),
            revision: Some(snap.revision.clone()),
            path: None,
            reason: "no complete file in the snapshot".into(),
        })?;
        return Ok(false);
    }
    let mut opts = IngestOptions::default()
        .replace(true)
        .keep_older_generations(true)
        .revision(Some(snap.revision.clone()));
    if let Some(bar) = Bar::new("import", out.json) {
        opts = opts.progress(bar);
    }
    let files = files.into_iter().map(|f| (f.rel, f.source)).collect();
    match lib.ingest_files(&repo.model, files, opts).await {
        Ok(report) => {
            if !out.json {
                outln!(
                    "imported {} @ {}{} ({} files, {}): {} new fragments, {} stored",
                    repo.model,
                    short(&snap.revision),
                    if again_as_newest {
                        " again as the newest (refs/main)"
                    } else {
                        ""
                    },
                    report.files,
                    human(report.logical_bytes),
                    report.new_fragments,
                    human(report.stored_bytes),
                )?;
            }
            warn_all(&report.warnings);
            let mut value = serde_json::to_value(&report)?;
            if let Some(obj) = value.as_object_mut() {
                obj.insert("revision".into(), snap.revision.clone().into());
                obj.insert("again_as_newest".into(), again_as_newest.into());
            }
            out.report.imported.push(value);
            Ok(true)
        }
        Err(e) => {
            if !out.json {
                outln!("FAILED {} @ {}: {e}", repo.model, short(&snap.revision))?;
            }
            out.report.failed.push(Failed {
                model: repo.model.clone(),
                revision: snap.revision.clone(),
                error: e.to_string(),
            });
            Ok(false)
        }
    }
}

/// A repo's snapshots in import order (by directory mtime, then name; `refs/main`'s
/// last), and `refs/main`'s snapshot when the cache has it. Snapshot directories whose
/// name is not a revision are reported as skipped.
fn list_snapshots(repo: &Repo, out: &mut Out) -> Result<(Vec<Snapshot>, Option<Snapshot>)> {
    let main_ref = std::fs::read_to_string(repo.path.join("refs/main"))
        .ok()
        .map(|s| s.trim().to_string());
    let dir = repo.path.join("snapshots");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        // A repo whose first download has not got far enough.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no snapshots directory")
        }
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut snapshots: Vec<(SystemTime, Snapshot)> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !path.is_dir() {
            continue;
        }
        if let Err(e) = validate_revision(&name) {
            out.skip(Skipped {
                repo: repo.dir_name.clone(),
                revision: None,
                path: Some(format!("snapshots/{name}")),
                reason: format!("not a snapshot: {e}"),
            })?;
            continue;
        }
        let mtime = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        snapshots.push((
            mtime,
            Snapshot {
                revision: name,
                path,
            },
        ));
    }
    snapshots.sort_by(|a, b| (a.0, &a.1.revision).cmp(&(b.0, &b.1.revision)));
    let mut ordered: Vec<Snapshot> = snapshots.into_iter().map(|(_, s)| s).collect();
    let main = main_ref
        .and_then(|main| ordered.iter().position(|s| s.revision == main))
        .map(|i| ordered.remove(i));
    ordered.extend(main.clone());
    Ok((ordered, main))
}

/// A complete file of a snapshot.
#[derive(Debug)]
struct SnapshotFile {
    /// Its path in the snapshot (and the model), `/`-separated.
    rel: String,
    /// The snapshot entry (a symlink into `blobs/`).
    source: PathBuf,
    size: u64,
}

/// The files of snapshot directory `root`, following the symlinks into `blobs/`, and the
/// entries that cannot be read whole (a dangling symlink, a blob still downloading) as
/// (relative path, reason).
fn collect_files(root: &Path, dir: &Path) -> (Vec<SnapshotFile>, Vec<(String, String)>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    walk_snapshot(root, dir, &mut files, &mut skipped);
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    (files, skipped)
}

fn walk_snapshot(
    root: &Path,
    dir: &Path,
    files: &mut Vec<SnapshotFile>,
    skipped: &mut Vec<(String, String)>,
) {
    let rel_of = |p: &Path| -> String {
        let rel = p.strip_prefix(root).unwrap_or(p);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            skipped.push((rel_of(dir), format!("cannot list: {e}")));
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                skipped.push((rel_of(dir), format!("cannot list: {e}")));
                continue;
            }
        };
        let path = entry.path();
        let rel = rel_of(&path);
        if path
            .strip_prefix(root)
            .ok()
            .and_then(|r| r.to_str())
            .is_none()
        {
            skipped.push((rel, "file name is not UTF-8".into()));
            continue;
        }
        let Ok(link) = std::fs::symlink_metadata(&path) else {
            skipped.push((rel, "vanished while listing".into()));
            continue;
        };
        if link.is_dir() {
            walk_snapshot(root, &path, files, skipped);
            continue;
        }
        if link.is_symlink() {
            let target = std::fs::read_link(&path).unwrap_or_default();
            let incomplete = {
                let mut name = target.clone().into_os_string();
                name.push(".incomplete");
                path.parent().unwrap_or(dir).join(name)
            };
            if target.to_string_lossy().ends_with(".incomplete") || incomplete.exists() {
                skipped.push((rel, "its blob is an incomplete download".into()));
                continue;
            }
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push(SnapshotFile {
                rel,
                source: path,
                size: m.len(),
            }),
            Ok(_) => skipped.push((rel, "not a regular file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                skipped.push((rel, "dangling symlink (its blob is missing)".into()));
            }
            Err(e) => skipped.push((rel, format!("cannot read: {e}"))),
        }
    }
}

/// The first 12 characters of a revision, for people.
fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}
