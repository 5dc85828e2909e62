//! The striped log-linear histogram.

use std::fmt;

use freelane_sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use freelane_sync::CachePadded;

use crate::shard;

/// log2 of the number of sub-buckets per power of two: 128 sub-buckets, so a bucket is at most
/// 1/128 of its lower bound wide (0.78%), and the midpoint is within 0.39% of any value in it.
/// Under loom: 2 sub-buckets, so models reach several buckets with tiny values.
const SUB_BITS: u32 = if freelane_sync::LOOM { 1 } else { 7 };
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// The highest power of two with its own buckets: values `>= 2^(MAX_MSB + 1)` (2^44 ns is about
/// 4.9 hours) are counted in the last bucket (their count, sum, min and max stay exact).
const MAX_MSB: u32 = if freelane_sync::LOOM { 3 } else { 43 };
/// Number of buckets: values below `SUB` get one bucket each, then `SUB` per power of two.
pub(crate) const BUCKETS: usize = ((MAX_MSB - SUB_BITS + 2) as u64 * SUB) as usize;

/// The bucket index of `value`.
#[inline]
pub(crate) fn bucket_index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    if msb > MAX_MSB {
        return BUCKETS - 1;
    }
    let shift = msb - SUB_BITS;
    ((u64::from(shift) + 1) * SUB + ((value >> shift) - SUB)) as usize
}

/// The smallest and largest value that land in bucket `index` (the last bucket also holds every
/// larger value; its `high` here is the end of its regular range).
#[inline]
pub(crate) fn bucket_bounds(index: usize) -> (u64, u64) {
    let i = index as u64;
    let group = i / SUB;
    if group == 0 {
        return (i, i);
    }
    let sub = i % SUB;
    let shift = group - 1;
    let low = (SUB + sub) << shift;
    (low, low + ((1u64 << shift) - 1))
}

/// One stripe: a full set of bucket counters plus the sum, min and max of what it recorded.
struct Shard {
    counts: Box<[AtomicU64]>,
    sum: CachePadded<AtomicU64>,
    min: AtomicU64,
    max: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: CachePadded::new(AtomicU64::new(0)),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }
}

/// A lock-free latency histogram: log-linear buckets (about 0.8% wide) from 0 to about 4.9 hours
/// in nanoseconds, striped over cache-padded shards.
///
/// [`record`](Histogram::record) is wait-free after a thread's first record into a histogram
/// (which may allocate its stripe): one relaxed `fetch_add` on a bucket, one on the sum, and a
/// relaxed `fetch_min`/`fetch_max` only when the value is a new extreme for the stripe.
/// [`snapshot`](Histogram::snapshot) merges the stripes at any time from any thread, without the
/// recorders' cooperation. See the crate docs for the guarantees.
pub struct Histogram {
    /// Stripes, allocated on first use (null until then). Each slot is padded so two threads
    /// installing neighbouring stripes do not share a line.
    shards: Box<[CachePadded<AtomicPtr<Shard>>]>,
}

impl Histogram {
    /// An empty histogram. Allocates only the stripe table; each stripe (about 39 KiB) is
    /// allocated by the first thread that records into it.
    pub fn new() -> Self {
        let n = shard::stripes(4, 64);
        Self {
            shards: (0..n)
                .map(|_| CachePadded::new(AtomicPtr::new(std::ptr::null_mut())))
                .collect(),
        }
    }

    /// Records one value (for latencies: nanoseconds). Never blocks and never takes a lock.
    #[inline]
    pub fn record(&self, value: u64) {
        let shard = self.my_shard();
        // Relaxed (sum, min, max): plain counters. They are updated before the bucket so that a
        // snapshot that counts this value also sees them (see the bucket's Release below).
        shard.sum.fetch_add(value, Ordering::Relaxed);
        if value < shard.min.load(Ordering::Relaxed) {
            shard.min.fetch_min(value, Ordering::Relaxed);
        }
        if value > shard.max.load(Ordering::Relaxed) {
            shard.max.fetch_max(value, Ordering::Relaxed);
        }
        // Release: pairs with the snapshot's Acquire load of the bucket, so a snapshot that
        // counts this value also sees our sum/min/max updates above (min <= value <= max for
        // every counted value; a snapshot racing the first record used to report count 1 with
        // min u64::MAX and max 0). A plain locked add on x86 either way.
        shard.counts[bucket_index(value)].fetch_add(1, Ordering::Release);
    }

