//! The CUDA executor (issue 8): the built-in model's decode steps on NVIDIA GPUs through
//! `cudarc`, one lane per device.
//!
//! cudarc is built with `dynamic-loading`: `libcuda`, `libnvrtc` and `libcublas` are opened at
//! run time, so the binary builds, starts and passes its tests on machines without CUDA.
//! [`open_devices`] probes first and answers [`CudaUnavailable`] ("no cuda driver found ...")
//! instead of letting cudarc panic on a missing library; `--executor auto` then falls back to
//! the CPU engine (see [`super::select`]).
//!
//! # Guarantees
//! - Probing never panics or aborts: library presence is checked with cudarc's
//!   `is_culib_present` before any CUDA symbol is touched, and every probe and engine build runs
//!   under `catch_unwind` (a missing symbol in an old driver becomes an error, not a crash).
//! - One engine per device, built on its lane's thread: its own context handle, its own stream,
//!   its own cuBLAS handle, the weights uploaded once, and device buffers reused across steps.
//!   Buffers are sized for the server's `--max-batch-size` rows ([`open_devices_with_rows`],
//!   as [`super::select`] calls it; [`DEFAULT_ROWS`] through [`open_devices`]) and grow
//!   (doubling) only if a step ever brings more rows, so a lane allocates nothing per step.
//! - Per step only the inputs (token ids, per-row temperature and uniform, packed into one
//!   buffer) go host -> device and only the `B` next tokens come back.
//! - A failed CUDA call returns an [`EngineError`](super::engine::EngineError) (the lane is
//!   marked unhealthy and the coordinator's failover moves its work to the other lanes); it
//!   never panics the lane.
//! - Temperature 0 picks the same token as [`crate::model::sample_row`] on the same logits
//!   (argmax, ties to the lowest id, NaN never wins). With temperature > 0 the device uses the
//!   same host-drawn uniform and the same summation order, so it can differ from the CPU only
//!   by the last-ulp differences of `expf` and of the GEMMs' summation order.
//!
//! # Implementation
//! A step over `B` rows (all row-major `f32`, see [`crate::model`]):
//! 1. one `memcpy_htod` of the packed inputs `[temperature, uniform] x B ++ ids[B, k]`;
//! 2. kernel `gather_embed`: `X[B, k*d] = embed[ids]`;
//! 3. cuBLAS sgemm `H = X · W1`, kernel `bias_relu`: `H = relu(H + b1)`;
//! 4. cuBLAS sgemm `L = H · W2`;
//! 5. kernel `bias_sample` (one 256-thread block per row): `L += b2`, tree argmax with
//!    (value, lowest id) order, and for temperature > 0 the inverse-CDF pick by one thread over
//!    the row's `exp` values in id order, exactly like `sample_row`;
//! 6. one `memcpy_dtoh` of `next[B]`, then a stream synchronize.
//!
//! Kernels: [`probe`] compiles [`kernels::SOURCE`] to PTX once (the environment check); each
//! engine then compiles it to a CUBIN for its device's compute capability and loads that (no
//! PTX JIT, so an NVRTC newer than the driver still works), falling back to the PTX.
//!
//! cuBLAS is column-major; a row-major product `C = A · B` is computed as the column-major
//! `C^T = B^T · A^T` by swapping the operands ([`gemm::row_major`]).
//!
//! Device selection: the driver applies `CUDA_VISIBLE_DEVICES` itself (ordinals are renumbered),
//! and `--gpus N` takes the first `N` visible devices ([`select_ordinals`]).

mod engine;
pub mod gemm;
pub mod kernels;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::engine::StepEngine;
use crate::model::Weights;

pub use engine::CudaEngine;

/// Rows the device buffers are sized for at start (the server's default `--max-batch-size`).
pub const DEFAULT_ROWS: usize = 32;

/// Why the CUDA executor cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaUnavailable {
    /// The reason, lowercase (e.g. "no cuda driver found").
    pub reason: String,
}

impl CudaUnavailable {
    fn new(reason: impl Into<String>) -> Self {
        CudaUnavailable {
            reason: reason.into(),
        }
    }
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

/// What [`probe`] found: the number of visible devices and the compiled kernels.
#[derive(Debug, Clone)]
pub struct CudaRuntime {
    /// Devices the driver reports (after `CUDA_VISIBLE_DEVICES`).
    pub devices: usize,
    /// The element-wise kernels, compiled once by NVRTC for every engine to load.
    pub kernels: kernels::CompiledKernels,
}

/// Runs `f`, turning a panic inside cudarc (e.g. a symbol missing from an old library) into an
/// error message.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(format!("{what} panicked: {msg}"))
        }
    }
}

