//! Models of freelane-batch's lane protocol: the lock-free sleep/wake handoff between producers
//! and the lane's waiting consumer, exclusive claims, and push racing close.
#![cfg(freelane_loom)]

use freelane_batch::{thread_waker, Lane, Pushed, Signal};
use freelane_sync::sync::Arc;
use freelane_sync::thread;
use loom_tests::run_model;

/// Waits (parked, no timeout) until `want` items were claimed from `lane`. A lost wake-up leaves
/// this thread parked forever, which loom reports as a deadlock.
fn consume(lane: &Lane<u32>, want: usize) -> Vec<u32> {
    let waker = thread_waker();
    let mut got = Vec::new();
    loop {
        got.extend(lane.claim(want - got.len()));
        if got.len() == want {
            return got;
        }
        match lane.wait_blocking(&waker, None) {
            Some(Signal::Items) | Some(Signal::Nudged) => {}
            Some(Signal::Closed) | None => panic!("unexpected end of wait"),
        }
    }
}

/// One push racing the consumer going to sleep: the consumer always wakes and takes the item.
#[test]
fn push_racing_next_batch_wait_is_never_lost() {
    run_model("batch::push_racing_wait", || {
        let lane = Arc::new(Lane::<u32>::new());
        let l2 = Arc::clone(&lane);
        let producer = thread::spawn(move || {
            assert_eq!(l2.push(7), Pushed::Open);
        });
        assert_eq!(consume(&lane, 1), vec![7]);
        producer.join().unwrap();
        assert!(lane.is_empty());
    });
}

/// A producer pushing to the back and then the front queue while the consumer goes to sleep
/// and wakes again: both items are taken, each once, and the consumer never sleeps through a
/// push.
#[test]
fn pushes_to_both_queues_wake_the_sleeper_and_nothing_is_taken_twice() {
    run_model("batch::front_and_back_pushes", || {
        let lane = Arc::new(Lane::<u32>::new());
        let l2 = Arc::clone(&lane);
        let producer = thread::spawn(move || {
            let _ = l2.push(1);
            let _ = l2.push_front(2);
        });
        let mut got = consume(&lane, 2);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
        producer.join().unwrap();
    });
}

/// Two claimers racing for the same items: every item is taken by exactly one of them (or left
/// in the lane), never twice, and a claim always finds the items it counted.
#[test]
fn concurrent_claims_never_take_an_item_twice() {
    run_model("batch::concurrent_claims", || {
        let lane = Arc::new(Lane::<u32>::new());
        let _ = lane.push(1);
        let _ = lane.push(2);
        let l2 = Arc::clone(&lane);
        let claimer = thread::spawn(move || l2.claim(2).collect::<Vec<_>>());
        let mut mine: Vec<u32> = lane.claim(1).collect();
        mine.extend(claimer.join().unwrap());
        mine.extend(lane.drain());
        mine.sort_unstable();
        assert_eq!(mine, vec![1, 2]);
    });
}

/// A push racing `close`: the item is drained exactly once, by the closer (push ordered before
/// the close) or by the pusher (told `Pushed::Closed`).
#[test]
fn push_racing_close_is_drained_exactly_once() {
    run_model("batch::push_racing_close", || {
        let lane = Arc::new(Lane::<u32>::new());
        let l2 = Arc::clone(&lane);
        let producer = thread::spawn(move || match l2.push(5) {
            Pushed::Open => 0,
            Pushed::Closed => l2.drain().count(),
        });
        lane.close();
        let closer = lane.drain().count();
        let pusher = producer.join().unwrap();
        assert_eq!(closer + pusher, 1, "closer {closer}, pusher {pusher}");
    });
}

/// A sleeping consumer is woken by `close` (and then sees the lane closed and empty) or by a
/// nudge.
#[test]
fn close_and_nudge_wake_the_sleeper() {
    run_model("batch::close_wakes", || {
        let lane = Arc::new(Lane::<u32>::new());
        let l2 = Arc::clone(&lane);
        let t = thread::spawn(move || {
            l2.nudge();
            l2.close();
        });
        let waker = thread_waker();
        loop {
            match lane.wait_blocking(&waker, None) {
                Some(Signal::Closed) => break,
                Some(Signal::Nudged) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        t.join().unwrap();
    });
}

/// A producer pushes an item and then nudges while the consumer waits: the consumer takes the
/// item and also sees the nudge, whatever the interleaving. (When the wait that reported the
/// item also cleared the nudge, the consumer slept forever after taking it: a deadlock here.)
#[test]
fn nudge_racing_a_push_is_never_lost() {
    run_model("batch::nudge_after_push", || {
        let lane = Arc::new(Lane::<u32>::new());
        let l2 = Arc::clone(&lane);
        let producer = thread::spawn(move || {
            let _ = l2.push(7);
            l2.nudge();
        });
        let waker = thread_waker();
        let (mut items, mut nudged) = (Vec::new(), false);
        while items.is_empty() || !nudged {
            match lane.wait_blocking(&waker, None) {
                Some(Signal::Items) => items.extend(lane.drain()),
                Some(Signal::Nudged) => nudged = true,
                Some(Signal::Closed) | None => panic!("unexpected end of wait"),
            }
        }
        assert_eq!(items, vec![7]);
        producer.join().unwrap();
    });
}
