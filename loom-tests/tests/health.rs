//! Models of freelane-health: the fence-based seqlock and the health table's transitions racing
//! reads.
#![cfg(freelane_loom)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use freelane_health::{GpuId, GpuState, HealthConfig, HealthTable, SeqLock};
use freelane_load::{LoadBoard, Policy};
use freelane_sync::thread;
use loom_tests::run_model;

/// One writer stores `[1, 1]` while two readers each try to read twice: every read is one of the
/// written records (never torn: both words equal) and a reader's second read is never older
/// than its first (reads never go backwards), with versions matching the contents. (A second
/// write multiplies the state space beyond a minute at preemption bound 2; the two-writer
/// model below covers consecutive writes.)
#[test]
fn seqlock_one_writer_two_readers_no_torn_read_and_no_going_back() {
    run_model("health::seqlock_1w_2r", || {
        let lock = Arc::new(SeqLock::new([0u64; 2]));
        let w = Arc::clone(&lock);
        let writer = thread::spawn(move || {
            w.write([1, 1]);
        });
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let r = Arc::clone(&lock);
                thread::spawn(move || {
                    // Single attempts (the `read` loop only repeats them): two spinning readers
                    // waiting on a preempted writer would exhaust loom's branch budget.
                    let mut last = None;
                    for _ in 0..2 {
                        if let Some((v, version)) = r.try_read_versioned() {
                            assert_eq!(v[0], v[1], "torn read {v:?}");
                            // Version 2k holds the k-th write.
                            assert_eq!(version / 2, v[0]);
                            if let Some(prev) = last {
                                assert!(v[0] >= prev, "went backwards: {prev} then {}", v[0]);
                            }
                            last = Some(v[0]);
                        }
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(lock.read(), [1, 1]);
    });
}

/// Two writers `update` the same record concurrently (each adds 1 to both words; one spawned,
/// one the main thread) while a spawned reader makes single read attempts: no update is lost,
/// and every read that succeeds is one of the three consistent states with the matching version
/// (version 2k holds the k-th update). The reader is spawned, not the main thread, because loom
/// explored a single interleaving when the main thread read after spawning the writers.
#[test]
fn seqlock_two_writers_lose_no_update() {
    run_model("health::seqlock_2w", || {
        let lock = Arc::new(SeqLock::new([0u64; 2]));
        let r = Arc::clone(&lock);
        let reader = thread::spawn(move || {
            let mut seen = 0;
            for _ in 0..2 {
                if let Some((v, version)) = r.try_read_versioned() {
                    assert_eq!(v[0], v[1], "torn read {v:?}");
                    assert!(v[0] <= 2, "impossible state {v:?}");
                    assert_eq!(version / 2, v[0], "version {version} does not match {v:?}");
                    assert!(v[0] >= seen, "went backwards: {seen} then {}", v[0]);
                    seen = v[0];
                }
            }
        });
        let w = Arc::clone(&lock);
        let writer = thread::spawn(move || {
            w.update(|v| {
                v[0] += 1;
                v[1] += 1;
            })
        });
        lock.update(|v| {
            v[0] += 1;
            v[1] += 1;
        });
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(lock.read_versioned(), ([2, 2], 4));
    });
}

/// A single read attempt while a writer runs either fails (writer active / overlapped) or
/// returns a complete record: the fence recipe never lets an overlapped read through.
#[test]
fn seqlock_try_read_overlapping_a_write_fails_instead_of_tearing() {
    run_model("health::seqlock_try_read", || {
        let lock = Arc::new(SeqLock::new([7u64, 7, 7]));
        let w = Arc::clone(&lock);
        let writer = thread::spawn(move || w.write([9, 9, 9]));
        if let Some(v) = lock.try_read() {
            assert!(v == [7, 7, 7] || v == [9, 9, 9], "torn read {v:?}");
        }
        writer.join().unwrap();
        assert_eq!(lock.try_read(), Some([9, 9, 9]));
    });
}

/// The same with `update`, whose closure runs before the words are stored (the `STORING` store
/// and its fence are separate from the lock CAS there): a read overlapping it is never torn.
#[test]
fn seqlock_try_read_overlapping_an_update_fails_instead_of_tearing() {
    run_model("health::seqlock_try_read_update", || {
        let lock = Arc::new(SeqLock::new([7u64, 7, 7]));
        let r = Arc::clone(&lock);
        let reader = thread::spawn(move || {
            if let Some(v) = r.try_read() {
                assert!(v == [7, 7, 7] || v == [9, 9, 9], "torn read {v:?}");
            }
        });
        lock.update(|v| *v = [9, 9, 9]);
        reader.join().unwrap();
        assert_eq!(lock.try_read(), Some([9, 9, 9]));
    });
}

fn fast_config() -> HealthConfig {
    HealthConfig::builder()
        .degrade_after_failures(1)
        .unhealthy_after_failures(2)
        .recover_after_successes(1)
        .recover_after_heartbeats(1)
        .heartbeat_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn order(s: GpuState) -> u8 {
    match s {
        GpuState::Healthy => 0,
        GpuState::Degraded => 1,
        GpuState::Unhealthy => 2,
        GpuState::Recovering => 3,
    }
}

/// A reporter drives GPU 0 Healthy -> Degraded -> Unhealthy with two failures while a router
/// reads the hot state and the transition counters: the states it sees only move forward along
/// the path and a state seen implies its transition is counted (Release/Acquire). The racing
/// read of the 72-byte record itself is left to the seqlock models (loom explores every value
/// each of its 9 Relaxed word loads could return, which does not fit a minute) and the stress
/// tests.
#[test]
fn health_transitions_racing_reads() {
    run_model("health::transitions_vs_reads", || {
        let table = Arc::new(HealthTable::with_epoch(1, fast_config(), Instant::now()));
        let t2 = Arc::clone(&table);
        let reporter = thread::spawn(move || {
            t2.report_failure(GpuId(0)).unwrap();
            t2.report_failure(GpuId(0)).unwrap();
        });
        let g = GpuId(0);
        let s1 = table.state(g);
        let counted = table.transitions(g).unwrap();
        if s1 != GpuState::Healthy {
            assert_eq!(
                counted.entered(s1),
                1,
                "state {s1} seen before its transition was counted"
            );
        }
        let s2 = table.state(g);
        assert!(order(s1) <= order(s2), "state went back: {s1} then {s2}");
        reporter.join().unwrap();
        assert_eq!(table.state(g), GpuState::Unhealthy);
        assert_eq!(table.transitions(g).unwrap().total(), 2);
        let rec = table.record(g).unwrap();
        assert_eq!((rec.failures, rec.state()), (2, GpuState::Unhealthy));
    });
}

/// A heartbeat (recovery) and a failure (probe failure) race on an Unhealthy GPU, and a second
/// reporter marks it unhealthy: every event is applied exactly once in some order, the record
/// counts them all, and the hot state agrees with the record once everyone is done.
#[test]
fn health_concurrent_reports_apply_each_event_once() {
    run_model("health::concurrent_reports", || {
        let t0 = Instant::now();
        let table = Arc::new(HealthTable::with_epoch(1, fast_config(), t0));
        let g = GpuId(0);
        table.mark_unhealthy(g).unwrap();
        let a = Arc::clone(&table);
        let hb = thread::spawn(move || a.heartbeat(g, t0 + Duration::from_secs(1)).unwrap());
        let b = Arc::clone(&table);
        let fail = thread::spawn(move || b.report_failure(g).unwrap());
        let by_heartbeat = hb.join().unwrap();
        let by_failure = fail.join().unwrap();
        let rec = table.record(g).unwrap();
        assert_eq!(rec.failures, 2);
        assert_eq!(rec.last_heartbeat_ns, 1_000_000_000);
        assert_eq!(rec.state(), table.state(g));
        let counts = table.transitions(g).unwrap();
        // The heartbeat always moves Unhealthy -> Recovering; the failure fails the probe over
        // only if it came second.
        assert_eq!(by_heartbeat.map(|t| t.to), Some(GpuState::Recovering));
        match by_failure {
            Some(t) => {
                assert_eq!((t.from, t.to), (GpuState::Recovering, GpuState::Unhealthy));
                assert_eq!(counts.failovers(), 2);
                assert_eq!(rec.state(), GpuState::Unhealthy);
            }
            None => {
                assert_eq!(counts.failovers(), 1);
                assert_eq!(rec.state(), GpuState::Recovering);
            }
        }
    });
}

/// The routing path of the server: a router picks with `|g| health.is_usable(g)` while the
/// monitor fails GPU 0 over. If the failover happened before the pick began (here: a join),
/// GPU 0 is never chosen; during the race only a GPU that was usable in that call is chosen.
#[test]
fn pick_with_health_never_returns_a_failed_over_gpu() {
    run_model("health::pick_vs_failover", || {
        let table = Arc::new(HealthTable::with_epoch(2, fast_config(), Instant::now()));
        let board = Arc::new(LoadBoard::new(2));
        let t2 = Arc::clone(&table);
        let monitor = thread::spawn(move || {
            t2.mark_unhealthy(GpuId(0)).unwrap();
        });
        let said_yes = std::cell::Cell::new([false; 2]);
        let g = board
            .pick_and_acquire(Policy::LeastLoaded, 1, |g| {
                let ok = table.is_usable(g);
                if ok {
                    let mut s = said_yes.get();
                    s[g.index()] = true;
                    said_yes.set(s);
                }
                ok
            })
            .expect("gpu 1 stays usable");
        assert!(
            said_yes.get()[g.gpu().index()],
            "picked {} although this call found it unusable",
            g.gpu()
        );
        drop(g);
        monitor.join().unwrap();
        for _ in 0..2 {
            let g = board
                .pick_and_acquire(Policy::LeastLoaded, 1, |g| table.is_usable(g))
                .unwrap();
            assert_eq!(g.gpu(), GpuId(1));
        }
    });
}
