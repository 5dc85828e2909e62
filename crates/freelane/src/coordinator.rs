//! The multi-GPU [`Coordinator`]: admission, GPU choice, one worker per GPU, health, failover,
//! work stealing and graceful shutdown.
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use freelane_batch::{
    Answer, BatchConfig, Batcher, ErrorKind, ExecError, Full, Handle, Lane, Next, Observer,
    Outcome, OutcomeKind, Pushed, Request,
};
use freelane_health::{GpuState, HealthConfig, HealthTable, Transition};
use freelane_load::{GpuId, LoadBoard, LoadGuard, Policy};
use freelane_metrics::{Counter, Histogram, HistogramOpts, Registry};
use freelane_sync::CachePadded;
use futures_util::FutureExt;

use crate::config::{ConfigError, CoordinatorConfig, Rejected, MAX_GPUS};
use crate::executor::Executor;

/// The per-request value the coordinator keeps in each [`Entry`]: the GPU load reservation,
/// released when the entry is answered (or moved when the entry moves to another GPU).
#[derive(Default)]
pub struct Ticket {
    guard: Option<LoadGuard>,
    /// The GPU whose failed batch this request was in (set when it is retried elsewhere), so
    /// that work stealing does not hand the retry back to that GPU.
    failed_on: Option<GpuId>,
}

impl Ticket {
    /// The GPU whose load this request is counted on.
    pub fn gpu(&self) -> Option<GpuId> {
        self.guard.as_ref().map(LoadGuard::gpu)
    }

    /// The GPU this request already failed on (it is being retried elsewhere), if any.
    pub fn failed_on(&self) -> Option<GpuId> {
        self.failed_on
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("gpu", &self.gpu())
            .field("failed_on", &self.failed_on)
            .finish()
    }
}

/// A batch as executors see it (see [`freelane_batch::Batch`]).
pub type Batch<I, O> = freelane_batch::Batch<I, O, Ticket>;
/// A request in flight as executors see it (see [`freelane_batch::Entry`]).
pub type Entry<I, O> = freelane_batch::Entry<I, O, Ticket>;

type LaneOf<E> = Lane<Entry<<E as Executor>::Input, <E as Executor>::Output>>;
type BatchOf<E> = Batch<<E as Executor>::Input, <E as Executor>::Output>;
type EntryOf<E> = Entry<<E as Executor>::Input, <E as Executor>::Output>;

/// A request [`Coordinator::try_submit`] refused, given back with the reason.
pub struct Refused<I> {
    /// Why it was refused.
    pub reason: Rejected,
    /// The request, unchanged except that a configured default deadline may have been set.
    pub request: Request<I>,
}

impl<I> Refused<I> {
    /// The request.
    pub fn into_inner(self) -> Request<I> {
        self.request
    }
}

impl<I> fmt::Debug for Refused<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<I> fmt::Display for Refused<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.reason, f)
    }
}

impl<I> std::error::Error for Refused<I> {}

/// Per-GPU counters (statistics and hints; all Relaxed).
#[derive(Default)]
struct GpuCounters {
    batches: AtomicU64,
    failed_batches: AtomicU64,
    requests: AtomicU64,
    stolen_batches: AtomicU64,
    retried: AtomicU64,
    moved_out: AtomicU64,
    exec_ewma_ns: AtomicU64,
    last_heartbeat_ns: AtomicU64,
    busy: AtomicBool,
}

/// One GPU's line in [`Stats`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct GpuSnapshot {
    /// The GPU.
    pub gpu: GpuId,
    /// Its health state.
    pub state: GpuState,
    /// Requests queued on its lane (not yet in a batch).
    pub queued: usize,
    /// Requests counted on its load (queued + running).
    pub in_flight: u64,
    /// Their summed token cost.
    pub load_cost: u64,
    /// `true` while its executor runs a batch.
    pub busy: bool,
    /// Batches run.
    pub batches: u64,
    /// Batches that failed (executor error, panic, timeout).
    pub failed_batches: u64,
    /// Requests that were part of a batch run here (at formation).
    pub requests: u64,
    /// Batches this GPU took from another lane (work stealing).
    pub stolen_batches: u64,
    /// Requests of failed batches retried elsewhere.
    pub retried: u64,
    /// Queued requests moved away from this lane by failover.
    pub moved_out: u64,
    /// Smoothed batch execution time.
    pub batch_time: Duration,
}

/// A snapshot for `/stats`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// One line per GPU.
    pub gpus: Vec<GpuSnapshot>,
    /// Requests accepted by `submit`.
    pub accepted: u64,
    /// Requests refused by `submit` (any reason).
    pub rejected: u64,
    /// Answers by kind.
    pub completed: u64,
    /// Answered `TimedOut`.
    pub timed_out: u64,
    /// Answered `Cancelled`.
    pub cancelled: u64,
    /// Answered `Failed`.
    pub failed: u64,
    /// `true` once shutdown began.
    pub shutting_down: bool,
}

/// The coordinator's metrics, registered in its [`Registry`] (render with
/// [`Registry::render_prometheus`] for `/metrics`). Latencies are recorded in nanoseconds and
/// exposed in seconds.
pub struct Metrics {
    registry: Arc<Registry>,
    /// Arrival to first batch (per request).
    pub queue_time: Arc<Histogram>,
    /// First batch to answer (per request).
    pub exec_time: Arc<Histogram>,
    /// Arrival to answer (per request).
    pub end_to_end: Arc<Histogram>,
    /// Requests per batch at formation.
    pub batch_size: Arc<Histogram>,
    /// Wall time of one executor run.
    pub batch_time: Arc<Histogram>,
    outcomes: [Arc<Counter>; 4],
    accepted: Arc<Counter>,
    rejected: [Arc<Counter>; 4],
}

