//! Striped lock-free latency histograms, counters and gauges, a small [`Registry`] with help text
//! and labels, and the Prometheus text exposition.
//!
//! ```
//! use freelane_metrics::{HistogramOpts, Registry};
//!
//! let registry = Registry::new();
//! let ok = registry.counter("freelane_requests_total", "Requests answered.", &[("status", "ok")]);
//! let latency = registry.histogram_with(
//!     "freelane_request_duration_seconds",
//!     "End-to-end request latency.",
//!     &[("gpu", "0")],
//!     HistogramOpts::nanos_as_seconds(), // record nanoseconds, expose seconds
//! );
//! ok.inc();
//! latency.record(1_250_000); // 1.25 ms, in ns
//! let snap = latency.snapshot();
//! assert_eq!(snap.count(), 1);
//! assert!(registry.render_prometheus().contains("freelane_request_duration_seconds_count{gpu=\"0\"} 1"));
//! ```
//!
//! # Guarantees
//! - **Recording never blocks and never locks.** [`Histogram::record`] is one relaxed
//!   `fetch_add` on a bucket and one on the sum, plus a relaxed `fetch_min`/`fetch_max` only when
//!   the value is a new extreme of the thread's stripe. The first record of a thread into a
//!   histogram may allocate that thread's stripe (one CAS installs it; a loser frees its copy).
//!   [`Counter::add`] is one relaxed `fetch_add`; [`Gauge`] operations are one atomic operation.
//! - **Snapshots need no cooperation.** [`Histogram::snapshot`] reads every stripe with plain
//!   loads, from any thread, at any time. Every record that *happened before* the call (e.g. in a
//!   joined thread, or one ordered by a channel) is fully included. A record racing with the
//!   snapshot may be missing or partly included (its bucket without its sum, say): bucket counts
//!   never exceed what was recorded, `count` is the sum of the bucket counts (so quantiles always
//!   agree with `count`); `sum`/`min`/`max` include every counted value and may also reflect a
//!   racing record the buckets do not count yet.
//!   Nothing is ever lost: a later snapshot sees it.
//! - **Precision.** Buckets are log-linear: every value below 256 has its own bucket, above that
//!   128 sub-buckets per power of two (each at most 1/128 ≈ 0.78% of its lower bound wide) up to
//!   2^44 ns ≈ 4.9 h; larger values are counted in the last bucket. `count`, `sum`, `min` and `max`
//!   are exact (`sum` wraps modulo 2^64); [`Snapshot::quantile`] returns its bucket's midpoint
//!   clamped to `[min, max]`, within 0.4% of the exact nearest-rank quantile for values below
//!   2^44 (beyond that only the clamp bounds it).
//! - **Exposition** ([`Registry::render_prometheus`]) follows the text format 0.0.4. Histograms
//!   expose a bounded set of `le` boundaries ([`HistogramOpts`]), cumulative and ending in
//!   `+Inf`, derived from the fine buckets: a boundary counts the internal buckets that lie wholly
//!   at or below it, so counts may be off only for values within 0.8% of a boundary — and for
//!   values in the top internal bucket (recorded values of about 2^44 · 0.996 and above, which
//!   includes everything clamped into it), which count only towards `+Inf`.
//! - Registration takes a mutex (cold path); it is idempotent for the same name and label set and
//!   reports bad names, labels, kind clashes and bad histogram options as [`MetricError`]s (the
//!   non-`try_` forms panic with that message, as for any programming error).
//!
//! # Implementation
//! A histogram holds a table of stripe slots (`4 × cores` rounded to a power of two, between 4
//! and 64; each slot cache-padded). A thread picks its slot once (a round-robin thread index kept
//! in a thread-local) and the stripe behind it is allocated on first use and installed with an
//! `AcqRel` compare-exchange; readers load the slot with `Acquire`, which makes the stripe's
//! zeroed counters visible before any use. Stripes are freed only by `Drop` (`&mut self`), so a
//! reference to a stripe is valid for as long as the histogram is borrowed. Counters inside a
//! stripe are independent relaxed atomics: they publish no other data, and the snapshot's
//! guarantees above need no ordering among them. Happens-before for "fully included" comes from
//! whatever ordered the recorder before the snapshot (join, channel, lock), as for any atomic.
//! Counters are striped the same way (`4 × cores` cells, at most 16); a gauge is one word, since
//! `set` needs a single point of truth.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod counter;
mod histogram;
mod registry;
mod shard;

pub use counter::{Counter, Gauge};
pub use histogram::{Histogram, Snapshot};
pub use registry::{HistogramOpts, MetricError, Registry};
