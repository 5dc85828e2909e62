//! One lane's executor: runs a coordinator [`Batch`] to completion with iteration-level batching,
//! and the [`ServerExecutor`] that implements the coordinator's [`Executor`] trait over all lanes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use freelane::{Batch, ExecError, Executor, GpuId};
use freelane_metrics::Histogram;
use tokio::sync::{oneshot, Mutex};

use super::cuda::EngineFactory;
use super::decode::{Decoder, Generation, Job, StepBuffers};
use super::engine::{EngineError, StepEngine};
use super::sim::SimEngine;

/// Where a lane's engine runs.
pub enum LaneEngine {
    /// A simulated GPU: tokens are computed inline (no compute) and the modelled step time is
    /// awaited with a timer, so no thread is blocked.
    Sim(SimEngine),
    /// A compute engine (CPU model, CUDA) on the lane's own OS thread, so a step never blocks
    /// the async runtime; the thread also owns any thread-bound state (a CUDA context).
    Thread(EngineThread),
}

impl std::fmt::Debug for LaneEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaneEngine::Sim(s) => f.debug_tuple("Sim").field(s).finish(),
            LaneEngine::Thread(t) => f.debug_tuple("Thread").field(t).finish(),
        }
    }
}

type StepReply = (Result<(), EngineError>, StepBuffers);

/// How long one engine step may take before the device counts as hung (see
/// [`ServerExecutor::with_step_timeout`]).
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A compute engine on a dedicated thread; steps are sent to it and answered by a oneshot.
pub struct EngineThread {
    tx: Option<std::sync::mpsc::Sender<(StepBuffers, oneshot::Sender<StepReply>)>>,
    context: usize,
    thread: Option<std::thread::JoinHandle<()>>,
    step_timeout: Duration,
    /// A step overran `step_timeout`: the thread was cut loose and every later step fails.
    hung: bool,
}

