//! [`CudaEngine`]: one device's decode engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, PushKernelArg};

use super::gemm::row_major;
use super::kernels::{self, CompiledKernels};
use crate::executor::{EngineError, SampleParams, StepEngine};
use crate::model::{Dims, Weights, VOCAB};

/// The per-row device buffers, sized for `rows` rows.
struct RowBuffers {
    rows: usize,
    /// Packed inputs: `[temperature, uniform] x rows` (f32) then `ids[rows, k]`.
    io: CudaSlice<u8>,
    /// `X[rows, k*d]`.
    x: CudaSlice<f32>,
    /// `H[rows, h]`.
    h: CudaSlice<f32>,
    /// `L[rows, 256]`.
    logits: CudaSlice<f32>,
    /// Next tokens `[rows]`.
    next: CudaSlice<u8>,
}

/// The built-in model on one CUDA device: weights uploaded once, buffers reused across steps,
/// two cuBLAS sgemms and three NVRTC kernels per step (see the [module docs](super)).
pub struct CudaEngine {
    ordinal: usize,
    dims: Dims,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    gather: CudaFunction,
    bias_relu: CudaFunction,
    bias_sample: CudaFunction,
    embed: CudaSlice<f32>,
    w1: CudaSlice<f32>,
    b1: CudaSlice<f32>,
    w2: CudaSlice<f32>,
    b2: CudaSlice<f32>,
    buf: RowBuffers,
    staging: Vec<u8>,
    grows: u64,
    image: &'static str,
    // Keeps the context alive (and is what every call binds to the calling thread).
    _ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for CudaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEngine")
            .field("ordinal", &self.ordinal)
            .field("dims", &self.dims)
            .field("rows", &self.buf.rows)
            .field("kernels", &self.image)
            .finish_non_exhaustive()
    }
}

/// Largest value every kernel/GEMM dimension must fit (`int` on the device).
fn to_i32(v: usize, what: &str) -> Result<i32, EngineError> {
    i32::try_from(v).map_err(|_| EngineError::new(format!("{what} = {v} does not fit in i32")))
}

