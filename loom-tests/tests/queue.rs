//! Models of freelane-queue: the FAA segment queue (conservation, FIFO, segment boundaries with
//! epoch reclamation, drop), the bounded ring at capacity, and the request table's generation
//! check against a stale ticket. Segments hold 2 slots under loom, so every model with 3 or more
//! values crosses a segment boundary and retires a segment.
#![cfg(freelane_loom)]

use freelane_queue::{BoundedQueue, Queue, RequestTable};
use freelane_sync::atomic::{AtomicUsize, Ordering};
use freelane_sync::sync::Arc;
use freelane_sync::thread;
use loom_tests::{run_model, run_model_bounded, run_model_outcomes};

/// Counts drops so a model can check every value is dropped exactly once.
struct Tracked(u32, Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        // Relaxed: read after join(), which synchronizes.
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

fn drain(q: &Queue<u32>) -> Vec<u32> {
    std::iter::from_fn(|| q.pop()).collect()
}

// Every thread that touches a `Queue` registers with crossbeam-epoch's collector, and under loom
// that registration is expensive: three threads that each do one empty `pop` did not finish in
// 150 s at preemption bound 2. So most models below use two threads (main + one spawned), with
// the main thread playing two roles where a model needs three; the two three-thread models run
// at preemption bound 1 (about 40 s each).

/// Two producers (a spawned thread and the main thread) push one value each; the main thread
/// then pops. Its pop cannot report empty (its own push completed before it), every value comes
/// out exactly once (pop or final drain), none is invented.
#[test]
fn queue_two_producers_one_consumer_conserve_values() {
    run_model("queue::2p1c_conservation", || {
        let q = Arc::new(Queue::new());
        let producer = {
            let q = Arc::clone(&q);
            thread::spawn(move || q.push(1u32))
        };
        q.push(2);
        let popped = q.pop();
        assert!(
            popped.is_some(),
            "pop after a completed push reported empty"
        );
        producer.join().unwrap();
        let mut got: Vec<u32> = popped.into_iter().collect();
        got.extend(drain(&q));
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        assert!(q.is_empty());
    });
}

/// Three threads at preemption bound 1: two spawned producers push one value each while main
/// pops twice (retrying empty pops a bounded number of times), then drains. Every value comes
/// out exactly once and each producer's value is popped at most once.
#[test]
fn queue_two_spawned_producers_one_consumer_bound_1() {
    run_model_bounded("queue::3threads_2p1c", 1, || {
        let q = Arc::new(Queue::new());
        let producers: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|v| {
                let q = Arc::clone(&q);
                thread::spawn(move || q.push(v))
            })
            .collect();
        let mut got: Vec<u32> = (0..2).filter_map(|_| q.pop()).collect();
        for p in producers {
            p.join().unwrap();
        }
        got.extend(drain(&q));
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        assert!(q.is_empty());
    });
}

/// Three threads at preemption bound 1: main pushes 1 then 2 while two spawned consumers pop
/// once each. No value is lost or duplicated, and FIFO holds: a consumer that got 2 implies the
/// other consumer got 1 (1 was pushed first, so it cannot still be queued when 2 is taken).
#[test]
fn queue_one_producer_two_spawned_consumers_bound_1() {
    run_model_bounded("queue::3threads_1p2c", 1, || {
        let q = Arc::new(Queue::new());
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let q = Arc::clone(&q);
                thread::spawn(move || q.pop())
            })
            .collect();
        q.push(1u32);
        q.push(2);
        let got: Vec<Option<u32>> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
        if got.contains(&Some(2)) {
            assert!(got.contains(&Some(1)), "FIFO violated: {got:?}");
        }
        let mut all: Vec<u32> = got.into_iter().flatten().collect();
        all.extend(drain(&q));
        all.sort_unstable();
        assert_eq!(all, [1, 2]);
    });
}

/// One producer (main) pushes 1, 2, filling a 2-slot segment, and then pops; a second consumer
/// (a spawned thread) pops concurrently. Main's pop finds a value, the two consumers never get
/// the same value, FIFO holds (whoever pops first gets 1), and nothing is lost.
#[test]
fn queue_one_producer_two_consumers_conserve_values_in_order() {
    run_model("queue::1p2c_conservation_fifo", || {
        let q = Arc::new(Queue::new());
        let consumer = {
            let q = Arc::clone(&q);
            thread::spawn(move || q.pop())
        };
        q.push(1u32);
        q.push(2);
        let mine = q.pop().expect("two values pushed, at most one taken");
        let theirs = consumer.join().unwrap();
        match theirs {
            // The other consumer took one value: FIFO means together we hold 1 and 2.
            Some(v) => assert_eq!([mine.min(v), mine.max(v)], [1, 2]),
            // It found the queue empty (before our pushes): we got the head.
            None => assert_eq!(mine, 1),
        }
        let rest = drain(&q);
        let mut got: Vec<u32> = [Some(mine), theirs].into_iter().flatten().collect();
        got.extend(rest);
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
    });
}

