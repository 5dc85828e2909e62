//! One timed multi-thread trial with sampled op latency.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One op in every `SAMPLE_EVERY` is timed (the first of each block); the stop flag is checked
/// once per block.
pub const SAMPLE_EVERY: u64 = 64;

/// The result of one trial.
#[derive(Debug, Clone, Default)]
pub struct Trial {
    /// Ops completed by all threads.
    pub ops: u64,
    /// Wall time from the common start to the last thread's exit.
    pub elapsed: Duration,
    /// Sampled op latencies in nanoseconds (unsorted, every thread's).
    pub samples: Vec<u64>,
}

impl Trial {
    /// Throughput in ops per second (0 for an empty trial).
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }
}

/// Runs `threads` threads for `duration` through [`crate::run_threads`]. Each thread calls
/// `make(thread_index)` once (untimed setup, e.g. a thread-local dispatcher) and then calls the
/// returned op until the stop flag is set, in blocks of [`SAMPLE_EVERY`] ops whose first op is
/// timed.
pub fn drive<M, W>(threads: usize, duration: Duration, make: M) -> Trial
where
    M: Fn(usize) -> W + Send + Sync + 'static,
    W: FnMut(),
{
    let pooled = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&pooled);
    let (ops, elapsed) = crate::run_threads(threads, duration, move |t, stop| {
        let mut op = make(t);
        let mut samples = Vec::with_capacity(4096);
        let mut n = 0u64;
        // Relaxed: the flag carries no data; run_threads joins the threads before reading results.
        while !stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            op();
            samples.push(t0.elapsed().as_nanos() as u64);
            for _ in 1..SAMPLE_EVERY {
                op();
            }
            n += SAMPLE_EVERY;
        }
        drop(op);
        sink.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&samples);
        n
    });
    let samples = std::mem::take(&mut *pooled.lock().unwrap_or_else(|e| e.into_inner()));
    Trial {
        ops,
        elapsed,
        samples,
    }
}

/// A small, fast per-thread pseudo-random source (xorshift64*), for op arguments.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator seeded from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next pseudo-random value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn drive_counts_ops_and_samples_one_in_every_block() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&calls);
        let trial = drive(2, Duration::from_millis(20), move |_| {
            let c = Arc::clone(&c);
            move || {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert_eq!(trial.ops, calls.load(Ordering::Relaxed));
        assert_eq!(trial.ops % SAMPLE_EVERY, 0);
        assert_eq!(trial.samples.len() as u64, trial.ops / SAMPLE_EVERY);
        assert!(trial.rate() > 0.0);
    }
}
