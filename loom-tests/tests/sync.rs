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

/// Two threads increment a counter with CAS retries under `Backoff::spin`; no increment is lost.
#[test]
fn backoff_cas_loop_loses_no_increment() {
    run_model("sync::backoff_cas_loop", || {
        let n = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let n = Arc::clone(&n);
                thread::spawn(move || {
                    let mut backoff = Backoff::new();
                    // Relaxed: the counter publishes nothing else; the CAS alone orders increments.
                    let mut cur = n.load(Ordering::Relaxed);
                    loop {
                        match n.compare_exchange_weak(
                            cur,
                            cur + 1,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        ) {
                            Ok(_) => break,
                            Err(actual) => {
                                cur = actual;
                                backoff.spin();
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Relaxed: join() already synchronizes with both threads.
        assert_eq!(n.load(Ordering::Relaxed), 2);
    });
}