impl Metrics {
    fn new(registry: Arc<Registry>) -> Self {
        let secs = HistogramOpts::nanos_as_seconds;
        let r = &registry;
        let outcome = |o: &str| {
            r.counter(
                "freelane_requests_answered_total",
                "Requests answered, by outcome.",
                &[("outcome", o)],
            )
        };
        let rejected = |why: &str| {
            r.counter(
                "freelane_requests_rejected_total",
                "Requests refused at admission, by reason.",
                &[("reason", why)],
            )
        };
        Self {
            queue_time: r.histogram_with(
                "freelane_queue_seconds",
                "Time from arrival to joining a batch.",
                &[],
                secs(),
            ),
            exec_time: r.histogram_with(
                "freelane_exec_seconds",
                "Time from joining a batch to the answer.",
                &[],
                secs(),
            ),
            end_to_end: r.histogram_with(
                "freelane_request_seconds",
                "Time from arrival to the answer.",
                &[],
                secs(),
            ),
            batch_size: r.histogram(
                "freelane_batch_size",
                "Requests per batch at formation.",
                &[],
            ),
            batch_time: r.histogram_with(
                "freelane_batch_seconds",
                "Wall time of one executor run.",
                &[],
                secs(),
            ),
            outcomes: [
                outcome("completed"),
                outcome("timed_out"),
                outcome("cancelled"),
                outcome("failed"),
            ],
            accepted: r.counter(
                "freelane_requests_accepted_total",
                "Requests accepted at admission.",
                &[],
            ),
            rejected: [
                rejected("overloaded"),
                rejected("unavailable"),
                rejected("shutting_down"),
                rejected("too_large"),
            ],
            registry,
        }
    }

    /// The registry holding these metrics.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Requests answered with `kind`.
    pub fn answered(&self, kind: OutcomeKind) -> u64 {
        self.outcomes[outcome_index(kind)].get()
    }

    /// Requests accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.get()
    }

    /// Requests rejected (all reasons).
    pub fn rejected(&self) -> u64 {
        self.rejected.iter().map(|c| c.get()).sum()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("accepted", &self.accepted())
            .field("rejected", &self.rejected())
            .finish_non_exhaustive()
    }
}

fn outcome_index(kind: OutcomeKind) -> usize {
    match kind {
        OutcomeKind::Completed => 0,
        OutcomeKind::TimedOut => 1,
        OutcomeKind::Cancelled => 2,
        OutcomeKind::Failed => 3,
    }
}

fn reject_index(r: &Rejected) -> usize {
    match r {
        Rejected::Overloaded { .. } => 0,
        Rejected::Unavailable => 1,
        Rejected::ShuttingDown => 2,
        _ => 3,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Builder for [`Coordinator`] (by-value setters; [`build`](Self::build) validates and starts
/// the workers, [`build_manual`](Self::build_manual) starts none).
pub struct CoordinatorBuilder<E> {
    executor: E,
    gpus: usize,
    policy: Policy,
    batch: BatchConfig,
    max_queue: usize,
    request_timeout: Option<Duration>,
    exec_timeout: Option<Duration>,
    health: HealthConfig,
    retry_on_failure: bool,
    work_stealing: bool,
    idle_interval: Duration,
    registry: Option<Arc<Registry>>,
}

impl<E> fmt::Debug for CoordinatorBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinatorBuilder")
            .field("gpus", &self.gpus)
            .field("policy", &self.policy)
            .field("batch", &self.batch)
            .field("max_queue", &self.max_queue)
            .field("request_timeout", &self.request_timeout)
            .field("exec_timeout", &self.exec_timeout)
            .field("retry_on_failure", &self.retry_on_failure)
            .field("work_stealing", &self.work_stealing)
            .field("idle_interval", &self.idle_interval)
            .finish_non_exhaustive()
    }
}

impl<E: Executor> CoordinatorBuilder<E> {
    /// Number of GPUs (lanes, workers). Default 1.
    pub fn gpus(mut self, n: usize) -> Self {
        self.gpus = n;
        self
    }
    /// How `submit` picks a GPU among the usable ones. Default least-loaded.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// Batch limits (size, token budget, max wait). Default [`BatchConfig::default`].
    pub fn batch(mut self, batch: BatchConfig) -> Self {
        self.batch = batch;
        self
    }
    /// Most queued requests over all lanes (each lane holds `ceil(max_queue / gpus)`); beyond it
    /// `submit` answers [`Rejected::Overloaded`]. Default 4096.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }
    /// Deadline given to requests that carry none. Default none.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Abandon an executor run after this long (counted as a failure). Default none.
    pub fn exec_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.exec_timeout = timeout;
        self
    }
    /// Health thresholds (failures, heartbeat timeout, recovery).
    pub fn health(mut self, health: HealthConfig) -> Self {
        self.health = health;
        self
    }
    /// Retry the requests of a failed batch once on another usable GPU (`true`, the default),
    /// or answer them `Failed` at once (`false`).
    pub fn retry_on_failure(mut self, retry: bool) -> Self {
        self.retry_on_failure = retry;
        self
    }
    /// Let idle lanes take work from the longest lane. Default on.
    pub fn work_stealing(mut self, on: bool) -> Self {
        self.work_stealing = on;
        self
    }
    /// How often an idle worker wakes to look for work to steal (and to heartbeat).
    /// Default 5 ms.
    pub fn idle_interval(mut self, interval: Duration) -> Self {
        self.idle_interval = interval;
        self
    }
    /// Registers the metrics in `registry` (e.g. the server's) instead of a new one.
    pub fn registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    fn validate(&self) -> Result<CoordinatorConfig, ConfigError> {
        if self.gpus == 0 {
            return Err(ConfigError::NoGpus);
        }
        if self.gpus > MAX_GPUS {
            return Err(ConfigError::TooManyGpus(self.gpus));
        }
        if self.max_queue == 0 {
            return Err(ConfigError::ZeroQueue);
        }
        if self.request_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroRequestTimeout);
        }
        if self.exec_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroExecTimeout);
        }
        if self.idle_interval.is_zero() {
            return Err(ConfigError::ZeroIdleInterval);
        }
        Ok(CoordinatorConfig {
            gpus: self.gpus,
            policy: self.policy,
            batch: self.batch,
            max_queue: self.max_queue,
            request_timeout: self.request_timeout,
            exec_timeout: self.exec_timeout,
            health: self.health.clone(),
            retry_on_failure: self.retry_on_failure,
            work_stealing: self.work_stealing,
            idle_interval: self.idle_interval,
        })
    }

    /// Validates the settings and starts one worker task per GPU plus the health monitor on the
    /// current tokio runtime ([`ConfigError::NoRuntime`] outside one).
    pub fn build(self) -> Result<Coordinator<E>, ConfigError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let c = self.build_manual()?;
        c.start_on(&rt);
        Ok(c)
    }

    /// Validates the settings and builds a coordinator *without* workers or monitor, to be
    /// driven by the caller on plain threads: [`Coordinator::try_next_batch`], run the batch,
    /// [`Coordinator::complete`]. No async runtime is needed.
    pub fn build_manual(self) -> Result<Coordinator<E>, ConfigError> {
        let config = self.validate()?;
        let n = config.gpus;
        let cap = config.lane_capacity();
        let lanes: Box<[Arc<LaneOf<E>>]> =
            (0..n).map(|_| Arc::new(Lane::with_capacity(cap))).collect();
        let counters: Arc<[CachePadded<GpuCounters>]> = (0..n)
            .map(|_| CachePadded::new(GpuCounters::default()))
            .collect();
        let registry = self.registry.unwrap_or_else(|| Arc::new(Registry::new()));
        let metrics = Metrics::new(Arc::clone(&registry));
        let board = Arc::new(LoadBoard::new(n));
        let health = Arc::new(HealthTable::new(n, config.health.clone()));
        register_gauges::<E>(&registry, &lanes, &board, &health, &counters);
        let rec = Arc::new(Recorder {
            metrics,
            health: Arc::clone(&health),
            counters: Arc::clone(&counters),
            epoch: Instant::now(),
            hb_interval_ns: nanos(config.heartbeat_interval()),
        });
        let observers: Box<[Arc<dyn Observer>]> = (0..n)
            .map(|_| {
                Arc::new(GpuObserver {
                    rec: Arc::clone(&rec),
                }) as Arc<dyn Observer>
            })
            .collect();
        let drained = Mutex::new(Drained {
            all: false,
            lanes: vec![false; lanes.len()].into_boxed_slice(),
        });
        let inner = Arc::new(Inner {
            executor: self.executor,
            config,
            lanes,
            board,
            health,
            counters,
            rec,
            observers,
            shutting_down: AtomicBool::new(false),
            drained,
            idle_mask: AtomicU64::new(0),
            stop: tokio::sync::Notify::new(),
        });
        Ok(Coordinator {
            inner,
            tasks: tokio::sync::Mutex::new(Vec::new()),
        })
    }
}

