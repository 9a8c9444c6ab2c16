//! Helpers shared by the CLI test binaries: run the built `haagenti` against a library.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::Path;
use std::process::{Command, Output};

/// Runs `haagenti --library LIB ARGS...` (ignoring any `HAAGENTI_LIBRARY` of the caller).
pub fn haagenti(lib: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haagenti"))
        .arg("--library")
        .arg(lib)
        .args(args)
        .env_remove("HAAGENTI_LIBRARY")
        .output()
        .expect("run haagenti")
}

/// [`haagenti`], which must succeed; returns its standard output.
pub fn ok(lib: &Path, args: &[&str]) -> String {
    let out = haagenti(lib, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// [`ok`], parsing the output as JSON.
pub fn json(lib: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(lib, args)).unwrap()
}
