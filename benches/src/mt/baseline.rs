//! The "before": the original lock-based design of every component, written the straightforward
//! way (std `Mutex`/`RwLock` around a `VecDeque`, an array, a histogram and a logger).

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytemuck::{Pod, Zeroable};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::GPUS;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request as the benchmark passes it around.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Request id.
    pub id: u64,
    /// Prompt tokens (the load cost).
    pub tokens: u32,
    /// The GPU it was routed to.
    pub gpu: u32,
    /// When it was submitted.
    pub submitted: Instant,
}

/// Health state values stored in [`HealthRecord::state`].
pub const HEALTHY: u64 = 0;

/// One GPU's health record (plain old data, so the freelane side can keep it in a `SeqLock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Pod, Zeroable)]
#[repr(C)]
pub struct HealthRecord {
    /// State machine value (0 = healthy).
    pub state: u64,
    /// Smoothed step latency in ns.
    pub ewma_ns: u64,
    /// Consecutive errors.
    pub errors: u64,
    /// Generation of the last update (the writer's counter).
    pub generation: u64,
}

impl HealthRecord {
    /// The record the writer thread stores for generation `g` (healthy, varying numbers).
    pub fn for_generation(g: u64) -> Self {
        Self {
            state: HEALTHY,
            ewma_ns: 1_000 + g % 977,
            errors: 0,
            generation: g,
        }
    }

    /// Whether every word belongs to the same generation (a torn read would mix two).
    pub fn is_consistent(&self) -> bool {
        *self == Self::for_generation(self.generation)
    }
}

/// `Mutex<VecDeque<T>>` hand-off queue.
#[derive(Debug)]
pub struct LockedQueue<T> {
    inner: Mutex<VecDeque<T>>,
}

impl<T> Default for LockedQueue<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(VecDeque::new()),
        }
    }
}

impl<T> LockedQueue<T> {
    /// Appends at the tail.
    pub fn push(&self, value: T) {
        lock(&self.inner).push_back(value);
    }
    /// Removes from the head.
    pub fn pop(&self) -> Option<T> {
        lock(&self.inner).pop_front()
    }
    /// Moves up to `max` items into `out`; returns how many.
    pub fn drain_into(&self, max: usize, out: &mut Vec<T>) -> usize {
        let mut q = lock(&self.inner);
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        n
    }
}

/// `Mutex<[u64; GPUS]>` load board: pick-least + acquire under one lock, release under another.
#[derive(Debug, Default)]
pub struct LockedBoard {
    load: Mutex<[u64; GPUS]>,
}

impl LockedBoard {
    /// Picks the least-loaded eligible GPU and adds `cost` to it, atomically under the lock.
    pub fn pick_and_acquire(&self, eligible: impl Fn(usize) -> bool, cost: u64) -> Option<usize> {
        let mut load = lock(&self.load);
        let g = (0..GPUS)
            .filter(|&g| eligible(g))
            .min_by_key(|&g| load[g])?;
        load[g] += cost;
        Some(g)
    }
    /// Releases `cost` from `gpu`.
    pub fn release(&self, gpu: usize, cost: u64) {
        let mut load = lock(&self.load);
        load[gpu] = load[gpu].saturating_sub(cost);
    }
    /// Current load of every GPU.
    pub fn loads(&self) -> [u64; GPUS] {
        *lock(&self.load)
    }
}

/// The health table behind one `RwLock`.
#[derive(Debug)]
pub struct LockedHealth {
    table: RwLock<[HealthRecord; GPUS]>,
}

impl Default for LockedHealth {
    fn default() -> Self {
        Self {
            table: RwLock::new([HealthRecord::for_generation(0); GPUS]),
        }
    }
}

impl LockedHealth {
    /// Copies one GPU's record.
    pub fn read(&self, gpu: usize) -> HealthRecord {
        self.table.read().unwrap_or_else(|e| e.into_inner())[gpu]
    }
    /// Replaces one GPU's record.
    pub fn write(&self, gpu: usize, record: HealthRecord) {
        self.table.write().unwrap_or_else(|e| e.into_inner())[gpu] = record;
    }
    /// Changes one GPU's record in place under the write lock.
    pub fn update(&self, gpu: usize, f: impl FnOnce(&mut HealthRecord)) {
        f(&mut self.table.write().unwrap_or_else(|e| e.into_inner())[gpu]);
    }
    /// Which GPUs are usable (one read lock).
    pub fn usable(&self) -> [bool; GPUS] {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        std::array::from_fn(|g| t[g].state == HEALTHY)
    }
}

