//! A profiling driver (not a benchmark): `threads` callers log the logger bench's event flat out
//! through a lossless `JsonLayer` into a file for `secs` seconds, then print what reached it.
//!
//! ```text
//! cargo build --release -p freelane-log --example flood
//! perf record -g target/release/examples/flood 1 3 /tmp/flood.log
//! perf report --comm freelane-log
//! ```
//! Arguments: threads (default 1), seconds (default 2), output path (default: the temp dir).
//! Numbers for claims come from `cargo bench -p freelane-benches --bench logger`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use freelane_log::{Builder, Overflow};
use tracing_subscriber::prelude::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let secs: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let path = args.next().map_or_else(
        || std::env::temp_dir().join("freelane-flood.log"),
        Into::into,
    );
    let file = std::fs::File::create(&path).expect("create the output file");
    let writer = std::io::BufWriter::with_capacity(64 * 1024, file);
    let (layer, guard) = Builder::new()
        .overflow(Overflow::Block)
        .build_layer(writer)
        .expect("valid settings");
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (d, stop) = (dispatch.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&d, || {
                    let mut n = 0u64;
                    // Relaxed: a stop flag; nothing is published through it.
                    while !stop.load(Ordering::Relaxed) {
                        tracing::info!(
                            request_id = n,
                            gpu = t as u64,
                            latency_us = 12.5,
                            "request done"
                        );
                        n += 1;
                    }
                    n
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    // Relaxed: see above.
    stop.store(true, Ordering::Relaxed);
    let events: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let stats = guard
        .shutdown(Duration::from_secs(60))
        .expect("the drainer finishes");
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{threads} thread(s): {events} events, {} written ({:.2} M lines/s), {} dropped, max depth {}",
        stats.written,
        stats.written as f64 / elapsed / 1e6,
        stats.dropped,
        stats.max_depth
    );
}
