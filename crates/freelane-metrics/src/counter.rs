//! Striped counters and gauges.

use std::fmt;

use freelane_sync::atomic::{AtomicI64, AtomicU64, Ordering};
use freelane_sync::CachePadded;

use crate::shard;

/// A monotonically increasing counter, striped over cache-padded cells so threads that count
/// concurrently do not share a line. `inc`/`add` are one relaxed `fetch_add` (wait-free);
/// [`get`](Counter::get) sums the stripes and is exact when no increment is racing with it.
pub struct Counter {
    cells: Box<[CachePadded<AtomicU64>]>,
}

impl Counter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self {
            cells: (0..shard::stripes(1, 16))
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` (wrapping at `u64::MAX`).
    #[inline]
    pub fn add(&self, n: u64) {
        let cell = &self.cells[shard::thread_hint() & (self.cells.len() - 1)];
        // Relaxed: a pure count; it publishes nothing and `get` needs no ordering between cells.
        cell.fetch_add(n, Ordering::Relaxed);
    }

    /// The current total: every `add` that finished before this call, plus possibly racing ones.
    pub fn get(&self) -> u64 {
        self.cells
            .iter()
            // Relaxed: see `add`.
            .fold(0u64, |acc, c| acc.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counter")
            .field("value", &self.get())
            .finish()
    }
}

/// A signed value that can go up and down (queue depth, in-flight requests, a GPU's free memory).
/// One atomic word: `set` must be a single point of truth, so a gauge is not striped.
pub struct Gauge {
    value: AtomicI64,
}

impl Gauge {
    /// A gauge at zero.
    pub fn new() -> Self {
        Self {
            value: AtomicI64::new(0),
        }
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: i64) {
        // Relaxed: a standalone value; it publishes nothing.
        self.value.store(v, Ordering::Relaxed);
    }

    /// Adds `n` (may be negative; wrapping).
    #[inline]
    pub fn add(&self, n: i64) {
        // Relaxed: a standalone value; it publishes nothing.
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` (wrapping).
    #[inline]
    pub fn sub(&self, n: i64) {
        // Relaxed: a standalone value; it publishes nothing.
        self.value.fetch_sub(n, Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.sub(1);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        // Relaxed: see `set`.
        self.value.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Gauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gauge").field("value", &self.get()).finish()
    }
}

#[cfg(all(test, not(freelane_loom)))]
mod tests {
    use super::*;

    #[test]
    fn counter_sums_every_thread_exactly() {
        const N: u64 = if cfg!(miri) { 50 } else { 100_000 };
        let c = std::sync::Arc::new(Counter::new());
        let ts: Vec<_> = (0..4)
            .map(|_| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..N {
                        c.inc();
                    }
                    c.add(10);
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 4 * (N + 10));
    }

    /// More threads than the largest stripe count (16), so threads share stripes and their
    /// adds race on the same cells: a non-atomic add loses counts here (with 4 threads each had
    /// a stripe of its own).
    #[test]
    fn counter_is_exact_with_more_threads_than_stripes() {
        // Under miri (slow threads) fewer threads: it checks memory safety, not the races.
        const THREADS: u64 = if cfg!(miri) { 8 } else { 40 };
        const N: u64 = if cfg!(miri) { 20 } else { 20_000 };
        let c = std::sync::Arc::new(Counter::new());
        let ts: Vec<_> = (0..THREADS)
            .map(|_| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..N {
                        c.inc();
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(c.get(), THREADS * N);
    }

    #[test]
    fn gauge_goes_up_and_down() {
        let g = Gauge::new();
        g.set(5);
        g.add(3);
        g.sub(10);
        g.inc();
        g.dec();
        assert_eq!(g.get(), -2);
    }
}
