//! `Queue<T>`: unbounded MPMC FIFO after Ramalhete and Correia's FAAArrayQueue.
//!
//! See the crate docs ("Implementation") for the protocol; every ordering below names its pair.

use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};
use freelane_sync::atomic::{AtomicUsize, Ordering};
use freelane_sync::cell::UnsafeCell;
use freelane_sync::{Backoff, CachePadded};

/// Slots per segment for small items: 1024 normally, 2 under loom so models cross segment
/// boundaries. Large items get fewer slots per segment (see `Segment::LEN`).
pub(crate) const SEGMENT: usize = if freelane_sync::LOOM { 2 } else { 1024 };

/// Largest segment payload we aim for with large items (bytes of slots).
const SEGMENT_BYTES: usize = 64 * 1024;

/// How long a consumer that claimed a slot whose producer has claimed but not yet written it
/// waits (in `Backoff::spin` steps) before poisoning the slot. Poisoning is always safe; waiting a
/// little avoids forcing the producer to retry on the next index under hand-off.
const CONSUMER_PATIENCE: u32 = if freelane_sync::LOOM { 1 } else { 8 };

/// Slot states. A slot goes `EMPTY -> WRITTEN -> TAKEN` (normal hand-off: the consumer that
/// finds it `WRITTEN` marks it with a plain store, or with its swap if it had to wait for the
/// producer) or `EMPTY -> TAKEN` (poisoned by a consumer that arrived first; the producer then
/// retries elsewhere).
const EMPTY: usize = 0;
const WRITTEN: usize = 1;
const TAKEN: usize = 2;

/// Live segments of every `Queue` in the process (allocated and not yet freed), for tests that
/// check memory stays bounded. A plain std atomic touched once per `SEGMENT` items.
static LIVE_SEGMENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Number of queue segments currently allocated in this process (all queues together), including
/// segments that are unlinked but whose reclamation the epoch collector has not run yet.
///
/// A diagnostic for tests and monitoring: while items stream through a queue, this stays bounded.
pub fn live_segments() -> usize {
    // Relaxed: a statistic; nothing is published through it.
    LIVE_SEGMENTS.load(std::sync::atomic::Ordering::Relaxed)
}

struct Slot<T> {
    state: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// The consumers' cache line of a segment.
struct DeqSide {
    /// Next index a consumer claims (may run past `SEGMENT`).
    deq: AtomicUsize,
    /// A value of `enq` that a consumer read earlier (`enq` only grows). While `deq` is below
    /// it, the empty check (`deq >= enq`) would not report empty either, so `pop` skips reading
    /// `enq`, whose line the producers keep writing: without this every pop took a cache miss
    /// on it and made the next producer's fetch-and-add miss as well.
    enq_seen: AtomicUsize,
}

struct Segment<T> {
    /// Consumer index and its empty-check cache.
    deq: CachePadded<DeqSide>,
    /// Next index a producer claims (may run past `SEGMENT`).
    enq: CachePadded<AtomicUsize>,
    next: CachePadded<Atomic<Segment<T>>>,
    /// Position in the chain (the first segment is 0, each linked one is its predecessor's
    /// plus one), so that `len` needs only the head and tail segments.
    id: usize,
    slots: Box<[Slot<T>]>,
}

impl<T> Segment<T> {
    /// Slots in a segment of `T`s: `SEGMENT`, or fewer (at least 32) when that would exceed
    /// `SEGMENT_BYTES`, so that retired segments awaiting reclamation stay small.
    const LEN: usize = {
        let slot = core::mem::size_of::<Slot<T>>();
        if freelane_sync::LOOM || slot * SEGMENT <= SEGMENT_BYTES {
            SEGMENT
        } else if SEGMENT_BYTES / slot > 32 {
            SEGMENT_BYTES / slot
        } else {
            32
        }
    };

