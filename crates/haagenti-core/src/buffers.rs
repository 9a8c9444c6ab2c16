//! Reusable buffers for bulk reads and writes: fragment objects read from a store or
//! encoded for one, decoded fragments, fragments read from ingest's input files. Their
//! `Bytes` hand the buffer back to its [`Pool`] when the last clone is dropped, so bulk
//! work (ingest, export, verify, a mount's stream) fills memory that is already mapped
//! instead of a fresh 1-2 MiB allocation per object, which the allocator may serve as
//! new zeroed pages (a page fault every 4 KiB). Bounded: a pool keeps at
//! most [`KEPT`] buffers of at most [`KEPT_LEN`] bytes; others are freed as usual.
//!
//! A decoded-fragment buffer is only handed out for contents close to its capacity
//! (`fits`): a fragment may be held for long (by a cache, or by an array in Python), and
//! a small tensor must not pin a large buffer whose pages an earlier use touched.

use std::sync::Mutex;

use bytes::Bytes;

/// Most buffers a pool keeps for reuse.
pub const KEPT: usize = 16;
/// Largest buffer kept for reuse: the largest default fragment (2 MiB of f32).
pub const KEPT_LEN: usize = 2 << 20;

/// A process-wide free list of buffers of one use (their sizes alike).
#[derive(Debug)]
pub struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Whether buffers go only to contents close to their size ([`fits`]).
    tight: bool,
}

/// Stored objects as a store reads them or ingest encodes them (dropped once decoded
/// or written: any buffer with room fits).
pub static OBJECTS: Pool = Pool::new(false);
/// Fragments as ingest reads them from its input files (dropped once stored).
pub static INPUT: Pool = Pool::new(false);
/// Decoded fragments (maybe held for long: a buffer fits only contents close to its
/// size).
pub static FRAGMENTS: Pool = Pool::new(true);

impl Pool {
    const fn new(tight: bool) -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            tight,
        }
    }

    /// The most recently kept buffer that [`fits`] `len` bytes, as it was left (never
    /// grown: a reallocation would copy its old contents); one whose length already
    /// covers `len` first, so that [`take_filled`](Self::take_filled) need not extend it.
    fn reuse(&self, len: usize) -> Option<Vec<u8>> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let fits = |b: &Vec<u8>| b.capacity() >= len && (!self.tight || fits(b, len));
        free.iter()
            .rposition(|b| b.len() >= len && fits(b))
            .or_else(|| free.iter().rposition(fits))
            .map(|i| free.remove(i))
    }

    /// A kept buffer of exactly `len` bytes whose contents are unspecified, as
    /// [`take_filled`](Self::take_filled) gives; `None` when no kept buffer has room, so
    /// that the caller can fill a new one by appending instead of zero-filling it first.
    pub fn reuse_filled(&self, len: usize) -> Option<Vec<u8>> {
        let mut buffer = self.reuse(len)?;
        if buffer.len() >= len {
            buffer.truncate(len);
        } else {
            buffer.resize(len, 0);
        }
        Some(buffer)
    }

    /// An empty buffer with room for `len` bytes: a kept one when there is one, else a
    /// new one. The caller bounds `len` (this allocates it).
    pub fn take(&self, len: usize) -> Vec<u8> {
        match self.reuse(len) {
            Some(mut buffer) => {
                buffer.clear();
                buffer
            }
            None => Vec::with_capacity(len),
        }
    }

    /// A buffer of exactly `len` bytes whose contents are unspecified (left over from an
    /// earlier use; zero where it had to be extended): for writers that overwrite every
    /// byte, such as [`Codec::decode_into`](crate::Codec::decode_into). A kept buffer
    /// keeps its length, so buffers of one size are zero-filled once in their life. The
    /// caller bounds `len`.
    pub fn take_filled(&self, len: usize) -> Vec<u8> {
        self.reuse_filled(len).unwrap_or_else(|| vec![0; len])
    }

    /// `data` as `Bytes` whose buffer comes back to this pool once every clone is
    /// dropped (a plain `Bytes` when it is too large to keep).
    pub fn into_bytes(&'static self, data: Vec<u8>) -> Bytes {
        if keepable(&data) {
            Bytes::from_owner(Returned { data, pool: self })
        } else {
            Bytes::from(data)
        }
    }
}

/// A buffer that goes back to its pool when dropped.
struct Returned {
    data: Vec<u8>,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.data);
        if keepable(&buffer) {
            let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < KEPT {
                free.push(buffer);
            } else if let Some(smallest) = free.iter_mut().min_by_key(|b| b.capacity()) {
                // Full: keep the larger buffer, so that a run of small contents does not
                // leave the pool without buffers for the common fragment size.
                if smallest.capacity() < buffer.capacity() {
                    *smallest = buffer;
                }
            }
        }
    }
}

/// Whether `buffer` may hold `len` bytes for long: it has room, and at most an eighth of
/// it would be left unused.
fn fits(buffer: &Vec<u8>, len: usize) -> bool {
    buffer.capacity() >= len && buffer.capacity() - len <= len / 8
}

fn keepable(buffer: &Vec<u8>) -> bool {
    buffer.capacity() > 0 && buffer.capacity() <= KEPT_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    static POOL: Pool = Pool::new(true);

    #[test]
    fn a_dropped_buffer_is_reused_with_its_bytes_intact_until_then() {
        let mut first = POOL.take(1000);
        first.extend_from_slice(&[7; 1000]);
        let bytes = POOL.into_bytes(first);
        let clone = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(&clone[..], &[7; 10]);
        drop(clone);
        let again = POOL.take_filled(900);
        assert_eq!(again, [7; 900]); // the same buffer, not zero-filled again
        drop(POOL.into_bytes(again));
        // Small contents do not pin the large buffer.
        assert!(POOL.reuse_filled(300).is_none());
        assert!(POOL.take(1000).is_empty());
        assert!(POOL.reuse_filled(1000).is_none()); // the one kept buffer was taken
        assert_eq!(POOL.take_filled(3000), [0; 3000]);
    }

    #[test]
    fn a_full_pool_keeps_the_larger_buffers() {
        static FULL: Pool = Pool::new(true);
        let small: Vec<Bytes> = (0..KEPT).map(|_| FULL.into_bytes(vec![1; 100])).collect();
        drop(small);
        drop(FULL.into_bytes(vec![2; 1 << 20]));
        assert_eq!(FULL.reuse_filled(1 << 20), Some(vec![2; 1 << 20]));
        assert_eq!(FULL.reuse_filled(100), Some(vec![1; 100]));
    }
}
