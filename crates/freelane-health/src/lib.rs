//! A race-free [`SeqLock`] over atomic words and the per-GPU [`HealthTable`] with its
//! failover/recovery state machine.
//!
//! A monitor (heartbeats, device errors) and the request path (successes, failures) write the
//! table; every router reads it with [`HealthTable::is_usable`], a single atomic load.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use freelane_health::{GpuState, HealthConfig, HealthTable};
//! use freelane_load::GpuId;
//!
//! let config = HealthConfig::builder()
//!     .degrade_after_failures(2)
//!     .unhealthy_after_failures(3)
//!     .heartbeat_timeout(Duration::from_secs(1))
//!     .build()
//!     .unwrap();
//! let t0 = Instant::now();
//! let table = HealthTable::with_epoch(2, config, t0);
//! assert!(table.is_usable(GpuId(0)));
//! table.mark_unhealthy(GpuId(0)).unwrap(); // e.g. a CUDA device error
//! assert!(!table.is_usable(GpuId(0)));
//! // GPU 1 stops sending heartbeats: the monitor's check fails it over.
//! table.heartbeat(GpuId(0), t0 + Duration::from_millis(1500)).unwrap();
//! let moved = table.check_heartbeats(t0 + Duration::from_secs(2));
//! assert_eq!(moved.len(), 1);
//! assert_eq!(table.state(GpuId(1)), GpuState::Unhealthy);
//! assert_eq!(table.total_transitions().failovers(), 2);
//! ```
//!
//! # The state machine
//! | from | to | when |
//! |---|---|---|
//! | Healthy | Degraded | a failure brings consecutive failures to `degrade_after_failures`, or the error-rate EWMA to `degraded_error_rate` |
//! | Degraded | Unhealthy | a failure brings consecutive failures to `unhealthy_after_failures`, or the EWMA to `unhealthy_error_rate` |
//! | Unhealthy | Recovering | `recover_after_heartbeats` heartbeats reported after it became Unhealthy, each stamped later than the one before and none `heartbeat_timeout` or more after it; entering Recovering resets the EWMA and the consecutive counters |
//! | Recovering | Healthy | `recover_after_successes` consecutive successes |
//! | Degraded | Healthy | `recover_after_successes` consecutive successes and the EWMA below `degraded_error_rate` |
//! | Recovering | Unhealthy | any failure (the probe failed) |
//! | Healthy, Degraded, Recovering | Unhealthy | [`mark_unhealthy`](HealthTable::mark_unhealthy), or [`check_heartbeats`](HealthTable::check_heartbeats) finds no heartbeat for `heartbeat_timeout` |
//!
//! "After it became Unhealthy" is in the order reports reach the table: the table keeps no time
//! of the transition (failures and forced marks carry none), so a heartbeat stamped before a
//! failover but reported after it counts, if it is newer than every heartbeat seen before.
//!
//! Each event causes at most one transition. Usable (for routing) = Healthy, Degraded or
//! Recovering; a Recovering GPU takes traffic as a probe. Every transition is counted per GPU
//! and per `(from, to)` pair ([`TransitionCounts`]: `failovers()`, `recoveries()`) and returned
//! to the caller as a [`Transition`] with its [`Cause`], so failover and recovery can be logged
//! and tracked. Time is passed in by the caller (`Instant`), never read inside the table's
//! hot paths.
//!
//! # Guarantees
//! - **Never torn.** [`SeqLock::read`] and [`HealthTable::record`] return a record exactly as
//!   one write left it; reads never go backwards (the version only grows).
//! - **No lost update.** Every report is one [`SeqLock::update`] (an atomic read-modify-write
//!   of the record): concurrent reporters' events are applied one after another, in some
//!   total order, each exactly once; the state machine sees each event exactly once.
//! - **Hot read.** [`HealthTable::is_usable`] / [`state`](HealthTable::state) are one atomic
//!   load (wait-free). The state byte is stored inside the record's write critical section,
//!   so successive state bytes follow the records' write order; it may lead the record by the
//!   one write in progress (a reader can see the new state a moment before the new record).
//!   A reader that observes a state also observes the transition count that led to it
//!   (Release/Acquire).
//! - **Progress.** Readers never write shared memory and never block writers. A reader waits
//!   only while a writer stores a new record's words (the state machine runs on a copy before
//!   that, so readers never wait for it); a read is wait-free when no writer is in that window.
//!   (A writer descheduled in the middle of its stores holds readers of that GPU's record until
//!   it runs again, as with every seqlock; the hot `is_usable` read is one atomic load and never
//!   waits.) Writers (reports, heartbeats) exclude each other per GPU with a spin lock held only
//!   for a few dozen instructions; an update closure that panics leaves the record unchanged
//!   and releases the lock.
//! - **Bad input.** Unknown GPUs: `is_usable` is `false`, `state` is Unhealthy, every other
//!   call returns [`HealthError::UnknownGpu`]; nothing panics. Config values are validated
//!   by [`HealthConfigBuilder::build`].
//!
//! # Implementation
//! [`SeqLock`] stores a `T: bytemuck::Pod` inline, right after its sequence word in one
//! 64-byte-aligned struct, and reads and writes it as `ceil(size_of::<T>()/8)` `AtomicU64` words
//! made over that memory with `AtomicU64::from_ptr` (the value is followed by 8 zero bytes so the
//! last word stays inside initialised memory; under loom the words are a boxed slice of loom
//! atomics instead, with the same protocol code). It uses Boehm's fence recipe (see [`SeqLock`]
//! and `docs/ORDERINGS.md`): a writer takes the lock bit with a CAS (Acquire), marks the
//! sequence as storing + `fence(Release)`, stores the words Relaxed, and stores the next even
//! sequence (Release);
//! readers load the sequence (Acquire), the words (Relaxed), `fence(Acquire)`, and re-check the
//! sequence. Every access is atomic, so there is no data race (unlike the `seqlock` crate's or
//! crossbeam `AtomicCell`'s volatile reads of racing memory) and loom can check it.
//!
//! [`HealthTable`] keeps one cache-padded slot per GPU: the state byte (an `AtomicU8` from
//! `freelane-sync` rather than `atomic::Atomic<GpuState>`, so that loom models it), the
//! `SeqLock<GpuRecord>` and 16 transition counters. All writes go through
//! `SeqLock::update`, which runs the pure `step` function of the state machine on a copy of
//! the record and then updates the counters and the state byte before the new record is
//! published. The `unsafe` code is `SeqLock::word`, which makes the atomic payload words over the
//! lock's inline memory, and the `Send`/`Sync` impls that go with it (see their SAFETY
//! comments); miri checks them.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod config;
mod seqlock;
mod table;

pub use config::{ConfigError, HealthConfig, HealthConfigBuilder};
pub use freelane_load::GpuId;
pub use seqlock::SeqLock;
pub use table::{
    Cause, GpuRecord, GpuState, HealthError, HealthTable, Transition, TransitionCounts,
};

#[cfg(all(test, not(freelane_loom)))]
mod tests;
