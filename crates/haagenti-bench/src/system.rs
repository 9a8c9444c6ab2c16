//! The figures of one system (haagenti or a baseline) on the corpus: what every system
//! module produces and the report reads.

use serde::Serialize;
use serde_json::{Value, json};

use crate::util::mb_per_s;

/// One system (haagenti or a baseline) on the whole corpus.
#[derive(Clone, Debug, Serialize)]
pub struct SystemResult {
    pub name: String,
    /// `ok`, `skipped` or `not wired`.
    pub status: String,
    pub reason: Option<String>,
    pub logical_bytes: u64,
    pub stored_bytes: Option<u64>,
    pub ingest_secs: Option<f64>,
    pub restore_secs: Option<f64>,
    pub peak_rss_ingest_bytes: Option<u64>,
    pub peak_rss_restore_bytes: Option<u64>,
    /// Whether every restored file was byte-identical to its source.
    pub verified: Option<bool>,
    pub note: String,
}

impl SystemResult {
    pub fn new(name: String, logical_bytes: u64) -> Self {
        Self {
            name,
            status: "ok".into(),
            reason: None,
            logical_bytes,
            stored_bytes: None,
            ingest_secs: None,
            restore_secs: None,
            peak_rss_ingest_bytes: None,
            peak_rss_restore_bytes: None,
            verified: None,
            note: String::new(),
        }
    }

    pub fn skipped(name: String, logical_bytes: u64, reason: String) -> Self {
        Self {
            status: "skipped".into(),
            reason: Some(reason),
            ..Self::new(name, logical_bytes)
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        self.stored_bytes
            .filter(|&s| s > 0)
            .map(|s| self.logical_bytes as f64 / s as f64)
    }

    /// The JSON of `latest.json`: the fields, the ratio and the speeds.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert("ratio".into(), json!(self.ratio()));
            map.insert(
                "ingest_mb_s".into(),
                json!(self.ingest_secs.map(|s| mb_per_s(self.logical_bytes, s))),
            );
            map.insert(
                "restore_mb_s".into(),
                json!(self.restore_secs.map(|s| mb_per_s(self.logical_bytes, s))),
            );
        }
        v
    }
}
