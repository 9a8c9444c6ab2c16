//! The S3 backend as production object stores treat it: every command runs through a
//! [`FaultProxy`] in front of the local S3 server that resets connections, answers
//! `503 SlowDown`, loses responses to requests the server carried out and cuts bodies
//! short. Commands must ride it out, or fail within their retry budget in one line and
//! leave a library that verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Lib, files_of};
use haagenti_testkit::faults::FaultProxy;
use haagenti_testkit::synth;

/// A library on the local S3 server, the proxy in front of it, and the library as seen
/// through the proxy.
fn faulty(test: &str, seed: u64, rate: f64) -> Option<(Lib, FaultProxy, Lib)> {
    let direct = Lib::s3(test)?;
    let proxy = FaultProxy::start(
        direct.endpoint.as_deref().unwrap(),
        seed,
        rate,
        Duration::from_millis(3),
    )
    .unwrap();
    let through = direct.through(&proxy.endpoint());
    Some((direct, proxy, through))
}

fn run(lib: &Lib, args: &[&str]) -> Output {
    lib.command().args(args).output().unwrap()
}

/// Runs a command that must succeed; returns the requests its store retried, from the
/// summary line it prints on standard error.
fn ok_counting_retries(lib: &Lib, args: &[&str]) -> u64 {
    let out = run(lib, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    retried(&stderr)
}

/// The `N` of "s3://…: N requests retried (…)" in a command's standard error.
fn retried(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|line| {
            let before = &line[..line.find(" requests retried (")?];
            before.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn s3_twenty_ingests_exports_verify_load_and_gc_ride_out_15_percent_faults() {
    let Some((direct, proxy, lib)) = faulty("s3_faults_15", 18, 0.15) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let family = synth::small_family(&dir.path().join("src"), 18).unwrap();

    let mut retries = 0;
    let mut ingested = Vec::new();
    'rounds: for round in 0.. {
        for m in &family.models {
            if ingested.len() == 20 {
                break 'rounds;
            }
            let name = format!("r{round}-{}", m.name);
            let path = m.path.to_str().unwrap();
            retries += ok_counting_retries(&lib, &["ingest", "--model", &name, path]);
            ingested.push((name, m));
        }
    }
    for (name, m) in &ingested {
        let out = dir.path().join("out").join(name);
        let o = out.to_str().unwrap();
        retries += ok_counting_retries(&lib, &["export", "--model", name, "--out", o]);
        for (rel, src) in files_of(m) {
            assert!(
                std::fs::read(out.join(&rel)).unwrap() == std::fs::read(&src).unwrap(),
                "{name}/{rel}: exported bytes differ from the source"
            );
        }
    }
    retries += ok_counting_retries(&lib, &["verify"]);
    retries += ok_counting_retries(&lib, &["load", "--model", &ingested[3].0]);
    retries += ok_counting_retries(&lib, &["rm", "--model", &ingested[0].0]);
    retries += ok_counting_retries(&lib, &["gc", "--grace", "0"]);

    let counts = proxy.counts();
    println!("through the fault proxy: {counts:?}; requests retried: {retries}");
    assert!(counts.reset > 0, "{counts:?}");
    assert!(counts.slow_down > 0, "{counts:?}");
    assert!(counts.lost_response > 0, "{counts:?}");
    assert!(counts.cut_body > 0, "{counts:?}");
    // Every fault failed one attempt, which was sent again: all but the few in flight when
    // a command ended (read-ahead dropped with it) and the bucket probe's second failure
    // (it explains an error already in hand and tries twice at most).
    assert!(retries <= counts.faults(), "{retries} retries: {counts:?}");
    assert!(
        retries * 100 >= counts.faults() * 97,
        "{retries} retries: {counts:?}"
    );

    // Seen without faults, the library holds what the commands said.
    proxy.set_rate(0.0);
    direct.ok(&["verify"]);
    let listed = direct.ok(&["list"]);
    assert!(!listed.contains(&ingested[0].0), "{listed}");
    assert!(listed.contains(&ingested[19].0), "{listed}");
    runtime().block_on(async {
        let lib = open_direct(&direct).await;
        haagenti_testkit::library::assert_only_live_objects(&lib, "after gc").await;
    });
}

#[test]
fn s3_an_ingest_under_total_failure_fails_within_its_budget_in_one_line() {
    let Some((direct, proxy, lib)) = faulty("s3_faults_100", 19, 0.0) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.safetensors");
    synth::generate_model(&src, 24 << 20, 19, haagenti_core::Dtype::BF16).unwrap();

    // The store fails completely once the ingest is under way.
    let child = lib
        .command()
        .args(["--s3-retry-timeout", "3", "ingest", "--model", "m"])
        .arg(&src)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while proxy.counts().requests < 8 {
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.set_rate(1.0);
    let failing = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = failing.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the ingest cannot succeed: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let error = errors[0];
    // It names the object, the operation, the attempts and the last cause.
    assert!(error.contains(direct.path.to_str().unwrap()), "{error}");
    assert!(error.contains(" attempts in "), "{error}");
    // 3 s of retries, then the operations in flight finish their last attempt.
    assert!(
        took < Duration::from_secs(20),
        "failed after {took:?}: {error}"
    );
    println!("failed after {took:?}: {error}");

    proxy.set_rate(0.0);
    direct.ok(&["verify"]);
    let listed: serde_json::Value = serde_json::from_str(&direct.ok(&["list", "--json"])).unwrap();
    assert_eq!(
        listed["models"],
        serde_json::json!([]),
        "the failed ingest stored no model"
    );
    let path = src.to_str().unwrap();
    ok_counting_retries(&lib, &["ingest", "--model", "m", path]);
    direct.ok(&["verify"]);
}

#[test]
fn s3_a_faulty_ingest_killed_leaves_a_library_that_verifies_and_gc_cleans() {
    let Some((direct, proxy, lib)) = faulty("s3_faults_kill", 20, 0.15) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.safetensors");
    synth::generate_model(&src, 24 << 20, 20, haagenti_core::Dtype::BF16).unwrap();

    let mut child = lib
        .command()
        .args(["ingest", "--model", "killed"])
        .arg(&src)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while proxy.counts().requests < 30 {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    ok_counting_retries(&lib, &["verify"]);
    ok_counting_retries(&lib, &["gc", "--grace", "0"]);
    proxy.set_rate(0.0);
    direct.ok(&["verify"]);
    runtime().block_on(async {
        let lib = open_direct(&direct).await;
        haagenti_testkit::library::assert_only_live_objects(&lib, "after the kill").await;
    });
    let uploads = open_multipart_uploads(&direct);
    assert!(
        uploads.is_empty(),
        "multipart uploads left open: {uploads:?}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// The library, opened in this process without the proxy (`cargo xtask test` sets the
/// local server's credentials in the environment).
async fn open_direct(lib: &Lib) -> haagenti_core::FragmentLibrary {
    let options = haagenti_fragments::OpenOptions::default().s3_endpoint(lib.endpoint.clone());
    haagenti_fragments::open(lib.path.to_str().unwrap(), options)
        .await
        .unwrap()
}

/// Keys of the multipart uploads the server holds open under the library's prefix (S3's
/// ListMultipartUploads; the local server does not check signatures).
fn open_multipart_uploads(lib: &Lib) -> Vec<String> {
    use std::io::{Read, Write};
    let url = lib.path.to_str().unwrap().strip_prefix("s3://").unwrap();
    let (bucket, prefix) = url.split_once('/').unwrap();
    let endpoint = lib.endpoint.as_deref().unwrap();
    let host = endpoint
        .strip_prefix("http://")
        .unwrap()
        .trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET /{bucket}?uploads&prefix={prefix} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .filter(|k| k.starts_with(prefix))
        .map(str::to_string)
        .collect()
}
