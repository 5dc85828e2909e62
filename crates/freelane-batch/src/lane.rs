//! A lane: one GPU's queue of pending work plus the lock-free sleep/wake handoff.
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use freelane_queue::{Full, Queue};
use freelane_sync::atomic::{AtomicUsize, Ordering};
use freelane_sync::{Backoff, CachePadded};

use crate::waker::AtomicWaker;

/// The consumer has registered its waker and is (about to be) asleep.
const SLEEPING: usize = 1 << 0;
/// Someone asked the consumer to wake and look around (health change, stealing, shutdown).
const NUDGED: usize = 1 << 1;
/// No more work is expected; a consumer finding the lane empty stops waiting.
const CLOSED: usize = 1 << 2;
/// The lane's GPU is unusable: batches must not refill from it (stealing and draining still may).
const PAUSED: usize = 1 << 3;
/// The available-item count lives above the flag bits.
const SHIFT: u32 = 4;
const ONE: usize = 1 << SHIFT;

/// Why a wait on a [`Lane`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Items are available to claim.
    Items,
    /// The lane was [nudged](Lane::nudge): look around (health, stealing, shutdown).
    Nudged,
    /// The lane is [closed](Lane::close) and empty.
    Closed,
}

/// One GPU's pending work: an MPMC [`Queue`] (plus a "front" queue for work handed back or moved
/// in by failover, served first) and a state word that counts the items available to claim and
/// carries the sleep/wake flags.
///
/// Any number of threads may [`push`](Self::push) and [`claim`](Self::claim); one consumer at a
/// time may wait ([`signal`](Self::signal), [`wait_blocking`](Self::wait_blocking)).
///
/// # Guarantees
/// - An item pushed is claimed at most once and, while the lane is drained by someone, at least
///   once: the count is only decremented by a successful claim, which then pops exactly that many.
/// - No lost wake-up: a waiter that went to sleep is woken by the first push (or nudge, or close)
///   that follows its registration; a push racing the registration is seen by the waiter's
///   re-check. Producers never take a lock: a push is a queue push, one `fetch_add`, and only when
///   the consumer sleeps a `fetch_and` plus a lock-free waker handoff.
pub struct Lane<T> {
    state: CachePadded<AtomicUsize>,
    admission: CachePadded<Admission>,
    waker: AtomicWaker,
    /// Items pushed to `front` and not yet popped from it (a hint that spares claimers a pop on
    /// the usually empty front queue).
    front_len: AtomicUsize,
    front: Queue<T>,
    queue: Queue<T>,
}

/// Admission bookkeeping: items pushed or being pushed and not yet claimed.
struct Admission {
    capacity: usize,
    reserved: AtomicUsize,
}

/// What [`Lane::push`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a push onto a closed lane must be drained by the pusher"]
pub enum Pushed {
    /// The lane was open: its consumer will take the item.
    Open,
    /// The lane had been [closed](Lane::close) before this push (in the lane's order of
    /// operations): the closer may already have finished draining, so the pusher must
    /// [`drain`](Lane::drain) the lane itself and answer what it takes.
    Closed,
}

impl<T> Lane<T> {
    /// An empty, open lane without a capacity bound.
    pub fn new() -> Self {
        Self::with_capacity(usize::MAX)
    }

