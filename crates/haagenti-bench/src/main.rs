//! `haagenti-bench`: run by `cargo xtask bench`; prints a markdown table and writes JSON.

mod codecs;
mod lsh;
mod s3;

fn main() {}
