//! Lock-free request queues for multi-GPU serving.
//!
//! - [`Queue<T>`]: unbounded multi-producer multi-consumer FIFO, the per-GPU request lane. Built
//!   on fetch-and-add over fixed-size segments (Ramalhete and Correia's FAAArrayQueue), segments
//!   reclaimed with crossbeam-epoch.
//! - [`BoundedQueue<T>`]: fixed-capacity MPMC FIFO for admission control; [`try_push`] gives
//!   the value back in [`Full`] when the queue is full.
//! - [`RequestTable<V>`]: fixed-capacity table of in-flight requests addressed by generation-
//!   checked [`Ticket`]s, with a cancellation flag per entry.
//!
//! [`try_push`]: BoundedQueue::try_push
//!
//! # Guarantees
//!
//! **`Queue`**
//! - *Linearizable FIFO.* Every `push` and `pop` takes effect at one instant between its call and
//!   its return: the fetch-and-add on the segment's `enq`/`deq` index that claims the slot (and,
//!   for an empty `pop`, the load of `next` in its empty check). In particular values pushed by
//!   one producer are popped in push order by any consumer, and a `pop` that starts after a
//!   `push` returned (happens-after) never reports empty unless that value was already taken.
//! - *Happens-before.* Everything a producer did before `push(v)` happens-before everything the
//!   consumer that pops `v` does after `pop` returns (Release CAS on the slot state, Acquire load
//!   or swap).
//! - *Progress.* `push` and `pop` are lock-free: a thread retries only because another thread
//!   made progress (claimed an index, linked or unlinked a segment). Nothing ever blocks or
//!   parks; a consumer that claims a slot whose producer is mid-write waits at most 8 short spins
//!   and then *poisons* the slot, sending that producer to a later index. `len` and `is_empty` never
//!   retry and take constant time (they read the head and tail segments only: segments are
//!   numbered, and every segment strictly between head and tail is full); `len` is exact when no
//!   operation is in progress.
//! - *Nothing is lost or duplicated.* Each pushed value is popped at most once and, unless it is
//!   still in the queue, exactly once; `Drop` drops every value still in the queue exactly once
//!   (also when one value's `Drop` panics: the rest are still dropped, as std's collections do;
//!   the same holds for `BoundedQueue` and `RequestTable`).
//! - *Memory.* Two allocations (the segment and its slot array) per segment of 1024 slots, no
//!   allocation per item; for values over 56 bytes a segment has fewer slots (at least 32) so
//!   that it stays near 64 KiB. A segment is unlinked once all its slots are consumed and freed
//!   by crossbeam-epoch after every thread pinned at that time has unpinned, so memory stays
//!   bounded while values stream through. Operations pin the epoch once each and never hold a
//!   guard across a blocking wait (the only wait while pinned is `pop`'s bounded spin of a few
//!   backoff steps for a producer that has claimed its slot). [`live_segments`] counts
//!   segments.
//!
//! **`BoundedQueue`**
//! - Linearizable FIFO; never holds more than `capacity` values; `try_push` on a full queue
//!   returns `Err(Full(value))` with the value; `pop` on an empty queue returns `None`.
//! - `try_push` and `pop` never block indefinitely on a full/empty queue, and allocate nothing.
//!   Like crossbeam's `ArrayQueue` (same Vyukov design), a thread whose slot is being written or
//!   read by a preempted peer spins/yields until that peer finishes: progress is lock-free except
//!   for that window (formally *blocking*, as for `ArrayQueue`).
//!
//! **`RequestTable`**
//! - A stale [`Ticket`] (its entry removed) never reaches a later entry of the same slot: every
//!   operation checks the generation in the same atomic word it acts on (until the 32-bit
//!   generation of one slot wraps after 2^32 reuses).
//! - `insert`, `with`, `get`, `cancel`, `is_cancelled`, `contains` are lock-free
//!   (`is_cancelled` and `contains` wait-free). `remove` is lock-free except that it waits for
//!   readers currently inside `with` on the *same* entry to return; so calling `remove` for an
//!   entry from inside `with` on that entry never returns (it waits for its own read).
//! - Exactly one of several concurrent `remove`s of one ticket gets the value; `Drop` drops every
//!   value still in the table exactly once.
//! - The `cancel` that sets an entry's flag (Release) happens-before every `is_cancelled`
//!   (Acquire) that returns `true` for it. A later `cancel` of the already-cancelled entry only
//!   reports it and publishes nothing: with several cancellers, a worker is guaranteed to see
//!   what the first one did before cancelling, not the others.
//!
//! # Implementation
//!
//! **`Queue`** (FAAArrayQueue; the argument is repeated in `docs/ORDERINGS.md`)
//! - *Layout.* A linked list of segments; each holds `deq` and `enq` indices (cache-padded
//!   apart), a `next` pointer and 1024 slots (2 under loom; fewer for values over 56 bytes, see
//!   *Memory*), each slot an atomic state
//!   (`EMPTY`, `WRITTEN`, `TAKEN`) plus an `UnsafeCell<MaybeUninit<T>>`. The queue holds
//!   cache-padded `head` and `tail` segment pointers.
//! - *Push.* Pin; load `tail`; `enq.fetch_add(1)` claims index `i`. If `i < 1024`, write the value
//!   into slot `i` and CAS its state `EMPTY -> WRITTEN` (Release); if a consumer poisoned the slot
//!   (`TAKEN`) first, read the value back and retry. If `i >= 1024` the segment is full: link a new
//!   segment that already holds the value in slot 0 with a CAS on `next` (Release), then swing
//!   `tail` (Release); on a lost race, take the value back and help `tail` forward.
//! - *Pop.* Pin; load `head`; if `deq >= enq` and `next` is null the queue is empty: return `None`
//!   without consuming an index (the *empty pre-check*, so idle consumers do not burn slots).
//!   The consumers' line also caches `enq_seen`, the last `enq` a consumer read (`enq` only
//!   grows): while `deq < enq_seen` the check would not report empty either, so it skips
//!   loading `enq`, whose cache line the producers keep writing (one fewer cross-core miss per
//!   pop, and one fewer for the next producer's fetch-and-add).
//!   Otherwise `deq.fetch_add(1)` claims index `i`. If slot `i` already reads `WRITTEN`
//!   (Acquire load) the value is taken without another RMW (index `i` is this consumer's alone
//!   and its producer is done with the slot) and the slot is marked `TAKEN` with a plain store.
//!   Otherwise, after a short wait for the producer, `swap(TAKEN)` (Acquire) takes the value if
//!   it was `WRITTEN` meanwhile; if it was `EMPTY` the slot is poisoned and the pop retries.
//!   If `i >= 1024`, move `head` to `next` (after moving `tail` off this segment if it lags
//!   there) and retire the old segment with `defer_destroy`, or return `None` if there is no
//!   `next` (a `SeqCst` load, in the same total order as the `SeqCst` CAS that links it).
//! - *Why not SegQueue's design.* crossbeam's `SegQueue` claims a slot by a CAS loop on the
//!   tail/head index (32-slot blocks), so under contention threads fail and retry the CAS and the
//!   index line bounces once per *attempt*. Here a slot is claimed by one fetch-and-add, which
//!   always succeeds: the index line bounces once per *operation*, and the CAS on the slot state
//!   is uncontended except against the one consumer of that slot. The costs are an epoch pin per
//!   operation (crossbeam-epoch: a thread-local counter plus one fence-equivalent) and an index
//!   burned when a consumer overtakes a producer.
//! - *Reclamation.* A segment is retired only by the thread whose CAS moved `head` past it, after
//!   `tail` has been moved past it, so no thread pinning later can reach it; threads pinned
//!   earlier (possibly still reading or writing its slots) are covered by the epoch.
//! - *Orderings.* Slot hand-off: producer's Release CAS to `WRITTEN` / consumer's Acquire load or
//!   swap.
//!   Segment publication: Release CAS on `next`/`tail`/`head` / Acquire loads. Index FAAs and the
//!   empty check's loads are `SeqCst` so the empty decision is linearizable (free on x86).
//!
//! **`BoundedQueue`**: Dmitry Vyukov's bounded MPMC ring in crossbeam `ArrayQueue`'s form. Each
//! cell carries a stamp (lap and index); a producer claims position `tail` with a CAS when the
//! cell's stamp equals `tail`, writes, and stores stamp `tail + 1` (Release); a consumer claims
//! `head` when the stamp is `head + 1`, reads, and stores `head + one_lap` (Release), handing the
//! cell to the next lap's producer. Full/empty are decided after a `SeqCst` fence by comparing
//! the other index, so a stale stamp is never mistaken for full or empty (loom models check both
//! decisions are linearizable and fail with either fence removed).
//!
//! **`RequestTable`**: one atomic 64-bit state word per slot, `generation << 32 | readers << 3 |
//! REMOVING | CANCELLED | OCCUPIED`, plus an `UnsafeCell<MaybeUninit<V>>`. Every operation CASes
//! the state word after checking the ticket's generation, so the generation check and the action
//! are one atomic step. Readers register in the word (Acquire) and leave with a Release
//! `fetch_sub`; `remove` sets `REMOVING` (no new readers), waits for the count to reach zero,
//! moves the value out, bumps the generation and pushes the slot onto a Treiber free list whose
//! head is `tag << 32 | index` (the tag changes on every push/pop, so ABA needs 2^32 changes
//! while one thread is stalled). `insert` pops a slot (Acquire, pairing with the push's Release),
//! writes the value and publishes it with a Release store of `OCCUPIED`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod bounded;
mod queue;
mod table;

