//! The allocator the `cairn` binary (and its benchmarks) run on.
//!
//! The engine allocates many small, short-lived values per step (names, JSON
//! values, journal events); mimalloc serves those markedly faster than
//! glibc's allocator (a cached rerun of 10 000 steps: 0.38–0.57 s → 0.22–0.27 s,
//! see the README's benchmark notes). A binary opts in with
//! `#[global_allocator] static A: cairn::allocator::Allocator = cairn::allocator::Allocator;`
//! and calls [`tune`] first thing in `main`.

pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc 3's option enum (`mimalloc.h`);
/// libmimalloc-sys names only some options.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Set mimalloc's options.
///
/// mimalloc 3 keeps freed memory for a second before returning it to the
/// system; while a large manifest is planned that holds on to the parser's
/// garbage (a 193 MB peak for 100 000 steps). A 100 ms delay returns it
/// while planning goes on (149 MB). Shorter is leaner but not free: at
/// 10 ms the peak is 133 MB, but memory freed and reused within a run is
/// returned and faulted in again, and a 10 000-step run with a no-op
/// executor took 63 ms instead of 41.
///
/// # Safety
/// mimalloc's option setters are not thread-safe: call this before any
/// other thread is started.
pub unsafe fn tune() {
    // SAFETY: the caller guarantees no other thread runs.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 100) };
}