    /// Records a duration as whole nanoseconds (saturating at `u64::MAX`).
    #[inline]
    pub fn record_duration(&self, d: std::time::Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The calling thread's stripe, allocated on first use.
    #[inline]
    fn my_shard(&self) -> &Shard {
        let slot = &self.shards[shard::thread_hint() & (self.shards.len() - 1)];
        // Acquire: pairs with the AcqRel compare_exchange in `install`, so the stripe's
        // initialized counters are visible before we use them.
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a non-null slot points at a `Shard` installed by `install` that stays
            // allocated until `self` is dropped (only `Drop` frees it, with `&mut self`).
            return unsafe { &*p };
        }
        self.install(slot)
    }

    #[cold]
    fn install<'a>(&'a self, slot: &'a AtomicPtr<Shard>) -> &'a Shard {
        let fresh = Box::into_raw(Box::new(Shard::new()));
        // AcqRel: Release publishes the fresh stripe's initialization to every Acquire load of the
        // slot; Acquire (on failure) makes the winner's stripe visible to us.
        match slot.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: we just installed `fresh`; it lives until `self` is dropped.
            Ok(_) => unsafe { &*fresh },
            Err(winner) => {
                // SAFETY: `fresh` came from Box::into_raw above and was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: `winner` is a non-null stripe installed by another thread; it lives
                // until `self` is dropped.
                unsafe { &*winner }
            }
        }
    }

    /// Merges every stripe into a [`Snapshot`]. Lock-free, callable from any thread at any time.
    ///
    /// With recorders running concurrently the snapshot contains every record that finished
    /// before `snapshot` was called and possibly parts of ones racing with it: bucket counts never
    /// exceed what was recorded, and `count` is the sum of the buckets, so quantiles are always
    /// consistent with `count`; `sum`, `min` and `max` include every counted value (a record
    /// updates them before its bucket) and may also include racing records not yet counted. When
    /// recorders are quiescent (e.g. joined) the snapshot is exact.
    pub fn snapshot(&self) -> Snapshot {
        let mut counts = vec![0u64; BUCKETS];
        let (mut sum, mut min, mut max) = (0u64, u64::MAX, 0u64);
        for slot in self.shards.iter() {
            // Acquire: pairs with the AcqRel install, so the stripe's counters are initialized.
            let p = slot.load(Ordering::Acquire);
            if p.is_null() {
                continue;
            }
            // SAFETY: installed stripes live until `self` is dropped.
            let s = unsafe { &*p };
            for (acc, c) in counts.iter_mut().zip(s.counts.iter()) {
                // Acquire: pairs with the Release increment in `record`, so the sum/min/max
                // updates of every value counted here are visible to the loads below.
                *acc += c.load(Ordering::Acquire);
            }
            // Relaxed (sum, min, max): ordered after the buckets by their Acquire loads above.
            sum = sum.wrapping_add(s.sum.load(Ordering::Relaxed));
            min = min.min(s.min.load(Ordering::Relaxed));
            max = max.max(s.max.load(Ordering::Relaxed));
        }
        let count = counts.iter().sum();
        if count == 0 {
            min = 0;
        }
        Snapshot {
            counts,
            count,
            sum,
            min,
            max,
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Histogram {
    fn drop(&mut self) {
        for slot in self.shards.iter_mut() {
            // Relaxed: `&mut self` means no other thread can access the slot any more.
            let p = slot.swap(std::ptr::null_mut(), Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: `p` came from Box::into_raw in `install` and is freed exactly once,
                // here, after the slot was nulled.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.snapshot();
        f.debug_struct("Histogram")
            .field("stripes", &self.shards.len())
            .field("count", &s.count)
            .field("min", &s.min)
            .field("max", &s.max)
            .finish()
    }
}

/// A merged, immutable view of a [`Histogram`].
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    counts: Vec<u64>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Snapshot {
    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the recorded values (wrapping on overflow of `u64`).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Smallest recorded value (exact); 0 when empty.
    pub fn min(&self) -> u64 {
        self.min
    }

    /// Largest recorded value (exact); 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Arithmetic mean (exact up to `f64` rounding); 0.0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The `q`-quantile (`q` in 0..=1, clamped; NaN reads as 0) by nearest rank: the value of
    /// rank `max(1, ceil(q * count))` in sorted order, estimated as its bucket's midpoint clamped
    /// to `[min, max]`, so within 0.4% of the exact value (exact below 256) for values below
    /// 2^44; larger values share the last bucket, so there only the clamp to `min`/`max`
    /// bounds the estimate. `q = 0` is `min`,
    /// `q = 1` is `max`; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        if q == 0.0 {
            return self.min;
        }
        if q == 1.0 {
            return self.max;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = bucket_bounds(i);
                let mid = low + (high - low) / 2;
                return mid.clamp(self.min, self.max.max(self.min));
            }
        }
        self.max
    }

    /// How many recorded values are `<= value`, counting whole buckets: a bucket counts when its
    /// largest value is `<= value`. Exact when `value` is a bucket's upper end (every value below
    /// 256 is); otherwise it undercounts by the values sharing `value`'s bucket that are `<= value`.
    pub fn count_le(&self, value: u64) -> u64 {
        let idx = bucket_index(value);
        let (_, high) = bucket_bounds(idx);
        let end = if high <= value && idx != BUCKETS - 1 {
            idx + 1
        } else if idx == BUCKETS - 1 && value == u64::MAX {
            BUCKETS
        } else {
            idx
        };
        self.counts[..end].iter().sum()
    }

    /// The non-empty buckets as `(low, high, count)`, in increasing order (the last bucket's
    /// `high` is the end of its regular range even if larger values were clamped into it).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| {
                let (l, h) = bucket_bounds(i);
                (l, h, c)
            })
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("count", &self.count)
            .field("sum", &self.sum)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(freelane_loom)))]
