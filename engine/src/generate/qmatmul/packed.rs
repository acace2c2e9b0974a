//! Weights repacked at load for CPUs with AVX-512 VNNI: sixteen rows interleaved per panel, so
//! one `vpdpbusd` multiplies four weights of each of sixteen rows by the same four activation
//! bytes (broadcast), and every lane ends a block holding one row's exact integer sum. No
//! horizontal sums, one scale vector per block for sixteen rows, and the sixteen results of
//! an activation row leave in one store.
//!
//! Every block type is brought to one form, 32 weights at a time (`portable::unpack`):
//! weight `i` = `scale[i / 16] · u_i + min[i / 16]` with `u_i` an unsigned byte — the type's
//! signed values shifted up by a constant, whose product with the activations comes back
//! through the min (`min − shift · scale`, times the activation block's sum).
//!
//! Weights keep the file's bits, since decode reads every weight once per token and its time
//! is those bytes (Qwen2.5-0.5B's Q5_0 matrices at a byte a weight were 1.6x the file's and
//! its decode 0.93x llama.cpp's). A block's weights are a run of 64-byte lines:
//! - 4, 5 or 6 bits (Q4_0, Q4_1, Q4_K; Q5_0, Q5_1, Q5_K; Q6_K): four lines of the low
//!   nibbles, byte `4r + i` of line `k` holding row `r`'s weight `4k + i` in its low half and
//!   weight `16 + 4k + i` in its high half; then, for 5 and 6 bits, one line per higher bit:
//!   eight 64-bit masks, mask `j` holding that bit of the bytes the `j`-th unpacked vector
//!   has (vector `k < 4`: the low halves of line `k`; `4 + k`: its high halves), which a
//!   masked byte add puts back;
//! - 8 bits (Q8_0): 8 lines; byte `4r + i` of line `g` holds row `r`'s weight `4g + i`.
//!
//! Scales and mins are kept as compact as the file keeps them:
//! - Q4_1 and Q5_1: after each block's weights, one line of the 16 rows' f16 `d` and f16 `m`
//!   (the file's f16 values, so exact);
//! - the symmetric 32-weight types (Q4_0, Q5_0, Q8_0), whose min is `−shift · d`: two blocks'
//!   weights, then one line of the two blocks' 16 f16 `d` each. The kernel starts each
//!   block's integer sum from `−shift · Σ` of the activation block's values, so the sum is
//!   the signed weights' (as ggml forms it) and the min costs no float multiply-add;
//! - the K-quants, per super-block of eight blocks: a line of the 16 rows' f16 `d` (and, for
//!   Q4_K and Q5_K, `dmin`), four lines of the sub-blocks' 6- or 8-bit scales (32 bytes a
//!   block: Q4_K/Q5_K `sc` then `m` as unsigned bytes, Q6_K its two signed scales), then the
//!   eight blocks' weights. The kernel forms `d · sc` (and `−dmin · m`) in f32 per block,
//!   exactly as the dequantisation does; Q6_K's min `−32 · d · sc` enters, like the symmetric
//!   types', as each half block's integer sum starting from `−32 · Σx`.
//!
//! Every type then takes the file's bytes per weight, but for the K-quants' unpacked 8-bit
//! sub-block scales (Q4_K 0.578 against 0.5625, Q5_K 0.703 against 0.6875, Q6_K 0.828 against
//! 0.820).
//!
//! The integer sums are the ones the AVX2 and portable kernels form (exact), so results differ
//! from theirs only in f32 rounding.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{BlockType, QK, QuantRows, f32_to_f16, k_scales, portable};

/// Rows per panel: one i32 lane each in a 512-bit register.
pub(super) const PANEL: usize = 16;

/// Activation rows that share each unpacked weight block. Eight against four: Qwen2.5-0.5B's
/// prefill (Q5_0, whose fifth bits cost three more operations per unpacked vector) 401 against
/// 349 tok/s mean over 12 prompts of ~700 tokens, two runs each; twelve rows: no gain (404,
/// 345).
const TILE: usize = 8;

/// How a block's scales and mins are stored (the kernels' `S` parameter).
/// Q4_1, Q5_1: per block f16 `d` and `m`.
const DM: u8 = 0;
/// Q4_0, Q5_0, Q8_0: per block f16 `d`, two blocks to a line; the min is `−shift · d`.
const D: u8 = 1;
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
    kind: BlockType,
    pub(super) panels: usize,
}

