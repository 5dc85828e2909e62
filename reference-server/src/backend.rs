//! The serving core behind the HTTP handlers: the [`Coordinator`] over the chosen executor, the
//! model weights, and the server's metrics.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use freelane::{
    BatchConfig, Coordinator, ErrorKind, Handle, Outcome, Policy, Registry, Rejected, Request,
};
use freelane_metrics::{Counter, Histogram, HistogramOpts};
use serde_json::json;

use crate::api::ApiError;
use crate::config::{Config, PolicyArg};
use crate::executor::decode::{Generation, Job};
use crate::executor::lane::{ExecStats, ServerExecutor};
use crate::executor::select::select;
use crate::model::Weights;

/// Why the server could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// HTTP status codes counted in `freelane_requests_total{status}`.
const STATUSES: [u16; 8] = [200, 400, 413, 429, 499, 500, 503, 504];

/// The coordinator, executor and metrics.
pub struct Backend {
    coordinator: Arc<Coordinator<ServerExecutor>>,
    executor_name: &'static str,
    registry: Arc<Registry>,
    responses: Vec<(u16, Arc<Counter>)>,
    duration: Arc<Histogram>,
    weights: Arc<Weights>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("executor", &self.executor_name)
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Loads or generates the weights, picks the executor and starts the coordinator. Must be
    /// called inside a tokio runtime (the coordinator spawns one worker task per GPU).
    pub fn build(config: &Config) -> Result<Backend, StartError> {
        let weights = Arc::new(match &config.weights {
            Some(path) => Weights::load(path)
                .map_err(|e| StartError(format!("cannot load {}: {e}", path.display())))?,
            None => Weights::generate(config.seed),
        });
        let dims = weights.dims();
        let registry = Arc::new(Registry::new());
        let step_batch = registry.histogram(
            "freelane_decode_batch_size",
            "Sequences in one decode step (iteration-level batch size).",
            &[],
        );
        let stats = Arc::new(ExecStats::default());
        let (executor, fallback) = select(config, &weights, Some(step_batch), stats.clone())
            .map_err(|e| StartError(e.to_string()))?;
        if let Some(reason) = fallback {
            tracing::info!(reason = %reason, "cuda unavailable; falling back to the cpu executor");
        }
        let executor_name = executor.name();
        let gpus = executor.lanes();
        let mut batch = BatchConfig::builder()
            .max_batch_size(config.max_batch_size)
            .max_wait(config.max_wait);
        if let Some(t) = config.max_batch_tokens {
            batch = batch.max_batch_tokens(t);
        }
        let batch = batch
            .build()
            .map_err(|e| StartError(format!("invalid batch limits: {e}")))?;
        let policy = match config.policy {
            PolicyArg::P2c => Policy::PowerOfTwoChoices,
            PolicyArg::LeastLoaded => Policy::LeastLoaded,
            PolicyArg::RoundRobin => Policy::RoundRobin,
        };
        let coordinator = Coordinator::builder(executor)
            .gpus(gpus)
            .policy(policy)
            .batch(batch)
            .max_queue(config.max_queue)
            .request_timeout(Some(config.request_timeout))
            .registry(registry.clone())
            .build()
            .map_err(|e| StartError(format!("cannot start the coordinator: {e}")))?;
        let coordinator = Arc::new(coordinator);

        let responses = STATUSES
            .iter()
            .map(|&s| {
                let label = s.to_string();
                let c = registry.counter(
                    "freelane_requests_total",
                    "HTTP completion requests answered, by status code (499: client went away).",
                    &[("status", &label)],
                );
                (s, c)
            })
            .collect();
        let duration = registry.histogram_with(
            "freelane_request_duration_seconds",
            "HTTP completion request duration, from the request's arrival to its response.",
            &[],
            HistogramOpts::nanos_as_seconds(),
        );
        register_gauges(&registry, &coordinator, &stats, gpus);
        tracing::info!(
            executor = executor_name,
            gpus,
            context = dims.context,
            embed = dims.embed,
            hidden = dims.hidden,
            weights = %config.weights.as_ref().map_or_else(
                || format!("generated from seed {}", config.seed),
                |p| p.display().to_string()),
            "model ready"
        );
        Ok(Backend {
            coordinator,
            executor_name,
            registry,
            responses,
            duration,
            weights,
        })
    }

    /// The coordinator.
    pub fn coordinator(&self) -> &Arc<Coordinator<ServerExecutor>> {
        &self.coordinator
    }

    /// The model weights.
    pub fn weights(&self) -> &Arc<Weights> {
        &self.weights
    }

