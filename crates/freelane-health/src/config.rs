//! [`HealthConfig`]: the thresholds of the health state machine, built and validated by
//! [`HealthConfigBuilder`].

use std::fmt;
use std::time::Duration;

/// Thresholds of the health state machine (see the [crate docs](crate) for the transitions).
///
/// Build with [`HealthConfig::builder`]; [`HealthConfig::default`] gives the defaults listed
/// on each builder method.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub(crate) degrade_after_failures: u32,
    pub(crate) unhealthy_after_failures: u32,
    pub(crate) degraded_error_rate: f64,
    pub(crate) unhealthy_error_rate: f64,
    pub(crate) ewma_alpha: f64,
    pub(crate) recover_after_successes: u32,
    pub(crate) recover_after_heartbeats: u32,
    pub(crate) heartbeat_timeout_ns: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            degrade_after_failures: 3,
            unhealthy_after_failures: 6,
            degraded_error_rate: 0.25,
            unhealthy_error_rate: 0.5,
            ewma_alpha: 0.2,
            recover_after_successes: 5,
            recover_after_heartbeats: 3,
            heartbeat_timeout_ns: 5_000_000_000,
        }
    }
}

impl HealthConfig {
    /// The smallest `ewma_alpha` the builder accepts (`1e-9`).
    pub const MIN_EWMA_ALPHA: f64 = 1e-9;

    /// A builder starting from the defaults.
    pub fn builder() -> HealthConfigBuilder {
        HealthConfigBuilder {
            config: HealthConfig::default(),
        }
    }

    /// Consecutive failures that move a Healthy GPU to Degraded.
    pub fn degrade_after_failures(&self) -> u32 {
        self.degrade_after_failures
    }
    /// Consecutive failures that move a Degraded GPU to Unhealthy.
    pub fn unhealthy_after_failures(&self) -> u32 {
        self.unhealthy_after_failures
    }
    /// Error-rate EWMA at or above which a Healthy GPU becomes Degraded.
    pub fn degraded_error_rate(&self) -> f64 {
        self.degraded_error_rate
    }
    /// Error-rate EWMA at or above which a Degraded GPU becomes Unhealthy.
    pub fn unhealthy_error_rate(&self) -> f64 {
        self.unhealthy_error_rate
    }
    /// Weight of the newest sample in the error-rate and latency EWMAs.
    pub fn ewma_alpha(&self) -> f64 {
        self.ewma_alpha
    }
    /// Consecutive successes that move Degraded or Recovering back to Healthy.
    pub fn recover_after_successes(&self) -> u32 {
        self.recover_after_successes
    }
    /// Heartbeats an Unhealthy GPU must deliver (without a timeout in between) to be probed
    /// again (Recovering).
    pub fn recover_after_heartbeats(&self) -> u32 {
        self.recover_after_heartbeats
    }
    /// Silence after the last heartbeat that makes a GPU Unhealthy.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_nanos(self.heartbeat_timeout_ns)
    }

    /// Whether `silence_ns` since the last heartbeat reaches the timeout. A timeout clamped to
    /// `u64::MAX` ns never fires (a clock that saturates at `u64::MAX` ns since the epoch would
    /// otherwise reach it).
    pub(crate) fn is_silent(&self, silence_ns: u64) -> bool {
        self.heartbeat_timeout_ns != u64::MAX && silence_ns >= self.heartbeat_timeout_ns
    }
}

/// Builder of [`HealthConfig`] (by-value setters, validated by [`build`](Self::build)).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct HealthConfigBuilder {
    config: HealthConfig,
}

