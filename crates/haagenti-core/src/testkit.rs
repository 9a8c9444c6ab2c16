//! Conformance suites every store and codec runs (feature `testkit`).