fn register_gauges<E: Executor>(
    registry: &Registry,
    lanes: &[Arc<LaneOf<E>>],
    board: &Arc<LoadBoard>,
    health: &Arc<HealthTable>,
    counters: &Arc<[CachePadded<GpuCounters>]>,
) {
    for (g, lane) in lanes.iter().enumerate() {
        let label = g.to_string();
        let labels: &[(&str, &str)] = &[("gpu", &label)];
        let weak: Weak<LaneOf<E>> = Arc::downgrade(lane);
        // Registration errors (a second coordinator on the same registry) only lose the gauge.
        let _ = registry.gauge_fn(
            "freelane_gpu_queued",
            "Requests queued on the gpu's lane.",
            labels,
            move || weak.upgrade().map_or(0.0, |l| l.len() as f64),
        );
        let b = Arc::downgrade(board);
        let gpu = GpuId(g as u32);
        let _ = registry.gauge_fn(
            "freelane_gpu_in_flight",
            "Requests counted on the gpu's load (queued + running).",
            labels,
            move || b.upgrade().map_or(0.0, |b| b.in_flight(gpu) as f64),
        );
        let h = Arc::downgrade(health);
        let _ = registry.gauge_fn(
            "freelane_gpu_usable",
            "1 when the gpu may take requests, 0 when it is unhealthy.",
            labels,
            move || {
                h.upgrade()
                    .map_or(0.0, |h| if h.is_usable(gpu) { 1.0 } else { 0.0 })
            },
        );
        let c = Arc::downgrade(counters);
        let _ = registry.counter_fn(
            "freelane_gpu_batches_total",
            "Batches run on the gpu.",
            labels,
            move || {
                // Relaxed: a statistic.
                c.upgrade()
                    .map_or(0.0, |c| c[g].batches.load(Ordering::Relaxed) as f64)
            },
        );
        let c = Arc::downgrade(counters);
        let _ = registry.counter_fn(
            "freelane_gpu_failed_batches_total",
            "Batches that failed on the gpu.",
            labels,
            move || {
                // Relaxed: a statistic.
                c.upgrade()
                    .map_or(0.0, |c| c[g].failed_batches.load(Ordering::Relaxed) as f64)
            },
        );
    }
}

struct Inner<E: Executor> {
    executor: E,
    config: CoordinatorConfig,
    lanes: Box<[Arc<LaneOf<E>>]>,
    board: Arc<LoadBoard>,
    health: Arc<HealthTable>,
    counters: Arc<[CachePadded<GpuCounters>]>,
    rec: Arc<Recorder>,
    /// One observer per GPU (separate allocations), so that cloning it for a batch touches a
    /// per-GPU reference count instead of one shared by every thread.
    observers: Box<[Arc<dyn Observer>]>,
    shutting_down: AtomicBool,
    /// Which closed lanes nobody will drain any more: all of them once the final sweep begins,
    /// lane g once worker g has stopped. A push that finds such a lane closed answers what it
    /// pushed itself; otherwise the lane's worker or the final sweep will (see
    /// `pushed_to_closed`).
    drained: Mutex<Drained>,
    /// Bit g set while worker g (< 64) waits for work: a hint for backlog nudges.
    idle_mask: AtomicU64,
    stop: tokio::sync::Notify,
}

