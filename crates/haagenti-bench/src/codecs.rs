//! Codec micro-benchmarks (issue 4).
