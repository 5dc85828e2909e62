//! The element-wise CUDA kernels (CUDA C, compiled by NVRTC once at start) and their launch
//! shapes.

use cudarc::driver::LaunchConfig;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::model::VOCAB;

/// Threads per block of the element-wise kernels; also the block of `bias_sample`, which needs
/// exactly one thread per vocabulary entry.
pub const BLOCK: u32 = 256;

/// Upper bound on the grid of the grid-stride kernels.
const MAX_GRID: u32 = 4096;

const _: () = assert!(
    VOCAB == BLOCK as usize,
    "bias_sample assumes one thread per token id"
);

/// Names of the kernels in [`SOURCE`].
pub const NAMES: [&str; 3] = ["gather_embed", "bias_relu", "bias_sample"];

/// CUDA C source of the kernels (no includes: only NVRTC built-ins `expf`, `fmaxf`, `fabsf`,
/// `__int_as_float`).
///
/// - `gather_embed`: `X[(r*k + j)*d + e] = embed[ids[r*k + j]*d + e]`, `ids` at byte offset
///   `ids_off` of the packed input buffer `io`.
/// - `bias_relu`: `H[r, c] = fmaxf(H[r, c] + b[c], 0)` (NaN -> 0, like `f32::max`).
/// - `bias_sample`: one 256-thread block per row: `L[r, v] += b2[v]`, then the token exactly as
///   `sample_row` picks it: argmax with (greater value, then lower id) order where NaN never
///   wins; for temperature > 0 and a finite max, thread 0 sums the row's `expf((l - max) / T)`
///   in id order and returns the first id whose running sum exceeds `u * total` (else the
///   argmax). Parameters are `[temperature, uniform]` pairs at the start of `io`.
pub const SOURCE: &str = r#"
extern "C" __global__ void gather_embed(const unsigned char* __restrict__ io,
                                        unsigned long long ids_off,
                                        const float* __restrict__ embed,
                                        float* __restrict__ x,
                                        int rows, int k, int d) {
    const unsigned char* ids = io + ids_off;
    long long total = (long long)rows * k * d;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        long long slot = i / d;
        long long e = i - slot * d;
        x[i] = embed[(long long)ids[slot] * d + e];
    }
}

extern "C" __global__ void bias_relu(float* __restrict__ h,
                                     const float* __restrict__ b,
                                     int rows, int cols) {
    long long total = (long long)rows * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        h[i] = fmaxf(h[i] + b[i % cols], 0.0f);
    }
}

extern "C" __global__ void bias_sample(float* __restrict__ logits,
                                       const float* __restrict__ b2,
                                       const unsigned char* __restrict__ io,
                                       int rows,
                                       unsigned char* __restrict__ next) {
    __shared__ float val[256];
    __shared__ int idx[256];
    __shared__ float ex[256];
    const float* params = (const float*)io;
    int r = blockIdx.x;
    int t = threadIdx.x;
    if (r >= rows) return;
    float l = logits[(long long)r * 256 + t] + b2[t];
    logits[(long long)r * 256 + t] = l;
    const float inf = __int_as_float(0x7f800000);
    val[t] = (l != l) ? -inf : l;
    idx[t] = t;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (t < s) {
            float a = val[t];
            float o = val[t + s];
            int io_ = idx[t + s];
            if (o > a || (o == a && io_ < idx[t])) {
                val[t] = o;
                idx[t] = io_;
            }
        }
        __syncthreads();
    }
    float mx = val[0];
    int best = idx[0];
    float temp = params[2 * r];
    float u = params[2 * r + 1];
    // mx is never NaN here (NaN was mapped to -inf), so finite <=> |mx| < inf.
    if (temp <= 0.0f || !(fabsf(mx) < inf)) {
        if (t == 0) next[r] = (unsigned char)best;
        return;
    }
    float inv_t = 1.0f / temp;
    ex[t] = expf((l - mx) * inv_t);
    __syncthreads();
    if (t == 0) {
        float total = 0.0f;
        for (int i = 0; i < 256; ++i) total += ex[i];
        float target = u * total;
        float acc = 0.0f;
        int pick = best;
        for (int i = 0; i < 256; ++i) {
            acc += ex[i];
            if (acc > target) { pick = i; break; }
        }
        next[r] = (unsigned char)pick;
    }
}
"#;