/// Closed lanes that no worker drains any more (see `Inner::drained`).
struct Drained {
    /// The final sweep has begun.
    all: bool,
    /// Worker g has stopped.
    lanes: Box<[bool]>,
}

/// What every answer and every batch step reports to: metrics, heartbeats.
struct Recorder {
    metrics: Metrics,
    health: Arc<HealthTable>,
    counters: Arc<[CachePadded<GpuCounters>]>,
    epoch: Instant,
    hb_interval_ns: u64,
}

impl Recorder {
    fn record(&self, a: &Answer) {
        let m = &self.metrics;
        m.outcomes[outcome_index(a.kind)].inc();
        m.end_to_end
            .record(nanos(a.answered.saturating_duration_since(a.enqueued)));
        if let Some(s) = a.started {
            m.queue_time
                .record(nanos(s.saturating_duration_since(a.enqueued)));
            m.exec_time
                .record(nanos(a.answered.saturating_duration_since(s)));
        }
    }

    /// Sends `g`'s heartbeat if the last one is older than the interval; returns the transition
    /// it caused, if any.
    fn heartbeat_if_due(&self, g: usize, now: Instant) -> Option<Transition> {
        let now_ns = nanos(now.saturating_duration_since(self.epoch));
        let c = &self.counters[g];
        // Relaxed: rate limiting only; the health table orders the heartbeat itself.
        let last = c.last_heartbeat_ns.load(Ordering::Relaxed);
        if now_ns.saturating_sub(last) < self.hb_interval_ns {
            return None;
        }
        // Relaxed: as above; the winner of the CAS sends the heartbeat.
        c.last_heartbeat_ns
            .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        let t = self.health.heartbeat(GpuId(g as u32), now).ok().flatten()?;
        log_transition(&t);
        Some(t)
    }
}

/// A GPU's observer: forwards to the shared [`Recorder`]. Aligned to its own cache lines so
/// that per-batch reference counting on different GPUs never shares a line.
#[repr(align(128))]
struct GpuObserver {
    rec: Arc<Recorder>,
}

impl Observer for GpuObserver {
    fn answered(&self, a: &Answer) {
        self.rec.record(a);
    }

    fn step(&self, lane: usize) {
        // The lane's own worker is the one running this batch: no nudge needed.
        let _ = self.rec.heartbeat_if_due(lane, Instant::now());
    }
}

/// Distributes requests over GPU lanes, batches them, runs them through an [`Executor`], and
/// answers every accepted request exactly once.
///
/// See the [crate docs](crate) for the request flow and guarantees. Share it behind an `Arc`;
/// dropping it begins shutdown (workers finish what is queued in the background); call
/// [`shutdown`](Self::shutdown) to wait for that.
pub struct Coordinator<E: Executor> {
    inner: Arc<Inner<E>>,
    /// Worker and supervisor tasks. An async lock: `shutdown` holds it while it waits for them,
    /// so concurrent shutdowns wait for each other instead of sweeping lanes that workers are
    /// still draining.
    tasks: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl<E: Executor> Coordinator<E> {
    /// A builder around `executor` with the defaults (1 GPU, least-loaded, 32-request batches,
    /// 2 ms max wait, 4096 queued, retry once on failure, work stealing on).
    pub fn builder(executor: E) -> CoordinatorBuilder<E> {
        CoordinatorBuilder {
            executor,
            gpus: 1,
            policy: Policy::LeastLoaded,
            batch: BatchConfig::default(),
            max_queue: 4096,
            request_timeout: None,
            exec_timeout: None,
            health: HealthConfig::default(),
            retry_on_failure: true,
            work_stealing: true,
            idle_interval: Duration::from_millis(5),
            registry: None,
        }
    }

    fn start_on(&self, rt: &tokio::runtime::Handle) {
        let mut tasks = self
            .tasks
            .try_lock()
            .expect("tasks are started once, before the coordinator is shared");
        for g in 0..self.inner.config.gpus {
            let inner = Arc::clone(&self.inner);
            tasks.push(rt.spawn(worker(inner, g)));
        }
        tasks.push(rt.spawn(supervise(Arc::clone(&self.inner))));
    }

    /// Admits `request`: checks capacity, picks a usable GPU by load, reserves load on it and
    /// queues the request on its lane. Never blocks. The [`Handle`] resolves to exactly one
    /// [`Outcome`]; dropping it cancels the request.
    pub fn submit(&self, request: Request<E::Input>) -> Result<Handle<E::Output>, Rejected> {
        self.try_submit(request).map_err(|r| r.reason)
    }

    /// As [`submit`](Self::submit), but a refused request is given back in the error (to retry
    /// it later or elsewhere without cloning the payload).
    pub fn try_submit(
        &self,
        request: Request<E::Input>,
    ) -> Result<Handle<E::Output>, Refused<E::Input>> {
        let r = self.inner.submit(request);
        match &r {
            Ok(_) => self.inner.rec.metrics.accepted.inc(),
            Err(e) => self.inner.rec.metrics.rejected[reject_index(&e.reason)].inc(),
        }
        r
    }

    /// Non-blocking, runtime-free: takes a ready batch for `gpu` from its own lane (whatever is
    /// queued, up to the limits; `max_wait` does not apply) or, when that is empty and work
    /// stealing is on, from the longest other lane. Run it, then pass it to
    /// [`complete`](Self::complete). `None` when there is nothing to do.
    ///
    /// For plain-thread drivers and benchmarks: `submit` → `try_next_batch` → execute (e.g.
    /// [`Batch::finish_all`](freelane_batch::Batch::finish_all)) → `complete` needs no runtime.
    pub fn try_next_batch(&self, gpu: GpuId) -> Option<BatchOf<E>> {
        self.inner.try_next_batch(gpu.index(), false)
    }

    /// Finishes a batch run by the caller: answers entries still active (`Ok`: `Failed` as
    /// unfinished; `Err`: retried once elsewhere or `Failed(error)`), reports the GPU's health,
    /// records the batch metrics and logs one event. Execution time is measured from the
    /// batch's formation.
    pub fn complete(&self, batch: BatchOf<E>, result: Result<(), ExecError>) {
        let start = batch.formed_at();
        let size = batch.active() + batch.answered();
        let gpu = batch.lane();
        self.inner.complete(gpu, batch, result, start, size);
    }

    /// Marks `gpu` Unhealthy now (e.g. a device error seen outside the executor) and moves its
    /// queued requests to usable GPUs.
    pub fn mark_unhealthy(&self, gpu: GpuId) {
        if gpu.index() >= self.inner.config.gpus {
            return;
        }
        if let Ok(Some(t)) = self.inner.health.mark_unhealthy(gpu) {
            log_transition(&t);
        }
        self.inner.fail_over_lane(gpu.index());
    }

    /// Records a heartbeat for `gpu` (workers do this themselves; for manual drivers).
    pub fn heartbeat(&self, gpu: GpuId) {
        if let Ok(Some(t)) = self.inner.health.heartbeat(gpu, Instant::now()) {
            log_transition(&t);
            self.inner.lanes[gpu.index()].nudge();
        }
    }

    /// A snapshot of every GPU and the answer counts, for `/stats`.
    pub fn stats(&self) -> Stats {
        let i = &*self.inner;
        let m = &i.rec.metrics;
        let gpus = (0..i.config.gpus)
            .map(|g| {
                let c = &i.counters[g];
                let id = GpuId(g as u32);
                // Relaxed (all loads below): statistics snapshots.
                GpuSnapshot {
                    gpu: id,
                    state: i.health.state(id),
                    queued: i.lanes[g].len(),
                    in_flight: i.board.in_flight(id),
                    load_cost: i.board.cost(id),
                    busy: c.busy.load(Ordering::Relaxed),
                    batches: c.batches.load(Ordering::Relaxed),
                    failed_batches: c.failed_batches.load(Ordering::Relaxed),
                    requests: c.requests.load(Ordering::Relaxed),
                    stolen_batches: c.stolen_batches.load(Ordering::Relaxed),
                    retried: c.retried.load(Ordering::Relaxed),
                    moved_out: c.moved_out.load(Ordering::Relaxed),
                    batch_time: Duration::from_nanos(c.exec_ewma_ns.load(Ordering::Relaxed)),
                }
            })
            .collect();
        Stats {
            gpus,
            accepted: m.accepted(),
            rejected: m.rejected(),
            completed: m.answered(OutcomeKind::Completed),
            timed_out: m.answered(OutcomeKind::TimedOut),
            cancelled: m.answered(OutcomeKind::Cancelled),
            failed: m.answered(OutcomeKind::Failed),
            // Relaxed: a flag snapshot.
            shutting_down: i.shutting_down.load(Ordering::Relaxed),
        }
    }

    /// Requests queued on all lanes.
    pub fn queued(&self) -> usize {
        self.inner.lanes.iter().map(|l| l.len()).sum()
    }

    /// The metrics (histograms, counters) and their registry, for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.rec.metrics
    }

