//! What a test needs from its machine, and the one way to skip it.
//!
//! A test whose server or privilege is missing fails with a message saying what to do,
//! unless the skip variable it names is set to `1`; then it prints the skip (to the real
//! stderr, which `cargo test` shows even for passing tests) and passes. A test never skips
//! silently.

use std::io::Write;

/// The variable that asks the S3 tests to skip when no S3 server is available.
pub const SKIP_S3: &str = "HAAGENTI_SKIP_S3";

/// The local S3 test server that `cargo xtask test` starts: `(endpoint, bucket)` from
/// `HAAGENTI_TEST_S3_ENDPOINT` and `HAAGENTI_TEST_S3_BUCKET` (default `haagenti-test`).
/// `None` (after printing the skip) when they are unset and `HAAGENTI_SKIP_S3=1`; a panic
/// saying how to get a server otherwise.
pub fn s3_test_server(test: &str) -> Option<(String, String)> {
    match std::env::var("HAAGENTI_TEST_S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let bucket =
                std::env::var("HAAGENTI_TEST_S3_BUCKET").unwrap_or_else(|_| "haagenti-test".into());
            Some((endpoint, bucket))
        }
        _ => unavailable(
            test,
            SKIP_S3,
            "HAAGENTI_TEST_S3_ENDPOINT is not set: run the tests with `cargo xtask test`, \
             which starts a local S3 server (or `scripts/s3-server.sh` and export what it prints)",
        ),
    }
}

/// The variable that asks the tests driving the real Python clients to skip.
pub const SKIP_PYTHON: &str = "HAAGENTI_SKIP_PYTHON";

/// The Python interpreter holding the real client packages (`safetensors`, `numpy`,
/// `ml_dtypes`, `huggingface_hub`, `gguf`, pinned in `scripts/test-requirements.txt`), from
/// `HAAGENTI_TEST_PYTHON`, which `cargo xtask test` sets after installing them into
/// `target/py-venv`. `None` (after printing the skip) when unset and
/// `HAAGENTI_SKIP_PYTHON=1`; a panic saying how to get it otherwise.
pub fn test_python(test: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os("HAAGENTI_TEST_PYTHON") {
        Some(p) if !p.is_empty() => Some(p.into()),
        _ => unavailable(
            test,
            SKIP_PYTHON,
            "HAAGENTI_TEST_PYTHON is not set: run the tests with `cargo xtask test`, which \
             installs the Python clients into target/py-venv (or `python3 -m venv V && \
             V/bin/pip install -r scripts/test-requirements.txt` and set \
             HAAGENTI_TEST_PYTHON=V/bin/python)",
        ),
    }
}

/// The variable that asks the tests driving a real browser to skip.
pub const SKIP_BROWSER: &str = "HAAGENTI_SKIP_BROWSER";

/// The headless browser the page tests drive: `HAAGENTI_TEST_CHROMIUM` if set, else
/// `chromium` found on `PATH` (`cargo xtask test` installs Debian's when run as root).
/// `None` (after printing the skip) when there is none and `HAAGENTI_SKIP_BROWSER=1`; a
/// panic saying what to install otherwise.
pub fn chromium(test: &str) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("HAAGENTI_TEST_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None => unavailable(
            test,
            SKIP_BROWSER,
            "chromium is not installed: run the tests with `cargo xtask test` as root, which \
             installs Debian's chromium (or `apt-get install chromium`, or set \
             HAAGENTI_TEST_CHROMIUM to a Chromium or Chrome binary)",
        ),
    }
}

/// `None` after printing the skip when `skip_var` is `1`; else a panic with `why`.
pub fn unavailable<T>(test: &str, skip_var: &str, why: &str) -> Option<T> {
    if std::env::var(skip_var).as_deref() == Ok("1") {
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {skip_var}=1 ({why})");
        return None;
    }
    panic!("{test}: {why}; set {skip_var}=1 to skip this test explicitly");
}
