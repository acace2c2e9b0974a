//! The attention kernel written with vector intrinsics, for AVX-512 and for AVX2 with FMA, on
//! block sizes that are a multiple of 16 and head dimensions that are a multiple of 32 (every
//! model hearth ships).
//!
//! It computes exactly what the portable kernel compiled for the same instruction set
//! computes, in the same order (a score is `q[0]·k[0]` then one fused multiply-add per further
//! dimension; an output lane adds the positions in order), so the floats are the same to the
//! bit; what changes is that the accumulators stay in registers. The portable loops, compiled,
//! reloaded four query pointers from the stack and checked bounds per multiply-add in the
//! score loop, and spent ~50 instructions per four multiply-adds in the value loop. A
//! standalone probe of one layer's prefill attention at the Qwen2.5-0.5B shape (14 heads over
//! 2, 512 positions, two cores of an AVX-512 EPYC): 7.7 ms (61 GFLOP/s) with the portable
//! kernel, 4.9 ms with this one, 3.6 ms (131 GFLOP/s) once `simd::exp` also stayed in vector
//! registers.
//!
//! An `f16` cache is read the same way, each 16 values widened to f32 as they are loaded
//! (`vcvtph2ps`, exact), so the kernel's arithmetic is the same for both.
//!
//! Query vectors go in sets of `S` (1 to 8 on AVX-512, 1 to 6 on AVX2's 16 registers), `S`
//! chosen per tile so that the sets cover the tile's vectors with little padding: a tile of
//! four rows of Qwen2.5's seven heads per group is four sets of seven. A set's queries are
//! transposed once per group (`qt[d · S + k]`), so the score loop broadcasts each from one
//! base pointer: per key dimension, one load of 16 positions and `S` multiply-adds. The value
//! loop keeps `S` vectors × `16 · P` dimensions in registers across all of the tile's
//! positions (`P` = 2 on AVX-512, 1 on AVX2): per position, `P` loads of values and `S`
//! broadcast weights for `P · S` multiply-adds.

use std::arch::x86_64::*;

use half::f16;

use super::super::kv::{Layer, LayerKv};
use super::{AttentionShape, LANES, Rows, softmax_in_place, visible};

/// 16 f32 lanes on one instruction set. Each function wraps an intrinsic or two; the contract
/// of all of them (why their bodies are sound): the set is enabled in the caller, and a
/// pointer has 16 lanes readable or writable (`store_lanes`: lanes `from..to`).
trait Isa {
    type V: Copy;
    /// The most query vectors per set.
    const MAX_SET: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn load_f16(p: *const f16) -> Self::V;
    /// `a · b + c`, one rounding.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Stores lanes `from..to` of `v` at `p + from..p + to`, nothing else.
    unsafe fn store_lanes(p: *mut f32, v: Self::V, from: usize, to: usize);
}

struct Avx512;

impl Isa for Avx512 {
    type V = __m512;
    /// `2 · 8` value accumulators and two value rows fill 18 of the 32 registers.
    const MAX_SET: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> __m512 {
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_lanes(p: *mut f32, v: __m512, from: usize, to: usize) {
        let mask = ((1u32 << to) - (1u32 << from)) as __mmask16;
        unsafe { _mm512_mask_storeu_ps(p, mask, v) }
    }
}

struct Avx2;

impl Isa for Avx2 {
    type V = [__m256; 2];
    /// `2 · 6` score accumulators, a key row (two registers) and a broadcast fill 15 of the
    /// 16 registers.
    const MAX_SET: usize = 6;

