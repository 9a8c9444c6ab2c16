//! Conformance suites every store and codec runs (feature `testkit`).

pub mod codec;
