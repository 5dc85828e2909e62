//! The built-in byte-level language model.
//!
//! No weights can be downloaded, so the server ships a tiny model whose weights are generated
//! from a seed (or read from a safetensors file). It predicts the next byte from the last
//! `k` bytes of the sequence:
//!
//! ```text
//! ids   [B, k]        u8 token ids: the last k bytes of each sequence, left-padded with PAD (0)
//! X     [B, k*d]      X[b, j*d..(j+1)*d] = embed[ids[b, j], ..]      (gather; slot j = position)
//! H     [B, h]        H = relu(X · W1 + b1)       W1 [k*d, h], b1 [h]
//! L     [B, 256]      L = H · W2 + b2             W2 [h, 256], b2 [256]
//! next  [B]           argmax_v L[b, v]            (temperature 0; ties -> lowest id)
//!                     or inverse-CDF sampling of softmax(L[b] / T) at a uniform u[b] in [0,1)
//! ```
//!
//! All tensors are row-major `f32`. One decode step over B active sequences is two GEMMs
//! (`matrixmultiply::sgemm` on CPU; cuBLAS on CUDA) plus a gather, a relu and a per-row
//! argmax/sampling. The uniforms `u[b]` are drawn on the host from each request's own
//! [`SplitMix64`] stream, so every backend given the same logits picks the same token, and a
//! request's output does not depend on which other requests share its batch.
//!
//! Token 0 is both the padding id and the stop token: generating it ends the sequence with
//! `finish_reason: "stop"` (the 0 byte is not part of the text).
//!
//! Default sizes (`k = 8, d = 16, h = 256`): a step at batch 32 is about 3 M multiply-adds.

pub mod sampling;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

pub use sampling::{sample_row, SplitMix64};

/// Vocabulary size: one token per byte value.
pub const VOCAB: usize = 256;
/// Padding id (left of the first byte) and stop token.
pub const PAD: u8 = 0;
/// Default context length `k` of the generated model.
pub const DEFAULT_CONTEXT: usize = 8;
/// Default embedding width `d` of the generated model.
pub const DEFAULT_EMBED: usize = 16;
/// Default hidden width `h` of the generated model.
pub const DEFAULT_HIDDEN: usize = 256;
/// Upper bound on any dimension of a loaded model (keeps a step cheap and bounds memory).
pub const MAX_DIM: usize = 8192;

/// Shapes of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Context length `k` (bytes looked at).
    pub context: usize,
    /// Embedding width `d`.
    pub embed: usize,
    /// Hidden width `h`.
    pub hidden: usize,
}

impl Dims {
    /// Width of the MLP input, `k * d`.
    pub fn input(&self) -> usize {
        self.context * self.embed
    }
}

/// The model's weights, as plain row-major `f32` slices (what a GPU executor uploads).
#[derive(Clone)]
pub struct Weights {
    dims: Dims,
    embed: Vec<f32>,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("dims", &self.dims)
            .finish_non_exhaustive()
    }
}

/// Why weights could not be loaded or saved.
#[derive(Debug)]
pub enum WeightsError {
    /// The file could not be read or written.
    Io(std::io::Error),
    /// The file is not valid safetensors.
    Format(String),
    /// A tensor is missing or has the wrong dtype or shape.
    Tensor(String),
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsError::Io(e) => write!(f, "cannot access weights file: {e}"),
            WeightsError::Format(m) => write!(f, "weights file is not valid safetensors: {m}"),
            WeightsError::Tensor(m) => write!(f, "bad weights tensor: {m}"),
        }
    }
}

impl std::error::Error for WeightsError {}

impl Weights {
    /// Generates the default-size model deterministically from `seed`.
    pub fn generate(seed: u64) -> Weights {
        Self::generate_with(
            seed,
            Dims {
                context: DEFAULT_CONTEXT,
                embed: DEFAULT_EMBED,
                hidden: DEFAULT_HIDDEN,
            },
        )
    }

