//! The waiting policy: when a lane's consumer closes a batch.
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::batch::Batch;
use crate::config::BatchConfig;
use crate::lane::{thread_waker, Lane, Signal};
use crate::request::{Entry, Observer};

/// What [`Batcher::next_batch_until`] (and its blocking twin) returned.
// The `Batch` variant is large next to the unit ones; boxing it would cost an allocation per
// batch for a value that is returned once and immediately matched.
#[allow(clippy::large_enum_variant)]
pub enum Next<I, O, X = ()> {
    /// A batch with at least one entry, closed by its size, its token budget, `max_wait`, a
    /// nudge or the lane's close.
    Batch(Batch<I, O, X>),
    /// The lane was nudged while no batch had started.
    Nudged,
    /// The idle deadline passed with no batch started.
    Idle,
    /// The lane is closed and empty.
    Closed,
}

impl<I, O, X> fmt::Debug for Next<I, O, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Batch(b) => f.debug_tuple("Batch").field(b).finish(),
            Self::Nudged => f.write_str("Nudged"),
            Self::Idle => f.write_str("Idle"),
            Self::Closed => f.write_str("Closed"),
        }
    }
}

/// A batch being formed by an `async` wait: if the future is dropped before the batch is
/// returned, the entries it took go back to the lane's front queue, in the order they joined,
/// instead of being answered `Failed(Dropped)` with the batch.
struct Forming<'a, I, O, X> {
    lane: &'a Lane<Entry<I, O, X>>,
    batch: Option<Batch<I, O, X>>,
}

impl<I, O, X> Drop for Forming<'_, I, O, X> {
    fn drop(&mut self) {
        if let Some(mut batch) = self.batch.take() {
            for e in batch.take_unfinished() {
                // A closed lane is drained by its closer once its consumers stop (crate docs,
                // "Shutdown"), so the push result needs no action here.
                let _ = self.lane.push_front(e);
            }
        }
    }
}

/// The consumer of one [`Lane`]: forms batches by size, token budget and `max_wait`.
///
/// A batch closes when it holds `max_batch_size` entries, when its token cost reaches
/// `max_batch_tokens`, or `max_wait` after its oldest entry *arrived* (was submitted), whichever
/// is first; a lane that has waited long already runs at once. While the lane is empty the
/// batcher sleeps (no spinning, no timer) until a push, nudge or close wakes it.
///
/// One batcher per lane: the lane's wake-up slot holds one waiter.
pub struct Batcher<I, O, X = ()> {
    index: usize,
    lane: Arc<Lane<Entry<I, O, X>>>,
    config: BatchConfig,
    observer: Option<Arc<dyn Observer>>,
}

impl<I, O, X> Batcher<I, O, X> {
    /// The batcher of lane number `index`.
    pub fn new(index: usize, lane: Arc<Lane<Entry<I, O, X>>>, config: BatchConfig) -> Self {
        Self {
            index,
            lane,
            config,
            observer: None,
        }
    }

    /// Tells `observer` about every request answered by the batches formed here.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The lane.
    pub fn lane(&self) -> &Arc<Lane<Entry<I, O, X>>> {
        &self.lane
    }

    /// The limits.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// An empty batch for this lane (refills from it, reports to the observer).
    pub fn empty_batch(&self) -> Batch<I, O, X> {
        let b = Batch::new(self.index, self.config).with_source(Arc::clone(&self.lane));
        match &self.observer {
            Some(o) => b.with_observer(Arc::clone(o)),
            None => b,
        }
    }

    /// Takes whatever is queued now, up to the limits, without waiting (`max_wait` does not
    /// apply). `None` when nothing was taken; a returned batch may be empty when every entry
    /// taken was cancelled or expired (they were answered).
    pub fn try_next_batch(&mut self) -> Option<Batch<I, O, X>> {
        let mut batch = self.empty_batch();
        batch.fill_from(&self.lane, Instant::now());
        (batch.active() > 0 || batch.answered() > 0).then_some(batch)
    }

    /// Waits for the next batch; `None` once the lane is closed and empty. Nudges are ignored.
    /// Needs a tokio runtime with the time driver.
    ///
    /// Cancel-safe: dropping the future (a `select!` branch, a timeout) while a batch is
    /// forming hands the entries it had taken back to the lane's front queue, unanswered.
    pub async fn next_batch(&mut self) -> Option<Batch<I, O, X>> {
        loop {
            match self.next_batch_until(None).await {
                Next::Batch(b) => return Some(b),
                Next::Closed => return None,
                Next::Nudged | Next::Idle => continue,
            }
        }
    }