/// The kernels compiled to PTX (cheap to clone; every engine loads it into its context).
#[derive(Debug, Clone)]
pub struct CompiledKernels {
    /// The PTX NVRTC produced.
    pub ptx: Ptx,
}

impl CompiledKernels {
    /// Compiles [`SOURCE`] with NVRTC (no fast math: `expf` and the divisions stay precise, and
    /// no FMA contraction, so the sampling sums round like the host's).
    pub fn compile() -> Result<CompiledKernels, String> {
        let opts = CompileOptions {
            fmad: Some(false),
            use_fast_math: Some(false),
            name: Some("freelane_model.cu".to_string()),
            ..Default::default()
        };
        compile_ptx_with_opts(SOURCE, opts)
            .map(|ptx| CompiledKernels { ptx })
            .map_err(|e| format!("{e}"))
    }
}

/// Compiles [`SOURCE`] straight to a CUBIN for compute capability `major.minor` (`sm_XY`).
///
/// Loading SASS needs no PTX JIT in the driver, so it also works when libnvrtc is newer than the
/// driver (CUDA minor-version compatibility covers cubins, not PTX). Engines try this first and
/// fall back to the PTX of [`CompiledKernels::compile`].
pub fn compile_cubin(major: i32, minor: i32) -> Result<Ptx, String> {
    use cudarc::nvrtc::{result, sys};

    /// Destroys the program on every path.
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: the program was created by `create_program` and is destroyed only here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }

    let src = std::ffi::CString::new(SOURCE).map_err(|e| e.to_string())?;
    let prog = Program(
        result::create_program(&src, Some(c"freelane_model.cu")).map_err(|e| format!("{e}"))?,
    );
    let opts = [
        format!("--gpu-architecture=sm_{major}{minor}"),
        "--fmad=false".to_string(),
    ];
    // SAFETY: `prog.0` is a live program created above (and `src` outlives it).
    if let Err(e) = unsafe { result::compile_program(prog.0, &opts) } {
        // SAFETY: as above; the log is a NUL-terminated C string owned by the returned Vec.
        let log = unsafe { result::get_program_log(prog.0) }
            .ok()
            .map(|l| {
                let bytes: Vec<u8> = l
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        return Err(format!("{e}: {log}"));
    }
    let mut size = 0usize;
    // SAFETY: the program compiled successfully; `size` is a valid out-pointer.
    unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
        .result()
        .map_err(|e| format!("{e}"))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has exactly the `size` bytes NVRTC asked for.
    unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| format!("{e}"))?;
    Ok(Ptx::from_binary(cubin))
}

