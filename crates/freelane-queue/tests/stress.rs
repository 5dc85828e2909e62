//! Multi-thread stress tests: conservation (nothing lost, nothing duplicated, every value dropped
//! exactly once) and per-producer FIFO order, from 1P1C to oversubscribed 8P8C.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use freelane_queue::{BoundedQueue, Queue, RequestTable};

/// Values per producer.
const N: usize = if cfg!(miri) { 40 } else { 20_000 };

/// A value that counts its drops, so tests can check every value is dropped exactly once.
struct Tracked {
    producer: usize,
    seq: usize,
    drops: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// `producers` threads push `N` tracked values each, `consumers` threads pop until all arrived;
/// checks every (producer, seq) is seen exactly once, in per-producer order, and dropped once.
fn conservation_and_order(producers: usize, consumers: usize) {
    let q = Arc::new(Queue::new());
    let drops = Arc::new(AtomicUsize::new(0));
    let popped = Arc::new(AtomicUsize::new(0));
    let total = producers * N;
    let start = Arc::new(Barrier::new(producers + consumers));
    let mut handles = Vec::new();
    for p in 0..producers {
        let (q, drops, start) = (q.clone(), drops.clone(), start.clone());
        handles.push(thread::spawn(move || {
            start.wait();
            for seq in 0..N {
                q.push(Tracked {
                    producer: p,
                    seq,
                    drops: drops.clone(),
                });
            }
            Vec::new()
        }));
    }
    for _ in 0..consumers {
        let (q, popped, start) = (q.clone(), popped.clone(), start.clone());
        handles.push(thread::spawn(move || {
            start.wait();
            let mut seen = Vec::new();
            let mut last = vec![None::<usize>; producers];
            while popped.load(Ordering::Relaxed) < total {
                match q.pop() {
                    Some(v) => {
                        popped.fetch_add(1, Ordering::Relaxed);
                        if let Some(prev) = last[v.producer] {
                            assert!(v.seq > prev, "per-producer FIFO order violated");
                        }
                        last[v.producer] = Some(v.seq);
                        seen.push((v.producer, v.seq));
                    }
                    None => thread::yield_now(),
                }
            }
            seen
        }));
    }
    let mut all: Vec<(usize, usize)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), total, "values lost or duplicated");
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), total, "a value was popped twice");
    assert_eq!(q.pop().map(|v| v.seq), None);
    assert_eq!(
        drops.load(Ordering::Relaxed),
        total,
        "each value dropped exactly once"
    );
    assert!(q.is_empty());
}

#[test]
fn queue_conserves_values_1p1c() {
    conservation_and_order(1, 1);
}

#[test]
fn queue_conserves_values_2p2c() {
    conservation_and_order(2, 2);
}

#[test]
fn queue_conserves_values_4p4c() {
    conservation_and_order(4, 4);
}

#[test]
#[cfg_attr(miri, ignore)]
fn queue_conserves_values_8p8c_oversubscribed() {
    conservation_and_order(8, 8);
}

#[test]
#[cfg_attr(miri, ignore)]
fn queue_conserves_values_1p8c_and_8p1c() {
    conservation_and_order(1, 8);
    conservation_and_order(8, 1);
}

#[test]
fn queue_drop_drops_remaining_values_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let pushed = if cfg!(miri) { 70 } else { 5000 };
    {
        let q = Queue::new();
        for seq in 0..pushed {
            q.push(Tracked {
                producer: 0,
                seq,
                drops: drops.clone(),
            });
        }
        for _ in 0..pushed / 3 {
            drop(q.pop().unwrap());
        }
        assert_eq!(drops.load(Ordering::Relaxed), pushed / 3);
        assert_eq!(q.len(), pushed - pushed / 3);
    }
    assert_eq!(drops.load(Ordering::Relaxed), pushed);
}

#[test]
fn queue_drop_after_concurrent_use_drops_leftovers_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let q = Arc::new(Queue::new());
    let threads: Vec<_> = (0..4)
        .map(|p| {
            let (q, drops) = (q.clone(), drops.clone());
            thread::spawn(move || {
                let mut popped = 0;
                for seq in 0..N {
                    q.push(Tracked {
                        producer: p,
                        seq,
                        drops: drops.clone(),
                    });
                    if seq % 3 == 0 && q.pop().is_some() {
                        popped += 1;
                    }
                }
                popped
            })
        })
        .collect();
    let popped: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(drops.load(Ordering::Relaxed), popped);
    assert_eq!(q.len(), 4 * N - popped);
    drop(q);
    assert_eq!(drops.load(Ordering::Relaxed), 4 * N);
}

#[test]
fn queue_handles_zero_sized_values() {
    let q = Arc::new(Queue::<()>::new());
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || (0..N).for_each(|_| q.push(())))
        })
        .collect();
    let mut got = 0;
    while got < 2 * N {
        if q.pop().is_some() {
            got += 1;
        }
    }
    producers.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(q.pop(), None);
    assert_eq!(q.len(), 0);
}

#[test]
fn queue_handles_large_values() {
    type Big = [u64; 512];
    let n = if cfg!(miri) { 40 } else { 3000 };
    let q = Arc::new(Queue::<Box<Big>>::new());
    let q2 = Arc::new(Queue::<Big>::new());
    let producer = {
        let (q, q2) = (q.clone(), q2.clone());
        thread::spawn(move || {
            for i in 0..n as u64 {
                q.push(Box::new([i; 512]));
                q2.push([i; 512]);
            }
        })
    };
    let (mut a, mut b) = (0u64, 0u64);
    while a < n as u64 || b < n as u64 {
        if let Some(v) = q.pop() {
            assert!(v.iter().all(|&x| x == a));
            a += 1;
        }
        if let Some(v) = q2.pop() {
            assert!(v.iter().all(|&x| x == b));
            b += 1;
        }
    }
    producer.join().unwrap();
}

