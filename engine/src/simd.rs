//! SIMD helpers shared across the engine, and the one CPU-feature check they all go by.
//!
//! Kernels with an x86-64 fast path (the embedder's panels and element-wise loops, the
//! generator's attention, LoRA side path and quantised matmuls) each keep their own
//! `#[target_feature]` wrapper next to the code it compiles, and ask [`avx2_fma`] or
//! [`avx2_fma_f16c`] whether they may call it. The CPU is asked once per process.

/// What the CPU offers beyond the baseline target, as the kernels here use it.
#[cfg(target_arch = "x86_64")]
struct Features {
    avx2_fma: bool,
    f16c: bool,
    avx512f: bool,
    avx512_vnni: bool,
}

#[cfg(target_arch = "x86_64")]
static FEATURES: std::sync::LazyLock<Features> = std::sync::LazyLock::new(|| Features {
    avx2_fma: std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma"),
    f16c: std::arch::is_x86_feature_detected!("f16c"),
    avx512f: std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("fma"),
    avx512_vnni: std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni"),
});

/// Whether the CPU has AVX2 and FMA (always false off x86-64).
#[inline]
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        FEATURES.avx2_fma
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has AVX-512 F and FMA (always false off x86-64): the generator's attention
/// runs 16 wide.
#[inline]
pub(crate) fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        FEATURES.avx512f
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has AVX-512 F, BW and VNNI (always false off x86-64): the embedder's int8
/// matmul (`embed/int8.rs`) runs its fast kernel, and `engine.embed_precision = "auto"` picks
/// int8, only then.
#[inline]
pub(crate) fn avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        FEATURES.avx512_vnni
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has AVX2, FMA and F16C (always false off x86-64).
#[inline]
pub(crate) fn avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        FEATURES.avx2_fma && FEATURES.f16c
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `a · b` in eight independent lanes (fixed-size arrays, so the compiler sees one vector
/// register and no bounds checks), summed at the end. Inlined into its callers, it runs 8 wide
/// inside their AVX2 wrappers and 4 wide in the baseline build.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        let x: &[f32; 8] = x.try_into().unwrap_or(&[0.0; 8]);
        let y: &[f32; 8] = y.try_into().unwrap_or(&[0.0; 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` without a libm call, branch-free so that loops over it vectorise (softmax, SiLU): `x = n·ln 2 + r`
/// with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r` (Cephes' `expf` coefficients;
/// within 2 ulp of the true value), `2^n` built in the exponent bits. Below -87 (and -inf,
/// NaN) it gives 0, so masked positions add exact zeros.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by the 1.5 · 2^23 trick (exact for |t| < 2^22).
    const ROUND: f32 = 12_582_912.0;
    let xc = if x > 88.0 { 88.0 } else { x };
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n as an integer, read from t's low mantissa bits: `n as i32` is a saturating cast,
    // which LLVM compiles to scalar code lane by lane (a third of a prefill's attention time
    // went there); this stays in vector integer ops. Exact wherever the result is kept
    // (x ≥ -87, |n| ≤ 127); below, the final select gives 0 whatever it holds.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let bits = (ni.wrapping_add(127).clamp(0, 255) as u32) << 23;
    let e = y * f32::from_bits(bits);
    if x >= -87.0 { e } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial `exp` stays within 2 ulp of libm's over the range softmax feeds it
    /// (scores less their max: 0 down to far below -87), and gives exact zeros for -inf and
    /// what underflows.
    #[test]
    fn exp_is_within_two_ulp_and_zero_below_the_range() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
            x += 0.000_731;
        }
        for x in [
            1.0f32,
            10.0,
            50.0,
            88.0,
            -1e-8,
            -0.5,
            -std::f32::consts::LN_2,
        ] {
            worst = worst.max(exp(x).to_bits().abs_diff(x.exp().to_bits()));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        for x in [f32::NEG_INFINITY, -87.5, -1e30, f32::NAN] {
            assert_eq!(exp(x).to_bits(), 0, "{x}");
        }
    }

    #[test]
    fn dot_covers_lanes_and_tail() {
        let long: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(
            dot(&long, &long),
            (0..37).map(|i| (i * i) as f32).sum::<f32>()
        );
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn feature_checks_agree_with_the_cpu() {
        #[cfg(target_arch = "x86_64")]
        {
            let (avx2, fma, f16c) = (
                std::arch::is_x86_feature_detected!("avx2"),
                std::arch::is_x86_feature_detected!("fma"),
                std::arch::is_x86_feature_detected!("f16c"),
            );
            assert_eq!(avx2_fma(), avx2 && fma);
            assert_eq!(avx2_fma_f16c(), avx2 && fma && f16c);
        }
        // F16C only ever widens the AVX2 + FMA set.
        assert!(!avx2_fma_f16c() || avx2_fma());
    }
}
