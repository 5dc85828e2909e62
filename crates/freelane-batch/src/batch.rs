//! A batch: the entries one executor run works on, with iteration-level joins and early leaves.
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::config::BatchConfig;
use crate::lane::Lane;
use crate::request::{Answer, Entry, ExecError, Observer, Outcome};

/// The entries an executor runs together, in numbered slots.
///
/// Supports iteration-level ("continuous") batching: between steps an executor may
/// [`finish`](Self::finish) any entry (its caller is answered at once, it leaves the batch and its
/// slot is reused) and [`refill`](Self::refill) the batch from its lane up to the limits (the new
/// slots are listed by [`joined`](Self::joined)). [`prune`](Self::prune) drops cancelled and
/// expired entries (answered `Cancelled` / `TimedOut`, never executed).
///
/// Slot indices are stable while an entry is in the batch and always below `max_batch_size`.
/// Every entry leaves by being answered exactly once (or, for failover, by
/// [`take_unfinished`](Self::take_unfinished)); an entry still in the batch when it drops is
/// answered `Failed(Dropped)` by the entry itself.
pub struct Batch<I, O, X = ()> {
    lane: usize,
    slots: Vec<Option<Entry<I, O, X>>>,
    free: Vec<usize>,
    joined: Vec<usize>,
    active: usize,
    tokens: u64,
    answered: usize,
    limits: BatchConfig,
    source: Option<Arc<Lane<Entry<I, O, X>>>>,
    observer: Option<Arc<dyn Observer>>,
    formed: Instant,
    oldest: Option<Instant>,
    /// Set when the last `fill_from` handed the lane's front entry back for the token budget:
    /// waiting for more items cannot help this batch (that entry is served before the main
    /// queue, behind only entries already handed back).
    budget_stop: bool,
}

impl<I, O, X> Batch<I, O, X> {
    /// An empty batch for lane (GPU index) `lane` with the given limits.
    pub fn new(lane: usize, limits: BatchConfig) -> Self {
        Self::new_at(lane, limits, Instant::now())
    }

    /// As [`new`](Self::new), formed at `now` (saves a clock read when the caller has one).
    pub fn new_at(lane: usize, limits: BatchConfig, now: Instant) -> Self {
        Self {
            lane,
            slots: Vec::new(),
            free: Vec::new(),
            joined: Vec::new(),
            active: 0,
            tokens: 0,
            answered: 0,
            limits,
            source: None,
            observer: None,
            formed: now,
            oldest: None,
            budget_stop: false,
        }
    }

    /// Sets the lane [`refill`](Self::refill) takes from.
    pub fn with_source(mut self, lane: Arc<Lane<Entry<I, O, X>>>) -> Self {
        self.source = Some(lane);
        self
    }

    /// Sets the observer told about every answer.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The lane (GPU index) this batch runs on.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// The limits this batch respects.
    pub fn limits(&self) -> &BatchConfig {
        &self.limits
    }

    /// When the batch was created.
    pub fn formed_at(&self) -> Instant {
        self.formed
    }

    /// The earliest arrival among the entries that joined this batch (the start of its
    /// `max_wait`).
    pub fn oldest_arrival(&self) -> Option<Instant> {
        self.oldest
    }

    /// Number of slots (every active index is below this).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Entries still in the batch (not answered).
    pub fn active(&self) -> usize {
        self.active
    }

    /// `true` when no entry is active.
    pub fn is_empty(&self) -> bool {
        self.active == 0
    }

    /// Summed token cost of the active entries.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// `true` when no more entries may join (size or token budget reached).
    pub fn is_full(&self) -> bool {
        self.active >= self.limits.max_batch_size() || self.tokens >= self.limits.max_batch_tokens()
    }

    /// How many entries this batch has answered so far (any outcome).
    pub fn answered(&self) -> usize {
        self.answered
    }

