//! Helpers shared by the CLI test binaries: run the built `haagenti` against a library.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report
#![allow(dead_code)] // each test binary uses some of the helpers

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use haagenti_testkit::synth;

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

    /// The same S3 library reached through another endpoint (a fault proxy in front of
    /// the server).
    pub fn through(&self, endpoint: &str) -> Lib {
        let mut lib = Lib {
            args: self.args.clone(),
            path: self.path.clone(),
            endpoint: Some(endpoint.to_string()),
        };
        let at = lib.args.iter().position(|a| a == "--s3-endpoint").unwrap();
        lib.args[at + 1] = endpoint.into();
        lib
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

    /// Runs `haagenti ARGS...` on this library, whatever its outcome.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// [`Lib::run`], which must exit with `code`; returns standard output and error.
    pub fn exits(&self, code: i32, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// [`Lib::ok`], parsing the output as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// The library's objects as they are, through its store (no library code): what the
    /// damage tests break.
    pub fn raw(&self) -> RawStore {
        let options = haagenti_fragments::OpenOptions::default().s3_endpoint(self.endpoint.clone());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let location = self.path.to_str().unwrap().to_string();
        let store = rt
            .block_on(haagenti_fragments::open_store(&location, &options))
            .unwrap();
        RawStore { rt, store }
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

/// A test library's store, driven directly.
pub struct RawStore {
    rt: tokio::runtime::Runtime,
    store: std::sync::Arc<dyn haagenti_core::FragmentStore>,
}

/// One way to damage a stored object.
#[derive(Clone, Copy, Debug)]
pub enum Damage {
    /// One bit of the middle byte flipped.
    FlipByte,
    /// The second half cut off.
    Truncate,
    /// Zero bytes left.
    Empty,
    /// Gone.
    Delete,
}

impl Damage {
    pub const ALL: [Damage; 4] = [
        Damage::FlipByte,
        Damage::Truncate,
        Damage::Empty,
        Damage::Delete,
    ];
}

impl RawStore {
    fn key(key: &str) -> haagenti_core::ObjectKey {
        haagenti_core::ObjectKey::new(key.to_string()).unwrap()
    }

    /// The key of fragment `id` (full hex).
    pub fn fragment_key(id: &str) -> String {
        format!("fragments/{}/{}/{id}", &id[..2], &id[2..4])
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.rt
            .block_on(self.store.get(&Self::key(key)))
            .unwrap()
            .to_vec()
    }

    /// Writes `bytes` at `key`, over what is there.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        self.rt
            .block_on(self.store.replace(&Self::key(key), bytes.to_vec().into()))
            .unwrap();
    }

    pub fn delete(&self, key: &str) {
        self.rt
            .block_on(self.store.delete(&Self::key(key)))
            .unwrap();
    }

    /// Every key under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .rt
            .block_on(self.store.list(prefix))
            .unwrap()
            .into_iter()
            .map(|m| m.key.as_str().to_string())
            .collect();
        keys.sort();
        keys
    }

    pub fn damage(&self, key: &str, how: Damage) {
        let mut bytes = self.get(key);
        match how {
            Damage::FlipByte => {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x10;
            }
            Damage::Truncate => bytes.truncate(bytes.len() / 2),
            Damage::Empty => bytes.clear(),
            Damage::Delete => return self.delete(key),
        }
        self.put(key, &bytes);
    }
}

/// Every `(relative path in the model, source file)` of a generated model.
pub fn files_of(m: &synth::FamilyModel) -> Vec<(String, PathBuf)> {
    m.files
        .iter()
        .map(|f| {
            let rel = if m.is_dir() {
                f.strip_prefix(&m.path).unwrap()
            } else {
                Path::new(f.file_name().unwrap())
            };
            (rel.to_str().unwrap().to_string(), f.clone())
        })
        .collect()
}

/// Every stored fragment object's file (`fragments-flat/`, and `fragments/` of the
/// layout before it).
pub fn objects(lib: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = ["fragments-flat", "fragments"]
        .iter()
        .map(|d| lib.join(d))
        .filter(|d| d.is_dir())
        .collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The file of fragment `id` (full hex) in the filesystem library at `lib`.
pub fn fragment_file(lib: &Path, id: &str) -> PathBuf {
    let key = haagenti_core::ObjectKey::fragment(&id.parse().unwrap());
    haagenti_store_fs::FsStore::open(lib)
        .unwrap()
        .object_path(&key)
        .unwrap()
}

/// Runs one of the `tests/py` scripts with the test interpreter; it must succeed. The
/// Hugging Face client sees only `envs` of its own variables (no token, cache or offline
/// setting of the caller's), with telemetry and progress bars off.
pub fn run_python(python: &Path, script: &str, args: &[String], envs: &[(&str, &Path)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

#[cfg(all(feature = "mount", target_os = "linux"))]
pub mod mount;
