//! The AVX2 kernels: integer dot products of a weight (sub-)block's 32 bytes with an
//! activation block, 8 lanes of i32 scaled into 8 lanes of f32 accumulators, reduced once per
//! output.

use std::arch::x86_64::*;

use super::{BlockRun, BlockType, QK, QuantRows, k_scales};

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
const Q4K: u8 = 5;
const Q5K: u8 = 6;
const Q6K: u8 = 7;

/// Same contract as `portable::dot_rows`; the caller has checked
/// [`crate::simd::avx2_fma_f16c`].
pub(super) fn dot_rows(kind: BlockType, wrow: &[u8], x: &QuantRows, out: &mut [f32]) {
    let nb = x.cols / QK;
    assert!(x.cols.is_multiple_of(kind.width()));
    assert!(wrow.len() >= x.cols / kind.width() * kind.bytes());
    assert!(x.q.len() >= out.len() * x.cols);
    assert!(x.d.len() >= out.len() * nb && x.s.len() >= out.len() * nb);
    assert!(x.sum.len() >= out.len() * nb);
    // SAFETY: AVX2, FMA and F16C are present (checked by the one caller, `super::dot_rows`),
    // and every load below stays inside `wrow` and `x`'s buffers, whose lengths the asserts
    // above check against the loop bounds.
    unsafe {
        match kind {
            BlockType::Q4_0 => rows::<Q4_0>(wrow, x, out, nb),
            BlockType::Q4_1 => rows::<Q4_1>(wrow, x, out, nb),
            BlockType::Q5_0 => rows::<Q5_0>(wrow, x, out, nb),
            BlockType::Q5_1 => rows::<Q5_1>(wrow, x, out, nb),
            BlockType::Q8_0 => rows::<Q8_0>(wrow, x, out, nb),
            BlockType::Q4K => rows::<Q4K>(wrow, x, out, nb),
            BlockType::Q5K => rows::<Q5K>(wrow, x, out, nb),
            BlockType::Q6K => rows::<Q6K>(wrow, x, out, nb),
        }
    }
}

/// Up to four activation rows at a time share each unpacked weight block; the row count
/// and the block type are constants so the accumulators stay in registers.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows<const K: u8>(wrow: &[u8], x: &QuantRows, out: &mut [f32], nb: usize) {
    let mut r0 = 0;
    // SAFETY: as in `dot_rows`.
    unsafe {
        while out.len() - r0 >= 4 {
            tile::<4, K>(wrow, x, r0, nb, &mut out[r0..r0 + 4]);
            r0 += 4;
        }
        match out.len() - r0 {
            3 => tile::<3, K>(wrow, x, r0, nb, &mut out[r0..]),
            2 => tile::<2, K>(wrow, x, r0, nb, &mut out[r0..]),
            1 => tile::<1, K>(wrow, x, r0, nb, &mut out[r0..]),
            _ => {}
        }
    }
}

/// Rows `r0..r0 + R` against one weight row, by the block type's tile.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<const R: usize, const K: u8>(
    wrow: &[u8],
    x: &QuantRows,
    r0: usize,
    nb: usize,
    out: &mut [f32],
) {
    // SAFETY: as in `dot_rows`.
    unsafe {
        match K {
            Q4K | Q5K => tile_q45k::<R, K>(wrow, x, r0, nb, out),
            Q6K => tile_q6k::<R>(wrow, x, r0, nb, out),
            _ => tile_32::<R, K>(wrow, x, r0, nb, out),
        }
    }
}

