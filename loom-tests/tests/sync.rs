//! Models of freelane-sync's shim: the `UnsafeCell` wrapper and `Backoff` under loom.
#![cfg(freelane_loom)]

use freelane_sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use freelane_sync::cell::UnsafeCell;
use freelane_sync::sync::Arc;
use freelane_sync::{thread, Backoff};
use loom_tests::run_model;

struct Slot {
    ready: AtomicBool,
    value: UnsafeCell<u64>,
}

// SAFETY: access to `value` is handed over through `ready` (Release/Acquire), which the model checks.
unsafe impl Sync for Slot {}

/// A writer publishes a plain value through a Release flag; a reader that sees the flag reads it
/// through `UnsafeCell::with` while the writer's `with_mut` is ordered before: loom checks that the
/// cell accesses never overlap and that the reader sees the written value.
#[test]
fn unsafe_cell_publication_through_release_acquire() {
    run_model("sync::unsafe_cell_publication", || {
        let slot = Arc::new(Slot {
            ready: AtomicBool::new(false),
            value: UnsafeCell::new(0),
        });
        let s2 = Arc::clone(&slot);
        let writer = thread::spawn(move || {
            // SAFETY: the reader only touches `value` after observing `ready`, set below.
            s2.value.with_mut(|p| unsafe { *p = 7 });
            // Release: publishes the write above to the reader's Acquire load.
            s2.ready.store(true, Ordering::Release);
        });
        let mut backoff = Backoff::new();
        // Acquire: pairs with the writer's Release store, so the value write happens-before.
        while !slot.ready.load(Ordering::Acquire) {
            backoff.snooze();
        }
        // SAFETY: `ready` was observed with Acquire; the writer no longer touches `value`.
        let v = slot.value.with(|p| unsafe { *p });
        assert_eq!(v, 7);
        writer.join().unwrap();
    });
}

/// A CAS loop that can only succeed after another thread has made progress, retrying under
/// `Backoff::spin`: under loom `spin` yields, so loom runs the other thread and the loop ends
/// (without that yield loom explores the spinning thread forever and fails on its branch
/// limit). An earlier version of this model had two threads increment a counter, whose loop
/// fails at most once whether or not `spin` yields.
#[test]
fn backoff_spin_lets_a_cas_loop_wait_for_another_thread() {
    run_model("sync::backoff_cas_loop", || {
        let flag = Arc::new(AtomicUsize::new(0));
        let setter = {
            let flag = Arc::clone(&flag);
            // Relaxed: the flag publishes nothing; the model checks progress only.
            thread::spawn(move || flag.store(1, Ordering::Relaxed))
        };
        let mut backoff = Backoff::new();
        // Relaxed (both): as above.
        while flag
            .compare_exchange_weak(1, 2, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            backoff.spin();
        }
        setter.join().unwrap();
        // Relaxed: join() synchronizes with the setter.
        assert_eq!(flag.load(Ordering::Relaxed), 2);
    });
}
