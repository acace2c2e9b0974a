//! The encoder's CPU matmul: `y = x · w` with `w` a layer's weights, packed once at load time
//! into column panels.
//!
//! Through candle's GEMM every call repacks the weights (the large operand) into the kernel's
//! panel layout: 42 MB per MiniLM forward pass, whether the batch holds one 15-token query or
//! 2,000 tokens. Reading an `(in, out)` matrix in column bands directly is no better:
//! consecutive rows of a band lie a whole matrix row apart (4.6 KB for MiniLM's QKV), which
//! defeats the hardware prefetcher, and the weights are cold in cache between queries. So
//! [`Packed`] stores the weights once as panels of [`TILE_COLS`] columns, each panel
//! `in × 16` contiguous; a rayon task owns a few adjacent panels and streams through them front
//! to back while the activations stay in cache. On x86-64 with AVX2 + FMA (checked at run
//! time) the inner kernel keeps a 6 × 16 tile of outputs in twelve vector registers (two
//! weight loads and six broadcasts per twelve FMAs); elsewhere a portable loop of the same
//! shape runs. Measured against candle's GEMM with cold weights on 2 cores: 2–3.5× faster for
//! 8–48 rows, 1.2–1.7× for 64–128, 1.0–1.3× for 256–2,048 (BENCHMARKS.md).
//!
//! The sum over `in` runs in the same order for every row, so a row's result does not depend
//! on which other rows share the call: a text embeds to the same bits alone or in a batch.

use rayon::prelude::*;

/// Token rows per register tile.
const TILE_ROWS: usize = 6;
/// Output columns per register tile and per packed panel (two 8-lane vectors).
const TILE_COLS: usize = 16;
/// Panels per parallel task when few rows split the work by columns: a task amortises its
/// start over several panels.
const BAND_PANELS: usize = 6;
/// From this many rows on the work is split by rows instead (no per-band buffers).
const ROW_SPLIT_MIN: usize = 96;

/// A `(k, n)` weight matrix as `ceil(n / 16)` panels of `k × 16` floats (the last one padded
/// with zeros), panel-major.
pub(crate) struct Packed {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl Packed {
    /// Packs the row-major `(k, n)` matrix `w`.
    ///
    /// # Panics
    /// When `w.len() != k * n` (a caller bug).
    pub(crate) fn new(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(
            w.len(),
            k * n,
            "packing: the slice does not hold k × n floats"
        );
        Self::from_fn(k, n, |i, c| w[i * n + c])
    }

    /// Packs the `(k, n)` matrix whose element `(i, c)` is `at(i, c)`.
    pub(crate) fn from_fn(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let panels = n.div_ceil(TILE_COLS);
        let mut data = vec![0.0f32; panels * k * TILE_COLS];
        for (p, panel) in data.chunks_exact_mut(k * TILE_COLS).enumerate() {
            let c0 = p * TILE_COLS;
            let cols = TILE_COLS.min(n - c0);
            for (i, dst) in panel.chunks_exact_mut(TILE_COLS).enumerate() {
                for (c, d) in dst[..cols].iter_mut().enumerate() {
                    *d = at(i, c0 + c);
                }
            }
        }
        Self { k, n, data }
    }

    /// An empty matrix, to be filled by [`Self::set_transposed`] or [`Self::set_rows`].
    pub(crate) fn empty() -> Self {
        Self {
            k: 0,
            n: 0,
            data: Vec::new(),
        }
    }

    /// Repacks `self` as the `(k, n)` matrix whose element `(i, c)` is `src[c * stride + i]`:
    /// `n` rows of `k` values lying `stride` apart, transposed (one head's keys as `Kᵀ`),
    /// reusing the buffer. Through [`Self::from_fn`] this packing took a tenth of the
    /// embedder's time on 256-token passages (a closure and a bounds check per value).
    ///
    /// # Panics
    /// When `src` is too short (a caller bug).
    pub(crate) fn set_transposed(&mut self, src: &[f32], stride: usize, k: usize, n: usize) {
        self.reshape(k, n);
        for (p, panel) in self.data.chunks_exact_mut(k * TILE_COLS).enumerate() {
            let c0 = p * TILE_COLS;
            for c in 0..TILE_COLS.min(n - c0) {
                let row = &src[(c0 + c) * stride..][..k];
                for (dst, &v) in panel.chunks_exact_mut(TILE_COLS).zip(row) {
                    dst[c] = v;
                }
            }
        }
    }