/// The 32-weight types: one block per activation block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile_32<const R: usize, const K: u8>(
    wrow: &[u8],
    x: &QuantRows,
    r0: usize,
    nb: usize,
    out: &mut [f32],
) {
    // SAFETY: as in `dot_rows`: `wrow` holds `nb` blocks, `x` holds rows `r0..r0 + R`.
    unsafe {
        let (bb, qs_at) = match K {
            Q4_0 => (18, 2),
            Q4_1 => (20, 4),
            Q5_0 => (22, 6),
            Q5_1 => (24, 8),
            _ => (34, 2),
        };
        // Types whose values are unsigned, with a min added: Q4_1, Q5_1.
        let unsigned = K == Q4_1 || K == Q5_1;
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0f);
        let sixteen = _mm256_set1_epi8(0x10);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut macc = [0f32; R];
        let xq = x.q.as_ptr();
        let xd = x.d.as_ptr();
        let xs = x.s.as_ptr();
        for b in 0..nb {
            let blk = wrow.as_ptr().add(b * bb);
            // d (and, for Q4_1 and Q5_1, m right after it) converted by F16C.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                blk.cast::<i32>(),
            )));
            let d = _mm_cvtss_f32(dm);
            // The weight block as 32 bytes: unsigned values (Q4_1, Q5_1), else signed ones.
            let w = match K {
                Q8_0 => _mm256_loadu_si256(blk.add(2).cast()),
                _ => {
                    let qs = _mm_loadu_si128(blk.add(qs_at).cast());
                    let nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), low);
                    match K {
                        Q4_0 => _mm256_sub_epi8(nib, _mm256_set1_epi8(8)),
                        Q4_1 => nib,
                        _ => {
                            // The fifth bits sit between the scales and the nibbles.
                            let bits = std::ptr::read_unaligned(blk.add(qs_at - 4).cast::<u32>());
                            let high = _mm256_and_si256(bytes_from_bits(bits), sixteen);
                            let q = _mm256_or_si256(nib, high);
                            if K == Q5_0 {
                                _mm256_sub_epi8(q, sixteen)
                            } else {
                                q
                            }
                        }
                    }
                }
            };
            // maddubs multiplies unsigned by signed bytes: a signed weight lends its sign to
            // the activation.
            let wabs = if unsigned { w } else { _mm256_sign_epi8(w, w) };
            for r in 0..R {
                let xi = (r0 + r) * nb + b;
                let a = _mm256_loadu_si256(xq.add(xi * QK).cast());
                let a = if unsigned { a } else { _mm256_sign_epi8(a, w) };
                let sum32 = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, a), ones);
                let scale = _mm256_set1_ps(d * *xd.add(xi));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum32), scale, acc[r]);
                if unsigned {
                    macc[r] += _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)) * *xs.add(xi);
                }
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]) + macc[r];
        }
    }
}

