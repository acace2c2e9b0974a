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
//! A block's weights are a run of 64-byte lines:
//! - nibbles: 4 lines; byte `4r + i` of line `k` holds row `r`'s weight `4k + i` in its low
//!   half and weight `16 + 4k + i` in its high half;
//! - bytes: 8 lines; byte `4r + i` of line `g` holds row `r`'s weight `4g + i`.
//!
//! Scales and mins are kept as compact as the file keeps them, since decode reads every weight
//! once per token and its time is those bytes:
//! - the 32-weight types (f16 scales in the file, and mins `m` or `−shift · d` that f16 holds
//!   too): after each block's weights, one line of 16 f16 scales and 16 f16 mins (a Q4_1 panel
//!   is the file's 0.625 bytes per weight); a matrix with a value f16 cannot hold exactly
//!   falls back to two lines of f32;
//! - the K-quants, per super-block of eight blocks: a line of the 16 rows' f16 `d` (and, for
//!   Q4_K and Q5_K, `dmin`), four lines of the sub-blocks' 6- or 8-bit scales (32 bytes a
//!   block: Q4_K/Q5_K `sc` then `m` as unsigned bytes, Q6_K its two signed scales), then the
//!   eight blocks' weights. The kernel forms `d · sc` (and `−dmin · m`, or `−32 · d · sc`) in
//!   f32 per block, exactly as the dequantisation does.
//!
//! The integer sums are the ones the AVX2 and portable kernels form (exact), so results differ
//! from theirs only in f32 rounding.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{BlockType, QK, QuantRows, f16_to_f32, f32_to_f16, k_scales, portable};

/// Rows per panel: one i32 lane each in a 512-bit register.
pub(super) const PANEL: usize = 16;

/// Activation rows that share each unpacked weight block.
const TILE: usize = 4;

/// How a block's scales and mins are stored (the kernels' `S` parameter).
const F16: u8 = 0;
const F32: u8 = 1;
/// Q4_K and Q5_K: per super-block f16 `d`, `dmin`; per block 8-bit `sc`, `m`.
const K4: u8 = 2;
/// Q6_K: per super-block f16 `d`; per block two signed 8-bit scales.
const K6: u8 = 3;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A matrix in panels of 16 rows (the last one padded with zero rows).
pub(super) struct Packed {
    lines: Vec<Line>,
    /// Blocks of 32 weights per row.
    nb: usize,
    nibbles: bool,
    /// `F16`, `F32`, `K4` or `K6`.
    scales: u8,
    kind: BlockType,
    pub(super) panels: usize,
}

/// Lines of one group (a block, or a K-quant super-block of eight) of a panel.
const fn group_lines(nibbles: bool, scales: u8) -> usize {
    let q = if nibbles { 4 } else { 8 };
    match scales {
        F16 => q + 1,
        F32 => q + 2,
        _ => 5 + 8 * q,
    }
}

fn f16_bytes(b: &[u8], at: usize) -> [u8; 2] {
    [b[at], b[at + 1]]
}

impl Packed {
    /// Repacks `rows` rows of `kind` blocks (`cols` weights each) from `bytes`, in parallel
    /// over panels.
    pub(super) fn new(kind: BlockType, bytes: &[u8], rows: usize, cols: usize) -> Self {
        let scales = match kind {
            BlockType::Q6K => K6,
            BlockType::Q4K | BlockType::Q5K => K4,
            BlockType::Q4_0
            | BlockType::Q4_1
            | BlockType::Q5_0
            | BlockType::Q5_1
            | BlockType::Q8_0 => F16,
        };
        match Self::with_scales(kind, bytes, rows, cols, scales) {
            (packed, false) => packed,
            // A scale or min that f16 cannot hold exactly (`−128 · d` of a Q8_0 block with
            // `d` above 511, say): the whole matrix in f32 instead.
            (_, true) => Self::with_scales(kind, bytes, rows, cols, F32).0,
        }
    }

