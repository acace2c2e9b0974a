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

#[cfg(test)]
mod tests {
    use super::*;

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