impl CudaEngine {
    /// Opens device `ordinal`, uploads `weights`, loads `kernels` and allocates buffers for
    /// `rows` rows (at least 1).
    pub fn new(
        weights: Arc<Weights>,
        ordinal: usize,
        kernels: &CompiledKernels,
        rows: usize,
    ) -> Result<CudaEngine, EngineError> {
        let dims = weights.dims();
        let e = |what: &'static str| {
            move |err: cudarc::driver::DriverError| {
                EngineError::new(format!("cuda gpu {ordinal}: {what} failed: {err}"))
            }
        };
        let ctx = CudaContext::new(ordinal).map_err(e("creating the context"))?;
        // SAFETY: called before this engine creates its stream or any buffer; every buffer of
        // this engine is used only on its one stream (`self.stream`) and freed on it, so no
        // cross-stream synchronisation (what event tracking provides) is needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(e("creating the stream"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|err| {
            EngineError::new(format!(
                "cuda gpu {ordinal}: creating the cublas handle failed: {err}"
            ))
        })?;
        // SASS for this device first (no PTX JIT, robust to an nvrtc newer than the driver),
        // the shared PTX if that fails.
        let cubin = ctx
            .compute_capability()
            .map_err(|e| e.to_string())
            .and_then(|(major, minor)| kernels::compile_cubin(major, minor))
            .and_then(|c| ctx.load_module(c).map_err(|e| e.to_string()));
        let (module, image) = match cubin {
            Ok(m) => (Ok(m), "cubin"),
            Err(_) => (ctx.load_module(kernels.ptx.clone()), "ptx"),
        };
        let module = module.map_err(|err| {
            EngineError::new(format!(
                "cuda gpu {ordinal}: loading the kernels failed: {err} (if the ptx version is \
                 unsupported, libnvrtc is newer than the driver: use the libnvrtc of a cuda \
                 toolkit no newer than the driver)"
            ))
        })?;
        let [g, r, s] = kernels::NAMES;
        let gather = module.load_function(g).map_err(e("loading gather_embed"))?;
        let bias_relu = module.load_function(r).map_err(e("loading bias_relu"))?;
        let bias_sample = module.load_function(s).map_err(e("loading bias_sample"))?;
        let up = |v: &[f32]| stream.clone_htod(v).map_err(e("uploading the weights"));
        let embed = up(weights.embed())?;
        let w1 = up(weights.w1())?;
        let b1 = up(weights.b1())?;
        let w2 = up(weights.w2())?;
        let b2 = up(weights.b2())?;
        let rows = rows.max(1);
        let buf = Self::alloc_rows(&stream, ordinal, dims, rows)?;
        stream
            .synchronize()
            .map_err(e("the start-up synchronize"))?;
        Ok(CudaEngine {
            ordinal,
            dims,
            stream,
            blas,
            gather,
            bias_relu,
            bias_sample,
            embed,
            w1,
            b1,
            w2,
            b2,
            buf,
            staging: Vec::with_capacity(kernels::params_bytes(rows) + rows * dims.context),
            grows: 0,
            image,
            _ctx: ctx,
        })
    }

    fn alloc_rows(
        stream: &Arc<CudaStream>,
        ordinal: usize,
        dims: Dims,
        rows: usize,
    ) -> Result<RowBuffers, EngineError> {
        // Every device index must fit the kernels' and cuBLAS's int arithmetic.
        to_i32(
            rows * dims.input().max(dims.hidden).max(VOCAB),
            "rows x widest row",
        )?;
        let e = |err: cudarc::driver::DriverError| {
            EngineError::new(format!(
                "cuda gpu {ordinal}: allocating buffers for {rows} rows failed: {err}"
            ))
        };
        Ok(RowBuffers {
            rows,
            io: stream
                .alloc_zeros::<u8>(kernels::params_bytes(rows) + rows * dims.context)
                .map_err(e)?,
            x: stream.alloc_zeros::<f32>(rows * dims.input()).map_err(e)?,
            h: stream.alloc_zeros::<f32>(rows * dims.hidden).map_err(e)?,
            logits: stream.alloc_zeros::<f32>(rows * VOCAB).map_err(e)?,
            next: stream.alloc_zeros::<u8>(rows).map_err(e)?,
        })
    }

    /// Device ordinal (after `CUDA_VISIBLE_DEVICES`).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// How the kernels were loaded: `"cubin"` (compiled for this device) or `"ptx"` (JIT).
    pub fn kernel_image(&self) -> &'static str {
        self.image
    }

    /// Rows the device buffers currently hold.
    pub fn capacity_rows(&self) -> usize {
        self.buf.rows
    }

    /// How many times the buffers were reallocated because a step brought more rows than they
    /// held (0 once the lane runs at or below its start-up size).
    pub fn grows(&self) -> u64 {
        self.grows
    }

    fn err(&self, what: &str) -> impl Fn(cudarc::driver::DriverError) -> EngineError + '_ {
        let what = what.to_string();
        move |err| EngineError::new(format!("cuda gpu {}: {what} failed: {err}", self.ordinal))
    }

    fn ensure_rows(&mut self, rows: usize) -> Result<(), EngineError> {
        if rows <= self.buf.rows {
            return Ok(());
        }
        let new_rows = rows.next_power_of_two().max(self.buf.rows * 2);
        self.buf = Self::alloc_rows(&self.stream, self.ordinal, self.dims, new_rows)?;
        self.grows += 1;
        Ok(())
    }

    /// Enqueues the two GEMMs for `rows` rows (X and H as the buffers hold them), with
    /// `bias_relu` between them when `relu` (off for the pure-cuBLAS timing).
    fn enqueue_gemms(&mut self, rows: usize, relu: bool) -> Result<(), EngineError> {
        let Dims { hidden: h, .. } = self.dims;
        let kd = self.dims.input();
        let gemm_err = |what: &str, err: cudarc::cublas::result::CublasError| {
            EngineError::new(format!("cuda gpu {}: {what} failed: {err}", self.ordinal))
        };
        // H[rows, h] = X[rows, kd] · W1[kd, h]  (column-major: H^T = W1^T · X^T).
        let cfg1 = row_major(rows, h, kd)
            .config()
            .ok_or_else(|| EngineError::new("gemm 1 dimensions overflow i32"))?;
        // SAFETY: `row_major` maps the row-major shapes onto cuBLAS's column-major call: it
        // reads W1 (kd*h floats, all uploaded), X (rows*kd <= buffer) and writes H
        // (rows*h <= buffer); all three live on this engine's device and stream.
        unsafe { self.blas.gemm(cfg1, &self.w1, &self.buf.x, &mut self.buf.h) }
            .map_err(|e| gemm_err("gemm x*w1", e))?;
        if relu {
            let (rows_i, h_i) = (to_i32(rows, "rows")?, to_i32(h, "hidden")?);
            let mut launch = self.stream.launch_builder(&self.bias_relu);
            launch
                .arg(&mut self.buf.h)
                .arg(&self.b1)
                .arg(&rows_i)
                .arg(&h_i);
            // SAFETY: `bias_relu(float* h, const float* b, int rows, int cols)` matches the
            // argument list; it touches h[0..rows*h] (within the buffer) and b[0..h].
            unsafe { launch.launch(kernels::grid_stride(rows * h)) }
                .map_err(self.err("launching bias_relu"))?;
        }
        // L[rows, 256] = H[rows, h] · W2[h, 256].
        let cfg2 = row_major(rows, VOCAB, h)
            .config()
            .ok_or_else(|| EngineError::new("gemm 2 dimensions overflow i32"))?;
        // SAFETY: as above: reads W2 (h*256), H (rows*h), writes L (rows*256), all in bounds.
        unsafe {
            self.blas
                .gemm(cfg2, &self.w2, &self.buf.h, &mut self.buf.logits)
        }
        .map_err(|e| gemm_err("gemm h*w2", e))?;
        Ok(())
    }

    /// Runs only the two GEMMs of a `rows`-row step `iters` times and returns the mean time
    /// per step (pure cuBLAS for the decode shapes; for comparing with [`StepEngine::step`]).
    pub fn time_gemms(&mut self, rows: usize, iters: u32) -> Result<Duration, EngineError> {
        let rows = rows.max(1);
        self.ensure_rows(rows)?;
        self.enqueue_gemms(rows, false)?; // warm-up
        self.stream.synchronize().map_err(self.err("synchronize"))?;
        let t = Instant::now();
        for _ in 0..iters {
            self.enqueue_gemms(rows, false)?;
        }
        self.stream.synchronize().map_err(self.err("synchronize"))?;
        Ok(t.elapsed() / iters.max(1))
    }

    /// The logits `[rows, 256]` of the last step (bias included), copied back to the host.
    /// For tests and diagnostics; the decode path never copies logits.
    pub fn last_logits(&self, rows: usize) -> Result<Vec<f32>, EngineError> {
        if rows > self.buf.rows {
            return Err(EngineError::new(format!(
                "asked for {rows} rows of logits, buffers hold {}",
                self.buf.rows
            )));
        }
        let v = self
            .stream
            .clone_dtoh(&self.buf.logits.slice(..rows * VOCAB))
            .map_err(self.err("copying logits"))?;
        self.stream.synchronize().map_err(self.err("synchronize"))?;
        Ok(v)
    }
}

