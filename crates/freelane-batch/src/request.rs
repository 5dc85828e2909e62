//! Requests, their one-shot answers, and the entries lanes and batches carry.
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A unit of work submitted for batching: a payload, its token cost and an optional deadline.
pub struct Request<I> {
    /// What the executor runs (a prompt, a tensor, ...).
    pub payload: I,
    /// Cost counted against a batch's token budget (e.g. prompt + max new tokens).
    pub tokens: u64,
    /// After this instant the request is answered [`Outcome::TimedOut`] instead of being run.
    pub deadline: Option<Instant>,
}

impl<I> Request<I> {
    /// A request with no deadline.
    pub fn new(payload: I, tokens: u64) -> Self {
        Self {
            payload,
            tokens,
            deadline: None,
        }
    }

    /// Sets an absolute deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the deadline `timeout` from now (saturating far in the future).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Instant::now().checked_add(timeout);
        self
    }
}

impl<I> fmt::Debug for Request<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("tokens", &self.tokens)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// What kind of failure an [`ExecError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The executor returned an error for the batch or this request.
    Executor,
    /// The executor returned `Ok` but never finished this request.
    Unfinished,
    /// The executor panicked while running the batch.
    Panicked,
    /// The executor did not return within the configured execution timeout.
    ExecTimeout,
    /// The request's GPU failed and no usable GPU could take it over.
    Unavailable,
    /// The service shut down before the request could run.
    ShuttingDown,
    /// The request was dropped without an answer (a bug; counted and logged).
    Dropped,
}

/// Why a request failed: a kind and a human-readable, lowercase message. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct ExecError {
    kind: ErrorKind,
    message: Arc<str>,
}

impl ExecError {
    /// An executor error with `message` (e.g. "cuda launch failed: out of memory").
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_kind(ErrorKind::Executor, message)
    }

    /// An error of a given kind.
    pub fn with_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: Arc::from(message.into()),
        }
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecError")
            .field("kind", &self.kind)
            .field("message", &&*self.message)
            .finish()
    }
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExecError {}

/// The one answer every accepted request gets.
pub enum Outcome<O> {
    /// The executor produced an output.
    Completed(O),
    /// The deadline passed before the request ran; it was not executed.
    TimedOut,
    /// The caller cancelled (or dropped the handle); the request was not executed.
    Cancelled,
    /// The request could not be served.
    Failed(ExecError),
}

impl<O> Outcome<O> {
    /// The variant without its payload.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Self::Completed(_) => OutcomeKind::Completed,
            Self::TimedOut => OutcomeKind::TimedOut,
            Self::Cancelled => OutcomeKind::Cancelled,
            Self::Failed(_) => OutcomeKind::Failed,
        }
    }

    /// The output, if completed.
    pub fn completed(self) -> Option<O> {
        match self {
            Self::Completed(o) => Some(o),
            _ => None,
        }
    }
}

impl<O> fmt::Debug for Outcome<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Completed(_) => f.write_str("Completed(..)"),
            Self::TimedOut => f.write_str("TimedOut"),
            Self::Cancelled => f.write_str("Cancelled"),
            Self::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// [`Outcome`] without the payload (for metrics and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// [`Outcome::Completed`].
    Completed,
    /// [`Outcome::TimedOut`].
    TimedOut,
    /// [`Outcome::Cancelled`].
    Cancelled,
    /// [`Outcome::Failed`].
    Failed,
}

impl OutcomeKind {
    /// A lowercase label (`"completed"`, `"timed_out"`, `"cancelled"`, `"failed"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}

/// The caller's side of a request: a future resolving to exactly one [`Outcome`].
///
/// Dropping the handle (or calling [`cancel`](Self::cancel)) cancels the request: if it has not
/// started it is never executed; a running executor can see it through
/// [`Entry::is_cancelled`]. It works without an async runtime too ([`try_outcome`](Self::try_outcome),
/// [`wait`](Self::wait)).
#[must_use = "dropping a Handle cancels its request"]
pub struct Handle<O> {
    rx: oneshot::Receiver<Outcome<O>>,
    cancelled: bool,
    /// The outcome was returned (by `try_outcome` or the future): there is no second one.
    delivered: bool,
}

impl<O> Handle<O> {
    /// Cancels the request. Awaiting the handle afterwards yields [`Outcome::Cancelled`], unless
    /// the answer had already been sent, which is then returned.
    pub fn cancel(&mut self) {
        self.cancelled = true;
        self.rx.close();
    }