/// Sub-buckets per power of two in [`LogLinearHistogram`] (relative error below 1/16).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A plain log-linear histogram (16 linear sub-buckets per power of two), single-threaded.
#[derive(Clone)]
pub struct LogLinearHistogram {
    counts: Box<[u64; BUCKETS]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl fmt::Debug for LogLinearHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLinearHistogram")
            .field("count", &self.count)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for LogLinearHistogram {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl LogLinearHistogram {
    /// The bucket of `v`: values below 16 exactly, above that 16 buckets per power of two.
    pub fn bucket(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        let sub = ((v >> shift) as usize) & (SUB - 1);
        (shift as usize + 1) * SUB + sub
    }

    /// The smallest value that falls in bucket `b`.
    pub fn bucket_low(b: usize) -> u64 {
        if b < SUB {
            return b as u64;
        }
        let shift = (b / SUB - 1) as u32;
        ((SUB + b % SUB) as u64) << shift
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The lower bound of the bucket holding the `q`-quantile (0 when empty).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::bucket_low(b).max(self.min).min(self.max);
            }
        }
        self.max
    }
}

/// `Mutex<LogLinearHistogram>`.
#[derive(Debug, Default)]
pub struct LockedHistogram {
    inner: Mutex<LogLinearHistogram>,
}

impl LockedHistogram {
    /// Records one value under the lock.
    pub fn record(&self, v: u64) {
        lock(&self.inner).record(v);
    }
    /// A copy of the histogram.
    pub fn snapshot(&self) -> LogLinearHistogram {
        lock(&self.inner).clone()
    }
}

struct LoggerInner<W> {
    line: Vec<u8>,
    out: W,
    lines: u64,
}

/// A logger behind a lock: a `tracing` layer that formats each event as a JSON line and writes it
/// to `W`, all while holding one mutex.
pub struct LockedJsonLayer<W> {
    inner: Mutex<LoggerInner<W>>,
}

impl<W> fmt::Debug for LockedJsonLayer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedJsonLayer")
            .field("lines", &lock(&self.inner).lines)
            .finish_non_exhaustive()
    }
}

impl<W: Write> LockedJsonLayer<W> {
    /// A logger writing to `out`.
    pub fn new(out: W) -> Self {
        Self {
            inner: Mutex::new(LoggerInner {
                line: Vec::with_capacity(256),
                out,
                lines: 0,
            }),
        }
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        lock(&self.inner).lines
    }
}

fn json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

struct JsonFields<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        json_str(self.buf, field.name());
        self.buf.push(b':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.buf, "{value}");
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.buf, "{value}");
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.buf, "{value}");
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_str(self.buf, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        json_str(self.buf, &format!("{value:?}"));
    }
}

impl<S: Subscriber, W: Write + Send + 'static> Layer<S> for LockedJsonLayer<W> {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let meta = event.metadata();
        let mut guard = lock(&self.inner);
        let LoggerInner { line, out, lines } = &mut *guard;
        line.clear();
        let _ = write!(
            line,
            "{{\"ts\":{ts},\"level\":\"{}\",\"target\":",
            meta.level()
        );
        json_str(line, meta.target());
        line.extend_from_slice(b",\"fields\":{");
        event.record(&mut JsonFields {
            buf: line,
            first: true,
        });
        line.extend_from_slice(b"}}\n");
        if out.write_all(line).is_ok() {
            *lines += 1;
        }
    }
}

/// Requests one mutex-coordinator lane holds at most (the freelane coordinator's default
/// `max_queue` of 4096 split over the lanes).
pub const LANE_CAPACITY: usize = 4096 / GPUS;

