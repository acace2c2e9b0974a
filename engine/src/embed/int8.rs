//! The encoder's int8 matmul: `y ≈ x · w` with the weights quantised once at load (signed
//! 8-bit) and the activations quantised on the way in (8-bit), the products summed exactly
//! in 32-bit integers per block and scaled back to f32.
//!
//! Why: the fp32 panel matmul (`panels.rs`) runs near the core's FMA peak, so ingestion, which
//! is embedding-bound, can only get faster with more multiply-adds per instruction. AVX-512
//! VNNI's `vpdpbusd` does 64 u8 × i8 multiply-adds per instruction where an fp32 FMA does 16
//! (a 512-bit one) or 8, and the weights shrink to 16 MB for MiniLM (a byte per weight plus a
//! scale and an offset per block) from 42 MB, so more of them stay in cache between queries. Without VNNI the int8 path would gain nothing on
//! x86 (AVX2's `vpmaddubsw` saturates at 16 bits and needs three instructions per 32 products),
//! so `engine.embed_precision = "auto"` takes it only where the CPU has VNNI (see
//! [`crate::simd::avx512_vnni`]).
//!
//! Integer sums are exact and the f32 steps run in the same order in both kernels, so the
//! VNNI kernel and the portable one give the same bits, and a row's result never depends on
//! the rows beside it (each row has its own scales).
//!
//! Scales: one per block of [`BLOCK`] values along `k`, for each weight column and each
//! activation row (GGUF's Q8_0 scheme, in smaller blocks, on both sides); each block's integer
//! sum is scaled and added in f32.
//!
//! Layout: the `(k, n)` weights are cut into panels of [`PANEL`] columns; within a panel, each
//! group of four consecutive `k` holds, column after column, the column's four weights (128
//! bytes: two 512-bit vectors of sixteen columns each, as `vpdpbusd` wants them). `k` is padded
//! to whole blocks and `n` to whole panels with zero weights.

use rayon::prelude::*;

/// Token rows per register tile.
const TILE_ROWS: usize = 6;
/// Output columns per panel and register tile (two 16-lane vectors).
const PANEL: usize = 32;
/// `k` values per 32-bit lane of `vpdpbusd`.
const GROUP: usize = 4;
/// `k` values per scale: weights and activations are quantised in blocks of this many along
/// `k` (as GGUF's Q8_0 does in blocks of 32), so an outlier channel costs precision in its
/// block only. Measured on the reference sentences (minimum cosine to sentence-transformers):
/// one scale per activation row and weight column 0.995; blocks of 32 0.9987; blocks of 16
/// 0.9993. Weights alone quantised (activations in f32) give 0.9980 per column, 0.9995 in
/// blocks of 64, 0.9996 in blocks of 32 or 16. 16-bit activations (two `vpdpbusd` per group)
/// with blocks of 32 reached 0.9996 but cost a third of the speed-up.
const BLOCK: usize = 16;
/// Panels per parallel task when few rows split the work by columns.
const BAND_PANELS: usize = 3;
/// From this many rows on the work is split by rows instead.
const ROW_SPLIT_MIN: usize = 96;

/// A `(k, n)` weight matrix quantised to i8 in blocks of [`BLOCK`] along `k`, per column,
/// and packed into panels.
pub(crate) struct PackedI8 {
    k: usize,
    n: usize,
    /// `ceil(k / BLOCK)`.
    blocks: usize,
    /// `ceil(n / 32)` panels, each `blocks × BLOCK / 4` groups of 128 bytes.
    data: Vec<i8>,
    /// Per panel, block and column: the weight `w` is `scale · q`.
    scale: Vec<f32>,
    /// Per panel, block and column: 128 times the sum of the block's codes, which the
    /// activations' offset adds (see [`Rows`]).
    offset: Vec<i32>,
}

