//! [`SeqLock`]: a sequence lock whose payload is stored in atomic words (no racy reads).

use std::fmt;

use bytemuck::Pod;
use freelane_sync::atomic::{fence, AtomicU64, Ordering};
use freelane_sync::Backoff;

/// A sequence lock over a plain-old-data record: readers copy the record without locking and
/// retry if a writer was active; writers exclude each other and never wait for readers.
///
/// # Guarantees
/// - [`read`](Self::read) never returns a torn value: it returns a record exactly as one
///   [`write`](Self::write)/[`update`](Self::update) (or [`new`](Self::new)) left it.
/// - Reads are linearizable and never go backwards: a read that starts after another read (or
///   write) finished returns that record or a newer one; the [version](Self::read_versioned)
///   only grows.
/// - [`update`](Self::update) is an atomic read-modify-write: concurrent updates never lose each
///   other's changes.
/// - Readers never write shared memory, so they never delay writers. Readers never wait for
///   an `update` closure either: the closure runs on a copy, and readers are held off only
///   while the new record's words are stored (one store per 8 bytes). A read is wait-free when
///   no writer is in that window; a reader retries only because a write happened meanwhile.
///   (As with every seqlock, a writer descheduled in the middle of storing the words holds
///   readers until it runs again: reads are not lock-free in the strict sense.) Writers wait
///   only for each other.
/// - If an `update` closure panics, the record keeps its previous value, the version does not
///   change and the writer lock is released.
/// - A closure may [`read`](Self::read) the same lock (it sees the record it is updating, as it
///   was before the update) but must not `write` or `update` it: that waits for itself forever.
///
/// # Implementation
/// The sequence word and the record live inline in the `SeqLock`, which is 64-byte aligned:
/// the sequence first, then the record's bytes followed by 8 zero bytes, accessed only as
/// `WORDS` `AtomicU64` words (8 bytes each, native endianness; the last word takes the zero
/// bytes after a record whose size is not a multiple of 8). A 56-byte record shares one cache
/// line with its sequence. Array lengths cannot depend on `size_of::<T>()` in stable generic
/// code, so the words are made with `AtomicU64::from_ptr` over that inline memory, which is
/// written non-atomically only by `new`, before the lock is shared. (The words were first a
/// separate heap block of atomics: the extra pointer load and bounds checks made reads 0.8x
/// the `seqlock` crate's with several readers.) Under loom, whose atomics cannot be made from
/// plain memory, the words are a boxed slice of loom atomics; the protocol code is the same.
/// All loops run over the constant `WORDS`, so they unroll. `T: Pod` makes every byte pattern
/// a valid `T` and has no padding bytes, so a reader rebuilds the value from the words it
/// loaded and every byte a word covers is initialised.
///
/// The sequence word is `4 * writes + LOCKED + STORING`: `LOCKED` (bit 1) is the writers' lock
/// and readers ignore it; `STORING` (bit 0) is set only while the lock holder stores the words.
/// The public version is `2 * writes`, plus one while storing.
///
/// Writer (`update`): CAS the sequence from `s` (both bits clear) to `s | LOCKED` (Acquire),
/// load the words (Relaxed: the lock holder sees the latest), run the closure on the copy,
/// store `s | LOCKED | STORING` (Relaxed), `fence(Release)`, store the words (Relaxed), store
/// `s + 4` (Release). A panicking closure stores `s` back instead. `write` has no closure, so
/// its CAS sets both bits at once (then the fence and the stores as above). Reader: load the sequence (Acquire;
/// retry while `STORING`), load the words (Relaxed), `fence(Acquire)`, reload the sequence
/// (Relaxed) and retry unless it equals the first load up to `LOCKED`. If a reader's Relaxed
/// load observes any word of a write in progress, its Acquire fence synchronizes with that
/// writer's Release fence, so the writer's `STORING` store happens-before the reader's reload,
/// which therefore sees `STORING` or a later count, and retries. If the reload matches, no
/// store of words overlapped, and the Acquire load of the first sequence (which reads the last
/// unlock's Release store or the `LOCKED` CAS that continues its release sequence) made the
/// last complete write's words visible. This is Boehm's
/// fence-based recipe ("Can seqlocks get along with programming language memory models?");
/// every access is atomic, so there is no data race in the Rust memory model.
#[repr(C, align(64))]
pub struct SeqLock<T> {
    /// `4 * writes + LOCKED + STORING` (see the type docs).
    seq: AtomicU64,
    /// The record's bytes, 8 per word (see `word`).
    data: Data<T>,
}