impl std::fmt::Debug for EngineThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineThread")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl EngineThread {
    /// Starts thread `name`, builds the engine there with `factory`, and resolves once the
    /// engine is ready (or failed to start). Awaiting never blocks a runtime thread, however long
    /// the factory takes (a CUDA context, kernel compilation, a weight upload). A step that takes
    /// longer than `step_timeout` fails, and the engine is then treated as hung.
    pub async fn spawn(
        name: String,
        factory: EngineFactory,
        step_timeout: Duration,
    ) -> Result<EngineThread, EngineError> {
        let (tx, rx) = std::sync::mpsc::channel::<(StepBuffers, oneshot::Sender<StepReply>)>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<usize, EngineError>>();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut engine: Box<dyn StepEngine> = match factory() {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(engine.context()));
                while let Ok((mut buf, reply)) = rx.recv() {
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        engine.step(&buf.ids, &buf.params, &mut buf.next)
                    }))
                    .unwrap_or_else(|_| Err(EngineError::new("engine panicked during a step")));
                    let _ = reply.send((res, buf));
                }
            })
            .map_err(|e| EngineError::new(format!("cannot start engine thread: {e}")))?;
        let context = ready_rx
            .await
            .map_err(|_| EngineError::new("engine thread exited during start-up"))??;
        Ok(EngineThread {
            tx: Some(tx),
            context,
            thread: Some(thread),
            step_timeout,
            hung: false,
        })
    }

    async fn step(&mut self, buf: StepBuffers) -> StepReply {
        if self.hung {
            return (
                Err(EngineError::new(format!(
                    "engine hung: a step did not finish within {:?}",
                    self.step_timeout
                ))),
                StepBuffers::default(),
            );
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let Some(tx) = &self.tx else {
            return (
                Err(EngineError::new("engine thread stopped")),
                StepBuffers::default(),
            );
        };
        if tx.send((buf, reply_tx)).is_err() {
            return (
                Err(EngineError::new("engine thread stopped")),
                StepBuffers::default(),
            );
        }
        match tokio::time::timeout(self.step_timeout, reply_rx).await {
            Ok(reply) => reply.unwrap_or_else(|_| {
                (
                    Err(EngineError::new("engine thread stopped")),
                    StepBuffers::default(),
                )
            }),
            Err(_) => {
                // The device (or its driver) is stuck in this step. Cut the thread loose: closing
                // the channel ends it if the step ever returns, and it is never joined (a join
                // would block on the hung step). The batch fails now, so its requests are
                // retried elsewhere or answered instead of waiting forever.
                self.hung = true;
                self.tx.take();
                self.thread.take();
                tracing::error!(
                    timeout = ?self.step_timeout,
                    "engine step did not finish in time; treating the device as hung"
                );
                (
                    Err(EngineError::new(format!(
                        "engine step did not finish within {:?}; the device is treated as hung",
                        self.step_timeout
                    ))),
                    StepBuffers::default(),
                )
            }
        }
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after its current step.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counters shared by every lane (exported as metrics).
#[derive(Debug, Default)]
pub struct ExecStats {
    /// Tokens generated (every decode step adds its batch size, minus stop tokens).
    pub generated_tokens: AtomicU64,
    /// Decode steps run.
    pub steps: AtomicU64,
    /// Steps that failed (engine errors).
    pub failed_steps: AtomicU64,
}

/// Executes batches for one lane (GPU): owns the lane's engine and its active sequences.
#[derive(Debug)]
pub struct LaneExecutor {
    engine: LaneEngine,
    decoder: Decoder<usize>,
    buf: StepBuffers,
    batch_size: Option<Arc<Histogram>>,
    stats: Arc<ExecStats>,
}

impl LaneExecutor {
    /// A lane executor over `engine`; each step's batch size is recorded in `batch_size`.
    pub fn new(
        engine: LaneEngine,
        batch_size: Option<Arc<Histogram>>,
        stats: Arc<ExecStats>,
    ) -> Self {
        let context = match &engine {
            LaneEngine::Sim(s) => s.context(),
            LaneEngine::Thread(t) => t.context,
        };
        LaneExecutor {
            engine,
            decoder: Decoder::new(context),
            buf: StepBuffers::default(),
            batch_size,
            stats,
        }
    }

    async fn engine_step(&mut self) -> Result<(), EngineError> {
        match &mut self.engine {
            LaneEngine::Sim(sim) => {
                let t = sim.step_time(self.buf.params.len());
                sim.step(&self.buf.ids, &self.buf.params, &mut self.buf.next)?;
                if !t.is_zero() {
                    tokio::time::sleep(t).await;
                }
                Ok(())
            }
            LaneEngine::Thread(thread) => {
                let buf = std::mem::take(&mut self.buf);
                let (res, buf) = thread.step(buf).await;
                self.buf = buf;
                res
            }
        }
    }

    /// Runs `batch` until every entry is answered: admits the batch's entries, steps the engine,
    /// finishes sequences as they complete, drops cancelled / expired ones between steps, and
    /// refills the batch from its lane between steps (iteration-level batching).
    ///
    /// On an engine error the unfinished entries stay in the batch (unanswered) and the error is
    /// returned, so the coordinator can charge the GPU and move them to another lane.
    pub async fn run(&mut self, batch: &mut Batch<Job, Generation>) -> Result<(), ExecError> {
        // A previous run that was abandoned or failed may have left sequences behind; their
        // entries were answered or handed back by the coordinator.
        let _ = self.decoder.drain().count();
        for (i, e) in batch.iter() {
            if let Some(job) = e.payload() {
                self.decoder.admit(i, job);
            }
        }
        loop {
            // Cancelled (client gone; a closed stream means its handle is gone too) and expired
            // entries are answered and leave now; the decoder forgets their slots before any
            // slot can be reused by a refill.
            if batch.prune(Instant::now()) > 0 {
                self.decoder.remove_where(|i| batch.get(*i).is_none());
            }
            if self.decoder.is_empty() {
                if !batch.is_empty() {
                    // Entries without a payload cannot run: fail them rather than spin.
                    batch.fail_all(&ExecError::new("request has no payload"));
                }
                if batch.refill() == 0 {
                    return Ok(());
                }
                self.admit_joined(batch);
                continue;
            }
            self.decoder.prepare(&mut self.buf);
            if let Err(e) = self.engine_step().await {
                let _ = self.decoder.drain().count();
                self.stats.failed_steps.fetch_add(1, Ordering::Relaxed);
                return Err(ExecError::new(e.message));
            }
            let outcome = self.decoder.apply(&self.buf.next, |&i| {
                batch
                    .get(i)
                    .and_then(|e| e.payload())
                    .and_then(|j| j.sink.as_ref())
            });
            // Relaxed (all three): statistics; nothing is published with them.
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
            let stops = outcome
                .finished
                .iter()
                .filter(|(_, g)| g.finish == crate::api::FinishReason::Stop)
                .count();
            self.stats
                .generated_tokens
                .fetch_add((outcome.batch - stops) as u64, Ordering::Relaxed);
            if let Some(h) = &self.batch_size {
                h.record(outcome.batch as u64);
            }
            for (i, generation) in outcome.finished {
                let _ = batch.finish(i, generation);
            }
            // Refill after every step, even when the batch is full (it then takes nothing): each
            // refill is the lane's heartbeat, and a full batch that ran for longer than the
            // heartbeat timeout without one would be failed over as a hung GPU.
            if batch.refill() > 0 {
                self.admit_joined(batch);
            }
        }
    }

    fn admit_joined(&mut self, batch: &Batch<Job, Generation>) {
        for &i in batch.joined() {
            if let Some(job) = batch.get(i).and_then(|e| e.payload()) {
                self.decoder.admit(i, job);
            }
        }
    }
}

enum LaneSlot {
    Pending(EngineFactory),
    Ready(LaneExecutor),
    Failed(String),
    Taken,
}

/// The coordinator's [`Executor`]: one [`LaneExecutor`] per GPU, each built lazily on its first
/// batch (a compute engine's thread and device state are created then).
pub struct ServerExecutor {
    name: &'static str,
    lanes: Vec<Mutex<LaneSlot>>,
    sim: Option<(Duration, Option<(usize, u64)>)>,
    batch_size: Option<Arc<Histogram>>,
    stats: Arc<ExecStats>,
    step_timeout: Duration,
}

impl std::fmt::Debug for ServerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerExecutor")
            .field("name", &self.name)
            .field("lanes", &self.lanes.len())
            .finish_non_exhaustive()
    }
}