    /// An empty lane whose [`try_push`](Self::try_push) refuses items beyond `capacity`
    /// (items pushed or being pushed, not yet claimed). `usize::MAX` means unbounded.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            state: CachePadded::new(AtomicUsize::new(0)),
            admission: CachePadded::new(Admission {
                capacity,
                reserved: AtomicUsize::new(0),
            }),
            waker: AtomicWaker::new(),
            front_len: AtomicUsize::new(0),
            front: Queue::new(),
            queue: Queue::new(),
        }
    }

    /// The capacity given to [`with_capacity`](Self::with_capacity).
    pub fn capacity(&self) -> usize {
        self.admission.capacity
    }

    /// Appends `item` unconditionally (ignoring the capacity) and wakes the sleeping consumer, if
    /// any. Lock-free (given a lock-free [`Queue`]). Accepted even after [`close`](Self::close):
    /// see [`Pushed::Closed`].
    pub fn push(&self, item: T) -> Pushed {
        self.reserve(1);
        self.queue.push(item);
        self.publish(1)
    }

    /// As [`push`](Self::push), but gives `item` back when the lane already holds `capacity`
    /// items. The lane never holds more: reservations are counted before the item is queued.
    /// A refused push briefly holds a reservation it then undoes, so a `try_push` racing it may
    /// be refused although a slot is free at that instant.
    pub fn try_push(&self, item: T) -> Result<Pushed, Full<T>> {
        if self.admission.capacity != usize::MAX {
            // Relaxed: the reservation counter only bounds the count; it publishes no data
            // (the item is published by publish()'s Release).
            let prev = self.admission.reserved.fetch_add(1, Ordering::Relaxed);
            if prev >= self.admission.capacity {
                // Relaxed: undoing our own reservation.
                self.admission.reserved.fetch_sub(1, Ordering::Relaxed);
                return Err(Full(item));
            }
        }
        self.queue.push(item);
        Ok(self.publish(1))
    }

    /// Puts `item` in the front queue, served before the main queue (work handed back because
    /// it did not fit a batch, or moved here from a failed lane). Ignores the capacity.
    pub fn push_front(&self, item: T) -> Pushed {
        self.reserve(1);
        self.front.push(item);
        // Relaxed: ordered before publish()'s Release RMW (program order), so a claimer that
        // acquires the count also sees this increment.
        self.front_len.fetch_add(1, Ordering::Relaxed);
        self.publish(1)
    }

    fn reserve(&self, n: usize) {
        if self.admission.capacity != usize::MAX {
            // Relaxed: see try_push().
            self.admission.reserved.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn unreserve(&self, n: usize) {
        if self.admission.capacity != usize::MAX {
            // Relaxed: see try_push().
            self.admission.reserved.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn publish(&self, n: usize) -> Pushed {
        // AcqRel: Release publishes the pushed item(s) to the Acquire CAS in claim() that takes
        // them; Acquire pairs with the waiter's Release CAS setting SLEEPING in poll_signal(), so
        // its waker registration happens-before our wake, and with close()'s RMW.
        let prev = self.state.fetch_add(n * ONE, Ordering::AcqRel);
        if prev & SLEEPING != 0 {
            self.wake_sleeper();
        }
        if prev & CLOSED != 0 {
            Pushed::Closed
        } else {
            Pushed::Open
        }
    }

    fn wake_sleeper(&self) {
        // AcqRel: the RMW chain on `state` orders us after the waiter's SLEEPING CAS (Acquire);
        // Release lets the waiter's next load see the flag cleared. Only the thread that clears
        // the flag wakes, so one sleep costs at most one waker handoff.
        if self.state.fetch_and(!SLEEPING, Ordering::AcqRel) & SLEEPING != 0 {
            self.waker.wake();
        }
    }

    /// Items available to claim (exact at any instant the state word is read; items being
    /// pushed are counted once their push completed).
    pub fn len(&self) -> usize {
        // Relaxed: a snapshot for sizing and statistics; claim() re-reads with Acquire.
        self.state.load(Ordering::Relaxed) >> SHIFT
    }

    /// `true` when no item is available.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Claims up to `max` available items; the returned [`Claim`] pops exactly that many.
    /// Items the claim does not pop before it is dropped are handed back to the lane.
    pub fn claim(&self, max: usize) -> Claim<'_, T> {
        if max == 0 {
            return Claim {
                lane: self,
                left: 0,
            };
        }
        // Relaxed: only a first guess for the CAS below, which re-validates.
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            let n = (s >> SHIFT).min(max);
            if n == 0 {
                return Claim {
                    lane: self,
                    left: 0,
                };
            }
            // Acquire (success): pairs with the Release fetch_add in publish() of every counted
            // push (a release sequence of RMWs), so the claimed items' pushes happen-before our
            // pops. Relaxed (failure): we retry with the fresh value.
            match self.state.compare_exchange_weak(
                s,
                s - n * ONE,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.unreserve(n);
                    return Claim {
                        lane: self,
                        left: n,
                    };
                }
                Err(cur) => s = cur,
            }
        }
    }

    /// Claims and pops one item.
    pub fn pop(&self) -> Option<T> {
        self.claim(1).next()
    }

    /// Pops one claimed item: it is in one of the queues because its push completed before the
    /// count that we claimed was published.
    fn pop_claimed(&self) -> T {
        let mut backoff = Backoff::new();
        loop {
            // Relaxed: a hint; the claim's Acquire CAS already ordered the counted pushes (and
            // their front_len increments) before us. A stale value only costs a retry.
            if self.front_len.load(Ordering::Relaxed) > 0 {
                if let Some(v) = self.front.pop() {
                    // Relaxed: hint bookkeeping (see above).
                    self.front_len.fetch_sub(1, Ordering::Relaxed);
                    return v;
                }
            }
            if let Some(v) = self.queue.pop() {
                return v;
            }
            // Only reachable if a concurrent claimer popped "our" item and its own is not yet
            // visible: transient, the count guarantees enough items exist.
            backoff.snooze();
        }
    }

    /// Takes every available item (items pushed meanwhile may remain: call again to be sure).
    pub fn drain(&self) -> Claim<'_, T> {
        self.claim(usize::MAX)
    }

    /// Wakes the waiting consumer without an item ([`Signal::Nudged`]); remembered if it is
    /// not waiting yet.
    pub fn nudge(&self) {
        // AcqRel: as in publish(): Release makes the nudge (and what preceded it, e.g. a health
        // change) visible to the waiter; Acquire orders us after its SLEEPING registration.
        let prev = self.state.fetch_or(NUDGED, Ordering::AcqRel);
        if prev & SLEEPING != 0 {
            self.wake_sleeper();
        }
    }

    /// Marks the lane closed and wakes its consumer: waits on an empty closed lane return
    /// [`Signal::Closed`]. Pushes are still accepted (a racing producer's item is not lost), and
    /// so are hand-backs from a consumer's claim: drain after the consumers stop (see the crate
    /// docs, "Shutdown").
    pub fn close(&self) {
        // AcqRel: as in nudge().
        let prev = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        if prev & SLEEPING != 0 {
            self.wake_sleeper();
        }
    }

    /// `true` after [`close`](Self::close).
    pub fn is_closed(&self) -> bool {
        // Relaxed: a flag check; the closer's other writes are not read through it.
        self.state.load(Ordering::Relaxed) & CLOSED != 0
    }

    /// Pauses (`true`) or resumes (`false`) refills from this lane and nudges its consumer.
    pub fn set_paused(&self, paused: bool) {
        if paused {
            // Release: the pause is visible to refills that load with Acquire.
            self.state.fetch_or(PAUSED, Ordering::Release);
        } else {
            // Release: as above.
            self.state.fetch_and(!PAUSED, Ordering::Release);
        }
        self.nudge();
    }

    /// `true` while paused.
    pub fn is_paused(&self) -> bool {
        // Acquire: pairs with set_paused()'s Release.
        self.state.load(Ordering::Acquire) & PAUSED != 0
    }

    /// Polls for work: `Ready` when items are available, the lane was nudged, or it is closed and
    /// empty; otherwise registers `cx`'s waker and returns `Pending`, to be woken by the next push,
    /// nudge or close. Only one consumer should poll a lane at a time.
    pub fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<Signal> {
        // Acquire: pairs with publish()/nudge()/close() Release RMWs (a fast path; the claim that
        // follows re-synchronizes on its own).
        let s = self.state.load(Ordering::Acquire);
        if let Some(sig) = self.ready(s) {
            return Poll::Ready(sig);
        }
        self.waker.register(cx.waker());
        // Acquire: as above.
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if let Some(sig) = self.ready(s) {
                return Poll::Ready(sig);
            }
            // AcqRel (success): Release publishes our waker registration to the producer whose
            // fetch_add/fetch_or reads this value (it then wakes us); the CAS also re-validates
            // that the lane is still empty, un-nudged and open as of this point in the state's
            // modification order, so a push ordered before it is seen here and a push ordered
            // after it sees SLEEPING. Acquire (failure): re-read and re-check.
            match self.state.compare_exchange_weak(
                s,
                s | SLEEPING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Poll::Pending,
                Err(cur) => s = cur,
            }
        }
    }

    fn ready(&self, s: usize) -> Option<Signal> {
        let sig = if s & NUDGED != 0 {
            if s >> SHIFT > 0 {
                Signal::Items
            } else {
                Signal::Nudged
            }
        } else if s >> SHIFT > 0 {
            Signal::Items
        } else if s & CLOSED != 0 {
            Signal::Closed
        } else {
            return None;
        };
        // Only a reported nudge is consumed: with items queued the nudge stays set and is
        // reported once they are taken (a batch being formed still closes on it), and a nudge
        // that arrives after `s` was loaded is never cleared unseen.
        let clear = if sig == Signal::Nudged {
            NUDGED | SLEEPING
        } else {
            SLEEPING
        };
        if s & clear != 0 {
            // AcqRel: consumes the nudge (Acquire pairs with nudge()'s Release) and clears our
            // own stale SLEEPING flag so producers stop waking us.
            self.state.fetch_and(!clear, Ordering::AcqRel);
        }
        Some(sig)
    }

    /// Waits (asynchronously, without spinning) for a [`Signal`].
    pub fn signal(&self) -> SignalFuture<'_, T> {
        SignalFuture { lane: self }
    }

    /// Blocks the current thread for a [`Signal`], or until `deadline` (then `None`).
    /// `waker` must wake this thread: use [`thread_waker`].
    pub fn wait_blocking(&self, waker: &Waker, deadline: Option<Instant>) -> Option<Signal> {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(sig) = self.poll_signal(&mut cx) {
                return Some(sig);
            }
            match deadline {
                None => freelane_sync::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    #[cfg(not(freelane_loom))]
                    std::thread::park_timeout(d - now);
                    // loom has no timed park: model a timed wait as "time runs out at once".
                    #[cfg(freelane_loom)]
                    {
                        freelane_sync::thread::yield_now();
                        return match self.poll_signal(&mut cx) {
                            Poll::Ready(sig) => Some(sig),
                            Poll::Pending => None,
                        };
                    }
                }
            }
        }
    }
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Lane<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Relaxed: a diagnostic snapshot.
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("Lane")
            .field("len", &(s >> SHIFT))
            .field("sleeping", &(s & SLEEPING != 0))
            .field("closed", &(s & CLOSED != 0))
            .field("paused", &(s & PAUSED != 0))
            .finish_non_exhaustive()
    }
}

