//! Lock-free logging behind `tracing`: callers capture events into a bounded lock-free ring, a
//! background thread renders them as JSON lines in batches and writes them to any `io::Write`.
//!
//! Two front doors:
//! - [`JsonLayer`] for `tracing_subscriber::registry()`: the caller only captures the event
//!   (timestamp, static metadata, field values, enclosing spans' pre-rendered fields) into a ring
//!   slot's reusable buffer; JSON rendering happens on the logger's thread.
//! - [`non_blocking`]: a drop-in replacement for `tracing_appender::non_blocking`, a
//!   [`MakeWriter`](tracing_subscriber::fmt::MakeWriter) for `tracing_subscriber::fmt()` (which
//!   formats on the caller; each write becomes one record).
//!
//! ```
//! use tracing_subscriber::prelude::*;
//!
//! let (layer, guard) = freelane_log::layer(std::io::stdout());
//! let _default = tracing_subscriber::registry().with(layer).set_default();
//! tracing::info!(gpu = 3, "request admitted");
//! let stats = guard.shutdown(std::time::Duration::from_secs(5)).unwrap();
//! assert_eq!(stats.written, 1);
//! ```
//!
//! # Guarantees
//! - **Callers never take a lock** on the normal path: one CAS claims a ring position, the
//!   record is filled in place, one release store publishes it. With [`Overflow::Drop`] a caller
//!   never waits; with [`Overflow::Block`] it waits only while the ring is full: a few short
//!   spins, then it sleeps until the drainer has consumed a batch. The only locks a caller can
//!   take are that sleep's mutex (a full ring in `Block` mode) and the writer's, on the
//!   synchronous fallback for never-dropped levels ([`Builder::never_drop`]) when the ring is
//!   full or closed.
//! - **Nothing is lost silently.** Every submitted event ends in exactly one of
//!   [`Stats::written`], [`Stats::dropped`] or [`Stats::failed`] (failed: in a write the writer
//!   returned an error for, or its capture panicked — a field's `Debug` impl, say; that panic
//!   reaches the caller and the logger carries on), so after shutdown
//!   `emitted == written + dropped + failed`. Drops happen only with `Overflow::Drop` on a full
//!   ring, after shutdown (below a never-drop level), or for an event emitted from inside the
//!   logger while the ring is full or closed — by the writer (on the logger's thread, or during
//!   a caller's synchronous write) or by a field's `Debug`/`Display` while its event is being
//!   captured — since waiting for room or writing it synchronously could deadlock on itself;
//!   each is counted exactly once.
//! - **Flush and shutdown.** [`Logger::flush`] returns once every event accepted before the call
//!   is written and the writer flushed. [`Guard::shutdown`] (and dropping the [`Guard`]) closes
//!   the ring: every event accepted before the close is written, and the writer flushed, before
//!   the drainer exits; events
//!   submitted after it are counted as dropped (or written synchronously at never-dropped levels).
//! - **Order.** Lines appear in ring order (the order positions were claimed), which respects each
//!   thread's program order. A synchronous fallback write may overtake queued lines.
//! - **Writer errors and panics** are caught on the logger's thread and counted
//!   ([`Stats::writer_errors`], [`Logger::last_writer_error`]); they never reach a caller.
//!
//! # Implementation
//! The ring is a bounded MPSC array (Vyukov's bounded queue, one consumer) whose slots always hold
//! a record with a reusable buffer. A slot's sequence number says whose turn it
//! is: a producer claims position `p` with a CAS on `tail` when the slot's sequence is `p`
//! (`Acquire`, pairing with the drainer's `Release` hand-back of the previous lap), fills the
//! record in place and stores `p + 1` (`Release`); the drainer consumes position `p` when it loads
//! `p + 1` (`Acquire`), renders it, and stores `p + capacity` (`Release`). Closing sets the top bit
//! of `tail` with one `fetch_or`: positions claimed before it are exactly those below the returned
//! value, every later CAS fails, so the drainer knows when it has consumed everything accepted.
//! Rendering goes through `fmt` only for `Debug` values (formatted on the caller) and for floats
//! that are not short decimals: integers, short decimals, JSON escaping and the timestamp (its
//! date-time prefix cached per second) are written by hand, byte for byte what `fmt` would write,
//! and each callsite's escaped field keys and target are cached (256 entries, direct-mapped).
//! The drainer renders up to `batch` records into one buffer, writes it with one `write_all`,
//! flushes the writer when the ring runs dry (or a flush is requested), and publishes the flushed
//! position with a `Release` store that [`Logger::flush`] loads with `Acquire`. When idle it
//! parks with a timeout (1 ms by default); callers wake it only when a check every
//! `capacity/16` events finds the ring at least a quarter full, on a full ring (`Block`), a flush
//! or a shutdown, so a caller in a lightly loaded process makes no system call. A missed
//! wake-up costs at most one idle poll. Lossless callers that find the ring full sleep on an event
//! count: they register in a waiter counter, re-check the ring, then wait on a condition variable;
//! after each batch the drainer issues a fence and reads the counter, and takes the lock only when
//! someone is registered (`SeqCst` fences on both sides rule out a lost wake-up; a 5 ms timed
//! wait is a safety net on top). Statistics are relaxed counters: `emitted` is derived from
//! the ring's `tail` (no extra shared write per event), drops touch their own padded counter.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod layer;
mod logger;
mod record;
mod ring;
mod writer;

pub use layer::JsonLayer;
pub use logger::{BuildError, Builder, Guard, Logger, Overflow, ShutdownError, Stats};
pub use writer::{NonBlocking, NonBlockingWriter};

impl Builder {
    /// Starts a logger and returns its [`JsonLayer`] front door and guard.
    pub fn build_layer<W: std::io::Write + Send + 'static>(
        self,
        writer: W,
    ) -> Result<(JsonLayer, Guard), BuildError> {
        let (logger, guard) = self.build(writer)?;
        Ok((JsonLayer::new(logger), guard))
    }

    /// Starts a logger and returns its [`NonBlocking`] `MakeWriter` front door and guard.
    pub fn build_non_blocking<W: std::io::Write + Send + 'static>(
        self,
        writer: W,
    ) -> Result<(NonBlocking, Guard), BuildError> {
        let (logger, guard) = self.build(writer)?;
        Ok((NonBlocking::new(logger), guard))
    }
}

/// A logger with default settings ([`Builder::new`]) behind a [`JsonLayer`].
///
/// # Panics
/// Only if the operating system refuses to start the writer thread; use [`Builder::build_layer`]
/// to handle that as an error.
pub fn layer<W: std::io::Write + Send + 'static>(writer: W) -> (JsonLayer, Guard) {
    Builder::new()
        .build_layer(writer)
        .unwrap_or_else(|e| panic!("freelane-log: {e}"))
}

/// A drop-in replacement for `tracing_appender::non_blocking`: a logger with default settings
/// behind a [`NonBlocking`] `MakeWriter`.
///
/// ```
/// let (writer, _guard) = freelane_log::non_blocking(std::io::stdout());
/// let subscriber = tracing_subscriber::fmt().with_writer(writer).finish();
/// # drop(subscriber);
/// ```
///
/// # Panics
/// Only if the operating system refuses to start the writer thread; use
/// [`Builder::build_non_blocking`] to handle that as an error.
pub fn non_blocking<W: std::io::Write + Send + 'static>(writer: W) -> (NonBlocking, Guard) {
    Builder::new()
        .build_non_blocking(writer)
        .unwrap_or_else(|e| panic!("freelane-log: {e}"))
}
