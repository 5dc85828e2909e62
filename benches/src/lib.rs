//! Shared benchmark support for freelane.
//!
//! This machine class (2 vCPUs that the host migrates about once a minute, a core-to-core round trip
//! that flips between ~65 and ~335 ns) makes absolute multi-thread numbers meaningless across runs.
//! Every comparison therefore runs its candidates **interleaved rep by rep** (A, B, C, A, B, C, ...)
//! inside one process and quotes **medians** and **ratios**: [`interleaved`] does exactly that.
//! [`run_threads`] runs one timed multi-thread trial with a common start line.
#![warn(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod mt;

/// One candidate of an interleaved comparison: a name and a trial that returns a rate (ops/s).
pub struct Candidate<'a> {
    /// Label used in reports.
    pub name: &'a str,
    /// Runs one trial and returns its throughput in operations per second.
    pub trial: Box<dyn FnMut() -> f64 + 'a>,
}

impl std::fmt::Debug for Candidate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The per-candidate outcome of [`interleaved`].
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Candidate label.
    pub name: String,
    /// Every trial's rate, in the order run.
    pub rates: Vec<f64>,
    /// Median rate (ops/s).
    pub median: f64,
}

/// Runs `reps` rounds; each round runs every candidate once, rotating the starting candidate
/// from round to round (A, B, C, then B, C, A, then C, A, B, ...), after one untimed warm-up
/// round. Returns each candidate's rates and median.
pub fn interleaved(reps: usize, candidates: &mut [Candidate<'_>]) -> Vec<Outcome> {
    for c in candidates.iter_mut() {
        (c.trial)();
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(reps); candidates.len()];
    let n = candidates.len();
    for rep in 0..reps.max(1) {
        // Each round starts one candidate later, so no candidate always runs first (after the
        // previous round's last one) or last.
        for k in 0..n {
            let i = (rep + k) % n;
            rates[i].push((candidates[i].trial)());
        }
    }
    candidates
        .iter()
        .zip(rates)
        .map(|(c, r)| Outcome {
            name: c.name.to_string(),
            median: median(&r),
            rates: r,
        })
        .collect()
}

/// Median of `xs` (mean of the middle two for an even count); `NaN` for an empty slice.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q`-quantile (0..=1, nearest rank) of already **sorted** `xs`; 0 for an empty slice.
pub fn quantile_sorted(xs: &[u64], q: f64) -> u64 {
    if xs.is_empty() {
        return 0;
    }
    let rank = (q.clamp(0.0, 1.0) * (xs.len() - 1) as f64).round() as usize;
    xs[rank]
}

/// Runs `threads` threads that all start together and stop after `duration`.
///
/// Each thread calls `body(thread_index, &stop)`, which must loop until `stop` reads `true` and
/// return the number of operations it completed. Returns the total operations and the elapsed
/// wall time (measured from the common start to the last thread's exit).
pub fn run_threads<F>(threads: usize, duration: Duration, body: F) -> (u64, Duration)
where
    F: Fn(usize, &AtomicBool) -> u64 + Send + Sync + 'static,
{
    let body = Arc::new(body);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (body, stop, start) = (Arc::clone(&body), Arc::clone(&stop), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                body(t, &stop)
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    std::thread::sleep(duration);
    // Relaxed: the flag carries no data; join() below synchronizes the results.
    stop.store(true, Ordering::Relaxed);
    let ops = handles
        .into_iter()
        .map(|h| h.join().expect("benchmark thread panicked"))
        .sum();
    (ops, t0.elapsed())
}

/// What the machine is, for the record in reports.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// CPU model name from /proc/cpuinfo, or "unknown".
    pub cpu: String,
    /// UTC date and time of the run (from the system clock), RFC 3339.
    pub date: String,
}

impl Machine {
    /// Reads the machine description.
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        Self {
            cores,
            cpu,
            date: utc_now_rfc3339(),
        }
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`, computed from the system clock.
pub fn utc_now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantile() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let xs: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile_sorted(&xs, 0.5), 51);
        assert_eq!(quantile_sorted(&xs, 0.0), 1);
        assert_eq!(quantile_sorted(&xs, 1.0), 100);
    }

    #[test]
    fn interleaved_runs_candidates_in_rotating_rounds() {
        let order = std::cell::RefCell::new(Vec::new());
        let mut cands = vec![
            Candidate {
                name: "a",
                trial: Box::new(|| {
                    order.borrow_mut().push('a');
                    1.0
                }),
            },
            Candidate {
                name: "b",
                trial: Box::new(|| {
                    order.borrow_mut().push('b');
                    2.0
                }),
            },
        ];
        let out = interleaved(3, &mut cands);
        drop(cands);
        // Warm-up a, b; then rounds starting at a, b, a (the start rotates each round).
        assert_eq!(
            order.into_inner(),
            vec!['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']
        );
        // Rates stay attached to their candidate whatever the order.
        assert_eq!(out[0].rates, vec![1.0; 3]);
        assert_eq!(out[1].rates, vec![2.0; 3]);
        assert_eq!(out[0].median, 1.0);
        assert_eq!(out[1].median, 2.0);
    }

    #[test]
    fn run_threads_counts_every_thread() {
        let (ops, elapsed) = run_threads(2, Duration::from_millis(20), |_, stop| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                std::thread::yield_now();
            }
            n
        });
        assert!(ops >= 2);
        assert!(elapsed >= Duration::from_millis(20));
    }

    #[test]
    fn date_is_well_formed() {
        let d = utc_now_rfc3339();
        assert_eq!(d.len(), 20);
        assert!(d.ends_with('Z') && d.as_bytes()[10] == b'T');
    }
}