    /// The registry (shortcut for `metrics().registry()`).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.rec.metrics.registry
    }

    /// The health table.
    pub fn health(&self) -> &Arc<HealthTable> {
        &self.inner.health
    }

    /// The load board.
    pub fn load_board(&self) -> &Arc<LoadBoard> {
        &self.inner.board
    }

    /// The validated configuration.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.inner.config
    }

    /// The executor.
    pub fn executor(&self) -> &E {
        &self.inner.executor
    }

    /// Graceful shutdown: stops admission (`submit` answers [`Rejected::ShuttingDown`]), lets the
    /// workers finish every queued request, waits for them, then fails anything left (requests
    /// that raced the close, or everything queued when no workers run) with
    /// [`ErrorKind::ShuttingDown`]. Idempotent: concurrent calls all return once the first has
    /// finished, and a call whose future is dropped early leaves the rest of the wait to the
    /// next one. It waits for batches already running: set an
    /// [`exec_timeout`](CoordinatorBuilder::exec_timeout) to bound that wait for an executor
    /// that may hang.
    pub async fn shutdown(&self) {
        self.inner.begin_shutdown();
        // Held across the wait: a second caller must not sweep the lanes while the workers
        // still drain them (that would fail requests they were about to run).
        let mut tasks = self.tasks.lock().await;
        while let Some(last) = tasks.len().checked_sub(1) {
            // Awaited through `&mut` and popped only once finished, so a cancelled call leaves
            // the unfinished handles to the next caller.
            let r = (&mut tasks[last]).await;
            tasks.pop();
            if let Err(e) = r {
                tracing::error!(error = %e, "coordinator task ended abnormally");
            }
        }
        self.inner.final_sweep();
        drop(tasks);
        tracing::info!("coordinator shut down");
    }

    /// Runtime-free shutdown for manual drivers: stops admission and fails everything queued
    /// with [`ErrorKind::ShuttingDown`] (workers, if any, stop after their current batch).
    pub fn shutdown_now(&self) {
        self.inner.begin_shutdown();
        self.inner.final_sweep();
    }
}

impl<E: Executor> Drop for Coordinator<E> {
    fn drop(&mut self) {
        // Workers hold the inner state and finish what is queued, then exit.
        self.inner.begin_shutdown();
    }
}

impl<E: Executor> fmt::Debug for Coordinator<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("config", &self.inner.config)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

fn log_transition(t: &Transition) {
    match t.to {
        GpuState::Unhealthy => {
            tracing::warn!(gpu = t.gpu.0, from = %t.from, cause = %t.cause, "gpu unhealthy: failing over")
        }
        GpuState::Healthy => {
            tracing::info!(gpu = t.gpu.0, from = %t.from, cause = %t.cause, "gpu healthy")
        }
        _ => {
            tracing::info!(gpu = t.gpu.0, from = %t.from, to = %t.to, cause = %t.cause, "gpu state changed")
        }
    }
}

impl<E: Executor> Inner<E> {
    fn observer(&self, g: usize) -> Arc<dyn Observer> {
        Arc::clone(&self.observers[g])
    }

