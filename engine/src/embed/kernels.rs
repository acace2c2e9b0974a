//! Fused, in-place CPU kernels for the encoder's element-wise work.
//!
//! candle runs each element-wise op as its own pass with a fresh output buffer, and its GELU
//! and softmax call scalar `erf`/`exp`. On the CPU these passes cost about as much as the
//! matmuls of a small model like MiniLM, so the encoder fuses them here: bias + GELU, bias +
//! residual + LayerNorm, bias add, and softmax, each one pass over a buffer the matmul just
//! produced, in place, parallel over rows on the current rayon pool. The `exp` and `erf`
//! below are branch-free polynomials (so loops over them vectorise) with errors far below what
//! the embeddings can notice: `erf` is the Abramowitz–Stegun 7.1.26 form PyTorch's vectorised
//! CPU kernel also uses.
//!
//! Only for CPU storage; other devices take the generic candle path in `bert.rs`.

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use super::panels::vectorized;

/// The contiguous f32 elements of a CPU tensor's storage.
fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("fused kernel: expected f32 storage");
    };
    if !l.is_contiguous() {
        candle_core::bail!("fused kernel: expected a contiguous tensor");
    }
    let start = l.start_offset();
    Ok(&mut v[start..start + l.shape().elem_count()])
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("fused kernel: expected f32 storage");
    };
    if !l.is_contiguous() {
        candle_core::bail!("fused kernel: expected a contiguous tensor");
    }
    let start = l.start_offset();
    Ok(&v[start..start + l.shape().elem_count()])
}

fn rows_of(len: usize, width: usize, name: &str) -> candle_core::Result<()> {
    if width == 0 || !len.is_multiple_of(width) {
        candle_core::bail!("{name}: {len} elements are not rows of {width}");
    }
    Ok(())
}

/// `x = f(x + bias)` on each row of a `(rows, bias.len())` tensor. `f` is a generic
/// parameter, not a function pointer, so it is inlined and the loop vectorises.
struct BiasMap<'a, F> {
    name: &'static str,
    bias: &'a [f32],
    f: F,
}

impl<F: Fn(f32) -> f32 + Sync> InplaceOp1 for BiasMap<'_, F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let x = slice_mut(s, l)?;
        rows_of(x.len(), self.bias.len(), self.name)?;
        self.apply(x);
        Ok(())
    }
}

impl<F: Fn(f32) -> f32 + Sync> BiasMap<'_, F> {
    /// `x` is whole rows of `bias.len()` (checked by the callers).
    fn apply(&self, x: &mut [f32]) {
        x.par_chunks_mut(self.bias.len()).for_each(|row| {
            vectorized(|| {
                for (v, b) in row.iter_mut().zip(self.bias) {
                    *v = (self.f)(*v + b);
                }
            })
        });
    }
}

/// `x = layer_norm(x + bias + residual) * gamma + beta` on each row.
struct BiasResidualNorm<'a> {
    bias: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
}

impl InplaceOp2 for BiasResidualNorm<'_> {
    fn name(&self) -> &'static str {
        "hearth-bias-residual-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let x = slice_mut(s1, l1)?;
        let residual = slice(s2, l2)?;
        let h = self.bias.len();
        rows_of(x.len(), h, self.name())?;
        if residual.len() != x.len() || self.gamma.len() != h || self.beta.len() != h {
            candle_core::bail!("{}: shape mismatch", self.name());
        }
        self.apply(x, residual);
        Ok(())
    }
}

impl BiasResidualNorm<'_> {
    /// `x` and `residual` are whole rows of `bias.len()`, as are `gamma` and `beta` (checked
    /// by the callers).
    fn apply(&self, x: &mut [f32], residual: &[f32]) {
        let h = self.bias.len();
        x.par_chunks_mut(h)
            .zip(residual.par_chunks(h))
            .for_each(|(row, res)| self.row(row, res));
    }

    /// One row, compiled for AVX2 + FMA where the CPU has them (see `mod avx2`).
    fn row(&self, row: &mut [f32], res: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx2::residual_norm_row(self, row, res) {
            return;
        }
        self.row_portable(row, res);
    }

    #[inline(always)]
    fn row_portable(&self, row: &mut [f32], res: &[f32]) {
        let inv_h = 1.0 / row.len() as f32;
        for ((v, r), b) in row.iter_mut().zip(res).zip(self.bias) {
            *v += r + b;
        }
        let mean = sum(row) * inv_h;
        for v in row.iter_mut() {
            *v -= mean;
        }
        let inv_std = 1.0 / (sum_sq(row) * inv_h + self.eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(self.gamma).zip(self.beta) {
            *v = *v * inv_std * g + b;
        }
    }
}

/// Softmax over the last dimension, in place.
struct Softmax;