impl HealthConfigBuilder {
    /// Consecutive failures that move Healthy to Degraded (default 3; at least 1).
    pub fn degrade_after_failures(mut self, n: u32) -> Self {
        self.config.degrade_after_failures = n;
        self
    }
    /// Consecutive failures that move Degraded to Unhealthy (default 6; more than
    /// `degrade_after_failures`).
    pub fn unhealthy_after_failures(mut self, n: u32) -> Self {
        self.config.unhealthy_after_failures = n;
        self
    }
    /// Error-rate EWMA that degrades a Healthy GPU (default 0.25; in `(0, unhealthy_error_rate)`).
    pub fn degraded_error_rate(mut self, rate: f64) -> Self {
        self.config.degraded_error_rate = rate;
        self
    }
    /// Error-rate EWMA that makes a Degraded GPU Unhealthy (default 0.5; at most 1). 1.0 is
    /// reachable: the EWMA is snapped to 1 once it is within `f64::EPSILON / ewma_alpha` of it
    /// (in floating point `r += alpha * (1 - r)` stops moving about a quarter of that distance
    /// below 1, e.g. at 1 - 1.1e-15 for alpha 0.05).
    pub fn unhealthy_error_rate(mut self, rate: f64) -> Self {
        self.config.unhealthy_error_rate = rate;
        self
    }
    /// Weight of the newest sample in the EWMAs (default 0.2; in
    /// `[`[`MIN_EWMA_ALPHA`](HealthConfig::MIN_EWMA_ALPHA)`, 1]`).
    pub fn ewma_alpha(mut self, alpha: f64) -> Self {
        self.config.ewma_alpha = alpha;
        self
    }
    /// Consecutive successes that restore Healthy from Degraded or Recovering (default 5; at
    /// least 1).
    pub fn recover_after_successes(mut self, n: u32) -> Self {
        self.config.recover_after_successes = n;
        self
    }
    /// Heartbeats that move Unhealthy to Recovering (default 3; at least 1).
    pub fn recover_after_heartbeats(mut self, n: u32) -> Self {
        self.config.recover_after_heartbeats = n;
        self
    }
    /// Silence after the last heartbeat that makes a GPU Unhealthy (default 5 s; at least 1 ns).
    /// Longer than about 584 years (`u64::MAX` nanoseconds) is clamped to that, i.e. a timeout
    /// that never fires.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.config.heartbeat_timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// Validates the thresholds.
    pub fn build(self) -> Result<HealthConfig, ConfigError> {
        let c = self.config;
        if c.degrade_after_failures == 0 {
            return Err(ConfigError::ZeroThreshold("degrade_after_failures"));
        }
        if c.unhealthy_after_failures <= c.degrade_after_failures {
            return Err(ConfigError::FailureThresholdsOutOfOrder {
                degrade: c.degrade_after_failures,
                unhealthy: c.unhealthy_after_failures,
            });
        }
        let in_unit = |x: f64| x > 0.0 && x <= 1.0;
        if !in_unit(c.degraded_error_rate) || !in_unit(c.unhealthy_error_rate) {
            return Err(ConfigError::RateOutOfRange {
                degraded: c.degraded_error_rate,
                unhealthy: c.unhealthy_error_rate,
            });
        }
        if c.degraded_error_rate >= c.unhealthy_error_rate {
            return Err(ConfigError::RatesOutOfOrder {
                degraded: c.degraded_error_rate,
                unhealthy: c.unhealthy_error_rate,
            });
        }
        if !(c.ewma_alpha >= HealthConfig::MIN_EWMA_ALPHA && c.ewma_alpha <= 1.0) {
            return Err(ConfigError::AlphaOutOfRange(c.ewma_alpha));
        }
        if c.recover_after_successes == 0 {
            return Err(ConfigError::ZeroThreshold("recover_after_successes"));
        }
        if c.recover_after_heartbeats == 0 {
            return Err(ConfigError::ZeroThreshold("recover_after_heartbeats"));
        }
        if c.heartbeat_timeout_ns == 0 {
            return Err(ConfigError::ZeroThreshold("heartbeat_timeout"));
        }
        Ok(c)
    }
}

