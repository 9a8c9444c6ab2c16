//! The parts of the `haagenti` command that its integration tests drive in-process, and
//! that two commands share (the family report: `report` writes it, `serve` shows it at
//! `/`). Not an API: the command line is.

pub mod report;
#[cfg(feature = "serve")]
pub mod serve;

#[cfg(any(feature = "mount", feature = "serve"))]
pub mod process;
