//! `--executor auto|cpu|cuda|sim`: which engine each lane gets.

use std::sync::Arc;

use freelane_metrics::Histogram;

use super::cpu::CpuEngine;
use super::cuda::{self, EngineFactory};
use super::lane::{ExecStats, ServerExecutor};
use super::StepEngine;
use crate::config::{Config, ExecutorKind, DEFAULT_CPU_LANES, DEFAULT_SIM_LANES};
use crate::model::Weights;

/// One CPU engine factory per lane, all sharing `weights`.
pub fn cpu_lanes(weights: &Arc<Weights>, n: usize) -> Vec<EngineFactory> {
    (0..n)
        .map(|_| {
            let w = weights.clone();
            Box::new(move || Ok(Box::new(CpuEngine::new(w)) as Box<dyn StepEngine>))
                as EngineFactory
        })
        .collect()
}

/// The executor for `config`, and why `auto` did not pick CUDA (for the caller to log), if it
/// did not. `cuda` fails with "cuda executor not available: ..." when CUDA cannot be used;
/// `auto` then falls back to the CPU model.
pub fn select(
    config: &Config,
    weights: &Arc<Weights>,
    batch_size: Option<Arc<Histogram>>,
    stats: Arc<ExecStats>,
) -> Result<(ServerExecutor, Option<String>), cuda::CudaUnavailable> {
    let cpu = |b, s| {
        let n = config.gpus.unwrap_or(DEFAULT_CPU_LANES);
        ServerExecutor::compute("cpu", cpu_lanes(weights, n), b, s)
            .with_step_timeout(config.step_timeout)
    };
    // The cuda engines size their device buffers for the largest batch up front.
    let rows = config.max_batch_size;
    Ok(match config.executor {
        ExecutorKind::Sim => {
            let n = config.gpus.unwrap_or(DEFAULT_SIM_LANES);
            (
                ServerExecutor::sim(n, config.sim_step, config.sim_fail, batch_size, stats),
                None,
            )
        }
        ExecutorKind::Cpu => (cpu(batch_size, stats), None),
        ExecutorKind::Cuda => {
            let lanes = cuda::open_devices_with_rows(weights, config.gpus, rows)?;
            (
                ServerExecutor::compute("cuda", lanes, batch_size, stats)
                    .with_step_timeout(config.step_timeout),
                None,
            )
        }
        ExecutorKind::Auto => match cuda::open_devices_with_rows(weights, config.gpus, rows) {
            Ok(lanes) => (
                ServerExecutor::compute("cuda", lanes, batch_size, stats)
                    .with_step_timeout(config.step_timeout),
                None,
            ),
            Err(e) => (cpu(batch_size, stats), Some(e.to_string())),
        },
    })
}