    /// Repacks `self` as the `(k, n)` matrix whose row `i` is `src[i * stride..][..n]` (one
    /// head's values), reusing the buffer.
    ///
    /// # Panics
    /// When `src` is too short (a caller bug).
    pub(crate) fn set_rows(&mut self, src: &[f32], stride: usize, k: usize, n: usize) {
        self.reshape(k, n);
        for (p, panel) in self.data.chunks_exact_mut(k * TILE_COLS).enumerate() {
            let c0 = p * TILE_COLS;
            let cols = TILE_COLS.min(n - c0);
            for (i, dst) in panel.chunks_exact_mut(TILE_COLS).enumerate() {
                dst[..cols].copy_from_slice(&src[i * stride + c0..][..cols]);
            }
        }
    }

    /// Sizes the buffer for `(k, n)`, zeroed (the last panel's padding included).
    fn reshape(&mut self, k: usize, n: usize) {
        (self.k, self.n) = (k, n);
        self.data.clear();
        self.data.resize(n.div_ceil(TILE_COLS) * k * TILE_COLS, 0.0);
    }

    /// Rows of the matrix (`in`).
    pub(crate) fn rows(&self) -> usize {
        self.k
    }

    /// Columns of the matrix (`out`).
    pub(crate) fn cols(&self) -> usize {
        self.n
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * TILE_COLS..(p + 1) * self.k * TILE_COLS]
    }
}

/// `y = x · w`: `x` is `(m, k)`, `y` is `(m, n)`, row-major, for `w` packed as [`Packed`].
///
/// # Panics
/// When a slice length does not match its shape (a caller bug, never input-dependent).
pub(crate) fn matmul(x: &[f32], w: &Packed, y: &mut [f32], m: usize) {
    let (k, n) = (w.k, w.n);
    assert!(
        x.len() == m * k && y.len() == m * n,
        "panel matmul: shapes do not match the slices"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    if m >= ROW_SPLIT_MIN {
        // Many rows: each task takes a block of rows (its own slice of `y`) through every
        // panel; the panel stays in cache across the block's row tiles.
        let tasks = rayon::current_num_threads().max(1) * 4;
        let rows = m
            .div_ceil(tasks)
            .next_multiple_of(TILE_ROWS)
            .max(4 * TILE_ROWS);
        y.par_chunks_mut(rows * n)
            .zip(x.par_chunks(rows * k))
            .for_each(|(y, x)| all_panels(x, w, y, x.len() / k));
        return;
    }
    // Few rows: each task takes a band of adjacent panels for all rows, into its own buffer
    // (`m × band width`); the buffers are then interleaved into `y` (tiny next to the weights).
    let panels = n.div_ceil(TILE_COLS);
    let bands: Vec<(usize, Vec<f32>)> = (0..panels)
        .step_by(BAND_PANELS)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|p0| {
            let count = BAND_PANELS.min(panels - p0);
            let width = count * TILE_COLS;
            let mut out = vec![0.0f32; m * width];
            for j in 0..count {
                panel_product(x, w.panel(p0 + j), &mut out, m, k, width, j * TILE_COLS);
            }
            (p0 * TILE_COLS, out)
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

/// `y = x · w` for `m` rows on the calling thread, writing `y` in place (a partial last panel
/// goes through a small buffer).
fn all_panels(x: &[f32], w: &Packed, y: &mut [f32], m: usize) {
    let (k, n) = (w.k, w.n);
    let full = n / TILE_COLS;
    for p in 0..full {
        panel_product(x, w.panel(p), y, m, k, n, p * TILE_COLS);
    }
    let cols = n - full * TILE_COLS;
    if cols > 0 {
        let mut tmp = vec![0.0f32; m * TILE_COLS];
        panel_product(x, w.panel(full), &mut tmp, m, k, TILE_COLS, 0);
        for (row, part) in y.chunks_exact_mut(n).zip(tmp.chunks_exact(TILE_COLS)) {
            row[full * TILE_COLS..].copy_from_slice(&part[..cols]);
        }
    }
}

/// Runs `f`, compiled for AVX2 + FMA when the CPU has them (x86-64), so the element-wise
/// loops inside vectorise 8 wide instead of the baseline's 4. No FMA contraction happens
/// (Rust never fuses `a * b + c` on its own), so the results are the same either way.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        return avx2::run(f);
    }
    f()
}

/// `x · panel` (`(m, 16)`) into `out` at column `oc` (row stride `ow`).
fn panel_product(
    x: &[f32],
    panel: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    ow: usize,
    oc: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        avx2::panel_product(x, panel, out, m, k, ow, oc);
        return;
    }
    portable_panel_product(x, panel, out, m, k, ow, oc);
}