    #[inline(always)]
    unsafe fn zero() -> [__m256; 2] {
        unsafe { [_mm256_setzero_ps(); 2] }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> [__m256; 2] {
        unsafe { [_mm256_set1_ps(x); 2] }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [__m256; 2] {
        unsafe { [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))] }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> [__m256; 2] {
        unsafe {
            let h = _mm256_loadu_si256(p.cast());
            [
                _mm256_cvtph_ps(_mm256_castsi256_si128(h)),
                _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn fmadd(a: [__m256; 2], b: [__m256; 2], c: [__m256; 2]) -> [__m256; 2] {
        unsafe {
            [
                _mm256_fmadd_ps(a[0], b[0], c[0]),
                _mm256_fmadd_ps(a[1], b[1], c[1]),
            ]
        }
    }
    #[inline(always)]
    unsafe fn mul(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        unsafe { [_mm256_mul_ps(a[0], b[0]), _mm256_mul_ps(a[1], b[1])] }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [__m256; 2]) {
        unsafe {
            _mm256_storeu_ps(p, v[0]);
            _mm256_storeu_ps(p.add(8), v[1]);
        }
    }
    #[inline(always)]
    unsafe fn store_lanes(p: *mut f32, v: [__m256; 2], from: usize, to: usize) {
        let mut lanes = [0f32; LANES];
        unsafe {
            Self::store(lanes.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(lanes.as_ptr().add(from), p.add(from), to - from);
        }
    }
}

/// A number type of the cache, as 16 lanes of f32.
trait Lanes: Copy {
    /// The 16 values at `p`, widened to f32 (exactly).
    ///
    /// # Safety
    /// `I`'s instruction set; 16 values readable at `p`.
    unsafe fn load<I: Isa>(p: *const Self) -> I::V;
}

impl Lanes for f32 {
    #[inline(always)]
    unsafe fn load<I: Isa>(p: *const f32) -> I::V {
        // SAFETY: the caller's contract.
        unsafe { I::load(p) }
    }
}

impl Lanes for f16 {
    #[inline(always)]
    unsafe fn load<I: Isa>(p: *const f16) -> I::V {
        // SAFETY: the caller's contract (16 f16 are the 32 bytes read).
        unsafe { I::load_f16(p) }
    }
}

/// Whether [`attend_avx512`] and [`attend_avx2`] take this shape.
pub(super) fn fits(shape: &AttentionShape) -> bool {
    shape.block_size.is_multiple_of(LANES) && shape.head_dim.is_multiple_of(2 * LANES)
}

/// The set size for `nv` query vectors: fewest sets × (vectors + the key load and loop), the
/// larger set on a tie.
fn set_size(nv: usize, max: usize) -> usize {
    (1..=max)
        .rev()
        .min_by_key(|&s| nv.div_ceil(s) * (s + 2))
        .unwrap_or(1)
}

/// Same contract as the portable `attend`, for a shape that [`fits`]; `qt` is scratch space.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn attend_avx512(
    rows: Rows<'_>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    qt: &mut Vec<f32>,
) {
    // SAFETY: AVX-512F is present (the caller's contract).
    unsafe { attend::<Avx512, 2>(rows, out, scores, qt) }
}

/// Same contract as the portable `attend`, for a shape that [`fits`]; `qt` is scratch space.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_avx2(
    rows: Rows<'_>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    qt: &mut Vec<f32>,
) {
    // SAFETY: AVX2, FMA and F16C are present (the caller's contract).
    unsafe { attend::<Avx2, 1>(rows, out, scores, qt) }
}

/// The kernel on `I` with `P` vectors of 16 dimensions per value pass.
#[inline(always)]
unsafe fn attend<I: Isa, const P: usize>(
    rows: Rows<'_>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    qt: &mut Vec<f32>,
) {
    let shape = rows.shape;
    let nv = rows.q.len() / (shape.heads * shape.head_dim) * (shape.heads / shape.kv_heads);
    // SAFETY: `I`'s instruction set is enabled (the callers' contract).
    unsafe {
        match rows.kv {
            LayerKv::F32(kv) => with_set::<I, P, f32>(rows, kv, nv, out, scores, qt),
            LayerKv::F16(kv) => with_set::<I, P, f16>(rows, kv, nv, out, scores, qt),
        }
    }
}

#[inline(always)]
unsafe fn with_set<I: Isa, const P: usize, E: Lanes>(
    rows: Rows<'_>,
    kv: Layer<'_, E>,
    nv: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    qt: &mut Vec<f32>,
) {
    // SAFETY: `I`'s instruction set is enabled (the callers' contract).
    unsafe {
        // (The guards are constants: an instruction set's larger sets are not compiled.)
        match set_size(nv, I::MAX_SET) {
            1 => attend_sets::<I, P, 1, E>(rows, kv, out, scores, qt),
            2 => attend_sets::<I, P, 2, E>(rows, kv, out, scores, qt),
            3 => attend_sets::<I, P, 3, E>(rows, kv, out, scores, qt),
            4 => attend_sets::<I, P, 4, E>(rows, kv, out, scores, qt),
            5 => attend_sets::<I, P, 5, E>(rows, kv, out, scores, qt),
            6 => attend_sets::<I, P, 6, E>(rows, kv, out, scores, qt),
            7 if I::MAX_SET >= 7 => attend_sets::<I, P, 7, E>(rows, kv, out, scores, qt),
            8 if I::MAX_SET >= 8 => attend_sets::<I, P, 8, E>(rows, kv, out, scores, qt),
            s => unreachable!("set size {s} beyond {}", I::MAX_SET),
        }
    }
}

#[inline(always)]
unsafe fn attend_sets<I: Isa, const P: usize, const S: usize, E: Lanes>(
    rows: Rows<'_>,
    kv: Layer<'_, E>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    qt: &mut Vec<f32>,
) {
    let Rows {
        shape,
        blocks,
        pos0,
        q,
        ..
    } = rows;
    let (hd, bs) = (shape.head_dim, shape.block_size);
    let group = shape.heads / shape.kv_heads;
    let width = shape.heads * hd;
    let nrows = q.len() / width;
    assert!(fits(shape) && nrows > 0 && out.len() == q.len());
    assert!(hd.is_multiple_of(P * LANES));
    let last = pos0 + nrows - 1;
    assert!(
        blocks.len() * bs > last,
        "the block table covers every position"
    );
    let first_of = |p: usize| shape.window.map_or(0, |w| (p + 1).saturating_sub(w));
    // Positions and the scores' layout as in the portable kernel.
    let first = first_of(pos0);
    let lo = first / LANES * LANES;
    let n = (last + 1 - lo).next_multiple_of(LANES);
    let nv = nrows * group;
    let sets = nv.div_ceil(S);
    scores.clear();
    scores.resize(nv * n, f32::NEG_INFINITY);
    qt.clear();
    qt.resize(sets * S * hd, 0.0);
    // The positions first..=last as (block, first slot, slots, first position) runs.
    let runs = || super::block_runs(blocks, bs, first, last);
    // SAFETY (every block below): `I`'s instruction set is enabled (the callers' contract).
    let scale = unsafe { I::splat(shape.scale) };
    for g in 0..shape.kv_heads {
        // Vector v of the group is head g·group + v % group of row v / group; past the last,
        // the last again (its results are dropped).
        let query_at = |v: usize| {
            let v = v.min(nv - 1);
            (v / group) * width + (g * group + v % group) * hd
        };
        for v in 0..sets * S {
            let src = &q[query_at(v)..][..hd];
            let dst = &mut qt[v / S * S * hd..][..S * hd];
            for (d, &x) in src.iter().enumerate() {
                dst[d * S + v % S] = x;
            }
        }
        for set in 0..sets {
            let v0 = set * S;
            let qs = &qt[v0 * hd..][..S * hd];
            for (block, slot, len, at) in runs() {
                let i0 = at - lo;
                let keys = kv.keys(block, g);
                assert!(keys.len() == bs * hd);
                // Slot c of the block is position p0 + c.
                let p0 = lo + i0 - slot;
                let mut c0 = slot - slot % LANES;
                while c0 < slot + len {
                    // SAFETY: c0 + 16 ≤ bs, so the 16 lanes of each of the hd key rows are
                    // inside `keys`; `qs` holds hd · S values.
                    let acc =
                        unsafe { score_set::<I, S, E>(qs.as_ptr(), keys.as_ptr().add(c0), bs, hd) };
                    for (k, a) in acc.iter().enumerate().take(nv - v0) {
                        let v = v0 + k;
                        let own = pos0 + v / group;
                        let Some((from, to)) = visible(c0, slot, len, p0, first_of(own), own)
                        else {
                            continue;
                        };
                        // Lane l is position p0 + c0 + l, at index p0 + c0 - lo of the row:
                        // a multiple of 16 at least 0 and at most n - 16 (p0 + c0 is the
                        // start of a 16-position group that holds a position of lo..=last).
                        let at = v * n + (p0 + c0 - lo);
                        let dst = &mut scores[at..at + LANES];
                        // SAFETY: `dst` holds 16 floats; lanes from - c0..to - c0 ≤ 16.
                        unsafe {
                            I::store_lanes(dst.as_mut_ptr(), I::mul(*a, scale), from - c0, to - c0);
                        }
                    }
                    c0 += LANES;
                }
            }
        }
        for w in scores[..nv * n].chunks_exact_mut(n) {
            softmax_in_place(w);
        }
        for set in 0..sets {
            let v0 = set * S;
            // Each vector's row of weights (past the last vector, the last's again).
            let w: [&[f32]; S] = std::array::from_fn(|k| &scores[(v0 + k).min(nv - 1) * n..][..n]);
            for c in (0..hd).step_by(P * LANES) {
                // SAFETY: as above.
                let mut acc = [[unsafe { I::zero() }; P]; S];
                for (block, slot, len, at) in runs() {
                    let i0 = at - lo;
                    let values = &kv.values(block, g)[slot * hd..(slot + len) * hd];
                    let ws: [&[f32]; S] = std::array::from_fn(|k| &w[k][i0..i0 + len]);
                    // SAFETY: `values` holds len rows of hd ≥ c + 16P floats, each `ws` len.
                    unsafe {
                        weigh_set::<I, P, S, E>(&mut acc, &ws, values.as_ptr().add(c), hd, len);
                    }
                }
                for (k, a) in acc.iter().enumerate().take(nv - v0) {
                    let at = query_at(v0 + k) + c;
                    let o = &mut out[at..at + P * LANES];
                    for (j, a) in a.iter().enumerate() {
                        // SAFETY: `o` holds 16P floats.
                        unsafe { I::store(o.as_mut_ptr().add(j * LANES), *a) };
                    }
                }
            }
        }
        // The next group starts from -inf again.
        scores[..nv * n].fill(f32::NEG_INFINITY);
    }
}

/// The unscaled scores of a set's `S` query vectors (`qt[d · S + k]`) against the 16 key
/// positions at `k`, `k + stride`, … (one row per dimension).
///
/// # Safety
/// `I`'s instruction set; `qt` holds `hd · S` floats and each of the `hd` rows at `k` 16.
#[inline(always)]
unsafe fn score_set<I: Isa, const S: usize, E: Lanes>(
    qt: *const f32,
    k: *const E,
    stride: usize,
    hd: usize,
) -> [I::V; S] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [I::zero(); S];
        for d in 0..hd {
            let keys = E::load::<I>(k.add(d * stride));
            let q = qt.add(d * S);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = I::fmadd(I::splat(*q.add(j)), keys, *a);
            }
        }
        acc
    }
}

/// Adds `len` positions' weighted values to a set's accumulators for `16P` dimensions:
/// `acc[k] += ws[k][i] · v[i · hd ..][..16P]`, positions in order.
///
/// # Safety
/// `I`'s instruction set; `v` points at `len` rows of `hd` floats with `16P` left in each,
/// every `ws[k]` holds `len` weights.
#[inline(always)]
unsafe fn weigh_set<I: Isa, const P: usize, const S: usize, E: Lanes>(
    acc: &mut [[I::V; P]; S],
    ws: &[&[f32]; S],
    v: *const E,
    hd: usize,
    len: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let mut a = *acc;
        for i in 0..len {
            let x: [I::V; P] = std::array::from_fn(|j| E::load::<I>(v.add(i * hd + j * LANES)));
            for k in 0..S {
                let w = I::splat(*ws[k].get_unchecked(i));
                for j in 0..P {
                    a[k][j] = I::fmadd(w, x[j], a[k][j]);
                }
            }
        }
        *acc = a;
    }
}