/// A producer streams 4 values through 2-slot segments while a consumer pops them as they come:
/// the consumer sees 1..=4 in order; used-up segments are unlinked and retired to the epoch
/// collector concurrently with the producer linking new ones.
#[test]
fn queue_segment_boundary_with_reclamation() {
    run_model("queue::segment_boundary_reclamation", || {
        let q = Arc::new(Queue::new());
        let producer = {
            let q = Arc::clone(&q);
            thread::spawn(move || (1..=4).for_each(|v| q.push(v)))
        };
        let mut got = Vec::new();
        while got.len() < 4 {
            match q.pop() {
                Some(v) => got.push(v),
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!(q.pop(), None);
    });
}

/// Values left in the queue when it is dropped are dropped exactly once, as are popped ones,
/// including the case where a consumer poisoned a slot and the producer moved on.
#[test]
fn queue_drop_with_values_left_drops_each_once() {
    run_model("queue::drop_with_items_left", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let q = Arc::new(Queue::new());
        let producer = {
            let (q, drops) = (Arc::clone(&q), Arc::clone(&drops));
            thread::spawn(move || (0..3).for_each(|v| q.push(Tracked(v, Arc::clone(&drops)))))
        };
        let popped = q.pop().map(|t| t.0);
        producer.join().unwrap();
        let popped = usize::from(popped.is_some());
        // Relaxed: after join.
        assert_eq!(drops.load(Ordering::Relaxed), popped);
        assert_eq!(q.len(), 3 - popped);
        drop(q);
        // Relaxed: after join; the queue is gone.
        assert_eq!(drops.load(Ordering::Relaxed), 3);
    });
}

/// Two consumers (a spawned thread and main) pop concurrently from a queue holding three values
/// across a segment boundary, typically taking written slots without marking them; dropping the
/// queue afterwards drops only the value left, so every value is dropped exactly once.
#[test]
fn queue_two_consumers_then_drop_drops_each_once() {
    run_model("queue::2c_then_drop", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let q = Arc::new(Queue::new());
        (0..3).for_each(|v| q.push(Tracked(v, Arc::clone(&drops))));
        let consumer = {
            let q = Arc::clone(&q);
            thread::spawn(move || q.pop().map(|t| t.0))
        };
        let mine = q.pop().map(|t| t.0);
        let theirs = consumer.join().unwrap();
        let (Some(a), Some(b)) = (mine, theirs) else {
            panic!("a pop reported empty with three values queued: {mine:?} {theirs:?}");
        };
        assert_ne!(a, b, "two consumers got the same value");
        assert!(
            a < 2 && b < 2,
            "FIFO: the first two values must go first ({a}, {b})"
        );
        // Relaxed: after join.
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        drop(q);
        // Relaxed: after join; the queue is gone.
        assert_eq!(drops.load(Ordering::Relaxed), 3);
    });
}

/// At capacity 1, full from the start: a producer's `try_push` races the consumer's `pop`. The
/// push is accepted exactly when the pop has freed the slot (both outcomes happen), a refused
/// value comes back intact, the queue never holds more than one value, and values come out in
/// order and conserved. (With an empty queue and two producers, loom only ever explored the
/// pop finding nothing, and a pop that freed the slot before reading the value passed.)
#[test]
fn bounded_queue_at_capacity_never_overfills() {
    run_model_outcomes("bounded::at_capacity", &["accepted", "refused"], || {
        let q = Arc::new(BoundedQueue::with_capacity(1));
        q.try_push(0u32).unwrap();
        let producer = {
            let q = Arc::clone(&q);
            thread::spawn(move || match q.try_push(1) {
                Ok(()) => true,
                Err(full) => {
                    assert_eq!(full.into_inner(), 1);
                    false
                }
            })
        };
        assert_eq!(q.pop(), Some(0), "the value already queued comes out first");
        let accepted = producer.join().unwrap();
        assert!(q.len() <= 1);
        assert_eq!(q.pop(), accepted.then_some(1));
        assert_eq!(q.pop(), None);
        if accepted {
            "accepted"
        } else {
            "refused"
        }
    });
}

/// A one-slot table: one thread removes entry A and inserts B into the same slot while another
/// uses A's (soon stale) ticket. The stale ticket may reach A but never B: B is never cancelled
/// or read through it, and B is removed intact.
#[test]
fn request_table_stale_ticket_never_reaches_new_entry() {
    run_model("table::stale_ticket_race", || {
        let table = Arc::new(RequestTable::with_capacity(1));
        let ta = table.insert("a").unwrap();
        let owner = {
            let table = Arc::clone(&table);
            thread::spawn(move || {
                let a = table.remove(ta);
                assert_eq!(a, Some("a"));
                table.insert("b").unwrap()
            })
        };
        let stale = {
            let table = Arc::clone(&table);
            thread::spawn(move || {
                let cancelled = table.cancel(ta);
                let seen = table.with(ta, |v| *v);
                assert!(seen.is_none() || seen == Some("a"));
                cancelled
            })
        };
        let tb = owner.join().unwrap();
        let _ = stale.join().unwrap();
        assert_eq!(ta.index(), tb.index());
        assert!(
            !table.is_cancelled(tb),
            "a stale ticket cancelled the new entry"
        );
        assert!(!table.cancel(ta));
        assert_eq!(table.remove(ta), None);
        assert_eq!(table.remove(tb), Some("b"));
    });
}

