//! `haagenti import-hf-cache` on a real Hugging Face hub cache layout: blobs named by
//! hash, snapshots of relative symlinks, `refs/main`, incomplete downloads, non-model
//! repos.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use haagenti_core::Dtype;
use haagenti_testkit::synth;
use serde_json::Value;

mod common;
use common::{haagenti, json, ok};

/// A 40-hex revision, as the hub names commits.
fn revision(seed: &str) -> String {
    blake3::hash(seed.as_bytes()).to_hex()[..40].to_string()
}

/// Writes `bytes` as `blobs/<hash>` of `repo` (unless present); returns the hash.
fn blob(repo: &Path, bytes: &[u8]) -> String {
    let hash = blake3::hash(bytes).to_hex().to_string();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    let path = repo.join("blobs").join(&hash);
    if !path.exists() {
        std::fs::write(path, bytes).unwrap();
    }
    hash
}

/// `snapshots/<rev>/<rel>` of `repo` as a relative symlink to `blobs/<hash>`, as the hub
/// client makes it.
fn link(repo: &Path, rev: &str, rel: &str, hash: &str) {
    let path = repo.join("snapshots").join(rev).join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let up = "../".repeat(rel.matches('/').count() + 2);
    std::os::unix::fs::symlink(format!("{up}blobs/{hash}"), path).unwrap();
}

/// Stores `bytes` as a blob and links it as `rel` of snapshot `rev`.
fn file(repo: &Path, rev: &str, rel: &str, bytes: &[u8]) {
    let hash = blob(repo, bytes);
    link(repo, rev, rel, &hash);
}

fn weights(tmp: &Path, seed: u64) -> Vec<u8> {
    let path = tmp.join(format!("gen-{seed}.safetensors"));
    synth::generate_model(&path, 1 << 20, seed, Dtype::BF16).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(path).unwrap();
    bytes
}

struct Cache {
    dir: PathBuf,
    alpha: PathBuf,
    alpha_main: String,
    alpha_old: String,
    beta_main: String,
}

/// The cache: `models--org--alpha` with two snapshots (main, created first, and another
/// that changes the weights and shares the rest), `models--beta` with a subdirectory, a
/// config and a symlink to a blob still downloading, an orphan `.incomplete` blob, a
/// dataset repo, a repo dir that is no model name, and the client's own files.
fn build_cache(tmp: &Path) -> Cache {
    let dir = tmp.join("hub");
    let alpha = dir.join("models--org--alpha");
    let (alpha_main, alpha_old) = (revision("alpha-main"), revision("alpha-old"));
    let config = br#"{"architectures": ["Alpha"], "hidden_size": 256}"#;
    let tokenizer = br#"{"model": {"vocab": {"a": 0, "b": 1}}}"#;
    file(&alpha, &alpha_main, "model.safetensors", &weights(tmp, 1));
    file(&alpha, &alpha_main, "config.json", config);
    file(&alpha, &alpha_main, "tokenizer.json", tokenizer);
    file(&alpha, &alpha_old, "model.safetensors", &weights(tmp, 2));
    file(&alpha, &alpha_old, "config.json", config);
    file(&alpha, &alpha_old, "tokenizer.json", tokenizer);
    std::fs::create_dir_all(alpha.join("refs")).unwrap();
    std::fs::write(alpha.join("refs/main"), &alpha_main).unwrap();

    let beta = dir.join("models--beta");
    let beta_main = revision("beta-main");
    file(
        &beta,
        &beta_main,
        "config.json",
        br#"{"architectures": ["Beta"]}"#,
    );
    file(
        &beta,
        &beta_main,
        "text_encoder/model.safetensors",
        &weights(tmp, 3),
    );
    // A download in progress: the blob is `<hash>.incomplete`, the link already there.
    let partial = blake3::hash(b"partial").to_hex().to_string();
    std::fs::write(
        beta.join("blobs").join(format!("{partial}.incomplete")),
        b"half",
    )
    .unwrap();
    link(&beta, &beta_main, "pytorch_model.bin", &partial);
    // An orphan incomplete blob, no link.
    std::fs::write(beta.join("blobs/0123abcd.incomplete"), b"x").unwrap();
    std::fs::create_dir_all(beta.join("refs")).unwrap();
    std::fs::write(beta.join("refs/main"), format!("{beta_main}\n")).unwrap();

    let data = dir.join("datasets--x--y");
    file(&data, &revision("data"), "train.json", b"[]");
    file(
        &dir.join("models--bad--name--x"),
        &revision("bad"),
        "config.json",
        b"{}",
    );
    std::fs::create_dir_all(dir.join(".locks/models--org--alpha")).unwrap();
    std::fs::write(dir.join("version.txt"), b"1").unwrap();
    Cache {
        dir,
        alpha,
        alpha_main,
        alpha_old,
        beta_main,
    }
}

