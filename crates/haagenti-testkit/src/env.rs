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

/// `None` after printing the skip when `skip_var` is `1`; else a panic with `why`.
pub fn unavailable<T>(test: &str, skip_var: &str, why: &str) -> Option<T> {
    if std::env::var(skip_var).as_deref() == Ok("1") {
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {skip_var}=1 ({why})");
        return None;
    }
    panic!("{test}: {why}; set {skip_var}=1 to skip this test explicitly");
}
