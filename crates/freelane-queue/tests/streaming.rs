//! Memory stays bounded while values stream through a `Queue`: used-up segments are unlinked and
//! freed by the epoch collector, not leaked. Alone in this test binary, because the segment
//! counter (`live_segments`) is process-wide.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use freelane_queue::{live_segments, Queue};

#[test]
fn queue_memory_stays_bounded_while_streaming() {
    let items: usize = if cfg!(miri) { 1200 } else { 3_000_000 };
    let q = Arc::new(Queue::new());
    let done = Arc::new(AtomicBool::new(false));
    let max_live = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, max_live) = (done.clone(), max_live.clone());
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                max_live.fetch_max(live_segments(), Ordering::Relaxed);
                thread::yield_now();
            }
        })
    };
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..items / 2 {
                    q.push(i as u64);
                    // Keep the backlog small so the live segment count measures garbage, not data.
                    while i % 64 == 0 && q.len() > 4096 {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || {
                let mut got = 0usize;
                while got < items / 2 {
                    if q.pop().is_some() {
                        got += 1;
                    } else {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    producers.into_iter().for_each(|t| t.join().unwrap());
    consumers.into_iter().for_each(|t| t.join().unwrap());
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let segments_streamed = items / 1024;
    let max = max_live.load(Ordering::Relaxed).max(live_segments());
    eprintln!("streamed {items} items ({segments_streamed} segments), max live segments {max}");
    // A leak would keep every segment alive; epoch reclamation keeps a small, bounded number
    // (the backlog of ~5 segments plus garbage awaiting two epoch advances).
    assert!(
        cfg!(miri) || max < 256,
        "live segments reached {max} while streaming {segments_streamed}"
    );
    drop(q);
}
