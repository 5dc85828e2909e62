//! The per-lane decode engine: what a backend (sim, CPU, CUDA) implements.
//!
//! The iteration-level batching loop ([`super::decode`]) owns the sequences: it admits new ones
//! between steps, builds the `[B, k]` context ids, calls [`StepEngine::step`] once per decode step
//! and retires sequences that finished. A backend only turns contexts into next tokens, so the CPU
//! and CUDA executors share everything except the math.

use std::fmt;

/// How one row picks its token (see [`crate::model::sample_row`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// 0 = greedy; otherwise softmax temperature.
    pub temperature: f32,
    /// A uniform in `[0, 1)` drawn on the host from the request's own seeded stream.
    pub uniform: f32,
}

/// A failed decode step. The lane's requests are handed back for failover; the lane is reported
/// unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    /// What went wrong, lowercase (e.g. "simulated gpu 1 failed after 100 steps").
    pub message: String,
}

impl EngineError {
    /// An error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        EngineError {
            message: message.into(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EngineError {}

/// One lane's compute: a decode step over a batch of contexts.
///
/// Implemented by [`super::sim::SimEngine`], [`super::cpu::CpuEngine`] and (issue 8) the CUDA
/// engine in [`super::cuda`]. Called from the lane's own thread only, so `&mut self` state
/// (device buffers, scratch) needs no synchronisation.
pub trait StepEngine: Send + 'static {
    /// Context length `k`: how many trailing bytes of each sequence [`step`](Self::step) reads.
    fn context(&self) -> usize;

    /// One decode step. `ids` is `[B, k]` row-major (the last `k` bytes of each active sequence,
    /// left-padded with 0), `params` has `B` entries, and `next` (length `B`) receives each row's
    /// next token. `B` is at most the lane's max batch size and changes between calls as
    /// sequences join and leave.
    fn step(
        &mut self,
        ids: &[u8],
        params: &[SampleParams],
        next: &mut [u8],
    ) -> Result<(), EngineError>;
}
