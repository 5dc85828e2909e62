//! Models of freelane-metrics: histogram records racing snapshots (and racing stripe installs),
//! striped counters.
#![cfg(freelane_loom)]

use freelane_metrics::{Counter, Histogram};
use freelane_sync::sync::Arc;
use freelane_sync::thread;
use loom_tests::run_model;

/// Under loom the histogram has 2 stripes and a thread's stripe is its index: main (0) and the
/// second spawned thread (2) share stripe 0, the first spawned thread (1) has stripe 1.
/// Two recorders on different stripes (main and thread 1, one value each) race two snapshots
/// taken on thread 2:
/// every snapshot's count stays within what was recorded and never goes backwards, every counted
/// value is inside `[min, max]`, and after the joins everything is exact. (The snapshots used to
/// be taken on the main thread with both recorders spawned; loom then never ran a recorder
/// before the snapshots, so every snapshot it explored was empty.)
#[test]
fn histogram_record_racing_snapshot_never_overcounts_and_ends_exact() {
    run_model("metrics::record_vs_snapshot", || {
        let h = Arc::new(Histogram::new());
        let recorder = {
            let h = Arc::clone(&h);
            thread::spawn(move || h.record(5))
        };
        let snapshots = {
            let h = Arc::clone(&h);
            thread::spawn(move || {
                let s1 = h.snapshot();
                let s2 = h.snapshot();
                assert!(s1.count() <= 2 && s2.count() <= 2);
                assert!(s2.count() >= s1.count(), "a later snapshot lost records");
                for s in [&s1, &s2] {
                    // Every bucket holds at most what was recorded into it, and inside min/max.
                    for (low, high, c) in s.buckets() {
                        let recorded =
                            [1u64, 5].iter().filter(|&&v| v >= low && v <= high).count() as u64;
                        assert!(c <= recorded, "bucket {low}..={high} has {c} > {recorded}");
                        if c > 0 {
                            assert!(s.min() <= high && low <= s.max(), "counted outside min/max");
                        }
                    }
                }
            })
        };
        h.record(1);
        recorder.join().unwrap();
        snapshots.join().unwrap();
        let s = h.snapshot();
        assert_eq!(s.count(), 2);
        assert_eq!(s.sum(), 6);
        assert_eq!((s.min(), s.max()), (1, 5));
    });
}

/// Main and a spawned thread record into the same (not yet allocated) stripe at once: both race
/// to install it, exactly one stripe wins, and no record is lost.
#[test]
fn histogram_racing_stripe_installs_lose_nothing() {
    run_model("metrics::racing_install", || {
        let h = Arc::new(Histogram::new());
        let h1 = Arc::clone(&h);
        // Thread index 1 (stripe 1) spawns nothing; we need thread 2 for stripe 0.
        let t1 = thread::spawn(move || {
            let _ = &h1;
        });
        let h2 = Arc::clone(&h);
        let t2 = thread::spawn(move || {
            h2.record(2);
        });
        h.record(3);
        t1.join().unwrap();
        t2.join().unwrap();
        let s = h.snapshot();
        assert_eq!(s.count(), 2);
        assert_eq!(s.sum(), 5);
    });
}

/// Two threads count into a striped counter while main counts and reads it: reads stay within
/// bounds and the final total is exact. Under loom one spawned thread shares main's stripe, so
/// two writers race on one cell (with only the spawned threads writing, each had a stripe of its
/// own and a non-atomic add passed this model).
#[test]
fn counter_adds_from_two_threads_are_exact() {
    run_model("metrics::counter", || {
        let c = Arc::new(Counter::new());
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let c = Arc::clone(&c);
                thread::spawn(move || {
                    c.inc();
                    c.add(2);
                })
            })
            .collect();
        c.inc();
        let mid = c.get();
        assert!((1..=7).contains(&mid), "impossible mid-way total {mid}");
        for t in handles {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 7);
    });
}

/// A snapshot racing a histogram's first record: whenever the value is counted, `min`, `max`
/// and `sum` include it (a record updates them before its bucket, Release/Acquire). A snapshot
/// used to be able to report count 1 with min u64::MAX and max 0 (quantile(0.5) = u64::MAX).
/// The snapshot runs on the spawned thread and the record on the main thread: with the roles
/// the other way round, loom never ran the spawned recorder before the main thread's snapshot.
#[test]
fn histogram_snapshot_counting_a_value_sees_its_min_max_and_sum() {
    run_model("metrics::first_record_vs_snapshot", || {
        let h = Arc::new(Histogram::new());
        let snapshotter = {
            let h = Arc::clone(&h);
            thread::spawn(move || {
                let s = h.snapshot();
                if s.count() == 1 {
                    assert_eq!(
                        (s.min(), s.max(), s.sum()),
                        (5, 5, 5),
                        "counted but not covered"
                    );
                    assert_eq!(s.quantile(0.5), 5);
                }
            })
        };
        h.record(5);
        snapshotter.join().unwrap();
        let s = h.snapshot();
        assert_eq!((s.count(), s.min(), s.max(), s.sum()), (1, 5, 5, 5));
    });
}