/// A reader inside `with` and a concurrent `remove` of the same entry: the remover waits for the
/// reader, so the value is never dropped while the reader is inside, the reader sees the whole
/// value, and the value is dropped once. The reader yields inside its closure so that loom
/// schedules the remover there (without it a remove that does not wait passed this model), and
/// checks the value's drop counter (a remove that does not wait fails it).
#[test]
fn request_table_remove_waits_for_reader() {
    run_model("table::remove_vs_reader", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let table = Arc::new(RequestTable::with_capacity(1));
        let t = table.insert(Tracked(7, Arc::clone(&drops))).ok().unwrap();
        let reader = {
            let table = Arc::clone(&table);
            let drops = Arc::clone(&drops);
            thread::spawn(move || {
                table.with(t, |v| {
                    thread::yield_now();
                    // Relaxed: `remove` waits for this reader before it moves the value out, so
                    // a drop would happen-after this load; seeing it means it did not wait.
                    assert_eq!(drops.load(Ordering::Relaxed), 0, "dropped under a reader");
                    v.0
                })
            })
        };
        let removed = table.remove(t).map(|v| v.0);
        assert_eq!(removed, Some(7));
        let seen = reader.join().unwrap();
        assert!(seen.is_none() || seen == Some(7));
        // Relaxed: after join.
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert!(table.is_empty());
    });
}

/// Store-buffering shape over two bounded queues: each thread pushes into its own queue, then
/// pops the other's. Each push is linearized before its own thread's pop, so if both pops were
/// linearized before the other thread's push the order would be cyclic: at least one pop must
/// see a value. This is what the `SeqCst` fences between a stale stamp and the other index buy
/// (a weaker empty check lets both threads read the other queue's index stale).
#[test]
fn bounded_queue_empty_checks_are_linearizable() {
    run_model("bounded::empty_is_linearizable", || {
        let a = Arc::new(BoundedQueue::with_capacity(1));
        let b = Arc::new(BoundedQueue::with_capacity(1));
        let other = {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            thread::spawn(move || {
                a.try_push(1u32).unwrap();
                b.pop()
            })
        };
        b.try_push(2u32).unwrap();
        let mine = a.pop();
        let theirs = other.join().unwrap();
        assert!(
            mine.is_some() || theirs.is_some(),
            "both pops reported empty after both pushes were linearized before them"
        );
    });
}

/// The same shape for "full". Both capacity-1 queues start full; thread 1 pops `a` and then
/// pushes into `b`, thread 2 pops `b` and then pushes into `a`. A refused push is linearized
/// while its queue is full, i.e. before the other thread's pop of that queue, which follows that
/// thread's own (refused) push: if both were refused the order would be cyclic.
#[test]
fn bounded_queue_full_checks_are_linearizable() {
    run_model("bounded::full_is_linearizable", || {
        let a = Arc::new(BoundedQueue::with_capacity(1));
        let b = Arc::new(BoundedQueue::with_capacity(1));
        a.try_push(10u32).unwrap();
        b.try_push(20u32).unwrap();
        let other = {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            thread::spawn(move || {
                assert_eq!(a.pop(), Some(10));
                b.try_push(21).is_ok()
            })
        };
        assert_eq!(b.pop(), Some(20));
        let mine = a.try_push(11).is_ok();
        let theirs = other.join().unwrap();
        assert!(mine || theirs, "both pushes were refused as full");
    });
}

/// The store-buffering shape for the unbounded `Queue`'s empty pre-check: each thread pushes
/// into its own queue, then pops the other's; at least one pop must see a value. This checks the
/// pre-check's logic (it fails if the pre-check trusts the consumers' `enq_seen` cache alone),
/// not its orderings: it still passes with every ordering in `queue.rs` weakened to Relaxed
/// (loom does not model SeqCst accesses, tokio-rs/loom#180), so the SeqCst argument in
/// docs/ORDERINGS.md rests on review.
#[test]
fn queue_empty_check_is_linearizable() {
    run_model("queue::empty_is_linearizable", || {
        let a = Arc::new(Queue::new());
        let b = Arc::new(Queue::new());
        let other = {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            thread::spawn(move || {
                a.push(1u32);
                b.pop()
            })
        };
        b.push(2u32);
        let mine = a.pop();
        let theirs = other.join().unwrap();
        assert!(
            mine.is_some() || theirs.is_some(),
            "both pops reported empty after both pushes were linearized before them"
        );
    });
}