#[test]
fn bounded_conserves_values_under_contention() {
    for (producers, consumers) in [(1, 1), (2, 2), (4, 4), (8, 8)] {
        if cfg!(miri) && producers > 2 {
            continue;
        }
        let q = Arc::new(BoundedQueue::with_capacity(4));
        let drops = Arc::new(AtomicUsize::new(0));
        let popped = Arc::new(AtomicUsize::new(0));
        let total = producers * N;
        let mut handles = Vec::new();
        for p in 0..producers {
            let (q, drops) = (q.clone(), drops.clone());
            handles.push(thread::spawn(move || {
                for seq in 0..N {
                    let mut v = Tracked {
                        producer: p,
                        seq,
                        drops: drops.clone(),
                    };
                    loop {
                        match q.try_push(v) {
                            Ok(()) => break,
                            Err(full) => {
                                v = full.into_inner();
                                thread::yield_now();
                            }
                        }
                    }
                }
                Vec::new()
            }));
        }
        for _ in 0..consumers {
            let (q, popped) = (q.clone(), popped.clone());
            handles.push(thread::spawn(move || {
                let mut seen = Vec::new();
                let mut last = vec![None::<usize>; producers];
                while popped.load(Ordering::Relaxed) < total {
                    assert!(q.len() <= q.capacity());
                    match q.pop() {
                        Some(v) => {
                            popped.fetch_add(1, Ordering::Relaxed);
                            if let Some(prev) = last[v.producer] {
                                assert!(v.seq > prev, "per-producer FIFO order violated");
                            }
                            last[v.producer] = Some(v.seq);
                            seen.push((v.producer, v.seq));
                        }
                        None => thread::yield_now(),
                    }
                }
                seen
            }));
        }
        let mut all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), total);
        assert_eq!(drops.load(Ordering::Relaxed), total);
    }
}

#[test]
fn bounded_concurrent_pushes_accept_exactly_capacity() {
    let cap = 37;
    let q = Arc::new(BoundedQueue::with_capacity(cap));
    let accepted: usize = (0..4)
        .map(|t| {
            let q = q.clone();
            thread::spawn(move || (0..50).filter(|i| q.try_push(t * 100 + i).is_ok()).count())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .sum();
    assert_eq!(accepted, cap);
    assert_eq!(q.len(), cap);
}

#[test]
fn bounded_drop_drops_remaining_values_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    {
        let q = BoundedQueue::with_capacity(8);
        // Wrap around the ring a few times first.
        for seq in 0..13 {
            q.try_push(Tracked {
                producer: 0,
                seq,
                drops: drops.clone(),
            })
            .ok()
            .unwrap();
            if seq % 2 == 0 {
                drop(q.pop());
            }
        }
        assert_eq!(drops.load(Ordering::Relaxed), 7);
        assert_eq!(q.len(), 6);
    }
    assert_eq!(drops.load(Ordering::Relaxed), 13);
}

#[test]
fn table_concurrent_insert_cancel_remove_conserves_entries() {
    let cap = 16;
    let table = Arc::new(RequestTable::with_capacity(cap));
    let drops = Arc::new(AtomicUsize::new(0));
    let rounds = if cfg!(miri) { 30 } else { 20_000 };
    let threads: Vec<_> = (0..4)
        .map(|p| {
            let (table, drops) = (table.clone(), drops.clone());
            thread::spawn(move || {
                let mut removed = 0usize;
                let mut stale = Vec::new();
                for seq in 0..rounds {
                    let v = Tracked {
                        producer: p,
                        seq,
                        drops: drops.clone(),
                    };
                    let Ok(t) = table.insert(v) else {
                        continue;
                    };
                    assert_eq!(table.with(t, |v| (v.producer, v.seq)), Some((p, seq)));
                    if seq % 2 == 0 {
                        assert!(table.cancel(t));
                        assert!(table.is_cancelled(t));
                    }
                    let v = table.remove(t).expect("own ticket is live");
                    assert_eq!((v.producer, v.seq), (p, seq));
                    drop(v);
                    removed += 1;
                    // Stale tickets of earlier rounds must never reach anything.
                    for &s in &stale {
                        assert!(!table.cancel(s));
                        assert!(table.with(s, |_| ()).is_none());
                        assert!(table.remove(s).is_none());
                    }
                    if stale.len() < 4 {
                        stale.push(t);
                    }
                }
                removed
            })
        })
        .collect();
    let removed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(drops.load(Ordering::Relaxed), removed);
    assert!(table.is_empty());
}

#[test]
fn table_racing_removes_give_the_value_to_exactly_one() {
    let rounds = if cfg!(miri) { 20 } else { 2000 };
    let table = Arc::new(RequestTable::with_capacity(2));
    for i in 0..rounds {
        let t = table.insert(i).unwrap();
        let winners: usize = (0..3)
            .map(|_| {
                let table = table.clone();
                thread::spawn(move || {
                    let _ = table.with(t, |v| *v);
                    usize::from(table.remove(t) == Some(i))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(winners, 1);
    }
}
