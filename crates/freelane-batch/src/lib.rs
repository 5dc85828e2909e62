//! Dynamic batching for multi-GPU serving: per-GPU lanes, batches closed by size, token budget or
//! maximum wait, and iteration-level ("continuous") batching.
//!
//! - [`Lane`]: one GPU's pending work, an MPMC queue plus a state word that counts the items
//!   available and carries the sleep/wake flags. Producers [`push`](Lane::push) without locks;
//!   the consumer sleeps without spinning and is woken by a lock-free waker handoff.
//! - [`Batcher`]: the lane's consumer. [`next_batch`](Batcher::next_batch) (async) and
//!   [`next_batch_blocking`](Batcher::next_batch_blocking) return when the batch holds
//!   `max_batch_size` requests, reaches `max_batch_tokens`, or `max_wait` has passed since its
//!   oldest request *arrived*. [`try_next_batch`](Batcher::try_next_batch) takes what is queued
//!   without waiting (for runtime-free drivers and benchmarks).
//! - [`Batch`]: what an executor runs. Between steps it may [`finish`](Batch::finish) an entry
//!   (answered at once, leaves the batch) and [`refill`](Batch::refill) from its lane up to the
//!   limits; [`prune`](Batch::prune) answers cancelled and expired entries without running them.
//! - [`Entry`], [`Request`], [`Handle`], [`Outcome`]: a request's life. Every entry is answered
//!   exactly once; a [`Handle`] is a future of its [`Outcome`] and cancels the request when dropped.
//! - [`BatchConfig`]: validated limits (zero or contradictory limits are a [`BatchConfigError`]).
//!
//! # Guarantees
//! - **Nothing taken twice, nothing lost.** A lane's state word counts items whose push has
//!   completed and that nobody has claimed. A claim decrements it with a CAS (so claims never
//!   exceed completed pushes) and then pops exactly that many items; claims are exclusive, so each
//!   item goes to exactly one batch. Unpopped claims are handed back when a [`Claim`] drops.
//! - **No lost wake-up.** The waiting consumer registers its waker, then sets `SLEEPING` with a
//!   CAS that also re-checks "empty, not nudged, open". Every push is a `fetch_add` on the same
//!   word, so push and registration are ordered by the word's modification order: a push ordered
//!   first is seen by the CAS (which then fails and the consumer takes the item); a push ordered
//!   after sees `SLEEPING` and wakes the registered waker (its Acquire RMW reads the consumer's
//!   Release CAS, so the registration happens-before the wake). Modelled in
//!   `loom-tests/tests/batch.rs`.
//! - **Every request gets exactly one answer.** Entries taken from a lane that are cancelled or
//!   past their deadline are answered `Cancelled` / `TimedOut` and never reach an executor.
//!   An entry dropped unanswered (a bug: an executor leaking entries, a panic unwinding through a
//!   batch) answers `Failed` itself and is counted in [`dropped_unanswered`].
//! - **Limits.** A batch never holds more than `max_batch_size` entries, and never more than
//!   `max_batch_tokens` of summed cost, except that a single entry always fits an empty batch
//!   (validated configs make `max_request_tokens <= max_batch_tokens`, so this only matters to
//!   callers that skip that check). An entry that would overflow the budget goes back to the
//!   lane's front queue, which is served before the main queue in FIFO order: entries already
//!   handed back (by other batches or a failover) go before it.
//! - **Admission.** [`Lane::try_push`] never lets the lane hold more than its capacity: a
//!   reservation counter is incremented before the push and decremented by claims. A refused
//!   push undoes its increment, so a `try_push` racing a refused one may itself be refused with
//!   a slot about to free up (never the other way round).
//! - **Shutdown.** [`Lane::close`] is an RMW on the state word, so every push is ordered before or
//!   after it: pushes before are counted in what the closer drains; a push after learns
//!   [`Pushed::Closed`] and drains itself. Items a consumer hands back (a dropped [`Claim`]
//!   with items left, or a batch's over-budget entry) go back into the lane even after a close,
//!   so a lane is drained for good only once its consumers have stopped: drain until
//!   `is_closed() && is_empty()` from the lane's own consumer (as the coordinator's workers do,
//!   and its drop answers whatever is left), or drain again after the consumers are joined. A
//!   single drain by the closer while a consumer still holds a claim can miss the hand-back.
//!
//! # Implementation
//! The state word holds `count << 4 | PAUSED | CLOSED | NUDGED | SLEEPING`. A push is one queue
//! push and one `fetch_add(AcqRel)`; only when `SLEEPING` was set does the producer clear it with
//! a `fetch_and` and hand the waker over ([`AtomicWaker`-style](https://docs.rs/futures-util)
//! three-state protocol: `WAITING`, `REGISTERING`, `WAKING`, no lock, one `unsafe` cell access
//! guarded by the exclusive state transitions). A busy consumer never touches the waker: its
//! fast path is one `Acquire` load. Blocking waits use the same protocol with a waker that
//! unparks the thread. Timed waits use tokio's timer (async) or `park_timeout` (blocking).
//!
//! The queues underneath are [`freelane_queue::Queue`]s (lock-free: see that crate's
//! guarantees).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod batch;
mod batcher;
mod config;
mod lane;
mod request;
mod waker;

pub use batch::Batch;
pub use batcher::{Batcher, Next};
pub use config::{
    BatchConfig, BatchConfigBuilder, BatchConfigError, MAX_BATCH_SIZE_LIMIT, MAX_WAIT_LIMIT,
};
pub use freelane_queue::Full;
pub use lane::{thread_waker, Claim, Lane, Pushed, Signal, SignalFuture};
pub use request::{
    dropped_unanswered, Answer, Entry, ErrorKind, ExecError, Handle, Observer, Outcome,
    OutcomeKind, Request,
};
