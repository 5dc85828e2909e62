//! The CUDA engine hook (issue 8).
//!
//! TODO(issue 8): implement a `CudaEngine: StepEngine` per device (context + stream per lane,
//! weights from [`crate::model::Weights`] uploaded once, cuBLAS GEMMs `X[B,k*d]·W1[k*d,h]` and
//! `H[B,h]·W2[h,256]`, NVRTC kernels for the gather / bias+relu / argmax-or-sample) and make
//! [`open_devices`] return one engine factory per selected device. Until then it reports that the
//! cuda executor is not available, and `--executor auto` falls back to the CPU engine.

use std::sync::Arc;

use super::engine::StepEngine;
use crate::model::Weights;

/// Why the CUDA executor cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaUnavailable {
    /// The reason, lowercase (e.g. "no cuda driver found").
    pub reason: String,
}

impl std::fmt::Display for CudaUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cuda executor not available: {}", self.reason)
    }
}

impl std::error::Error for CudaUnavailable {}

/// Builds one lane's engine; called on that lane's own thread.
pub type EngineFactory =
    Box<dyn FnOnce() -> Result<Box<dyn StepEngine>, super::EngineError> + Send>;

/// Opens `gpus` CUDA devices (all visible ones when `None`) and returns one engine factory per
/// device, each owning a copy of the weights on its device.
pub fn open_devices(
    _weights: &Arc<Weights>,
    _gpus: Option<usize>,
) -> Result<Vec<EngineFactory>, CudaUnavailable> {
    // TODO(issue 8): probe the driver through cudarc (dynamic loading), count devices honouring
    // CUDA_VISIBLE_DEVICES and --gpus, and build the engines.
    Err(CudaUnavailable {
        reason: "not implemented in this build (issue 8)".to_string(),
    })
}
