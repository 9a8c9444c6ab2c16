//! How close ingest and export run to the machine's limit (issue 17): each phase's wall
//! and CPU time split into the per-byte work it cannot avoid (codec calls, BLAKE3,
//! signatures), everything else the process burned (copies, syscalls, allocation,
//! scheduling) and idle cores; and the CPU ceiling computed from single-core speeds
//! measured in the phase's own process right after its work ([`UnitSpeeds::measure`]).
//! The host's speed drifts by tens of percent within one run on a shared machine, so a
//! ceiling from micro-benchmarks minutes away would move the ratio by as much; the
//! micro-benchmark section's ceiling is printed next to it for reference.
//!
//! The ceiling is the speed at which every core does nothing but the unavoidable work on
//! bf16 weights, the corpus's dtype: per byte, ingest hashes twice (fragment id and
//! whole-file hash), encodes once (planes, balanced) and signs once; export decodes once
//! and hashes twice (fragment id and whole-file check). So
//! `ceiling = cores / (2 / BLAKE3 + 1 / codec + 1 / signature)` bytes per second, with
//! single-core speeds from the codec and signature micro-benchmarks. It is an upper bound
//! for standalone bf16 work: deltas and casts cost more per byte, dedup hits less.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::codecs::CodecRow;
use crate::haagenti::Profile;
use crate::lsh::LshBench;
use crate::util;

/// Single-core speeds (MB/s, 10^6 bytes) the ceiling is computed from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct UnitSpeeds {
    pub cores: usize,
    pub blake3_mb_s: f64,
    pub encode_mb_s: f64,
    pub decode_mb_s: f64,
    pub signature_mb_s: f64,
}

impl UnitSpeeds {
    /// From the codec rows (planes, BF16, balanced) and the signature rows (bf16, 1 MiB
    /// fragments, with BLAKE3 of the same bytes); `None` when a row is missing.
    pub fn from_micro(codecs: &[CodecRow], lsh: &LshBench) -> Option<Self> {
        let codec = codecs
            .iter()
            .find(|r| r.codec == "planes" && r.dtype == "BF16" && r.policy == "balanced")?;
        let sig = lsh.signature.iter().find(|s| s.input == "bf16")?;
        Some(Self {
            cores: util::cores(),
            blake3_mb_s: sig.blake3_mb_per_s,
            encode_mb_s: codec.compress_mb_s,
            decode_mb_s: codec.decompress_mb_s,
            signature_mb_s: sig.mb_per_s,
        })
    }

    /// Measured here and now, single-threaded, on the micro-benchmarks' data (16 MiB,
    /// medians of 3; 64 MiB, more than the last-level cache, gave the same speeds in four
    /// times the time): what a phase's process measures after its work.
    pub fn measure() -> anyhow::Result<Self> {
        const BYTES: usize = 16 << 20;
        let (encode_mb_s, decode_mb_s) = crate::codecs::planes_bf16_speeds(BYTES, 3)?;
        let (signature_mb_s, blake3_mb_s) = crate::lsh::bf16_signature_speeds(BYTES, 3)?;
        Ok(Self {
            cores: util::cores(),
            blake3_mb_s,
            encode_mb_s,
            decode_mb_s,
            signature_mb_s,
        })
    }

    fn ceiling(&self, per_mb_secs: f64) -> f64 {
        self.cores as f64 / per_mb_secs
    }

    /// Ingest's ceiling, MB/s.
    pub fn ingest_ceiling(&self) -> f64 {
        self.ceiling(2.0 / self.blake3_mb_s + 1.0 / self.encode_mb_s + 1.0 / self.signature_mb_s)
    }

    /// Export's ceiling, MB/s.
    pub fn export_ceiling(&self) -> f64 {
        self.ceiling(2.0 / self.blake3_mb_s + 1.0 / self.decode_mb_s)
    }
}

/// One phase measured against its ceiling.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseRow {
    pub phase: String,
    pub bytes: u64,
    pub wall_secs: f64,
    pub cpu_secs: Option<f64>,
    pub codec_secs: f64,
    /// Estimated: two passes at the single-thread speed measured in the child.
    pub hash_secs: f64,
    /// Estimated from the signature speed measured in the child (ingest only).
    pub signature_secs: f64,
    pub mb_s: f64,
    pub ceiling_mb_s: f64,
}

