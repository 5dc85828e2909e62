//! The sim engine: simulated GPUs with a step-time model and fault injection, no compute.

use std::time::Duration;

use super::engine::{EngineError, SampleParams, StepEngine};

/// Context length the sim engine reads (only the last byte matters).
const SIM_CONTEXT: usize = 1;

/// A simulated GPU. A step over `B` sequences is modelled to take `base * (1 + B / 32)` (a fixed
/// launch cost plus a per-sequence cost; [`step_time`](Self::step_time), which the lane awaits
/// with a timer instead of computing) and emits the next lowercase letter after each row's last
/// byte, so outputs are deterministic and never contain the stop token.
#[derive(Debug)]
pub struct SimEngine {
    gpu: usize,
    base: Duration,
    fail_after: Option<u64>,
    steps: u64,
}

impl SimEngine {
    /// Simulated GPU `gpu` with base step time `base`; `fail_after: Some(n)` makes every step
    /// after the `n`-th fail (a lost device).
    pub fn new(gpu: usize, base: Duration, fail_after: Option<u64>) -> Self {
        SimEngine {
            gpu,
            base,
            fail_after,
            steps: 0,
        }
    }

    /// The modelled duration of a step over `batch` sequences.
    pub fn step_time(&self, batch: usize) -> Duration {
        self.base + self.base.mul_f64(batch as f64 / 32.0)
    }
}

impl StepEngine for SimEngine {
    fn context(&self) -> usize {
        SIM_CONTEXT
    }

    fn step(
        &mut self,
        ids: &[u8],
        params: &[SampleParams],
        next: &mut [u8],
    ) -> Result<(), EngineError> {
        if let Some(n) = self.fail_after {
            if self.steps >= n {
                return Err(EngineError::new(format!(
                    "simulated gpu {} failed after {n} steps",
                    self.gpu
                )));
            }
        }
        self.steps += 1;
        debug_assert_eq!(params.len(), next.len());
        for (&last, out) in ids.iter().zip(next.iter_mut()) {
            *out = if last.is_ascii_lowercase() {
                b'a' + (last - b'a' + 1) % 26
            } else {
                b'a'
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_fails_after_the_configured_number_of_steps() {
        let mut e = SimEngine::new(1, Duration::ZERO, Some(2));
        let p = [SampleParams {
            temperature: 0.0,
            uniform: 0.0,
        }];
        let mut out = [0u8];
        assert!(e.step(b"a", &p, &mut out).is_ok());
        assert_eq!(out[0], b'b');
        assert!(e.step(b"z", &p, &mut out).is_ok());
        assert_eq!(out[0], b'a');
        let err = e.step(b"a", &p, &mut out).unwrap_err();
        assert_eq!(err.to_string(), "simulated gpu 1 failed after 2 steps");
    }

    #[test]
    fn sim_step_time_grows_with_batch() {
        let e = SimEngine::new(0, Duration::from_micros(1000), None);
        assert_eq!(e.step_time(0), Duration::from_micros(1000));
        assert_eq!(e.step_time(32), Duration::from_micros(2000));
    }
}
