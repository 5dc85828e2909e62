//! Models of freelane-log's ring and drainer: two producers and the background drainer (a loom
//! thread started by the builder), a 2-slot ring so the models reach a full ring and wrap-around.
#![cfg(freelane_loom)]

use std::io;

use freelane_log::{Builder, Logger, Overflow};
use freelane_sync::sync::Arc;
// The test's own sink is outside the protocol under test; a std mutex keeps it out of the model.
use freelane_sync::thread;
use loom_tests::run_model;
use std::sync::Mutex;

/// A writer into shared memory.
#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);

impl io::Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Out {
    fn sorted_lines(&self) -> Vec<String> {
        let data = self.0.lock().unwrap().clone();
        let mut v: Vec<String> = String::from_utf8(data)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }
}

/// Runs one producer thread per `(prefix, count)`, each writing lines `{prefix}0`, `{prefix}1`,
/// ... through `logger`, and joins them.
fn produce(logger: &Logger, producers: &[(&'static str, usize)]) {
    let handles: Vec<_> = producers
        .iter()
        .map(|&(p, k)| {
            let logger = logger.clone();
            thread::spawn(move || {
                for i in 0..k {
                    logger.write_raw(None, format!("{p}{i}\n").as_bytes());
                }
            })
        })
        .collect();
    for t in handles {
        t.join().unwrap();
    }
}

/// Block mode: the producers push `per_producer` events each into a 2-slot ring, so producers
/// find it full and sleep until the drainer frees slots (the event-count wait: register, re-check,
/// wait on the condition variable; under loom without a timeout, so a lost wake-up is a deadlock
/// loom reports). After the guard's shutdown every event is in the output exactly once.
fn block_model(per_producer: [usize; 2]) {
    let out = Out::default();
    let (logger, guard) = Builder::new()
        .capacity(2)
        .overflow(Overflow::Block)
        .build(out.clone())
        .unwrap();
    produce(&logger, &[("a", per_producer[0]), ("b", per_producer[1])]);
    let stats = guard.shutdown(std::time::Duration::from_secs(1)).unwrap();
    let mut expected: Vec<String> = ["a", "b"]
        .into_iter()
        .zip(per_producer)
        .flat_map(|(p, k)| (0..k).map(move |i| format!("{p}{i}")))
        .collect();
    expected.sort();
    assert_eq!(out.sorted_lines(), expected);
    let n = expected.len() as u64;
    assert_eq!((stats.emitted, stats.written, stats.dropped), (n, n, 0));
}

/// Two producers, 3 events, 2 slots: one producer must wait for the drainer. (With a wait that
/// spins this model needed more than 4 minutes at bound 2; with the sleeping wait it takes
/// seconds, so it runs at the suite's bound. Removing the drainer's notification, either
/// `SeqCst` fence, or the drainer's lock around the notification makes it report a deadlock.)
#[test]
fn block_mode_two_producers_lose_nothing() {
    run_model("log::block_two_producers", || block_model([2, 1]));
}

/// Both producers may wait at once: 2 events each into 2 slots (4 events); about 10 s at bound 2.
#[test]
fn block_mode_two_waiting_producers_lose_nothing() {
    run_model("log::block_two_waiting_producers", || block_model([2, 2]));
}

/// Drop mode: two producers push 3 events into a 2-slot ring; whatever the interleaving,
/// every event is either written exactly once or counted as dropped, never both, never neither.
#[test]
fn drop_mode_counts_drops_exactly() {
    run_model("log::drop_counts", || {
        let out = Out::default();
        let (logger, guard) = Builder::new()
            .capacity(2)
            .overflow(Overflow::Drop)
            .never_drop(None)
            .build(out.clone())
            .unwrap();
        produce(&logger, &[("a", 2), ("b", 1)]);
        let stats = guard.shutdown(std::time::Duration::from_secs(1)).unwrap();
        let lines = out.sorted_lines();
        let mut dedup = lines.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), lines.len(), "a line was written twice");
        assert_eq!(stats.emitted, 3);
        assert_eq!(stats.written, lines.len() as u64);
        assert_eq!(stats.written + stats.dropped, 3);
    });
}

/// Dropping the guard flushes everything pushed before it (the joined producer's events), while
/// a producer racing the drop has its event either written or counted as dropped.
#[test]
fn guard_drop_flushes_everything_pushed_before_it() {
    run_model("log::guard_drop_flush", || {
        let out = Out::default();
        let (logger, guard) = Builder::new()
            .capacity(2)
            .overflow(Overflow::Block)
            .never_drop(None)
            .build(out.clone())
            .unwrap();
        let l1 = logger.clone();
        thread::spawn(move || l1.write_raw(None, b"before\n"))
            .join()
            .unwrap();
        let l2 = logger.clone();
        let racer = thread::spawn(move || l2.write_raw(None, b"racing\n"));
        drop(guard);
        racer.join().unwrap();
        let lines = out.sorted_lines();
        assert!(lines.contains(&"before".to_string()), "{lines:?}");
        let stats = logger.stats();
        assert_eq!(stats.emitted, 2);
        assert_eq!(stats.written + stats.dropped, 2);
        assert_eq!(stats.written, lines.len() as u64);
    });
}
