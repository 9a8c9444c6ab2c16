//! Process-wide settings of the long-running commands (`serve`, `mount`).

/// Limits glibc to two malloc arenas. glibc gives threads up to 8 × cores arenas; the
/// ~1 MiB decode buffers of every fragment, freed on whichever thread finishes with them,
/// fragment those arenas and they never shrink: 8 clients of `serve` on a 1 GB model
/// peaked at 393 MiB with `--cache-mb 256` (318 MiB with no cache at all), a mount
/// reading a 777 MB model at 375 MiB (315 MiB with one arena). Two arenas keep the process
/// near its cache budget plus a constant, without the page faults a fixed mmap threshold
/// costs (which halved one client's speed).
///
/// The workspace's one `unsafe`: decided in ARCHITECTURE.md (*Decisions*).
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` sets a process-wide allocator parameter (glibc serialises it with
    // its own locks); it takes no pointers and may be called at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
