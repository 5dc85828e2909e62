//! `BoundedQueue<T>`: fixed-capacity MPMC ring (Vyukov's per-slot sequence numbers).

use core::fmt;
use core::mem::MaybeUninit;

use freelane_sync::atomic::{fence, AtomicUsize, Ordering};
use freelane_sync::cell::UnsafeCell;
use freelane_sync::{Backoff, CachePadded};

/// The value given back by [`BoundedQueue::try_push`] when the queue is full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// The value that could not be pushed.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("queue is full")
    }
}

impl<T> std::error::Error for Full<T> {}

struct Cell<T> {
    /// The position (lap + index) this cell expects next: `pos` when free for the producer of
    /// position `pos`, `pos + 1` when it holds the value of position `pos`.
    stamp: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// Bounded multi-producer multi-consumer FIFO queue for admission control.
///
/// Never holds more than [`capacity`](Self::capacity) items; [`try_push`](Self::try_push) gives
/// the value back in [`Full`] instead. No allocation after construction. Lock-free except while a
/// preempted peer is between claiming a position and publishing it (formally blocking, as for
/// crossbeam's `ArrayQueue`; see the crate docs' "Progress"). See the [crate docs](crate) for
/// the protocol.
///
/// ```
/// use freelane_queue::{BoundedQueue, Full};
/// let q = BoundedQueue::with_capacity(1);
/// q.try_push("a").unwrap();
/// assert_eq!(q.try_push("b"), Err(Full("b")));
/// assert_eq!(q.pop(), Some("a"));
/// ```
pub struct BoundedQueue<T> {
    /// Next position to pop: `lap * one_lap + index`.
    head: CachePadded<AtomicUsize>,
    /// Next position to push: `lap * one_lap + index`.
    tail: CachePadded<AtomicUsize>,
    buffer: Box<[Cell<T>]>,
    /// A power of two greater than the capacity; positions count laps in multiples of it.
    one_lap: usize,
}

// SAFETY: values are moved between threads, hence `T: Send`; no `&T` is ever shared.
unsafe impl<T: Send> Send for BoundedQueue<T> {}
// SAFETY: shared state is atomics, or cells whose access is handed over by the stamps.
unsafe impl<T: Send> Sync for BoundedQueue<T> {}

impl<T> BoundedQueue<T> {
    /// A queue that never holds more than `capacity` items.
    ///
    /// # Panics
    /// If `capacity` is 0 ("BoundedQueue capacity must be at least 1"), or so large that
    /// positions could not be numbered (more than `usize::MAX / 4`). The cells are allocated up
    /// front, so a capacity whose buffer cannot be allocated fails as `Vec::with_capacity`
    /// does (a capacity-overflow panic, or an abort on allocation failure).
    pub fn with_capacity(capacity: usize) -> Self {
        assert!(capacity > 0, "BoundedQueue capacity must be at least 1");
        assert!(
            capacity <= usize::MAX / 4,
            "BoundedQueue capacity must be at most usize::MAX / 4"
        );
        let buffer: Box<[Cell<T>]> = (0..capacity)
            .map(|i| Cell {
                stamp: AtomicUsize::new(i),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            buffer,
            one_lap: (capacity + 1).next_power_of_two(),
        }
    }

    /// The capacity given at construction.
    pub fn capacity(&self) -> usize {
        self.buffer.len()
    }

    /// The position after `pos`: the next index, or index 0 of the next lap.
    #[inline]
    fn advance(&self, pos: usize) -> usize {
        let index = pos & (self.one_lap - 1);
        if index + 1 < self.buffer.len() {
            pos + 1
        } else {
            (pos & !(self.one_lap - 1)).wrapping_add(self.one_lap)
        }
    }

    /// Appends `value`, or gives it back in [`Full`] when the queue holds `capacity` items.
    pub fn try_push(&self, value: T) -> Result<(), Full<T>> {
        let mut backoff = Backoff::new();
        // Relaxed: a starting guess; the CAS below validates it.
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            let cell = &self.buffer[tail & (self.one_lap - 1)];
            // Acquire: pairs with the consumer's Release store that freed this cell, so its read
            // of the previous value happens-before our write.
            let stamp = cell.stamp.load(Ordering::Acquire);
            if stamp == tail {
                // SeqCst (success): in the total order with `pop`'s SeqCst fence + tail load used
                // for the empty check. Relaxed (failure): we retry with the fresh value.
                match self.tail.compare_exchange_weak(
                    tail,
                    self.advance(tail),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: position `tail` is ours (CAS), and the cell's stamp says the
                        // previous occupant was consumed: nobody else accesses the cell.
                        cell.value.with_mut(|p| unsafe { (*p).write(value) });
                        // Release: publishes the value to the consumer's Acquire stamp load.
                        cell.stamp.store(tail + 1, Ordering::Release);
                        return Ok(());
                    }
                    Err(t) => {
                        tail = t;
                        backoff.spin();
                    }
                }
            } else if stamp.wrapping_add(self.one_lap) == tail + 1 {
                // The cell still holds the value from one lap ago: full, unless head moved.
                // SeqCst fence: orders our stamp load before the head load, against `pop`'s
                // SeqCst CAS on head.
                fence(Ordering::SeqCst);
                // Relaxed: ordered by the fence above.
                let head = self.head.load(Ordering::Relaxed);
                if head.wrapping_add(self.one_lap) == tail {
                    return Err(Full(value));
                }
                backoff.spin();
                // Relaxed: a new guess, validated by the CAS.
                tail = self.tail.load(Ordering::Relaxed);
            } else {
                // Another producer claimed `tail` and is writing it, or we are behind: wait.
                backoff.snooze();
                // Relaxed: a new guess, validated by the CAS.
                tail = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Removes the value at the head, or `None` when empty.
    pub fn pop(&self) -> Option<T> {
        let mut backoff = Backoff::new();
        // Relaxed: a starting guess; the CAS below validates it.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            let cell = &self.buffer[head & (self.one_lap - 1)];
            // Acquire: pairs with the producer's Release stamp store, so its value write
            // happens-before our read.
            let stamp = cell.stamp.load(Ordering::Acquire);
            if stamp == head + 1 {
                // SeqCst (success): see `try_push`. Relaxed (failure): we retry.
                match self.head.compare_exchange_weak(
                    head,
                    self.advance(head),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: position `head` is ours (CAS) and the stamp says it was
                        // written: we are its only reader.
                        let value = cell.value.with(|p| unsafe { (*p).assume_init_read() });
                        // Release: hands the cell back to the producer of the next lap, whose
                        // Acquire stamp load orders our read before its write.
                        cell.stamp
                            .store(head.wrapping_add(self.one_lap), Ordering::Release);
                        return Some(value);
                    }
                    Err(h) => {
                        head = h;
                        backoff.spin();
                    }
                }
            } else if stamp == head {
                // The cell awaits the producer of this lap: empty, unless tail moved.
                // SeqCst fence: orders our stamp load before the tail load, against
                // `try_push`'s SeqCst CAS on tail.
                fence(Ordering::SeqCst);
                // Relaxed: ordered by the fence above.
                let tail = self.tail.load(Ordering::Relaxed);
                if tail == head {
                    return None;
                }
                backoff.spin();
                // Relaxed: a new guess, validated by the CAS.
                head = self.head.load(Ordering::Relaxed);
            } else {
                // Another consumer claimed `head`, or we are behind: wait.
                backoff.snooze();
                // Relaxed: a new guess, validated by the CAS.
                head = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// Number of items (exact when no operation is in progress).
    pub fn len(&self) -> usize {
        loop {
            // SeqCst: read tail, head, tail again in one total order; a stable tail means the
            // pair is a consistent snapshot.
            let tail = self.tail.load(Ordering::SeqCst);
            let head = self.head.load(Ordering::SeqCst);
            if self.tail.load(Ordering::SeqCst) == tail {
                let cap = self.buffer.len();
                let hix = head & (self.one_lap - 1);
                let tix = tail & (self.one_lap - 1);
                return if hix < tix {
                    tix - hix
                } else if hix > tix {
                    cap - hix + tix
                } else if tail == head {
                    0
                } else {
                    cap
                };
            }
        }
    }

    /// `true` when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `true` when the queue holds `capacity` items.
    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }
}

impl<T> Drop for BoundedQueue<T> {
    fn drop(&mut self) {
        crate::drop_values(self, |q| {
            for _ in 0..q.len() {
                // Relaxed (both): `&mut self`; the thread that handed us exclusive access
                // synchronized. Head moves past the value before it is dropped, so a rerun
                // after a panicking drop resumes behind it.
                let pos = q.head.load(Ordering::Relaxed);
                q.head.store(q.advance(pos), Ordering::Relaxed);
                let cell = &q.buffer[pos & (q.one_lap - 1)];
                // SAFETY: `&mut self`: no concurrent access; the `len` positions from head
                // hold written, unconsumed values, and head has moved past this one, so it is
                // dropped exactly once, here.
                cell.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
            }
        });
    }
}

impl<T> fmt::Debug for BoundedQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedQueue")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}
