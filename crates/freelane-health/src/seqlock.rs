//! [`SeqLock`]: a sequence lock whose payload is stored in atomic words (no racy reads).

use std::fmt;
use std::marker::PhantomData;

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
/// - Readers never write shared memory, so they never delay writers. A read is wait-free when
///   no writer is active and lock-free otherwise (it retries only because a write happened).
///   Writers wait only for each other.
/// - If an `update` closure panics, the record keeps its previous value and the lock is
///   released (the version still advances).
///
/// # Implementation
/// The sequence number and the record's bytes live together in one heap block of 64-byte
/// aligned lines of `AtomicU64` words: word 0 is the sequence, words `1..=WORDS` hold the
/// record, 8 bytes per word (native endianness, the last word zero-padded). One allocation
/// keeps the sequence next to the first payload words (a 56-byte record shares one cache line
/// with its sequence); the block is sized at construction because array lengths cannot depend on
/// `size_of::<T>()` in stable generic code, and loom's atomics cannot be transmuted from plain
/// memory. All loops run over the constant `WORDS`, so they unroll. `T: Pod` makes every byte
/// pattern a valid `T`, so a reader rebuilds the value from the words it loaded. The sequence
/// number is even when no write is in progress.
///
/// Writer: CAS the sequence from even `s` to `s + 1` (Acquire), `fence(Release)`, store the
/// words (Relaxed), store `s + 2` (Release). Reader: load the sequence (Acquire; retry while
/// odd), load the words (Relaxed), `fence(Acquire)`, reload the sequence (Relaxed) and retry if
/// it changed. If a reader's Relaxed load observes any word of a write in progress, its
/// Acquire fence synchronizes with that writer's Release fence, so the writer's odd sequence
/// store happens-before the reader's reload, which therefore sees a different sequence and
/// retries. If the reload equals the first load, no write overlapped and the Acquire load of
/// the first sequence made the last complete write's words visible. This is Boehm's
/// fence-based recipe ("Can seqlocks get along with programming language memory models?");
/// every access is atomic, so there is no data race in the Rust memory model.
pub struct SeqLock<T> {
    /// Word 0: the sequence (even: stable; odd: a writer is storing the words). Words
    /// `1..=WORDS`: the record's bytes, 8 per word, native endianness, zero-padded at the end.
    lines: Box<[Line]>,
    _marker: PhantomData<T>,
}

/// Eight words on one cache line.
#[repr(align(64))]
struct Line([AtomicU64; 8]);

impl<T> SeqLock<T> {
    /// The sequence word.
    #[inline(always)]
    fn seq(&self) -> &AtomicU64 {
        &self.lines[0].0[0]
    }
}

impl<T: Pod> SeqLock<T> {
    /// Words needed for a `T`.
    const WORDS: usize = std::mem::size_of::<T>().div_ceil(8);
    /// Lines holding the sequence word and the payload words.
    const LINES: usize = (Self::WORDS + 1).div_ceil(8);

