//! Weights repacked at load for CPUs with AVX-512 VNNI: sixteen rows interleaved per panel, so
//! one `vpdpbusd` multiplies four weights of each of sixteen rows by the same four activation
//! bytes (broadcast), and every lane ends a block holding one row's exact integer sum. No
//! horizontal sums, one scale vector per block for sixteen rows, and the sixteen results of
//! an activation row leave in one store.
//!
//! Every block type is brought to one form, 32 weights at a time (`portable::unpack`):
//! weight `i` = `scale[i / 16] · u_i + min[i / 16]` with `u_i` an unsigned byte — the type's
//! signed values shifted up by a constant, whose product with the activations comes back
//! through the min (`min − shift · scale`, times the activation block's sum). Values that fit
//! in four bits (Q4_0, Q4_1, Q4_K) stay two per byte; the others (Q5_0, Q5_1, Q8_0, Q5_K, Q6_K)
//! take a byte each. Q6_K keeps one scale per 16 weights; every other type has one per block.
//!
//! A panel's block is a run of 64-byte lines:
//! - nibbles: 4 lines; byte `4r + i` of line `k` holds row `r`'s weight `4k + i` in its low
//!   half and weight `16 + 4k + i` in its high half;
//! - bytes: 8 lines; byte `4r + i` of line `g` holds row `r`'s weight `4g + i`;
//! - then the scales and mins of the 16 rows: for the 32-weight types, whose scales are f16 in
//!   the file (and whose mins, `m` or `−shift · d`, are too), one line of 16 f16 scales and 16
//!   f16 mins, so a Q4_1 panel takes the file's 0.625 bytes per weight (decode reads every
//!   weight once per token: bytes are its time); for the K-quants, whose `d · sc_j` need f32,
//!   a line of f32 scales then one of f32 mins (two each for Q6_K: weights 0..16, 16..32).
//!
//! The integer sums are the ones the AVX2 and portable kernels form (exact), so results differ
//! from theirs only in f32 rounding.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{BlockType, QK, QuantRows, f16_to_f32, f32_to_f16, portable};

/// Rows per panel: one i32 lane each in a 512-bit register.
pub(super) const PANEL: usize = 16;

/// Activation rows that share each unpacked weight block.
const TILE: usize = 4;

/// How a block's scales and mins are stored (the kernels' `S` parameter).
const F16: u8 = 0;
const F32: u8 = 1;
/// Two f32 scales and mins per block (Q6_K).
const F32_HALVES: u8 = 2;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A matrix in panels of 16 rows (the last one padded with zero rows).
pub(super) struct Packed {
    lines: Vec<Line>,
    /// Blocks of 32 weights per row.
    nb: usize,
    nibbles: bool,
    /// `F16`, `F32` or `F32_HALVES`.
    scales: u8,
    kind: BlockType,
    pub(super) panels: usize,
}

impl Packed {
    /// Repacks `rows` rows of `kind` blocks (`cols` weights each) from `bytes`, in parallel
    /// over panels.
    pub(super) fn new(kind: BlockType, bytes: &[u8], rows: usize, cols: usize) -> Self {
        let scales = match kind {
            BlockType::Q6K => F32_HALVES,
            BlockType::Q4K | BlockType::Q5K => F32,
            _ => F16,
        };
        Self::with_scales(kind, bytes, rows, cols, scales).unwrap_or_else(|| {
            // A scale or min that f16 cannot hold exactly (`−128 · d` of a Q8_0 block with
            // `d` above 511, say): the whole matrix in f32 instead.
            Self::with_scales(kind, bytes, rows, cols, F32).unwrap_or_else(|| unreachable!())
        })
    }

