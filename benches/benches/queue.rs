//! freelane-queue against its peers.
//!
//! Multi-thread numbers are interleaved rep by rep (`freelane_benches::interleaved`) and quoted as
//! medians and ratios; absolute numbers on a shared, migrating 2-vCPU machine mean little.
//!
//! 1. Hand-off throughput (push+pop pairs/s), PpPc with P producers and P consumers: `Queue` vs
//!    crossbeam `SegQueue`, `ArrayQueue(1024)`, `concurrent-queue` (unbounded), crossbeam-channel,
//!    flume, `Mutex<VecDeque>` (std, parking_lot), at 1P1C / 2P2C / 4P4C / 8P8C.
//! 2. Single-thread push+pop (ns per pair), interleaved, then criterion for the record.
//! 3. Bounded hand-off at capacity 1024: `BoundedQueue` vs `ArrayQueue` vs `concurrent-queue`
//!    bounded, at 1P1C / 2P2C.
//! 4. Push-to-pop hand-off latency p50 / p99 (one value in flight at a time).
//!
//! `FREELANE_BENCH_QUICK=1` (or `--quick`) shrinks everything to a few seconds.
//! Run: `cargo bench -p freelane-benches --bench queue`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use freelane_benches::{interleaved, quantile_sorted, run_threads, Candidate, Machine, Outcome};
use freelane_queue::{BoundedQueue, Queue};

/// A producer pauses while more than this many values are queued, so unbounded queues do not
/// grow without limit when producers outrun consumers.
const BACKLOG: usize = 1 << 16;

/// The operations every candidate offers.
trait Mpmc: Send + Sync + 'static {
    /// Push; `false` when a bounded queue is full.
    fn put(&self, v: u64) -> bool;
    fn take(&self) -> Option<u64>;
    fn count(&self) -> usize;
}