    /// A seqlock holding `value` (version 0).
    pub fn new(value: T) -> Self {
        let lines = (0..Self::LINES)
            .map(|_| Line(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        let lock = Self {
            lines,
            _marker: PhantomData,
        };
        lock.store_words(&value);
        lock
    }

    /// The lines as a slice of constant length, so that indexing below needs no bounds checks.
    #[inline(always)]
    fn lines(&self) -> &[Line] {
        &self.lines[..Self::LINES]
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
        // Acquire: pairs with the Release store of the even sequence in `unlock`, so the words
        // of the write that stored `s1` (and all earlier ones) are visible to the loads below.
        let s1 = self.seq().load(Ordering::Acquire);
        if s1 & 1 == 1 {
            return None;
        }
        let mut value = T::zeroed();
        self.load_words(&mut value);
        // Acquire: if any word load above read a value stored by a writer that has since
        // started (after `s1`), this fence synchronizes with that writer's Release fence in
        // `lock`, so its odd sequence store is visible to the reload below.
        fence(Ordering::Acquire);
        // Relaxed: ordered after the word loads by the fence above.
        let s2 = self.seq().load(Ordering::Relaxed);
        (s1 == s2).then_some((value, s1))
    }

    /// The version of the last completed write (even), or odd while a write is in progress.
    pub fn version(&self) -> u64 {
        // Acquire: pairs with `unlock`'s Release store, like the first load of a read.
        self.seq().load(Ordering::Acquire)
    }

    /// Replaces the record with `value`.
    pub fn write(&self, value: T) {
        let guard = self.lock();
        self.store_words(&value);
        drop(guard);
    }

    /// Atomically applies `f` to the record (a read-modify-write under the writer lock) and
    /// returns what `f` returns. `f` runs while other writers wait, so keep it short; readers
    /// are not delayed (they keep seeing the previous record until the new one is complete).
    /// If `f` panics the record is unchanged and the lock is released.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let guard = self.lock();
        let mut value = T::zeroed();
        // Holding the writer lock: these Relaxed loads see the latest words, because the lock's
        // Acquire CAS synchronized with the previous writer's Release unlock.
        self.load_words(&mut value);
        let r = f(&mut value);
        self.store_words(&value);
        drop(guard);
        r
    }

    /// Takes the writer lock: the sequence goes from even `s` to `s + 1`.
    fn lock(&self) -> WriteGuard<'_, T> {
        let mut backoff = Backoff::new();
        loop {
            // Relaxed: only a hint whether to try the CAS; the CAS below validates it.
            let s = self.seq().load(Ordering::Relaxed);
            if s & 1 == 0 {
                match self.seq().compare_exchange_weak(
                    s,
                    s + 1,
                    // Acquire: pairs with the previous writer's Release store in `unlock`, so
                    // its word stores happen-before ours (update() reads the latest record and
                    // no update is lost).
                    Ordering::Acquire,
                    // Relaxed: failure just retries.
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // Release: orders the odd sequence store above before the word stores
                        // that follow; pairs with the reader's Acquire fence in `try_read`.
                        fence(Ordering::Release);
                        return WriteGuard { lock: self, seq: s };
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
        let lines = self.lines();
        let bytes = bytemuck::bytes_of(value);
        for i in 0..Self::WORDS {
            let mut buf = [0u8; 8];
            let chunk = &bytes[i * 8..bytes.len().min(i * 8 + 8)];
            buf[..chunk.len()].copy_from_slice(chunk);
            let w = i + 1;
            // Relaxed: published by the Release fence before (for racing readers) and the
            // Release unlock after (for readers that start later).
            lines[w / 8].0[w % 8].store(u64::from_ne_bytes(buf), Ordering::Relaxed);
        }
    }

    /// Loads the words into `value`'s bytes (Relaxed; validated by the sequence re-check).
    #[inline(always)]
    fn load_words(&self, value: &mut T) {
        let lines = self.lines();
        let bytes = bytemuck::bytes_of_mut(value);
        let len = bytes.len();
        for i in 0..Self::WORDS {
            let w = i + 1;
            // Relaxed: ordered by the Acquire sequence load before and the Acquire fence after.
            let buf = lines[w / 8].0[w % 8].load(Ordering::Relaxed).to_ne_bytes();
            let end = len.min(i * 8 + 8);
            bytes[i * 8..end].copy_from_slice(&buf[..end - i * 8]);
        }
    }
}

/// Releases the writer lock on drop (also when an `update` closure panics).
struct WriteGuard<'a, T> {
    lock: &'a SeqLock<T>,
    seq: u64,
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // Release: publishes this write's word stores to readers whose Acquire load of the
        // sequence sees `seq + 2`, and to the next writer's Acquire CAS.
        self.lock.seq().store(self.seq + 2, Ordering::Release);
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
            .field("version", &self.seq().load(Ordering::Relaxed))
            .field("lines", &self.lines.len())
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
    fn panicking_update_leaves_the_record_and_releases_the_lock() {
        let l = SeqLock::new(7u32);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            l.update(|v| {
                *v = 99;
                panic!("boom");
            })
        }));
        assert!(r.is_err());
        assert_eq!(l.read(), 7);
        assert_eq!(l.version() & 1, 0);
        l.write(8);
        assert_eq!(l.read(), 8);
    }
}