    fn answered(&self, a: &Answer) {
        self.rec.record(a);
    }

    fn submit(
        &self,
        mut request: Request<E::Input>,
    ) -> Result<Handle<E::Output>, Refused<E::Input>> {
        let refuse = |reason, request| Err(Refused { reason, request });
        // Relaxed: an early reject only; a request racing the close is caught by the lane
        // (Pushed::Closed) and answered, never stranded.
        if self.shutting_down.load(Ordering::Relaxed) {
            return refuse(Rejected::ShuttingDown, request);
        }
        let limit = self.config.batch.max_request_tokens();
        if request.tokens > limit {
            let reason = Rejected::TooLarge {
                tokens: request.tokens,
                limit,
            };
            return refuse(reason, request);
        }
        let now = Instant::now();
        if request.deadline.is_none() {
            if let Some(t) = self.config.request_timeout {
                request.deadline = now.checked_add(t);
            }
        }
        let health = &*self.health;
        let Some(guard) = self
            .board
            .pick_and_acquire(self.config.policy, request.tokens, |g| health.is_usable(g))
        else {
            return refuse(Rejected::Unavailable, request);
        };
        let g = guard.gpu().index();
        let (entry, handle) = Entry::new_at(
            request,
            Ticket {
                guard: Some(guard),
                failed_on: None,
            },
            now,
        );
        match self.lanes[g].try_push(entry) {
            Ok(Pushed::Open) => Ok(handle),
            Ok(Pushed::Closed) => {
                self.pushed_to_closed(g);
                Ok(handle)
            }
            Err(Full(mut e)) => {
                // Never queued: rebuild the request and answer the entry quietly (its handle is
                // dropped with the refusal); its load reservation is released with it.
                let request = Request {
                    payload: e.take_payload().expect("a fresh entry holds its payload"),
                    tokens: e.tokens(),
                    deadline: e.deadline(),
                };
                e.answer(Outcome::Cancelled);
                let reason = Rejected::Overloaded {
                    retry_after: self.retry_hint(g),
                };
                refuse(reason, request)
            }
        }
    }

    fn retry_hint(&self, g: usize) -> Duration {
        // Relaxed: a statistic.
        let ewma = self.counters[g].exec_ewma_ns.load(Ordering::Relaxed);
        if ewma == 0 {
            return Duration::from_millis(100);
        }
        let batches = (self.lanes[g].len() / self.config.batch.max_batch_size()) as u64 + 1;
        Duration::from_nanos(ewma.saturating_mul(batches))
            .clamp(Duration::from_millis(10), Duration::from_secs(60))
    }

    fn new_batch(&self, g: usize, now: Instant) -> BatchOf<E> {
        Batch::new_at(g, self.config.batch, now)
            .with_source(Arc::clone(&self.lanes[g]))
            .with_observer(self.observer(g))
    }

    fn try_next_batch(self: &Arc<Self>, g: usize, strict_steal: bool) -> Option<BatchOf<E>> {
        if g >= self.config.gpus {
            return None;
        }
        if !self.lanes[g].is_empty() && self.health.is_usable(GpuId(g as u32)) {
            let now = Instant::now();
            let mut b = self.new_batch(g, now);
            b.fill_from(&self.lanes[g], now);
            if !b.is_empty() {
                return Some(b);
            }
        }
        self.steal(g, strict_steal)
    }

    /// Takes a batch for `g` from the longest other lane. `strict`: only from a lane whose
    /// worker is busy, whose GPU is unusable, or that holds a full batch or more.
    fn steal(self: &Arc<Self>, g: usize, strict: bool) -> Option<BatchOf<E>> {
        if !self.config.work_stealing || !self.health.is_usable(GpuId(g as u32)) {
            return None;
        }
        let full = self.config.batch.max_batch_size();
        let mut victim = None;
        let mut best = 0;
        for (j, lane) in self.lanes.iter().enumerate() {
            if j == g {
                continue;
            }
            let len = lane.len();
            if len <= best {
                continue;
            }
            // Relaxed: a hint; a wrong guess only steals or leaves one batch.
            let eligible = !strict
                || len >= full
                || self.counters[j].busy.load(Ordering::Relaxed)
                || !self.health.is_usable(GpuId(j as u32));
            if eligible {
                victim = Some(j);
                best = len;
            }
        }
        let v = victim?;
        let now = Instant::now();
        let mut b = self.new_batch(g, now);
        b.fill_from(&self.lanes[v], now);
        let g_id = GpuId(g as u32);
        if b.iter().any(|(_, e)| e.extra().failed_on == Some(g_id)) {
            // A retry of a batch that failed on this GPU: it goes back to the victim's lane (to
            // be run by another GPU), the rest stays in the stolen batch.
            for e in b.take_unfinished() {
                if e.extra().failed_on == Some(g_id) {
                    if self.lanes[v].push_front(e) == Pushed::Closed {
                        self.pushed_to_closed(v);
                    }
                } else {
                    b.push(e, now);
                }
            }
        }
        if b.is_empty() {
            return None;
        }
        // Move the stolen requests' load to the GPU that runs them.
        for (_, e) in b.iter_mut() {
            if let Ok(guard) = self.board.try_acquire(GpuId(g as u32), e.tokens()) {
                e.extra_mut().guard = Some(guard);
            }
        }
        // Relaxed: a statistic.
        self.counters[g]
            .stolen_batches
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(gpu = g, from = v, size = b.active(), "stole a batch");
        Some(b)
    }

    fn heartbeat_if_due(&self, g: usize, now: Instant) {
        if self.rec.heartbeat_if_due(g, now).is_some() {
            self.lanes[g].nudge();
        }
    }

    fn set_idle(&self, g: usize, idle: bool) {
        if g >= 64 {
            return;
        }
        // Relaxed: a hint for backlog nudges; the periodic idle wake is the backstop.
        if idle {
            self.idle_mask.fetch_or(1 << g, Ordering::Relaxed);
        } else {
            self.idle_mask.fetch_and(!(1 << g), Ordering::Relaxed);
        }
    }

