//! Helpers shared by the CLI test binaries: run the built `haagenti` against a library.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report
#![allow(dead_code)] // each test binary uses some of the helpers

use std::ffi::OsString;
use std::path::{Path, PathBuf};
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

/// A library the tests drive through the CLI: a directory, or a fresh prefix of the
/// local S3 server's bucket. Carries the arguments that select it.
pub struct Lib {
    pub args: Vec<OsString>,
    /// The directory, or the `s3://` URL.
    pub path: PathBuf,
    /// The S3 endpoint, for an S3 library.
    pub endpoint: Option<String>,
}

impl Lib {
    pub fn fs(path: &Path) -> Lib {
        Lib {
            args: vec!["--library".into(), path.into()],
            path: path.to_path_buf(),
            endpoint: None,
        }
    }

    /// `None` only when `HAAGENTI_SKIP_S3=1` asked for the skip.
    pub fn s3(test: &str) -> Option<Lib> {
        let (endpoint, bucket) = haagenti_testkit::env::s3_test_server(test)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let url = format!("s3://{bucket}/tests/{test}-{}-{nanos}", std::process::id());
        Some(Lib {
            args: vec![
                "--library".into(),
                url.clone().into(),
                "--s3-endpoint".into(),
                endpoint.clone().into(),
            ],
            path: PathBuf::from(url),
            endpoint: Some(endpoint),
        })
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_haagenti"));
        cmd.args(&self.args)
            .env_remove("HAAGENTI_LIBRARY")
            .env_remove("HAAGENTI_S3_ENDPOINT");
        // moto does not check signatures; real credentials in the environment win.
        for (var, default) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ] {
            if std::env::var_os(var).is_none() {
                cmd.env(var, default);
            }
        }
        cmd
    }

    /// Runs `haagenti ARGS...` on this library, which must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
