//! Seqlock read throughput of a 64-byte record with a concurrent writer (one write every ~1 µs),
//! at 1 / 2 / 4 / 8 readers: freelane `SeqLock` vs the `seqlock` crate, crossbeam `AtomicCell`,
//! arc-swap and std `RwLock`. Candidates run interleaved (A, B, C, ... per round; medians).
//! Every read checks the record for tearing (all eight words equal); torn reads are counted
//! and reported, as is the writer's rate.
//!
//! `cargo bench -p freelane-benches --bench seqlock` (about a minute and a half);
//! `FREELANE_BENCH_QUICK=1` for a few seconds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_utils::atomic::AtomicCell;
use freelane_benches::{interleaved, Candidate, Machine};
use freelane_health::SeqLock;

type Rec = [u64; 8];

trait Cell: Send + Sync + 'static {
    fn read(&self) -> Rec;
    fn write(&self, v: Rec);
}

impl Cell for SeqLock<Rec> {
    fn read(&self) -> Rec {
        SeqLock::read(self)
    }
    fn write(&self, v: Rec) {
        SeqLock::write(self, v)
    }
}
impl Cell for seqlock::SeqLock<Rec> {
    fn read(&self) -> Rec {
        seqlock::SeqLock::read(self)
    }
    fn write(&self, v: Rec) {
        *self.lock_write() = v;
    }
}
impl Cell for AtomicCell<Rec> {
    fn read(&self) -> Rec {
        self.load()
    }
    fn write(&self, v: Rec) {
        self.store(v)
    }
}
impl Cell for ArcSwap<Rec> {
    fn read(&self) -> Rec {
        **self.load()
    }
    fn write(&self, v: Rec) {
        self.store(Arc::new(v))
    }
}
impl Cell for RwLock<Rec> {
    fn read(&self) -> Rec {
        *self.read().unwrap()
    }
    fn write(&self, v: Rec) {
        *RwLock::write(self).unwrap() = v;
    }
}

struct Trial {
    reads_per_s: f64,
    writes_per_s: f64,
    torn: u64,
}

/// One trial: `readers` threads read for `dur` while one writer writes about every 1 µs.
fn trial<C: Cell>(cell: &Arc<C>, readers: usize, dur: Duration) -> Trial {
    let stop = Arc::new(AtomicBool::new(false));
    let torn = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(readers + 2));
    let writer = {
        let (cell, stop, start) = (Arc::clone(cell), Arc::clone(&stop), Arc::clone(&start));
        std::thread::spawn(move || {
            start.wait();
            let mut n = 0u64;
            let mut next = Instant::now();
            // Relaxed: the flag carries no data; join() orders the results.
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                cell.write([n; 8]);
                next += Duration::from_micros(1);
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
            n
        })
    };
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let (cell, stop, start, torn) = (
                Arc::clone(cell),
                Arc::clone(&stop),
                Arc::clone(&start),
                Arc::clone(&torn),
            );
            std::thread::spawn(move || {
                start.wait();
                let (mut n, mut bad) = (0u64, 0u64);
                // Relaxed: as above.
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let v = cell.read();
                        bad += u64::from(v.iter().any(|&w| w != v[0]));
                    }
                    n += 64;
                }
                // Relaxed: summed after join.
                torn.fetch_add(bad, Ordering::Relaxed);
                n
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let writes = writer.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    Trial {
        reads_per_s: reads as f64 / secs,
        writes_per_s: writes as f64 / secs,
        // Relaxed: all threads joined.
        torn: torn.load(Ordering::Relaxed),
    }
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
        "seqlock bench: {} cores ({}), {}; 64-byte record, writer every ~1 us; medians of {reps} interleaved rounds",
        m.cores, m.cpu, m.date
    );
    let fl = Arc::new(SeqLock::new([0u64; 8]));
    let sq = Arc::new(seqlock::SeqLock::new([0u64; 8]));
    let ac = Arc::new(AtomicCell::new([0u64; 8]));
    let aw = Arc::new(ArcSwap::from_pointee([0u64; 8]));
    let rw = Arc::new(RwLock::new([0u64; 8]));
    for readers in [1, 2, 4, 8] {
        let writes = std::cell::RefCell::new(vec![Vec::new(); 5]);
        let torn = std::cell::RefCell::new([0u64; 5]);
        let run = |i: usize, t: Trial| {
            writes.borrow_mut()[i].push(t.writes_per_s);
            torn.borrow_mut()[i] += t.torn;
            t.reads_per_s
        };
        let mut cands = vec![
            Candidate {
                name: "freelane SeqLock",
                trial: Box::new(|| run(0, trial(&fl, readers, dur))),
            },
            Candidate {
                name: "seqlock crate",
                trial: Box::new(|| run(1, trial(&sq, readers, dur))),
            },
            Candidate {
                name: "crossbeam AtomicCell",
                trial: Box::new(|| run(2, trial(&ac, readers, dur))),
            },
            Candidate {
                name: "arc-swap",
                trial: Box::new(|| run(3, trial(&aw, readers, dur))),
            },
            Candidate {
                name: "std RwLock",
                trial: Box::new(|| run(4, trial(&rw, readers, dur))),
            },
        ];
        let out = interleaved(reps, &mut cands);
        drop(cands);
        let rw_median = out[4].median;
        let sq_median = out[1].median;
        println!("readers={readers}");
        for (i, o) in out.iter().enumerate() {
            println!(
                "  {:<22} {:>9.1} M reads/s  writer {:>6.2} M writes/s  torn {:>3}  x{:.2} RwLock  x{:.2} seqlock-crate",
                o.name,
                o.median / 1e6,
                freelane_benches::median(&writes.borrow()[i]) / 1e6,
                torn.borrow()[i],
                o.median / rw_median,
                o.median / sq_median,
            );
        }
    }
}