impl InplaceOp1 for Softmax {
    fn name(&self) -> &'static str {
        "hearth-softmax"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let width = l.dims().last().copied().unwrap_or(0);
        let x = slice_mut(s, l)?;
        rows_of(x.len(), width, self.name())?;
        x.par_chunks_mut(width)
            .for_each(|row| softmax_rows(row, width));
        Ok(())
    }
}

/// Softmax of each `width`-wide row of `x`, in place, on the calling thread; compiled for
/// AVX2 + FMA where the CPU has them. The same bits either way (no FMA contraction; the
/// reductions add in the order their code spells out).
pub(crate) fn softmax_rows(x: &mut [f32], width: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2::softmax_rows(x, width) {
        return;
    }
    x.chunks_exact_mut(width).for_each(softmax_row);
}

/// The kernels above compiled for AVX2 + FMA. Through [`vectorized`] and a closure the
/// attention's softmax ran 4 wide (the closure was not inlined into the AVX2 function): 12%
/// of the embedder's time on 256-token passages in int8. A named function with the feature
/// is compiled for it whatever the inliner decides.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{BiasResidualNorm, softmax_row};

    /// Runs [`super::softmax_rows`] compiled for AVX2 + FMA when the CPU has them; false
    /// (nothing done) otherwise.
    pub(super) fn softmax_rows(x: &mut [f32], width: usize) -> bool {
        if !crate::simd::avx2_fma() {
            return false;
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { softmax_rows_avx2(x, width) };
        true
    }

    #[target_feature(enable = "avx2,fma")]
    fn softmax_rows_avx2(x: &mut [f32], width: usize) {
        for row in x.chunks_exact_mut(width) {
            softmax_row(row);
        }
    }

    /// Runs one row of [`BiasResidualNorm`] compiled for AVX2 + FMA when the CPU has them;
    /// false (nothing done) otherwise.
    pub(super) fn residual_norm_row(op: &BiasResidualNorm, row: &mut [f32], res: &[f32]) -> bool {
        if !crate::simd::avx2_fma() {
            return false;
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { residual_norm_row_avx2(op, row, res) };
        true
    }

    #[target_feature(enable = "avx2,fma")]
    fn residual_norm_row_avx2(op: &BiasResidualNorm, row: &mut [f32], res: &[f32]) {
        op.row_portable(row, res);
    }
}

/// Softmax of one row, in place.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = max(row);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `x += bias` per row, in place (CPU, contiguous f32).
pub(crate) fn add_bias_(x: &Tensor, bias: &[f32]) -> candle_core::Result<()> {
    x.inplace_op1(&BiasMap {
        name: "hearth-add-bias",
        bias,
        f: |v| v,
    })
}

/// `x = gelu(x + bias)` per row, in place (CPU, contiguous f32).
pub(crate) fn bias_gelu_(x: &Tensor, bias: &[f32]) -> candle_core::Result<()> {
    x.inplace_op1(&BiasMap {
        name: "hearth-bias-gelu",
        bias,
        f: gelu,
    })
}

/// `x = layer_norm(x + bias + residual)` per row, in place (CPU, contiguous f32).
pub(crate) fn bias_residual_norm_(
    x: &Tensor,
    residual: &Tensor,
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> candle_core::Result<()> {
    x.inplace_op2(
        residual,
        &BiasResidualNorm {
            bias,
            gamma,
            beta,
            eps,
        },
    )
}

/// The three kernels above on plain slices of whole rows, for the encoder's forward pass
/// over its own buffers (`bert.rs`); the same arithmetic, so the same bits.
pub(crate) mod slices {
    use super::{BiasMap, BiasResidualNorm, gelu, rows_of};

    /// `x += bias` per row.
    pub(crate) fn add_bias(x: &mut [f32], bias: &[f32]) -> candle_core::Result<()> {
        rows_of(x.len(), bias.len(), "add-bias")?;
        BiasMap {
            name: "hearth-add-bias",
            bias,
            f: |v| v,
        }
        .apply(x);
        Ok(())
    }

    /// `x = gelu(x + bias)` per row.
    pub(crate) fn bias_gelu(x: &mut [f32], bias: &[f32]) -> candle_core::Result<()> {
        rows_of(x.len(), bias.len(), "bias-gelu")?;
        BiasMap {
            name: "hearth-bias-gelu",
            bias,
            f: gelu,
        }
        .apply(x);
        Ok(())
    }

    /// `x = layer_norm(x + bias + residual)` per row.
    pub(crate) fn bias_residual_norm(
        x: &mut [f32],
        residual: &[f32],
        bias: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) -> candle_core::Result<()> {
        let h = bias.len();
        rows_of(x.len(), h, "bias-residual-norm")?;
        if residual.len() != x.len() || gamma.len() != h || beta.len() != h {
            candle_core::bail!("bias-residual-norm: shape mismatch");
        }
        BiasResidualNorm {
            bias,
            gamma,
            beta,
            eps,
        }
        .apply(x, residual);
        Ok(())
    }
}

/// Softmax over the last dimension, in place (CPU, contiguous f32).
pub(crate) fn softmax_(x: &Tensor) -> candle_core::Result<()> {
    x.inplace_op1(&Softmax)
}

/// Lanes of the reductions below: independent accumulators let them vectorise (a single
/// float accumulator must add in order).
const LANES: usize = 8;

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn sum_sq(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(tail, |m, &v| if v > m { v } else { m })
}

/// 1.5 × 2²³. For |v| < 2²², `v + ROUNDING` rounds `v` to the nearest integer `n` and holds
/// it in the low mantissa bits (its bit pattern is `0x4B40_0000 + n`): rounding without a
/// call to `round` and a float-to-int conversion without saturation checks, both of which
/// would stop vectorisation on baseline x86-64.
const ROUNDING: f32 = 12_582_912.0;

/// `e^x`, relative error about 2e-7 on the normal range; inputs are clamped to
/// [-87.3, 88.3], so very negative inputs give ~1e-38 rather than 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Cephes expf: e^x = 2^n · e^r with r = x - n·ln2, |r| ≤ ln2/2.
    let x = x.clamp(-87.3, 88.3);
    let z = x * std::f32::consts::LOG2_E + ROUNDING;
    let n = z - ROUNDING;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // 2^n from its exponent bits: n + 127 lands in [1, 255], and the shift drops the
    // constant high bits of z's pattern.
    y * f32::from_bits(z.to_bits().wrapping_add(127) << 23)
}

/// `erf(x)`, absolute error below 2e-7 (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// GELU, erf form: `x/2 · (1 + erf(x/√2))`, as BERT's `"gelu"`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device};

    use super::*;

    #[test]
    fn reductions_match_sequential_ones() {
        for n in [0usize, 1, 7, 8, 9, 31, 384] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25)
                .collect();
            let want_sum: f32 = xs.iter().sum();
            let want_sq: f32 = xs.iter().map(|v| v * v).sum();
            let want_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!((sum(&xs) - want_sum).abs() < 1e-4, "{n}");
            assert!((sum_sq(&xs) - want_sq).abs() < 1e-3, "{n}");
            assert_eq!(max(&xs), want_max, "{n}");
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert!(exp(-1000.0) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        // Reference erf from f64 via a high-precision series/continued fraction is not in std;
        // check against known values and symmetry instead.
        let known = [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (3.0, 0.999_977_9),
            (-1.0, -0.842_700_8),
        ];
        for (x, want) in known {
            assert!(
                (erf(x) - want).abs() < 2e-7,
                "erf({x}) = {} not {want}",
                erf(x)
            );
        }
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_3).abs() < 1e-6);
        assert!(gelu(-20.0).abs() < 1e-6 && (gelu(20.0) - 20.0).abs() < 1e-5);
    }

    #[test]
    fn fused_kernels_match_candle_ops() {
        let dev = Device::Cpu;
        let (rows, h) = (5, 8);
        let x = Tensor::randn(0f32, 2.0, (rows, h), &dev).unwrap();
        let res = Tensor::randn(0f32, 2.0, (rows, h), &dev).unwrap();
        let bias: Vec<f32> = (0..h).map(|i| i as f32 * 0.1 - 0.3).collect();
        let gamma: Vec<f32> = (0..h).map(|i| 1.0 + i as f32 * 0.05).collect();
        let beta: Vec<f32> = (0..h).map(|i| i as f32 * -0.02).collect();
        let bias_t = Tensor::new(bias.as_slice(), &dev).unwrap();
        let gamma_t = Tensor::new(gamma.as_slice(), &dev).unwrap();
        let beta_t = Tensor::new(beta.as_slice(), &dev).unwrap();
        let close = |a: &Tensor, b: &Tensor, tol: f32| {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            let d: f32 = d.to_scalar().unwrap();
            assert!(d < tol, "max difference {d}");
        };

        let got = x.copy().unwrap();
        add_bias_(&got, &bias).unwrap();
        close(&got, &x.broadcast_add(&bias_t).unwrap(), 1e-6);

        let got = x.copy().unwrap();
        bias_gelu_(&got, &bias).unwrap();
        let want = x.broadcast_add(&bias_t).unwrap().gelu_erf().unwrap();
        close(&got, &want, 1e-5);

        let got = x.copy().unwrap();
        bias_residual_norm_(&got, &res, &bias, &gamma, &beta, 1e-12).unwrap();
        let sum = (x.broadcast_add(&bias_t).unwrap() + &res).unwrap();
        let want = candle_nn::ops::layer_norm(&sum, &gamma_t, &beta_t, 1e-12).unwrap();
        close(&got, &want, 1e-5);

        let got = x.copy().unwrap();
        softmax_(&got).unwrap();
        close(&got, &candle_nn::ops::softmax(&x, D::Minus1).unwrap(), 1e-6);
    }
}