    /// `cpu`, `cuda` or `sim`.
    pub fn executor_name(&self) -> &'static str {
        self.executor_name
    }

    /// Admits a job (429 when full, 503 when no GPU is usable or shutting down).
    pub fn submit(&self, job: Job) -> Result<Handle<Generation>, ApiError> {
        let cost = job.cost();
        self.coordinator
            .submit(Request::new(job, cost))
            .map_err(|r| match r {
                Rejected::Overloaded { retry_after } => {
                    let mut e = ApiError::overloaded("admission queue is full; retry later");
                    e.retry_after = Some(retry_after.as_secs_f64().ceil().clamp(1.0, 60.0) as u32);
                    e
                }
                Rejected::Unavailable => ApiError::unavailable("no_usable_gpu", "no usable gpu"),
                Rejected::ShuttingDown => {
                    ApiError::unavailable("shutting_down", "server is shutting down")
                }
                Rejected::TooLarge { tokens, limit } => ApiError::invalid_value(format!(
                    "prompt bytes + max_tokens = {tokens} exceed the batch token budget {limit}"
                )),
                other => ApiError::unavailable("rejected", other.to_string()),
            })
    }

    /// Maps a request's outcome to its generation or an HTTP error.
    pub fn finish(outcome: Outcome<Generation>) -> Result<Generation, ApiError> {
        match outcome {
            Outcome::Completed(g) => Ok(g),
            Outcome::TimedOut => Err(ApiError::timeout("request deadline passed")),
            Outcome::Cancelled => Err(ApiError::unavailable("cancelled", "request was cancelled")),
            Outcome::Failed(e) => Err(match e.kind() {
                ErrorKind::Unavailable => {
                    ApiError::unavailable("no_usable_gpu", format!("no usable gpu: {e}"))
                }
                ErrorKind::ShuttingDown => {
                    ApiError::unavailable("shutting_down", format!("server is shutting down: {e}"))
                }
                ErrorKind::ExecTimeout => ApiError::timeout(format!("execution timed out: {e}")),
                _ => ApiError::internal(format!("execution failed: {e}")),
            }),
        }
    }

    /// Counts one HTTP response to `/v1/completions`.
    pub fn record_response(&self, status: StatusCode, elapsed: Duration) {
        let code = status.as_u16();
        if let Some((_, c)) = self.responses.iter().find(|(s, _)| *s == code) {
            c.inc();
        }
        self.duration
            .record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Usable GPUs and all GPUs.
    pub fn usable_lanes(&self) -> (usize, usize) {
        let n = self.coordinator.config().gpus();
        let h = self.coordinator.health();
        let usable = (0..n)
            .filter(|&g| h.is_usable(freelane::GpuId(g as u32)))
            .count();
        (usable, n)
    }

    /// Prometheus text.
    pub fn render_metrics(&self) -> String {
        self.registry.render_prometheus()
    }

    /// The `/stats` JSON.
    pub fn stats_json(&self) -> serde_json::Value {
        let s = self.coordinator.stats();
        let gpus: Vec<_> = s
            .gpus
            .iter()
            .map(|g| {
                json!({
                    "gpu": g.gpu.0,
                    "state": g.state.as_str(),
                    "usable": g.state.is_usable(),
                    "queued": g.queued,
                    "in_flight": g.in_flight,
                    "load_cost": g.load_cost,
                    "busy": g.busy,
                    "batches": g.batches,
                    "failed_batches": g.failed_batches,
                    "requests": g.requests,
                    "stolen_batches": g.stolen_batches,
                    "retried": g.retried,
                    "moved_out": g.moved_out,
                    "batch_time_us": g.batch_time.as_micros() as u64,
                })
            })
            .collect();
        let ex = self.coordinator.executor().stats();
        json!({
            "executor": self.executor_name,
            "gpus": gpus,
            "accepted": s.accepted,
            "rejected": s.rejected,
            "completed": s.completed,
            "timed_out": s.timed_out,
            "cancelled": s.cancelled,
            "failed": s.failed,
            "shutting_down": s.shutting_down,
            // Relaxed: statistics snapshots.
            "decode_steps": ex.steps.load(Ordering::Relaxed),
            "failed_steps": ex.failed_steps.load(Ordering::Relaxed),
            "generated_tokens": ex.generated_tokens.load(Ordering::Relaxed),
            "log_dropped": crate::logging::dropped(),
        })
    }

    /// Graceful shutdown: stop admission, run everything queued, wait for the workers.
    pub async fn shutdown(&self) {
        self.coordinator.shutdown().await;
    }
}

/// The gauges and counters read at scrape time. They hold weak references, so a dropped
/// backend reads as 0 rather than being kept alive by its registry.
fn register_gauges(
    registry: &Registry,
    coordinator: &Arc<Coordinator<ServerExecutor>>,
    stats: &Arc<ExecStats>,
    gpus: usize,
) {
    // One shared stats snapshot per scrape would be nicer; per-gauge snapshots are cheap enough
    // (a few relaxed loads per GPU).
    let weak: Arc<OnceLock<Weak<Coordinator<ServerExecutor>>>> = Arc::new(OnceLock::new());
    let _ = weak.set(Arc::downgrade(coordinator));
    for g in 0..gpus {
        let label = g.to_string();
        let labels: &[(&str, &str)] = &[("gpu", &label)];
        let w = weak.clone();
        let _ = registry.gauge_fn(
            "freelane_queue_depth",
            "Requests queued on the gpu's lane, not yet in a batch.",
            labels,
            move || {
                w.get().and_then(Weak::upgrade).map_or(0.0, |c| {
                    c.stats().gpus.get(g).map_or(0.0, |s| s.queued as f64)
                })
            },
        );
        let h = Arc::downgrade(coordinator.health());
        let id = freelane::GpuId(g as u32);
        let _ = registry.gauge_fn(
            "freelane_gpu_state",
            "Health state of the gpu: 0 healthy, 1 degraded, 2 unhealthy, 3 recovering.",
            labels,
            move || h.upgrade().map_or(2.0, |h| h.state(id) as u8 as f64),
        );
    }
    let s = Arc::downgrade(stats);
    let _ = registry.counter_fn(
        "freelane_generated_tokens_total",
        "Tokens generated by the executors.",
        &[],
        move || {
            s.upgrade()
                .map_or(0.0, |s| s.generated_tokens.load(Ordering::Relaxed) as f64)
        },
    );
    let s = Arc::downgrade(stats);
    let _ = registry.counter_fn(
        "freelane_decode_steps_total",
        "Decode steps run by the executors.",
        &[],
        move || {
            s.upgrade()
                .map_or(0.0, |s| s.steps.load(Ordering::Relaxed) as f64)
        },
    );
    let _ = registry.counter_fn(
        "freelane_log_dropped_total",
        "Log events dropped because the log ring was full.",
        &[],
        || crate::logging::dropped() as f64,
    );
}
