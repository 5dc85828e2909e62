//! Lane conservation (nothing lost or taken twice), exact capacity, no lost wake-up, and a
//! sequential model check.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use freelane_batch::{thread_waker, Lane, Signal};
use proptest::prelude::*;

const PER_PRODUCER: usize = if cfg!(miri) { 50 } else { 20_000 };

#[test]
fn lane_conservation_with_concurrent_claims_and_hand_backs() {
    const P: usize = 4;
    const C: usize = 4;
    let lane = Arc::new(Lane::<usize>::new());
    let taken = Arc::new(AtomicUsize::new(0));
    let total = P * PER_PRODUCER;
    let producers: Vec<_> = (0..P)
        .map(|p| {
            let lane = Arc::clone(&lane);
            thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    let v = p * PER_PRODUCER + i;
                    if i % 7 == 0 {
                        let _ = lane.push_front(v);
                    } else {
                        let _ = lane.push(v);
                    }
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..C)
        .map(|c| {
            let lane = Arc::clone(&lane);
            let taken = Arc::clone(&taken);
            thread::spawn(move || {
                let mut got = Vec::new();
                let mut round = 0usize;
                while taken.load(Ordering::Relaxed) < total {
                    round += 1;
                    let mut claim = lane.claim(1 + (round + c) % 8);
                    // Pop only part of some claims: the rest is handed back on drop.
                    let keep = if round % 5 == 0 { 1 } else { usize::MAX };
                    let mut n = 0;
                    while n < keep {
                        match claim.next() {
                            Some(v) => {
                                got.push(v);
                                n += 1;
                            }
                            None => break,
                        }
                    }
                    drop(claim);
                    taken.fetch_add(n, Ordering::Relaxed);
                    if n == 0 {
                        thread::yield_now();
                    }
                }
                got
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut all: Vec<usize> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all.len(), total, "every item taken exactly once");
    assert!(all.iter().enumerate().all(|(i, &v)| i == v));
    assert!(lane.is_empty());
}

#[test]
fn try_push_capacity_is_exact_under_contention() {
    const CAP: usize = 100;
    let lane = Arc::new(Lane::<usize>::with_capacity(CAP));
    let accepted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let lane = Arc::clone(&lane);
            let accepted = Arc::clone(&accepted);
            thread::spawn(move || {
                for i in 0..(if cfg!(miri) { 40 } else { 1000 }) {
                    if lane.try_push(i).is_ok() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(accepted.load(Ordering::Relaxed), CAP);
    assert_eq!(lane.len(), CAP);
    // Claims free capacity again.
    assert_eq!(lane.claim(10).count(), 10);
    for i in 0..10 {
        assert!(lane.try_push(i).is_ok());
    }
    assert!(lane.try_push(0).is_err());
}

#[test]
fn blocking_consumer_never_misses_a_wake_up() {
    const N: usize = if cfg!(miri) { 30 } else { 5_000 };
    let lane = Arc::new(Lane::<usize>::new());
    let done = Arc::new(AtomicBool::new(false));
    let l2 = Arc::clone(&lane);
    let d2 = Arc::clone(&done);
    let consumer = thread::spawn(move || {
        let waker = thread_waker();
        let mut got = 0;
        while got < 2 * N {
            got += l2.claim(64).count();
            if got == 2 * N {
                break;
            }
            // A lost wake-up would leave us here until the watchdog deadline.
            let deadline = Instant::now() + Duration::from_secs(20);
            if l2.wait_blocking(&waker, Some(deadline)).is_none() {
                panic!(
                    "lost wake-up: {} items queued, producers done: {}",
                    l2.len(),
                    d2.load(Ordering::Relaxed)
                );
            }
        }
        got
    });
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let lane = Arc::clone(&lane);
            thread::spawn(move || {
                for i in 0..N {
                    let _ = lane.push(i);
                    if i % 64 == 0 {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert_eq!(consumer.join().unwrap(), 2 * N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_consumer_never_misses_a_wake_up() {
    const N: usize = if cfg!(miri) { 30 } else { 5_000 };
    let lane = Arc::new(Lane::<usize>::new());
    let l2 = Arc::clone(&lane);
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            got += l2.claim(64).count();
            if got == N {
                break;
            }
            tokio::time::timeout(Duration::from_secs(20), l2.signal())
                .await
                .expect("lost wake-up");
        }
        got
    });
    let producer = thread::spawn(move || {
        for i in 0..N {
            let _ = lane.push(i);
            if i % 32 == 0 {
                thread::yield_now();
            }
        }
    });
    producer.join().unwrap();
    assert_eq!(consumer.await.unwrap(), N);
}

#[test]
fn signals_report_items_nudges_and_close() {
    let lane = Lane::<u8>::new();
    let waker = thread_waker();
    let soon = || Some(Instant::now() + Duration::from_millis(1));
    assert_eq!(lane.wait_blocking(&waker, soon()), None);
    lane.nudge();
    assert_eq!(lane.wait_blocking(&waker, soon()), Some(Signal::Nudged));
    assert_eq!(
        lane.wait_blocking(&waker, soon()),
        None,
        "a nudge is consumed"
    );
    let _ = lane.push(1);
    assert_eq!(lane.wait_blocking(&waker, soon()), Some(Signal::Items));
    assert_eq!(lane.pop(), Some(1));
    lane.close();
    assert_eq!(lane.wait_blocking(&waker, soon()), Some(Signal::Closed));
    assert!(lane.is_closed());
}

#[derive(Debug, Clone)]
enum Op {
    Push(u8),
    PushFront(u8),
    Claim { max: usize, pop: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::Push),
        any::<u8>().prop_map(Op::PushFront),
        (0usize..6, 0usize..6).prop_map(|(max, pop)| Op::Claim { max, pop }),
    ]
}

proptest! {
    /// Sequentially, a lane is two FIFO queues (front first) and claims pop in that order;
    /// a claim dropped early hands its unpopped items back without reordering.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn lane_matches_two_fifo_model(ops in proptest::collection::vec(op(), 0..200)) {
        let lane = Lane::<u8>::new();
        let mut front = VecDeque::new();
        let mut back = VecDeque::new();
        for op in ops {
            match op {
                Op::Push(v) => { let _ = lane.push(v); back.push_back(v); }
                Op::PushFront(v) => { let _ = lane.push_front(v); front.push_back(v); }
                Op::Claim { max, pop } => {
                    let mut claim = lane.claim(max);
                    prop_assert_eq!(claim.remaining(), max.min(front.len() + back.len()));
                    for _ in 0..pop.min(claim.remaining()) {
                        let got = claim.next();
                        let want = front.pop_front().or_else(|| back.pop_front());
                        prop_assert_eq!(got, want);
                    }
                }
            }
            prop_assert_eq!(lane.len(), front.len() + back.len());
        }
    }
}

/// A nudge is reported once the queued items are taken, not consumed by the wait that reports
/// the items (which would lose it: `nudge` promises it is remembered).
#[test]
fn nudge_is_remembered_while_items_are_queued() {
    let lane = Lane::<u8>::new();
    let waker = thread_waker();
    let soon = || Some(Instant::now() + Duration::from_millis(5));
    lane.nudge();
    let _ = lane.push(1);
    assert_eq!(lane.wait_blocking(&waker, soon()), Some(Signal::Items));
    assert_eq!(lane.pop(), Some(1));
    assert_eq!(lane.wait_blocking(&waker, soon()), Some(Signal::Nudged));
    assert_eq!(lane.wait_blocking(&waker, soon()), None, "reported once");
}