// SAFETY: the lock owns a `T` (moved in by `new` and `write`, copied out by reads), so it may
// move to another thread when `T` may. Shared use copies `T`s between threads through atomic
// words only (never a `&T`), hence `T: Send` for `Sync`. No `unsafe` is needed for these under
// loom, but the bounds are the same in both builds.
unsafe impl<T: Send> Send for SeqLock<T> {}
// SAFETY: see above; every shared access to `data` is an atomic word load or store. (As for
// crossbeam's `AtomicCell`, `T: Send` is what sharing needs: values cross threads only as
// copies. Before the words were inline this was `T: Sync`, through `PhantomData<T>`.)
unsafe impl<T: Send> Sync for SeqLock<T> {}
// The `UnsafeCell` would make the lock `!RefUnwindSafe`; a panic never leaves it broken (a
// panicking `update` closure leaves the record and the version unchanged and releases the
// lock), so it is as unwind-safe as `T`, as it was with the words on the heap.
impl<T: std::panic::RefUnwindSafe> std::panic::RefUnwindSafe for SeqLock<T> {}
impl<T: std::panic::UnwindSafe> std::panic::UnwindSafe for SeqLock<T> {}

/// The record followed by 8 zero bytes, so that the word covering the record's last bytes
/// lies inside initialised memory. `repr(C)`: `zeros` directly follows `value`.
#[cfg(not(freelane_loom))]
#[repr(C)]
struct Padded<T> {
    value: T,
    zeros: [u8; 8],
}

/// The record's storage: inline memory accessed as atomic words (see the type docs).
#[cfg(not(freelane_loom))]
#[repr(transparent)]
struct Data<T>(std::cell::UnsafeCell<Padded<T>>);

/// The record's storage under loom: one loom atomic per word.
#[cfg(freelane_loom)]
struct Data<T>(Box<[AtomicU64]>, std::marker::PhantomData<T>);

/// Sequence bit: a writer is storing the words (readers retry).
const STORING: u64 = 1;
/// Sequence bit: a writer holds the lock (readers ignore it; other writers wait).
const LOCKED: u64 = 2;
/// Sequence increment per completed write.
const WRITE: u64 = 4;

/// The public version of a sequence word: twice the completed writes, plus one while storing.
#[inline(always)]
fn version_of(seq: u64) -> u64 {
    (seq / WRITE) * 2 + (seq & STORING)
}

impl<T> SeqLock<T> {
    /// The sequence word.
    #[inline(always)]
    fn seq(&self) -> &AtomicU64 {
        &self.seq
    }
}

impl<T: Pod> SeqLock<T> {
    /// Words needed for a `T`.
    const WORDS: usize = std::mem::size_of::<T>().div_ceil(8);
    /// A seqlock holding `value` (version 0).
    #[cfg(not(freelane_loom))]
    pub fn new(value: T) -> Self {
        Self {
            seq: AtomicU64::new(0),
            data: Data(std::cell::UnsafeCell::new(Padded {
                value,
                zeros: [0; 8],
            })),
        }
    }

    /// A seqlock holding `value` (version 0).
    #[cfg(freelane_loom)]
    pub fn new(value: T) -> Self {
        let lock = Self {
            seq: AtomicU64::new(0),
            data: Data(
                (0..Self::WORDS).map(|_| AtomicU64::new(0)).collect(),
                std::marker::PhantomData,
            ),
        };
        lock.store_words(&value);
        lock
    }

