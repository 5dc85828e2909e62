//! Batch limits and their validating builder.
use std::fmt;
use std::time::Duration;

/// The largest `max_batch_size` accepted (a sanity bound, not a tuning hint).
pub const MAX_BATCH_SIZE_LIMIT: usize = 1 << 16;
/// The longest `max_wait` accepted: a batch should never wait a minute to fill.
pub const MAX_WAIT_LIMIT: Duration = Duration::from_secs(60);

/// When a lane closes a batch: at `max_batch_size` requests, at `max_batch_tokens` summed token
/// cost, or `max_wait` after its first request arrived, whichever comes first.
///
/// Build one with [`BatchConfig::builder`]; invalid combinations are a [`BatchConfigError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    max_batch_size: usize,
    max_batch_tokens: u64,
    max_request_tokens: u64,
    max_wait: Duration,
}

impl BatchConfig {
    /// A builder starting from the defaults (32 requests, unlimited tokens, 2 ms max wait).
    pub fn builder() -> BatchConfigBuilder {
        BatchConfigBuilder::default()
    }

    /// Most requests in one batch (at least 1).
    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    /// Most summed token cost in one batch (at least 1; `u64::MAX` means unlimited).
    pub fn max_batch_tokens(&self) -> u64 {
        self.max_batch_tokens
    }

    /// Most token cost of one request; never more than [`max_batch_tokens`](Self::max_batch_tokens),
    /// so every admitted request fits a batch on its own.
    pub fn max_request_tokens(&self) -> u64 {
        self.max_request_tokens
    }

    /// Longest a batch waits, after its first request arrived, for more requests.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: u64::MAX,
            max_request_tokens: u64::MAX,
            max_wait: Duration::from_millis(2),
        }
    }
}

/// Builder for [`BatchConfig`] (by-value setters, validation in [`build`](Self::build)).
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchConfigBuilder {
    max_batch_size: Option<usize>,
    max_batch_tokens: Option<u64>,
    max_request_tokens: Option<u64>,
    max_wait: Option<Duration>,
}

impl BatchConfigBuilder {
    /// Most requests in one batch. Default 32.
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = Some(n);
        self
    }

    /// Token budget of one batch. Default unlimited.
    pub fn max_batch_tokens(mut self, tokens: u64) -> Self {
        self.max_batch_tokens = Some(tokens);
        self
    }

    /// Largest token cost of a single request. Default: the batch token budget.
    pub fn max_request_tokens(mut self, tokens: u64) -> Self {
        self.max_request_tokens = Some(tokens);
        self
    }

    /// Longest wait for a batch to fill, counted from its first request's arrival. Default 2 ms;
    /// zero means "never wait: run whatever is queued".
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = Some(wait);
        self
    }

    /// Validates the limits.
    pub fn build(self) -> Result<BatchConfig, BatchConfigError> {
        let d = BatchConfig::default();
        let max_batch_size = self.max_batch_size.unwrap_or(d.max_batch_size);
        if max_batch_size == 0 {
            return Err(BatchConfigError::ZeroBatchSize);
        }
        if max_batch_size > MAX_BATCH_SIZE_LIMIT {
            return Err(BatchConfigError::BatchSizeTooLarge(max_batch_size));
        }
        let max_batch_tokens = self.max_batch_tokens.unwrap_or(d.max_batch_tokens);
        if max_batch_tokens == 0 {
            return Err(BatchConfigError::ZeroTokenBudget);
        }
        let max_request_tokens = self.max_request_tokens.unwrap_or(max_batch_tokens);
        if max_request_tokens == 0 {
            return Err(BatchConfigError::ZeroRequestTokens);
        }
        if max_request_tokens > max_batch_tokens {
            return Err(BatchConfigError::RequestLargerThanBatch {
                request: max_request_tokens,
                batch: max_batch_tokens,
            });
        }
        let max_wait = self.max_wait.unwrap_or(d.max_wait);
        if max_wait > MAX_WAIT_LIMIT {
            return Err(BatchConfigError::WaitTooLong(max_wait));
        }
        Ok(BatchConfig {
            max_batch_size,
            max_batch_tokens,
            max_request_tokens,
            max_wait,
        })
    }
}

/// Why a [`BatchConfigBuilder`] refused its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchConfigError {
    /// `max_batch_size` was 0.
    ZeroBatchSize,
    /// `max_batch_size` exceeded [`MAX_BATCH_SIZE_LIMIT`].
    BatchSizeTooLarge(usize),
    /// `max_batch_tokens` was 0.
    ZeroTokenBudget,
    /// `max_request_tokens` was 0.
    ZeroRequestTokens,
    /// A single request could exceed the whole batch budget and never be scheduled.
    RequestLargerThanBatch {
        /// The per-request limit asked for.
        request: u64,
        /// The batch token budget.
        batch: u64,
    },
    /// `max_wait` exceeded [`MAX_WAIT_LIMIT`].
    WaitTooLong(Duration),
}

impl fmt::Display for BatchConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroBatchSize => f.write_str("max batch size must be at least 1"),
            Self::BatchSizeTooLarge(n) => write!(
                f,
                "max batch size {n} exceeds the limit of {MAX_BATCH_SIZE_LIMIT}"
            ),
            Self::ZeroTokenBudget => f.write_str("max batch tokens must be at least 1"),
            Self::ZeroRequestTokens => f.write_str("max request tokens must be at least 1"),
            Self::RequestLargerThanBatch { request, batch } => write!(
                f,
                "max request tokens ({request}) exceed max batch tokens ({batch}): such a request could never run"
            ),
            Self::WaitTooLong(w) => write!(
                f,
                "max wait {w:?} exceeds the limit of {MAX_WAIT_LIMIT:?}"
            ),
        }
    }
}

impl std::error::Error for BatchConfigError {}
