//! freelane-log against `tracing_appender::non_blocking` and a `Mutex<BufWriter<File>>`, all
//! writing the same JSON lines (3 fields + message) to a file, at 1, 2 and 4 logging threads.
//!
//! Candidates (each trial: a fresh file and logger, threads log flat out for a fixed time, then
//! the guard shuts down; lines are counted in the file afterwards):
//! - `freelane layer (drop)`: `JsonLayer`, `Overflow::Drop` (ERROR never dropped), the default;
//! - `freelane layer (block)`: `JsonLayer`, `Overflow::Block` (lossless);
//! - `freelane non_blocking`: `fmt().json()` with `freelane_log::non_blocking` (the drop-in);
//! - `tracing-appender`: `fmt().json()` with `tracing_appender::non_blocking` (lossy default);
//! - `Mutex<BufWriter<File>>`: `fmt().json()` writing under a mutex on the caller.
//!
//! Two views, both honest and different:
//! - **Flood** (1, 2, 4 threads logging flat out): the drain capacity. Reported per candidate
//!   (medians over interleaved reps): events/s that reached the file (lines in the file /
//!   (logging time + drain time)), events/s accepted by callers, caller latency p50 / p99.9
//!   (every call timed), and lines lost (events logged − lines in the file; for freelane also the
//!   exact `Stats::dropped`, which must equal it). Under a flood a lossless logger's ring is full
//!   and its callers' tail latency is bounded by the drain rate, not by the push.
//! - **Paced** (2 threads, each offering a fixed rate below the drain capacity: 50k and 250k
//!   events/s per thread): caller latency p50 / p99 / p99.9 in a realistic regime, for freelane
//!   (block and drop) and tracing-appender. Each thread emits the events due so far (an open
//!   loop: a thread that fell behind catches up in a burst), then sleeps ~50 µs.
//!
//! `FREELANE_BENCH_QUICK=1` (or `--quick`) shrinks everything to a few seconds;
//! `FREELANE_LOGGER_VIEW=flood` or `=paced` runs only one view.
//! Run: `cargo bench -p freelane-benches --bench logger`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use freelane_benches::{interleaved, median, run_threads, Candidate, Machine};
use freelane_log::{Builder, Overflow};
use freelane_metrics::Histogram;
use tracing::dispatcher::{self, Dispatch};
use tracing_subscriber::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Kind {
    FreelaneDrop,
    FreelaneBlock,
    FreelaneNonBlocking,
    Appender,
    MutexFile,
}

const KINDS: [(Kind, &str); 5] = [
    (Kind::FreelaneDrop, "freelane layer (drop)"),
    (Kind::FreelaneBlock, "freelane layer (block)"),
    (Kind::FreelaneNonBlocking, "freelane non_blocking"),
    (Kind::Appender, "tracing-appender"),
    (Kind::MutexFile, "Mutex<BufWriter<File>>"),
];

/// One trial's measurements.
#[derive(Default, Clone, Copy)]
struct Trial {
    output_rate: f64,
    accepted_rate: f64,
    p50_ns: f64,
    p99_ns: f64,
    p999_ns: f64,
    lost: f64,
    events: f64,
    counted_drops: f64,
}