/// Every file under `snapshot` (read through its symlinks), by relative path.
fn snapshot_files(snapshot: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.insert(rel, bytes); // a dangling link is no file
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(snapshot, snapshot, &mut out);
    out
}

/// Exports `args` (a model, maybe `--revision`) and returns the files written.
fn export(lib: &Path, tmp: &Path, args: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let out = tmp.join(format!("export-{}", args.join("-").replace('/', "_")));
    let mut all = vec!["export", "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    ok(lib, &all);
    snapshot_files(&out)
}

fn import(lib: &Path, cache: &Path) -> Value {
    json(lib, &["import-hf-cache", cache.to_str().unwrap(), "--json"])
}

fn skipped<'a>(report: &'a Value, repo: &str) -> Vec<&'a Value> {
    report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["repo"] == repo)
        .collect()
}

fn revisions(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["revision"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_snapshot_is_stored_once_main_newest_and_a_rerun_adds_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = build_cache(tmp.path());
    let lib = tmp.path().join("lib");

    let first = import(&lib, &cache.dir);
    assert_eq!(first["cache"], cache.dir.to_str().unwrap());
    // Main's snapshot last, though it is the older directory.
    assert_eq!(
        revisions(&first["imported"]),
        [
            ("beta".to_string(), cache.beta_main.clone()),
            ("org/alpha".to_string(), cache.alpha_old.clone()),
            ("org/alpha".to_string(), cache.alpha_main.clone()),
        ]
    );
    assert!(first["already_stored"].as_array().unwrap().is_empty());
    assert!(first["failed"].as_array().unwrap().is_empty());
    let imported = first["imported"].as_array().unwrap();
    assert_eq!(imported[0]["files"], 2, "beta without its incomplete file");
    assert_eq!(imported[1]["files"], 3);
    assert_eq!(imported[2]["files"], 3);
    assert!(imported[2]["new_fragments"].as_u64().unwrap() > 0);
    // Main shares its config and tokenizer with the other snapshot: exact dedup.
    assert!(imported[2]["dedup_bytes"].as_u64().unwrap() > 0);
    for i in imported {
        assert!(i["logical_bytes"].as_u64().unwrap() > 0);
        assert!(i["stored_bytes"].as_u64().is_some());
    }

    let data = skipped(&first, "datasets--x--y");
    assert_eq!(data.len(), 1);
    assert!(data[0]["reason"].as_str().unwrap().contains("dataset"));
    let bad = skipped(&first, "models--bad--name--x");
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["reason"].as_str().unwrap().contains("repo id"));
    let beta = skipped(&first, "models--beta");
    assert_eq!(beta.len(), 1, "{beta:?}");
    assert_eq!(beta[0]["path"], "pytorch_model.bin");
    assert_eq!(beta[0]["revision"], cache.beta_main.as_str());
    assert!(beta[0]["reason"].as_str().unwrap().contains("incomplete"));
    assert_eq!(first["skipped"].as_array().unwrap().len(), 3);
    let skipped_first = first["skipped"].clone();

    let list = json(&lib, &["list", "--json"]);
    let names: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["beta", "org/alpha"]);

    // The model is main's snapshot, bit-exact; the other snapshot is a readable generation.
    let snapshots = cache.alpha.join("snapshots");
    let main_files = snapshot_files(&snapshots.join(&cache.alpha_main));
    let old_files = snapshot_files(&snapshots.join(&cache.alpha_old));
    assert_ne!(main_files, old_files);
    assert_eq!(
        export(&lib, tmp.path(), &["--model", "org/alpha"]),
        main_files
    );
    assert_eq!(
        export(
            &lib,
            tmp.path(),
            &["--model", "org/alpha", "--revision", &cache.alpha_old]
        ),
        old_files
    );
    let beta_files = snapshot_files(
        &cache
            .dir
            .join("models--beta/snapshots")
            .join(&cache.beta_main),
    );
    assert_eq!(beta_files.len(), 2, "the incomplete file is no file");
    assert_eq!(export(&lib, tmp.path(), &["--model", "beta"]), beta_files);
    let no_such = haagenti(
        &lib,
        &[
            "export",
            "--model",
            "org/alpha",
            "--revision",
            &revision("nope"),
            "--out",
            tmp.path().join("nope").to_str().unwrap(),
        ],
    );
    assert_eq!(no_such.status.code(), Some(1));

    let show = json(&lib, &["show", "--model", "org/alpha", "--json"]);
    assert_eq!(show["revision"], cache.alpha_main.as_str());
    assert_eq!(show["revision_id"], cache.alpha_main.as_str());
    let stats = json(&lib, &["stats", "--json"]);

    // Again, in human form: nothing new.
    let again = ok(&lib, &["import-hf-cache", cache.dir.to_str().unwrap()]);
    for line in [
        format!("already stored org/alpha @ {}", &cache.alpha_main[..12]),
        format!("already stored org/alpha @ {}", &cache.alpha_old[..12]),
        format!("already stored beta @ {}", &cache.beta_main[..12]),
        "skipped datasets--x--y: a datasets repo, not a model".to_string(),
        format!(
            "skipped models--beta snapshot {} file pytorch_model.bin: its blob is an incomplete download",
            &cache.beta_main[..12]
        ),
    ] {
        assert!(again.lines().any(|l| l == line), "{line:?} not in\n{again}");
    }
    assert!(!again.contains("imported org/alpha"), "{again}");
    // And as JSON, the cache found through HF_HUB_CACHE.
    let second = import_with_env(&lib, &[("HF_HUB_CACHE", &cache.dir)]);
    assert!(second["imported"].as_array().unwrap().is_empty());
    assert_eq!(second["skipped"], skipped_first);
    let mut stored = revisions(&second["already_stored"]);
    stored.sort();
    let mut want = revisions(&first["imported"]);
    want.sort();
    assert_eq!(stored, want);
    assert_eq!(json(&lib, &["stats", "--json"]), stats);

    // The download finishes: beta's snapshot now has one more file, and is imported again.
    let beta_dir = cache.dir.join("models--beta");
    let partial = blake3::hash(b"partial").to_hex().to_string();
    std::fs::rename(
        beta_dir.join("blobs").join(format!("{partial}.incomplete")),
        beta_dir.join("blobs").join(&partial),
    )
    .unwrap();
    let finished = import(&lib, &cache.dir);
    assert_eq!(
        revisions(&finished["imported"]),
        [("beta".to_string(), cache.beta_main.clone())]
    );
    assert_eq!(finished["imported"][0]["files"], 3);
    assert!(skipped(&finished, "models--beta").is_empty());
    let beta_files = snapshot_files(&beta_dir.join("snapshots").join(&cache.beta_main));
    assert_eq!(beta_files.len(), 3);
    assert_eq!(
        export(
            &lib,
            tmp.path(),
            &["--model", "beta", "--revision", &cache.beta_main]
        ),
        beta_files
    );
    let stats = json(&lib, &["stats", "--json"]);
    let rerun = import(&lib, &cache.dir);
    assert!(rerun["imported"].as_array().unwrap().is_empty());
    assert_eq!(json(&lib, &["stats", "--json"]), stats);

    // A new snapshot that is not main: imported, then main again so it stays the newest.
    let newer = revision("alpha-newer");
    file(
        &cache.alpha,
        &newer,
        "model.safetensors",
        &weights(tmp.path(), 4),
    );
    let third = import(&lib, &cache.dir);
    assert_eq!(
        revisions(&third["imported"]),
        [
            ("org/alpha".to_string(), newer.clone()),
            ("org/alpha".to_string(), cache.alpha_main.clone()),
        ]
    );
    let main_again = &third["imported"][1];
    assert_eq!(main_again["again_as_newest"], true);
    assert_eq!(main_again["new_fragments"], 0, "main is stored: full dedup");
    assert_eq!(
        export(
            &lib,
            tmp.path(),
            &["--model", "org/alpha", "--revision", &cache.alpha_main]
        ),
        main_files
    );
    let show = json(&lib, &["show", "--model", "org/alpha", "--json"]);
    assert_eq!(show["revision"], cache.alpha_main.as_str());
    assert!(
        json(&lib, &["verify", "--json"])["problems"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Every generation survives gc; rm takes them all.
    ok(&lib, &["gc", "--grace", "0"]);
    assert_eq!(
        export(
            &lib,
            tmp.path(),
            &["--model", "org/alpha", "--revision", &newer]
        ),
        snapshot_files(&cache.alpha.join("snapshots").join(&newer))
    );
    ok(&lib, &["rm", "--model", "org/alpha"]);
    let list = json(&lib, &["list", "--json"]);
    assert_eq!(list["models"].as_array().unwrap().len(), 1);
}

/// Runs `import-hf-cache --json` without a directory, with `env` set.
fn import_with_env(lib: &Path, env: &[(&str, &Path)]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haagenti"));
    cmd.arg("--library")
        .arg(lib)
        .args(["import-hf-cache", "--json"])
        .env_remove("HAAGENTI_LIBRARY")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_missing_or_non_directory_cache_is_an_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let missing = tmp.path().join("no-such-hub");
    let out = haagenti(&lib, &["import-hf-cache", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-hub"), "{err}");
    assert!(!lib.exists(), "nothing written");

    let not_dir = tmp.path().join("file");
    std::fs::write(&not_dir, b"x").unwrap();
    let out = haagenti(&lib, &["import-hf-cache", not_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory"), "{err}");
    assert!(!lib.exists(), "nothing written");

    // HF_HOME/hub is the default when HF_HUB_CACHE is unset; an empty cache imports nothing.
    let home = tmp.path().join("hf-home");
    std::fs::create_dir_all(home.join("hub")).unwrap();
    let report = import_with_env(&lib, &[("HF_HOME", &home)]);
    assert_eq!(report["cache"], home.join("hub").to_str().unwrap());
    assert!(report["imported"].as_array().unwrap().is_empty());
}

#[test]
fn a_snapshot_that_fails_is_reported_the_rest_imported_and_the_exit_is_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let good = dir.join("models--good");
    file(
        &good,
        &revision("good"),
        "model.safetensors",
        &weights(tmp.path(), 5),
    );
    let broken = dir.join("models--org--broken");
    file(
        &broken,
        &revision("broken"),
        "model.safetensors",
        b"not safetensors",
    );
    let lib = tmp.path().join("lib");
    let out = haagenti(&lib, &["import-hf-cache", dir.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        revisions(&report["imported"]),
        [("good".to_string(), revision("good"))]
    );
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["model"], "org/broken");
    assert_eq!(failed[0]["revision"], revision("broken").as_str());
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be imported"));
    let list = json(&lib, &["list", "--json"]);
    assert_eq!(list["models"].as_array().unwrap().len(), 1);
}

/// The `hf` mount of an imported cache: a snapshot per stored generation, named by its hub
/// commit, `refs/main` naming main's; the plain layout shows main's files.
#[cfg(all(feature = "mount", target_os = "linux"))]
#[test]
fn hf_mount_shows_every_imported_snapshot_under_its_commit() {
    let test = "hf_mount_shows_every_imported_snapshot_under_its_commit";
    let Some(()) = common::mount::fuse_available(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = build_cache(tmp.path());
    let lib = tmp.path().join("lib");
    import(&lib, &cache.dir);
    let snapshots = cache.alpha.join("snapshots");
    let lib = common::Lib::fs(&lib);

    let mnt = common::mount::Mounted::start(&lib, &tmp.path().join("mnt"), &["--layout", "hf"]);
    let repo = mnt.path("models--org--alpha");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        cache.alpha_main
    );
    let mut listed: Vec<String> = std::fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut want = vec![cache.alpha_main.clone(), cache.alpha_old.clone()];
    want.sort();
    assert_eq!(listed, want);
    for rev in [&cache.alpha_main, &cache.alpha_old] {
        assert_eq!(
            snapshot_files(&repo.join("snapshots").join(rev)),
            snapshot_files(&snapshots.join(rev)),
            "snapshot {rev}"
        );
    }
    drop(mnt);

    let mnt = common::mount::Mounted::start(&lib, &tmp.path().join("mnt-plain"), &[]);
    assert_eq!(
        snapshot_files(&mnt.path("org/alpha")),
        snapshot_files(&snapshots.join(&cache.alpha_main))
    );
}
