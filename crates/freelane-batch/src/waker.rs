//! A lock-free single-slot waker cell: the sleep/wake handoff of a lane.
//!
//! This is the well-known `AtomicWaker` protocol (as in `futures-util` and tokio), written against
//! the `freelane-sync` switch so loom can check it. One task (the lane's consumer) registers the
//! waker it wants woken; any number of producers call [`AtomicWaker::wake`]. Neither side ever
//! blocks or takes a lock: a register racing a wake resolves to "the registered waker is woken".
use std::fmt;
use std::task::Waker;

use freelane_sync::atomic::{AtomicUsize, Ordering};
use freelane_sync::cell::UnsafeCell;

/// Idle: no one is touching the slot.
const WAITING: usize = 0;
/// A register() is writing the slot.
const REGISTERING: usize = 0b01;
/// A wake() is taking the slot (or asked the concurrent register to wake).
const WAKING: usize = 0b10;

/// A waker slot that producers can wake without a lock.
pub(crate) struct AtomicWaker {
    state: AtomicUsize,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the `waker` cell is only accessed by the thread that moved `state` from WAITING to
// REGISTERING (register) or from WAITING to WAKING (wake); those transitions are exclusive, so no
// two threads touch the cell at once. `Waker` is Send + Sync.
unsafe impl Send for AtomicWaker {}
// SAFETY: as above: every cell access is guarded by the exclusive state transitions.
unsafe impl Sync for AtomicWaker {}

impl AtomicWaker {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicUsize::new(WAITING),
            waker: UnsafeCell::new(None),
        }
    }

    /// Stores `waker` to be woken by the next [`wake`](Self::wake). If a wake is running
    /// concurrently, `waker` is woken right here instead, so a wake is never lost.
    pub(crate) fn register(&self, waker: &Waker) {
        // Acquire: on success, pairs with the Release in wake()/register() that last returned the
        // state to WAITING, so their accesses to the cell happen-before ours.
        match self.state.compare_exchange(
            WAITING,
            REGISTERING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // SAFETY: we moved the state WAITING -> REGISTERING, which gives us exclusive
                // access to the cell until we leave REGISTERING (wake() only touches the cell
                // after it moves WAITING -> WAKING itself).
                self.waker.with_mut(|slot| unsafe {
                    match &*slot {
                        Some(old) if old.will_wake(waker) => {}
                        _ => *slot = Some(waker.clone()),
                    }
                });
                // AcqRel: Release publishes the stored waker to the wake() that next moves the
                // state to WAKING (its Acquire fetch_or); Acquire (on failure) pairs with a
                // concurrent wake()'s fetch_or so we see that it wanted to wake.
                match self.state.compare_exchange(
                    REGISTERING,
                    WAITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {}
                    Err(_actual) => {
                        // A wake() ran while we held the slot (state is REGISTERING | WAKING);
                        // it left the slot to us, so we take the waker and wake it ourselves.
                        // SAFETY: the state still has REGISTERING set by us; wake() does not
                        // touch the cell while REGISTERING is set.
                        let w = self.waker.with_mut(|slot| unsafe { (*slot).take() });
                        // AcqRel: Release returns the slot to WAITING for the next register or
                        // wake (their Acquire); Acquire keeps our cell access above ordered.
                        self.state.swap(WAITING, Ordering::AcqRel);
                        if let Some(w) = w {
                            w.wake();
                        }
                    }
                }
            }
            Err(WAKING) => {
                // A wake() is in progress on the previous waker: wake this one too so the
                // caller re-polls and sees whatever that wake was about.
                waker.wake_by_ref();
                freelane_sync::hint::spin_loop();
            }
            Err(_) => {
                // A concurrent register(): a caller bug (one consumer per lane) but harmless;
                // the other registration wins and we wake ours so it re-polls.
                waker.wake_by_ref();
            }
        }
    }

    /// Wakes the registered waker, if any. Never blocks; safe from any thread.
    pub(crate) fn wake(&self) {
        if let Some(w) = self.take() {
            w.wake();
        }
    }

    fn take(&self) -> Option<Waker> {
        // AcqRel: Acquire pairs with register()'s Release (REGISTERING -> WAITING) so the stored
        // waker is visible; Release lets a concurrent register() (its failing Acquire CAS) see
        // that we wanted to wake.
        match self.state.fetch_or(WAKING, Ordering::AcqRel) {
            WAITING => {
                // SAFETY: we moved WAITING -> WAKING, so we have exclusive access to the cell
                // until we clear WAKING below.
                let w = self.waker.with_mut(|slot| unsafe { (*slot).take() });
                // Release: returns the cell to the next register()'s Acquire CAS.
                self.state.fetch_and(!WAKING, Ordering::Release);
                w
            }
            // REGISTERING (| WAKING): the registering thread will see WAKING and wake its waker.
            // WAKING: another wake() is taking the waker right now; one wake suffices.
            _ => None,
        }
    }
}

impl fmt::Debug for AtomicWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicWaker").finish_non_exhaustive()
    }
}
