//! The CPU engine: the built-in model's forward pass (two `matrixmultiply` GEMMs per step).

use std::sync::Arc;

use super::engine::{EngineError, SampleParams, StepEngine};
use crate::model::{forward, sample_row, Scratch, Weights, VOCAB};

/// Runs decode steps of the built-in model on the calling thread.
#[derive(Debug)]
pub struct CpuEngine {
    weights: Arc<Weights>,
    scratch: Scratch,
}

impl CpuEngine {
    /// An engine over shared weights (one per lane; the weights are read-only).
    pub fn new(weights: Arc<Weights>) -> Self {
        CpuEngine {
            weights,
            scratch: Scratch::default(),
        }
    }
}

impl StepEngine for CpuEngine {
    fn context(&self) -> usize {
        self.weights.dims().context
    }

    fn step(
        &mut self,
        ids: &[u8],
        params: &[SampleParams],
        next: &mut [u8],
    ) -> Result<(), EngineError> {
        let k = self.context();
        if ids.len() != params.len() * k || next.len() != params.len() {
            return Err(EngineError::new(format!(
                "step shape mismatch: {} ids, {} params, {} outputs, k = {k}",
                ids.len(),
                params.len(),
                next.len()
            )));
        }
        forward(&self.weights, ids, &mut self.scratch);
        for ((row, p), out) in self
            .scratch
            .logits()
            .chunks_exact(VOCAB)
            .zip(params)
            .zip(next)
        {
            *out = sample_row(row, p.temperature, p.uniform);
        }
        Ok(())
    }
}