    fn nudge_idle_if_backlog(&self, g: usize) {
        if !self.config.work_stealing || self.lanes[g].is_empty() {
            return;
        }
        // Relaxed: a hint (see set_idle).
        let mask =
            self.idle_mask.load(Ordering::Relaxed) & !(1u64.checked_shl(g as u32).unwrap_or(0));
        if mask != 0 {
            let j = mask.trailing_zeros() as usize;
            if j < self.lanes.len() {
                self.lanes[j].nudge();
            }
        }
    }

    async fn execute(self: &Arc<Self>, g: usize, mut batch: BatchOf<E>) {
        if batch.is_empty() {
            return;
        }
        let size = batch.active();
        let c = &self.counters[g];
        // Relaxed: a hint for stealers and stats.
        c.busy.store(true, Ordering::Relaxed);
        self.nudge_idle_if_backlog(g);
        let start = Instant::now();
        let result = {
            let run =
                AssertUnwindSafe(self.executor.run(GpuId(g as u32), &mut batch)).catch_unwind();
            let r = match self.config.exec_timeout {
                None => Some(run.await),
                Some(t) => tokio::time::timeout(t, run).await.ok(),
            };
            match r {
                Some(Ok(r)) => r,
                Some(Err(panic)) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".to_owned());
                    Err(ExecError::with_kind(
                        ErrorKind::Panicked,
                        format!("executor panicked: {msg}"),
                    ))
                }
                None => Err(ExecError::with_kind(
                    ErrorKind::ExecTimeout,
                    format!(
                        "executor did not finish within {:?}",
                        self.config.exec_timeout.unwrap_or_default()
                    ),
                )),
            }
        };
        // Relaxed: as above.
        c.busy.store(false, Ordering::Relaxed);
        self.complete(g, batch, result, start, size);
    }

    fn complete(
        &self,
        g: usize,
        mut batch: BatchOf<E>,
        result: Result<(), ExecError>,
        start: Instant,
        size: usize,
    ) {
        let elapsed = start.elapsed();
        let gpu = GpuId(g as u32);
        let c = &self.counters[g];
        // Relaxed (counters below): statistics.
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.requests.fetch_add(size as u64, Ordering::Relaxed);
        let prev = c.exec_ewma_ns.load(Ordering::Relaxed);
        let ns = nanos(elapsed);
        let ewma = if prev == 0 {
            ns
        } else {
            prev - prev / 8 + ns / 8
        };
        c.exec_ewma_ns.store(ewma, Ordering::Relaxed);
        self.rec.metrics.batch_size.record(size as u64);
        self.rec.metrics.batch_time.record(ns);
        match result {
            Ok(()) => {
                if !batch.is_empty() {
                    let n = batch.active();
                    tracing::error!(
                        gpu = g,
                        unfinished = n,
                        "executor returned ok without finishing every request"
                    );
                    batch.fail_all(&ExecError::with_kind(
                        ErrorKind::Unfinished,
                        format!("executor returned without finishing {n} request(s)"),
                    ));
                }
                if let Ok(Some(t)) = self.health.report_success(gpu, elapsed) {
                    log_transition(&t);
                }
                tracing::debug!(
                    gpu = g,
                    size,
                    exec_us = elapsed.as_micros() as u64,
                    "batch completed"
                );
            }
            Err(err) => {
                c.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(gpu = g, size, error = %err, "batch failed");
                let unusable = match self.health.report_failure(gpu) {
                    Ok(Some(t)) => {
                        log_transition(&t);
                        !t.to.is_usable()
                    }
                    _ => false,
                };
                self.retry_or_fail(g, &mut batch, &err);
                if unusable {
                    self.fail_over_lane(g);
                }
            }
        }
    }

    fn retry_or_fail(&self, g: usize, batch: &mut BatchOf<E>, err: &ExecError) {
        let now = Instant::now();
        for mut e in batch.take_unfinished() {
            if e.is_cancelled() {
                self.answer_loose(g, e, Outcome::Cancelled, now);
                continue;
            }
            if e.is_expired(now) {
                self.answer_loose(g, e, Outcome::TimedOut, now);
                continue;
            }
            if self.config.retry_on_failure && e.attempts() == 0 {
                e.add_attempt();
                e.extra_mut().failed_on = Some(GpuId(g as u32));
                match self.reroute(e, g) {
                    Ok(()) => {
                        // Relaxed: a statistic.
                        self.counters[g].retried.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(back) => e = back,
                }
            }
            self.answer_loose(g, e, Outcome::Failed(err.clone()), now);
        }
    }

    /// Moves `e` to the front of another usable lane (not `from`), moving its load with it.
    fn reroute(&self, mut e: EntryOf<E>, from: usize) -> Result<(), EntryOf<E>> {
        let health = &*self.health;
        let Some(target) = self.board.pick(self.config.policy, |g| {
            g.index() != from && health.is_usable(g)
        }) else {
            return Err(e);
        };
        let Ok(guard) = self.board.try_acquire(target, e.tokens()) else {
            return Err(e);
        };
        // The old reservation (on `from`) is released here.
        e.extra_mut().guard = Some(guard);
        let t = target.index();
        if self.lanes[t].push_front(e) == Pushed::Closed {
            self.pushed_to_closed(t);
        }
        Ok(())
    }

    /// Failover: pauses lane `g` (no refills) and moves everything queued on it to usable lanes;
    /// requests no usable lane can take are answered `Failed(Unavailable)`.
    fn fail_over_lane(&self, g: usize) {
        let lane = &self.lanes[g];
        if !lane.is_paused() {
            lane.set_paused(true);
        }
        let now = Instant::now();
        let (mut moved, mut failed) = (0u64, 0u64);
        loop {
            let claim = lane.drain();
            if claim.remaining() == 0 {
                break;
            }
            for e in claim {
                if e.is_cancelled() {
                    self.answer_loose(g, e, Outcome::Cancelled, now);
                } else if e.is_expired(now) {
                    self.answer_loose(g, e, Outcome::TimedOut, now);
                } else {
                    match self.reroute(e, g) {
                        Ok(()) => moved += 1,
                        Err(e) => {
                            failed += 1;
                            self.answer_loose(
                                g,
                                e,
                                Outcome::Failed(ExecError::with_kind(
                                    ErrorKind::Unavailable,
                                    format!(
                                        "gpu {g} failed and no usable gpu could take the request"
                                    ),
                                )),
                                now,
                            );
                        }
                    }
                }
            }
        }
        if moved + failed > 0 {
            // Relaxed: a statistic.
            self.counters[g]
                .moved_out
                .fetch_add(moved, Ordering::Relaxed);
            tracing::warn!(gpu = g, moved, failed, "failover moved queued requests");
        }
    }

    /// The final sweep of a shutdown: answers everything left in the (closed) lanes, and makes
    /// every later push onto a closed lane answer what it pushed itself.
    fn final_sweep(&self) {
        let mut drained = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        drained.all = true;
        for g in 0..self.lanes.len() {
            self.fail_closed_lane(g);
        }
    }

    /// Worker `g` has stopped (its lane was closed and empty): answers anything pushed since,
    /// and makes later pushes onto lane `g` answer what they pushed.
    fn worker_stopped(&self, g: usize) {
        let mut drained = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        drained.lanes[g] = true;
        self.fail_closed_lane(g);
    }

    /// A push found lane `g` closed. While the lane's worker still drains it (and before the
    /// final sweep) the entry is left there for the worker, so requests queued earlier are not
    /// failed with it. Once the worker has stopped or the sweep has begun, the pusher drains the
    /// lane itself. The lock orders this check against those two: either they run after our
    /// push and take the entry, or we see their flag and take it.
    fn pushed_to_closed(&self, g: usize) {
        let drained = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        if drained.all || drained.lanes[g] {
            self.fail_closed_lane(g);
        }
    }

    /// Drains lane `g` and answers everything `Failed(ShuttingDown)` (after close).
    fn fail_closed_lane(&self, g: usize) {
        let now = Instant::now();
        let lane = &self.lanes[g];
        loop {
            let claim = lane.drain();
            if claim.remaining() == 0 {
                break;
            }
            for e in claim {
                self.answer_loose(
                    g,
                    e,
                    Outcome::Failed(ExecError::with_kind(
                        ErrorKind::ShuttingDown,
                        "the service shut down before the request could run",
                    )),
                    now,
                );
            }
        }
    }

    fn answer_loose(&self, g: usize, mut e: EntryOf<E>, outcome: Outcome<E::Output>, now: Instant) {
        if !e.is_unanswered() {
            return;
        }
        // Metrics first, so they happen-before the caller sees the outcome.
        self.answered(&Answer {
            lane: g,
            kind: outcome.kind(),
            tokens: e.tokens(),
            enqueued: e.enqueued_at(),
            started: e.started_at(),
            answered: now,
        });
        e.answer(outcome);
    }

    fn begin_shutdown(&self) {
        // Relaxed: the flag is an early reject; the lanes' close RMWs order everything else.
        if self.shutting_down.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::info!("coordinator shutting down: admission stopped, draining lanes");
        for lane in self.lanes.iter() {
            lane.close();
        }
        self.stop.notify_one();
    }
}

