//! Row-major GEMMs on column-major cuBLAS.
//!
//! A row-major `[r, c]` matrix with leading dimension `c` is, read column-major, its transpose
//! `[c, r]` with the same leading dimension. So the row-major product `C[m, n] = A[m, k] ·
//! B[k, n]` is the column-major product `C^T[n, m] = B^T[n, k] · A^T[k, m]`: call cuBLAS with
//! no transposes, `(m', n', k') = (n, m, k)`, the first operand `B` (`lda = n`), the second `A`
//! (`ldb = k`) and `ldc = n`.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::GemmConfig;

/// Which row-major operand goes first in the cuBLAS call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstOperand {
    /// The row-major right factor `B` (always, for the mapping in [`row_major`]).
    RowMajorB,
}

/// A cuBLAS column-major `sgemm` call (no transposes): `C = alpha · A' · B' + beta · C` with
/// `A'` `[m, k]` (leading dimension `lda`), `B'` `[k, n]` (`ldb`), `C` `[m, n]` (`ldc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColMajorCall {
    /// Rows of `A'` and `C` (column-major).
    pub m: usize,
    /// Columns of `B'` and `C`.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Leading dimension of the first operand.
    pub lda: usize,
    /// Leading dimension of the second operand.
    pub ldb: usize,
    /// Leading dimension of the result.
    pub ldc: usize,
    /// Which row-major matrix is the first operand.
    pub first: FirstOperand,
}

/// The column-major call computing the row-major `C[m, n] = A[m, k] · B[k, n]` (dense, packed).
pub fn row_major(m: usize, n: usize, k: usize) -> ColMajorCall {
    ColMajorCall {
        m: n,
        n: m,
        k,
        lda: n,
        ldb: k,
        ldc: n,
        first: FirstOperand::RowMajorB,
    }
}

impl ColMajorCall {
    /// The cudarc config (alpha 1, beta 0), or `None` if a dimension overflows `i32`.
    pub fn config(&self) -> Option<GemmConfig<f32>> {
        let i = |v: usize| i32::try_from(v).ok();
        Some(GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: i(self.m)?,
            n: i(self.n)?,
            k: i(self.k)?,
            alpha: 1.0,
            lda: i(self.lda)?,
            ldb: i(self.ldb)?,
            beta: 0.0,
            ldc: i(self.ldc)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference column-major sgemm (what cuBLAS computes for `OP_N, OP_N`).
    fn col_major_sgemm(call: &ColMajorCall, a: &[f32], b: &[f32], c: &mut [f32]) {
        for j in 0..call.n {
            for i in 0..call.m {
                let mut acc = 0.0f32;
                for p in 0..call.k {
                    acc += a[i + p * call.lda] * b[p + j * call.ldb];
                }
                c[i + j * call.ldc] = acc;
            }
        }
    }

    fn row_major_naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn swapped_column_major_call_computes_the_row_major_product() {
        for &(m, n, k) in &[(1, 256, 7), (3, 5, 4), (32, 256, 128), (7, 1, 1)] {
            let a: Vec<f32> = (0..m * k).map(|x| (x % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..k * n).map(|x| (x % 7) as f32 * 0.5 - 1.0).collect();
            let call = row_major(m, n, k);
            assert_eq!(call.first, FirstOperand::RowMajorB);
            let mut c = vec![0.0; m * n];
            // First operand is row-major B, second is row-major A.
            col_major_sgemm(&call, &b, &a, &mut c);
            assert_eq!(c, row_major_naive(m, n, k, &a, &b), "shape {m}x{n}x{k}");
        }
    }

    #[test]
    fn config_maps_dimensions_and_rejects_overflow() {
        let cfg = row_major(32, 256, 128).config().unwrap();
        assert_eq!((cfg.m, cfg.n, cfg.k), (256, 32, 128));
        assert_eq!((cfg.lda, cfg.ldb, cfg.ldc), (256, 128, 256));
        assert_eq!((cfg.alpha, cfg.beta), (1.0, 0.0));
        assert!(row_major(1, 1usize << 31, 1).config().is_none());
    }
}