/// The same tiling in plain Rust (the compiler vectorises the inner loop for the baseline
/// target).
fn portable_panel_product(
    x: &[f32],
    panel: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    ow: usize,
    oc: usize,
) {
    for r0 in (0..m).step_by(TILE_ROWS) {
        let rows = TILE_ROWS.min(m - r0);
        let mut acc = [[0.0f32; TILE_COLS]; TILE_ROWS];
        for (i, wrow) in panel.chunks_exact(TILE_COLS).enumerate().take(k) {
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                let xv = x[(r0 + r) * k + i];
                for (a, &wv) in acc.iter_mut().zip(wrow) {
                    *a += xv * wv;
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            out[(r0 + r) * ow + oc..(r0 + r) * ow + oc + TILE_COLS].copy_from_slice(acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };

    use super::{TILE_COLS, TILE_ROWS};

    /// Runs `f` inside a function compiled for AVX2 + FMA (it is inlined there).
    #[inline(always)]
    pub(super) fn run<R>(f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the caller checked `crate::simd::avx2_fma()`: the CPU has AVX2 and FMA.
        unsafe { with_avx2(f) }
    }

    /// Same contract as `portable_panel_product`; the caller has checked
    /// [`crate::simd::avx2_fma`].
    pub(super) fn panel_product(
        x: &[f32],
        panel: &[f32],
        out: &mut [f32],
        m: usize,
        k: usize,
        ow: usize,
        oc: usize,
    ) {
        // Bounds for every access the tile kernel makes (its raw loads rely on these).
        assert!(x.len() >= m * k && panel.len() >= k * TILE_COLS);
        assert!(oc + TILE_COLS <= ow && out.len() >= m * ow);
        for r0 in (0..m).step_by(TILE_ROWS) {
            // SAFETY: AVX2 and FMA are present (`crate::simd::avx2_fma`). The tile reads x rows
            // r0..r0+R (R ≤ m - r0) at columns 0..k, panel rows 0..k (16 floats each), and
            // writes out rows r0..r0+R at columns oc..oc+16 ≤ ow: inside the slices checked
            // above.
            unsafe {
                match m - r0 {
                    1 => tile::<1>(x, panel, out, r0, k, ow, oc),
                    2 => tile::<2>(x, panel, out, r0, k, ow, oc),
                    3 => tile::<3>(x, panel, out, r0, k, ow, oc),
                    4 => tile::<4>(x, panel, out, r0, k, ow, oc),
                    5 => tile::<5>(x, panel, out, r0, k, ow, oc),
                    _ => tile::<TILE_ROWS>(x, panel, out, r0, k, ow, oc),
                }
            }
        }
    }

    /// One `R × 16` output tile: rows `r0..r0+R` of `x` times the panel, written to `out`
    /// rows `r0..` at column `oc` (row stride `ow`).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize>(
        x: &[f32],
        panel: &[f32],
        out: &mut [f32],
        r0: usize,
        k: usize,
        ow: usize,
        oc: usize,
    ) {
        let mut acc: [[__m256; 2]; R] = [[_mm256_setzero_ps(); 2]; R];
        let xp = x.as_ptr();
        let wp = panel.as_ptr();
        for i in 0..k {
            // SAFETY: (caller) i < k, so panel row i (16 floats) is inside the panel, and
            // x[(r0 + r) * k + i] is inside x for r < R.
            unsafe {
                let row = wp.add(i * TILE_COLS);
                let w0 = _mm256_loadu_ps(row);
                let w1 = _mm256_loadu_ps(row.add(8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_ps(*xp.add((r0 + r) * k + i));
                    acc[0] = _mm256_fmadd_ps(xv, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(xv, w1, acc[1]);
                }
            }
        }
        let op = out.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: (caller) row r0 + r < m and oc + 16 <= ow, inside out.
            unsafe {
                let dst = op.add((r0 + r) * ow + oc);
                _mm256_storeu_ps(dst, acc[0]);
                _mm256_storeu_ps(dst.add(8), acc[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn fill(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what} at {i}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn matches_a_reference_for_every_tail_shape() {
        // Every row-tile remainder (1..5 and full tiles of 6); widths cover several bands, a
        // partial band, a partial panel and widths that are not a multiple of 8.
        let shapes = [
            (1, 3, 1),
            (2, 8, 17),
            (3, 16, 24),
            (4, 384, 1152),
            (5, 33, 40),
            (6, 20, 16),
            (7, 40, 100),
            (11, 17, 203),
            (64, 96, 200),
            (97, 40, 50),
            (300, 24, 33),
        ];
        for (m, k, n) in shapes {
            let x = fill(m * k, 7);
            let w = fill(k * n, 11);
            let packed = Packed::new(&w, k, n);
            let want = reference(&x, &w, m, k, n);
            let mut y = vec![f32::NAN; m * n];
            matmul(&x, &packed, &mut y, m);
            close(&y, &want, &format!("{m}x{k}x{n}"));

            // The portable kernel, panel by panel.
            let panels = n.div_ceil(TILE_COLS);
            let ow = panels * TILE_COLS;
            let mut out = vec![f32::NAN; m * ow];
            for p in 0..panels {
                portable_panel_product(&x, packed.panel(p), &mut out, m, k, ow, p * TILE_COLS);
            }
            let portable: Vec<f32> = out
                .chunks_exact(ow)
                .flat_map(|r| &r[..n])
                .copied()
                .collect();
            close(&portable, &want, &format!("portable {m}x{k}x{n}"));
        }
    }

    #[test]
    fn strided_packing_matches_packing_by_index() {
        let (stride, off) = (70, 5);
        let src = fill(40 * stride, 13);
        let mut got = Packed::empty();
        for (k, n) in [(32, 37), (32, 1), (3, 16), (17, 40)] {
            let want = Packed::from_fn(k, n, |i, c| src[off + c * stride + i]);
            got.set_transposed(&src[off..], stride, k, n);
            assert_eq!((got.k, got.n, &got.data), (want.k, want.n, &want.data));
            let want = Packed::from_fn(k, n, |i, c| src[off + i * stride + c]);
            got.set_rows(&src[off..], stride, k, n);
            assert_eq!((got.k, got.n, &got.data), (want.k, want.n, &want.data));
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_neighbours() {
        // 6 rows split by columns, 100 rows split by rows: a row alone gives the same bits.
        let (k, n) = (64, 72);
        let w = Packed::new(&fill(k * n, 5), k, n);
        for m in [6, 100] {
            let x = fill(m * k, 3);
            let mut all = vec![0.0; m * n];
            matmul(&x, &w, &mut all, m);
            for r in [0, 1, m / 2, m - 1] {
                let mut one = vec![0.0; n];
                matmul(&x[r * k..(r + 1) * k], &w, &mut one, 1);
                assert_eq!(one, all[r * n..(r + 1) * n], "row {r} of {m}");
            }
        }
    }
}