    /// A fresh segment numbered `id`; with `first`, slot 0 already holds it (written,
    /// `enq == 1`).
    fn new(id: usize, first: Option<T>) -> Self {
        let slots: Box<[Slot<T>]> = (0..Self::LEN)
            .map(|_| Slot {
                state: AtomicUsize::new(EMPTY),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        let enq = match first {
            Some(v) => {
                // SAFETY: the segment is not shared yet; this is the only access to the slot.
                slots[0].value.with_mut(|p| unsafe { (*p).write(v) });
                // Relaxed: the segment is published later by a Release CAS on `next`/`head`.
                slots[0].state.store(WRITTEN, Ordering::Relaxed);
                1
            }
            None => 0,
        };
        // Relaxed: a statistic; nothing is published through it.
        LIVE_SEGMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            deq: CachePadded::new(DeqSide {
                deq: AtomicUsize::new(0),
                enq_seen: AtomicUsize::new(enq),
            }),
            enq: CachePadded::new(AtomicUsize::new(enq)),
            next: CachePadded::new(Atomic::null()),
            id,
            slots,
        }
    }

    /// Takes back the value a failed segment install put in slot 0.
    fn take_first(self) -> T {
        // SAFETY: the segment was never shared (its install CAS failed) and slot 0 was written
        // by `new(Some(..))`; reading it out moves the value back to the caller exactly once
        // (a `Segment` never drops slot values itself).
        self.slots[0]
            .value
            .with_mut(|p| unsafe { (*p).assume_init_read() })
    }
}

impl<T> Drop for Segment<T> {
    fn drop(&mut self) {
        // Values are not dropped here: `Queue::drop` drops the WRITTEN slots at or past `deq`.
        // Relaxed: a statistic; nothing is published through it.
        LIVE_SEGMENTS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Unbounded multi-producer multi-consumer FIFO queue.
///
/// Lock-free; one fetch-and-add plus one CAS (push) or a load and a plain store (pop) per
/// operation in the common case; values live inline in segments of 1024 slots (fewer for large
/// values; no allocation per item); unlinked segments are reclaimed with crossbeam-epoch. See the [crate docs](crate) for
/// the guarantees and protocol.
///
/// ```
/// let q = freelane_queue::Queue::new();
/// q.push(1);
/// q.push(2);
/// assert_eq!(q.pop(), Some(1));
/// assert_eq!(q.len(), 1);
/// ```
pub struct Queue<T> {
    head: CachePadded<Atomic<Segment<T>>>,
    tail: CachePadded<Atomic<Segment<T>>>,
    _marker: PhantomData<T>,
}

// SAFETY: values of type `T` are moved between threads (push on one, pop on another), hence
// `T: Send`; the queue never hands out `&T`, so `T: Sync` is not needed.
unsafe impl<T: Send> Send for Queue<T> {}
// SAFETY: as above; all shared state is atomics, or slot cells whose access is ordered by the
// slot state protocol.
unsafe impl<T: Send> Sync for Queue<T> {}

impl<T> Queue<T> {
    /// An empty queue (allocates its first segment).
    pub fn new() -> Self {
        let first = Owned::new(Segment::new(0, None));
        // SAFETY: no other thread can see the queue yet; converting without a pin is fine
        // because nothing can reclaim the segment before the queue is shared.
        let first = first.into_shared(unsafe { epoch::unprotected() });
        Self {
            head: CachePadded::new(Atomic::from(first)),
            tail: CachePadded::new(Atomic::from(first)),
            _marker: PhantomData,
        }
    }

    /// Appends `value` at the tail. Never blocks; allocates one segment per `SEGMENT` pushes.
    pub fn push(&self, value: T) {
        let guard = &epoch::pin();
        let mut value = value;
        loop {
            // Acquire: pairs with the Release CAS that installed this segment as tail, so its
            // initialisation (slots, indices) is visible.
            let tail = self.tail.load(Ordering::Acquire, guard);
            // SAFETY: tail is never null, and the segment is not freed while we are pinned: it
            // is only retired after head has moved past it, which requires tail to have moved
            // past it first (see `advance_head`), and retirement happens after we loaded it.
            let seg = unsafe { tail.deref() };
            // SeqCst: the index FAAs and the empty check's loads form one total order, which the
            // linearizability argument of `pop`'s empty pre-check uses (no cost over AcqRel on
            // x86: a locked RMW either way).
            let idx = seg.enq.fetch_add(1, Ordering::SeqCst);
            if idx < Segment::<T>::LEN {
                let slot = &seg.slots[idx];
                // SAFETY: index `idx` was claimed by our FAA, so no other producer writes this
                // cell; a consumer reads it only after seeing WRITTEN, which we have not set yet.
                slot.value.with_mut(|p| unsafe { (*p).write(value) });
                // Release (success): publishes the value to the consumer's Acquire swap in `pop`.
                // Relaxed (failure): we only learn that a consumer poisoned the slot; it never
                // touched the cell, and we read back our own write below.
                match slot.state.compare_exchange(
                    EMPTY,
                    WRITTEN,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return,
                    Err(_) => {
                        // SAFETY: the slot is TAKEN (poisoned) without having been read, so the
                        // value we wrote is still there and only we know it: move it back out.
                        value = slot.value.with_mut(|p| unsafe { (*p).assume_init_read() });
                        continue;
                    }
                }
            }
            // This segment is full: link a new one (holding our value) or help the one there.
            // Acquire: pairs with the Release CAS that linked `next`, making it initialised.
            let next = seg.next.load(Ordering::Acquire, guard);
            if next.is_null() {
                let new = Owned::new(Segment::new(seg.id.wrapping_add(1), Some(value)));
                // SeqCst (success): Release publishes the new segment (and our value in slot 0)
                // to the Acquire loads of `next` and `tail`; SeqCst also puts this push's
                // linearization point in the total order with `pop`'s SeqCst loads of `next`
                // that decide "empty" (free on x86: a locked CAS either way). Acquire (failure):
                // makes the competitor's segment initialised before we help move tail onto it.
                match seg.next.compare_exchange(
                    Shared::null(),
                    new,
                    Ordering::SeqCst,
                    Ordering::Acquire,
                    guard,
                ) {
                    Ok(new) => {
                        // Release: publishes the segment to producers' Acquire load of `tail`.
                        // Failure means someone else already moved tail on (to `new`).
                        let _ = self.tail.compare_exchange(
                            tail,
                            new,
                            Ordering::Release,
                            Ordering::Relaxed,
                            guard,
                        );
                        return;
                    }
                    Err(e) => {
                        // `e.new` was never shared: take our value back out of it.
                        value = e.new.into_box().take_first();
                        // Release: as above, helping a lagging tail forward.
                        let _ = self.tail.compare_exchange(
                            tail,
                            e.current,
                            Ordering::Release,
                            Ordering::Relaxed,
                            guard,
                        );
                    }
                }
            } else {
                // Release: as above, helping a lagging tail forward.
                let _ = self.tail.compare_exchange(
                    tail,
                    next,
                    Ordering::Release,
                    Ordering::Relaxed,
                    guard,
                );
            }
        }
    }

    /// Removes the value at the head, or `None` when the queue is empty. Never blocks.
    pub fn pop(&self) -> Option<T> {
        let guard = &epoch::pin();
        loop {
            // Acquire: pairs with the Release CAS in `advance_head`, making the segment's
            // initialisation visible.
            let head = self.head.load(Ordering::Acquire, guard);
            // SAFETY: head is never null and is only retired after it stops being head, after
            // we loaded it; we stay pinned while using it.
            let seg = unsafe { head.deref() };
            // Empty pre-check, so that pops on an empty queue do not burn slots.
            // SeqCst loads: in the same total order as the index FAAs (see `push`).
            let deq = seg.deq.deq.load(Ordering::SeqCst);
            // Relaxed: `enq_seen` only lets us skip the check below (it never makes us report
            // empty); any value stored there was read from `enq`, which only grows.
            if deq >= seg.deq.enq_seen.load(Ordering::Relaxed) {
                // SeqCst: as above.
                let enq = seg.enq.load(Ordering::SeqCst);
                if deq >= enq && seg.next.load(Ordering::SeqCst, guard).is_null() {
                    return None;
                }
                // Relaxed: a hint for later pops (see `DeqSide`); a racing store of an older
                // value only makes some pop read `enq` again.
                seg.deq.enq_seen.store(enq, Ordering::Relaxed);
            }
            // SeqCst: see `push`.
            let idx = seg.deq.deq.fetch_add(1, Ordering::SeqCst);
            if idx < Segment::<T>::LEN {
                let slot = &seg.slots[idx];
                // Fast path: already written. Index `idx` is ours alone (our FAA claimed it) and
                // its producer never touches the slot after publishing, so no RMW is needed.
                // Acquire: pairs with the producer's Release CAS to WRITTEN, so the value write
                // happens-before our read.
                if slot.state.load(Ordering::Acquire) == WRITTEN {
                    // Relaxed: nobody reads this state concurrently any more (`Drop` reads it
                    // under `&mut`). The plain store still matters for speed: it takes the slot's
                    // cache line exclusive like the swap did; with the load alone, 1P1C hand-off
                    // measured 0.3-0.4x SegQueue instead of 1.0-1.4x.
                    slot.state.store(TAKEN, Ordering::Relaxed);
                    // SAFETY: WRITTEN, and `idx` was claimed by our FAA, so we are the only
                    // reader of this initialised value and nobody writes the cell again.
                    return Some(slot.value.with(|p| unsafe { (*p).assume_init_read() }));
                }
                // A producer has claimed this index but not written it yet: wait a little
                // rather than poisoning it (which would send the producer to the next index).
                // Relaxed: only a hint; the swap below synchronizes.
                if seg.enq.load(Ordering::Relaxed) > idx {
                    let mut backoff = Backoff::new();
                    for _ in 0..CONSUMER_PATIENCE {
                        backoff.spin();
                        // Relaxed: only a hint; the swap below is what synchronizes.
                        if slot.state.load(Ordering::Relaxed) != EMPTY {
                            break;
                        }
                    }
                }
                // Acquire: pairs with the producer's Release CAS to WRITTEN, so the value write
                // happens-before our read. Swapping in TAKEN poisons the slot if the producer
                // has still not written it; its CAS then fails and it retries elsewhere. (No
                // Release needed: slots are never reused.)
                if slot.state.swap(TAKEN, Ordering::Acquire) == WRITTEN {
                    // SAFETY: we saw WRITTEN and replaced it with TAKEN, so we are the only
                    // reader of this initialised value and nobody writes the cell again.
                    return Some(slot.value.with(|p| unsafe { (*p).assume_init_read() }));
                }
                // Poisoned an unwritten slot: its producer retries elsewhere. Try again.
                continue;
            }
            // This segment is used up: move head to the next one, or report empty.
            // SeqCst: pairs (as an acquire) with the CAS that linked `next`, and decides "empty"
            // in the total order with that CAS and the index claims (see the install CAS in
            // `push`); a plain load on x86.
            let next = seg.next.load(Ordering::SeqCst, guard);
            if next.is_null() {
                return None;
            }
            self.advance_head(head, next, guard);
        }
    }

    /// Moves head from the used-up segment `head` to `next` and retires `head`.
    fn advance_head<'g>(
        &self,
        head: Shared<'g, Segment<T>>,
        next: Shared<'g, Segment<T>>,
        guard: &'g Guard,
    ) {
        // Tail must never point to a retired segment: move it on first if it lags at `head`.
        // Acquire (load): pairs with tail's Release CASes; Release (CAS): publishes `next`
        // (already initialised, we read it with Acquire) to producers' Acquire load of tail.
        if self.tail.load(Ordering::Acquire, guard) == head {
            let _ =
                self.tail
                    .compare_exchange(head, next, Ordering::Release, Ordering::Relaxed, guard);
        }
        // Release: publishes `next` to the Acquire load of head in `pop`.
        if self
            .head
            .compare_exchange(head, next, Ordering::Release, Ordering::Relaxed, guard)
            .is_ok()
        {
            // SAFETY: `head` is now unreachable from the queue (head and tail are past it and
            // links only point forward), so no thread that pins from now on can load it; threads
            // pinned now are covered by the epoch. Its remaining consumers (claimed indices)
            // are pinned. Exactly one CAS wins, so it is retired once.
            unsafe { guard.defer_destroy(head) };
            // Hand the retired segment to the global collector now rather than when this
            // thread's local bag fills up (64 entries), so garbage stays small. Once per segment.
            guard.flush();
        }
    }

    /// Number of items: exact when no operation is in progress, otherwise an estimate.
    ///
    /// Constant time: it reads the head and tail segments only. Every segment strictly between
    /// them has all `LEN` indices claimed by producers and none by consumers (consumers claim
    /// only in the head segment), so it holds `LEN` items; an index a consumer poisoned was
    /// claimed on both sides and cancels out, as in the per-segment count.
    pub fn len(&self) -> usize {
        self.len_with(|| {})
    }

    /// `len`, running `between` between the producers' and the consumers' reads (tests use it
    /// to stand for a stall there).
    #[inline]
    fn len_with(&self, between: impl FnOnce()) -> usize {
        let len = Segment::<T>::LEN;
        let guard = &epoch::pin();
        // The producers' side first, then the consumers': a thread stalled between the reads
        // can then only under-count (pops that happened meanwhile are subtracted, pushes are
        // not added). Read the other way round, a stale head with a fresh tail counted every
        // segment consumed in between.
        // Acquire: pairs with the Release CASes that install a tail, making the segment's
        // initialisation visible.
        let tail = self.tail.load(Ordering::Acquire, guard);
        // SAFETY: tail is never null; it is not freed while we are pinned (as in `push`).
        let t = unsafe { tail.deref() };
        // SeqCst: as in `pop`'s empty check.
        let enq = t.enq.load(Ordering::SeqCst).min(len);
        between();
        // Acquire: pairs with the Release CAS in `advance_head`, as in `pop`.
        let head = self.head.load(Ordering::Acquire, guard);
        // SAFETY: head is never null; it is not freed while we are pinned (as in `pop`).
        let h = unsafe { head.deref() };
        // SeqCst: as above.
        let deq = h.deq.deq.load(Ordering::SeqCst).min(len);
        // Head has moved past the tail we read: everything we could count was popped.
        if h.id > t.id {
            return 0;
        }
        // Segment ids never wrap in practice (2^64 segments); `t.id - h.id` segments start at
        // head, each of the ones before tail full.
        ((t.id - h.id) * len + enq).saturating_sub(deq)
    }

    /// `true` when [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        crate::drop_values(self, |q| {
            // SAFETY: `&mut self`: no other thread can access the queue; segments already
            // retired are owned by the epoch collector and are not reachable from head.
            let guard = unsafe { epoch::unprotected() };
            loop {
                // Relaxed: exclusive access; the thread handing us `&mut self` synchronized.
                let cur = q.head.load(Ordering::Relaxed, guard);
                if cur.is_null() {
                    return;
                }
                // SAFETY: exclusive access (see above); head's segment is linked and was never
                // retired, so it is live until we free it below.
                let seg = unsafe { cur.deref() };
                // Slots below `deq` were claimed by consumers, each of which either took the
                // value or poisoned the slot; every operation has finished (we hold
                // `&mut self`). Only slots at or past `deq` can hold live values (checking the
                // index as well as the state keeps this independent of how a consumer marks a
                // taken slot).
                // Relaxed: exclusive access, as above.
                let deq = seg.deq.deq.load(Ordering::Relaxed).min(seg.slots.len());
                for slot in &seg.slots[deq..] {
                    // Relaxed: exclusive access, as above.
                    if slot.state.load(Ordering::Relaxed) == WRITTEN {
                        // Relaxed: as above. Marked before the drop, so a rerun after a
                        // panicking drop skips this slot.
                        slot.state.store(TAKEN, Ordering::Relaxed);
                        // SAFETY: WRITTEN and not claimed by any consumer: initialised, and
                        // now marked TAKEN, so dropped exactly once, here.
                        slot.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
                    }
                }
                // Relaxed: exclusive access, as above.
                let next = seg.next.load(Ordering::Relaxed, guard);
                // Relaxed: as above. Head moves on before the segment is freed, so a rerun
                // never reaches it.
                q.head.store(next, Ordering::Relaxed);
                // SAFETY: exclusive access; the segment is unlinked from head (and tail is
                // never read again), never retired, and its values are dropped: freed once.
                drop(unsafe { cur.into_owned() });
            }
        });
    }
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(freelane_loom)))]
mod tests {
    use super::*;

