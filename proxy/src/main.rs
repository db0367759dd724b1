//! `multiverse-proxy`: the data plane's binary. Everything but the allocator lives in the
//! library: the command line in `multiverse_proxy::cli`, the server in
//! `multiverse_proxy::server`.

use clap::Parser;

/// glibc malloc was ~10% of the proxy's CPU under load (perf, issue 6); mimalloc's per-thread
/// free lists take most of that away.
#[cfg(not(any(debug_assertions, feature = "alloc-count")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Debug builds (the ones the tests start) and the `alloc-count` feature count allocations and
/// serve the counts on `MULTIVERSE_PROXY_ALLOC_COUNT` (an address): the per-request allocation
/// budget (issue 18, benches/tests/request_budget.rs) is read from there.
#[cfg(any(debug_assertions, feature = "alloc-count"))]
#[global_allocator]
static GLOBAL: multiverse_alloc_count::Counting<mimalloc::MiMalloc> =
    multiverse_alloc_count::Counting(mimalloc::MiMalloc);

/// mimalloc v3's `mi_option_purge_delay` (`mi_option_e` in its mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// With mimalloc's defaults a 10k-model table left 85 MiB of RSS behind after it was replaced:
/// freed pages are returned only after a delay, and only by a thread that allocates again, which
/// the idle table-building thread never does. Returning them at once costs ~0.2 `madvise` per
/// proxied request and brings that case to ~30 MiB (`bench --only memory,models-10k`).
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: `mi_option_set` only stores a value in mimalloc's option table; it may be called at
    // any time from any thread, and the number is mimalloc v3's enum value.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

fn main() {
    tune_allocator();
    #[cfg(any(debug_assertions, feature = "alloc-count"))]
    if let Err(e) = multiverse_alloc_count::serve_from_env("MULTIVERSE_PROXY_ALLOC_COUNT") {
        eprintln!("multiverse-proxy: {e:#}");
        std::process::exit(2);
    }
    if let Err(e) = multiverse_proxy::cli::run(multiverse_proxy::cli::Cli::parse()) {
        eprintln!("multiverse-proxy: {e:#}");
        std::process::exit(2);
    }
}
