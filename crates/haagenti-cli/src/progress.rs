//! A terminal progress bar for long operations; silent when stderr is not a terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use haagenti_core::Progress;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar labelled `what`, or `None` when nobody would see it.
    pub fn new(what: &'static str, quiet: bool) -> Option<Arc<Self>> {
        if quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(what);
        Some(Arc::new(Self { bar }))
    }
}

impl Progress for Bar {
    fn begin(&self, total_bytes: u64) {
        self.bar.set_length(total_bytes);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