mod tests {
    use super::*;

    #[test]
    fn bucket_index_and_bounds_agree() {
        let mut prev_high = None;
        for i in 0..BUCKETS {
            let (l, h) = bucket_bounds(i);
            assert!(l <= h);
            if let Some(p) = prev_high {
                assert_eq!(l, p + 1, "buckets are contiguous at {i}");
            }
            prev_high = Some(h);
            assert_eq!(bucket_index(l), i);
            assert_eq!(bucket_index(h), i);
            // Bucket width is at most 1/128 of its lower bound (exact below 256).
            assert!(
                (h - l) as f64 <= l as f64 / 128.0 + 1e-9,
                "bucket {i} too wide"
            );
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_index(1 << 44), BUCKETS - 1);
    }

    #[test]
    fn empty_snapshot_reads_zero() {
        let s = Histogram::new().snapshot();
        assert_eq!(
            (s.count(), s.sum(), s.min(), s.max(), s.quantile(0.5)),
            (0, 0, 0, 0, 0)
        );
        assert_eq!(s.mean(), 0.0);
    }

    #[test]
    fn exact_stats_and_small_values_are_exact() {
        let h = Histogram::new();
        for v in 1..=100u64 {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.sum(), 5050);
        assert_eq!((s.min(), s.max()), (1, 100));
        assert_eq!(s.mean(), 50.5);
        assert_eq!(s.quantile(0.5), 50);
        assert_eq!(s.quantile(0.99), 99);
        assert_eq!(s.quantile(1.0), 100);
        assert_eq!(s.quantile(0.0), 1);
        assert_eq!(s.count_le(10), 10);
    }

    #[test]
    fn huge_values_clamp_into_the_last_bucket_with_exact_max() {
        let h = Histogram::new();
        h.record(u64::MAX);
        h.record(1 << 50);
        let s = h.snapshot();
        assert_eq!(s.count(), 2);
        assert_eq!(s.max(), u64::MAX);
        assert_eq!(s.min(), 1 << 50);
        assert_eq!(s.quantile(1.0), u64::MAX);
        assert!(s.quantile(0.5) >= 1 << 50);
    }

    /// More threads than the largest stripe count (64), so threads share stripes and their
    /// records race on the same cells (with 4 threads each could have a stripe of its own, and
    /// a record that was not atomic would pass).
    #[test]
    fn stripes_from_many_threads_merge_exactly() {
        // Under miri (slow threads) fewer threads: it checks memory safety, not the races.
        const T: u64 = if cfg!(miri) { 8 } else { 80 };
        const N: u64 = if cfg!(miri) { 5 } else { 20_000 };
        let h = std::sync::Arc::new(Histogram::new());
        let threads: Vec<_> = (0..T)
            .map(|_| {
                let h = std::sync::Arc::clone(&h);
                std::thread::spawn(move || {
                    for i in 0..N {
                        // Every thread records the same small values, so threads that share
                        // a stripe also hit the same buckets.
                        h.record(i % 64);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.count(), T * N);
        assert_eq!(s.sum(), T * (0..N).map(|i| i % 64).sum::<u64>());
        assert_eq!((s.min(), s.max()), (0, N.min(64) - 1));
    }
}