/// Q4_K and Q5_K: per super-block, its scales and mins decoded once, then four runs of 32
/// bytes, each two sub-blocks (low and high nibbles) against two activation blocks. The mins
/// of all eight sub-blocks meet the activations' eight block sums in one vector.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile_q45k<const R: usize, const K: u8>(
    wrow: &[u8],
    x: &QuantRows,
    r0: usize,
    nb: usize,
    out: &mut [f32],
) {
    // SAFETY: as in `dot_rows`: `wrow` holds `nb / 8` super-blocks, `x` rows `r0..r0 + R`.
    unsafe {
        let (bb, qs_at) = if K == Q4K { (144, 16) } else { (176, 48) };
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0f);
        let sixteen = _mm256_set1_epi8(0x10);
        let mut acc = [_mm256_setzero_ps(); R];
        let xq = x.q.as_ptr();
        let xd = x.d.as_ptr();
        let xsum = x.sum.as_ptr();
        for sb in 0..nb / 8 {
            let blk = wrow.as_ptr().add(sb * bb);
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                blk.cast::<i32>(),
            )));
            let d = _mm_cvtss_f32(dm);
            let (sc, m) = k_scales(&*blk.add(4).cast::<[u8; 12]>());
            // dmin · m_j for the eight sub-blocks.
            let mins = _mm256_mul_ps(
                _mm256_set1_ps(_mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1))),
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(m.as_ptr().cast()))),
            );
            // Q5_K's fifth bits: bit j of byte i for weight i of sub-block j, shifted down two
            // sub-blocks per run (16-bit shifts are byte-exact here: only bits 0 and 1 of each
            // byte are kept, and nothing from a neighbouring byte lands there).
            let mut fifth = if K == Q5K {
                _mm256_loadu_si256(blk.add(16).cast())
            } else {
                _mm256_setzero_si256()
            };
            for p in 0..4 {
                let v = _mm256_loadu_si256(blk.add(qs_at + 32 * p).cast());
                let mut lo = _mm256_and_si256(v, low);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                if K == Q5K {
                    let h0 = _mm256_and_si256(_mm256_slli_epi16(fifth, 4), sixteen);
                    let h1 = _mm256_and_si256(_mm256_slli_epi16(fifth, 3), sixteen);
                    lo = _mm256_or_si256(lo, h0);
                    hi = _mm256_or_si256(hi, h1);
                    fifth = _mm256_srli_epi16(fifth, 2);
                }
                let (d0, d1) = (d * f32::from(sc[2 * p]), d * f32::from(sc[2 * p + 1]));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xi = (r0 + r) * nb + 8 * sb + 2 * p;
                    let a0 = _mm256_loadu_si256(xq.add(xi * QK).cast());
                    let a1 = _mm256_loadu_si256(xq.add((xi + 1) * QK).cast());
                    let s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), ones);
                    let s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), ones);
                    // The two sub-blocks summed apart from the accumulator, so that one row
                    // (decode) has a short dependency chain.
                    let f = _mm256_mul_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(d0 * *xd.add(xi)));
                    let f = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(s1),
                        _mm256_set1_ps(d1 * *xd.add(xi + 1)),
                        f,
                    );
                    *acc = _mm256_add_ps(*acc, f);
                }
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let sums = _mm256_loadu_ps(xsum.add((r0 + r) * nb + 8 * sb));
                *acc = _mm256_fnmadd_ps(mins, sums, *acc);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
    }
}

/// Q6_K: per half super-block, three loads give four runs of 32 six-bit values; each run's
/// two scales (one per 16 weights) multiply in the second integer step instead of ones.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile_q6k<const R: usize>(
    wrow: &[u8],
    x: &QuantRows,
    r0: usize,
    nb: usize,
    out: &mut [f32],
) {
    // SAFETY: as in `dot_rows`: `wrow` holds `nb / 8` super-blocks, `x` rows `r0..r0 + R`.
    unsafe {
        let low = _mm256_set1_epi8(0x0f);
        let pair = _mm256_set1_epi8(0x30);
        let bias = _mm256_set1_epi8(32);
        let mut acc = [_mm256_setzero_ps(); R];
        let xq = x.q.as_ptr();
        let xd = x.d.as_ptr();
        for sb in 0..nb / 8 {
            let blk = wrow.as_ptr().add(sb * 210);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                std::ptr::read_unaligned(blk.add(208).cast::<u16>()),
            ))));
            let scales = blk.add(192).cast::<i8>();
            for half in 0..2 {
                let ql0 = _mm256_loadu_si256(blk.add(64 * half).cast());
                let ql1 = _mm256_loadu_si256(blk.add(64 * half + 32).cast());
                let qh = _mm256_loadu_si256(blk.add(128 + 32 * half).cast());
                // Bits 2k, 2k + 1 of each qh byte moved to bits 4, 5 (16-bit shifts are
                // byte-exact after the mask, as in `tile_q45k`).
                let runs = [
                    (_mm256_and_si256(ql0, low), _mm256_slli_epi16(qh, 4)),
                    (_mm256_and_si256(ql1, low), _mm256_slli_epi16(qh, 2)),
                    (_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), qh),
                    (
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                        _mm256_srli_epi16(qh, 2),
                    ),
                ];
                for (k, (nib, high)) in runs.into_iter().enumerate() {
                    let w =
                        _mm256_sub_epi8(_mm256_or_si256(nib, _mm256_and_si256(high, pair)), bias);
                    let wabs = _mm256_sign_epi8(w, w);
                    let j = 4 * half + k;
                    // The i16 lanes of the lower 128 bits hold weights 0..16.
                    let sc = _mm256_set_m128i(
                        _mm_set1_epi16(i16::from(*scales.add(2 * j + 1))),
                        _mm_set1_epi16(i16::from(*scales.add(2 * j))),
                    );
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let xi = (r0 + r) * nb + 8 * sb + j;
                        let a = _mm256_loadu_si256(xq.add(xi * QK).cast());
                        let a = _mm256_sign_epi8(a, w);
                        let sum32 = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, a), sc);
                        let scale = _mm256_set1_ps(d * *xd.add(xi));
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum32), scale, *acc);
                    }
                }
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
    }
}