impl PackedI8 {
    /// Quantises and packs the row-major `(k, n)` matrix `w`.
    ///
    /// # Panics
    /// When `w.len() != k * n` (a caller bug).
    pub(crate) fn new(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(
            w.len(),
            k * n,
            "int8 packing: the slice does not hold k × n"
        );
        let blocks = k.div_ceil(BLOCK);
        let panels = n.div_ceil(PANEL);
        let mut scale = vec![0.0f32; panels * blocks * PANEL];
        let mut offset = vec![0i32; panels * blocks * PANEL];
        let mut data = vec![0i8; panels * blocks * BLOCK * PANEL];
        for c in 0..n {
            let (p, lane) = (c / PANEL, c % PANEL);
            for b in 0..blocks {
                let rows = b * BLOCK..k.min((b + 1) * BLOCK);
                let amax = rows
                    .clone()
                    .map(|i| w[i * n + c].abs())
                    .fold(0.0f32, f32::max);
                let s = if amax > 0.0 && amax.is_finite() {
                    amax / 127.0
                } else {
                    1.0
                };
                let at = (p * blocks + b) * PANEL + lane;
                scale[at] = s;
                for i in rows {
                    let q = (w[i * n + c] / s).round().clamp(-127.0, 127.0) as i8;
                    offset[at] += 128 * i32::from(q);
                    let (g, j) = (i / GROUP, i % GROUP);
                    data[(p * blocks * BLOCK / GROUP + g) * PANEL * GROUP + lane * GROUP + j] = q;
                }
            }
        }
        Self {
            k,
            n,
            blocks,
            data,
            scale,
            offset,
        }
    }

    /// Rows of the matrix (`in`).
    pub(crate) fn rows(&self) -> usize {
        self.k
    }

    /// Columns of the matrix (`out`).
    pub(crate) fn cols(&self) -> usize {
        self.n
    }

    fn panel(&self, p: usize) -> Panel<'_> {
        let bytes = self.blocks * BLOCK * PANEL;
        let consts = self.blocks * PANEL;
        Panel {
            w: &self.data[p * bytes..(p + 1) * bytes],
            scale: &self.scale[p * consts..(p + 1) * consts],
            offset: &self.offset[p * consts..(p + 1) * consts],
            cols: PANEL.min(self.n - p * PANEL),
        }
    }
}

/// One panel's weights and per-block, per-column constants.
struct Panel<'a> {
    w: &'a [i8],
    scale: &'a [f32],
    offset: &'a [i32],
    /// Columns of the panel inside the matrix (the last panel may be partial).
    cols: usize,
}

/// Activation rows quantised in blocks of [`BLOCK`], each row padded to whole blocks:
/// symmetric codes `a` in -127..=127 with `x ≈ scale · a`, stored as `a + 128` (unsigned, as
/// `vpdpbusd` takes them; the weights' `offset` takes the 128 back out). Reusable: the
/// encoder's forward pass keeps one across calls ([`matmul_with`]).
#[derive(Default)]
pub(crate) struct Rows {
    /// Blocks per row.
    blocks: usize,
    q: Vec<u8>,
    /// Per row and block.
    scale: Vec<f32>,
}

impl Rows {
    /// Quantises the `(m, k)` rows `x` into `self`, reusing its buffers (codes in a row's
    /// padding past `k` are left as they were: they meet zero weights).
    fn quantise(&mut self, x: &[f32], m: usize, k: usize, blocks: usize) {
        let stride = blocks * BLOCK;
        self.blocks = blocks;
        if self.q.len() < m * stride {
            self.q.resize(m * stride, 0);
        }
        if self.scale.len() < m * blocks {
            self.scale.resize(m * blocks, 0.0);
        }
        let (q, scale) = (&mut self.q[..m * stride], &mut self.scale[..m * blocks]);
        let each = |((row, q), s): ((&[f32], &mut [u8]), &mut [f32])| {
            for ((x, q), s) in row.chunks(BLOCK).zip(q.chunks_mut(BLOCK)).zip(s) {
                *s = quantise_block(x, q);
            }
        };
        if m >= ROW_SPLIT_MIN {
            x.par_chunks(k)
                .zip(q.par_chunks_mut(stride))
                .zip(scale.par_chunks_mut(blocks))
                .for_each(each);
        } else {
            x.chunks(k)
                .zip(q.chunks_mut(stride))
                .zip(scale.chunks_mut(blocks))
                .for_each(each);
        }
    }
}