impl Mpmc for Queue<u64> {
    fn put(&self, v: u64) -> bool {
        self.push(v);
        true
    }
    fn take(&self) -> Option<u64> {
        self.pop()
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Mpmc for BoundedQueue<u64> {
    fn put(&self, v: u64) -> bool {
        self.try_push(v).is_ok()
    }
    fn take(&self) -> Option<u64> {
        self.pop()
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Mpmc for crossbeam_queue::SegQueue<u64> {
    fn put(&self, v: u64) -> bool {
        self.push(v);
        true
    }
    fn take(&self) -> Option<u64> {
        self.pop()
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Mpmc for crossbeam_queue::ArrayQueue<u64> {
    fn put(&self, v: u64) -> bool {
        self.push(v).is_ok()
    }
    fn take(&self) -> Option<u64> {
        self.pop()
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Mpmc for concurrent_queue::ConcurrentQueue<u64> {
    fn put(&self, v: u64) -> bool {
        self.push(v).is_ok()
    }
    fn take(&self) -> Option<u64> {
        self.pop().ok()
    }
    fn count(&self) -> usize {
        self.len()
    }
}

/// A peer with `enqueue` / `dequeue` and no length: `count` returns 0, so its producers never
/// pause for the backlog (see `handoff_trial`; the bounded one never gets near it).
macro_rules! peer_without_len {
    ($ty:ty, |$q:ident, $v:ident| $put:expr) => {
        impl Mpmc for $ty {
            fn put(&self, $v: u64) -> bool {
                let $q = self;
                $put
            }
            fn take(&self) -> Option<u64> {
                self.dequeue()
            }
            fn count(&self) -> usize {
                0
            }
        }
    };
}

peer_without_len!(faa_array_queue::FaaArrayQueue<u64>, |q, v| {
    q.enqueue(v);
    true
});
peer_without_len!(lfqueue::UnboundedQueue<u64>, |q, v| {
    q.enqueue(v);
    true
});
peer_without_len!(lfqueue::AllocBoundedQueue<u64>, |q, v| q.enqueue(v).is_ok());

/// Both ends of a channel.
struct Chan<S, R>(S, R);

impl Mpmc for Chan<crossbeam_channel::Sender<u64>, crossbeam_channel::Receiver<u64>> {
    fn put(&self, v: u64) -> bool {
        self.0.try_send(v).is_ok()
    }
    fn take(&self) -> Option<u64> {
        self.1.try_recv().ok()
    }
    fn count(&self) -> usize {
        self.1.len()
    }
}

impl Mpmc for Chan<flume::Sender<u64>, flume::Receiver<u64>> {
    fn put(&self, v: u64) -> bool {
        self.0.try_send(v).is_ok()
    }
    fn take(&self) -> Option<u64> {
        self.1.try_recv().ok()
    }
    fn count(&self) -> usize {
        self.1.len()
    }
}

impl Mpmc for std::sync::Mutex<VecDeque<u64>> {
    fn put(&self, v: u64) -> bool {
        self.lock().unwrap().push_back(v);
        true
    }
    fn take(&self) -> Option<u64> {
        self.lock().unwrap().pop_front()
    }
    fn count(&self) -> usize {
        self.lock().unwrap().len()
    }
}

impl Mpmc for parking_lot::Mutex<VecDeque<u64>> {
    fn put(&self, v: u64) -> bool {
        self.lock().push_back(v);
        true
    }
    fn take(&self) -> Option<u64> {
        self.lock().pop_front()
    }
    fn count(&self) -> usize {
        self.lock().len()
    }
}

type Factory = fn() -> Arc<dyn Mpmc>;

fn unbounded_candidates() -> Vec<(&'static str, Factory)> {
    vec![
        ("freelane Queue", || Arc::new(Queue::<u64>::new())),
        ("crossbeam SegQueue", || {
            Arc::new(crossbeam_queue::SegQueue::<u64>::new())
        }),
        ("crossbeam ArrayQueue(1024)", || {
            Arc::new(crossbeam_queue::ArrayQueue::<u64>::new(1024))
        }),
        ("faa_array_queue (FAA, boxes)", || {
            Arc::new(faa_array_queue::FaaArrayQueue::<u64>::default())
        }),
        ("lfqueue unbounded (LSCQ)", || {
            Arc::new(lfqueue::UnboundedQueue::<u64>::new())
        }),
        ("concurrent-queue unbounded", || {
            Arc::new(concurrent_queue::ConcurrentQueue::<u64>::unbounded())
        }),
        ("crossbeam-channel unbounded", || {
            let (s, r) = crossbeam_channel::unbounded();
            Arc::new(Chan(s, r))
        }),
        ("flume unbounded", || {
            let (s, r) = flume::unbounded();
            Arc::new(Chan(s, r))
        }),
        ("std Mutex<VecDeque>", || {
            Arc::new(std::sync::Mutex::new(VecDeque::new()))
        }),
        ("parking_lot Mutex<VecDeque>", || {
            Arc::new(parking_lot::Mutex::new(VecDeque::new()))
        }),
    ]
}

fn bounded_candidates() -> Vec<(&'static str, Factory)> {
    vec![
        ("freelane BoundedQueue(1024)", || {
            Arc::new(BoundedQueue::<u64>::with_capacity(1024))
        }),
        ("crossbeam ArrayQueue(1024)", || {
            Arc::new(crossbeam_queue::ArrayQueue::<u64>::new(1024))
        }),
        ("concurrent-queue bounded(1024)", || {
            Arc::new(concurrent_queue::ConcurrentQueue::<u64>::bounded(1024))
        }),
        ("lfqueue bounded(1024) (SCQ)", || {
            Arc::new(lfqueue::AllocBoundedQueue::<u64>::new(1024))
        }),
    ]
}

/// One hand-off trial: `pairs` producers and `pairs` consumers for `dur`; returns pops/s.
///
/// Candidates without a length (`count` returns 0) never pause, so their backlog is unbounded
/// within a trial.
fn handoff_trial(make: Factory, pairs: usize, dur: Duration) -> f64 {
    let q = make();
    let (ops, elapsed) = run_threads(2 * pairs, dur, move |t, stop| {
        let mut n = 0u64;
        if t % 2 == 0 {
            // Producer: push until stopped (retrying when full), pausing on a large backlog.
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if q.put(v) {
                    v += 1;
                    if v % 1024 == 0 {
                        while q.count() > BACKLOG && !stop.load(Ordering::Relaxed) {
                            std::thread::yield_now();
                        }
                    }
                } else {
                    std::hint::spin_loop();
                }
            }
            0
        } else {
            // Consumer: count successful pops.
            while !stop.load(Ordering::Relaxed) {
                if let Some(v) = q.take() {
                    black_box(v);
                    n += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
            n
        }
    });
    ops as f64 / elapsed.as_secs_f64()
}

fn report(title: &str, outcomes: &[Outcome], baseline: &str, unit: f64, unit_name: &str) {
    let base = outcomes
        .iter()
        .find(|o| o.name == baseline)
        .map_or(f64::NAN, |o| o.median);
    println!("{title}");
    for o in outcomes {
        let (lo, hi) = o
            .rates
            .iter()
            .fold((f64::INFINITY, 0f64), |(l, h), &r| (l.min(r), h.max(r)));
        println!(
            "  {:<32} median {:>9.2} {unit_name}  (min {:>8.2}, max {:>8.2})  {:>5.2}x {baseline}",
            o.name,
            o.median / unit,
            lo / unit,
            hi / unit,
            o.median / base
        );
    }
}

fn single_thread_trial(make: Factory, iters: u64) -> f64 {
    let q = make();
    let t0 = Instant::now();
    for i in 0..iters {
        q.put(black_box(i));
        black_box(q.take());
    }
    iters as f64 / t0.elapsed().as_secs_f64()
}

/// Push-to-pop latency with one value in flight: the producer stamps a value, the consumer
/// records `now - stamp` and acknowledges; the producer waits for the acknowledgement.
fn latency_samples(make: Factory, samples: usize) -> Vec<u64> {
    let q = make();
    let base = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (q, acked, done) = (Arc::clone(&q), Arc::clone(&acked), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut lat = Vec::with_capacity(samples);
            while !done.load(Ordering::Relaxed) {
                if let Some(stamp) = q.take() {
                    let now = base.elapsed().as_nanos() as u64;
                    lat.push(now.saturating_sub(stamp));
                    // Release: lets the producer's Acquire load see the hand-off completed.
                    acked.fetch_add(1, Ordering::Release);
                } else {
                    std::hint::spin_loop();
                }
            }
            lat
        })
    };
    for i in 0..samples as u64 {
        let stamp = base.elapsed().as_nanos() as u64;
        while !q.put(stamp) {
            std::hint::spin_loop();
        }
        // Acquire: pairs with the consumer's Release increment.
        while acked.load(Ordering::Acquire) <= i {
            std::hint::spin_loop();
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut lat = consumer.join().expect("latency consumer panicked");
    lat.sort_unstable();
    lat
}

fn main() {
    let quick = std::env::var_os("FREELANE_BENCH_QUICK").is_some_and(|v| v != "0")
        || std::env::args().any(|a| a == "--quick");
    let (reps, dur) = if quick {
        (3, Duration::from_millis(40))
    } else {
        (7, Duration::from_millis(150))
    };
    let m = Machine::detect();
    println!(
        "freelane-queue bench: {} cores, {}, {} (quick: {quick}); interleaved, {reps} reps x {dur:?}",
        m.cores, m.cpu, m.date
    );

    // 1. Unbounded hand-off throughput.
    for pairs in [1usize, 2, 4, 8] {
        let cands = unbounded_candidates();
        let mut cs: Vec<Candidate<'_>> = cands
            .iter()
            .map(|&(name, make)| Candidate {
                name,
                trial: Box::new(move || handoff_trial(make, pairs, dur)),
            })
            .collect();
        let out = interleaved(reps, &mut cs);
        report(
            &format!("hand-off {pairs}P{pairs}C (push+pop pairs)"),
            &out,
            "crossbeam SegQueue",
            1e6,
            "Mops/s",
        );
    }

    // 2. Single thread push+pop.
    let iters = if quick { 200_000 } else { 2_000_000 };
    let mut cands = unbounded_candidates();
    cands.insert(
        1,
        ("freelane BoundedQueue(1024)", bounded_candidates()[0].1),
    );
    let mut cs: Vec<Candidate<'_>> = cands
        .iter()
        .map(|&(name, make)| Candidate {
            name,
            trial: Box::new(move || single_thread_trial(make, iters)),
        })
        .collect();
    let out = interleaved(reps, &mut cs);
    println!("single thread push+pop (ns per pair, interleaved medians)");
    let seg = out
        .iter()
        .find(|o| o.name == "crossbeam SegQueue")
        .map_or(f64::NAN, |o| 1e9 / o.median);
    for o in &out {
        let ns = 1e9 / o.median;
        println!(
            "  {:<32} {:>7.2} ns  {:>5.2}x SegQueue's time",
            o.name,
            ns,
            ns / seg
        );
    }

    // 3. Bounded hand-off at capacity 1024.
    for pairs in [1usize, 2] {
        let cands = bounded_candidates();
        let mut cs: Vec<Candidate<'_>> = cands
            .iter()
            .map(|&(name, make)| Candidate {
                name,
                trial: Box::new(move || handoff_trial(make, pairs, dur)),
            })
            .collect();
        let out = interleaved(reps, &mut cs);
        report(
            &format!("bounded hand-off {pairs}P{pairs}C, capacity 1024"),
            &out,
            "crossbeam ArrayQueue(1024)",
            1e6,
            "Mops/s",
        );
    }

    // 4. Hand-off latency, rounds interleaved.
    let samples = if quick { 2_000 } else { 20_000 };
    let lat_cands: Vec<(&str, Factory)> = {
        let mut v = unbounded_candidates();
        v.truncate(2);
        v.push(("crossbeam-channel unbounded", unbounded_candidates()[4].1));
        v.extend(bounded_candidates().into_iter().take(2));
        v
    };
    let mut all: Vec<Vec<u64>> = vec![Vec::new(); lat_cands.len()];
    for _ in 0..reps {
        for (i, &(_, make)) in lat_cands.iter().enumerate() {
            all[i].extend(latency_samples(make, samples / reps));
        }
    }
    println!("push-to-pop latency, 1P1C, one value in flight (ns)");
    for ((name, _), lat) in lat_cands.iter().zip(&mut all) {
        lat.sort_unstable();
        println!(
            "  {:<32} p50 {:>7}  p99 {:>7}  ({} samples)",
            name,
            quantile_sorted(lat, 0.5),
            quantile_sorted(lat, 0.99),
            lat.len()
        );
    }

    // 5. criterion single-thread micro benches, for the record.
    let mut c = Criterion::default()
        .sample_size(if quick { 10 } else { 30 })
        .warm_up_time(Duration::from_millis(if quick { 100 } else { 500 }))
        .measurement_time(Duration::from_millis(if quick { 300 } else { 1500 }))
        .configure_from_args();
    {
        let q = Queue::<u64>::new();
        c.bench_function("queue/single/freelane Queue push+pop", |b| {
            b.iter(|| {
                q.push(black_box(1));
                black_box(q.pop())
            })
        });
        let q = crossbeam_queue::SegQueue::<u64>::new();
        c.bench_function("queue/single/crossbeam SegQueue push+pop", |b| {
            b.iter(|| {
                q.push(black_box(1));
                black_box(q.pop())
            })
        });
        let q = BoundedQueue::<u64>::with_capacity(1024);
        c.bench_function("queue/single/freelane BoundedQueue push+pop", |b| {
            b.iter(|| {
                let _ = q.try_push(black_box(1));
                black_box(q.pop())
            })
        });
        let q = crossbeam_queue::ArrayQueue::<u64>::new(1024);
        c.bench_function("queue/single/crossbeam ArrayQueue push+pop", |b| {
            b.iter(|| {
                let _ = q.push(black_box(1));
                black_box(q.pop())
            })
        });
    }
    c.final_summary();
}