/// How a block type is held in the panels.
#[derive(Clone, Copy)]
struct Layout {
    /// Bits per weight: 4, 5, 6 or 8.
    bits: u8,
    /// `DM`, `D`, `K4` or `K6`.
    scales: u8,
    /// The constant that makes the type's values unsigned.
    shift: i16,
}

const fn layout(kind: BlockType) -> Layout {
    let (bits, scales, shift) = match kind {
        BlockType::Q4_0 => (4, D, 8),
        BlockType::Q4_1 => (4, DM, 0),
        BlockType::Q5_0 => (5, D, 16),
        BlockType::Q5_1 => (5, DM, 0),
        BlockType::Q8_0 => (8, D, 128),
        BlockType::Q4K => (4, K4, 0),
        BlockType::Q5K => (5, K4, 0),
        BlockType::Q6K => (6, K6, 32),
    };
    Layout {
        bits,
        scales,
        shift,
    }
}

/// Lines of one block's weights.
const fn weight_lines(bits: u8) -> usize {
    if bits == 8 { 8 } else { bits as usize }
}

/// Lines of one group (a block, two blocks, or a K-quant super-block of eight) of a panel.
const fn group_lines(bits: u8, scales: u8) -> usize {
    let q = weight_lines(bits);
    match scales {
        DM => q + 1,
        D => 2 * q + 1,
        _ => 5 + 8 * q,
    }
}

/// Blocks per group.
const fn group_blocks(scales: u8) -> usize {
    match scales {
        DM => 1,
        D => 2,
        _ => 8,
    }
}

/// Where block `b`'s weight lines start and where its scales are, in lines and bytes from
/// the panel's start.
const fn block_at(b: usize, bits: u8, scales: u8) -> (usize, usize) {
    let (q, group) = (weight_lines(bits), group_lines(bits, scales));
    let g = b / group_blocks(scales) * group;
    match scales {
        DM => (g, (g + q) * 64),
        D => (g + b % 2 * q, (g + 2 * q) * 64 + b % 2 * 32),
        _ => (g + 5 + b % 8 * q, (g + 1) * 64 + b % 8 * 32),
    }
}

/// Row `r`'s 32 values `u(i)` into a block's weight lines (the layout in the module comment).
fn put_weights(block: &mut [Line], r: usize, bits: u8, u: impl Fn(usize) -> u8) {
    if bits == 8 {
        for (l, line) in block.iter_mut().enumerate() {
            for i in 0..4 {
                line.0[4 * r + i] = u(4 * l + i);
            }
        }
        return;
    }
    let (nibbles, high) = block.split_at_mut(4);
    for (l, line) in nibbles.iter_mut().enumerate() {
        for i in 0..4 {
            let (lo, hi) = (u(4 * l + i), u(16 + 4 * l + i));
            line.0[4 * r + i] = lo & 0x0f | (hi & 0x0f) << 4;
            // The higher bits, as bit `4r + i` of masks `l` and `4 + l`.
            let bit = 4 * r + i;
            for (h, masks) in high.iter_mut().enumerate() {
                for (v, mask) in [(lo, l), (hi, 4 + l)] {
                    masks.0[8 * mask + bit / 8] |= (v >> (4 + h) & 1) << (bit % 8);
                }
            }
        }
    }
}

fn f16_bytes(b: &[u8], at: usize) -> [u8; 2] {
    [b[at], b[at + 1]]
}

impl Packed {
    /// Repacks `rows` rows of `kind` blocks (`cols` weights each) from `bytes`, in parallel
    /// over panels.
    pub(super) fn new(kind: BlockType, bytes: &[u8], rows: usize, cols: usize) -> Self {
        let Layout {
            bits,
            scales,
            shift,
        } = layout(kind);
        let nb = cols / QK;
        let q_lines = weight_lines(bits);
        let panels = rows.div_ceil(PANEL);
        let per_panel = nb.div_ceil(group_blocks(scales)) * group_lines(bits, scales);
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
                        let (at, scale_at) = block_at(b, bits, scales);
                        put_weights(&mut panel[at..at + q_lines], r, bits, u);
                        // The 32-weight types' scales, from the file's f16 values (exact).
                        let line = &mut panel[scale_at / 64].0;
                        let at = scale_at % 64;
                        match scales {
                            DM => {
                                let f16 = |v: f32| f32_to_f16(v).to_le_bytes();
                                line[at + 2 * r..][..2].copy_from_slice(&f16(w.scale[0]));
                                line[at + 32 + 2 * r..][..2].copy_from_slice(&f16(w.min));
                            }
                            D => {
                                let d = f32_to_f16(w.scale[0]).to_le_bytes();
                                line[at + 2 * r..][..2].copy_from_slice(&d);
                            }
                            _ => {}
                        }
                    }
                    if scales != K4 && scales != K6 {
                        continue;
                    }
                    // The K-quants' super-block headers and sub-block scales, from the file.
                    for sb in 0..nb / 8 {
                        let blk = &row[sb * kind.bytes()..(sb + 1) * kind.bytes()];
                        let group = &mut panel[sb * group_lines(bits, scales)..][..5];
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
        Self {
            lines,
            nb,
            kind,
            panels,
        }
    }

