//! Executors: the sim, CPU and CUDA backends behind the coordinator's executor trait.
//!
//! Layering (what issue 8's CUDA engine plugs into):
//! - [`StepEngine`]: one decode step over `[B, k]` contexts -> `B` next tokens. Implemented by
//!   [`sim::SimEngine`], [`cpu::CpuEngine`] and (issue 8) the CUDA engine behind [`cuda`].
//! - [`decode::Decoder`]: the active sequences of a lane (iteration-level batching, streaming).
//! - [`lane::LaneExecutor`]: runs a coordinator batch through a decoder (joins, leaves,
//!   cancellation, refill between steps, failover on engine errors).
//! - [`select::select`]: `--executor auto|cpu|cuda|sim` -> one engine factory per lane.

pub mod cpu;
pub mod cuda;
pub mod decode;
pub mod engine;
pub mod lane;
pub mod select;
pub mod sim;

pub use engine::{EngineError, SampleParams, StepEngine};