/// `super::quantize_block` in AVX2: the same max, the same `1 / d`, and per value the
/// truncated quotient stepped one away from zero when the fraction is at least a half (what
/// `round_away` does), so the bytes are the scalar version's.
pub(super) fn quantize_block(xb: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    assert!(xb.len() == QK && q.len() == QK);
    // SAFETY: AVX2 and FMA are present (checked by the one caller); the loads and the store
    // cover the 32 values of `xb` and `q`, asserted above.
    unsafe { quantize_block_avx2(xb, q) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block_avx2(xb: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    // SAFETY: as in `quantize_block`.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(xb.as_ptr().add(8 * k)));
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for v in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *v));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        let d = amax / 127.0;
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let ints: [__m256i; 4] = std::array::from_fn(|k| {
            let y = _mm256_mul_ps(v[k], inv);
            let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            let f = _mm256_sub_ps(y, t);
            let up = _mm256_and_ps(_mm256_cmp_ps(f, half, _CMP_GE_OQ), one);
            let down = _mm256_and_ps(_mm256_cmp_ps(f, _mm256_sub_ps(sign, half), _CMP_LE_OQ), one);
            let r = _mm256_sub_ps(_mm256_add_ps(t, up), down);
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
        });
        // i32 → i8 in order: the packs interleave 128-bit halves, the permutation undoes it.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(ints[0], ints[1]),
            _mm256_packs_epi32(ints[2], ints[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr().cast(), p);
        let h0 = hsum_i32(_mm256_add_epi32(ints[0], ints[1]));
        let h1 = hsum_i32(_mm256_add_epi32(ints[2], ints[3]));
        (amax, [h0, h1])
    }
}

/// `super::fill_blocks` with the AVX2 quantiser inlined and F16C's rounding; the caller has
/// checked [`crate::simd::avx2_fma_f16c`].
pub(super) fn fill_blocks(run: BlockRun<'_>) {
    // SAFETY: AVX2, FMA and F16C are present (checked by the one caller).
    unsafe { fill_blocks_avx2(run) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fill_blocks_avx2(run: BlockRun<'_>) {
    super::fill_blocks_with(
        run,
        |xb, qb| {
            assert!(xb.len() == QK && qb.len() == QK);
            // SAFETY: AVX2 and FMA are enabled here; 32 values each, asserted.
            unsafe { quantize_block_avx2(xb, qb) }
        },
        |v| {
            // Round to nearest even, as `super::round_f16`.
            let h = _mm_cvtps_ph(_mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT);
            _mm_cvtss_f32(_mm_cvtph_ps(h))
        },
    );
}

#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    _mm_cvtsi128_si32(s)
}

/// `0xff` in byte `i` where bit `i` of `bits` is set, else 0.
#[target_feature(enable = "avx2")]
fn bytes_from_bits(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // Byte i takes byte i / 8 of `bits` (the shuffle stays within 128-bit halves, each of
    // which holds all four bytes), then keeps its own bit i mod 8.
    let spread = _mm256_shuffle_epi8(
        v,
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}