    /// Word `i` (`i < WORDS`) of the record: its bytes `8 * i .. 8 * i + 8`.
    #[cfg(not(freelane_loom))]
    #[inline(always)]
    fn word(&self, i: usize) -> &AtomicU64 {
        const {
            // The words need 8-byte alignment: `data` follows the 8-byte sequence in a
            // `repr(C)` struct, so its offset is 8 or a multiple of `T`'s (larger) alignment.
            assert!(std::mem::offset_of!(Self, data) % 8 == 0);
            // Every word lies inside `Padded<T>`: 8 * WORDS < size_of::<T>() + 8.
            assert!(8 * Self::WORDS <= std::mem::size_of::<Padded<T>>());
        }
        assert!(i < Self::WORDS);
        let base = self.data.0.get().cast::<u64>();
        // SAFETY: `base + i` is 8-byte aligned (the `data` offset is, see above, and the
        // `SeqLock` is 64-byte aligned) and in bounds of `Padded<T>` (`i < WORDS`, checked
        // above), and it is derived from the `UnsafeCell`, so shared mutation through it is
        // allowed. The 8 bytes are initialised: `T: Pod` has no padding bytes and the last word
        // ends inside `zeros`. After `new` wrote the `Padded<T>` (before the lock could be
        // shared, so that write happens-before every access here) the memory is only accessed
        // through these `AtomicU64`s, all of the same size and alignment, for no longer than
        // `&self` lives.
        unsafe { AtomicU64::from_ptr(base.add(i)) }
    }

    /// Word `i` (`i < WORDS`) of the record under loom.
    #[cfg(freelane_loom)]
    #[inline(always)]
    fn word(&self, i: usize) -> &AtomicU64 {
        &self.data.0[i]
    }

    /// Copies the current record. Never torn; retries (with backoff) while a writer is active.
    #[inline]
    pub fn read(&self) -> T {
        self.read_versioned().0
    }

    /// Copies the current record with its version (even; grows by 2 per completed write).
    #[inline]
    pub fn read_versioned(&self) -> (T, u64) {
        // The uncontended attempt stays small enough to inline into the caller; the retry loop
        // is out of line.
        match self.try_read_versioned() {
            Some(v) => v,
            None => self.read_contended(),
        }
    }

    /// The retry loop of [`read_versioned`](Self::read_versioned), after a failed attempt.
    #[cold]
    #[inline(never)]
    fn read_contended(&self) -> (T, u64) {
        let mut backoff = Backoff::new();
        loop {
            backoff.snooze();
            if let Some(v) = self.try_read_versioned() {
                return v;
            }
        }
    }

    /// One read attempt: `None` if a writer was active during it.
    #[inline]
    pub fn try_read(&self) -> Option<T> {
        self.try_read_versioned().map(|(v, _)| v)
    }

    /// One read attempt with the version: `None` if a writer was active during it.
    #[inline(always)]
    pub fn try_read_versioned(&self) -> Option<(T, u64)> {
        // Acquire: pairs with the Release store that ended the last write (`WriteGuard::drop`;
        // a later `LOCKED` CAS continues its release sequence), so the words of that write (and
        // all earlier ones) are visible to the loads below.
        let s1 = self.seq().load(Ordering::Acquire);
        if s1 & STORING != 0 {
            return None;
        }
        let mut value = T::zeroed();
        self.load_words(&mut value);
        // Acquire: if any word load above read a value stored by a writer that has since
        // started (after `s1`), this fence synchronizes with that writer's Release fence (in
        // `lock` or `publish`, after it marked the sequence storing), so that storing mark is
        // visible to the reload below.
        fence(Ordering::Acquire);
        // Relaxed: ordered after the word loads by the fence above.
        let s2 = self.seq().load(Ordering::Relaxed);
        ((s1 | LOCKED) == (s2 | LOCKED)).then_some((value, version_of(s1)))
    }

    /// The version of the last completed write (even: twice the number of writes), or odd while
    /// a writer is storing a new record.
    pub fn version(&self) -> u64 {
        // Acquire: pairs with the Release store that ended the last write, like a read's first
        // load.
        version_of(self.seq().load(Ordering::Acquire))
    }

    /// Replaces the record with `value`.
    pub fn write(&self, value: T) {
        // Nothing runs between taking the lock and storing: set both bits in the one CAS.
        self.lock(STORING).publish(&value);
    }

