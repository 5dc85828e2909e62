//! Turning measurements into rows, a summary and recommendations derived from the numbers.
//!
//! Everything here is pure arithmetic on [`Measurement`]s, so it is unit-tested with made-up
//! numbers (see `benches/tests/mt_report.rs`).

use std::fmt::Write as _;

use serde::Serialize;

use super::cli::Options;
use super::{Component, Impl};
use crate::{median, quantile_sorted, Machine};

/// Efficiency below this is flagged (the 90% target).
pub const EFFICIENCY_TARGET: f64 = 0.90;
/// Oversubscribed throughput must stay at least this fraction of the full-cores throughput.
pub const RETENTION_TARGET: f64 = 0.90;
/// end_to_end freelane must be at least this many times the mutex design.
pub const SPEEDUP_TARGET: f64 = 3.0;
/// A row whose fastest round is more than this times its slowest is flagged as noisy.
pub const NOISE_SPREAD: f64 = 1.5;

/// Raw results of one (component, implementation, thread count) candidate.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The component.
    pub component: Component,
    /// The implementation.
    pub imp: Impl,
    /// Threads.
    pub threads: usize,
    /// Throughput of every timed round, in round order (ops/s).
    pub rates: Vec<f64>,
    /// Sampled op latencies of every timed round, in ns (any order).
    pub samples: Vec<u64>,
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The component.
    pub component: Component,
    /// The implementation.
    #[serde(rename = "impl")]
    pub imp: Impl,
    /// Threads.
    pub threads: usize,
    /// Median throughput over the timed rounds.
    pub throughput_ops_s: f64,
    /// Median sampled op latency.
    pub p50_ns: u64,
    /// 99th percentile of the sampled op latency.
    pub p99_ns: u64,
    /// 99.9th percentile of the sampled op latency.
    pub p999_ns: u64,
    /// throughput(N) / (min(N, cores) x throughput(1)); `null` without a 1-thread row.
    pub efficiency: Option<f64>,
    /// freelane rows: median over rounds of freelane/mutex throughput; `null` for mutex rows.
    pub speedup_vs_mutex: Option<f64>,
    /// Number of latency samples behind the percentiles.
    pub latency_samples: usize,
    /// Every timed round's throughput, in round order.
    pub rates_ops_s: Vec<f64>,
}

/// Scaling efficiency: `tp_n / (min(n, cores) x tp_1)`; `None` when `tp_1` is not positive.
pub fn efficiency(tp_n: f64, n: usize, tp_1: f64, cores: usize) -> Option<f64> {
    let parallel = n.min(cores).max(1) as f64;
    (tp_1 > 0.0 && tp_1.is_finite() && tp_n.is_finite()).then(|| tp_n / (parallel * tp_1))
}

/// Median of the per-round ratios `a[i] / b[i]` (rounds are paired because they ran back to
/// back); `None` when the lengths differ or no round has a positive `b`.
pub fn paired_speedup(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, &b)| b > 0.0)
        .map(|(&a, &b)| a / b)
        .collect();
    (!ratios.is_empty()).then(|| median(&ratios))
}

/// Builds the rows, ordered by component, implementation and threads.
pub fn build_rows(measurements: &[Measurement], cores: usize) -> Vec<Row> {
    let find = |c: Component, i: Impl, n: usize| {
        measurements
            .iter()
            .find(|m| m.component == c && m.imp == i && m.threads == n)
    };
    let mut sorted: Vec<&Measurement> = measurements.iter().collect();
    sorted.sort_by_key(|m| {
        (
            Component::ALL.iter().position(|&c| c == m.component),
            Impl::ALL.iter().position(|&i| i == m.imp),
            m.threads,
        )
    });
    sorted
        .into_iter()
        .map(|m| {
            let tp = median(&m.rates);
            let tp1 = find(m.component, m.imp, 1).map(|one| median(&one.rates));
            let mut lat = m.samples.clone();
            lat.sort_unstable();
            let speedup = match m.imp {
                Impl::Freelane => find(m.component, Impl::Mutex, m.threads)
                    .and_then(|mx| paired_speedup(&m.rates, &mx.rates)),
                Impl::Mutex => None,
            };
            Row {
                component: m.component,
                imp: m.imp,
                threads: m.threads,
                throughput_ops_s: tp,
                p50_ns: quantile_sorted(&lat, 0.50),
                p99_ns: quantile_sorted(&lat, 0.99),
                p999_ns: quantile_sorted(&lat, 0.999),
                efficiency: tp1.and_then(|t1| efficiency(tp, m.threads, t1, cores)),
                speedup_vs_mutex: speedup,
                latency_samples: lat.len(),
                rates_ops_s: m.rates.clone(),
            }
        })
        .collect()
}