/// Quantises one block of at most [`BLOCK`] values (see [`Rows`]), returning its scale.
#[inline]
fn quantise_block(x: &[f32], q: &mut [u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x.len() == BLOCK && crate::simd::avx512_vnni() {
        return vnni::quantise_block(x, q);
    }
    portable_quantise_block(x, q)
}

/// [`quantise_block`] in plain Rust. The steps (and their handling of NaN: ignored by the
/// maximum, coded as the lowest code) are those of the vector version, so both give the same
/// bytes.
fn portable_quantise_block(x: &[f32], q: &mut [u8]) -> f32 {
    let amax = x
        .iter()
        .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    let bad = !(amax > 0.0 && amax.is_finite());
    let inv = if bad { 0.0 } else { 127.0 / amax };
    // Round to nearest without a libm call: shift to non-negative, add a half, truncate.
    for (d, &v) in q.iter_mut().zip(x) {
        let t = v * inv + 128.5;
        let t = if t > 1.0 { t } else { 1.0 };
        let t = if t < 255.5 { t } else { 255.5 };
        *d = t as u8;
    }
    if bad { 1.0 } else { amax / 127.0 }
}

/// `y ≈ x · w`: `x` is `(m, k)`, `y` is `(m, n)`, row-major, for `w` packed as [`PackedI8`].
///
/// # Panics
/// When a slice length does not match its shape (a caller bug, never input-dependent).
pub(crate) fn matmul(x: &[f32], w: &PackedI8, y: &mut [f32], m: usize) {
    matmul_with(x, w, y, m, &mut Rows::default());
}

/// [`matmul`] quantising the activations into `rows`, whose buffers are reused from call to
/// call (a fresh buffer per call was paged in and zeroed each time).
pub(crate) fn matmul_with(x: &[f32], w: &PackedI8, y: &mut [f32], m: usize, rows: &mut Rows) {
    let (k, n) = (w.k, w.n);
    assert!(
        x.len() == m * k && y.len() == m * n,
        "int8 matmul: shapes do not match the slices"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    rows.quantise(x, m, k, w.blocks);
    let rows = &*rows;
    let panels = n.div_ceil(PANEL);
    if m >= ROW_SPLIT_MIN {
        let tasks = rayon::current_num_threads().max(1) * 4;
        let per = m
            .div_ceil(tasks)
            .next_multiple_of(TILE_ROWS)
            .max(4 * TILE_ROWS);
        y.par_chunks_mut(per * n).enumerate().for_each(|(t, y)| {
            let count = y.len() / n;
            for p in 0..panels {
                panel_product(rows, t * per, count, &w.panel(p), y, n, p * PANEL);
            }
        });
        return;
    }
    let bands: Vec<(usize, Vec<f32>)> = (0..panels)
        .step_by(BAND_PANELS)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|p0| {
            let count = BAND_PANELS.min(panels - p0);
            let width = count * PANEL;
            let mut out = vec![0.0f32; m * width];
            for j in 0..count {
                panel_product(rows, 0, m, &w.panel(p0 + j), &mut out, width, j * PANEL);
            }
            (p0 * PANEL, out)
        })
        .collect();
    for (c0, out) in bands {
        let width = out.len() / m;
        let cols = width.min(n - c0);
        for (row, part) in y.chunks_exact_mut(n).zip(out.chunks_exact(width)) {
            row[c0..c0 + cols].copy_from_slice(&part[..cols]);
        }
    }
}

/// Rows `r0..r0 + m` of the quantised activations times one panel, into `out` (whose row 0 is
/// activation row `r0`) at column `oc`, row stride `ow`; only the panel's real columns are
/// written.
fn panel_product(
    rows: &Rows,
    r0: usize,
    m: usize,
    p: &Panel,
    out: &mut [f32],
    ow: usize,
    oc: usize,
) {
    let stride = rows.blocks * BLOCK;
    assert!(oc + p.cols <= ow && out.len() >= m * ow);
    assert!(rows.q.len() >= (r0 + m) * stride && rows.scale.len() >= (r0 + m) * rows.blocks);
    assert!(p.w.len() >= stride * PANEL && p.scale.len() >= rows.blocks * PANEL);
    assert!(p.offset.len() >= rows.blocks * PANEL);
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512_vnni() {
        vnni::panel_product(rows, r0, m, p, out, ow, oc);
        return;
    }
    portable_panel_product(rows, r0, m, p, out, ow, oc);
}

/// The same arithmetic in plain Rust, one row at a time: per block an exact integer sum, then
/// `acc = fma(sum as f32, row scale * column scale, acc)`, blocks in order.
fn portable_panel_product(
    rows: &Rows,
    r0: usize,
    m: usize,
    p: &Panel,
    out: &mut [f32],
    ow: usize,
    oc: usize,
) {
    let stride = rows.blocks * BLOCK;
    for r in 0..m {
        let a = &rows.q[(r0 + r) * stride..(r0 + r + 1) * stride];
        let mut acc = [0.0f32; PANEL];
        for b in 0..rows.blocks {
            let consts = b * PANEL..(b + 1) * PANEL;
            let mut sum = [0i32; PANEL];
            for g in b * BLOCK / GROUP..(b + 1) * BLOCK / GROUP {
                let w = &p.w[g * PANEL * GROUP..(g + 1) * PANEL * GROUP];
                let a = &a[g * GROUP..(g + 1) * GROUP];
                for (c, sum) in sum.iter_mut().enumerate() {
                    for j in 0..GROUP {
                        *sum += i32::from(a[j]) * i32::from(w[c * GROUP + j]);
                    }
                }
            }
            let s = rows.scale[(r0 + r) * rows.blocks + b];
            for ((acc, sum), (o, ws)) in acc
                .iter_mut()
                .zip(sum)
                .zip(p.offset[consts.clone()].iter().zip(&p.scale[consts]))
            {
                // Fused, as the vector kernel's FMA (a libm call where the CPU has none).
                *acc = ((sum - o) as f32).mul_add(s * ws, *acc);
            }
        }
        out[r * ow + oc..r * ow + oc + p.cols].copy_from_slice(&acc[..p.cols]);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    use std::arch::x86_64::{
        __m512, __m512i, _mm_storeu_si128, _mm512_abs_ps, _mm512_add_ps, _mm512_cvtepi32_epi8,
        _mm512_cvtepi32_ps, _mm512_cvttps_epu32, _mm512_dpbusd_epi32, _mm512_fmadd_ps,
        _mm512_loadu_epi32, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_max_ps, _mm512_min_ps,
        _mm512_mul_ps, _mm512_reduce_max_ps, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_setzero_si512, _mm512_sub_epi32,
    };

    use super::{BLOCK, GROUP, PANEL, Panel, Rows, TILE_ROWS};

    /// Vectors of sixteen lanes per block.
    const V: usize = BLOCK / 16;
    const _: () = assert!(
        BLOCK.is_multiple_of(16),
        "the quantiser works 16 lanes at a time"
    );

    /// [`super::portable_quantise_block`] for a whole block, sixteen lanes at a time; the
    /// caller has checked [`crate::simd::avx512_vnni`].
    pub(super) fn quantise_block(x: &[f32], q: &mut [u8]) -> f32 {
        assert!(x.len() == BLOCK && q.len() >= BLOCK);
        // SAFETY: the CPU has AVX-512F/BW (checked by the caller); every access is inside the
        // BLOCK values and bytes asserted above.
        unsafe { quantise(x, q) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn quantise(x: &[f32], q: &mut [u8]) -> f32 {
        let mut v = [_mm512_setzero_ps(); V];
        // `max(abs, m)` returns `m` for a NaN lane, as the portable fold ignores NaN.
        let mut m = _mm512_setzero_ps();
        for (i, v) in v.iter_mut().enumerate() {
            // SAFETY: (caller) x holds BLOCK floats, 16 per vector.
            *v = unsafe { _mm512_loadu_ps(x.as_ptr().add(16 * i)) };
            m = _mm512_max_ps(_mm512_abs_ps(*v), m);
        }
        let amax = _mm512_reduce_max_ps(m);
        let bad = !(amax > 0.0 && amax.is_finite());
        let inv = _mm512_set1_ps(if bad { 0.0 } else { 127.0 / amax });
        let (half, one, cap) = (
            _mm512_set1_ps(128.5),
            _mm512_set1_ps(1.0),
            _mm512_set1_ps(255.5),
        );
        for (i, v) in v.iter().enumerate() {
            let t = _mm512_add_ps(_mm512_mul_ps(*v, inv), half);
            // `max(t, 1)` gives 1 for a NaN lane, as the portable code does.
            let t = _mm512_min_ps(_mm512_max_ps(t, one), cap);
            let c = _mm512_cvtepi32_epi8(_mm512_cvttps_epu32(t));
            // SAFETY: (caller) q holds BLOCK bytes; each store writes 16.
            unsafe { _mm_storeu_si128(q.as_mut_ptr().add(16 * i).cast(), c) };
        }
        if bad { 1.0 } else { amax / 127.0 }
    }

    /// Same contract as `portable_panel_product` (bounds asserted by the caller,
    /// `panel_product`); the caller has checked [`crate::simd::avx512_vnni`].
    pub(super) fn panel_product(
        rows: &Rows,
        r0: usize,
        m: usize,
        p: &Panel,
        out: &mut [f32],
        ow: usize,
        oc: usize,
    ) {
        for t in (0..m).step_by(TILE_ROWS) {
            let (a0, o0) = (r0 + t, t * ow + oc);
            // SAFETY: the CPU has AVX-512F/BW and VNNI (`crate::simd::avx512_vnni`). The tile
            // reads activation rows a0..a0+R (R ≤ m - t) over their `blocks × BLOCK` bytes and
            // scales, the panel's `blocks × BLOCK × 32` bytes and `blocks × 32` constants, and
            // writes out rows t..t+R at columns oc..oc+cols ≤ ow: inside the slices, as
            // `panel_product` asserted.
            unsafe {
                match m - t {
                    1 => tile::<1>(rows, a0, p, out, o0, ow),
                    2 => tile::<2>(rows, a0, p, out, o0, ow),
                    3 => tile::<3>(rows, a0, p, out, o0, ow),
                    4 => tile::<4>(rows, a0, p, out, o0, ow),
                    5 => tile::<5>(rows, a0, p, out, o0, ow),
                    _ => tile::<TILE_ROWS>(rows, a0, p, out, o0, ow),
                }
            }
        }
    }

    /// One `R × 32` tile: activation rows `a0..a0+R` times the panel, written at `out[o0..]`
    /// (row stride `ow`), the panel's real columns only.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize>(
        rows: &Rows,
        a0: usize,
        p: &Panel,
        out: &mut [f32],
        o0: usize,
        ow: usize,
    ) {
        let stride = rows.blocks * BLOCK;
        let mut acc: [[__m512; 2]; R] = [[_mm512_setzero_ps(); 2]; R];
        let ap = rows.q.as_ptr();
        let wp = p.w.as_ptr();
        for b in 0..rows.blocks {
            // SAFETY: (caller) block b's 32 constants are inside the panel's.
            let (neg, ws) = unsafe {
                let c = b * PANEL;
                let z = _mm512_setzero_si512();
                (
                    [
                        _mm512_sub_epi32(z, _mm512_loadu_epi32(p.offset.as_ptr().add(c))),
                        _mm512_sub_epi32(z, _mm512_loadu_epi32(p.offset.as_ptr().add(c + 16))),
                    ],
                    [
                        _mm512_loadu_ps(p.scale.as_ptr().add(c)),
                        _mm512_loadu_ps(p.scale.as_ptr().add(c + 16)),
                    ],
                )
            };
            // The sums start at minus the offset (the codes' +128 times the weights).
            let mut sum: [[__m512i; 2]; R] = [neg; R];
            for g in b * BLOCK / GROUP..(b + 1) * BLOCK / GROUP {
                // SAFETY: (caller) g < blocks × BLOCK / 4, so the group's 128 bytes are inside
                // the panel, and the four bytes at g * 4 of rows a0..a0+R inside the
                // activations.
                unsafe {
                    let w = wp.add(g * PANEL * GROUP);
                    let w0 = _mm512_loadu_epi32(w.cast());
                    let w1 = _mm512_loadu_epi32(w.add(64).cast());
                    for (r, sum) in sum.iter_mut().enumerate() {
                        let at = (a0 + r) * stride + g * GROUP;
                        let a = _mm512_set1_epi32(ap.add(at).cast::<i32>().read_unaligned());
                        sum[0] = _mm512_dpbusd_epi32(sum[0], a, w0);
                        sum[1] = _mm512_dpbusd_epi32(sum[1], a, w1);
                    }
                }
            }
            for (r, (acc, sum)) in acc.iter_mut().zip(&sum).enumerate() {
                let s = _mm512_set1_ps(rows.scale[(a0 + r) * rows.blocks + b]);
                for h in 0..2 {
                    let sc = _mm512_mul_ps(s, ws[h]);
                    acc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[h]), sc, acc[h]);
                }
            }
        }
        let mask = |c: usize| -> u16 {
            if c >= 16 {
                u16::MAX
            } else {
                ((1u32 << c) - 1) as u16
            }
        };
        let masks = [mask(p.cols), mask(p.cols.saturating_sub(16))];
        let op = out.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate() {
            for (h, acc) in acc.iter().enumerate() {
                // SAFETY: (caller) output row r < R and its columns below `cols` are inside
                // `out` (masked stores).
                unsafe { _mm512_mask_storeu_ps(op.add(o0 + r * ow + 16 * h), masks[h], *acc) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0.0f64; m * n];
        for r in 0..m {
            for i in 0..k {
                for c in 0..n {
                    y[r * n + c] += f64::from(x[r * k + i]) * f64::from(w[i * n + c]);
                }
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    /// The portable kernel over every panel, for comparison with whatever `matmul` ran.
    fn portable(x: &[f32], w: &PackedI8, m: usize) -> Vec<f32> {
        let mut rows = Rows::default();
        rows.quantise(x, m, w.k, w.blocks);
        let mut y = vec![f32::NAN; m * w.n];
        for p in 0..w.n.div_ceil(PANEL) {
            portable_panel_product(&rows, 0, m, &w.panel(p), &mut y, w.n, p * PANEL);
        }
        y
    }

    #[test]
    fn close_to_fp32_and_the_same_bits_in_every_kernel_and_tail_shape() {
        let shapes = [
            (1, 3, 1),
            (2, 8, 17),
            (3, 16, 40),
            (4, 384, 1152),
            (9, 33, 40),
            (8, 20, 32),
            (7, 41, 100),
            (17, 17, 203),
            (64, 96, 200),
            (97, 40, 50),
            (300, 24, 33),
        ];
        for (m, k, n) in shapes {
            let x = fill(m * k, 7);
            let w = fill(k * n, 11);
            let packed = PackedI8::new(&w, k, n);
            let want = reference(&x, &w, m, k, n);
            let mut y = vec![f32::NAN; m * n];
            matmul(&x, &packed, &mut y, m);
            assert_eq!(
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                portable(&x, &packed, m)
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                "{m}x{k}x{n}: the kernels disagree"
            );
            // Each code is within half a step (amax / 254) of its value, so a product of two
            // values in [-1, 1] is within 1/127 and a sum of k of them within k/127.
            let bound = k as f32 / 127.0 + 1e-4;
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= bound, "{m}x{k}x{n} at {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn both_quantisers_give_the_same_bytes_even_for_nan_and_infinity() {
        let mut blocks = vec![fill(BLOCK, 1), vec![0.0; BLOCK], fill(BLOCK, 9)];
        blocks[2][3] = f32::NAN;
        let mut inf = fill(BLOCK, 4);
        inf[7] = f32::INFINITY;
        blocks.push(inf);
        blocks.push((0..BLOCK).map(|i| i as f32 * 1e-30).collect());
        for x in &blocks {
            let (mut q1, mut q2) = ([0u8; BLOCK], [0u8; BLOCK]);
            let s1 = quantise_block(x, &mut q1);
            let s2 = portable_quantise_block(x, &mut q2);
            assert_eq!((s1.to_bits(), q1), (s2.to_bits(), q2), "{x:?}");
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_neighbours_and_zero_rows_stay_zero() {
        let (k, n) = (64, 72);
        let w = PackedI8::new(&fill(k * n, 5), k, n);
        for m in [6, 100] {
            let mut x = fill(m * k, 3);
            x[..k].fill(0.0);
            let mut all = vec![0.0; m * n];
            matmul(&x, &w, &mut all, m);
            assert!(all[..n].iter().all(|v| *v == 0.0));
            for r in [0, 1, m / 2, m - 1] {
                let mut one = vec![0.0; n];
                matmul(&x[r * k..(r + 1) * k], &w, &mut one, 1);
                assert_eq!(one, all[r * n..(r + 1) * n], "row {r} of {m}");
            }
        }
    }
}