    /// The outcome if it has arrived, without blocking; `None` while pending, and `None`
    /// again after it has been returned once (each request has exactly one outcome; awaiting
    /// the handle after that panics, as polling any completed future may).
    pub fn try_outcome(&mut self) -> Option<Outcome<O>> {
        if self.delivered {
            return None;
        }
        let o = match self.rx.try_recv() {
            Ok(o) => o,
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => self.closed(),
        };
        self.delivered = true;
        Some(o)
    }

    /// Blocks the current thread until the outcome arrives.
    ///
    /// # Panics
    /// When called from within an asynchronous execution context (await the handle instead),
    /// or after [`try_outcome`](Self::try_outcome) already returned the outcome.
    pub fn wait(self) -> Outcome<O> {
        assert!(
            !self.delivered,
            "Handle::wait after its outcome was delivered (each request has exactly one)"
        );
        let cancelled = self.cancelled;
        match self.rx.blocking_recv() {
            Ok(o) => o,
            Err(_) if cancelled => Outcome::Cancelled,
            Err(_) => Outcome::Failed(dropped_error()),
        }
    }

    fn closed(&self) -> Outcome<O> {
        if self.cancelled {
            Outcome::Cancelled
        } else {
            Outcome::Failed(dropped_error())
        }
    }
}

fn dropped_error() -> ExecError {
    ExecError::with_kind(ErrorKind::Dropped, "request was dropped without an answer")
}

impl<O> Future for Handle<O> {
    type Output = Outcome<O>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<O>> {
        assert!(
            !self.delivered,
            "Handle polled after its outcome was delivered (each request has exactly one)"
        );
        let o = match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(o)) => o,
            Poll::Ready(Err(_)) => self.closed(),
            Poll::Pending => return Poll::Pending,
        };
        self.delivered = true;
        Poll::Ready(o)
    }
}

impl<O> fmt::Debug for Handle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

/// A request in flight: payload, cost, deadline, arrival time, the answer channel and an
/// `extra` value owned by whoever queued it (the coordinator keeps the GPU load reservation
/// there, released when the entry is answered and dropped).
///
/// Dropping an unanswered entry answers it [`Outcome::Failed`] with [`ErrorKind::Dropped`]
/// (and counts it in [`dropped_unanswered`]), so no caller ever waits forever.
pub struct Entry<I, O, X = ()> {
    payload: Option<I>,
    tokens: u64,
    deadline: Option<Instant>,
    enqueued: Instant,
    started: Option<Instant>,
    reply: Option<oneshot::Sender<Outcome<O>>>,
    attempts: u32,
    extra: X,
}

static DROPPED_UNANSWERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many entries were dropped unanswered (and answered `Failed(Dropped)` on drop) in this
/// process. Always 0 unless something is wrong (an executor leaked entries, a panic unwound
/// through a batch).
pub fn dropped_unanswered() -> u64 {
    // Relaxed: a statistic; no other memory is published with it.
    DROPPED_UNANSWERED.load(std::sync::atomic::Ordering::Relaxed)
}

impl<I, O, X> Entry<I, O, X> {
    /// Wraps `request` (its arrival time is now) and returns the caller's [`Handle`].
    pub fn new(request: Request<I>, extra: X) -> (Self, Handle<O>) {
        Self::new_at(request, extra, Instant::now())
    }