    /// `None` when `scales` is `F16` and some value is not exact in f16.
    fn with_scales(
        kind: BlockType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        scales: u8,
    ) -> Option<Self> {
        let nb = cols / QK;
        let nibbles = matches!(kind, BlockType::Q4_0 | BlockType::Q4_1 | BlockType::Q4K);
        let halves = scales == F32_HALVES;
        let inexact = std::sync::atomic::AtomicBool::new(false);
        // The constant that makes the type's values unsigned.
        let shift: i16 = match kind {
            BlockType::Q4_0 => 8,
            BlockType::Q5_0 => 16,
            BlockType::Q8_0 => 128,
            BlockType::Q6K => 32,
            BlockType::Q4_1 | BlockType::Q5_1 | BlockType::Q4K | BlockType::Q5K => 0,
        };
        let panels = rows.div_ceil(PANEL);
        let per_block = Self::lines_per_block(nibbles, scales);
        let row_bytes = cols / kind.width() * kind.bytes();
        let mut lines = vec![Line([0; 64]); panels * nb * per_block];
        lines
            .par_chunks_mut(nb * per_block)
            .enumerate()
            .for_each(|(p, panel)| {
                for r in 0..PANEL.min(rows - p * PANEL) {
                    let j = p * PANEL + r;
                    let row = &bytes[j * row_bytes..(j + 1) * row_bytes];
                    for (b, block) in panel.chunks_exact_mut(per_block).enumerate() {
                        let w = portable::unpack(kind, row, b);
                        let u = |i: usize| (i16::from(w.q[i]) + shift) as u8;
                        let q_lines = if nibbles { 4 } else { 8 };
                        for (l, line) in block[..q_lines].iter_mut().enumerate() {
                            for i in 0..4 {
                                line.0[4 * r + i] = if nibbles {
                                    u(4 * l + i) | u(16 + 4 * l + i) << 4
                                } else {
                                    u(4 * l + i)
                                };
                            }
                        }
                        let halves_here = if halves { 2 } else { 1 };
                        for h in 0..halves_here {
                            let scale = w.scale[h];
                            let min = w.min - f32::from(shift) * scale;
                            if scales == F16 {
                                let (hs, hm) = (f32_to_f16(scale), f32_to_f16(min));
                                if f16_to_f32(hs) != scale || f16_to_f32(hm) != min {
                                    inexact.store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                                let line = &mut block[q_lines].0;
                                line[2 * r..2 * r + 2].copy_from_slice(&hs.to_le_bytes());
                                line[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&hm.to_le_bytes());
                                continue;
                            }
                            block[q_lines + h].0[4 * r..4 * r + 4]
                                .copy_from_slice(&scale.to_le_bytes());
                            block[q_lines + halves_here + h].0[4 * r..4 * r + 4]
                                .copy_from_slice(&min.to_le_bytes());
                        }
                    }
                }
            });
        if inexact.into_inner() {
            return None;
        }
        Some(Self {
            lines,
            nb,
            nibbles,
            scales,
            kind,
            panels,
        })
    }

    fn lines_per_block(nibbles: bool, scales: u8) -> usize {
        (if nibbles { 4 } else { 8 })
            + match scales {
                F16 => 1,
                F32 => 2,
                _ => 4,
            }
    }

    /// Bytes held.
    pub(super) fn size(&self) -> usize {
        self.lines.len() * 64
    }

    /// Panel `p` against every activation row of `x`: `out[r · 16 + i]` = row `r` · weight
    /// row `16p + i`. The caller has checked [`crate::simd::avx512_vnni`].
    pub(super) fn panel(&self, p: usize, x: &QuantRows, out: &mut [f32]) {
        let m = out.len() / PANEL;
        let nb = self.nb;
        assert!(p < self.panels && x.cols == nb * QK);
        assert!(x.q.len() >= m * x.cols && x.d.len() >= m * nb);
        let halves = self.scales == F32_HALVES;
        let sums: &[f32] = if halves { &x.sum16 } else { self.kind.sums(x) };
        assert!(sums.len() >= m * nb * if halves { 2 } else { 1 });
        let mut r0 = 0;
        // SAFETY: the CPU has AVX-512 F, BW and VNNI (the caller checked); the panel's lines
        // and `x`'s rows `0..m` are inside their buffers (asserted above), and the kernels
        // read nothing else.
        unsafe {
            macro_rules! run {
                ($r:expr) => {
                    match (self.nibbles, self.scales) {
                        (true, F16) => tile::<$r, true, F16>(self, p, x, sums, r0, out),
                        (true, _) => tile::<$r, true, F32>(self, p, x, sums, r0, out),
                        (false, F16) => tile::<$r, false, F16>(self, p, x, sums, r0, out),
                        (false, F32) => tile::<$r, false, F32>(self, p, x, sums, r0, out),
                        (false, _) => tile::<$r, false, F32_HALVES>(self, p, x, sums, r0, out),
                    }
                };
            }
            while m - r0 >= TILE {
                run!(TILE);
                r0 += TILE;
            }
            match m - r0 {
                3 => run!(3),
                2 => run!(2),
                1 => run!(1),
                _ => {}
            }
        }
    }
}

/// Activation rows `r0..r0 + R` against panel `p`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const R: usize, const NIB: bool, const S: u8>(
    w: &Packed,
    p: usize,
    x: &QuantRows,
    sums: &[f32],
    r0: usize,
    out: &mut [f32],
) {
    let nb = w.nb;
    let per_block = Packed::lines_per_block(NIB, S);
    let q_lines = if NIB { 4 } else { 8 };
    // SAFETY: as in `Packed::panel`: block `b < nb` of panel `p` is inside `w.lines`, and
    // activation blocks `(r0 + r) · nb + b` for `r < R` inside `x`'s buffers.
    unsafe {
        let base = w.lines.as_ptr().add(p * nb * per_block).cast::<u8>();
        let xq = x.q.as_ptr();
        let xd = x.d.as_ptr();
        let xs = sums.as_ptr();
        let low = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let blk = base.add(b * per_block * 64);
            let line = |l: usize| blk.add(64 * l);
            let mut wq = [_mm512_setzero_si512(); 8];
            if NIB {
                for k in 0..4 {
                    let v = _mm512_load_si512(line(k).cast());
                    wq[k] = _mm512_and_si512(v, low);
                    wq[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                }
            } else {
                for (g, wq) in wq.iter_mut().enumerate() {
                    *wq = _mm512_load_si512(line(g).cast());
                }
            }
            let (d0, m0) = match S {
                F16 => (
                    _mm512_cvtph_ps(_mm256_load_si256(line(q_lines).cast())),
                    _mm512_cvtph_ps(_mm256_load_si256(line(q_lines).add(32).cast())),
                ),
                F32 => (
                    _mm512_load_ps(line(q_lines).cast()),
                    _mm512_load_ps(line(q_lines + 1).cast()),
                ),
                _ => (
                    _mm512_load_ps(line(q_lines).cast()),
                    _mm512_load_ps(line(q_lines + 2).cast()),
                ),
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let xi = (r0 + r) * nb + b;
                let a = xq.add(xi * QK).cast::<i32>();
                // Two chains of four, so that one row (decode) waits less on each.
                let mut s0 = _mm512_setzero_si512();
                let mut s1 = _mm512_setzero_si512();
                for g in 0..4 {
                    let ag = _mm512_set1_epi32(std::ptr::read_unaligned(a.add(g)));
                    s0 = _mm512_dpbusd_epi32(s0, wq[g], ag);
                    let ag = _mm512_set1_epi32(std::ptr::read_unaligned(a.add(g + 4)));
                    s1 = _mm512_dpbusd_epi32(s1, wq[g + 4], ag);
                }
                let dx = _mm512_set1_ps(*xd.add(xi));
                if S == F32_HALVES {
                    let d1 = _mm512_load_ps(line(q_lines + 1).cast());
                    let m1 = _mm512_load_ps(line(q_lines + 3).cast());
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(d0, dx), *acc);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(d1, dx), *acc);
                    *acc = _mm512_fmadd_ps(m0, _mm512_set1_ps(*xs.add(2 * xi)), *acc);
                    *acc = _mm512_fmadd_ps(m1, _mm512_set1_ps(*xs.add(2 * xi + 1)), *acc);
                } else {
                    let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                    *acc = _mm512_fmadd_ps(s, _mm512_mul_ps(d0, dx), *acc);
                    *acc = _mm512_fmadd_ps(m0, _mm512_set1_ps(*xs.add(xi)), *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add((r0 + r) * PANEL), *acc);
        }
    }
}