/// Items claimed from a [`Lane`]: an iterator popping exactly the claimed number. Dropping it
/// early hands the unpopped claims back to the lane (their items never left the queues).
#[must_use = "claimed items that are not popped are handed back when the claim drops"]
pub struct Claim<'a, T> {
    lane: &'a Lane<T>,
    left: usize,
}

impl<T> Claim<'_, T> {
    /// How many claimed items are still to pop.
    pub fn remaining(&self) -> usize {
        self.left
    }
}

impl<T> Iterator for Claim<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.lane.pop_claimed())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<T> ExactSizeIterator for Claim<'_, T> {}

impl<T> Drop for Claim<'_, T> {
    fn drop(&mut self) {
        if self.left > 0 {
            self.lane.reserve(self.left);
            // The handed-back items never left the queues; they are counted again even on a
            // closed lane, which is drained for good only once its consumers have stopped (crate
            // docs, "Shutdown"), so the result needs no action here.
            let _ = self.lane.publish(self.left);
        }
    }
}

impl<T> fmt::Debug for Claim<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim").field("left", &self.left).finish()
    }
}

/// The future of [`Lane::signal`].
#[must_use = "futures do nothing unless polled"]
pub struct SignalFuture<'a, T> {
    lane: &'a Lane<T>,
}

impl<T> Future for SignalFuture<'_, T> {
    type Output = Signal;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Signal> {
        self.lane.poll_signal(cx)
    }
}

impl<T> fmt::Debug for SignalFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalFuture").finish_non_exhaustive()
    }
}

struct Unparker(freelane_sync::thread::Thread);

impl std::task::Wake for Unparker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// A waker that unparks the current thread, for [`Lane::wait_blocking`] and the blocking batcher.
pub fn thread_waker() -> Waker {
    Waker::from(std::sync::Arc::new(Unparker(
        freelane_sync::thread::current(),
    )))
}