    /// Waits for the next batch, or a nudge, or `idle_deadline` while no batch has started.
    /// Needs a tokio runtime with the time driver. Cancel-safe, as
    /// [`next_batch`](Self::next_batch) is.
    pub async fn next_batch_until(&mut self, idle_deadline: Option<Instant>) -> Next<I, O, X> {
        let mut forming = Forming {
            lane: &self.lane,
            batch: Some(self.empty_batch()),
        };
        let batch = forming.batch.as_mut().expect("set above");
        // Phase 1: wait for a first entry.
        loop {
            batch.fill_from(&self.lane, Instant::now());
            if batch.active() > 0 {
                break;
            }
            let sig = match idle_deadline {
                None => self.lane.signal().await,
                Some(d) => {
                    tokio::select! {
                        biased;
                        s = self.lane.signal() => s,
                        () = tokio::time::sleep_until(d.into()) => return Next::Idle,
                    }
                }
            };
            match sig {
                Signal::Items => continue,
                Signal::Nudged => return Next::Nudged,
                Signal::Closed => {
                    // Pushes that raced the close are still counted: one last look.
                    batch.fill_from(&self.lane, Instant::now());
                    if batch.active() > 0 {
                        break;
                    }
                    return Next::Closed;
                }
            }
        }
        // Phase 2: fill until full, budget, or max_wait after the oldest arrival. Stop as soon as
        // the lane's next entry is over budget: it is back in the front queue, served before
        // anything pushed later, so waiting (or polling it again, which is what the lane's
        // "items available" signal would make us do) cannot add anything.
        let close_at = self.close_at(batch);
        while !batch.is_full() && !batch.stopped_by_budget() {
            if Instant::now() >= close_at {
                break;
            }
            let sig = tokio::select! {
                biased;
                s = self.lane.signal() => s,
                () = tokio::time::sleep_until(close_at.into()) => break,
            };
            match sig {
                Signal::Items => {
                    batch.fill_from(&self.lane, Instant::now());
                }
                Signal::Nudged | Signal::Closed => break,
            }
        }
        batch.refill_reset();
        Next::Batch(forming.batch.take().expect("taken only here"))
    }

    /// Blocking twin of [`next_batch`](Self::next_batch), for plain threads (no runtime).
    pub fn next_batch_blocking(&mut self) -> Option<Batch<I, O, X>> {
        loop {
            match self.next_batch_blocking_until(None) {
                Next::Batch(b) => return Some(b),
                Next::Closed => return None,
                Next::Nudged | Next::Idle => continue,
            }
        }
    }

    /// Blocking twin of [`next_batch_until`](Self::next_batch_until): parks the thread while
    /// waiting (woken by the lane's lock-free handoff).
    pub fn next_batch_blocking_until(&mut self, idle_deadline: Option<Instant>) -> Next<I, O, X> {
        // A waker for the calling thread, made per call: a `Batcher` is `Send`, and a waker
        // cached from an earlier call would unpark the thread that made it.
        let waker = thread_waker();
        let mut batch = self.empty_batch();
        loop {
            batch.fill_from(&self.lane, Instant::now());
            if batch.active() > 0 {
                break;
            }
            match self.lane.wait_blocking(&waker, idle_deadline) {
                None => return Next::Idle,
                Some(Signal::Items) => continue,
                Some(Signal::Nudged) => return Next::Nudged,
                Some(Signal::Closed) => {
                    batch.fill_from(&self.lane, Instant::now());
                    if batch.active() > 0 {
                        break;
                    }
                    return Next::Closed;
                }
            }
        }
        let close_at = self.close_at(&batch);
        // As in `next_batch_until`: stop on a full batch, an over-budget front entry, or
        // `max_wait` (checked here too: `wait_blocking` returns at once while items wait).
        while !batch.is_full() && !batch.stopped_by_budget() && Instant::now() < close_at {
            match self.lane.wait_blocking(&waker, Some(close_at)) {
                None => break,
                Some(Signal::Items) => {
                    batch.fill_from(&self.lane, Instant::now());
                }
                Some(Signal::Nudged | Signal::Closed) => break,
            }
        }
        batch.refill_reset();
        Next::Batch(batch)
    }

    fn close_at(&self, batch: &Batch<I, O, X>) -> Instant {
        let oldest = batch.oldest_arrival().unwrap_or_else(Instant::now);
        oldest.checked_add(self.config.max_wait()).unwrap_or(oldest)
    }
}

impl<I, O, X> fmt::Debug for Batcher<I, O, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("index", &self.index)
            .field("lane", &self.lane)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
