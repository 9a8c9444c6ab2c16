//! One module per subcommand: its arguments and its `run`.

pub mod compare;
pub mod demo;
pub mod export;
pub mod gc;
pub mod import_hf_cache;
pub mod ingest;
pub mod list;
pub mod load;
#[cfg(all(feature = "mount", target_os = "linux"))]
pub mod mount;
pub mod reindex;
pub mod repair;
pub mod report;
pub mod rm;
#[cfg(feature = "serve")]
pub mod serve;
pub mod show;
pub mod similar;
pub mod stats;
pub mod verify;
