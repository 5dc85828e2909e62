//! Load board pick-least-of-8 + acquire + release at 1 / 2 / 4 / 8 threads: freelane
//! `LoadBoard` (packed load words) vs an unpadded `[AtomicU64; 8]` scan (as allocated in an `Arc`,
//! and on one aligned line as the board keeps its words), a cache-padded
//! per-GPU counter scan and padded exact counters with a packed snapshot line for the pick (the
//! layout trade-off), std `Mutex<[u64; 8]>` and parking_lot
//! `Mutex<[u64; 8]>`. Throughput medians of interleaved rounds, plus the p99.9 latency of one
//! operation (sampled every 64th operation). Every trial checks the balance returns to zero.
//! Every candidate's `acquire` and `release` are `#[inline(never)]`, so all run inlined in the
//! timing loop: left to itself the compiler inlined the bare scans and mutexes but called the
//! LoadBoard's larger pick out of line (a call, and the board's fields reloaded every time).
//!
//! `cargo bench -p freelane-benches --bench load` (about a minute);
//! `FREELANE_BENCH_QUICK=1` for a few seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use freelane_benches::{interleaved, quantile_sorted, run_threads, Candidate, Machine};
use freelane_load::{LoadBoard, Policy};

const GPUS: usize = 8;

trait Board: Send + Sync + 'static {
    /// Picks the least loaded GPU, adds one, and returns a token that `release` undoes.
    fn acquire(self: &Arc<Self>) -> usize;
    fn release(&self, gpu: usize);
    fn total(&self) -> u64;
}

/// The 'static guard (clones the board's `Arc`: shared reference-count traffic).
struct Freelane(Arc<LoadBoard>);
impl Board for Freelane {
    #[inline(never)]
    fn acquire(self: &Arc<Self>) -> usize {
        let g = self
            .0
            .pick_and_acquire(Policy::LeastLoaded, 0, |_| true)
            .unwrap();
        let i = g.gpu().index();
        drop(g);
        i
    }
    #[inline(never)]
    fn release(&self, _gpu: usize) {}
    fn total(&self) -> u64 {
        (0..GPUS as u32)
            .map(|g| self.0.load(freelane_load::GpuId(g)))
            .sum()
    }
}

/// The borrowed guard (no `Arc` traffic).
struct FreelaneLocal(LoadBoard);
impl Board for FreelaneLocal {
    #[inline(never)]
    fn acquire(self: &Arc<Self>) -> usize {
        let g = self
            .0
            .pick_and_acquire_local(Policy::LeastLoaded, 0, |_| true)
            .unwrap();
        g.gpu().index()
    }
    #[inline(never)]
    fn release(&self, _gpu: usize) {}
    fn total(&self) -> u64 {
        (0..GPUS as u32)
            .map(|g| self.0.load(freelane_load::GpuId(g)))
            .sum()
    }
}

fn least(loads: impl Iterator<Item = u64>) -> usize {
    let mut best = (0, u64::MAX);
    for (i, l) in loads.enumerate() {
        if l < best.1 {
            best = (i, l);
        }
    }
    best.0
}

/// The bare scan over eight unpadded words, stored as `S`: a plain array (inside the `Arc`,
/// after its header, so the words straddle two lines) or one cache-aligned line, as the
/// LoadBoard keeps its words.
struct Unpadded<S>(S);

/// Storage for `Unpadded`'s words.
trait Words: Send + Sync + 'static {
    fn words(&self) -> &[AtomicU64; GPUS];
}
impl Words for [AtomicU64; GPUS] {
    fn words(&self) -> &[AtomicU64; GPUS] {
        self
    }
}
impl Words for CachePadded<[AtomicU64; GPUS]> {
    fn words(&self) -> &[AtomicU64; GPUS] {
        self
    }
}