/// One implementation of one component, summarized.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImplSummary {
    /// Throughput at 1 thread.
    pub single_thread_ops_s: Option<f64>,
    /// Efficiency at the reference thread count (see [`Summary::reference_threads`]).
    pub efficiency_at_reference: Option<f64>,
    /// Lowest efficiency over the thread counts above 1.
    pub min_efficiency: Option<f64>,
    /// Where [`min_efficiency`](Self::min_efficiency) occurred.
    pub min_efficiency_threads: Option<usize>,
    /// throughput(max threads) / throughput(reference threads), when max threads > cores.
    pub oversubscribed_retention: Option<f64>,
    /// CPU time per op at the reference thread count: min(N, cores) / throughput, in ns.
    pub cpu_ns_per_op_at_reference: Option<f64>,
    /// Highest throughput measured.
    pub peak_ops_s: f64,
    /// Where the peak occurred.
    pub peak_threads: usize,
}

/// One component, summarized.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentSummary {
    /// The component.
    pub component: Component,
    /// The freelane implementation, if measured.
    pub freelane: Option<ImplSummary>,
    /// The mutex implementation, if measured.
    pub mutex: Option<ImplSummary>,
    /// freelane / mutex at the reference thread count.
    pub speedup_at_reference: Option<f64>,
    /// freelane / mutex at the largest thread count.
    pub speedup_at_max_threads: Option<f64>,
    /// The lowest freelane / mutex ratio over all thread counts.
    pub min_speedup: Option<f64>,
    /// Where [`min_speedup`](Self::min_speedup) occurred.
    pub min_speedup_threads: Option<usize>,
}

/// The freelane component with the lowest efficiency at the reference thread count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limiter {
    /// The component (`end_to_end` is not a candidate when any part was measured).
    pub component: Component,
    /// Its efficiency.
    pub efficiency: f64,
    /// At this many threads.
    pub threads: usize,
}

/// One of the targets, checked against the measured numbers (`value >= target`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is checked.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// The threshold the value must reach.
    pub target: f64,
    /// `value >= target`.
    pub met: bool,
}

/// The report's `summary` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Logical CPUs (the `cores` of the efficiency formula).
    pub cores: usize,
    /// The largest measured thread count in 2..=cores (2 on this machine): the "full machine"
    /// point that efficiency and speed-up targets are judged at.
    pub reference_threads: Option<usize>,
    /// The largest measured thread count.
    pub max_threads: Option<usize>,
    /// Per component.
    pub components: Vec<ComponentSummary>,
    /// The component that limits freelane scaling.
    pub scaling_limiter: Option<Limiter>,
    /// The end_to_end targets that the measured thread counts allow checking.
    pub targets: Vec<TargetCheck>,
    /// The options the run used.
    pub config: Options,
}

/// One recommendation, derived from the numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// Machine-readable kind: `scaling_limiter`, `costliest_part`, `low_efficiency`,
    /// `not_faster_than_mutex`, `target_missed`, `mutex_collapse`, `noisy`, `no_baseline`, `ok`.
    pub kind: String,
    /// The component it concerns, if one.
    pub component: Option<Component>,
    /// What the numbers say, in words.
    pub message: String,
}

/// The whole JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// Every row.
    pub results: Vec<Row>,
    /// Aggregates and target checks.
    pub summary: Summary,
    /// Derived advice.
    pub recommendations: Vec<Recommendation>,
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn row(rows: &[Row], c: Component, i: Impl, n: usize) -> Option<&Row> {
    rows.iter()
        .find(|r| r.component == c && r.imp == i && r.threads == n)
}

