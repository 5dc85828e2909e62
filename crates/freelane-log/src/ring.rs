//! A bounded multi-producer, single-consumer ring of reusable slots (Vyukov's bounded queue with
//! one consumer), closable so a shutdown knows the last position it must drain.
//!
//! Slots are never empty: each holds a `T` (a record with its own buffer) that is reused lap
//! after lap, so a producer writes straight into the slot's buffer and steady-state logging
//! allocates nothing. A slot's `seq` says whose turn it is:
//! - `seq == pos`: free for the producer that claims position `pos`;
//! - `seq == pos + 1`: filled, ready for the consumer at position `pos`;
//! - `seq == pos + capacity`: consumed, free for position `pos + capacity` (the next lap).

use freelane_sync::atomic::{AtomicUsize, Ordering};
use freelane_sync::cell::UnsafeCell;
use freelane_sync::CachePadded;

/// Set in `tail` once the ring is closed: no position can be claimed after it.
pub(crate) const CLOSED: usize = 1 << (usize::BITS - 1);

struct Slot<T> {
    seq: AtomicUsize,
    value: UnsafeCell<T>,
}

/// Why a push did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Every slot is filled and not yet consumed.
    Full,
    /// The ring was closed (shutdown).
    Closed,
}

pub(crate) struct Ring<T> {
    slots: Box<[Slot<T>]>,
    mask: usize,
    /// Next position to claim, with [`CLOSED`] set once closed. Producers CAS it.
    tail: CachePadded<AtomicUsize>,
    /// Next position to consume. Written only by the single consumer; read by others for stats.
    head: CachePadded<AtomicUsize>,
}

// SAFETY: slot values are handed between threads only through the `seq` protocol (a slot's value
// is accessed by exactly one thread at a time: the producer that claimed it, then the consumer),
// so sharing the ring is sound when `T` may be sent between threads.
unsafe impl<T: Send> Sync for Ring<T> {}
// SAFETY: as above; the ring owns its `T`s.
unsafe impl<T: Send> Send for Ring<T> {}

/// Stores `value` into `seq` when dropped (normally or during a panic in the fill).
struct Publish<'a> {
    seq: &'a AtomicUsize,
    value: usize,
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        // Release: publishes the filled value to the consumer's Acquire load in `pop_with`.
        self.seq.store(self.value, Ordering::Release);
    }
}

impl<T: Default> Ring<T> {
    /// A ring of `capacity` slots; `capacity` must be a power of two `>= 2` (checked by callers).
    pub(crate) fn new(capacity: usize) -> Self {
        debug_assert!(capacity.is_power_of_two() && capacity >= 2);
        Self {
            slots: (0..capacity)
                .map(|i| Slot {
                    seq: AtomicUsize::new(i),
                    value: UnsafeCell::new(T::default()),
                })
                .collect(),
            mask: capacity - 1,
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
        }
    }
}