impl<S: Words> Board for Unpadded<S> {
    #[inline(never)]
    fn acquire(self: &Arc<Self>) -> usize {
        let w = self.0.words();
        // Relaxed: counters only (same reasoning as LoadBoard).
        let g = least(w.iter().map(|a| a.load(Ordering::Relaxed)));
        w[g].fetch_add(1, Ordering::Relaxed);
        g
    }
    #[inline(never)]
    fn release(&self, g: usize) {
        // Relaxed: as above.
        self.0.words()[g].fetch_sub(1, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        // Relaxed: read after the trial's threads are joined.
        self.0
            .words()
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }
}

struct Padded([CachePadded<AtomicU64>; GPUS]);
impl Board for Padded {
    #[inline(never)]
    fn acquire(self: &Arc<Self>) -> usize {
        let g = least(self.0.iter().map(|a| a.load(Ordering::Relaxed)));
        self.0[g].fetch_add(1, Ordering::Relaxed);
        g
    }
    #[inline(never)]
    fn release(&self, g: usize) {
        self.0[g].fetch_sub(1, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        self.0.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

/// Exact per-GPU counters on their own lines (the RMWs) plus a packed, read-mostly snapshot line
/// that picks scan: after each RMW the thread stores the counter's new value into the snapshot
/// (a plain store, no lock prefix; racing stores can leave an entry stale by a request or two,
/// which only affects the pick, never the exact counters).
struct Snapshot {
    exact: [CachePadded<AtomicU64>; GPUS],
    snap: CachePadded<[AtomicU64; GPUS]>,
}
impl Board for Snapshot {
    #[inline(never)]
    fn acquire(self: &Arc<Self>) -> usize {
        // Relaxed: a hint for the pick; the exact counters are the RMWs below.
        let g = least(self.snap.iter().map(|a| a.load(Ordering::Relaxed)));
        // Relaxed: counters only (same reasoning as LoadBoard); the store is a hint.
        let v = self.exact[g].fetch_add(1, Ordering::Relaxed) + 1;
        self.snap[g].store(v, Ordering::Relaxed);
        g
    }
    #[inline(never)]
    fn release(&self, g: usize) {
        // Relaxed: as above.
        let v = self.exact[g].fetch_sub(1, Ordering::Relaxed) - 1;
        self.snap[g].store(v, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        self.exact.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

struct StdMutex(Mutex<[u64; GPUS]>);
impl Board for StdMutex {
    #[inline(never)]
    fn acquire(self: &Arc<Self>) -> usize {
        let mut m = self.0.lock().unwrap();
        let g = least(m.iter().copied());
        m[g] += 1;
        g
    }
    #[inline(never)]
    fn release(&self, g: usize) {
        self.0.lock().unwrap()[g] -= 1;
    }
    fn total(&self) -> u64 {
        self.0.lock().unwrap().iter().sum()
    }
}

struct PlMutex(parking_lot::Mutex<[u64; GPUS]>);
impl Board for PlMutex {
    #[inline(never)]
    fn acquire(self: &Arc<Self>) -> usize {
        let mut m = self.0.lock();
        let g = least(m.iter().copied());
        m[g] += 1;
        g
    }
    #[inline(never)]
    fn release(&self, g: usize) {
        self.0.lock()[g] -= 1;
    }
    fn total(&self) -> u64 {
        self.0.lock().iter().sum()
    }
}

/// One trial; returns ops/s and pushes sampled latencies (ns) into `lat`.
fn trial<B: Board>(b: &Arc<B>, threads: usize, dur: Duration, lat: &Mutex<Vec<u64>>) -> f64 {
    let lat_out = Arc::new(Mutex::new(Vec::new()));
    let (b2, l2) = (Arc::clone(b), Arc::clone(&lat_out));
    let (ops, elapsed) = run_threads(threads, dur, move |_, stop| {
        let mut n = 0u64;
        let mut samples = Vec::new();
        // Relaxed: the flag carries no data.
        while !stop.load(Ordering::Relaxed) {
            for i in 0..64 {
                if i == 0 {
                    let t = Instant::now();
                    let g = b2.acquire();
                    b2.release(g);
                    samples.push(t.elapsed().as_nanos() as u64);
                } else {
                    let g = b2.acquire();
                    b2.release(g);
                }
            }
            n += 64;
        }
        l2.lock().unwrap().extend(samples);
        n
    });
    assert_eq!(b.total(), 0, "board did not balance");
    lat.lock()
        .unwrap()
        .extend(lat_out.lock().unwrap().drain(..));
    ops as f64 / elapsed.as_secs_f64()
}

fn main() {
    let quick = std::env::var_os("FREELANE_BENCH_QUICK").is_some()
        || std::env::args().any(|a| a == "--quick");
    let (dur, reps) = if quick {
        (Duration::from_millis(40), 3)
    } else {
        (Duration::from_millis(300), 5)
    };
    let m = Machine::detect();
    println!(
        "load bench: {} cores ({}), {}; pick least of {GPUS} + acquire + release; medians of {reps} interleaved rounds",
        m.cores, m.cpu, m.date
    );
    let fl = Arc::new(Freelane(Arc::new(LoadBoard::new(GPUS))));
    let flb = Arc::new(FreelaneLocal(LoadBoard::new(GPUS)));
    let un = Arc::new(Unpadded(std::array::from_fn(|_| AtomicU64::new(0))));
    let al = Arc::new(Unpadded(CachePadded::new(std::array::from_fn(|_| {
        AtomicU64::new(0)
    }))));
    let pd = Arc::new(Padded(std::array::from_fn(|_| {
        CachePadded::new(AtomicU64::new(0))
    })));
    let sn = Arc::new(Snapshot {
        exact: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        snap: CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))),
    });
    let sm = Arc::new(StdMutex(Mutex::new([0; GPUS])));
    let pl = Arc::new(PlMutex(parking_lot::Mutex::new([0; GPUS])));
    for threads in [1, 2, 4, 8] {
        let lats: Vec<Mutex<Vec<u64>>> = (0..8).map(|_| Mutex::new(Vec::new())).collect();
        let mut cands = vec![
            Candidate {
                name: "freelane LoadBoard (local)",
                trial: Box::new(|| trial(&flb, threads, dur, &lats[0])),
            },
            Candidate {
                name: "freelane LoadBoard (Arc)",
                trial: Box::new(|| trial(&fl, threads, dur, &lats[1])),
            },
            Candidate {
                name: "unpadded [AtomicU64; 8]",
                trial: Box::new(|| trial(&un, threads, dur, &lats[2])),
            },
            Candidate {
                name: "padded atomics",
                trial: Box::new(|| trial(&pd, threads, dur, &lats[3])),
            },
            Candidate {
                name: "std Mutex<[u64; 8]>",
                trial: Box::new(|| trial(&sm, threads, dur, &lats[4])),
            },
            Candidate {
                name: "parking_lot Mutex",
                trial: Box::new(|| trial(&pl, threads, dur, &lats[5])),
            },
            Candidate {
                name: "padded + packed snapshot",
                trial: Box::new(|| trial(&sn, threads, dur, &lats[6])),
            },
            Candidate {
                name: "unpadded, one aligned line",
                trial: Box::new(|| trial(&al, threads, dur, &lats[7])),
            },
        ];
        let out = interleaved(reps, &mut cands);
        drop(cands);
        let mutex = out[4].median;
        println!("threads={threads}");
        for (i, o) in out.iter().enumerate() {
            let mut l = lats[i].lock().unwrap().clone();
            l.sort_unstable();
            println!(
                "  {:<28} {:>8.2} Mops/s  p50 {:>6} ns  p99.9 {:>8} ns  x{:.2} std Mutex",
                o.name,
                o.median / 1e6,
                quantile_sorted(&l, 0.5),
                quantile_sorted(&l, 0.999),
                o.median / mutex,
            );
        }
    }
}
