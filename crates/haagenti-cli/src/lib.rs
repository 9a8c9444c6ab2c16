//! The parts of the `haagenti` command that its integration tests drive in-process. Not
//! an API: the command line is.

#[cfg(feature = "serve")]
pub mod serve;

#[cfg(any(feature = "mount", feature = "serve"))]
pub mod process;
