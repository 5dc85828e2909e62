//! The coordinator's configuration, its builder's errors, and admission rejections.
use std::fmt;
use std::time::Duration;

use freelane_batch::{BatchConfig, BatchConfigError};
use freelane_health::HealthConfig;
use freelane_load::Policy;

/// Most GPUs one coordinator drives.
pub const MAX_GPUS: usize = 1024;

/// Validated coordinator settings (see [`CoordinatorBuilder`](crate::CoordinatorBuilder)).
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub(crate) gpus: usize,
    pub(crate) policy: Policy,
    pub(crate) batch: BatchConfig,
    pub(crate) max_queue: usize,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) exec_timeout: Option<Duration>,
    pub(crate) health: HealthConfig,
    pub(crate) retry_on_failure: bool,
    pub(crate) work_stealing: bool,
    pub(crate) idle_interval: Duration,
}

impl CoordinatorConfig {
    /// Number of GPUs (lanes).
    pub fn gpus(&self) -> usize {
        self.gpus
    }
    /// GPU selection policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }
    /// Batch limits.
    pub fn batch(&self) -> &BatchConfig {
        &self.batch
    }
    /// Most queued (not yet running) requests, over all lanes.
    pub fn max_queue(&self) -> usize {
        self.max_queue
    }
    /// Capacity of each lane: `ceil(max_queue / gpus)`.
    pub fn lane_capacity(&self) -> usize {
        self.max_queue.div_ceil(self.gpus)
    }
    /// Default deadline given to requests that carry none.
    pub fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }
    /// Longest one executor run may take before it is abandoned and counted as a failure.
    pub fn exec_timeout(&self) -> Option<Duration> {
        self.exec_timeout
    }
    /// Health thresholds.
    pub fn health(&self) -> &HealthConfig {
        &self.health
    }
    /// Whether a failed batch's requests are retried once on another GPU.
    pub fn retry_on_failure(&self) -> bool {
        self.retry_on_failure
    }
    /// Whether idle lanes take work from the longest lane.
    pub fn work_stealing(&self) -> bool {
        self.work_stealing
    }
    /// How often an idle worker wakes to look for work to steal and to heartbeat.
    pub fn idle_interval(&self) -> Duration {
        self.idle_interval
    }
    /// Interval of heartbeats and of the health monitor's checks (a quarter of the heartbeat
    /// timeout).
    pub fn heartbeat_interval(&self) -> Duration {
        (self.health.heartbeat_timeout() / 4).max(Duration::from_millis(1))
    }
}

/// Why a [`CoordinatorBuilder`](crate::CoordinatorBuilder) refused to build.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `gpus` was 0.
    NoGpus,
    /// More than [`MAX_GPUS`] GPUs.
    TooManyGpus(usize),
    /// `max_queue` was 0.
    ZeroQueue,
    /// A zero request timeout (every request would time out).
    ZeroRequestTimeout,
    /// A zero execution timeout (every batch would fail).
    ZeroExecTimeout,
    /// A zero idle interval (workers would spin).
    ZeroIdleInterval,
    /// The batch limits are invalid.
    Batch(BatchConfigError),
    /// [`build`](crate::CoordinatorBuilder::build) was called outside a tokio runtime (use
    /// `build_manual` to drive the coordinator without one).
    NoRuntime,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoGpus => f.write_str("at least one gpu is required"),
            Self::TooManyGpus(n) => write!(f, "{n} gpus exceed the limit of {MAX_GPUS}"),
            Self::ZeroQueue => f.write_str("max queue must be at least 1"),
            Self::ZeroRequestTimeout => f.write_str("request timeout must be greater than zero"),
            Self::ZeroExecTimeout => f.write_str("execution timeout must be greater than zero"),
            Self::ZeroIdleInterval => f.write_str("idle interval must be greater than zero"),
            Self::Batch(e) => write!(f, "invalid batch limits: {e}"),
            Self::NoRuntime => f.write_str(
                "no tokio runtime: build() spawns one worker task per gpu (use build_manual() to drive lanes without a runtime)",
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Batch(e) => Some(e),
            _ => None,
        }
    }
}

impl From<BatchConfigError> for ConfigError {
    fn from(e: BatchConfigError) -> Self {
        Self::Batch(e)
    }
}

/// Why [`Coordinator::submit`](crate::Coordinator::submit) refused a request (nothing was queued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// The chosen lane is at capacity: try again after `retry_after` (HTTP 429 + Retry-After).
    Overloaded {
        /// An estimate of when capacity frees up (queue depth × recent batch time).
        retry_after: Duration,
    },
    /// No GPU is usable right now (HTTP 503).
    Unavailable,
    /// The coordinator is shutting down (HTTP 503).
    ShuttingDown,
    /// The request's token cost exceeds the per-request limit: it could never run (HTTP 400/413).
    TooLarge {
        /// The request's cost.
        tokens: u64,
        /// The limit (`max_request_tokens`).
        limit: u64,
    },
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overloaded { retry_after } => write!(
                f,
                "overloaded: the queue is full, retry after {} ms",
                retry_after.as_millis()
            ),
            Self::Unavailable => f.write_str("unavailable: no usable gpu"),
            Self::ShuttingDown => f.write_str("shutting down: not accepting requests"),
            Self::TooLarge { tokens, limit } => write!(
                f,
                "request too large: {tokens} tokens exceed the limit of {limit}"
            ),
        }
    }
}

impl std::error::Error for Rejected {}