    /// Atomically applies `f` to the record (a read-modify-write under the writer lock) and
    /// returns what `f` returns. `f` runs on a copy while other writers wait, so keep it short;
    /// readers are not delayed by it (they see the previous record until the new one is
    /// stored). If `f` panics the record and the version are unchanged and the lock is
    /// released. `f` may read this lock but must not write or update it (that never returns).
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let guard = self.lock(0);
        let mut value = T::zeroed();
        // Holding the writer lock: these Relaxed loads see the latest words, because the lock's
        // Acquire CAS synchronized with the previous writer's Release store that ended its
        // write.
        self.load_words(&mut value);
        let r = f(&mut value);
        guard.publish(&value);
        r
    }

    /// Takes the writer lock: the sequence goes from `s` to `s | LOCKED | storing` (`storing`
    /// is `STORING` when the words are stored right away, as in `write`, else 0; readers ignore
    /// `LOCKED`).
    fn lock(&self, storing: u64) -> WriteGuard<'_, T> {
        let mut backoff = Backoff::new();
        loop {
            // Relaxed: only a hint whether to try the CAS; the CAS below validates it.
            let s = self.seq().load(Ordering::Relaxed);
            if s & LOCKED == 0 {
                debug_assert_eq!(s & STORING, 0, "STORING is only set under the lock");
                match self.seq().compare_exchange_weak(
                    s,
                    s | LOCKED | storing,
                    // Acquire: pairs with the previous writer's Release store that ended its
                    // write, so its word stores happen-before our loads and stores (update()
                    // reads the latest record and no update is lost).
                    Ordering::Acquire,
                    // Relaxed: failure just retries.
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        if storing != 0 {
                            // Release: orders the STORING set by the CAS before the word stores
                            // that follow; pairs with the reader's Acquire fence.
                            fence(Ordering::Release);
                        }
                        return WriteGuard {
                            lock: self,
                            seq: s,
                            storing: storing != 0,
                            published: false,
                        };
                    }
                    Err(_) => backoff.spin(),
                }
            } else {
                backoff.snooze();
            }
        }
    }

    /// Stores `value`'s bytes into the words (Relaxed; ordered by the surrounding lock).
    #[inline(always)]
    fn store_words(&self, value: &T) {
        let bytes = bytemuck::bytes_of(value);
        for i in 0..Self::WORDS {
            let mut buf = [0u8; 8];
            let chunk = &bytes[i * 8..bytes.len().min(i * 8 + 8)];
            buf[..chunk.len()].copy_from_slice(chunk);
            // Relaxed: published by the Release fence before (for racing readers) and the
            // Release unlock after (for readers that start later).
            self.word(i)
                .store(u64::from_ne_bytes(buf), Ordering::Relaxed);
        }
    }

    /// Loads the words into `value`'s bytes (Relaxed; validated by the sequence re-check).
    #[inline(always)]
    fn load_words(&self, value: &mut T) {
        let bytes = bytemuck::bytes_of_mut(value);
        let len = bytes.len();
        for i in 0..Self::WORDS {
            // Relaxed: ordered by the Acquire sequence load before and the Acquire fence after.
            let buf = self.word(i).load(Ordering::Relaxed).to_ne_bytes();
            let end = len.min(i * 8 + 8);
            bytes[i * 8..end].copy_from_slice(&buf[..end - i * 8]);
        }
    }
}

/// The writer lock: stores a new record with `publish`; releases the lock on drop (also when an
/// `update` closure panics, leaving the record and the version as they were).
struct WriteGuard<'a, T> {
    lock: &'a SeqLock<T>,
    /// The sequence before the lock was taken (`LOCKED` and `STORING` clear).
    seq: u64,
    /// Whether the lock CAS already set `STORING` (and fenced).
    storing: bool,
    /// Whether `publish` stored a new record.
    published: bool,
}

