//! [`FragmentBuffer`]: fragment bytes lent to numpy without a copy.
//!
//! The buffer protocol (`Py_buffer`) is only in the stable ABI from Python 3.11, and the
//! package is one abi3 wheel for 3.9 and later. numpy's `__array_interface__` needs no C
//! API: it hands numpy the address, length and read-only flag of the bytes, and numpy
//! keeps the object that exposes it as the array's `base`. So an array made with
//! `np.asarray(buffer)` holds the `FragmentBuffer`, which holds the [`Bytes`] (the very
//! bytes the fragment cache holds), and the memory lives as long as any array over it.
//! No `unsafe` is involved on this side: the address is handed over as an integer and
//! numpy reads it only while the buffer is alive.

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Read-only bytes of one fragment (or of a tensor assembled from several), shared with
/// the library's cache and with every array made over them.
#[pyclass(frozen, weakref, module = "haagenti._native")]
#[derive(Debug)]
pub struct FragmentBuffer {
    bytes: Bytes,
}

impl FragmentBuffer {
    pub fn new(bytes: Bytes) -> Self {
        Self { bytes }
    }
}

#[pymethods]
impl FragmentBuffer {
    fn __len__(&self) -> usize {
        self.bytes.len()
    }

    /// numpy's array interface (version 3): one dimension of bytes, read-only.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", (self.bytes.len(),))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (self.address(), true))?;
        Ok(d)
    }

    /// `(address, length)` of the bytes (for tests that check arrays are views of them).
    fn _address(&self) -> (usize, usize) {
        (self.address(), self.bytes.len())
    }

    fn __repr__(&self) -> String {
        format!("<haagenti FragmentBuffer of {} bytes>", self.bytes.len())
    }
}

impl FragmentBuffer {
    fn address(&self) -> usize {
        self.bytes.as_ptr() as usize
    }
}
