//! `RequestTable<V>`: fixed-capacity lock-free table of in-flight requests.

use core::fmt;
use core::mem::MaybeUninit;

use freelane_sync::atomic::{AtomicU32, AtomicU64, Ordering};
use freelane_sync::cell::UnsafeCell;
use freelane_sync::{Backoff, CachePadded};

/// The entry holds a value.
const OCCUPIED: u64 = 1;
/// The entry's request was cancelled.
const CANCELLED: u64 = 1 << 1;
/// A `remove` owns the entry; no new reader may enter.
const REMOVING: u64 = 1 << 2;
/// One reader inside [`RequestTable::with`].
const READER: u64 = 1 << 3;
/// Reader count bits (3..32).
const READERS: u64 = ((1 << 32) - 1) & !(READER - 1);
/// Generation: the high 32 bits.
const GEN_SHIFT: u32 = 32;
/// End of the free list.
const NIL: u32 = u32::MAX;

/// A handle to one entry of a [`RequestTable`]: slot index plus the slot's generation.
///
/// Every `remove` bumps the slot's generation, so a ticket kept after its entry was removed is
/// *stale*: it never reaches a later entry in the same slot (until the 32-bit generation wraps,
/// after 2^32 reuses of that one slot). A ticket belongs to the table that issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket {
    index: u32,
    generation: u32,
}

impl Ticket {
    /// The slot index.
    pub fn index(self) -> u32 {
        self.index
    }

    /// The slot generation this ticket was issued for.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// The value given back by [`RequestTable::insert`] when every slot is in use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TableFull<V>(pub V);

impl<V> TableFull<V> {
    /// The value that could not be inserted.
    pub fn into_inner(self) -> V {
        self.0
    }
}

impl<V> fmt::Debug for TableFull<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TableFull(..)")
    }
}

impl<V> fmt::Display for TableFull<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request table is full")
    }
}

impl<V> std::error::Error for TableFull<V> {}

struct Entry<V> {
    /// `generation << 32 | readers << 3 | REMOVING | CANCELLED | OCCUPIED`.
    state: AtomicU64,
    /// Next free slot while this one is on the free list.
    next: AtomicU32,
    value: UnsafeCell<MaybeUninit<V>>,
}

/// Lock-free fixed-capacity table of in-flight requests.
///
/// [`insert`](Self::insert) returns a [`Ticket`]; [`with`](Self::with) reads the entry,
/// [`cancel`](Self::cancel) sets a flag a worker checks with [`is_cancelled`](Self::is_cancelled)
/// before executing, [`remove`](Self::remove) takes the value out and frees the slot. A stale
/// ticket (its entry removed) is refused by every operation. See the [crate docs](crate).
///
/// ```
/// use freelane_queue::RequestTable;
/// let table = RequestTable::with_capacity(2);
/// let t = table.insert("request").unwrap();
/// assert!(table.cancel(t));
/// assert!(table.is_cancelled(t));
/// assert_eq!(table.remove(t), Some("request"));
/// assert_eq!(table.remove(t), None); // stale
/// ```
pub struct RequestTable<V> {
    /// Treiber stack of free slots: `tag << 32 | index`. The tag bumps on every change, so an
    /// ABA needs 2^32 pushes and pops while one `insert` is stalled between reading the head and
    /// its CAS (see the crate docs); not impossible in theory, never in practice.
    free: CachePadded<AtomicU64>,
    entries: Box<[Entry<V>]>,
}

// SAFETY: values move in and out across threads (`V: Send`); `with` lends `&V` to several
// threads at once (`V: Sync`).
unsafe impl<V: Send> Send for RequestTable<V> {}
// SAFETY: as above; shared state is atomics or cells handed over through `state`.
unsafe impl<V: Send + Sync> Sync for RequestTable<V> {}

/// Releases a reader registration even if the reader's closure panics.
struct ReaderGuard<'a>(&'a AtomicU64);

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        // Release: orders our reads of the value before the remover's Acquire load that sees
        // the reader count reach zero.
        self.0.fetch_sub(READER, Ordering::Release);
    }
}

#[inline]
fn live(state: u64, ticket: Ticket) -> bool {
    (state >> GEN_SHIFT) as u32 == ticket.generation
        && state & OCCUPIED != 0
        && state & REMOVING == 0
}