impl<T: Pod> WriteGuard<'_, T> {
    /// Stores `value` as the new record and releases the lock.
    fn publish(mut self, value: &T) {
        if !self.storing {
            // Relaxed: ordered before the word stores by the fence below.
            self.lock
                .seq()
                .store(self.seq | LOCKED | STORING, Ordering::Relaxed);
            // Release: orders the STORING store above before the word stores that follow;
            // pairs with the reader's Acquire fence in `try_read_versioned`.
            fence(Ordering::Release);
        }
        self.lock.store_words(value);
        self.published = true;
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        let next = if self.published {
            self.seq + WRITE
        } else {
            self.seq
        };
        // Release: publishes this write's word stores to readers whose Acquire load of the
        // sequence sees `next`, and (with everything this writer saw) to the next writer's
        // Acquire CAS.
        self.lock.seq().store(next, Ordering::Release);
    }
}

impl<T: Pod + Default> Default for SeqLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: Pod> From<T> for SeqLock<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T> fmt::Debug for SeqLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeqLock")
            // Relaxed: diagnostic only.
            .field("version", &version_of(self.seq().load(Ordering::Relaxed)))
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(freelane_loom)))]
mod tests {
    use super::*;
    use bytemuck::{Pod, Zeroable};

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    struct Odd {
        a: u8,
        b: [u8; 4],
    }

    #[repr(C, align(16))]
    #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    struct Wide {
        x: u128,
        y: [u64; 3],
        z: u64,
    }

    #[test]
    fn read_returns_what_was_written_for_odd_sizes() {
        let l = SeqLock::new(Odd {
            a: 1,
            b: [2, 3, 4, 5],
        });
        assert_eq!(
            l.read(),
            Odd {
                a: 1,
                b: [2, 3, 4, 5]
            }
        );
        l.write(Odd {
            a: 9,
            b: [8, 7, 6, 5],
        });
        assert_eq!(
            l.read(),
            Odd {
                a: 9,
                b: [8, 7, 6, 5]
            }
        );
        let w = Wide {
            x: u128::MAX - 7,
            y: [1, 2, 3],
            z: 4,
        };
        let l = SeqLock::new(w);
        assert_eq!(l.read(), w);
        let z = SeqLock::new(());
        z.write(());
        assert_eq!(z.version(), 2);
    }

    #[test]
    fn update_is_a_read_modify_write_and_bumps_the_version() {
        let l = SeqLock::new([0u64; 3]);
        assert_eq!(l.read_versioned().1, 0);
        let r = l.update(|v| {
            v[1] += 5;
            v[1] * 2
        });
        assert_eq!(r, 10);
        assert_eq!(l.read_versioned(), ([0, 5, 0], 2));
        assert_eq!(l.try_read(), Some([0, 5, 0]));
    }

    #[test]
    fn readers_do_not_wait_for_an_update_closure() {
        let l = std::sync::Arc::new(SeqLock::new([1u64, 1]));
        let (inside_tx, inside_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let w = std::sync::Arc::clone(&l);
        let writer = std::thread::spawn(move || {
            w.update(|v| {
                inside_tx.send(()).unwrap();
                // Hold the closure open until the reader has read.
                done_rx.recv().unwrap();
                *v = [2, 2];
            })
        });
        inside_rx.recv().unwrap();
        // The closure is running: a read succeeds at once with the previous record.
        assert_eq!(l.try_read_versioned(), Some(([1, 1], 0)));
        assert_eq!(l.version(), 0);
        done_tx.send(()).unwrap();
        writer.join().unwrap();
        assert_eq!(l.read_versioned(), ([2, 2], 2));
    }

    #[test]
    fn an_update_closure_may_read_its_own_lock() {
        let l = SeqLock::new(5u64);
        let seen = l.update(|v| {
            *v = 6;
            l.read()
        });
        assert_eq!(seen, 5);
        assert_eq!(l.read_versioned(), (6, 2));
    }

    #[test]
    fn panicking_update_leaves_the_record_and_releases_the_lock() {
        let l = SeqLock::new(7u32);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            l.update(|v| {
                *v = 99;
                panic!("boom");
            })
        }));
        assert!(r.is_err());
        assert_eq!(l.read_versioned(), (7, 0));
        assert_eq!(l.version(), 0);
        l.write(8);
        assert_eq!(l.read(), 8);
    }
}