impl ServerExecutor {
    /// Compute lanes (cpu, cuda) from one engine factory per lane.
    pub fn compute(
        name: &'static str,
        factories: Vec<EngineFactory>,
        batch_size: Option<Arc<Histogram>>,
        stats: Arc<ExecStats>,
    ) -> Self {
        let lanes = factories
            .into_iter()
            .map(|f| Mutex::new(LaneSlot::Pending(f)))
            .collect();
        ServerExecutor {
            name,
            lanes,
            sim: None,
            batch_size,
            stats,
            step_timeout: DEFAULT_STEP_TIMEOUT,
        }
    }

    /// Sets how long one engine step of a compute lane may take (default
    /// [`DEFAULT_STEP_TIMEOUT`]). A step that overruns it fails its batch (the coordinator
    /// retries or answers the requests, and charges the GPU's health), and that lane's engine is
    /// treated as hung from then on: its later batches fail at once.
    pub fn with_step_timeout(mut self, timeout: Duration) -> Self {
        self.step_timeout = timeout;
        self
    }

    /// `gpus` simulated GPUs with base step time `step`, and optionally GPU `fail.0` failing
    /// after `fail.1` steps.
    pub fn sim(
        gpus: usize,
        step: Duration,
        fail: Option<(usize, u64)>,
        batch_size: Option<Arc<Histogram>>,
        stats: Arc<ExecStats>,
    ) -> Self {
        let lanes = (0..gpus).map(|_| Mutex::new(LaneSlot::Taken)).collect();
        ServerExecutor {
            name: "sim",
            lanes,
            sim: Some((step, fail)),
            batch_size,
            stats,
            step_timeout: DEFAULT_STEP_TIMEOUT,
        }
    }

    /// `cpu`, `cuda` or `sim`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Number of lanes.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Shared counters.
    pub fn stats(&self) -> &Arc<ExecStats> {
        &self.stats
    }

    async fn build_lane(&self, gpu: usize, slot: &mut LaneSlot) -> Result<(), ExecError> {
        if let Some((step, fail)) = self.sim {
            if matches!(slot, LaneSlot::Taken) {
                let fail_after = fail.and_then(|(g, n)| (g == gpu).then_some(n));
                let engine = LaneEngine::Sim(SimEngine::new(gpu, step, fail_after));
                *slot = LaneSlot::Ready(LaneExecutor::new(
                    engine,
                    self.batch_size.clone(),
                    self.stats.clone(),
                ));
            }
            return Ok(());
        }
        *slot = match std::mem::replace(slot, LaneSlot::Taken) {
            LaneSlot::Pending(factory) => {
                let name = format!("freelane-{}-{gpu}", self.name);
                match EngineThread::spawn(name, factory, self.step_timeout).await {
                    Ok(t) => LaneSlot::Ready(LaneExecutor::new(
                        LaneEngine::Thread(t),
                        self.batch_size.clone(),
                        self.stats.clone(),
                    )),
                    Err(e) => {
                        tracing::error!(gpu, error = %e, "engine failed to start");
                        LaneSlot::Failed(e.message)
                    }
                }
            }
            other => other,
        };
        match slot {
            LaneSlot::Failed(m) => {
                Err(ExecError::new(format!("gpu {gpu} engine unavailable: {m}")))
            }
            _ => Ok(()),
        }
    }
}

impl Executor for ServerExecutor {
    type Input = Job;
    type Output = Generation;

    async fn run(&self, gpu: GpuId, batch: &mut Batch<Job, Generation>) -> Result<(), ExecError> {
        let idx = gpu.0 as usize;
        let Some(lane) = self.lanes.get(idx) else {
            return Err(ExecError::new(format!("no lane for gpu {idx}")));
        };
        // One worker per GPU calls run, so this lock is uncontended; it is a tokio mutex because
        // it is held across the engine's awaits.
        let mut slot = lane.lock().await;
        self.build_lane(idx, &mut slot).await?;
        match &mut *slot {
            LaneSlot::Ready(lane) => lane.run(batch).await,
            _ => Err(ExecError::new(format!("gpu {idx} engine unavailable"))),
        }
    }
}
