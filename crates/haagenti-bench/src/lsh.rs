//! Signature and index micro-benchmarks (issue 5).
//!
//! Signature speed per dtype on 1 MiB fragments (BLAKE3 of the same bytes, which ingest
//! computes for every fragment anyway, is timed side by side); index insert and query
//! latency at 10^6 fragments (10^5 quick); and the quality of several band/row choices
//! measured on real signature pairs (recall at given cosines, false-candidate rate).

use std::time::Instant;

use haagenti_core::{DEFAULT_SIMILARITY_THRESHOLD, Dtype, FragmentId, Signature, SignatureScheme};
use haagenti_lsh::{
    ByteMinHash, CosineSketch, IndexConfig, SimilarityIndex, cosine_from_hamming, hamming,
};
use haagenti_testkit::synth::{Rng, bf16_bytes, f16_bytes, f32_bytes, normal_f32};
use serde::Serialize;

use crate::util;

/// Every number the LSH benchmark measures.
#[derive(Debug, Serialize)]
pub struct LshBench {
    pub quick: bool,
    /// Bytes hashed per signature timing run.
    pub signature_bytes: usize,
    pub signature: Vec<SignatureSpeed>,
    pub index: IndexBench,
    /// Quality of band/row choices on measured signature pairs.
    pub quality: Vec<BandingQuality>,
    /// Pairs behind `quality`: related pairs per cosine level, and unrelated pairs.
    pub related_pairs_per_level: usize,
    pub unrelated_pairs: usize,
    /// Mean absolute error of the cosine estimate, per true-cosine level.
    pub estimate_error: Vec<EstimateError>,
}

/// Signature throughput of one scheme and dtype (median of the runs).
#[derive(Debug, Serialize)]
pub struct SignatureSpeed {
    pub scheme: String,
    pub input: String,
    pub mb_per_s: f64,
    /// BLAKE3 of the same bytes, timed in the same run.
    pub blake3_mb_per_s: f64,
}

/// Index build and query numbers.
#[derive(Debug, Serialize)]
pub struct IndexBench {
    pub fragments: usize,
    pub bands: u32,
    pub rows: u32,
    pub bits: u32,
    pub inserts_per_s: f64,
    pub memory_bytes: usize,
    pub bytes_per_fragment: f64,
    pub query_p50_us: f64,
    pub query_p99_us: f64,
    pub queries: usize,
    /// Nominated (unverified) candidates per query of an unrelated signature.
    pub false_candidates_per_query: f64,
    /// Fraction of planted near-duplicates (about 3% of bits flipped) found.
    pub planted_recall: f64,
    pub segment_bytes: usize,
    pub segment_load_ms: f64,
}

/// Recall and false-candidate rate of one banding choice, measured on signature pairs.
#[derive(Debug, Serialize)]
pub struct BandingQuality {
    pub bands: u32,
    pub rows: u32,
    /// (true cosine level, fraction of pairs sharing at least one band).
    pub recall: Vec<(f64, f64)>,
    pub false_candidate_rate: f64,
}

