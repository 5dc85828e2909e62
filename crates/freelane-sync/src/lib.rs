//! The one std/loom switch of the freelane workspace.
//!
//! Every freelane data structure imports its atomics, `UnsafeCell`, `Arc`, threads and spin hints
//! from this crate instead of from `std`. Normally these are the `std` types (zero cost: the
//! wrappers here are `#[inline(always)]` and `repr(transparent)`); when the workspace is compiled
//! with `RUSTFLAGS="--cfg freelane_loom"` they are [loom]'s model-checked replacements, so the
//! same source can be explored exhaustively by the models in `loom-tests/`.
//!
//! We gate on the namespaced `freelane_loom` cfg rather than the conventional `cfg(loom)`, because
//! `cfg(loom)` would also switch tokio and other dependencies into their own loom modes.
//!
//! # What is here
//! - [`atomic`]: `AtomicUsize`, `AtomicU64`, `AtomicBool`, `AtomicPtr`, `fence`, `Ordering`, ...
//! - [`cell::UnsafeCell`]: loom's closure-based API (`with`, `with_mut`) on both sides, so that
//!   loom can check every access to the cell for races.
//! - [`sync::Arc`], [`sync::Mutex`], [`sync::Condvar`] (the latter two only for slow paths that
//!   park a thread; never on a hot path).
//! - [`thread`]: `spawn`, `yield_now`, `current`, `park`.
//! - [`hint::spin_loop`]: under loom a yield, since loom must see a spinning thread give way.
//! - [`Backoff`]: exponential spinning then yielding for contended retry loops; under loom every
//!   step yields so models of spin loops terminate.
//! - [`CachePadded`]: re-exported from crossbeam-utils (pure alignment, identical under loom).
//! - [`LOOM`]: `true` when compiled for loom, so structures can shrink their sizes
//!   (`const SEGMENT: usize = if freelane_sync::LOOM { 2 } else { 1024 };`).
//!
//! [loom]: https://docs.rs/loom
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub use crossbeam_utils::CachePadded;

/// `true` when compiled with `--cfg freelane_loom`, for shrinking sizes under the model checker.
pub const LOOM: bool = cfg!(freelane_loom);

/// Atomic types and fences: `std::sync::atomic`, or loom's under `--cfg freelane_loom`.
pub mod atomic {
    #[cfg(freelane_loom)]
    pub use loom::sync::atomic::{
        fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
        Ordering,
    };
    #[cfg(not(freelane_loom))]
    pub use std::sync::atomic::{
        fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
        Ordering,
    };
}

/// Shared ownership and the (slow-path only) blocking primitives.
pub mod sync {
    #[cfg(freelane_loom)]
    pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    #[cfg(not(freelane_loom))]
    pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};
}

/// Threads: `std::thread`, or loom's modelled threads.
pub mod thread {
    #[cfg(freelane_loom)]
    pub use loom::thread::{current, park, spawn, yield_now, JoinHandle, Thread};
    #[cfg(not(freelane_loom))]
    pub use std::thread::{current, park, spawn, yield_now, JoinHandle, Thread};
}

/// Spin-loop hints.
pub mod hint {
    /// Signals a spin-wait iteration. Under loom this yields to the scheduler instead, because a
    /// loom model of a spin loop only terminates if the spinning thread lets others run.
    #[inline(always)]
    pub fn spin_loop() {
        #[cfg(freelane_loom)]
        loom::thread::yield_now();
        #[cfg(not(freelane_loom))]
        std::hint::spin_loop();
    }
}

/// Interior mutability checked by loom.
pub mod cell {
    #[cfg(freelane_loom)]
    pub use loom::cell::UnsafeCell;

    /// `std::cell::UnsafeCell` with loom's closure-based access API.
    ///
    /// All access goes through [`with`](UnsafeCell::with) (shared, `*const T`) and
    /// [`with_mut`](UnsafeCell::with_mut) (exclusive, `*mut T`), so the very same code compiles
    /// against `loom::cell::UnsafeCell`, which tracks each access and reports races.
    #[cfg(not(freelane_loom))]
    #[derive(Debug, Default)]
    #[repr(transparent)]
    pub struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

    #[cfg(not(freelane_loom))]
    impl<T> UnsafeCell<T> {
        /// Wraps `value`.
        #[inline(always)]
        pub const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Unwraps the value.
        #[inline(always)]
        pub fn into_inner(self) -> T {
            self.0.into_inner()
        }
    }