/// Which shared libraries can be opened, in the order they are needed.
fn libraries_present() -> [(&'static str, bool); 3] {
    // SAFETY: `is_culib_present` only tries `dlopen` on cudarc's candidate names and drops the
    // handles again; loading the vendor libraries runs their initialisers, which is what any
    // CUDA program does, and no symbol is called.
    unsafe {
        [
            ("libcuda", cudarc::driver::sys::is_culib_present()),
            ("libnvrtc", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas", cudarc::cublas::sys::is_culib_present()),
        ]
    }
}

/// Checks that the CUDA driver, NVRTC and cuBLAS can be loaded, counts the visible devices and
/// compiles the kernels. Never panics.
pub fn probe() -> Result<CudaRuntime, CudaUnavailable> {
    let present = guarded("loading cuda libraries", || Ok(libraries_present()))
        .map_err(CudaUnavailable::new)?;
    for (name, ok) in present {
        if !ok {
            let what = match name {
                "libcuda" => "no cuda driver found",
                "libnvrtc" => "cuda driver found but no nvrtc library",
                _ => "cuda driver found but no cublas library",
            };
            return Err(CudaUnavailable::new(format!(
                "{what} ({name} could not be loaded; check LD_LIBRARY_PATH)"
            )));
        }
    }
    let devices = guarded("cuInit", || {
        cudarc::driver::CudaContext::device_count().map_err(|e| format!("{e}"))
    })
    .map_err(|e| CudaUnavailable::new(no_device_reason(&e, visible_devices_env().as_deref())))?;
    let devices = usize::try_from(devices).unwrap_or(0);
    if devices == 0 {
        return Err(CudaUnavailable::new(no_device_reason(
            "device count is 0",
            visible_devices_env().as_deref(),
        )));
    }
    let kernels = guarded("nvrtc", kernels::CompiledKernels::compile)
        .map_err(|e| CudaUnavailable::new(format!("cannot compile the cuda kernels: {e}")))?;
    Ok(CudaRuntime { devices, kernels })
}

fn visible_devices_env() -> Option<String> {
    std::env::var("CUDA_VISIBLE_DEVICES").ok()
}

/// The reason text when the driver loads but shows no device.
pub fn no_device_reason(detail: &str, visible: Option<&str>) -> String {
    match visible {
        Some(v) => format!("no cuda device visible ({detail}; CUDA_VISIBLE_DEVICES={v:?})"),
        None => format!("no cuda device visible ({detail})"),
    }
}

/// The device ordinals to drive: the first `gpus` of `available` visible devices (all of them
/// when `None`).
pub fn select_ordinals(available: usize, gpus: Option<usize>) -> Result<Vec<usize>, String> {
    match gpus {
        None if available == 0 => Err("no cuda device visible".to_string()),
        None => Ok((0..available).collect()),
        Some(0) => Err("--gpus must be at least 1".to_string()),
        Some(n) if n > available => Err(format!(
            "--gpus {n} requested but only {available} cuda device(s) are visible"
        )),
        Some(n) => Ok((0..n).collect()),
    }
}

/// Opens `gpus` CUDA devices (all visible ones when `None`) and returns one engine factory per
/// device, each owning a copy of the weights on its device. Buffers start sized for
/// [`DEFAULT_ROWS`] rows.
pub fn open_devices(
    weights: &Arc<Weights>,
    gpus: Option<usize>,
) -> Result<Vec<EngineFactory>, CudaUnavailable> {
    open_devices_with_rows(weights, gpus, DEFAULT_ROWS)
}

/// [`open_devices`] with the device buffers sized for `rows` rows from the start (pass the
/// server's `--max-batch-size` so no lane ever grows them).
pub fn open_devices_with_rows(
    weights: &Arc<Weights>,
    gpus: Option<usize>,
    rows: usize,
) -> Result<Vec<EngineFactory>, CudaUnavailable> {
    let runtime = probe()?;
    let ordinals = select_ordinals(runtime.devices, gpus).map_err(CudaUnavailable::new)?;
    Ok(ordinals
        .into_iter()
        .map(|ordinal| {
            let w = weights.clone();
            let k = runtime.kernels.clone();
            Box::new(move || {
                let engine = guarded("cuda engine start", || {
                    CudaEngine::new(w, ordinal, &k, rows).map_err(|e| e.message)
                })
                .map_err(super::EngineError::new)?;
                Ok(Box::new(engine) as Box<dyn StepEngine>)
            }) as EngineFactory
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_ordinals_takes_all_visible_devices_by_default() {
        assert_eq!(select_ordinals(3, None).unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn select_ordinals_takes_the_first_n_devices_for_gpus_n() {
        assert_eq!(select_ordinals(4, Some(2)).unwrap(), vec![0, 1]);
        assert_eq!(select_ordinals(4, Some(4)).unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn select_ordinals_rejects_more_gpus_than_visible_or_zero() {
        let e = select_ordinals(2, Some(3)).unwrap_err();
        assert!(e.contains("only 2 cuda device"), "{e}");
        assert!(select_ordinals(2, Some(0)).is_err());
        assert!(select_ordinals(0, None).is_err());
    }

    #[test]
    fn no_device_reason_names_cuda_visible_devices_when_set() {
        let r = no_device_reason("device count is 0", Some(""));
        assert!(r.contains("CUDA_VISIBLE_DEVICES=\"\""), "{r}");
        let r = no_device_reason("device count is 0", None);
        assert!(!r.contains("CUDA_VISIBLE_DEVICES"), "{r}");
    }

    #[test]
    fn guarded_turns_a_panic_into_an_error() {
        let r: Result<(), String> = guarded("probe", || panic!("symbol cuFoo not found"));
        let e = r.unwrap_err();
        assert!(e.contains("probe panicked") && e.contains("cuFoo"), "{e}");
    }

    #[test]
    fn probe_never_panics_and_explains_itself() {
        // On a machine without CUDA this must be a clean error; with CUDA it must find devices.
        match probe() {
            Ok(rt) => assert!(rt.devices > 0),
            Err(e) => {
                let s = e.to_string();
                assert!(s.starts_with("cuda executor not available: "), "{s}");
                eprintln!("probe on this machine: {s}");
            }
        }
    }

    #[test]
    fn open_devices_without_cuda_reports_unavailable_not_panics() {
        let w = Arc::new(Weights::generate(1));
        match open_devices(&w, Some(1)) {
            Ok(f) => assert_eq!(f.len(), 1),
            Err(e) => assert!(!e.reason.is_empty()),
        }
    }
}
