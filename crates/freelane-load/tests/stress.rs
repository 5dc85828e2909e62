//! Multi-thread stress (oversubscribed: more threads than cores) checking conservation: every
//! acquire is released exactly once, counters never go negative and return to zero, and picks
//! never land on an ineligible GPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use freelane_load::{GpuId, LoadBoard, Policy};

const OPS: usize = if cfg!(miri) { 50 } else { 50_000 };
const THREADS: usize = if cfg!(miri) { 3 } else { 8 };
const GPUS: u32 = 5;

#[test]
fn oversubscribed_routers_balance_back_to_zero() {
    let board = Arc::new(LoadBoard::with_weights(&[1, 2, 1, 3, 1]).unwrap());
    let start = Arc::new(Barrier::new(THREADS + 1));
    let stop = Arc::new(AtomicBool::new(false));
    // A reader that checks the counters stay within bounds while everything runs.
    let watcher = {
        let (board, stop) = (Arc::clone(&board), Arc::clone(&stop));
        thread::spawn(move || {
            let mut reads = 0u64;
            // Relaxed: the flag carries no data; join() orders the final state.
            while !stop.load(Ordering::Relaxed) {
                for g in 0..GPUS {
                    let s = board.stats(GpuId(g)).unwrap();
                    // Each thread holds at most 3 guards of cost < 100.
                    assert!(s.in_flight <= 3 * THREADS as u64, "{s:?}");
                    assert!(s.cost <= 300 * THREADS as u64, "{s:?}");
                }
                reads += 1;
                thread::yield_now();
            }
            reads
        })
    };
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (board, start) = (Arc::clone(&board), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                let mut held = Vec::with_capacity(3);
                let mut failures = 0u64;
                let policies = [
                    Policy::LeastLoaded,
                    Policy::PowerOfTwoChoices,
                    Policy::RoundRobin,
                ];
                for i in 0..OPS {
                    let policy = policies[(i + t) % 3];
                    let cost = ((i * 7 + t) % 100) as u64;
                    // GPU 2 is never eligible.
                    let g = board
                        .pick_and_acquire(policy, cost, |g| g != GpuId(2))
                        .expect("four gpus are eligible");
                    assert_ne!(g.gpu(), GpuId(2));
                    assert_eq!(g.cost(), cost);
                    held.push(g);
                    if held.len() == 3 || i % 5 == 0 {
                        let g = held.remove(0);
                        if i % 11 == 0 {
                            failures += 1;
                            g.fail();
                        }
                    }
                }
                drop(held);
                failures
            })
        })
        .collect();
    start.wait();
    let failures: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    // Relaxed: see the watcher.
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.join().unwrap() > 0);
    let mut allocations = 0;
    let mut recorded_failures = 0;
    for g in 0..GPUS {
        let s = board.stats(GpuId(g)).unwrap();
        assert_eq!(
            (s.in_flight, s.cost),
            (0, 0),
            "gpu{g} did not balance: {s:?}"
        );
        assert_eq!(s.releases, s.allocations);
        allocations += s.allocations;
        recorded_failures += s.failures;
    }
    assert_eq!(board.stats(GpuId(2)).unwrap().allocations, 0);
    assert_eq!(allocations, (THREADS * OPS) as u64);
    assert_eq!(recorded_failures, failures);
}

#[test]
fn guards_moved_across_threads_release_exactly_once() {
    let board = Arc::new(LoadBoard::new(2));
    let (tx, rx) = std::sync::mpsc::channel();
    let producer = {
        let board = Arc::clone(&board);
        thread::spawn(move || {
            for i in 0..OPS {
                tx.send(board.acquire(GpuId((i % 2) as u32), i as u64 % 13))
                    .unwrap();
            }
        })
    };
    let mut n = 0;
    for g in rx {
        drop(g);
        n += 1;
    }
    producer.join().unwrap();
    assert_eq!(n, OPS);
    assert_eq!(board.load(GpuId(0)) + board.load(GpuId(1)), 0);
}