fn count_lines(path: &Path) -> u64 {
    let mut f = std::fs::File::open(path).expect("log file exists");
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).expect("read log file");
        if k == 0 {
            return n;
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// One trial: `threads` callers log for `dur`, flat out (`pace: None`) or each at `pace` events/s.
fn run_trial(kind: Kind, threads: usize, dur: Duration, path: &Path, pace: Option<f64>) -> Trial {
    let file = std::fs::File::create(path).expect("create log file");
    let writer = BufWriter::with_capacity(64 * 1024, file);
    // Build the subscriber and whatever must be finished afterwards.
    let (dispatch, finish): (Dispatch, Box<dyn FnOnce() -> f64>) = match kind {
        Kind::FreelaneDrop | Kind::FreelaneBlock => {
            let overflow = if matches!(kind, Kind::FreelaneDrop) {
                Overflow::Drop
            } else {
                Overflow::Block
            };
            let (layer, guard) = Builder::new()
                .overflow(overflow)
                .build_layer(writer)
                .expect("valid logger");
            (
                Dispatch::new(tracing_subscriber::registry().with(layer)),
                Box::new(move || {
                    let s = guard.shutdown(Duration::from_secs(60)).expect("drained");
                    s.dropped as f64
                }),
            )
        }
        Kind::FreelaneNonBlocking => {
            let (nb, guard) = freelane_log::non_blocking(writer);
            (
                Dispatch::new(tracing_subscriber::fmt().json().with_writer(nb).finish()),
                Box::new(move || {
                    let s = guard.shutdown(Duration::from_secs(60)).expect("drained");
                    s.dropped as f64
                }),
            )
        }
        Kind::Appender => {
            let (nb, guard) = tracing_appender::non_blocking(writer);
            let errors = nb.error_counter();
            (
                Dispatch::new(tracing_subscriber::fmt().json().with_writer(nb).finish()),
                Box::new(move || {
                    drop(guard);
                    errors.dropped_lines() as f64
                }),
            )
        }
        Kind::MutexFile => {
            let m = Mutex::new(writer);
            (
                Dispatch::new(tracing_subscriber::fmt().json().with_writer(m).finish()),
                Box::new(|| 0.0),
            )
        }
    };
    let latency = Arc::new(Histogram::new());
    let lat = Arc::clone(&latency);
    let d = dispatch.clone();
    let start = Instant::now();
    let (events, logging) = run_threads(threads, dur, move |t, stop| {
        dispatcher::with_default(&d, || {
            let mut n = 0u64;
            let emit = |n: u64| {
                let t0 = Instant::now();
                tracing::info!(
                    request_id = n,
                    gpu = t as u64,
                    latency_us = 12.5,
                    "request done"
                );
                lat.record_duration(t0.elapsed());
            };
            match pace {
                None => {
                    while !stop.load(Ordering::Relaxed) {
                        emit(n);
                        n += 1;
                    }
                }
                Some(rate) => {
                    let t_start = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let due = (t_start.elapsed().as_secs_f64() * rate) as u64;
                        while n < due {
                            emit(n);
                            n += 1;
                        }
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            }
            n
        })
    });
    drop(dispatch); // the Mutex candidate's writer is flushed when its subscriber drops
    let counted_drops = finish();
    let total = start.elapsed();
    let lines = count_lines(path);
    let s = latency.snapshot();
    if !matches!(kind, Kind::Appender | Kind::MutexFile) {
        // freelane counts every drop exactly: what did not reach the file is what it counted.
        assert_eq!(
            events.saturating_sub(lines) as f64,
            counted_drops,
            "{kind:?}: lines lost != drops counted"
        );
    }
    Trial {
        output_rate: lines as f64 / total.as_secs_f64(),
        accepted_rate: events as f64 / logging.as_secs_f64(),
        p50_ns: s.quantile(0.5) as f64,
        p99_ns: s.quantile(0.99) as f64,
        p999_ns: s.quantile(0.999) as f64,
        lost: events.saturating_sub(lines) as f64,
        events: events as f64,
        counted_drops,
    }
}

fn main() {
    let quick = std::env::var_os("FREELANE_BENCH_QUICK").is_some_and(|v| v != "0")
        || std::env::args().any(|a| a == "--quick");
    let (reps, dur) = if quick {
        (2, Duration::from_millis(100))
    } else {
        (5, Duration::from_millis(400))
    };
    let m = Machine::detect();
    println!(
        "freelane-log logger bench: {} cores, {}, {} (quick: {quick}); interleaved, {reps} reps x {dur:?}; JSON lines to a file",
        m.cores, m.cpu, m.date
    );
    let dir: PathBuf =
        std::env::temp_dir().join(format!("freelane-logger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let view = std::env::var("FREELANE_LOGGER_VIEW").unwrap_or_default();
    let flood_threads: &[usize] = if view == "paced" { &[] } else { &[1, 2, 4] };
    for &threads in flood_threads {
        let results: RefCell<BTreeMap<&str, Vec<Trial>>> = RefCell::new(BTreeMap::new());
        let mut cands: Vec<Candidate<'_>> = KINDS
            .iter()
            .map(|&(kind, name)| {
                let path = dir.join(format!("{name}.log").replace(['<', '>', ' ', '(', ')'], "_"));
                let results = &results;
                Candidate {
                    name,
                    trial: Box::new(move || {
                        let t = run_trial(kind, threads, dur, &path, None);
                        results.borrow_mut().entry(name).or_default().push(t);
                        t.output_rate
                    }),
                }
            })
            .collect();
        let out = interleaved(reps, &mut cands);
        drop(cands);
        let results = results.into_inner();
        let base = out
            .iter()
            .find(|o| o.name == "tracing-appender")
            .map_or(f64::NAN, |o| o.median);
        println!("\n{threads} thread(s)");
        println!(
            "  {:<24} {:>12} {:>8} {:>12} {:>10} {:>10} {:>12} {:>12}",
            "candidate",
            "to file/s",
            "vs appdr",
            "accepted/s",
            "p50",
            "p99.9",
            "lost",
            "counted drops"
        );
        for o in &out {
            // Skip the warm-up trial (the first one recorded) in the side statistics.
            let ts = &results[o.name.as_str()][1..];
            let med = |f: fn(&Trial) -> f64| median(&ts.iter().map(f).collect::<Vec<_>>());
            println!(
                "  {:<24} {:>10.2} M {:>7.2}x {:>10.2} M {:>8.0}ns {:>8.0}ns {:>11.1}% {:>12.0}",
                o.name,
                o.median / 1e6,
                o.median / base,
                med(|t| t.accepted_rate) / 1e6,
                med(|t| t.p50_ns),
                med(|t| t.p999_ns),
                100.0 * med(|t| t.lost / t.events.max(1.0)),
                med(|t| t.counted_drops),
            );
        }
    }
    let paced_dur = if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    if view != "flood" {
        paced(reps, paced_dur, &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The paced view: 2 threads, each offering a fixed rate; caller latency percentiles.
fn paced(reps: usize, dur: Duration, dir: &Path) {
    const THREADS: usize = 2;
    const PACED: [(Kind, &str); 3] = [
        (Kind::FreelaneBlock, "freelane layer (block)"),
        (Kind::FreelaneDrop, "freelane layer (drop)"),
        (Kind::Appender, "tracing-appender"),
    ];
    for rate in [50_000.0, 250_000.0] {
        let results: RefCell<BTreeMap<&str, Vec<Trial>>> = RefCell::new(BTreeMap::new());
        let mut cands: Vec<Candidate<'_>> = PACED
            .iter()
            .map(|&(kind, name)| {
                let path =
                    dir.join(format!("paced {name}.log").replace(['<', '>', ' ', '(', ')'], "_"));
                let results = &results;
                Candidate {
                    name,
                    trial: Box::new(move || {
                        let t = run_trial(kind, THREADS, dur, &path, Some(rate));
                        results.borrow_mut().entry(name).or_default().push(t);
                        t.p999_ns
                    }),
                }
            })
            .collect();
        let out = interleaved(reps, &mut cands);
        drop(cands);
        let results = results.into_inner();
        println!(
            "\npaced: {THREADS} threads x {:.0}k events/s each (offered {:.2} M/s), {reps} reps x {dur:?}",
            rate / 1e3,
            THREADS as f64 * rate / 1e6
        );
        println!(
            "  {:<24} {:>12} {:>12} {:>10} {:>10} {:>10} {:>8}",
            "candidate", "accepted/s", "to file/s", "p50", "p99", "p99.9", "lost"
        );
        for o in &out {
            // Skip the warm-up trial (the first one recorded).
            let ts = &results[o.name.as_str()][1..];
            let med = |f: fn(&Trial) -> f64| median(&ts.iter().map(f).collect::<Vec<_>>());
            println!(
                "  {:<24} {:>10.3} M {:>10.3} M {:>8.0}ns {:>8.0}ns {:>8.0}ns {:>7.1}%",
                o.name,
                med(|t| t.accepted_rate) / 1e6,
                med(|t| t.output_rate) / 1e6,
                med(|t| t.p50_ns),
                med(|t| t.p99_ns),
                o.median,
                100.0 * med(|t| t.lost / t.events.max(1.0)),
            );
        }
    }
}
