// glibc's malloc was ~40% of the client's CPU on a replay (many small,
// short-lived allocations across threads); mimalloc takes a fraction of that.
// The `system-allocator` feature leaves the system's, for heap profilers
// that hook malloc (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e` of the
/// bundled mimalloc 3; libmimalloc-sys names only older options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Give freed pages back to the OS at once instead of a second later:
    // the pipeline frees whole batches at a time, and holding them cost
    // ~40 MB of peak RSS on a 100k-event replay, for no measurable speed.
    // `MIMALLOC_PURGE_DELAY` in the environment still decides if set.
    #[cfg(not(feature = "system-allocator"))]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option, before any other thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    // No transparent huge pages: mimalloc asks for them on its arenas, and
    // with pages given back at once every batch faulted in and zeroed whole
    // 2 MiB pages again, partly used: 1M-event replay peak RSS 180-198 ->
    // 162 MB (see README, Performance).
    #[cfg(target_os = "linux")]
    // SAFETY: a process flag, no memory passed; failure leaves THP as it was.
    unsafe {
        // prctl is variadic; the kernel reads unsigned longs.
        let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
        libc::prctl(libc::PR_SET_THP_DISABLE, one, zero, zero, zero);
    }
    lookout_ingester::cli::main()
}