    /// The panels, and whether some value was not exact in f16 (with `scales` = `F16`).
    fn with_scales(
        kind: BlockType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        scales: u8,
    ) -> (Self, bool) {
        let nb = cols / QK;
        let nibbles = matches!(kind, BlockType::Q4_0 | BlockType::Q4_1 | BlockType::Q4K);
        let q_lines = if nibbles { 4 } else { 8 };
        let k = scales == K4 || scales == K6;
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
        let per_panel = if k { nb / 8 } else { nb } * group_lines(nibbles, scales);
        let row_bytes = cols / kind.width() * kind.bytes();
        let mut lines = vec![Line([0; 64]); panels * per_panel];
        lines
            .par_chunks_mut(per_panel)
            .enumerate()
            .for_each(|(p, panel)| {
                for r in 0..PANEL.min(rows - p * PANEL) {
                    let j = p * PANEL + r;
                    let row = &bytes[j * row_bytes..(j + 1) * row_bytes];
                    for b in 0..nb {
                        let w = portable::unpack(kind, row, b);
                        let u = |i: usize| (i16::from(w.q[i]) + shift) as u8;
                        // The block's weight lines, and (32-weight types) its scale lines.
                        let at = if k {
                            b / 8 * group_lines(nibbles, scales) + 5 + b % 8 * q_lines
                        } else {
                            b * group_lines(nibbles, scales)
                        };
                        let block = &mut panel[at..at
                            + if k {
                                q_lines
                            } else {
                                group_lines(nibbles, scales)
                            }];
                        for (l, line) in block[..q_lines].iter_mut().enumerate() {
                            for i in 0..4 {
                                line.0[4 * r + i] = if nibbles {
                                    u(4 * l + i) | u(16 + 4 * l + i) << 4
                                } else {
                                    u(4 * l + i)
                                };
                            }
                        }
                        if k {
                            continue;
                        }
                        let (scale, min) = (w.scale[0], w.min - f32::from(shift) * w.scale[0]);
                        if scales == F16 {
                            let (hs, hm) = (f32_to_f16(scale), f32_to_f16(min));
                            if f16_to_f32(hs) != scale || f16_to_f32(hm) != min {
                                inexact.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                            let line = &mut block[q_lines].0;
                            line[2 * r..2 * r + 2].copy_from_slice(&hs.to_le_bytes());
                            line[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&hm.to_le_bytes());
                        } else {
                            block[q_lines].0[4 * r..4 * r + 4]
                                .copy_from_slice(&scale.to_le_bytes());
                            block[q_lines + 1].0[4 * r..4 * r + 4]
                                .copy_from_slice(&min.to_le_bytes());
                        }
                    }
                    if !k {
                        continue;
                    }
                    // The K-quants' super-block headers and sub-block scales, from the file.
                    for sb in 0..nb / 8 {
                        let blk = &row[sb * kind.bytes()..(sb + 1) * kind.bytes()];
                        let group = &mut panel[sb * group_lines(nibbles, scales)..][..5];
                        let (sc, m): ([u8; 8], [u8; 8]) = if scales == K4 {
                            group[0].0[2 * r..2 * r + 2].copy_from_slice(&f16_bytes(blk, 0));
                            group[0].0[32 + 2 * r..32 + 2 * r + 2]
                                .copy_from_slice(&f16_bytes(blk, 2));
                            k_scales(blk[4..16].try_into().unwrap_or(&[0; 12]))
                        } else {
                            group[0].0[2 * r..2 * r + 2].copy_from_slice(&f16_bytes(blk, 208));
                            let (mut lo, mut hi) = ([0u8; 8], [0u8; 8]);
                            for j in 0..8 {
                                lo[j] = blk[192 + 2 * j];
                                hi[j] = blk[192 + 2 * j + 1];
                            }
                            (lo, hi)
                        };
                        for j in 0..8 {
                            let line = &mut group[1 + j / 2].0;
                            let off = j % 2 * 32;
                            line[off + r] = sc[j];
                            line[off + 16 + r] = m[j];
                        }
                    }
                }
            });
        let packed = Self {
            lines,
            nb,
            nibbles,
            scales,
            kind,
            panels,
        };
        (packed, inexact.into_inner())
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
        let halves = self.scales == K6;
        let sums: &[f32] = if halves { &x.sum16 } else { self.kind.sums(x) };
        assert!(sums.len() >= m * nb * if halves { 2 } else { 1 });
        assert!(self.scales != K4 && self.scales != K6 || nb.is_multiple_of(8));
        let mut r0 = 0;
        // SAFETY: the CPU has AVX-512 F, BW and VNNI (the caller checked); the panel's lines
        // and `x`'s rows `0..m` are inside their buffers (asserted above), and the kernels
        // read nothing else.
        unsafe {
            macro_rules! run {
                ($r:expr) => {
                    match (self.nibbles, self.scales) {
                        (true, F16) => tile::<$r, true, F16>(self, p, x, sums, r0, out),
                        (true, F32) => tile::<$r, true, F32>(self, p, x, sums, r0, out),
                        (true, _) => tile::<$r, true, K4>(self, p, x, sums, r0, out),
                        (false, F16) => tile::<$r, false, F16>(self, p, x, sums, r0, out),
                        (false, F32) => tile::<$r, false, F32>(self, p, x, sums, r0, out),
                        (false, K4) => tile::<$r, false, K4>(self, p, x, sums, r0, out),
                        (false, _) => tile::<$r, false, K6>(self, p, x, sums, r0, out),
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
    let k = S == K4 || S == K6;
    let group = group_lines(NIB, S);
    let q_lines = if NIB { 4 } else { 8 };
    let per_panel = if k { nb / 8 } else { nb } * group;
    // SAFETY: as in `Packed::panel`: every group of panel `p` is inside `w.lines`, and
    // activation blocks `(r0 + r) · nb + b` for `r < R` inside `x`'s buffers.
    unsafe {
        let base = w.lines.as_ptr().add(p * per_panel).cast::<u8>();
        let xq = x.q.as_ptr();
        let xd = x.d.as_ptr();
        let xs = sums.as_ptr();
        let low = _mm512_set1_epi8(0x0f);
        let sign = _mm512_set1_epi32(i32::MIN);
        let mut acc = [_mm512_setzero_ps(); R];
        // A K-quant super-block's d and dmin.
        let (mut dk, mut dmk) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for b in 0..nb {
            // The block's weight lines, and where its scales are.
            let (blk, scl) = if k {
                let g = base.add(b / 8 * group * 64);
                if b % 8 == 0 {
                    dk = _mm512_cvtph_ps(_mm256_load_si256(g.cast()));
                    dmk = _mm512_cvtph_ps(_mm256_load_si256(g.add(32).cast()));
                }
                (g.add((5 + b % 8 * q_lines) * 64), g.add(64 + b % 8 * 32))
            } else {
                let g = base.add(b * group * 64);
                (g, g.add(q_lines * 64))
            };
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
            // Per row: the scales of weights 0..16 and 16..32 (the same but for Q6_K), and
            // the mins.
            let bytes = |at: usize, signed: bool| {
                let v = _mm_load_si128(scl.add(at).cast());
                _mm512_cvtepi32_ps(if signed {
                    _mm512_cvtepi8_epi32(v)
                } else {
                    _mm512_cvtepu8_epi32(v)
                })
            };
            let neg =
                |v: __m512| _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), sign));
            let (d0, d1, m0, m1) = match S {
                F16 => {
                    let d = _mm512_cvtph_ps(_mm256_load_si256(scl.cast()));
                    let m = _mm512_cvtph_ps(_mm256_load_si256(scl.add(32).cast()));
                    (d, d, m, m)
                }
                F32 => {
                    let d = _mm512_load_ps(scl.cast());
                    let m = _mm512_load_ps(scl.add(64).cast());
                    (d, d, m, m)
                }
                K4 => {
                    // d · sc and −(dmin · m), as the dequantisation forms them.
                    let d = _mm512_mul_ps(dk, bytes(0, false));
                    let m = neg(_mm512_mul_ps(dmk, bytes(16, false)));
                    (d, d, m, m)
                }
                _ => {
                    let (d0, d1) = (
                        _mm512_mul_ps(dk, bytes(0, true)),
                        _mm512_mul_ps(dk, bytes(16, true)),
                    );
                    let minus32 = _mm512_set1_ps(-32.0);
                    (
                        d0,
                        d1,
                        _mm512_mul_ps(d0, minus32),
                        _mm512_mul_ps(d1, minus32),
                    )
                }
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
                if S == K6 {
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