/// Why a [`HealthConfig`] was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// A count or duration that must be positive is zero (names the setting).
    ZeroThreshold(&'static str),
    /// `unhealthy_after_failures` must exceed `degrade_after_failures`.
    FailureThresholdsOutOfOrder {
        /// `degrade_after_failures`.
        degrade: u32,
        /// `unhealthy_after_failures`.
        unhealthy: u32,
    },
    /// An error-rate threshold is not in `(0, 1]` (or is NaN).
    RateOutOfRange {
        /// `degraded_error_rate`.
        degraded: f64,
        /// `unhealthy_error_rate`.
        unhealthy: f64,
    },
    /// `degraded_error_rate` must be below `unhealthy_error_rate`.
    RatesOutOfOrder {
        /// `degraded_error_rate`.
        degraded: f64,
        /// `unhealthy_error_rate`.
        unhealthy: f64,
    },
    /// `ewma_alpha` is not in `[1e-9, 1]` (or is NaN).
    /// ([`HealthConfig::MIN_EWMA_ALPHA`]: a smaller weight is useless, an average over more
    /// than a billion samples, and would defeat the snap that makes an error rate of 1.0
    /// reachable.)
    AlphaOutOfRange(f64),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroThreshold(name) => write!(f, "{name} must be greater than zero"),
            ConfigError::FailureThresholdsOutOfOrder { degrade, unhealthy } => write!(
                f,
                "unhealthy_after_failures ({unhealthy}) must be greater than degrade_after_failures ({degrade})"
            ),
            ConfigError::RateOutOfRange {
                degraded,
                unhealthy,
            } => write!(
                f,
                "error-rate thresholds must be in (0, 1] (degraded {degraded}, unhealthy {unhealthy})"
            ),
            ConfigError::RatesOutOfOrder {
                degraded,
                unhealthy,
            } => write!(
                f,
                "degraded_error_rate ({degraded}) must be below unhealthy_error_rate ({unhealthy})"
            ),
            ConfigError::AlphaOutOfRange(a) => {
                write!(f, "ewma_alpha ({a}) must be in [1e-9, 1]")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build() {
        assert_eq!(
            HealthConfig::builder().build().unwrap(),
            HealthConfig::default()
        );
    }

    #[test]
    fn invalid_thresholds_are_rejected_with_clear_errors() {
        let e = HealthConfig::builder()
            .degrade_after_failures(0)
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "degrade_after_failures must be greater than zero"
        );
        let e = HealthConfig::builder()
            .degrade_after_failures(4)
            .unhealthy_after_failures(4)
            .build()
            .unwrap_err();
        assert!(matches!(e, ConfigError::FailureThresholdsOutOfOrder { .. }));
        let e = HealthConfig::builder()
            .degraded_error_rate(f64::NAN)
            .build()
            .unwrap_err();
        assert!(matches!(e, ConfigError::RateOutOfRange { .. }));
        let e = HealthConfig::builder()
            .degraded_error_rate(0.6)
            .build()
            .unwrap_err();
        assert!(matches!(e, ConfigError::RatesOutOfOrder { .. }));
        let e = HealthConfig::builder().ewma_alpha(0.0).build().unwrap_err();
        assert_eq!(e.to_string(), "ewma_alpha (0) must be in [1e-9, 1]");
        for bad in [1e-10, f64::NAN, -0.5, 1.5] {
            let e = HealthConfig::builder().ewma_alpha(bad).build().unwrap_err();
            assert!(matches!(e, ConfigError::AlphaOutOfRange(_)), "{bad}: {e}");
        }
        for good in [HealthConfig::MIN_EWMA_ALPHA, 0.5, 1.0] {
            HealthConfig::builder().ewma_alpha(good).build().unwrap();
        }
        let e = HealthConfig::builder()
            .heartbeat_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e, ConfigError::ZeroThreshold("heartbeat_timeout"));
        for e in [
            HealthConfig::builder().recover_after_successes(0).build(),
            HealthConfig::builder().recover_after_heartbeats(0).build(),
        ] {
            assert!(matches!(e, Err(ConfigError::ZeroThreshold(_))));
        }
    }
}
