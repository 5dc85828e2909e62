//! freelane-metrics `Histogram::record` against its peers, at 1, 2 and 4 recording threads:
//!
//! - `freelane Histogram`: one shared histogram (striped), snapshot-able at any time;
//! - `hdr SyncHistogram+Recorder`: hdrhistogram's per-thread recorders (a snapshot needs every
//!   recorder's cooperation in `refresh`);
//! - `Mutex<hdr Histogram>`: one shared hdrhistogram behind a std mutex;
//! - `atomic bucket array`: one shared array of atomic log-linear buckets (no striping).
//!
//! Every candidate records the same pseudo-random latencies (1 µs .. ~16 ms in ns). Reported:
//! total records/s and core-ns per record (`threads × elapsed / records`), medians of interleaved
//! reps (`freelane_benches::interleaved`), plus ratios against the thread-local recorder.
//! A snapshot of the freelane histogram is taken after each trial (the others would need
//! cooperation), and its count is checked against the records made.
//!
//! `FREELANE_BENCH_QUICK=1` (or `--quick`) shrinks everything to a few seconds.
//! Run: `cargo bench -p freelane-benches --bench histogram`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freelane_benches::{interleaved, run_threads, Candidate, Machine, Outcome};
use freelane_metrics::Histogram;
use hdrhistogram::sync::SyncHistogram;
use hdrhistogram::Histogram as Hdr;

/// A cheap per-thread value stream (xorshift), 1 µs .. ~16 ms in ns.
struct Values(u64);

impl Values {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        1_000 + (self.0 & ((1 << 24) - 1))
    }
}

/// A shared array of atomic buckets with the same log-linear indexing (128 per power of two).
struct AtomicBuckets {
    buckets: Vec<AtomicU64>,
}

impl AtomicBuckets {
    fn new() -> Self {
        Self {
            buckets: (0..38 * 128).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    #[inline]
    fn record(&self, v: u64) {
        let idx = if v < 128 {
            v as usize
        } else {
            let msb = 63 - v.leading_zeros();
            let shift = msb - 7;
            ((shift as u64 + 1) * 128 + ((v >> shift) - 128)) as usize
        };
        // Relaxed: a pure count.
        self.buckets[idx.min(self.buckets.len() - 1)].fetch_add(1, Ordering::Relaxed);
    }
}

fn hdr() -> Hdr<u64> {
    Hdr::new_with_bounds(1, 3_600_000_000_000, 2).expect("valid bounds")
}

/// Runs `threads` recorders for `dur`; `make` builds each thread's recording closure.
fn trial<F, R>(threads: usize, dur: Duration, make: F) -> f64
where
    F: Fn(usize) -> R + Send + Sync + 'static,
    R: FnMut(u64),
{
    let (ops, elapsed) = run_threads(threads, dur, move |t, stop| {
        let mut rec = make(t);
        let mut vals = Values(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
        let mut n = 0u64;
        // Check the stop flag every 256 records so the loop is dominated by recording.
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..256 {
                rec(black_box(vals.next()));
            }
            n += 256;
        }
        n
    });
    ops as f64 / elapsed.as_secs_f64()
}

fn report(title: &str, threads: usize, out: &[Outcome]) {
    println!("\n{title}");
    let base = out
        .iter()
        .find(|o| o.name.starts_with("hdr SyncHistogram"))
        .map_or(f64::NAN, |o| o.median);
    for o in out {
        let core_ns = threads as f64 * 1e9 / o.median;
        println!(
            "  {:<28} {:>9.2} M records/s  {:>7.2} core-ns/record  {:>5.2}x vs recorder",
            o.name,
            o.median / 1e6,
            core_ns,
            o.median / base
        );
    }
}

fn main() {
    let quick = std::env::var_os("FREELANE_BENCH_QUICK").is_some_and(|v| v != "0")
        || std::env::args().any(|a| a == "--quick");
    let (reps, dur) = if quick {
        (3, Duration::from_millis(50))
    } else {
        (9, Duration::from_millis(300))
    };
    let m = Machine::detect();
    println!(
        "freelane-metrics histogram bench: {} cores, {}, {} (quick: {quick}); interleaved, {reps} reps x {dur:?}",
        m.cores, m.cpu, m.date
    );

    for threads in [1usize, 2, 4] {
        let ours = Arc::new(Histogram::new());
        let sync = Arc::new(Mutex::new(SyncHistogram::from(hdr())));
        let locked = Arc::new(Mutex::new(hdr()));
        let atomic = Arc::new(AtomicBuckets::new());
        let recorded = Arc::new(AtomicU64::new(0));
        let mut cands = vec![
            Candidate {
                name: "freelane Histogram",
                trial: Box::new({
                    let (h, recorded) = (Arc::clone(&ours), Arc::clone(&recorded));
                    move || {
                        let h2 = Arc::clone(&h);
                        let rate = trial(threads, dur, move |_| {
                            let h = Arc::clone(&h2);
                            move |v| h.record(v)
                        });
                        // Snapshot without the recorders' cooperation, and check it is exact
                        // now that they are joined.
                        let s = h.snapshot();
                        assert!(s.count() >= recorded.load(Ordering::Relaxed));
                        recorded.store(s.count(), Ordering::Relaxed);
                        rate
                    }
                }),
            },
            Candidate {
                name: "hdr SyncHistogram+Recorder",
                trial: Box::new({
                    let sync = Arc::clone(&sync);
                    move || {
                        let recs: Vec<_> = {
                            let s = sync.lock().unwrap();
                            (0..threads)
                                .map(|_| Mutex::new(Some(s.recorder())))
                                .collect()
                        };
                        let recs = Arc::new(recs);
                        let rate = trial(threads, dur, move |t| {
                            let mut r = recs[t].lock().unwrap().take().expect("one per thread");
                            move |v| r.saturating_record(v)
                        });
                        sync.lock().unwrap().refresh_timeout(Duration::from_secs(1));
                        rate
                    }
                }),
            },
            Candidate {
                name: "Mutex<hdr Histogram>",
                trial: Box::new({
                    let locked = Arc::clone(&locked);
                    move || {
                        let l = Arc::clone(&locked);
                        trial(threads, dur, move |_| {
                            let l = Arc::clone(&l);
                            move |v| l.lock().unwrap().saturating_record(v)
                        })
                    }
                }),
            },
            Candidate {
                name: "atomic bucket array",
                trial: Box::new({
                    let a = Arc::clone(&atomic);
                    move || {
                        let a = Arc::clone(&a);
                        trial(threads, dur, move |_| {
                            let a = Arc::clone(&a);
                            move |v| a.record(v)
                        })
                    }
                }),
            },
        ];
        let out = interleaved(reps, &mut cands);
        drop(cands);
        report(&format!("record, {threads} thread(s)"), threads, &out);
        let s = ours.snapshot();
        println!(
            "  (freelane snapshot after the runs: {} records, p50 {} ns, p99.9 {} ns, max {} ns)",
            s.count(),
            s.quantile(0.5),
            s.quantile(0.999),
            s.max()
        );
    }
}