/// A request queued in the [`MutexCoordinator`].
#[derive(Debug)]
pub struct QueuedRequest {
    /// Request id (also the result it is answered with).
    pub id: u64,
    /// Load cost.
    pub tokens: u64,
    /// When it was admitted.
    pub enqueued: Instant,
    /// When it joined a batch.
    pub started: Option<Instant>,
    answer: tokio::sync::oneshot::Sender<u64>,
}

/// A batch taken from the [`MutexCoordinator`].
#[derive(Debug)]
pub struct MutexBatch {
    /// The GPU (lane) that runs it.
    pub gpu: usize,
    /// When it was formed.
    pub formed: Instant,
    /// Its requests.
    pub requests: Vec<QueuedRequest>,
}

#[derive(Debug, Default)]
struct CoordinatorMetrics {
    queue_time: LogLinearHistogram,
    exec_time: LogLinearHistogram,
    end_to_end: LogLinearHistogram,
    batch_size: LogLinearHistogram,
    batch_time: LogLinearHistogram,
    accepted: u64,
    completed: u64,
}

/// The mutex coordinator of the original design, doing the same work per request as the freelane
/// `Coordinator` in manual mode: a `Mutex<VecDeque>` per lane with a capacity, a
/// `Mutex<[u64; GPUS]>` load board (pick + acquire under one lock, release under another, a
/// stolen request's load moved), an `RwLock`'d health table (usable check on submit and take,
/// EWMA update per batch), one mutex around all metrics (accepted count, queue / exec /
/// end-to-end histograms per request, batch size / time per batch), a oneshot answer per request
/// (the same tokio oneshot as freelane's `Handle`), and one `tracing` debug event per batch
/// (to whatever dispatcher the calling thread has: a [`LockedJsonLayer`] in the benchmark).
#[derive(Debug, Default)]
pub struct MutexCoordinator {
    lanes: [Mutex<VecDeque<QueuedRequest>>; GPUS],
    load: LockedBoard,
    health: LockedHealth,
    metrics: Mutex<CoordinatorMetrics>,
}

impl MutexCoordinator {
    /// Admits a request: routes it to the least-loaded usable GPU, reserves its load and queues
    /// it. `None` when no GPU is usable or the lane is full.
    pub fn submit(&self, id: u64, tokens: u64) -> Option<tokio::sync::oneshot::Receiver<u64>> {
        let usable = self.health.usable();
        let g = self.load.pick_and_acquire(|g| usable[g], tokens)?;
        let (answer, rx) = tokio::sync::oneshot::channel();
        {
            let mut lane = lock(&self.lanes[g]);
            if lane.len() >= LANE_CAPACITY {
                drop(lane);
                self.load.release(g, tokens);
                return None;
            }
            lane.push_back(QueuedRequest {
                id,
                tokens,
                enqueued: Instant::now(),
                started: None,
                answer,
            });
        }
        lock(&self.metrics).accepted += 1;
        Some(rx)
    }

    /// Takes up to `max` queued requests for `gpu`: from its own lane, else from the first
    /// non-empty other lane (moving their load to `gpu`). `None` when there is nothing to do.
    pub fn try_next_batch(&self, gpu: usize, max: usize) -> Option<MutexBatch> {
        if !self.health.usable()[gpu] {
            return None;
        }
        let now = Instant::now();
        for i in 0..GPUS {
            let from = (gpu + i) % GPUS;
            let mut requests: Vec<QueuedRequest> = {
                let mut lane = lock(&self.lanes[from]);
                let n = lane.len().min(max);
                lane.drain(..n).collect()
            };
            if requests.is_empty() {
                continue;
            }
            for r in &mut requests {
                r.started = Some(now);
                if from != gpu {
                    self.load.release(from, r.tokens);
                    let _ = self.load.pick_and_acquire(|g| g == gpu, r.tokens);
                }
            }
            return Some(MutexBatch {
                gpu,
                formed: now,
                requests,
            });
        }
        None
    }

