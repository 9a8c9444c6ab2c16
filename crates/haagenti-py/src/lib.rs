//! `haagenti._native`: the Rust half of the Python package `haagenti`.
//!
//! The Python half (`python/haagenti/__init__.py`) is the public API: `open`, `Library`,
//! `safe_open`, `load_file`. It builds numpy arrays over the [`FragmentBuffer`]s this
//! module returns, so that arrays are views of the fragment bytes the library's cache
//! holds, and does the slicing arithmetic of `get_slice`.
//!
//! * `library.rs`: `Library` (one tokio runtime each) and its operations.
//! * `model.rs`: `Model`: tensors, whole-tensor and per-fragment reads.
//! * `ahead.rs`: `ReadAhead`: the tensors a model's reader is expected to ask for next,
//!   read while Python works on the last one.
//! * `buffer.rs`: `FragmentBuffer`: bytes lent to numpy without a copy.
//! * `errors.rs`: the exception hierarchy and the mapping from `FragmentError`.

use pyo3::prelude::*;

mod ahead;
mod buffer;
mod errors;
mod library;
mod model;

pub use buffer::FragmentBuffer;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<library::Library>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<FragmentBuffer>()?;
    m.add("HaagentiError", py.get_type::<errors::HaagentiError>())?;
    m.add("NotFound", py.get_type::<errors::NotFound>())?;
    m.add("Corrupt", py.get_type::<errors::Corrupt>())?;
    m.add("InvalidInput", py.get_type::<errors::InvalidInput>())?;
    m.add("StoreError", py.get_type::<errors::StoreError>())?;
    Ok(())
}
