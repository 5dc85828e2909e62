//! Multi-thread stress, oversubscribed (more threads than cores): the seqlock never tears and
//! never goes backwards under concurrent writers, and the health table applies every event
//! exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use freelane_health::{GpuId, GpuState, HealthConfig, HealthTable, SeqLock};

const WRITES: u64 = if cfg!(miri) {
    30
} else if cfg!(debug_assertions) {
    5_000
} else {
    20_000
};
const READERS: usize = if cfg!(miri) { 2 } else { 6 };

/// Two writers `update` a 64-byte record (all eight words equal) while six readers read it: no
/// read is torn, each reader's values and versions only grow, and no update is lost.
#[test]
fn seqlock_oversubscribed_no_torn_read_no_lost_update() {
    let lock = Arc::new(SeqLock::new([0u64; 8]));
    let start = Arc::new(Barrier::new(READERS + 3));
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (lock, start) = (Arc::clone(&lock), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for _ in 0..WRITES {
                    lock.update(|v| {
                        let n = v[0] + 1;
                        *v = [n; 8];
                    });
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (lock, start, done) = (Arc::clone(&lock), Arc::clone(&start), Arc::clone(&done));
            thread::spawn(move || {
                start.wait();
                let (mut last, mut last_version, mut reads) = (0u64, 0u64, 0u64);
                loop {
                    // Relaxed: the flag carries no data; join() orders the final state.
                    let finished = done.load(Ordering::Relaxed);
                    let (v, version) = lock.read_versioned();
                    assert!(v.iter().all(|&w| w == v[0]), "torn read {v:?}");
                    assert!(v[0] >= last && version >= last_version, "went backwards");
                    assert_eq!(version, 2 * v[0], "version does not match the record");
                    (last, last_version) = (v[0], version);
                    reads += 1;
                    if finished {
                        return reads;
                    }
                }
            })
        })
        .collect();
    start.wait();
    for w in writers {
        w.join().unwrap();
    }
    // Relaxed: see the readers.
    done.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads >= READERS as u64);
    assert_eq!(lock.read(), [2 * WRITES; 8]);
}

/// Reporters on several threads hammer two GPUs with successes, failures, heartbeats and
/// checks while routers read: every event is counted exactly once in the records, every record
/// a router reads is consistent (error rate in [0, 1], consecutive counts within the totals, a
/// valid state), and the transition counts agree with the number of state changes recorded.
#[test]
fn health_table_counts_every_event_exactly_once() {
    let config = HealthConfig::builder()
        .degrade_after_failures(2)
        .unhealthy_after_failures(4)
        .recover_after_successes(3)
        .recover_after_heartbeats(2)
        .heartbeat_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let table = Arc::new(HealthTable::with_epoch(2, config, t0));
    const REPORTERS: usize = if cfg!(miri) { 2 } else { 6 };
    let per = WRITES / 4;
    let stop = Arc::new(AtomicBool::new(false));
    let router = {
        let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
        thread::spawn(move || {
            let mut seen = 0u64;
            // Relaxed: the flag carries no data.
            while !stop.load(Ordering::Relaxed) {
                for g in [GpuId(0), GpuId(1)] {
                    let rec = table.record(g).unwrap();
                    // Invariants of every consistent record (a torn one could break them).
                    assert!(rec.error_rate >= 0.0 && rec.error_rate <= 1.0, "{rec:?}");
                    assert!(rec.consecutive_failures as u64 <= rec.failures, "{rec:?}");
                    assert!(rec.consecutive_successes as u64 <= rec.successes, "{rec:?}");
                    assert!(rec.state < 4, "{rec:?}");
                    seen += 1;
                }
            }
            seen
        })
    };
    let reporters: Vec<_> = (0..REPORTERS)
        .map(|r| {
            let table = Arc::clone(&table);
            thread::spawn(move || {
                let mut counts = [[0u64; 3]; 2]; // [gpu][success, failure, forced]
                for i in 0..per {
                    let g = ((i as usize + r) % 2) as u32;
                    let now = t0 + Duration::from_micros(i * 10);
                    match (i as usize + r) % 7 {
                        0..=2 => {
                            table
                                .report_success(GpuId(g), Duration::from_micros(3))
                                .unwrap();
                            counts[g as usize][0] += 1;
                        }
                        3..=4 => {
                            table.report_failure(GpuId(g)).unwrap();
                            counts[g as usize][1] += 1;
                        }
                        5 => {
                            table.heartbeat(GpuId(g), now).unwrap();
                        }
                        _ => {
                            if i % 97 == 0 {
                                table.mark_unhealthy(GpuId(g)).unwrap();
                                counts[g as usize][2] += 1;
                            } else {
                                table.check_heartbeats(now);
                            }
                        }
                    }
                }
                counts
            })
        })
        .collect();
    let mut totals = [[0u64; 3]; 2];
    for r in reporters {
        let c = r.join().unwrap();
        for g in 0..2 {
            for k in 0..3 {
                totals[g][k] += c[g][k];
            }
        }
    }
    // Relaxed: see the router.
    stop.store(true, Ordering::Relaxed);
    assert!(router.join().unwrap() > 0);
    for g in 0..2u32 {
        let rec = table.record(GpuId(g)).unwrap();
        let t = totals[g as usize];
        assert_eq!(rec.successes, t[0], "gpu{g} successes");
        assert_eq!(
            rec.failures,
            t[1] + t[2],
            "gpu{g} failures (reported + forced)"
        );
        assert_eq!(rec.state(), table.state(GpuId(g)));
        let counts = table.transitions(GpuId(g)).unwrap();
        assert_eq!(counts.total(), u64::from(rec.state_changes));
        // Entries minus exits of each state leave exactly the current state occupied.
        for s in GpuState::ALL {
            let exits: u64 = GpuState::ALL.iter().map(|&to| counts.get(s, to)).sum();
            let occupied = u64::from(s == GpuState::Healthy) + counts.entered(s) - exits;
            assert_eq!(occupied, u64::from(s == rec.state()), "gpu{g} {s}");
        }
    }
}