    /// "Executes" `batch` in zero time and completes it: answers every request (recording its
    /// queue, exec and end-to-end times), releases its load, records the batch, updates the GPU's
    /// health and logs one event.
    pub fn execute_and_complete(&self, batch: MutexBatch) {
        let size = batch.requests.len();
        let now = Instant::now();
        for r in batch.requests {
            let _ = r.answer.send(r.id);
            self.load.release(batch.gpu, r.tokens);
            let ns = |a: Instant, b: Instant| b.saturating_duration_since(a).as_nanos() as u64;
            let started = r.started.unwrap_or(now);
            let mut m = lock(&self.metrics);
            m.end_to_end.record(ns(r.enqueued, now));
            m.queue_time.record(ns(r.enqueued, started));
            m.exec_time.record(ns(started, now));
            m.completed += 1;
        }
        let elapsed = batch.formed.elapsed();
        let exec_ns = elapsed.as_nanos() as u64;
        {
            let mut m = lock(&self.metrics);
            m.batch_size.record(size as u64);
            m.batch_time.record(exec_ns);
        }
        self.health.update(batch.gpu, |r| {
            r.ewma_ns = if r.ewma_ns == 0 {
                exec_ns
            } else {
                r.ewma_ns - r.ewma_ns / 8 + exec_ns / 8
            };
        });
        tracing::debug!(
            gpu = batch.gpu,
            size,
            exec_us = elapsed.as_micros() as u64,
            "batch completed"
        );
    }

    /// Current load of every GPU.
    pub fn loads(&self) -> [u64; GPUS] {
        self.load.loads()
    }

    /// Requests (accepted, completed) so far.
    pub fn counts(&self) -> (u64, u64) {
        let m = lock(&self.metrics);
        (m.accepted, m.completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_monotone_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let b = LogLinearHistogram::bucket(v);
            assert!(b >= last && b < BUCKETS, "v={v} b={b}");
            last = b;
            let low = LogLinearHistogram::bucket_low(b);
            assert!(
                low <= v && (v - low) as f64 <= v as f64 / 16.0,
                "v={v} low={low}"
            );
        }
    }

    #[test]
    fn histogram_quantiles_within_bucket_error() {
        let mut h = LogLinearHistogram::default();
        for v in 1..=10_000 {
            h.record(v);
        }
        assert_eq!(h.count(), 10_000);
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000.0).abs() / 5_000.0 < 0.07, "{p50}");
        let top = h.quantile(1.0);
        assert!((10_000 - 10_000 / 16..=10_000).contains(&top), "{top}");
        assert_eq!(LogLinearHistogram::default().quantile(0.5), 0);
    }

    #[derive(Clone, Default)]
    struct SharedBuf(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn locked_logger_writes_one_json_line_per_event() {
        use tracing_subscriber::layer::SubscriberExt;
        let buf = SharedBuf::default();
        let sub = tracing_subscriber::registry().with(LockedJsonLayer::new(buf.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(request = 7u64, name = "a\"b", "done");
            tracing::warn!(ok = true, "second");
        });
        let out = lock(&buf.0).clone();
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["fields"]["request"], 7);
        assert_eq!(lines[0]["fields"]["name"], "a\"b");
        assert_eq!(lines[0]["fields"]["message"], "done");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[1]["fields"]["ok"], true);
    }

    #[test]
    fn mutex_coordinator_answers_everything_and_releases_load() {
        let c = MutexCoordinator::default();
        let mut answers: Vec<_> = (0..100)
            .map(|id| c.submit(id, 3).expect("admitted"))
            .collect();
        assert_eq!(c.loads().iter().sum::<u64>(), 300);
        while let Some(b) = c.try_next_batch(1, 8) {
            assert!(b.requests.len() <= 8);
            c.execute_and_complete(b);
        }
        assert_eq!(c.loads(), [0; GPUS]);
        assert_eq!(c.counts(), (100, 100));
        for (id, rx) in answers.iter_mut().enumerate() {
            assert_eq!(rx.try_recv(), Ok(id as u64));
        }
    }

    #[test]
    fn mutex_coordinator_rejects_when_a_lane_is_full() {
        let c = MutexCoordinator::default();
        let held: Vec<_> = (0..(LANE_CAPACITY * GPUS) as u64)
            .map(|id| c.submit(id, 1).expect("room"))
            .collect();
        assert!(c.submit(u64::MAX, 1).is_none());
        assert_eq!(c.loads().iter().sum::<u64>(), held.len() as u64);
    }
}