/// More threads than the board has statistics rows: the first threads own a row (plain load and
/// store), the rest share one (RMWs). Allocation counts must stay exact either way, also while a
/// reader sums the rows.
#[test]
fn allocation_counts_stay_exact_with_more_threads_than_rows() {
    const MANY: usize = if cfg!(miri) { 20 } else { 40 };
    const EACH: u64 = if cfg!(miri) { 20 } else { 20_000 };
    let board = Arc::new(LoadBoard::new(3));
    let start = Arc::new(Barrier::new(MANY));
    let handles: Vec<_> = (0..MANY)
        .map(|t| {
            let (board, start) = (Arc::clone(&board), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for _ in 0..EACH {
                    // Half the threads go through the one-block pick-and-acquire path, which
                    // counts on its own (owned or shared rows alike).
                    if t % 2 == 0 {
                        drop(board.acquire(GpuId(1), 1));
                    } else {
                        let g = board.pick_and_acquire(Policy::LeastLoaded, 1, |g| g == GpuId(1));
                        assert_eq!(g.map(|g| g.gpu()), Some(GpuId(1)));
                    }
                    // The total never exceeds what has been started so far.
                    assert!(board.stats(GpuId(1)).unwrap().allocations <= MANY as u64 * EACH);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = board.stats(GpuId(1)).unwrap();
    assert_eq!(
        (s.allocations, s.releases, s.in_flight),
        (MANY as u64 * EACH, MANY as u64 * EACH, 0)
    );
    assert_eq!(board.stats(GpuId(0)).unwrap().allocations, 0);
}

/// Threads come and go (as in a pool that replaces its threads): owned rows are handed from
/// exiting threads to new ones, and the counts stay exact.
#[test]
fn allocation_counts_stay_exact_while_threads_come_and_go() {
    const ROUNDS: usize = if cfg!(miri) { 4 } else { 50 };
    const EACH: u64 = if cfg!(miri) { 10 } else { 2_000 };
    let board = Arc::new(LoadBoard::new(2));
    for _ in 0..ROUNDS {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let board = Arc::clone(&board);
                thread::spawn(move || {
                    for _ in 0..EACH {
                        drop(board.acquire(GpuId(0), 0));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
    let s = board.stats(GpuId(0)).unwrap();
    assert_eq!(s.allocations, (ROUNDS * 3) as u64 * EACH);
    assert_eq!(s.in_flight, 0);
}

/// With every owned statistics row held by a parked thread, routers count on the shared rows
/// (several threads per row, RMWs), here through the one-block pick-and-acquire path: the counts
/// stay exact. (Counting there with a plain load and store, as on an owned row, lost updates.)
#[test]
fn shared_rows_stay_exact_on_the_pick_path() {
    const HOLDERS: usize = 12; // at least the number of owned rows
    const HAMMERS: usize = 8; // two per shared row
    const EACH: u64 = if cfg!(miri) { 20 } else { 250_000 };
    let board = Arc::new(LoadBoard::new(4));
    let claimed = Arc::new(Barrier::new(HOLDERS + 1));
    let release = Arc::new(Barrier::new(HOLDERS + 1));
    let holders: Vec<_> = (0..HOLDERS)
        .map(|_| {
            let (board, claimed, release) = (
                Arc::clone(&board),
                Arc::clone(&claimed),
                Arc::clone(&release),
            );
            thread::spawn(move || {
                drop(board.acquire(GpuId(3), 0)); // claims an owned row if one is free
                claimed.wait();
                release.wait();
            })
        })
        .collect();
    claimed.wait();
    let start = Arc::new(Barrier::new(HAMMERS));
    let hammers: Vec<_> = (0..HAMMERS)
        .map(|_| {
            let (board, start) = (Arc::clone(&board), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for _ in 0..EACH {
                    let g = board.pick_and_acquire(Policy::LeastLoaded, 0, |g| g != GpuId(3));
                    assert!(g.is_some_and(|g| g.gpu() != GpuId(3)));
                }
            })
        })
        .collect();
    for h in hammers {
        h.join().unwrap();
    }
    release.wait();
    for h in holders {
        h.join().unwrap();
    }
    let allocations: u64 = (0..3)
        .map(|g| board.stats(GpuId(g)).unwrap().allocations)
        .sum();
    assert_eq!(allocations, HAMMERS as u64 * EACH);
    assert_eq!(board.stats(GpuId(3)).unwrap().allocations, HOLDERS as u64);
    assert!((0..4).all(|g| board.in_flight(GpuId(g)) == 0));
}