fn summarize_impl(
    rows: &[Row],
    c: Component,
    i: Impl,
    cores: usize,
    reference: Option<usize>,
    max: Option<usize>,
) -> Option<ImplSummary> {
    let mine: Vec<&Row> = rows
        .iter()
        .filter(|r| r.component == c && r.imp == i)
        .collect();
    let peak = mine
        .iter()
        .max_by(|a, b| a.throughput_ops_s.total_cmp(&b.throughput_ops_s))?;
    let at = |n: Option<usize>| n.and_then(|n| row(rows, c, i, n));
    let min_eff = mine
        .iter()
        .filter(|r| r.threads > 1)
        .filter_map(|r| r.efficiency.map(|e| (e, r.threads)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let retention = match (at(max), at(reference)) {
        (Some(m), Some(r)) if m.threads > cores && r.throughput_ops_s > 0.0 => {
            Some(m.throughput_ops_s / r.throughput_ops_s)
        }
        _ => None,
    };
    Some(ImplSummary {
        single_thread_ops_s: at(Some(1)).map(|r| r.throughput_ops_s),
        efficiency_at_reference: at(reference).and_then(|r| r.efficiency),
        min_efficiency: min_eff.map(|m| m.0),
        min_efficiency_threads: min_eff.map(|m| m.1),
        oversubscribed_retention: retention,
        cpu_ns_per_op_at_reference: at(reference)
            .filter(|r| r.throughput_ops_s > 0.0)
            .map(|r| r.threads.min(cores) as f64 * 1e9 / r.throughput_ops_s),
        peak_ops_s: peak.throughput_ops_s,
        peak_threads: peak.threads,
    })
}

/// Builds the summary of `rows`.
pub fn summarize(rows: &[Row], cores: usize, config: &Options) -> Summary {
    let mut threads: Vec<usize> = rows.iter().map(|r| r.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let reference = threads
        .iter()
        .copied()
        .filter(|&n| n > 1 && n <= cores)
        .max();
    let max = threads.last().copied();
    let components: Vec<ComponentSummary> = Component::ALL
        .into_iter()
        .filter(|&c| rows.iter().any(|r| r.component == c))
        .map(|c| {
            let speedup_at = |n: Option<usize>| {
                n.and_then(|n| row(rows, c, Impl::Freelane, n)?.speedup_vs_mutex)
            };
            let min_speedup = rows
                .iter()
                .filter(|r| r.component == c)
                .filter_map(|r| r.speedup_vs_mutex.map(|s| (s, r.threads)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            ComponentSummary {
                component: c,
                freelane: summarize_impl(rows, c, Impl::Freelane, cores, reference, max),
                mutex: summarize_impl(rows, c, Impl::Mutex, cores, reference, max),
                speedup_at_reference: speedup_at(reference),
                speedup_at_max_threads: speedup_at(max),
                min_speedup: min_speedup.map(|m| m.0),
                min_speedup_threads: min_speedup.map(|m| m.1),
            }
        })
        .collect();

    let has_parts = components
        .iter()
        .any(|s| s.component != Component::EndToEnd);
    let scaling_limiter = reference.and_then(|n| {
        components
            .iter()
            .filter(|s| !has_parts || s.component != Component::EndToEnd)
            .filter_map(|s| {
                let e = s.freelane.as_ref()?.efficiency_at_reference?;
                Some(Limiter {
                    component: s.component,
                    efficiency: e,
                    threads: n,
                })
            })
            .min_by(|a, b| a.efficiency.total_cmp(&b.efficiency))
    });

    Summary {
        cores,
        reference_threads: reference,
        max_threads: max,
        targets: end_to_end_targets(rows, cores, max),
        components,
        scaling_limiter,
        config: config.clone(),
    }
}

/// The end_to_end targets that the measured thread counts allow checking.
pub fn end_to_end_targets(rows: &[Row], cores: usize, max: Option<usize>) -> Vec<TargetCheck> {
    let e2e = |n: usize| row(rows, Component::EndToEnd, Impl::Freelane, n);
    let mut out = Vec::new();
    let mut check = |name: String, value: Option<f64>, target: f64| {
        if let Some(value) = value {
            out.push(TargetCheck {
                name,
                value,
                target,
                met: value >= target,
            });
        }
    };
    let mut full = vec![2];
    if cores > 2 {
        full.push(cores);
    }
    for n in full {
        check(
            format!("end_to_end freelane efficiency at {n} threads"),
            e2e(n).and_then(|r| r.efficiency),
            EFFICIENCY_TARGET,
        );
    }
    let s2 = e2e(2).and_then(|r| r.speedup_vs_mutex);
    check(
        "end_to_end freelane speed-up over mutex at 2 threads".into(),
        s2,
        SPEEDUP_TARGET,
    );
    if let Some(m) = max.filter(|&m| m > cores) {
        let base = cores.max(2);
        let retention = match (e2e(m), e2e(base)) {
            (Some(hi), Some(lo)) if lo.throughput_ops_s > 0.0 => {
                Some(hi.throughput_ops_s / lo.throughput_ops_s)
            }
            _ => None,
        };
        check(
            format!("end_to_end freelane throughput at {m} threads / at {base} threads"),
            retention,
            RETENTION_TARGET,
        );
        let sm = e2e(m).and_then(|r| r.speedup_vs_mutex);
        check(
            format!("end_to_end freelane speed-up over mutex at {m} threads"),
            sm,
            SPEEDUP_TARGET,
        );
        if let Some(s2) = s2 {
            check(
                format!("end_to_end speed-up at {m} threads is at least the speed-up at 2 threads"),
                sm,
                s2,
            );
        }
    }
    out
}

/// Derives the recommendations from the rows and the summary.
pub fn recommend(rows: &[Row], summary: &Summary) -> Vec<Recommendation> {
    let mut out = Vec::new();
    let mut push = |kind: &str, component: Option<Component>, message: String| {
        out.push(Recommendation {
            kind: kind.to_string(),
            component,
            message,
        })
    };
    let cores = summary.cores;

    if !rows.iter().any(|r| r.threads == 1) {
        push(
            "no_baseline",
            None,
            "no 1-thread rows: efficiency cannot be computed; add 1 to --threads".into(),
        );
    }

    if let Some(l) = &summary.scaling_limiter {
        let mut others: Vec<(Component, f64)> = summary
            .components
            .iter()
            .filter(|s| s.component != l.component && s.component != Component::EndToEnd)
            .filter_map(|s| Some((s.component, s.freelane.as_ref()?.efficiency_at_reference?)))
            .collect();
        others.sort_by(|a, b| a.1.total_cmp(&b.1));
        let next = others
            .first()
            .map(|(c, e)| format!(" (next lowest: {} at {})", c.name(), pct(*e)))
            .unwrap_or_default();
        push(
            "scaling_limiter",
            Some(l.component),
            format!(
                "{} limits freelane scaling: {} efficiency at {} threads, the lowest of the components{next}",
                l.component.name(),
                pct(l.efficiency),
                l.threads
            ),
        );
    }

    // Which part costs the most CPU time per op at the reference point (the end_to_end loop does
    // one op of each part per request, so this is where its time goes).
    if let Some(n) = summary.reference_threads {
        let mut parts: Vec<(Component, f64)> = summary
            .components
            .iter()
            .filter(|s| s.component != Component::EndToEnd)
            .filter_map(|s| {
                Some((
                    s.component,
                    s.freelane.as_ref()?.cpu_ns_per_op_at_reference?,
                ))
            })
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        if parts.len() >= 2 {
            let total: f64 = parts.iter().map(|p| p.1).sum();
            let list = parts
                .iter()
                .map(|(c, ns)| format!("{} {:.0} ns", c.name(), ns))
                .collect::<Vec<_>>()
                .join(", ");
            let e2e = summary
                .components
                .iter()
                .find(|s| s.component == Component::EndToEnd)
                .and_then(|s| s.freelane.as_ref()?.cpu_ns_per_op_at_reference)
                .map(|ns| format!("; end_to_end costs {ns:.0} ns per request"))
                .unwrap_or_default();
            push(
                "costliest_part",
                Some(parts[0].0),
                format!(
                    "at {n} threads {} costs the most CPU time per op among the freelane parts ({} of {:.0} ns summed: {list}{e2e}); optimize it first",
                    parts[0].0.name(),
                    pct(parts[0].1 / total),
                    total
                ),
            );
        }
    }

    for c in Component::ALL {
        let low: Vec<&Row> = rows
            .iter()
            .filter(|r| r.component == c && r.imp == Impl::Freelane && r.threads > 1)
            .filter(|r| r.efficiency.is_some_and(|e| e < EFFICIENCY_TARGET))
            .collect();
        if !low.is_empty() {
            let fmt_list = |over: bool| {
                low.iter()
                    .filter(|r| (r.threads > cores) == over)
                    .map(|r| format!("{} ({})", r.threads, pct(r.efficiency.unwrap_or(0.0))))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (within, over) = (fmt_list(false), fmt_list(true));
            let mut msg = format!(
                "freelane {} falls below {} efficiency at",
                c.name(),
                pct(EFFICIENCY_TARGET)
            );
            if !within.is_empty() {
                let _ = write!(msg, " {within} threads");
            }
            if !over.is_empty() {
                if !within.is_empty() {
                    msg.push_str(" and");
                }
                let _ = write!(msg, " {over} threads (oversubscribed, {cores} cores)");
            }
            push("low_efficiency", Some(c), msg);
        }

        let slow: Vec<String> = rows
            .iter()
            .filter(|r| r.component == c && r.imp == Impl::Freelane)
            .filter_map(|r| {
                r.speedup_vs_mutex
                    .filter(|&s| s <= 1.0)
                    .map(|s| format!("{} ({s:.2}x)", r.threads))
            })
            .collect();
        if !slow.is_empty() {
            push(
                "not_faster_than_mutex",
                Some(c),
                format!(
                    "freelane {} is not faster than the mutex design at {} threads",
                    c.name(),
                    slow.join(", ")
                ),
            );
        }
    }

    for t in summary.targets.iter().filter(|t| !t.met) {
        push(
            "target_missed",
            Some(Component::EndToEnd),
            format!(
                "target missed: {} is {:.2}, needs at least {:.2}",
                t.name, t.value, t.target
            ),
        );
    }

    // The mutex component whose throughput drops most from 1 thread to the largest count: what
    // the lock-free design buys most.
    if let Some(max) = summary.max_threads.filter(|&m| m > 1) {
        let worst = summary
            .components
            .iter()
            .filter_map(|s| {
                let m = s.mutex.as_ref()?;
                let one = m.single_thread_ops_s.filter(|&x| x > 0.0)?;
                let at_max = row(rows, s.component, Impl::Mutex, max)?.throughput_ops_s;
                Some((s.component, at_max / one, s.speedup_at_max_threads))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((c, kept, speedup)) = worst {
            let sp = speedup
                .map(|s| format!("; freelane is {s:.1}x faster there"))
                .unwrap_or_default();
            push(
                "mutex_collapse",
                Some(c),
                format!(
                    "the mutex design loses most in {}: at {max} threads it keeps {} of its 1-thread throughput{sp}",
                    c.name(),
                    pct(kept)
                ),
            );
        }
    }

    let noisy: Vec<String> = rows
        .iter()
        .filter(|r| {
            let lo = r.rates_ops_s.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.rates_ops_s.iter().copied().fold(0.0, f64::max);
            r.rates_ops_s.len() > 1 && lo > 0.0 && hi / lo > NOISE_SPREAD
        })
        .map(|r| format!("{}/{}/{}", r.component.name(), r.imp.name(), r.threads))
        .collect();
    if !noisy.is_empty() {
        push(
            "noisy",
            None,
            format!(
                "{} of {} rows vary by more than {:.1}x between rounds ({}): re-run with more --reps in a quiet window before trusting them",
                noisy.len(),
                rows.len(),
                NOISE_SPREAD,
                noisy.join(", ")
            ),
        );
    }

    let flagged = out.iter().any(|r| {
        matches!(
            r.kind.as_str(),
            "low_efficiency" | "not_faster_than_mutex" | "target_missed"
        )
    });
    if !flagged
        && rows
            .iter()
            .any(|r| r.imp == Impl::Freelane && r.threads > 1)
    {
        out.push(Recommendation {
            kind: "ok".into(),
            component: None,
            message: format!(
                "every freelane component kept at least {} efficiency and beat the mutex design at every measured thread count",
                pct(EFFICIENCY_TARGET)
            ),
        });
    }
    out
}

impl Report {
    /// Builds the complete report from raw measurements.
    pub fn build(machine: Machine, config: &Options, measurements: &[Measurement]) -> Report {
        let results = build_rows(measurements, machine.cores);
        let summary = summarize(&results, machine.cores, config);
        let recommendations = recommend(&results, &summary);
        Report {
            machine,
            results,
            summary,
            recommendations,
        }
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.0}ms", ns as f64 / 1e6)
    } else if ns >= 10_000 {
        format!("{:.0}us", ns as f64 / 1e3)
    } else {
        format!("{ns}ns")
    }
}

/// The rows as a fixed-width text table.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<11} {:<9} {:>7} {:>10} {:>6} {:>9} {:>8} {:>8} {:>8}",
        "component", "impl", "threads", "Mops/s", "eff", "vs mutex", "p50", "p99", "p99.9"
    );
    let mut last = None;
    for r in rows {
        if last.is_some() && last != Some(r.component) {
            s.push('\n');
        }
        last = Some(r.component);
        let eff = r.efficiency.map_or("-".to_string(), pct);
        let sp = r
            .speedup_vs_mutex
            .map_or("-".to_string(), |x| format!("{x:.2}x"));
        let _ = writeln!(
            s,
            "{:<11} {:<9} {:>7} {:>10.3} {:>6} {:>9} {:>8} {:>8} {:>8}",
            r.component.name(),
            r.imp.name(),
            r.threads,
            r.throughput_ops_s / 1e6,
            eff,
            sp,
            fmt_ns(r.p50_ns),
            fmt_ns(r.p99_ns),
            fmt_ns(r.p999_ns)
        );
    }
    s
}