/// Accuracy of the estimate at one true-cosine level.
#[derive(Debug, Serialize)]
pub struct EstimateError {
    pub cosine: f64,
    pub mean_abs_error: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

/// Runs every LSH benchmark; `quick` shrinks sizes for CI.
pub fn run(quick: bool) -> anyhow::Result<LshBench> {
    let signature_bytes = if quick { 16 << 20 } else { 64 << 20 };
    Ok(LshBench {
        quick,
        signature_bytes,
        signature: signature_speeds(signature_bytes, if quick { 3 } else { 5 })?,
        index: index_bench(if quick { 100_000 } else { 1_000_000 })?,
        quality: Vec::new(),
        related_pairs_per_level: 0,
        unrelated_pairs: 0,
        estimate_error: Vec::new(),
    }
    .with_quality(if quick { 200 } else { 600 }, if quick { 300 } else { 800 }))
}

fn signature_speeds(total: usize, runs: usize) -> anyhow::Result<Vec<SignatureSpeed>> {
    const FRAGMENT: usize = 1 << 20;
    const SMALL: usize = 128 << 10;
    let values = normal_f32(1, total / 2, 0.0, 0.02);
    let bf16 = bf16_bytes(&values);
    let f16 = f16_bytes(&values);
    let f32s = f32_bytes(&values[..total / 4]);
    let mut rng = Rng::new(2);
    let mut i8s = vec![0u8; total];
    rng.fill_bytes(&mut i8s);
    // Blob bytes: tokenizer-like JSON text.
    let mut text = Vec::with_capacity(total + 64);
    while text.len() < total {
        let line = format!(
            "    \"tok_{:x}\": {},\n",
            rng.next_u64() >> 40,
            rng.below(1 << 17)
        );
        text.extend_from_slice(line.as_bytes());
    }
    text.truncate(total);
    let cosine = CosineSketch::default();
    let minhash = ByteMinHash::default();
    type Case<'a> = (
        &'a dyn SignatureScheme,
        &'a str,
        Option<Dtype>,
        &'a [u8],
        usize,
    );
    let cases: [Case<'_>; 9] = [
        (&cosine, "bf16", Some(Dtype::BF16), &bf16, FRAGMENT),
        (&cosine, "f16", Some(Dtype::F16), &f16, FRAGMENT),
        (&cosine, "f32", Some(Dtype::F32), &f32s, FRAGMENT),
        (&cosine, "i8", Some(Dtype::I8), &i8s, FRAGMENT),
        // Below the sampling threshold every element is read.
        (
            &cosine,
            "bf16, 128 KiB fragments",
            Some(Dtype::BF16),
            &bf16,
            SMALL,
        ),
        (
            &cosine,
            "f32, 128 KiB fragments",
            Some(Dtype::F32),
            &f32s,
            SMALL,
        ),
        (
            &cosine,
            "i8, 128 KiB fragments",
            Some(Dtype::I8),
            &i8s,
            SMALL,
        ),
        // Chunks of up to 64 KiB are scanned whole; longer ones at their ends only.
        (&minhash, "blob, 1 MiB chunks", None, &text, FRAGMENT),
        (&minhash, "blob, 64 KiB chunks", None, &text, 64 << 10),
    ];
    let mut out = Vec::new();
    for (scheme, name, dtype, data, fragment) in cases {
        let (mb_per_s, blake3_mb_per_s) = speeds(scheme, name, dtype, data, fragment, runs)?;
        out.push(SignatureSpeed {
            scheme: scheme.name().to_string(),
            input: name.to_string(),
            mb_per_s,
            blake3_mb_per_s,
        });
    }
    Ok(out)
}

/// Single-core (signature, BLAKE3) MB/s of the cosine sketch on `total` bytes of bf16
/// weights in 1 MiB fragments: the row the CPU ceiling uses, measured alone.
pub fn bf16_signature_speeds(total: usize, runs: usize) -> anyhow::Result<(f64, f64)> {
    let bf16 = bf16_bytes(&normal_f32(1, total / 2, 0.0, 0.02));
    let cosine = CosineSketch::default();
    speeds(&cosine, "bf16", Some(Dtype::BF16), &bf16, 1 << 20, runs)
}

/// Medians of `runs` (signature, BLAKE3) MB/s over `data` cut into `fragment` bytes.
fn speeds(
    scheme: &dyn SignatureScheme,
    name: &str,
    dtype: Option<Dtype>,
    data: &[u8],
    fragment: usize,
    runs: usize,
) -> anyhow::Result<(f64, f64)> {
    let mb = data.len() as f64 / 1e6;
    let (mut sig_runs, mut hash_runs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let mut made = 0usize;
        for frag in data.chunks(fragment) {
            made += usize::from(scheme.signature(frag, dtype).is_some());
        }
        sig_runs.push(mb / t.elapsed().as_secs_f64());
        anyhow::ensure!(
            made == data.len().div_ceil(fragment),
            "{name}: missing signatures"
        );
        let t = Instant::now();
        let mut x = 0u8;
        for frag in data.chunks(fragment) {
            x ^= FragmentId::of(frag).0[0];
        }
        std::hint::black_box(x);
        hash_runs.push(mb / t.elapsed().as_secs_f64());
    }
    Ok((util::median(sig_runs), util::median(hash_runs)))
}

fn random_signature(rng: &mut Rng, words: usize) -> Signature {
    Signature {
        scheme: haagenti_lsh::COSINE_SKETCH_TAG,
        words: (0..words).map(|_| rng.next_u64()).collect(),
    }
}