    #[cfg(not(freelane_loom))]
    impl<T: ?Sized> UnsafeCell<T> {
        /// Calls `f` with a shared raw pointer to the contents. The caller's `unsafe` use of the
        /// pointer must not overlap a `with_mut` access from another thread.
        #[inline(always)]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Calls `f` with an exclusive raw pointer to the contents. The caller's `unsafe` use of
        /// the pointer must not overlap any other access from another thread.
        #[inline(always)]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// Exponential backoff for contended retry loops and short waits.
///
/// [`spin`](Backoff::spin) is for retrying a failed CAS (another thread made progress, try again
/// soon); [`snooze`](Backoff::snooze) is for waiting on another thread (spins a little, then yields
/// the time slice, which matters on oversubscribed machines). Under loom every step yields, so a
/// model of a wait loop terminates.
#[derive(Debug, Default)]
pub struct Backoff {
    step: u32,
}

impl Backoff {
    /// Spins `2^step` iterations up to this step, then [`snooze`](Self::snooze) starts yielding.
    const SPIN_LIMIT: u32 = 6;
    /// After this step [`is_completed`](Self::is_completed) says a blocking wait is advisable.
    const YIELD_LIMIT: u32 = 10;

    /// A fresh backoff.
    #[inline]
    pub const fn new() -> Self {
        Self { step: 0 }
    }

    /// Back to the shortest wait.
    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
    }

    /// Backs off after a lost race (e.g. a failed CAS); never yields the thread outside loom.
    #[inline]
    pub fn spin(&mut self) {
        #[cfg(freelane_loom)]
        loom::thread::yield_now();
        #[cfg(not(freelane_loom))]
        for _ in 0..1u32 << self.step.min(Self::SPIN_LIMIT) {
            std::hint::spin_loop();
        }
        if self.step <= Self::SPIN_LIMIT {
            self.step += 1;
        }
    }

    /// Backs off while waiting for another thread: spins first, then yields the time slice.
    #[inline]
    pub fn snooze(&mut self) {
        #[cfg(freelane_loom)]
        loom::thread::yield_now();
        #[cfg(not(freelane_loom))]
        if self.step <= Self::SPIN_LIMIT {
            for _ in 0..1u32 << self.step {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
        if self.step <= Self::YIELD_LIMIT {
            self.step += 1;
        }
    }

    /// `true` once the backoff has yielded enough that the caller should block (park) instead.
    #[inline]
    pub fn is_completed(&self) -> bool {
        self.step > Self::YIELD_LIMIT
    }
}

#[cfg(all(test, not(freelane_loom)))]
mod tests {
    use super::atomic::{AtomicUsize, Ordering};
    use super::cell::UnsafeCell;
    use super::sync::Arc;
    use super::{thread, Backoff};

    #[test]
    fn unsafe_cell_with_and_with_mut_reach_the_value() {
        let cell = UnsafeCell::new(41_u64);
        // SAFETY: single-threaded; no other access overlaps this exclusive one.
        cell.with_mut(|p| unsafe { *p += 1 });
        // SAFETY: single-threaded; no exclusive access is live.
        assert_eq!(cell.with(|p| unsafe { *p }), 42);
        assert_eq!(cell.into_inner(), 42);
    }

    #[test]
    fn backoff_completes_after_yield_limit_and_resets() {
        let mut b = Backoff::new();
        assert!(!b.is_completed());
        for _ in 0..=Backoff::YIELD_LIMIT {
            b.snooze();
        }
        assert!(b.is_completed());
        b.reset();
        assert!(!b.is_completed());
        // spin() alone never reaches the blocking advice.
        for _ in 0..100 {
            b.spin();
        }
        assert!(!b.is_completed());
    }

    #[test]
    fn backoff_waits_for_another_thread() {
        let flag = Arc::new(AtomicUsize::new(0));
        let f2 = Arc::clone(&flag);
        let t = thread::spawn(move || {
            // Release: publishes nothing but the flag itself; pairs with the Acquire load below.
            f2.store(1, Ordering::Release);
        });
        let mut b = Backoff::new();
        // Acquire: pairs with the Release store in the spawned thread.
        while flag.load(Ordering::Acquire) == 0 {
            b.snooze();
        }
        t.join().unwrap();
    }
}
