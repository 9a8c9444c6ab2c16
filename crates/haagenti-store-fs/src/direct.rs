//! Writing an object's bytes past the page cache (`O_DIRECT`, Linux).
//!
//! An ingest writes gigabytes of objects that nothing reads back soon. Through the page
//! cache, each 4 KiB of them costs a fresh page, a copy into it, and later its
//! writeback and reclaim: on the 2-core VM of `docs/benchmarks.md` a 2 GiB ingest took
//! 1.6-1.8x the time and CPU it takes this way. With `O_DIRECT` the device reads the
//! bytes straight from one reused buffer per thread, and the page cache keeps what
//! programs read (ARCHITECTURE.md, *Decisions*).
//!
//! `O_DIRECT` wants the buffer, the length and the offset aligned to the device's
//! block size, so the bytes are copied into an aligned buffer, written padded to a
//! whole block, and the file is cut back to its length. A file system that refuses
//! `O_DIRECT` (`EINVAL` on open or write) gets the bytes through the page cache instead.

use std::fs::File;
use std::io;
use std::path::Path;

/// Smaller objects (manifest heads, markers) gain nothing and would cost a padded block.
const MIN_LEN: usize = 64 << 10;
/// Larger ones go through the page cache, so that the reused buffer stays this small.
const MAX_LEN: usize = 16 << 20;

/// Creates `path` (truncating) holding `bytes`, written past the page cache; `None`
/// when this file system or this object does not take that path (nothing was written
/// then, or what was will be truncated by the caller's buffered create).
#[cfg(target_os = "linux")]
pub(crate) fn create(path: &Path, bytes: &[u8]) -> io::Result<Option<File>> {
    use std::cell::RefCell;
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    /// Covers every logical block size in use (512 and 4096 bytes).
    const ALIGN: usize = 4096;
    thread_local! {
        static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);

    if !(MIN_LEN..=MAX_LEN).contains(&bytes.len()) {
        return Ok(None);
    }
    let mut file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if refused(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let padded = bytes.len().next_multiple_of(ALIGN);
    let written = BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        if buffer.len() < padded + ALIGN {
            buffer.resize(padded + ALIGN, 0);
        }
        let start = buffer.as_ptr().align_offset(ALIGN);
        let Some(block) = buffer.get_mut(start..start + padded) else {
            return Ok(false);
        };
        let (data, padding) = block.split_at_mut(bytes.len());
        data.copy_from_slice(bytes);
        padding.fill(0);
        match file.write_all(block) {
            Ok(()) => Ok(true),
            Err(e) if refused(&e) => Ok(false),
            Err(e) => Err(e),
        }
    })?;
    if !written {
        return Ok(None);
    }
    if padded != bytes.len() {
        file.set_len(bytes.len() as u64)?;
    }
    Ok(Some(file))
}

/// Elsewhere, every object goes through the page cache.
#[cfg(not(target_os = "linux"))]
pub(crate) fn create(_path: &Path, _bytes: &[u8]) -> io::Result<Option<File>> {
    Ok(None)
}
