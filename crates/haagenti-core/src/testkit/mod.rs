//! Conformance suites every store and codec runs, and fault-injecting wrappers
//! (feature `testkit`).

pub mod codec;
pub mod faults;
pub mod store;