pub use bounded::{BoundedQueue, Full};

/// Drops a container's remaining values with `drain`, and finishes the job if one value's
/// `Drop` panics, as std's collections do (a second panic while unwinding aborts). `drain` must
/// move the container past each value *before* dropping it, so that running it again resumes
/// after the value that panicked.
pub(crate) fn drop_values<C>(container: &mut C, drain: fn(&mut C)) {
    /// Runs `drain` again if dropped while the first run unwinds.
    struct Resume<'a, C>(&'a mut C, fn(&mut C));
    impl<C> Drop for Resume<'_, C> {
        fn drop(&mut self) {
            (self.1)(self.0);
        }
    }
    let resume = Resume(container, drain);
    drain(&mut *resume.0);
    core::mem::forget(resume);
}
pub use queue::{live_segments, Queue};
pub use table::{RequestTable, TableFull, Ticket};

#[cfg(all(test, not(freelane_loom)))]
mod tests {
    use super::*;

    #[test]
    fn queue_is_fifo_across_segments() {
        let q = Queue::new();
        // Across segment boundaries: nine of them, one under miri (a few milliseconds per
        // operation there).
        let n = if cfg!(miri) { 1100 } else { 10_000 };
        for i in 0..n {
            q.push(i);
        }
        assert_eq!(q.len(), n);
        for i in 0..n {
            assert_eq!(q.pop(), Some(i));
        }
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn bounded_never_exceeds_capacity_and_gives_value_back() {
        let q = BoundedQueue::with_capacity(3);
        for i in 0..3 {
            q.try_push(i).unwrap();
        }
        assert!(q.is_full());
        let err = q.try_push(99).unwrap_err();
        assert_eq!(err.to_string(), "queue is full");
        assert_eq!(err.into_inner(), 99);
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(), Some(0));
        q.try_push(3).unwrap();
        assert_eq!(
            (1..4).map(|_| q.pop().unwrap()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(q.pop(), None);
    }

    #[test]
    #[should_panic(expected = "BoundedQueue capacity must be at least 1")]
    fn bounded_with_capacity_zero_panics() {
        let _ = BoundedQueue::<u8>::with_capacity(0);
    }

    #[test]
    fn table_stale_ticket_never_reaches_new_entry() {
        let t = RequestTable::with_capacity(1);
        let a = t.insert("a").unwrap();
        assert_eq!(t.remove(a), Some("a"));
        let b = t.insert("b").unwrap();
        assert_eq!(a.index(), b.index());
        assert_ne!(a.generation(), b.generation());
        assert!(!t.cancel(a));
        assert!(!t.is_cancelled(b));
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(b), Some("b"));
        let full = t.insert("c").unwrap_err();
        assert_eq!(full.to_string(), "request table is full");
        assert_eq!(full.into_inner(), "c");
    }
}