/// Launch shape of a grid-stride kernel over `n` elements (`n > 0`).
pub fn grid_stride(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID as usize) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launch shape of `bias_sample` over `rows` rows: one block per row.
pub fn per_row(rows: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Size in bytes of the parameter block at the start of the packed input buffer.
pub fn params_bytes(rows: usize) -> usize {
    rows * 2 * std::mem::size_of::<f32>()
}

/// Packs one step's inputs into `buf` (resized, never shrunk below its capacity):
/// `[temperature, uniform]` as little-endian `f32` pairs for each row, then the `ids`.
/// Returns the byte offset of the ids.
pub fn pack_inputs(
    ids: &[u8],
    params: &[crate::executor::SampleParams],
    buf: &mut Vec<u8>,
) -> usize {
    let off = params_bytes(params.len());
    buf.clear();
    for p in params {
        buf.extend_from_slice(&p.temperature.to_le_bytes());
        buf.extend_from_slice(&p.uniform.to_le_bytes());
    }
    buf.extend_from_slice(ids);
    off
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::SampleParams;
    use crate::model::{sample_row, SplitMix64};

    /// `bias_sample`'s algorithm (bias already added), step for step on the host: the tree
    /// reduction over (value, id) pairs and thread 0's sequential inverse-CDF walk.
    fn kernel_algorithm(l: &[f32], temp: f32, u: f32) -> u8 {
        let mut val: Vec<f32> = l
            .iter()
            .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
            .collect();
        let mut idx: Vec<usize> = (0..l.len()).collect();
        let mut s = l.len() / 2;
        while s > 0 {
            for t in 0..s {
                let (a, o) = (val[t], val[t + s]);
                if o > a || (o == a && idx[t + s] < idx[t]) {
                    val[t] = o;
                    idx[t] = idx[t + s];
                }
            }
            s /= 2;
        }
        let (mx, best) = (val[0], idx[0]);
        if temp <= 0.0 || !mx.is_finite() {
            return best as u8;
        }
        let inv_t = 1.0 / temp;
        let ex: Vec<f32> = l.iter().map(|&x| ((x - mx) * inv_t).exp()).collect();
        let total: f32 = ex.iter().fold(0.0, |a, &e| a + e);
        let target = u * total;
        let mut acc = 0.0f32;
        for (i, &e) in ex.iter().enumerate() {
            acc += e;
            if acc > target {
                return i as u8;
            }
        }
        best as u8
    }

    #[test]
    fn tree_argmax_matches_sample_row_including_ties_and_nan() {
        let mut rng = SplitMix64::new(42);
        for case in 0..2000 {
            // Few distinct values so ties are common; sprinkle NaN and infinities.
            let mut l: Vec<f32> = (0..VOCAB)
                .map(|_| ((rng.next_u64() % 5) as f32) - 2.0)
                .collect();
            match case % 5 {
                1 => l[(rng.next_u64() % 256) as usize] = f32::NAN,
                2 => l.iter_mut().for_each(|x| *x = f32::NAN),
                3 => l.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
                4 => l[(rng.next_u64() % 256) as usize] = f32::INFINITY,
                _ => {}
            }
            for temp in [0.0f32, 0.7, 1.5] {
                let u = rng.next_f32();
                assert_eq!(
                    kernel_algorithm(&l, temp, u),
                    sample_row(&l, temp, u),
                    "case {case} temp {temp}"
                );
            }
        }
    }

    #[test]
    fn pack_inputs_puts_params_first_then_ids() {
        let p = [
            SampleParams {
                temperature: 0.0,
                uniform: 0.25,
            },
            SampleParams {
                temperature: 1.0,
                uniform: 0.5,
            },
        ];
        let ids = [1u8, 2, 3, 4, 5, 6];
        let mut buf = Vec::new();
        let off = pack_inputs(&ids, &p, &mut buf);
        assert_eq!(off, 16);
        assert_eq!(&buf[off..], &ids);
        assert_eq!(f32::from_le_bytes(buf[4..8].try_into().unwrap()), 0.25);
        assert_eq!(f32::from_le_bytes(buf[8..12].try_into().unwrap()), 1.0);
    }

    #[test]
    fn launch_shapes_cover_every_element_and_row() {
        let c = grid_stride(1);
        assert_eq!((c.grid_dim.0, c.block_dim.0), (1, BLOCK));
        let c = grid_stride(300);
        assert_eq!(c.grid_dim.0, 2);
        // Grid-stride: a capped grid still covers everything by looping.
        assert_eq!(grid_stride(usize::MAX / 2).grid_dim.0, MAX_GRID);
        assert_eq!(per_row(7).grid_dim.0, 7);
    }

    #[test]
    fn kernel_source_compiles_with_nvrtc_when_it_is_installed() {
        // NVRTC needs no GPU: wherever libnvrtc loads (e.g. from the nvidia-cuda-nvrtc-cu12
        // wheel on LD_LIBRARY_PATH), compile the real source and check every entry point.
        // SAFETY: only tries to dlopen cudarc's candidate names for libnvrtc.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipping: no nvrtc library (libnvrtc could not be loaded)");
            return;
        }
        let k = CompiledKernels::compile().expect("kernels compile");
        let ptx = k.ptx.to_src();
        for n in NAMES {
            assert!(
                ptx.contains(&format!(".entry {n}(")),
                "{n} missing from the ptx"
            );
        }
    }

    #[test]
    fn kernel_source_compiles_to_a_cubin_when_nvrtc_is_installed() {
        // SAFETY: only tries to dlopen cudarc's candidate names for libnvrtc.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipping: no nvrtc library (libnvrtc could not be loaded)");
            return;
        }
        let cubin = compile_cubin(9, 0).expect("sm_90 cubin");
        // `Ptx` hides its bytes; its Debug output shows the binary kind and the ELF magic.
        let dbg = format!("{cubin:?}");
        assert!(
            dbg.contains("Binary([127, 69, 76, 70"),
            "not an ELF cubin: {:.80}",
            dbg
        );
        assert!(compile_cubin(1, 0).is_err(), "sm_10 must be rejected");
    }

    #[test]
    fn kernel_source_defines_every_named_kernel() {
        for n in NAMES {
            assert!(SOURCE.contains(&format!("void {n}(")), "{n}");
        }
    }
}