    /// Bytes held.
    pub(super) fn size(&self) -> usize {
        self.lines.len() * 64
    }

    /// For the types whose min is `−shift ·` their scale, the shift, and whether it applies
    /// per half block (Q6_K, a scale per 16 weights) rather than per block (the symmetric
    /// types, one `d` per block).
    pub(super) fn integer_start(&self) -> Option<(i32, bool)> {
        let Layout { scales, shift, .. } = layout(self.kind);
        (scales == D || scales == K6).then_some((i32::from(shift), scales == K6))
    }

    /// Panel `p` against every activation row of `x`: `out[r · 16 + i]` = row `r` · weight
    /// row `16p + i`. For a type with an [`Packed::integer_start`], `init` holds `−shift · Σ`
    /// of each activation block (or half block); other types ignore it. The caller has checked
    /// [`crate::simd::avx512_vnni`].
    pub(super) fn panel(&self, p: usize, x: &QuantRows, init: &[i32], out: &mut [f32]) {
        let m = out.len() / PANEL;
        let nb = self.nb;
        assert!(p < self.panels && x.cols == nb * QK);
        assert!(x.q.len() >= m * x.cols && x.d.len() >= m * nb);
        let Layout { bits, scales, .. } = layout(self.kind);
        assert!(scales != D || init.len() >= m * nb);
        assert!(scales != K6 || init.len() >= 2 * m * nb);
        let sums = self.kind.sums(x);
        assert!(sums.len() >= m * nb);
        assert!(scales != K4 && scales != K6 || nb.is_multiple_of(8));
        let mut r0 = 0;
        // SAFETY: the CPU has AVX-512 F, BW and VNNI (the caller checked); the panel's lines
        // and `x`'s rows `0..m` are inside their buffers (asserted above), and the kernels
        // read nothing else.
        unsafe {
            macro_rules! run {
                ($r:expr) => {
                    match (bits, scales) {
                        (4, DM) => tile::<$r, 4, DM>(self, p, x, sums, init, r0, out),
                        (4, D) => tile::<$r, 4, D>(self, p, x, sums, init, r0, out),
                        (4, _) => tile::<$r, 4, K4>(self, p, x, sums, init, r0, out),
                        (5, DM) => tile::<$r, 5, DM>(self, p, x, sums, init, r0, out),
                        (5, D) => tile::<$r, 5, D>(self, p, x, sums, init, r0, out),
                        (5, _) => tile::<$r, 5, K4>(self, p, x, sums, init, r0, out),
                        (6, _) => tile::<$r, 6, K6>(self, p, x, sums, init, r0, out),
                        _ => tile::<$r, 8, D>(self, p, x, sums, init, r0, out),
                    }
                };
            }
            while m - r0 >= TILE {
                run!(TILE);
                r0 += TILE;
            }
            if m - r0 >= 4 {
                run!(4);
                r0 += 4;
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
unsafe fn tile<const R: usize, const BITS: u8, const S: u8>(
    w: &Packed,
    p: usize,
    x: &QuantRows,
    sums: &[f32],
    init: &[i32],
    r0: usize,
    out: &mut [f32],
) {
    let nb = w.nb;
    let per_panel = nb.div_ceil(group_blocks(S)) * group_lines(BITS, S);
    // SAFETY: as in `Packed::panel`: every group of panel `p` is inside `w.lines`, and
    // activation blocks `(r0 + r) · nb + b` for `r < R` inside `x`'s buffers.
    unsafe {
        let base = w.lines.as_ptr().add(p * per_panel).cast::<u8>();
        let xq = x.q.as_ptr();
        let xd = x.d.as_ptr();
        let xs = sums.as_ptr();
        let xi0 = init.as_ptr();
        let low = _mm512_set1_epi8(0x0f);
        let sign = _mm512_set1_epi32(i32::MIN);
        let mut acc = [_mm512_setzero_ps(); R];
        // A K-quant super-block's d and dmin.
        let (mut dk, mut dmk) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for b in 0..nb {
            let (at, scale_at) = block_at(b, BITS, S);
            let blk = base.add(at * 64);
            let scl = base.add(scale_at);
            if (S == K4 || S == K6) && b % 8 == 0 {
                let g = base.add(b / 8 * group_lines(BITS, S) * 64);
                dk = _mm512_cvtph_ps(_mm256_load_si256(g.cast()));
                dmk = _mm512_cvtph_ps(_mm256_load_si256(g.add(32).cast()));
            }
            let line = |l: usize| blk.add(64 * l);
            let mut wq = [_mm512_setzero_si512(); 8];
            if BITS == 8 {
                for (g, wq) in wq.iter_mut().enumerate() {
                    *wq = _mm512_load_si512(line(g).cast());
                }
            } else {
                for k in 0..4 {
                    let v = _mm512_load_si512(line(k).cast());
                    wq[k] = _mm512_and_si512(v, low);
                    wq[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                }
                // The fifth and sixth bits: one masked byte add each.
                for h in 0..usize::from(BITS) - 4 {
                    let bit = _mm512_set1_epi8(0x10 << h);
                    let masks = line(4 + h).cast::<u64>();
                    for (j, wq) in wq.iter_mut().enumerate() {
                        let k: __mmask64 = std::ptr::read_unaligned(masks.add(j));
                        *wq = _mm512_mask_add_epi8(*wq, k, *wq, bit);
                    }
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
            // D and Q6_K's mins are in the integer sums' starting values (`init`).
            let (d0, d1, m0) = match S {
                DM => {
                    let d = _mm512_cvtph_ps(_mm256_load_si256(scl.cast()));
                    let m = _mm512_cvtph_ps(_mm256_load_si256(scl.add(32).cast()));
                    (d, d, m)
                }
                D => {
                    let d = _mm512_cvtph_ps(_mm256_load_si256(scl.cast()));
                    (d, d, _mm512_setzero_ps())
                }
                K4 => {
                    // d · sc and −(dmin · m), as the dequantisation forms them.
                    let d = _mm512_mul_ps(dk, bytes(0, false));
                    let m = neg(_mm512_mul_ps(dmk, bytes(16, false)));
                    (d, d, m)
                }
                _ => (
                    _mm512_mul_ps(dk, bytes(0, true)),
                    _mm512_mul_ps(dk, bytes(16, true)),
                    _mm512_setzero_ps(),
                ),
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let xi = (r0 + r) * nb + b;
                let a = xq.add(xi * QK).cast::<i32>();
                // Two chains of four, so that a few rows (decode) wait less on each; one
                // chain where enough rows run side by side, but for Q6_K's two halves.
                // A symmetric type's min term as the sum's starting value: one broadcast
                // load instead of a multiply-add per row and block.
                let (mut s0, mut s1) = match S {
                    D => (_mm512_set1_epi32(*xi0.add(xi)), _mm512_setzero_si512()),
                    K6 => (
                        _mm512_set1_epi32(*xi0.add(2 * xi)),
                        _mm512_set1_epi32(*xi0.add(2 * xi + 1)),
                    ),
                    _ => (_mm512_setzero_si512(), _mm512_setzero_si512()),
                };
                if R >= 4 && S != K6 {
                    for (g, &w) in wq.iter().enumerate() {
                        let ag = _mm512_set1_epi32(std::ptr::read_unaligned(a.add(g)));
                        s0 = _mm512_dpbusd_epi32(s0, w, ag);
                    }
                } else {
                    for g in 0..4 {
                        let ag = _mm512_set1_epi32(std::ptr::read_unaligned(a.add(g)));
                        s0 = _mm512_dpbusd_epi32(s0, wq[g], ag);
                        let ag = _mm512_set1_epi32(std::ptr::read_unaligned(a.add(g + 4)));
                        s1 = _mm512_dpbusd_epi32(s1, wq[g + 4], ag);
                    }
                }
                let dx = _mm512_set1_ps(*xd.add(xi));
                if S == K6 {
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(d0, dx), *acc);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(d1, dx), *acc);
                } else {
                    let s = _mm512_cvtepi32_ps(if R >= 4 { s0 } else { _mm512_add_epi32(s0, s1) });
                    *acc = _mm512_fmadd_ps(s, _mm512_mul_ps(d0, dx), *acc);
                    if S != D {
                        *acc = _mm512_fmadd_ps(m0, _mm512_set1_ps(*xs.add(xi)), *acc);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add((r0 + r) * PANEL), *acc);
        }
    }
}
