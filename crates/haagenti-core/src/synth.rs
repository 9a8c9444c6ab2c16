//! Deterministic generators of realistic model families (safetensors files) for the demo,
//! tests and benchmarks. No model hub is reachable, so haagenti makes its own weights.