    /// As [`new`](Self::new) with an explicit arrival time.
    pub fn new_at(request: Request<I>, extra: X, enqueued: Instant) -> (Self, Handle<O>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                payload: Some(request.payload),
                tokens: request.tokens,
                deadline: request.deadline,
                enqueued,
                started: None,
                reply: Some(tx),
                attempts: 0,
                extra,
            },
            Handle {
                rx,
                cancelled: false,
                delivered: false,
            },
        )
    }

    /// The payload, unless the executor took it with [`take_payload`](Self::take_payload).
    pub fn payload(&self) -> Option<&I> {
        self.payload.as_ref()
    }

    /// Mutable access to the payload.
    pub fn payload_mut(&mut self) -> Option<&mut I> {
        self.payload.as_mut()
    }

    /// Moves the payload out (the entry stays in its batch until finished).
    pub fn take_payload(&mut self) -> Option<I> {
        self.payload.take()
    }

    /// The token cost.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// `true` once `now` is at or past the deadline.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// `true` when the caller dropped or cancelled its handle (or the entry was answered).
    pub fn is_cancelled(&self) -> bool {
        self.reply.as_ref().is_none_or(|tx| tx.is_closed())
    }

    /// When the request arrived.
    pub fn enqueued_at(&self) -> Instant {
        self.enqueued
    }

    /// When the request was first taken into a batch (None while queued).
    pub fn started_at(&self) -> Option<Instant> {
        self.started
    }

    /// How many batches this request has been part of that failed (for retry decisions).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Counts one failed attempt.
    pub fn add_attempt(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
    }

    /// The owner's extra value.
    pub fn extra(&self) -> &X {
        &self.extra
    }

    /// Mutable access to the owner's extra value (e.g. to move a load reservation on failover).
    pub fn extra_mut(&mut self) -> &mut X {
        &mut self.extra
    }

    pub(crate) fn mark_started(&mut self, now: Instant) {
        if self.started.is_none() {
            self.started = Some(now);
        }
    }

    /// `true` until the entry has been answered.
    pub fn is_unanswered(&self) -> bool {
        self.reply.is_some()
    }

    /// Sends `outcome` to the caller (at most once: later calls return `false` and drop it).
    /// Sending to a caller who already dropped the handle is not an error.
    pub fn answer(&mut self, outcome: Outcome<O>) -> bool {
        match self.reply.take() {
            Some(tx) => {
                let _ = tx.send(outcome);
                true
            }
            None => false,
        }
    }
}

impl<I, O, X> Drop for Entry<I, O, X> {
    fn drop(&mut self) {
        if let Some(tx) = self.reply.take() {
            // Relaxed: a statistic; no other memory is published with it.
            DROPPED_UNANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                tokens = self.tokens,
                "request dropped without an answer; answering failed"
            );
            let _ = tx.send(Outcome::Failed(dropped_error()));
        }
    }
}

impl<I, O, X> fmt::Debug for Entry<I, O, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("tokens", &self.tokens)
            .field("deadline", &self.deadline)
            .field("enqueued", &self.enqueued)
            .field("started", &self.started)
            .field("attempts", &self.attempts)
            .field("answered", &self.reply.is_none())
            .finish_non_exhaustive()
    }
}

/// A report of one answered request, given to an [`Observer`].
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    /// The lane (GPU index) whose batch or queue answered it.
    pub lane: usize,
    /// How it ended.
    pub kind: OutcomeKind,
    /// Its token cost.
    pub tokens: u64,
    /// When it arrived.
    pub enqueued: Instant,
    /// When it was first taken into a batch (None if answered straight from the queue).
    pub started: Option<Instant>,
    /// When it was answered.
    pub answered: Instant,
}

/// Told about every request a [`Batch`](crate::Batch) answers (for latency histograms, counters).
/// Called on the answering thread just *before* the answer is sent, so what it records
/// happens-before the caller observes the outcome. Keep it cheap and lock-free.
pub trait Observer: Send + Sync + 'static {
    /// One request was answered.
    fn answered(&self, answer: &Answer);

    /// The batch running on `lane` made progress ([`Batch::refill`](crate::Batch::refill) was
    /// called between steps): a liveness signal (the coordinator heartbeats on it).
    fn step(&self, lane: usize) {
        let _ = lane;
    }
}
