//! Codec benchmarks (issue 4): ratio and one-core throughput of every codec and policy on
//! generated weights (N(0, 0.02) in bf16, fp16 and fp32, cut into 1 MiB fragments), with
//! plain zstd -3 on the raw bytes measured side by side as the baseline.
//!
//! Speeds are input bytes over the CPU time of the measuring thread (Linux schedstat;
//! wall time elsewhere), so other processes on a shared machine do not count against a
//! codec. Buffers are reused between runs, so allocation is mostly not timed.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use haagenti_codec::{Lz4Codec, PlanesCodec, ZstdCodec};
use haagenti_core::{Codec, CodecPolicy, Dtype, EncodeHint};
use haagenti_testkit::synth;

/// One measured codec configuration on one dtype.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CodecRow {
    /// Codec name, e.g. `planes` or `zstd -3 (baseline)`.
    pub codec: String,
    /// Element type of the generated weights.
    pub dtype: String,
    /// `fast`, `balanced`, `max`, or `-` for codecs without a policy.
    pub policy: String,
    /// Input bytes over encoded bytes.
    pub ratio: f64,
    /// Input MB (10^6 bytes) per second of encoding, one core, median run.
    pub compress_mb_s: f64,
    /// Decoded MB per second, one core, median run.
    pub decompress_mb_s: f64,
}

const FRAGMENT: usize = 1 << 20;
const BASELINE_LEVEL: i32 = 3;

/// Measures every codec and policy; `quick` uses 8 MiB per dtype instead of 64 MiB.
pub fn run(quick: bool) -> anyhow::Result<Vec<CodecRow>> {
    let total = if quick { 8 << 20 } else { 64 << 20 };
    let runs = if quick { 3 } else { 5 };
    let planes: &dyn Codec = &PlanesCodec;
    let lz4: &dyn Codec = &Lz4Codec;
    let zstd3: &dyn Codec = &ZstdCodec { level: 3 };
    let subjects: [(&dyn Codec, Option<CodecPolicy>); 5] = [
        (lz4, None),
        (zstd3, None),
        (planes, Some(CodecPolicy::Fast)),
        (planes, Some(CodecPolicy::Balanced)),
        (planes, Some(CodecPolicy::Max)),
    ];
    let mut rows = Vec::new();
    for (seed, dtype) in [(11, Dtype::BF16), (12, Dtype::F16), (13, Dtype::F32)] {
        let data = weights(seed, dtype, total);
        let fragments: Vec<&[u8]> = data.chunks(FRAGMENT).collect();

        let mut cctx = zstd::bulk::Compressor::new(BASELINE_LEVEL)?;
        let mut dctx = zstd::bulk::Decompressor::new()?;
        let (ratio, compress_mb_s, decompress_mb_s) = measure(
            &fragments,
            runs,
            |input, out| {
                out.resize(zstd::zstd_safe::compress_bound(input.len()), 0);
                let n = cctx.compress_to_buffer(input, &mut out[..])?;
                out.truncate(n);
                Ok(())
            },
            |payload, len, out| {
                out.resize(len, 0);
                let n = dctx.decompress_to_buffer(payload, &mut out[..])?;
                ensure!(n == len, "baseline decoded {n} bytes, expected {len}");
                Ok(())
            },
        )?;
        rows.push(CodecRow {
            codec: format!("zstd -{BASELINE_LEVEL} (baseline)"),
            dtype: dtype.to_string(),
            policy: "-".into(),
            ratio,
            compress_mb_s,
            decompress_mb_s,
        });

        for (codec, policy) in subjects {
            let hint = EncodeHint {
                dtype: Some(dtype),
                policy: policy.unwrap_or_default(),
            };
            // `max` tries slow coders on every plane: one run is enough to rank it.
            let runs = if policy == Some(CodecPolicy::Max) {
                1
            } else {
                runs
            };
            let (ratio, compress_mb_s, decompress_mb_s) = measure(
                &fragments,
                runs,
                |input, out| Ok(codec.encode(input, hint, out)?),
                |payload, len, out| Ok(codec.decode(payload, len, out)?),
            )
            .with_context(|| format!("{} {hint:?}", codec.name()))?;
            rows.push(CodecRow {
                codec: codec.name().into(),
                dtype: dtype.to_string(),
                policy: policy.map_or_else(|| "-".into(), |p| p.to_string()),
                ratio,
                compress_mb_s,
                decompress_mb_s,
            });
        }
    }
    Ok(rows)
}