    /// Generates a model of the given shape deterministically from `seed` (uniform weights
    /// scaled by fan-in, so activations stay O(1)).
    pub fn generate_with(seed: u64, dims: Dims) -> Weights {
        let mut rng = SplitMix64::new(seed ^ 0x6672_6565_6c61_6e65); // "freelane"
        let mut fill = |n: usize, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * scale)
                .collect()
        };
        let Dims {
            context: k,
            embed: d,
            hidden: h,
        } = dims;
        let embed = fill(VOCAB * d, 1.0);
        let w1 = fill(k * d * h, (3.0 / (k * d) as f32).sqrt());
        let b1 = fill(h, 0.1);
        let w2 = fill(h * VOCAB, 2.0 * (6.0 / h as f32).sqrt());
        let b2 = fill(VOCAB, 0.5);
        Weights {
            dims,
            embed,
            w1,
            b1,
            w2,
            b2,
        }
    }

    /// Shapes.
    pub fn dims(&self) -> Dims {
        self.dims
    }
    /// Embedding table `[256, d]`.
    pub fn embed(&self) -> &[f32] {
        &self.embed
    }
    /// First layer `[k*d, h]`.
    pub fn w1(&self) -> &[f32] {
        &self.w1
    }
    /// First bias `[h]`.
    pub fn b1(&self) -> &[f32] {
        &self.b1
    }
    /// Second layer `[h, 256]`.
    pub fn w2(&self) -> &[f32] {
        &self.w2
    }
    /// Second bias `[256]`.
    pub fn b2(&self) -> &[f32] {
        &self.b2
    }

    /// Serializes to safetensors bytes (tensors `embed`, `w1`, `b1`, `w2`, `b2`, all F32).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, WeightsError> {
        let Dims {
            context: k,
            embed: d,
            hidden: h,
        } = self.dims;
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let parts = [
            ("embed", vec![VOCAB, d], bytes(&self.embed)),
            ("w1", vec![k * d, h], bytes(&self.w1)),
            ("b1", vec![h], bytes(&self.b1)),
            ("w2", vec![h, VOCAB], bytes(&self.w2)),
            ("b2", vec![VOCAB], bytes(&self.b2)),
        ];
        let mut views = Vec::new();
        for (name, shape, data) in &parts {
            let view = TensorView::new(Dtype::F32, shape.clone(), data)
                .map_err(|e| WeightsError::Format(e.to_string()))?;
            views.push((*name, view));
        }
        let mut info = HashMap::new();
        info.insert("context".to_string(), k.to_string());
        safetensors::tensor::serialize(views, Some(info))
            .map_err(|e| WeightsError::Format(e.to_string()))
    }

    /// Writes the weights to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        std::fs::write(path, self.to_safetensors()?).map_err(WeightsError::Io)
    }

    /// Reads weights from safetensors bytes. The context length `k` is `w1.rows / embed.cols`.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Weights, WeightsError> {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Format(e.to_string()))?;
        let get = |name: &str, rank: usize| -> Result<(Vec<usize>, Vec<f32>), WeightsError> {
            let t = st
                .tensor(name)
                .map_err(|_| WeightsError::Tensor(format!("missing tensor {name:?}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(WeightsError::Tensor(format!(
                    "{name} has dtype {:?}, expected F32",
                    t.dtype()
                )));
            }
            if t.shape().len() != rank {
                return Err(WeightsError::Tensor(format!(
                    "{name} has shape {:?}, expected rank {rank}",
                    t.shape()
                )));
            }
            if t.shape().iter().any(|&s| s == 0 || s > MAX_DIM * MAX_DIM) {
                return Err(WeightsError::Tensor(format!(
                    "{name} has shape {:?}",
                    t.shape()
                )));
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<f32>>();
            if data.iter().any(|x| !x.is_finite()) {
                return Err(WeightsError::Tensor(format!(
                    "{name} contains nan or infinity"
                )));
            }
            Ok((t.shape().to_vec(), data))
        };
        let (es, embed) = get("embed", 2)?;
        let (w1s, w1) = get("w1", 2)?;
        let (b1s, b1) = get("b1", 1)?;
        let (w2s, w2) = get("w2", 2)?;
        let (b2s, b2) = get("b2", 1)?;
        let shape_err = |m: String| Err(WeightsError::Tensor(m));
        if es[0] != VOCAB {
            return shape_err(format!("embed has {} rows, expected {VOCAB}", es[0]));
        }
        let d = es[1];
        if w1s[0] % d != 0 {
            return shape_err(format!(
                "w1 rows {} are not a multiple of embed width {d}",
                w1s[0]
            ));
        }
        let k = w1s[0] / d;
        let h = w1s[1];
        if b1s[0] != h || w2s != [h, VOCAB] || b2s[0] != VOCAB {
            return shape_err(format!(
                "inconsistent shapes: w1 {w1s:?}, b1 {b1s:?}, w2 {w2s:?}, b2 {b2s:?} \
                 (expected w1 [k*d, h], b1 [h], w2 [h, {VOCAB}], b2 [{VOCAB}])"
            ));
        }
        if k > MAX_DIM || d > MAX_DIM || h > MAX_DIM {
            return shape_err(format!("dimensions k={k} d={d} h={h} exceed {MAX_DIM}"));
        }
        Ok(Weights {
            dims: Dims {
                context: k,
                embed: d,
                hidden: h,
            },
            embed,
            w1,
            b1,
            w2,
            b2,
        })
    }

    /// Reads weights from a safetensors file.
    pub fn load(path: &Path) -> Result<Weights, WeightsError> {
        let bytes = std::fs::read(path).map_err(WeightsError::Io)?;
        Self::from_safetensors(&bytes)
    }
}