    #[test]
    fn queue_empty_pop_does_not_burn_slots() {
        let q = Queue::<u32>::new();
        // More empty pops than a segment has slots.
        for _ in 0..if cfg!(miri) { 1100 } else { 5000 } {
            assert_eq!(q.pop(), None);
        }
        let guard = &epoch::pin();
        let head = q.head.load(Ordering::Acquire, guard);
        // SAFETY: pinned; head is never null.
        let seg = unsafe { head.deref() };
        assert_eq!(
            seg.deq.deq.load(Ordering::SeqCst),
            0,
            "empty pops claimed indices"
        );
        assert!(seg.next.load(Ordering::Acquire, guard).is_null());
        q.push(7);
        assert_eq!(seg.enq.load(Ordering::SeqCst), 1);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Some(7));
        // Empty again after a pop that refreshed `enq_seen`: the cached bound must not let
        // empty pops claim indices either.
        for _ in 0..100 {
            assert_eq!(q.pop(), None);
        }
        assert_eq!(
            seg.deq.deq.load(Ordering::SeqCst),
            1,
            "empty pops claimed indices"
        );
        for v in 0..10 {
            q.push(v);
        }
        assert_eq!(q.pop(), Some(0));
        for v in 1..10 {
            assert_eq!(q.pop(), Some(v));
            assert_eq!(seg.deq.deq.load(Ordering::SeqCst), v as usize + 2);
        }
        assert_eq!(q.pop(), None);
        assert_eq!(seg.deq.deq.load(Ordering::SeqCst), 11);
    }

    /// A `len` that stalls between its reads while items stream through (never more than one
    /// in the queue) must not count the segments consumed meanwhile (with head read before
    /// tail it returned 5121 here).
    #[test]
    fn len_stalled_while_items_stream_through_never_overcounts() {
        let q = Queue::<u32>::new();
        q.push(0);
        let rounds = if cfg!(miri) { 2 } else { 5 } * Segment::<u32>::LEN;
        let n = q.len_with(|| {
            for v in 0..rounds as u32 {
                q.push(v);
                q.pop().unwrap();
            }
        });
        assert!(n <= 1, "len counted {n} items; the queue held at most 2");
        assert_eq!(q.len(), 1);
    }
}