    /// The entry in slot `i`, if active.
    pub fn get(&self, i: usize) -> Option<&Entry<I, O, X>> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    /// Mutable access to the entry in slot `i`, if active.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Entry<I, O, X>> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    /// The active entries with their slot indices.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Entry<I, O, X>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, e)))
    }

    /// The active entries with their slot indices, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Entry<I, O, X>)> + '_ {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| e.as_mut().map(|e| (i, e)))
    }

    /// Slots filled since the batch was formed or since the last [`refill`](Self::refill).
    pub fn joined(&self) -> &[usize] {
        &self.joined
    }

    /// Inserts an entry (respecting nothing: callers check the limits). Returns its slot.
    pub fn push(&mut self, mut entry: Entry<I, O, X>, now: Instant) -> usize {
        entry.mark_started(now);
        let arrived = entry.enqueued_at();
        self.oldest = Some(self.oldest.map_or(arrived, |o| o.min(arrived)));
        self.tokens = self.tokens.saturating_add(entry.tokens());
        self.active += 1;
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        self.joined.push(i);
        i
    }

    /// Answers the entry in slot `i` with `Completed(output)` now; it leaves the batch.
    /// Gives `output` back if slot `i` holds no active entry.
    pub fn finish(&mut self, i: usize, output: O) -> Result<(), O> {
        match self.remove(i) {
            Some(e) => {
                self.answer_entry(e, Outcome::Completed(output), Instant::now());
                Ok(())
            }
            None => Err(output),
        }
    }

    /// Answers the entry in slot `i` with `Failed(error)`; `false` if the slot is not active.
    pub fn fail(&mut self, i: usize, error: ExecError) -> bool {
        match self.remove(i) {
            Some(e) => {
                self.answer_entry(e, Outcome::Failed(error), Instant::now());
                true
            }
            None => false,
        }
    }

    /// Finishes every active entry with `f(entry)`'s output (one clock read for all).
    pub fn finish_all(&mut self, mut f: impl FnMut(&mut Entry<I, O, X>) -> O) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if let Some(mut e) = self.slots[i].take() {
                self.active -= 1;
                self.tokens = self.tokens.saturating_sub(e.tokens());
                let out = f(&mut e);
                self.answer_entry(e, Outcome::Completed(out), now);
            }
        }
        // Every slot is free now: keep the allocation, forget the free list and the slots that
        // had joined (none is active any more).
        self.slots.clear();
        self.free.clear();
        self.joined.clear();
    }

    /// Fails every active entry with `error`.
    pub fn fail_all(&mut self, error: &ExecError) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if let Some(e) = self.remove(i) {
                self.answer_entry(e, Outcome::Failed(error.clone()), now);
            }
        }
    }

    /// Answers cancelled entries `Cancelled` and expired ones `TimedOut`, removing them.
    /// Returns how many left.
    pub fn prune(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for i in 0..self.slots.len() {
            let outcome = match &self.slots[i] {
                Some(e) if e.is_cancelled() => Outcome::Cancelled,
                Some(e) if e.is_expired(now) => Outcome::TimedOut,
                _ => continue,
            };
            if let Some(e) = self.remove(i) {
                self.answer_entry(e, outcome, now);
                n += 1;
            }
        }
        n
    }

    /// Removes every active entry without answering it (to retry it elsewhere). The caller
    /// owns the entries' answers from here on.
    pub fn take_unfinished(&mut self) -> Vec<Entry<I, O, X>> {
        let mut out = Vec::with_capacity(self.active);
        for i in 0..self.slots.len() {
            if let Some(e) = self.remove(i) {
                out.push(e);
            }
        }
        out
    }

    /// Takes more entries from this batch's lane, up to the limits, between executor steps.
    /// Returns how many joined; their slots are in [`joined`](Self::joined). Takes nothing when
    /// the batch has no lane or its lane is paused (its GPU is failing over).
    pub fn refill(&mut self) -> usize {
        self.joined.clear();
        if let Some(obs) = &self.observer {
            obs.step(self.lane);
        }
        let Some(lane) = self.source.take() else {
            return 0;
        };
        let n = if lane.is_paused() {
            0
        } else {
            self.fill_from(&lane, Instant::now())
        };
        self.source = Some(lane);
        n
    }

    /// Takes entries from `lane` until the batch is full, its token budget is reached or the lane
    /// is empty. Cancelled and expired entries met on the way are answered and skipped (never
    /// executed). An entry that would exceed the token budget is handed back to the lane's front
    /// (unless the batch is empty: an entry alone always fits). Returns how many joined.
    pub fn fill_from(&mut self, lane: &Lane<Entry<I, O, X>>, now: Instant) -> usize {
        let max_size = self.limits.max_batch_size();
        let budget = self.limits.max_batch_tokens();
        let mut added = 0;
        self.budget_stop = false;
        'outer: while self.active < max_size && self.tokens < budget {
            let mut claim = lane.claim(max_size - self.active);
            if claim.remaining() == 0 {
                break;
            }
            while let Some(e) = claim.next() {
                if e.is_cancelled() {
                    self.answer_entry(e, Outcome::Cancelled, now);
                    continue;
                }
                if e.is_expired(now) {
                    self.answer_entry(e, Outcome::TimedOut, now);
                    continue;
                }
                if self.active > 0 && self.tokens.saturating_add(e.tokens()) > budget {
                    // Over budget: hand it back to the front queue, and the rest of the claim too
                    // (dropping the claim republishes the unpopped ones).
                    // A closed lane is drained by its closer (or by us later), so the push result
                    // needs no action here.
                    let _ = lane.push_front(e);
                    drop(claim);
                    self.budget_stop = true;
                    break 'outer;
                }
                self.push(e, now);
                added += 1;
            }
        }
        added
    }

    /// Whether the last [`fill_from`](Self::fill_from) stopped because the lane's next entry
    /// would exceed the token budget (it is back at the lane's front): more items arriving
    /// cannot join this batch until it runs.
    pub(crate) fn stopped_by_budget(&self) -> bool {
        self.budget_stop
    }

    /// Marks every active entry as "joined", so an executor's first look at
    /// [`joined`](Self::joined) lists the whole batch.
    pub(crate) fn refill_reset(&mut self) {
        self.joined.clear();
        let slots = &self.slots;
        self.joined
            .extend((0..slots.len()).filter(|&i| slots[i].is_some()));
    }

    fn remove(&mut self, i: usize) -> Option<Entry<I, O, X>> {
        let e = self.slots.get_mut(i)?.take()?;
        self.active -= 1;
        self.tokens = self.tokens.saturating_sub(e.tokens());
        self.free.push(i);
        Some(e)
    }

    fn answer_entry(&mut self, mut e: Entry<I, O, X>, outcome: Outcome<O>, now: Instant) {
        if !e.is_unanswered() {
            return;
        }
        // The observer runs before the answer is sent, so whatever it records (metrics,
        // counters) happens-before the caller sees the outcome.
        if let Some(obs) = &self.observer {
            obs.answered(&Answer {
                lane: self.lane,
                kind: outcome.kind(),
                tokens: e.tokens(),
                enqueued: e.enqueued_at(),
                started: e.started_at(),
                answered: now,
            });
        }
        self.answered += 1;
        e.answer(outcome);
    }
}

impl<I, O, X> fmt::Debug for Batch<I, O, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("lane", &self.lane)
            .field("active", &self.active)
            .field("tokens", &self.tokens)
            .field("answered", &self.answered)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