impl<T> Ring<T> {
    pub(crate) fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Claims the next position and fills its slot with `fill`. On failure `fill` is returned
    /// unused, so the caller can wait and retry or write synchronously. Lock-free: a failed CAS
    /// means another producer claimed a position.
    pub(crate) fn try_push<F: FnOnce(&mut T)>(&self, fill: F) -> Result<usize, (PushError, F)> {
        // Relaxed: the position is only a ticket; the slot's contents are ordered by `seq`.
        let mut pos = self.tail.load(Ordering::Relaxed);
        let mut backoff = freelane_sync::Backoff::new();
        loop {
            if pos & CLOSED != 0 {
                return Err((PushError::Closed, fill));
            }
            let slot = &self.slots[pos & self.mask];
            // Acquire: pairs with the consumer's Release store of `pos` (as `old + capacity`) in
            // `pop_with`, so its use of the slot's previous value happens before our write.
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                // Relaxed: claiming is ordered by the modification order of `tail` alone (unique
                // tickets; a close with fetch_or makes every later CAS fail); data goes via `seq`.
                match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // Publishes the slot when dropped: after `fill` returns, and also if it
                        // panics, so a claimed position is always published and the consumer
                        // never waits forever on it (the caller marks a half-filled value).
                        let _publish = Publish {
                            seq: &slot.seq,
                            value: pos.wrapping_add(1),
                        };
                        // SAFETY: we own position `pos`: `seq == pos` said the slot is free for
                        // it and our CAS made us its only claimant; the consumer will not touch
                        // the slot until `_publish` stores `pos + 1`, after this access ends.
                        slot.value.with_mut(|p| fill(unsafe { &mut *p }));
                        return Ok(pos);
                    }
                    Err(current) => {
                        pos = current;
                        backoff.spin();
                    }
                }
            } else if diff < 0 {
                // The slot still holds the value from one lap ago: the ring is full.
                return Err((PushError::Full, fill));
            } else {
                // Another producer claimed `pos` already; catch up. (The backoff also matters
                // under loom: a thread only stops seeing a stale `tail` after it yields.)
                backoff.spin();
                // Relaxed: as above.
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Whether a push would find the ring full right now (and not closed). A peek with no side
    /// effect, for a waiting producer's re-check before it sleeps (see `RoomWait` in the logger):
    /// the caller registers as a waiter, issues a `SeqCst` fence, then calls this; the consumer
    /// frees slots, issues a `SeqCst` fence, then looks for waiters. If this reads "full" at
    /// position `pos`, the consumer's free of position `pos - capacity` was not before the
    /// caller's fence, so the consumer's fence after that free is later and sees the waiter.
    pub(crate) fn is_full(&self) -> bool {
        // Relaxed: ordered after the caller's registration by its SeqCst fence (see above).
        let pos = self.tail.load(Ordering::Relaxed);
        if pos & CLOSED != 0 {
            return false;
        }
        // Relaxed: as above; no slot data is read on the strength of this load.
        let seq = self.slots[pos & self.mask].seq.load(Ordering::Relaxed);
        (seq.wrapping_sub(pos) as isize) < 0
    }

    /// Consumes the next value with `f` if it is ready. Returns `false` when the ring is empty or
    /// the next position's producer has not finished filling it.
    ///
    /// # Safety
    /// Only one thread may call `pop_with` at a time (the single consumer).
    pub(crate) unsafe fn pop_with(&self, f: impl FnOnce(&mut T)) -> bool {
        // Relaxed: `head` is written only by the consumer, i.e. by us.
        let head = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[head & self.mask];
        // Acquire: pairs with the producer's Release store of `head + 1` in `try_push`.
        let seq = slot.seq.load(Ordering::Acquire);
        if seq != head.wrapping_add(1) {
            return false;
        }
        // SAFETY: `seq == head + 1` means the producer finished and published the value; only
        // the single consumer (the caller's contract) reads it until we release it below.
        slot.value.with_mut(|p| f(unsafe { &mut *p }));
        // Release: hands the slot to the producer of the next lap (its Acquire load of `seq`),
        // ordering our use of the value before its overwrite.
        slot.seq
            .store(head.wrapping_add(self.capacity()), Ordering::Release);
        // Release: publishes progress to `depth`/`consumed` readers (stats, flush waiters).
        self.head.store(head.wrapping_add(1), Ordering::Release);
        true
    }

    /// Closes the ring: no push can claim a position after this. Returns the end position: every
    /// position below it was claimed and will be published by its producer.
    pub(crate) fn close(&self) -> usize {
        // AcqRel: totally ordered with the producers' CASes on `tail` (any RMW would do); the
        // returned value is the exact set of claimed positions.
        self.tail.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED
    }

    /// Positions claimed so far (events accepted into the ring).
    pub(crate) fn claimed(&self) -> usize {
        // Acquire: pairs with nothing in particular; a fresh-enough reading for stats and flush
        // targets (a flush target only needs positions claimed before the flush call).
        self.tail.load(Ordering::Acquire) & !CLOSED
    }

    /// Positions claimed so far and whether the ring is closed, from one load of `tail` (once
    /// closed, the claimed count is final; reading both from one load is what makes "closed and
    /// everything claimed is consumed" a safe exit test).
    pub(crate) fn claimed_and_closed(&self) -> (usize, bool) {
        // Acquire: see `claimed`.
        let t = self.tail.load(Ordering::Acquire);
        (t & !CLOSED, t & CLOSED != 0)
    }

    /// Positions consumed so far.
    pub(crate) fn consumed(&self) -> usize {
        // Acquire: pairs with the Release store in `pop_with`.
        self.head.load(Ordering::Acquire)
    }
}
