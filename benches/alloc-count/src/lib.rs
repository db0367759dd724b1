//! A counting global allocator ([`Counting`]) and the listener that reports its counts
//! ([`serve`]): how the per-request allocation budget of `multiverse-proxy` is measured (issue 18).
//!
//! The proxy binary installs `Counting<MiMalloc>` in debug builds and with its `alloc-count`
//! feature, and serves the counts when `MULTIVERSE_PROXY_ALLOC_COUNT` names an address. A
//! benchmark or test reads them ([`read`]) before and after N requests: the difference ÷ N is
//! the allocations per request, a number that does not depend on the machine's load.
//!
//! Cost: four relaxed atomic adds per allocation (shared by all threads; this is for test and
//! measurement builds, not for production ones). Reporting allocates nothing, so reading the
//! counts does not change them.

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static DEALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Wraps the allocator `A`, counting every call (all threads together).
#[derive(Debug, Default)]
pub struct Counting<A>(pub A);

// SAFETY: every method forwards to the wrapped allocator unchanged, with the same arguments;
// the counters are plain atomics and do not allocate.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        DEALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(
            new_size.saturating_sub(layout.size()) as u64,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// The counters at one moment (since the process started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `alloc` and `alloc_zeroed` calls.
    pub allocs: u64,
    /// `realloc` calls (a growing `Vec`, `String`, `BytesMut`).
    pub reallocs: u64,
    /// `dealloc` calls.
    pub deallocs: u64,
    /// Bytes requested by `alloc`, `alloc_zeroed` and growing `realloc`s.
    pub bytes: u64,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            allocs: self.allocs.saturating_sub(earlier.allocs),
            reallocs: self.reallocs.saturating_sub(earlier.reallocs),
            deallocs: self.deallocs.saturating_sub(earlier.deallocs),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }

    /// Allocator calls that hand out memory: `alloc`s and `realloc`s.
    pub fn allocations(&self) -> u64 {
        self.allocs + self.reallocs
    }

    /// The report line [`serve`] writes: `allocs=1 reallocs=2 deallocs=3 bytes=4`.
    pub fn parse(line: &str) -> Option<Counts> {
        let mut c = Counts::default();
        let mut seen = 0;
        for part in line.split_whitespace() {
            let (key, value) = part.split_once('=')?;
            let value: u64 = value.parse().ok()?;
            match key {
                "allocs" => c.allocs = value,
                "reallocs" => c.reallocs = value,
                "deallocs" => c.deallocs = value,
                "bytes" => c.bytes = value,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 4).then_some(c)
    }
}

/// The counters now.
pub fn snapshot() -> Counts {
    Counts {
        allocs: ALLOCS.load(Ordering::Relaxed),
        reallocs: REALLOCS.load(Ordering::Relaxed),
        deallocs: DEALLOCS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

/// Listens on `addr` and answers every connection with one line of [`snapshot`] (see
/// [`Counts::parse`]), then closes it; runs on a thread of its own for the life of the process.
/// Returns the bound address (`addr` may have port 0).
pub fn serve(addr: impl ToSocketAddrs) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("alloc-count".into())
        .spawn(move || {
            for stream in listener.incoming() {
                // Snapshot first: nothing below allocates, so the answer is not disturbed by
                // its own writing. A client that went away is simply skipped.
                let counts = snapshot();
                if let Ok(mut stream) = stream {
                    let _ = writeln!(
                        stream,
                        "allocs={} reallocs={} deallocs={} bytes={}",
                        counts.allocs, counts.reallocs, counts.deallocs, counts.bytes
                    );
                }
            }
        })?;
    Ok(bound)
}

/// [`serve`] on the address in environment variable `var`, if it is set; `Ok(None)` if not.
pub fn serve_from_env(var: &str) -> std::io::Result<Option<SocketAddr>> {
    match std::env::var(var) {
        Ok(addr) if !addr.is_empty() => serve(addr.as_str()).map(Some).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{var}={addr}: cannot listen: {e}"))
        }),
        _ => Ok(None),
    }
}

/// Reads the counts of a process serving them on `addr` (waits at most `timeout`).
pub fn read(addr: SocketAddr, timeout: Duration) -> std::io::Result<Counts> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Counts::parse(text.trim()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an allocation count report: {text:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Tests that move or compare the process-wide counters take turns.
    static COUNTERS: Mutex<()> = Mutex::new(());

    #[test]
    fn report_line_round_trips() {
        let c = Counts::parse("allocs=5 reallocs=2 deallocs=6 bytes=900").unwrap();
        assert_eq!(
            c,
            Counts {
                allocs: 5,
                reallocs: 2,
                deallocs: 6,
                bytes: 900
            }
        );
        assert_eq!(c.allocations(), 7);
        assert_eq!(Counts::parse("allocs=5 reallocs=2"), None);
        assert_eq!(
            Counts::parse("allocs=x reallocs=2 deallocs=6 bytes=1"),
            None
        );
        let later = Counts {
            allocs: 15,
            reallocs: 2,
            deallocs: 16,
            bytes: 1000,
        };
        assert_eq!(later.since(&c).allocs, 10);
        assert_eq!(later.since(&c).bytes, 100);
    }

    /// The test binary does not install the allocator, so the counters stay put: the served
    /// report is what `snapshot` says, and reading it twice gives the same answer.
    #[test]
    fn serves_the_snapshot() {
        let _turn = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
        let addr = serve("127.0.0.1:0").unwrap();
        let first = read(addr, Duration::from_secs(5)).unwrap();
        let second = read(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(first, snapshot());
        assert_eq!(first, second);
    }

    #[test]
    fn counting_forwards_and_counts() {
        let _turn = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
        let a = Counting(std::alloc::System);
        let before = snapshot();
        let layout = Layout::from_size_align(64, 8).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: a valid non-zero layout; the pointer is checked, grown and freed once with
        // the layout it has.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            let p = a.realloc(p, layout, 128);
            assert!(!p.is_null());
            a.dealloc(p, Layout::from_size_align(128, 8).unwrap());
        }
        let d = snapshot().since(&before);
        assert_eq!((d.allocs, d.reallocs, d.deallocs, d.bytes), (1, 1, 1, 128));
    }
}
