//! Which stripe the calling thread writes to.
//!
//! Every thread gets a small index once (round-robin from a global counter, kept in a
//! thread-local), so threads that record concurrently land on different cache lines as long as
//! there are at least as many stripes as recording threads. Under loom the index is a hash of the
//! modelled thread's id (loom threads share one OS thread, so a std thread-local would not do).

/// The number of stripes a striped structure should use: a power of two, at least `min`, scaled
/// to the machine (4 per available core) and at most `max`. Under loom: 2.
pub(crate) fn stripes(min: usize, max: usize) -> usize {
    if freelane_sync::LOOM {
        return 2;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).next_power_of_two().clamp(min, max)
}

/// This thread's stripe hint (any `usize`; callers reduce it modulo their stripe count).
#[cfg(not(freelane_loom))]
#[inline]
pub(crate) fn thread_hint() -> usize {
    use std::cell::Cell;
    // Not part of any structure's protocol: a plain counter that hands out thread indices.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static HINT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    HINT.with(|h| {
        let v = h.get();
        if v != usize::MAX {
            return v;
        }
        // Relaxed: only uniqueness of the handed-out index matters; it publishes nothing.
        let v = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & (usize::MAX >> 1);
        h.set(v);
        v
    })
}

/// This thread's stripe hint (loom: the modelled thread's index, so main is 0 and the spawned
/// threads 1, 2, ...; models can then choose which threads share a stripe).
#[cfg(freelane_loom)]
#[inline]
pub(crate) fn thread_hint() -> usize {
    let id = format!("{:?}", loom::thread::current().id());
    id.chars()
        .filter(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}
