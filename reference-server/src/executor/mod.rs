//! Executors: the sim, CPU and CUDA backends behind the coordinator's executor trait.

pub mod cpu;
pub mod cuda;
pub mod decode;
pub mod engine;
pub mod sim;

pub use engine::{EngineError, SampleParams, StepEngine};