/// Reusable buffers of the CPU forward pass (no allocation per step once warmed up).
#[derive(Debug, Default)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    logits: Vec<f32>,
}

impl Scratch {
    /// The logits of the last [`forward`] call, `[B, 256]` row-major.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

/// Fills `ctx` (length `k`) with the last `k` bytes of `seq`, left-padded with [`PAD`].
pub fn context_window(seq: &[u8], ctx: &mut [u8]) {
    let k = ctx.len();
    let take = seq.len().min(k);
    ctx[..k - take].fill(PAD);
    ctx[k - take..].copy_from_slice(&seq[seq.len() - take..]);
}

/// Computes the logits `[B, 256]` of `B = ids.len() / k` contexts into `scratch.logits`.
///
/// `ids` is `[B, k]` row-major. Panics if `ids.len()` is not a multiple of `k` (a caller bug).
pub fn forward(w: &Weights, ids: &[u8], scratch: &mut Scratch) {
    let Dims {
        context: k,
        embed: d,
        hidden: h,
    } = w.dims;
    assert_eq!(ids.len() % k, 0, "ids must be [B, k]");
    let b = ids.len() / k;
    let kd = k * d;
    scratch.x.resize(b * kd, 0.0);
    scratch.h.resize(b * h, 0.0);
    scratch.logits.resize(b * VOCAB, 0.0);
    // Gather: X[b, j*d..] = embed[ids[b, j]].
    for (row, xs) in ids.chunks_exact(k).zip(scratch.x.chunks_exact_mut(kd)) {
        for (&id, x) in row.iter().zip(xs.chunks_exact_mut(d)) {
            let id = id as usize;
            x.copy_from_slice(&w.embed[id * d..(id + 1) * d]);
        }
    }
    if b == 0 {
        return;
    }
    // H = X · W1 + b1  (bias pre-filled, beta = 1), then relu.
    for hr in scratch.h.chunks_exact_mut(h) {
        hr.copy_from_slice(&w.b1);
    }
    gemm(b, kd, h, &scratch.x, &w.w1, &mut scratch.h);
    for v in &mut scratch.h {
        *v = v.max(0.0);
    }
    // L = H · W2 + b2.
    for lr in scratch.logits.chunks_exact_mut(VOCAB) {
        lr.copy_from_slice(&w.b2);
    }
    gemm(b, h, VOCAB, &scratch.h, &w.w2, &mut scratch.logits);
}

/// `C[m, n] += A[m, k] · B[k, n]`, all row-major and densely packed.
fn gemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm shape mismatch"
    );
    // SAFETY: the assert above guarantees that every element the strides address lies within
    // the slices (A: m rows of stride k, B: k rows of stride n, C: m rows of stride n, unit
    // column strides); `c` is a unique borrow, so it aliases neither `a` nor `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            1.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward pass written as plain loops, for checking the GEMM path.
    fn naive_logits(w: &Weights, ctx: &[u8]) -> Vec<f32> {
        let Dims {
            context: k,
            embed: d,
            hidden: h,
        } = w.dims;
        let mut x = vec![0.0f32; k * d];
        for j in 0..k {
            let id = ctx[j] as usize;
            x[j * d..(j + 1) * d].copy_from_slice(&w.embed[id * d..(id + 1) * d]);
        }
        let mut hid = w.b1.clone();
        for (i, hv) in hid.iter_mut().enumerate() {
            for (r, xv) in x.iter().enumerate() {
                *hv += xv * w.w1[r * h + i];
            }
            *hv = hv.max(0.0);
        }
        let mut out = w.b2.clone();
        for (v, o) in out.iter_mut().enumerate() {
            for (i, hv) in hid.iter().enumerate() {
                *o += hv * w.w2[i * VOCAB + v];
            }
        }
        out
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let a = Weights::generate(7);
        let b = Weights::generate(7);
        let c = Weights::generate(8);
        assert_eq!(a.w1, b.w1);
        assert_eq!(a.embed, b.embed);
        assert_ne!(a.w1, c.w1);
    }

    #[test]
    fn batched_forward_matches_naive_loops_row_by_row() {
        let w = Weights::generate(3);
        let k = w.dims.context;
        let seqs: [&[u8]; 3] = [b"hello world", b"", b"ab"];
        let mut ids = vec![0u8; seqs.len() * k];
        for (s, ctx) in seqs.iter().zip(ids.chunks_exact_mut(k)) {
            context_window(s, ctx);
        }
        let mut scratch = Scratch::default();
        forward(&w, &ids, &mut scratch);
        for (row, ctx) in ids.chunks_exact(k).enumerate() {
            let want = naive_logits(&w, ctx);
            let got = &scratch.logits()[row * VOCAB..(row + 1) * VOCAB];
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "row {row}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch_neighbours() {
        let w = Weights::generate(11);
        let k = w.dims.context;
        let mut one = vec![0u8; k];
        context_window(b"the quick", &mut one);
        let mut s1 = Scratch::default();
        forward(&w, &one, &mut s1);
        let mut many = Vec::new();
        for i in 0..5u8 {
            let mut c = vec![0u8; k];
            context_window(&[b'a' + i; 4], &mut c);
            many.extend_from_slice(&c);
        }
        many.extend_from_slice(&one);
        let mut s2 = Scratch::default();
        forward(&w, &many, &mut s2);
        let tail = &s2.logits()[5 * VOCAB..];
        for (a, b) in s1.logits().iter().zip(tail) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()));
        }
    }

    #[test]
    fn context_window_left_pads_and_keeps_the_last_k_bytes() {
        let mut c = [9u8; 4];
        context_window(b"ab", &mut c);
        assert_eq!(c, [0, 0, b'a', b'b']);
        context_window(b"abcdef", &mut c);
        assert_eq!(c, *b"cdef");
    }

    #[test]
    fn safetensors_round_trip_preserves_weights() {
        let w = Weights::generate_with(
            5,
            Dims {
                context: 3,
                embed: 4,
                hidden: 6,
            },
        );
        let bytes = w.to_safetensors().unwrap();
        let r = Weights::from_safetensors(&bytes).unwrap();
        assert_eq!(r.dims, w.dims);
        assert_eq!(r.w1, w.w1);
        assert_eq!(r.b2, w.b2);
        assert_eq!(r.embed, w.embed);
    }

    #[test]
    fn malformed_weights_are_rejected_not_panicked_on() {
        assert!(Weights::from_safetensors(b"").is_err());
        assert!(Weights::from_safetensors(&[0xff; 64]).is_err());
        // Wrong shape: b2 of length 10.
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let e = bytes(&vec![0.0; VOCAB * 2]);
        let w1 = bytes(&[0.0; 4 * 3]);
        let b1 = bytes(&[0.0; 3]);
        let w2 = bytes(&vec![0.0; 3 * VOCAB]);
        let b2 = bytes(&[0.0; 10]);
        let views = vec![
            (
                "embed",
                TensorView::new(Dtype::F32, vec![VOCAB, 2], &e).unwrap(),
            ),
            ("w1", TensorView::new(Dtype::F32, vec![4, 3], &w1).unwrap()),
            ("b1", TensorView::new(Dtype::F32, vec![3], &b1).unwrap()),
            (
                "w2",
                TensorView::new(Dtype::F32, vec![3, VOCAB], &w2).unwrap(),
            ),
            ("b2", TensorView::new(Dtype::F32, vec![10], &b2).unwrap()),
        ];
        let file = safetensors::tensor::serialize(views, None).unwrap();
        let err = Weights::from_safetensors(&file).unwrap_err().to_string();
        assert!(err.contains("inconsistent shapes"), "{err}");
    }
}