impl PhaseRow {
    /// The row of a phase whose processes measured their own unit speeds (`p`'s
    /// ceiling and signature estimates).
    pub fn new(phase: &str, bytes: u64, p: &Profile) -> Self {
        Self {
            phase: phase.to_string(),
            bytes,
            wall_secs: p.wall_secs,
            cpu_secs: p.cpu_secs,
            codec_secs: p.codec_secs,
            hash_secs: p.hash_secs_est,
            signature_secs: p.signature_secs_est,
            mb_s: util::mb_per_s(bytes, p.wall_secs),
            ceiling_mb_s: bytes as f64 / 1e6 / p.ceiling_secs.max(1e-9),
        }
    }
}

/// The section: how the ceiling is computed (with the micro-benchmarks' speeds for
/// reference), then one row per phase. Shares are of the phase's core-seconds (wall time
/// × cores), so they add up to 100% with the idle share.
pub fn markdown(micro: Option<&UnitSpeeds>, rows: &[PhaseRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Distance to the CPU ceiling\n\n\
         Ceiling = cores / (2 / BLAKE3 + 1 / encode + 1 / signature) for ingest, cores / \
         (2 / BLAKE3 + 1 / decode) for export, from single-core speeds (planes on bf16, \
         balanced; cosine signatures; BLAKE3 of 1 MiB fragments) that each phase's process \
         measures right after its work, so that the host's speed of that moment is in both \
         (a phase of several processes: their bytes at their ceilings, summed); {} cores.",
        util::cores(),
    );
    if let Some(m) = micro {
        let _ = write!(
            s,
            " For reference, the micro-benchmark section's speeds (BLAKE3 {:.0} MB/s, planes \
             encode {:.0} and decode {:.0} MB/s, signatures {:.0} MB/s) give {:.0} MB/s for \
             ingest and {:.0} MB/s for export.",
            m.blake3_mb_s,
            m.encode_mb_s,
            m.decode_mb_s,
            m.signature_mb_s,
            m.ingest_ceiling(),
            m.export_ceiling(),
        );
    }
    let _ = writeln!(
        s,
        " Shares below are of the phase's core-seconds (wall × cores); BLAKE3 and \
         signatures are estimates from their measured speeds, codec calls are timed; \
         *other CPU* is the rest of the process's CPU time (copies, syscalls, allocation), \
         *idle* the core-seconds nobody used.\n",
    );
    let _ = writeln!(
        s,
        "| phase | bytes | wall s | MB/s | ceiling MB/s | of ceiling | codec | BLAKE3 | signatures | other CPU | idle |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let core_secs = (r.wall_secs * util::cores() as f64).max(1e-9);
        let pct = |secs: f64| format!("{:.0}%", 100.0 * secs / core_secs);
        let work = r.codec_secs + r.hash_secs + r.signature_secs;
        let (other, idle) = match r.cpu_secs {
            Some(cpu) => (pct((cpu - work).max(0.0)), pct((core_secs - cpu).max(0.0))),
            None => ("?".into(), "?".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.0}% | {} | {} | {} | {} | {} |",
            r.phase,
            util::human(r.bytes),
            r.wall_secs,
            r.mb_s,
            r.ceiling_mb_s,
            100.0 * r.mb_s / r.ceiling_mb_s.max(1e-9),
            pct(r.codec_secs),
            pct(r.hash_secs),
            if r.signature_secs > 0.0 {
                pct(r.signature_secs)
            } else {
                "–".into()
            },
            other,
            idle,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_of_the_issue_figures() {
        // Issue 17's figures: BLAKE3 5.7 GB/s, encode 0.92 GB/s, signatures 25 GB/s on
        // 2 cores: ingest ≈ 1.35 GB/s.
        let s = UnitSpeeds {
            cores: 2,
            blake3_mb_s: 5700.0,
            encode_mb_s: 920.0,
            decode_mb_s: 2100.0,
            signature_mb_s: 25_000.0,
        };
        assert!(
            (s.ingest_ceiling() - 1353.0).abs() < 5.0,
            "{}",
            s.ingest_ceiling()
        );
        assert!(
            (s.export_ceiling() - 2418.0).abs() < 5.0,
            "{}",
            s.export_ceiling()
        );
    }
}