impl StepEngine for CudaEngine {
    fn context(&self) -> usize {
        self.dims.context
    }

    fn step(
        &mut self,
        ids: &[u8],
        params: &[SampleParams],
        next: &mut [u8],
    ) -> Result<(), EngineError> {
        let rows = params.len();
        let Dims {
            context: k,
            embed: d,
            ..
        } = self.dims;
        if ids.len() != rows * k || next.len() != rows {
            return Err(EngineError::new(format!(
                "step shapes disagree: {} ids, {rows} params, {} outputs (context {k})",
                ids.len(),
                next.len()
            )));
        }
        if rows == 0 {
            return Ok(());
        }
        self.ensure_rows(rows)?;
        let ids_off = kernels::pack_inputs(ids, params, &mut self.staging) as u64;
        // Pageable host memory: the copy has left `staging` when this returns.
        self.stream
            .memcpy_htod(self.staging.as_slice(), &mut self.buf.io)
            .map_err(self.err("copying inputs to the device"))?;
        let (rows_i, k_i, d_i) = (
            to_i32(rows, "rows")?,
            to_i32(k, "context")?,
            to_i32(d, "embed")?,
        );
        {
            let mut launch = self.stream.launch_builder(&self.gather);
            launch
                .arg(&self.buf.io)
                .arg(&ids_off)
                .arg(&self.embed)
                .arg(&mut self.buf.x)
                .arg(&rows_i)
                .arg(&k_i)
                .arg(&d_i);
            // SAFETY: matches `gather_embed(const u8* io, u64 ids_off, const float* embed,
            // float* x, int rows, int k, int d)`; ids lie at io[ids_off..ids_off + rows*k]
            // (just copied), every id < 256 indexes the [256, d] table, and x[0..rows*k*d] is
            // within the buffer.
            unsafe { launch.launch(kernels::grid_stride(rows * k * d)) }
                .map_err(self.err("launching gather_embed"))?;
        }
        self.enqueue_gemms(rows, true)?;
        {
            let mut launch = self.stream.launch_builder(&self.bias_sample);
            launch
                .arg(&mut self.buf.logits)
                .arg(&self.b2)
                .arg(&self.buf.io)
                .arg(&rows_i)
                .arg(&mut self.buf.next);
            // SAFETY: matches `bias_sample(float* logits, const float* b2, const u8* io, int
            // rows, u8* next)` launched with one 256-thread block per row: it touches
            // logits[0..rows*256], b2[0..256], the 2*rows f32 params at the start of io and
            // next[0..rows], all within their buffers.
            unsafe { launch.launch(kernels::per_row(rows as u32)) }
                .map_err(self.err("launching bias_sample"))?;
        }
        self.stream
            .memcpy_dtoh(&self.buf.next.slice(..rows), next)
            .map_err(self.err("copying next tokens to the host"))?;
        self.stream
            .synchronize()
            .map_err(self.err("synchronizing the step"))?;
        Ok(())
    }
}