impl<V> RequestTable<V> {
    /// A table with `capacity` slots.
    ///
    /// # Panics
    /// If `capacity` is 0 ("request table capacity must be at least 1") or at least `u32::MAX`.
    pub fn with_capacity(capacity: usize) -> Self {
        assert!(capacity > 0, "request table capacity must be at least 1");
        assert!(
            capacity < NIL as usize,
            "request table capacity must be below u32::MAX"
        );
        let entries: Box<[Entry<V>]> = (0..capacity)
            .map(|i| Entry {
                state: AtomicU64::new(0),
                next: AtomicU32::new(if i + 1 < capacity { i as u32 + 1 } else { NIL }),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        Self {
            free: CachePadded::new(AtomicU64::new(0)),
            entries,
        }
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Number of live entries (exact when no operation is in progress; scans every slot).
    pub fn len(&self) -> usize {
        self.entries
            .iter()
            // Relaxed: a statistic.
            .filter(|e| e.state.load(Ordering::Relaxed) & (OCCUPIED | REMOVING) == OCCUPIED)
            .count()
    }

    /// `true` when no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entry(&self, ticket: Ticket) -> Option<&Entry<V>> {
        self.entries.get(ticket.index as usize)
    }

    /// Stores `value` in a free slot and returns its ticket, or gives the value back when every
    /// slot is in use. Lock-free.
    pub fn insert(&self, value: V) -> Result<Ticket, TableFull<V>> {
        let mut backoff = Backoff::new();
        // Acquire: pairs with the Release CAS in `push_free`, making the pushed slot's `next`,
        // its bumped generation and the remover's read of the old value visible to us.
        let mut head = self.free.load(Ordering::Acquire);
        let index = loop {
            let index = head as u32;
            if index == NIL {
                return Err(TableFull(value));
            }
            // Relaxed: made visible by the Acquire load of `head`; if it is stale (the slot
            // was taken and returned meanwhile), the tag has changed and the CAS fails.
            let next = self.entries[index as usize].next.load(Ordering::Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            // Acquire (both): as for the load above.
            match self.free.compare_exchange_weak(
                head,
                tag << 32 | u64::from(next),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break index,
                Err(h) => {
                    head = h;
                    backoff.spin();
                }
            }
        };
        let entry = &self.entries[index as usize];
        // SAFETY: the slot came off the free list, so it is unoccupied and ours alone: no reader
        // enters an unoccupied slot, and its last remover's read happened-before (see above).
        entry.value.with_mut(|p| unsafe { (*p).write(value) });
        // Relaxed: only we write `state` while the slot is free; the generation came with the
        // Acquire on `free`.
        let generation = (entry.state.load(Ordering::Relaxed) >> GEN_SHIFT) as u32;
        // Release: publishes the value to the Acquire CASes in `with` and `remove`.
        entry.state.store(
            u64::from(generation) << GEN_SHIFT | OCCUPIED,
            Ordering::Release,
        );
        Ok(Ticket { index, generation })
    }

    /// Calls `f` with the entry of `ticket`, or returns `None` for a stale ticket (or one being
    /// removed). Lock-free; readers never wait for each other. A concurrent
    /// [`remove`](Self::remove) of the same entry waits until `f` returns.
    pub fn with<R>(&self, ticket: Ticket, f: impl FnOnce(&V) -> R) -> Option<R> {
        let entry = self.entry(ticket)?;
        let mut backoff = Backoff::new();
        // Relaxed: a guess; the CAS below validates it and synchronizes.
        let mut state = entry.state.load(Ordering::Relaxed);
        loop {
            if !live(state, ticket) {
                return None;
            }
            // Acquire (success): pairs with insert's Release store, so the value is visible.
            match entry.state.compare_exchange_weak(
                state,
                state + READER,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(s) => {
                    state = s;
                    backoff.spin();
                }
            }
        }
        let _reader = ReaderGuard(&entry.state);
        // SAFETY: we are a registered reader of a live entry: `remove` does not move the value
        // out until the reader count is back to zero, and nobody writes it meanwhile.
        let value = entry.value.with(|p| unsafe { (*p).assume_init_ref() });
        Some(f(value))
    }

    /// A clone of the entry of `ticket`, or `None` for a stale ticket.
    pub fn get(&self, ticket: Ticket) -> Option<V>
    where
        V: Clone,
    {
        self.with(ticket, V::clone)
    }

    /// `true` while `ticket`'s entry is in the table (inserted and not removed).
    pub fn contains(&self, ticket: Ticket) -> bool {
        // Relaxed: a snapshot of the state word; nothing is read through it.
        self.entry(ticket)
            .is_some_and(|e| live(e.state.load(Ordering::Relaxed), ticket))
    }

    /// Marks `ticket`'s request cancelled. Returns `true` when the entry is live (it is now
    /// cancelled, whether or not it already was), `false` for a stale ticket. Lock-free. Only
    /// the call that sets the flag publishes what its thread did before (see the crate docs).
    pub fn cancel(&self, ticket: Ticket) -> bool {
        let Some(entry) = self.entry(ticket) else {
            return false;
        };
        let mut backoff = Backoff::new();
        // Relaxed: a guess; the CAS validates it.
        let mut state = entry.state.load(Ordering::Relaxed);
        loop {
            if !live(state, ticket) {
                return false;
            }
            if state & CANCELLED != 0 {
                return true;
            }
            // Release (success): orders what the canceller did before cancelling before a
            // worker's Acquire load in `is_cancelled` that sees the flag. Relaxed (failure).
            match entry.state.compare_exchange_weak(
                state,
                state | CANCELLED,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(s) => {
                    state = s;
                    backoff.spin();
                }
            }
        }
    }

    /// `true` when `ticket`'s entry is live and cancelled; `false` when not cancelled or stale.
    /// Wait-free (one load).
    pub fn is_cancelled(&self, ticket: Ticket) -> bool {
        // Acquire: pairs with the Release CAS in `cancel`.
        self.entry(ticket).is_some_and(|e| {
            let s = e.state.load(Ordering::Acquire);
            live(s, ticket) && s & CANCELLED != 0
        })
    }

    /// Takes `ticket`'s value out and frees its slot (bumping its generation, so the ticket
    /// becomes stale). `None` for a stale ticket or when another `remove` won. Waits only for
    /// readers inside [`with`](Self::with) on this same entry; otherwise lock-free. Do not call
    /// it from inside `with` on the same entry: it would wait for that very read and never
    /// return.
    pub fn remove(&self, ticket: Ticket) -> Option<V> {
        let entry = self.entry(ticket)?;
        let mut backoff = Backoff::new();
        // Relaxed: a guess; the CAS validates it.
        let mut state = entry.state.load(Ordering::Relaxed);
        loop {
            if !live(state, ticket) {
                return None;
            }
            // Acquire (success): pairs with insert's Release store (value visible). Relaxed
            // (failure): we retry.
            match entry.state.compare_exchange_weak(
                state,
                state | REMOVING,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(s) => {
                    state = s;
                    backoff.spin();
                }
            }
        }
        backoff.reset();
        while state & READERS != 0 {
            backoff.snooze();
            // Acquire: pairs with each reader's Release `fetch_sub`, so their reads of the value
            // happen-before we move it out.
            state = entry.state.load(Ordering::Acquire);
        }
        // SAFETY: REMOVING is ours (CAS), no reader is inside and none can enter; the value was
        // written by insert (Acquire above) and is moved out exactly once.
        let value = entry.value.with(|p| unsafe { (*p).assume_init_read() });
        let generation = ((state >> GEN_SHIFT) as u32).wrapping_add(1);
        // Release: only we write `state` now (every other writer CASes on a live state, which
        // this is not); the Release CAS in `push_free` publishes it with the rest.
        entry
            .state
            .store(u64::from(generation) << GEN_SHIFT, Ordering::Release);
        self.push_free(ticket.index);
        Some(value)
    }

    /// Returns slot `index` to the free list.
    fn push_free(&self, index: u32) {
        let entry = &self.entries[index as usize];
        let mut backoff = Backoff::new();
        // Relaxed: a guess; the CAS validates it.
        let mut head = self.free.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release CAS below.
            entry.next.store(head as u32, Ordering::Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            // Release: publishes `next`, the bumped generation and our read of the old value to
            // the Acquire load/CAS of `free` in `insert`. Relaxed (failure): we retry.
            match self.free.compare_exchange_weak(
                head,
                tag << 32 | u64::from(index),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(h) => {
                    head = h;
                    backoff.spin();
                }
            }
        }
    }
}

impl<V> Drop for RequestTable<V> {
    fn drop(&mut self) {
        crate::drop_values(self, |t| {
            for entry in t.entries.iter() {
                // Relaxed: `&mut self`; whoever gave us exclusive access synchronized.
                let state = entry.state.load(Ordering::Relaxed);
                if state & OCCUPIED != 0 {
                    // Relaxed: as above. Cleared before the drop, so a rerun after a panicking
                    // drop skips this entry.
                    entry.state.store(state & !OCCUPIED, Ordering::Relaxed);
                    // SAFETY: occupied and not yet moved out (remove clears OCCUPIED after
                    // moving), and now marked free: dropped exactly once here, with no other
                    // access possible.
                    entry.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
                }
            }
        });
    }
}

impl<V> fmt::Debug for RequestTable<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}