fn index_bench(fragments: usize) -> anyhow::Result<IndexBench> {
    let config = IndexConfig::cosine();
    let words = config.bits as usize / 64;
    let mut rng = Rng::new(3);
    let entries: Vec<(FragmentId, Signature)> = (0..fragments)
        .map(|i| {
            (
                FragmentId::of(&(i as u64).to_le_bytes()),
                random_signature(&mut rng, words),
            )
        })
        .collect();
    let mut index = SimilarityIndex::new(config)?;
    let t = Instant::now();
    for (i, (id, sig)) in entries.iter().enumerate() {
        index.insert(*id, sig, i as u64)?;
    }
    let inserts_per_s = fragments as f64 / t.elapsed().as_secs_f64();

    let queries = 20_000.min(fragments);
    let mut latencies = Vec::with_capacity(queries);
    let (mut found, mut planted, mut false_candidates, mut unrelated) = (0, 0, 0, 0);
    for q in 0..queries {
        if q % 2 == 0 {
            // A near-duplicate of a stored fragment: flip ~3% of its bits (cosine ~0.995).
            let target = rng.below(fragments as u64) as usize;
            let (id, sig) = &entries[target];
            let mut query = sig.clone();
            for _ in 0..8 {
                let bit = rng.below(config.bits as u64) as usize;
                query.words[bit / 64] ^= 1 << (bit % 64);
            }
            let t = Instant::now();
            let hits = index.find_similar(&query, DEFAULT_SIMILARITY_THRESHOLD, 8)?;
            latencies.push(t.elapsed().as_secs_f64() * 1e6);
            planted += 1;
            found += usize::from(hits.iter().any(|m| m.id == *id));
        } else {
            let query = random_signature(&mut rng, words);
            let t = Instant::now();
            let hits = index.find_similar(&query, DEFAULT_SIMILARITY_THRESHOLD, 8)?;
            latencies.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(hits);
            false_candidates += index.candidates(&query)?.len();
            unrelated += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);

    let bytes = index.to_bytes();
    let t = Instant::now();
    let reloaded = SimilarityIndex::from_bytes(config, &bytes)?;
    let segment_load_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(reloaded.len() == fragments, "segment reload lost entries");

    let memory_bytes = index.memory_bytes();
    Ok(IndexBench {
        fragments,
        bands: config.bands,
        rows: config.rows,
        bits: config.bits,
        inserts_per_s,
        memory_bytes,
        bytes_per_fragment: memory_bytes as f64 / fragments as f64,
        query_p50_us: percentile(&latencies, 0.5),
        query_p99_us: percentile(&latencies, 0.99),
        queries,
        false_candidates_per_query: false_candidates as f64 / unrelated.max(1) as f64,
        planted_recall: found as f64 / planted.max(1) as f64,
        segment_bytes: bytes.len(),
        segment_load_ms,
    })
}

/// Banding choices compared in the quality table (all fit 256 bits).
const BANDINGS: [(u32, u32); 6] = [(8, 32), (10, 24), (12, 20), (16, 16), (21, 12), (32, 8)];
/// True-cosine levels of the related pairs.
const LEVELS: [f64; 5] = [0.9999, 0.99, 0.98, 0.95, 0.90];

impl LshBench {
    fn with_quality(mut self, pairs_per_level: usize, unrelated: usize) -> Self {
        let scheme = CosineSketch::default();
        let n = 1 << 16; // a 128 KiB bf16 fragment
        let sig = |v: &[f32]| scheme.signature(&bf16_bytes(v), Some(Dtype::BF16));
        let mut level_pairs: Vec<Vec<(Signature, Signature)>> = Vec::new();
        let mut errors = Vec::new();
        for (l, &level) in LEVELS.iter().enumerate() {
            let mut pairs = Vec::new();
            let mut err = 0.0;
            // Noise of relative size r gives cosine 1/sqrt(1 + r^2).
            let rel = ((1.0 / (level * level)) - 1.0).sqrt() as f32;
            for p in 0..pairs_per_level {
                let seed = (l * 100_000 + p) as u64;
                let base = normal_f32(seed, n, 0.0, 0.02);
                let noise = normal_f32(seed ^ 0xdead_beef, n, 0.0, 0.02 * rel);
                let other: Vec<f32> = base.iter().zip(&noise).map(|(a, b)| a + b).collect();
                if let (Some(a), Some(b)) = (sig(&base), sig(&other)) {
                    let est = cosine_from_hamming(hamming(&a.words, &b.words), 256);
                    err += (f64::from(est) - level).abs();
                    pairs.push((a, b));
                }
            }
            errors.push(EstimateError {
                cosine: level,
                mean_abs_error: err / pairs.len().max(1) as f64,
            });
            level_pairs.push(pairs);
        }
        let others: Vec<Signature> = (0..unrelated)
            .filter_map(|i| sig(&normal_f32(9_000_000 + i as u64, n, 0.0, 0.02)))
            .collect();
        let mut quality = Vec::new();
        for (bands, rows) in BANDINGS {
            let collides = |a: &Signature, b: &Signature| {
                (0..bands).any(|band| {
                    let start = (band * rows) as usize;
                    (start..start + rows as usize)
                        .all(|bit| (a.words[bit / 64] ^ b.words[bit / 64]) >> (bit % 64) & 1 == 0)
                })
            };
            let recall = LEVELS
                .iter()
                .zip(&level_pairs)
                .map(|(&level, pairs)| {
                    let hit = pairs.iter().filter(|(a, b)| collides(a, b)).count();
                    (level, hit as f64 / pairs.len().max(1) as f64)
                })
                .collect();
            let (mut hits, mut total) = (0usize, 0usize);
            for i in 0..others.len() {
                for j in i + 1..others.len() {
                    hits += usize::from(collides(&others[i], &others[j]));
                    total += 1;
                }
            }
            quality.push(BandingQuality {
                bands,
                rows,
                recall,
                false_candidate_rate: hits as f64 / total.max(1) as f64,
            });
        }
        self.related_pairs_per_level = pairs_per_level;
        self.unrelated_pairs = others.len() * others.len().saturating_sub(1) / 2;
        self.quality = quality;
        self.estimate_error = errors;
        self
    }
}

/// The benchmark as markdown tables.
pub fn markdown(b: &LshBench) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Signatures ({} MiB per run, 1 MiB fragments unless noted, median)\n",
        b.signature_bytes >> 20
    );
    let _ = writeln!(s, "| scheme | input | MB/s | BLAKE3 MB/s (same run) |");
    let _ = writeln!(s, "|---|---|---:|---:|");
    for r in &b.signature {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} |",
            r.scheme, r.input, r.mb_per_s, r.blake3_mb_per_s
        );
    }
    let i = &b.index;
    let _ = writeln!(
        s,
        "\n### Index ({} fragments, {} bits, {} bands x {} rows)\n",
        i.fragments, i.bits, i.bands, i.rows
    );
    let _ = writeln!(s, "| metric | value |\n|---|---:|");
    let _ = writeln!(s, "| inserts/s | {:.0} |", i.inserts_per_s);
    let _ = writeln!(
        s,
        "| memory | {:.1} MB ({:.0} B/fragment) |",
        i.memory_bytes as f64 / 1e6,
        i.bytes_per_fragment
    );
    let _ = writeln!(s, "| query p50 | {:.1} us |", i.query_p50_us);
    let _ = writeln!(s, "| query p99 | {:.1} us |", i.query_p99_us);
    let _ = writeln!(
        s,
        "| false candidates/query | {:.1} |",
        i.false_candidates_per_query
    );
    let _ = writeln!(
        s,
        "| planted near-duplicates found | {:.4} |",
        i.planted_recall
    );
    let _ = writeln!(
        s,
        "| segment | {:.1} MB, loads in {:.0} ms |",
        i.segment_bytes as f64 / 1e6,
        i.segment_load_ms
    );
    let _ = writeln!(
        s,
        "\n### Banding quality ({} related pairs per level, {} unrelated pairs, 256 bits)\n",
        b.related_pairs_per_level, b.unrelated_pairs
    );
    let _ = write!(s, "| bands x rows |");
    for l in LEVELS {
        let _ = write!(s, " recall @cos {l} |");
    }
    let _ = writeln!(s, " false candidates |");
    let _ = writeln!(s, "|---|{}---:|", "---:|".repeat(LEVELS.len()));
    for q in &b.quality {
        let _ = write!(s, "| {} x {} |", q.bands, q.rows);
        for (_, r) in &q.recall {
            let _ = write!(s, " {r:.4} |");
        }
        let _ = writeln!(s, " {:.2e} |", q.false_candidate_rate);
    }
    let _ = writeln!(
        s,
        "\n| true cosine | mean abs error of estimate |\n|---:|---:|"
    );
    for e in &b.estimate_error {
        let _ = writeln!(s, "| {} | {:.4} |", e.cosine, e.mean_abs_error);
    }
    s
}