/// Single-core (encode, decode) MB/s of the planes codec on `total` bytes of bf16
/// weights with the balanced policy: the row the CPU ceiling uses, measured alone (the
/// same data as [`run`]'s row, medians of `runs`).
pub fn planes_bf16_speeds(total: usize, runs: usize) -> anyhow::Result<(f64, f64)> {
    let data = weights(11, Dtype::BF16, total);
    let fragments: Vec<&[u8]> = data.chunks(FRAGMENT).collect();
    let hint = EncodeHint {
        dtype: Some(Dtype::BF16),
        policy: CodecPolicy::Balanced,
    };
    let (_, encode, decode) = measure(
        &fragments,
        runs,
        |input, out| Ok(PlanesCodec.encode(input, hint, out)?),
        |payload, len, out| Ok(PlanesCodec.decode(payload, len, out)?),
    )?;
    Ok((encode, decode))
}

/// `total` bytes of N(0, 0.02) weights in `dtype`.
fn weights(seed: u64, dtype: Dtype, total: usize) -> Vec<u8> {
    let values = synth::normal_f32(seed, total / dtype.size(), 0.0, 0.02);
    match dtype {
        Dtype::BF16 => synth::bf16_bytes(&values),
        Dtype::F16 => synth::f16_bytes(&values),
        _ => synth::f32_bytes(&values),
    }
}

/// Encodes and decodes every fragment `runs` times, checks the round trip, and returns (ratio, median compress MB/s, median
/// decompress MB/s).
fn measure(
    fragments: &[&[u8]],
    runs: usize,
    mut encode: impl FnMut(&[u8], &mut Vec<u8>) -> anyhow::Result<()>,
    mut decode: impl FnMut(&[u8], usize, &mut Vec<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64, f64)> {
    let bytes: usize = fragments.iter().map(|f| f.len()).sum();
    let mut encoded: Vec<Vec<u8>> = vec![Vec::new(); fragments.len()];
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = thread_time();
        for (f, e) in fragments.iter().zip(&mut encoded) {
            e.clear();
            encode(f, e)?;
        }
        times.push(thread_time().saturating_sub(start));
    }
    let compress = mb_s(bytes, median(&mut times));

    let mut out = Vec::with_capacity(FRAGMENT);
    for (f, e) in fragments.iter().zip(&encoded) {
        out.clear();
        decode(e, f.len(), &mut out)?;
        ensure!(out == *f, "round trip changed a fragment");
    }
    times.clear();
    for _ in 0..runs {
        let start = thread_time();
        for (f, e) in fragments.iter().zip(&encoded) {
            out.clear();
            decode(e, f.len(), &mut out)?;
        }
        times.push(thread_time().saturating_sub(start));
    }
    let decompress = mb_s(bytes, median(&mut times));
    let stored: usize = encoded.iter().map(Vec::len).sum();
    Ok((bytes as f64 / stored as f64, compress, decompress))
}

/// CPU time of this thread, or wall time since the first call where that is unknown.
fn thread_time() -> Duration {
    static WALL: OnceLock<Instant> = OnceLock::new();
    // The kernel folds the running slice into schedstat only at ticks and scheduler
    // entries; a yield is one, so the reading is exact to the nanosecond.
    std::thread::yield_now();
    let on_cpu = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
    match on_cpu {
        Some(ns) => Duration::from_nanos(ns),
        None => WALL.get_or_init(Instant::now).elapsed(),
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn mb_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64().max(1e-9)
}

/// The rows as a markdown table.
pub fn markdown(rows: &[CodecRow]) -> String {
    let mut s = String::from(
        "| dtype | codec | policy | ratio | compress MB/s | decompress MB/s |\n|---|---|---|---:|---:|---:|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {:.3} | {:.0} | {:.0} |\n",
            r.dtype, r.codec, r.policy, r.ratio, r.compress_mb_s, r.decompress_mb_s
        );
    }
    s
}