impl<E: Executor> Drop for Inner<E> {
    fn drop(&mut self) {
        // No worker, monitor or batch refers to us any more: answer whatever is still queued
        // (a manual-mode coordinator dropped with work in its lanes) instead of dropping it.
        for g in 0..self.lanes.len() {
            self.fail_closed_lane(g);
        }
    }
}

async fn worker<E: Executor>(inner: Arc<Inner<E>>, g: usize) {
    let gpu = GpuId(g as u32);
    let lane = Arc::clone(&inner.lanes[g]);
    let mut batcher =
        Batcher::new(g, Arc::clone(&lane), inner.config.batch).with_observer(inner.observer(g));
    let idle = inner
        .config
        .idle_interval
        .min(inner.config.heartbeat_interval());
    tracing::debug!(gpu = g, "worker started");
    loop {
        inner.heartbeat_if_due(g, Instant::now());
        if !inner.health.is_usable(gpu) {
            inner.fail_over_lane(g);
            if lane.is_closed() && lane.is_empty() {
                break;
            }
            // Wait for a push that raced the failover, a nudge (recovery), or the interval.
            let _ = tokio::time::timeout(idle, lane.signal()).await;
            continue;
        }
        if lane.is_paused() {
            lane.set_paused(false);
            tracing::info!(gpu = g, "lane resumed");
        }
        inner.set_idle(g, true);
        let next = batcher
            .next_batch_until(Instant::now().checked_add(idle))
            .await;
        inner.set_idle(g, false);
        match next {
            Next::Batch(b) => inner.execute(g, b).await,
            Next::Idle | Next::Nudged => {
                if let Some(b) = inner.steal(g, true) {
                    inner.execute(g, b).await;
                }
            }
            Next::Closed => {
                // Help drain the other lanes, then stop.
                match inner.steal(g, false) {
                    Some(b) => inner.execute(g, b).await,
                    None => break,
                }
            }
        }
    }
    inner.worker_stopped(g);
    tracing::debug!(gpu = g, "worker stopped");
}

async fn supervise<E: Executor>(inner: Arc<Inner<E>>) {
    let interval = inner.config.heartbeat_interval();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = inner.stop.notified() => break,
        }
        // Relaxed: a flag check; shutdown also notifies.
        if inner.shutting_down.load(Ordering::Relaxed) {
            break;
        }
        for t in inner.health.check_heartbeats(Instant::now()) {
            log_transition(&t);
            inner.lanes[t.gpu.index()].nudge();
        }
        for g in 0..inner.config.gpus {
            if !inner.health.is_usable(GpuId(g as u32)) && !inner.lanes[g].is_empty() {
                inner.fail_over_lane(g);
            }
        }
    }
}
