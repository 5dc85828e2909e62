//! A model of the *lane protocol* the coordinator's failover relies on, written out here with the
//! same freelane-batch calls the coordinator makes (`drain`, `push_front`, `nudge`, waits): a
//! GPU turned unhealthy while a router (which picked it just before) keeps pushing; the failed
//! lane's worker drains it into a healthy lane's front queue whenever it is woken (a push or the
//! monitor's nudge); afterwards the healthy lane holds every request, each exactly once.
//!
//! It does not run the coordinator's own code: loom-tests does not depend on `freelane` (its
//! workers run on tokio, which loom cannot model), so a bug in `Inner::fail_over_lane` or
//! `reroute` would not fail this model. Those are covered by the coordinator's stress and
//! failover tests in `crates/freelane/tests/` (real threads, not model-checked).
#![cfg(freelane_loom)]

use freelane_batch::{thread_waker, Lane, Signal};
use freelane_sync::atomic::{AtomicBool, Ordering};
use freelane_sync::sync::Arc;
use freelane_sync::thread;
use loom_tests::run_model;

#[test]
fn failover_moving_requests_while_producers_push_loses_nothing() {
    run_model("coordinator::failover_while_pushing", || {
        let failed = Arc::new(Lane::<u32>::new());
        let healthy = Arc::new(Lane::<u32>::new());
        let done = Arc::new(AtomicBool::new(false));

        // The router that picked the failing GPU just before it turned unhealthy.
        let (f, d) = (Arc::clone(&failed), Arc::clone(&done));
        let producer = thread::spawn(move || {
            let _ = f.push(1);
            let _ = f.push(2);
            // Release: publishes "no more pushes" to the worker's Acquire load.
            d.store(true, Ordering::Release);
            // The monitor's tick: wakes the worker so it sees `done`.
            f.nudge();
        });

        // The failed GPU's worker (this thread): drain to the healthy lane on every wake-up.
        let waker = thread_waker();
        loop {
            for item in failed.drain() {
                let _ = healthy.push_front(item);
            }
            // Acquire: pairs with the producer's Release store; its pushes happen-before.
            if done.load(Ordering::Acquire) && failed.is_empty() {
                break;
            }
            match failed.wait_blocking(&waker, None) {
                Some(Signal::Items | Signal::Nudged) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        producer.join().unwrap();
        // The healthy lane's consumer (its concurrent wake-up is modelled in batch.rs).
        let mut got: Vec<u32> = healthy.drain().collect();
        got.sort_unstable();
        assert_eq!(
            got,
            vec![1, 2],
            "each request moved exactly once, nothing left behind"
        );
        assert!(failed.is_empty() && healthy.is_empty());
    });
}
