//! Signature and index micro-benchmarks (issue 5).
