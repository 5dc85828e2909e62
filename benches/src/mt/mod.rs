//! The `mt-scaling` benchmark (issue 9): every freelane component against the mutex design it
//! replaces, at several thread counts, as a table, a JSON report and an SVG plot.
//!
//! # What is measured
//! Each component is run in two implementations, `freelane` and `mutex` (the original design: a
//! mutex around a `VecDeque`/array, per-GPU `RwLock`s, a logger behind a lock, a mutex'd
//! histogram). One **op** is:
//!
//! | component    | one op                                                                 |
//! |--------------|------------------------------------------------------------------------|
//! | `queue`      | push one request, pop one request (MPMC hand-off, every thread both)   |
//! | `load`       | pick the least-loaded of 4 GPUs + acquire 1 unit + release it          |
//! | `health`     | read one GPU's health record while a writer thread updates them        |
//! | `logger`     | one `tracing` event with four fields, formatted as a JSON line         |
//! | `metrics`    | one histogram record                                                   |
//! | `end_to_end` | submit a request, take one ready batch from some lane, complete it     |
//!
//! # How it is measured
//! For one component, every (implementation, thread count) pair is a candidate of
//! [`crate::interleaved`]: one untimed warm-up round, then `reps` rounds that each run every
//! candidate once, so slow drifts of a shared machine hit all candidates alike. Throughput is the
//! median over rounds; the speed-up over mutex is the median of the per-round ratios (paired);
//! efficiency(N) = throughput(N) / (min(N, cores) x throughput(1)) of the same implementation.
//! Latency is sampled: the first op of every block of [`driver::SAMPLE_EVERY`] ops is timed with
//! `Instant`; samples of all timed rounds are pooled for p50/p99/p99.9.
#![allow(clippy::module_name_repetitions)]

use serde::Serialize;

pub mod baseline;
pub mod cli;
pub mod components;
pub mod driver;
pub mod plot;
pub mod report;
pub mod runner;

/// The simulated GPUs of the `load`, `health` and `end_to_end` components.
pub const GPUS: usize = 4;

/// A component of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// Request hand-off through an MPMC queue.
    Queue,
    /// Load board pick + acquire + release.
    Load,
    /// Health record reads with a concurrent writer.
    Health,
    /// Log events.
    Logger,
    /// Histogram records.
    Metrics,
    /// Submit -> batch -> complete through a coordinator.
    EndToEnd,
}

impl Component {
    /// Every component, in report order.
    pub const ALL: [Component; 6] = [
        Component::Queue,
        Component::Load,
        Component::Health,
        Component::Logger,
        Component::Metrics,
        Component::EndToEnd,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Component::Queue => "queue",
            Component::Load => "load",
            Component::Health => "health",
            Component::Logger => "logger",
            Component::Metrics => "metrics",
            Component::EndToEnd => "end_to_end",
        }
    }

    /// The component called `name`, if any.
    pub fn from_name(name: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Which implementation of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Impl {
    /// The lock-free freelane crates.
    Freelane,
    /// The original lock-based design.
    Mutex,
}

impl Impl {
    /// Both implementations, in report order.
    pub const ALL: [Impl; 2] = [Impl::Freelane, Impl::Mutex];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Freelane => "freelane",
            Impl::Mutex => "mutex",
        }
    }
}
