//! The freelane facade and the multi-GPU [`Coordinator`].
//!
//! Re-exports the lock-free crates ([`queue`], [`load`], [`health`], [`log`], [`metrics`],
//! [`batch`]) and composes them into a coordinator that turns a stream of requests into batches
//! per GPU and answers every accepted request exactly once.
//!
//! # Request flow
//! ```text
//! submit(request)                                     (any thread, sync, never blocks)
//!   -> shutting down? -> Rejected::ShuttingDown;  tokens > max_request_tokens? -> TooLarge
//!   -> LoadBoard::pick_and_acquire(policy, tokens, HealthTable::is_usable)
//!        none usable -> Rejected::Unavailable
//!   -> Lane::try_push (exact per-lane capacity)      full -> Rejected::Overloaded { retry_after }
//!   <- Handle (future of one Outcome; dropping it cancels)
//! worker (one tokio task per GPU)
//!   -> Batcher::next_batch_until: max size / token budget / max wait since first arrival
//!   -> Executor::run(gpu, &mut batch)   (finish / refill / prune between steps)
//!   -> complete: unfinished -> Failed; Err -> retry once elsewhere or Failed; health report;
//!      histograms (queue, exec, end-to-end, batch size), one tracing event per batch
//! monitor (one task): HealthTable::check_heartbeats, failover of unusable lanes
//! ```
//!
//! # Guarantees
//! - **Exactly one outcome per accepted request.** Every entry leaves a lane through a claim
//!   (exclusive) and is answered by exactly one of: its batch (`finish`, `fail`, `prune`,
//!   the coordinator's completion), failover (moved to another lane, or `Failed(Unavailable)`),
//!   retry (moved once, or `Failed(error)`), shutdown (`Failed(ShuttingDown)`), or — only for
//!   bugs — its own `Drop` (`Failed(Dropped)`, counted by
//!   [`dropped_unanswered`](freelane_batch::dropped_unanswered)). Cancelled and expired requests
//!   are never executed.
//! - **Load returns to zero.** Each request holds one [`LoadGuard`](freelane_load::LoadGuard) in
//!   its [`Ticket`]; it is released when the request is answered, and moved (re-acquired on the
//!   new GPU, released on the old) when the request moves.
//! - **Failover.** When a GPU becomes Unhealthy (failures reported by its worker, a missed
//!   heartbeat found by the monitor, or [`Coordinator::mark_unhealthy`]) its lane is paused (no
//!   refills) and drained to usable lanes' front queues; requests racing the drain are drained by
//!   the worker (woken by their push) or by the monitor's next tick. A failed batch's requests are
//!   retried once on another usable GPU (configurable). Heartbeats come from the worker loop and
//!   from every [`Batch::refill`](freelane_batch::Batch::refill), so a hung executor stops them;
//!   recovery follows the health table's state machine, and the worker resumes its lane.
//! - **Work stealing.** An idle worker wakes every `idle_interval` (and is nudged when a busy
//!   worker leaves a backlog) and takes a batch from the longest lane whose worker is busy, whose
//!   GPU is unusable, or that holds a full batch.
//! - **Shutdown.** [`Coordinator::shutdown`] stops admission, closes every lane (an RMW ordered
//!   against every push: a push ordered after it learns so and answers `Failed(ShuttingDown)`),
//!   lets the workers finish what is queued, and returns when they have stopped.
//!
//! # Runtime-free driving
//! [`CoordinatorBuilder::build_manual`] builds without workers; a benchmark or plain-thread
//! driver calls [`Coordinator::submit`], [`Coordinator::try_next_batch`] (non-blocking; own lane,
//! else the longest lane), runs the batch (e.g. `batch.finish_all(|e| ..)`), and
//! [`Coordinator::complete`]. Handles can be read with
//! [`Handle::try_outcome`](freelane_batch::Handle::try_outcome) or
//! [`Handle::wait`](freelane_batch::Handle::wait).
//!
//! ```
//! use freelane::{Coordinator, ExecError, Executor, GpuId, Outcome, Request, Batch};
//!
//! struct Echo;
//! impl Executor for Echo {
//!     type Input = u32;
//!     type Output = u32;
//!     async fn run(&self, _gpu: GpuId, batch: &mut Batch<u32, u32>) -> Result<(), ExecError> {
//!         batch.finish_all(|e| *e.payload().unwrap());
//!         Ok(())
//!     }
//! }
//!
//! let c = Coordinator::builder(Echo).gpus(2).build_manual().unwrap();
//! let mut h = c.submit(Request::new(7, 1)).unwrap();
//! for g in 0..2 {
//!     if let Some(mut batch) = c.try_next_batch(GpuId(g)) {
//!         batch.finish_all(|e| *e.payload().unwrap());
//!         c.complete(batch, Ok(()));
//!     }
//! }
//! assert!(matches!(h.try_outcome(), Some(Outcome::Completed(7))));
//! ```
//!
//! # Implementation
//! The coordinator adds no lock to the request path: admission is a relaxed flag load, a load
//! board pick (relaxed loads) and acquire (one `fetch_add`), and a lane push (queue push plus one
//! `fetch_add`, plus a capacity `fetch_add`). Workers take batches with one CAS per batch and
//! pops; completion per request is a one-shot send, three histogram records and one counter
//! increment (striped relaxed atomics) and the load guard's `fetch_sub`. The mutexes inside are
//! the task list (start/shutdown only) and the metrics registry (registration only).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod config;
mod coordinator;
mod executor;

pub use freelane_batch as batch;
pub use freelane_health as health;
pub use freelane_load as load;
pub use freelane_log as log;
pub use freelane_metrics as metrics;
pub use freelane_queue as queue;

pub use config::{ConfigError, CoordinatorConfig, Rejected, MAX_GPUS};
pub use coordinator::{
    Batch, Coordinator, CoordinatorBuilder, Entry, GpuSnapshot, Metrics, Refused, Stats, Ticket,
};
pub use executor::Executor;
pub use freelane_batch::{
    BatchConfig, BatchConfigBuilder, BatchConfigError, ErrorKind, ExecError, Handle, Outcome,
    OutcomeKind, Request,
};
pub use freelane_health::{GpuState, HealthConfig, HealthTable};
pub use freelane_load::{GpuId, LoadBoard, Policy};
pub use freelane_metrics::{Histogram, Registry};
