//! CPU matmuls straight over the memory-mapped GGUF bytes for the block types small models are
//! made of (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q4_K, Q5_K, Q6_K); everything else
//! goes through candle's `QMatMul`.
//!
//! Why our own: candle's Q4_1 dot product is scalar on x86, its K-quant ones are an order of
//! magnitude behind llama.cpp's, and its weights live in a copy of the file. Here the weights
//! stay in the page cache (zero-copy, shared between processes, nothing to load), and the dot
//! products are AVX2 integer dot products: each activation row is quantised once per matmul to
//! 8-bit blocks of 32 (a scale and the block's sum, as ggml's `Q8_1`), a weight block's nibbles
//! or bytes are multiplied with it exactly in integers, and only the per-block result is
//! scaled in f32. Every weight type is seen 32 weights at a time (a K-quant super-block as its
//! eight sub-blocks), so one activation block lines up with one weight (sub-)block.
//!
//! Layout of the GGUF blocks (little-endian; f16 scales):
//! - Q4_0 (32 weights, 18 bytes): `d`, 16 bytes of nibbles; weight `i` = `d · (q_i − 8)`.
//! - Q4_1 (32, 20): `d`, `m`, 16 bytes of nibbles; weight `i` = `d · q_i + m`.
//! - Q5_0 (32, 22): `d`, 4 bytes of fifth bits (bit `i` of the little-endian u32 for weight
//!   `i`), 16 bytes of nibbles; weight `i` = `d · (q_i − 16)`.
//! - Q5_1 (32, 24): `d`, `m`, fifth bits as Q5_0, nibbles; weight `i` = `d · q_i + m`.
//! - Q8_0 (32, 34): `d`, 32 signed bytes; weight `i` = `d · q_i`.
//! - Q4_K (256, 144): `d`, `dmin`, 12 bytes of 6-bit scales `sc_j` and mins `m_j` for eight
//!   sub-blocks of 32 (see `k_scales`), 128 bytes of nibbles in four runs of 32 bytes, run `p`
//!   holding sub-block `2p` in its low nibbles and `2p + 1` in its high ones; weight `i` of
//!   sub-block `j` = `d·sc_j · q_i − dmin·m_j`.
//! - Q5_K (256, 176): `d`, `dmin`, scales as Q4_K, 32 bytes of fifth bits (bit `j` of byte
//!   `i` for weight `i` of sub-block `j`), nibbles as Q4_K; weights as Q4_K.
//! - Q6_K (256, 210): 128 bytes of low nibbles `ql`, 64 bytes of high bit pairs `qh`, 16
//!   signed byte scales (one per 16 weights), `d` last. Each half of 128 weights takes 64
//!   bytes of `ql` and 32 of `qh`; its 32-weight run `k` (0..4) has its low nibbles from `ql`
//!   bytes `32·(k mod 2)..` (low halves for `k < 2`, high for `k ≥ 2`) and its high pair from
//!   bits `2k..2k + 2` of the `qh` bytes; weight `i` = `d · sc_{i / 16} · (q_i − 32)`.
//!
//! with, in the 32-weight types, nibble `i < 16` the low half of byte `i` and nibble `i + 16`
//! its high half.
//!
//! The activations' per-block sums come in two roundings: Q4_1 and Q5_1 use `scale · Σq`
//! rounded through f16, as ggml's `Q8_1` stores it, and the K-quants the exact sum, as ggml's
//! `Q8_K` keeps it, so each type's results stay as close as possible to llama.cpp's.

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod packed;
mod portable;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

/// Weights per activation block, and per weight block or K-quant sub-block.
pub(crate) const QK: usize = 32;

/// Weights per K-quant super-block.
const QK_K: usize = 256;

/// The block types with a kernel here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl BlockType {
    /// Bytes per block.
    pub(crate) fn bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Weights per block.
    fn width(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => QK,
            Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
        }
    }

    /// The activations' per-block sums this type's min term is multiplied with (see the
    /// module comment); types without a min never read them.
    fn sums(self, x: &QuantRows) -> &[f32] {
        match self {
            Self::Q4_1 | Self::Q5_1 => &x.s,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 | Self::Q4K | Self::Q5K | Self::Q6K => &x.sum,
        }
    }
}

/// The 6-bit scale and min of each of the eight sub-blocks of a Q4_K or Q5_K super-block,
/// from their 12 packed bytes: sub-blocks 0..4 keep theirs in the low 6 bits of bytes `j`
/// (scale) and `j + 4` (min); sub-blocks 4..8 in the nibbles of byte `j + 4` (scale low, min
/// high), topped by the 2 bits spare in bytes `j − 4` (scale) and `j` (min).
fn k_scales(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = packed[j] & 63;
        m[j] = packed[j + 4] & 63;
        sc[j + 4] = (packed[j + 8] & 0x0f) | ((packed[j] >> 6) << 4);
        m[j + 4] = (packed[j + 8] >> 4) | ((packed[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// A `rows × cols` weight matrix (one output per row) in the mapped file, and, once
/// [`MappedMatrix::repack`] has run, in interleaved panels for the AVX-512 VNNI kernel.
pub(crate) struct MappedMatrix {
    map: Arc<Mmap>,
    range: Range<usize>,
    pub(crate) kind: BlockType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    #[cfg(target_arch = "x86_64")]
    packed: Option<packed::Packed>,
}

/// Activation rows quantised to 8-bit blocks of 32: values, per-block scale, per-block
/// `scale · Σ values` rounded through f16 (`s`) and in f32 (`sum`), and the exact `Σ values`
/// per half block (`halves`).
#[derive(Default)]
pub(crate) struct QuantRows {
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    sum: Vec<f32>,
    /// Σ values per half block (16 values), exact: the repacked kernel starts its integer
    /// sums from `−shift` times them (a block's for the symmetric types, each half's for
    /// Q6_K).
    halves: Vec<i32>,
    cols: usize,
}

impl QuantRows {
    /// Quantises `x` (`rows × cols`, `cols` a multiple of 32), reusing the buffers; in
    /// parallel over runs of blocks when there are many (a prefill chunk), on the calling thread
    /// otherwise (a decode step's few rows: a fork-join would cost more than the work).
    pub(crate) fn quantize(&mut self, x: &[f32], cols: usize) {
        /// Blocks per parallel task.
        const RUN: usize = 64;
        debug_assert_eq!(cols % QK, 0);
        let blocks = x.len() / QK;
        self.cols = cols;
        self.q.resize(x.len(), 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        self.sum.resize(blocks, 0.0);
        self.halves.resize(2 * blocks, 0);
        if blocks <= 4 * RUN {
            fill_blocks(BlockRun {
                x,
                q: &mut self.q,
                d: &mut self.d,
                s: &mut self.s,
                sum: &mut self.sum,
                halves: &mut self.halves,
            });
        } else {
            x.par_chunks(RUN * QK)
                .zip(self.q.par_chunks_mut(RUN * QK))
                .zip(self.d.par_chunks_mut(RUN))
                .zip(self.s.par_chunks_mut(RUN))
                .zip(self.sum.par_chunks_mut(RUN))
                .zip(self.halves.par_chunks_mut(2 * RUN))
                .for_each(|(((((x, q), d), s), sum), halves)| {
                    fill_blocks(BlockRun {
                        x,
                        q,
                        d,
                        s,
                        sum,
                        halves,
                    })
                });
        }
    }

    fn rows(&self) -> usize {
        self.q.len().checked_div(self.cols).unwrap_or(0)
    }
}

impl MappedMatrix {
    pub(crate) fn new(
        map: Arc<Mmap>,
        range: Range<usize>,
        kind: BlockType,
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        let ok = cols.is_multiple_of(kind.width())
            && range.len() == rows * cols / kind.width() * kind.bytes();
        ok.then_some(Self {
            map,
            range,
            kind,
            rows,
            cols,
            #[cfg(target_arch = "x86_64")]
            packed: None,
        })
    }

    /// Copies the weights into interleaved panels for the AVX-512 VNNI kernel where the CPU
    /// has it (see `packed.rs`), unless `HEARTH_ENGINE_REPACK=0` (a switch for measuring the
    /// kernels against each other). Returns the bytes the copy holds (0 when none was made).
    /// The mapped bytes stay in use for [`MappedMatrix::dequantize_row`].
    pub(crate) fn repack(&mut self) -> usize {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx512_vnni() && repack_enabled() {
            let p = packed::Packed::new(self.kind, self.bytes(), self.rows, self.cols);
            let size = p.size();
            self.packed = Some(p);
            return size;
        }
        0
    }

    fn bytes(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }

    /// Row `j` as f32 (an embedding lookup), computed as candle's dequantisation does it, to
    /// the bit.
    pub(crate) fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let row = &self.bytes()[j * rb..(j + 1) * rb];
        for (b, o) in out[..self.cols].chunks_exact_mut(QK).enumerate() {
            let u = portable::unpack(self.kind, row, b);
            for (i, o) in o.iter_mut().enumerate() {
                *o = u.scale[i / 16] * f32::from(u.q[i]) + u.min;
            }
        }
    }

    /// `out (x.rows × self.rows) = x · selfᵀ`.
    #[cfg(test)]
    pub(crate) fn matmul(&self, x: &QuantRows, out: &mut Vec<f32>, scratch: &mut Vec<f32>) {
        matmul_many(&[self], x, &mut [out], scratch);
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.kind.width() * self.kind.bytes()
    }
}

/// Whether `HEARTH_ENGINE_REPACK` leaves repacking on (anything but `0`), read once.
#[cfg(target_arch = "x86_64")]
fn repack_enabled() -> bool {
    static ON: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var("HEARTH_ENGINE_REPACK").as_deref() != Ok("0"));
    *ON
}

/// `outs[i] (x.rows × ws[i].rows) = x · ws[i]ᵀ` for matrices sharing their input (q, k, v; or
/// gate, up), all in one parallel pass over output columns: one fork-join per projection
/// group instead of one per matrix, which matters at one row per step (decode). `scratch`
/// holds the transposed results between calls.
pub(crate) fn matmul_many(
    ws: &[&MappedMatrix],
    x: &QuantRows,
    outs: &mut [&mut Vec<f32>],
    scratch: &mut Vec<f32>,
) {
    const COLS_PER_TASK: usize = 16;
    let m = x.rows();
    let total: usize = ws.iter().map(|w| w.rows).sum();
    if m == 0 {
        outs.iter_mut().for_each(|o| o.clear());
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if ws.iter().all(|w| w.packed.is_some()) && crate::simd::avx512_vnni() {
        return matmul_packed(ws, x, outs, scratch);
    }
    // Every element is written below: grow without clearing.
    if scratch.len() < total * m {
        scratch.resize(total * m, 0.0);
    }
    let scratch = &mut scratch[..total * m];
    // Tasks of 16 columns of the matrices' concatenated columns, each with its own run of the
    // (column-major) scratch.
    scratch
        .par_chunks_mut(COLS_PER_TASK * m)
        .enumerate()
        .for_each(|(t, run)| {
            for (c, dst) in run.chunks_mut(m).enumerate() {
                // The matrix and local column of global column g.
                let g = t * COLS_PER_TASK + c;
                let (mut i, mut base) = (0, 0);
                while g >= base + ws[i].rows {
                    base += ws[i].rows;
                    i += 1;
                }
                let (w, j) = (ws[i], g - base);
                let rb = w.row_bytes();
                dot_rows(w.kind, &w.bytes()[j * rb..(j + 1) * rb], x, dst);
            }
        });
    let mut offset = 0;
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        let n = w.rows;
        let block = &scratch[offset * m..(offset + n) * m];
        out.clear();
        if m == 1 {
            out.extend_from_slice(block);
        } else {
            // Column-major to row-major in 8 × 8 tiles, so neither side is walked with a
            // cache-missing stride for long.
            out.resize(m * n, 0.0);
            const T: usize = 8;
            for j0 in (0..n).step_by(T) {
                for r0 in (0..m).step_by(T) {
                    for j in j0..(j0 + T).min(n) {
                        for r in r0..(r0 + T).min(m) {
                            out[r * n + j] = block[j * m + r];
                        }
                    }
                }
            }
        }
        offset += n;
    }
}

/// `matmul_many` over repacked matrices: one task per panel of 16 rows (of the matrices'
/// concatenated rows), each writing its `m × 16` results to its own run of `scratch`, which are
/// then copied to the outputs' rows.
#[cfg(target_arch = "x86_64")]
fn matmul_packed(
    ws: &[&MappedMatrix],
    x: &QuantRows,
    outs: &mut [&mut Vec<f32>],
    scratch: &mut Vec<f32>,
) {
    use packed::PANEL;
    let m = x.rows();
    // Panels per matrix (the last one padded), found from the rows: no list built per call.
    let panels_of = |w: &MappedMatrix| w.rows.div_ceil(PANEL);
    let panels: usize = ws.iter().map(|w| panels_of(w)).sum();
    if scratch.len() < panels * PANEL * m {
        scratch.resize(panels * PANEL * m, 0.0);
    }
    let scratch = &mut scratch[..panels * PANEL * m];
    // The symmetric types' blocks, and Q6_K's half blocks, start their integer sums from
    // −shift · Σ activations (their unsigned weights are the signed ones plus `shift`).
    let inits: Vec<Vec<i32>> = ws
        .iter()
        .map(
            |w| match w.packed.as_ref().and_then(|p| p.integer_start()) {
                Some((shift, false)) => x
                    .halves
                    .chunks_exact(2)
                    .map(|h| -shift * (h[0] + h[1]))
                    .collect(),
                Some((shift, true)) => x.halves.iter().map(|h| -shift * h).collect(),
                None => Vec::new(),
            },
        )
        .collect();
    scratch
        .par_chunks_mut(PANEL * m)
        .enumerate()
        .for_each(|(t, dst)| {
            let (mut i, mut base) = (0, 0);
            while t >= base + panels_of(ws[i]) {
                base += panels_of(ws[i]);
                i += 1;
            }
            if let Some(p) = &ws[i].packed {
                p.panel(t - base, x, &inits[i], dst);
            }
        });
    let mut first = 0;
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        let (n, count) = (w.rows, panels_of(w));
        out.clear();
        out.resize(m * n, 0.0);
        for (k, panel) in scratch[first * PANEL * m..][..count * PANEL * m]
            .chunks_exact(PANEL * m)
            .enumerate()
        {
            let width = PANEL.min(n - k * PANEL);
            for (r, src) in panel.chunks_exact(PANEL).enumerate() {
                let dst = &mut out[r * n + k * PANEL..];
                match (dst.first_chunk_mut::<PANEL>(), src.first_chunk::<PANEL>()) {
                    // A fixed-size copy: with a runtime length it is a memmove call per row.
                    (Some(d), Some(s)) if width == PANEL => *d = *s,
                    _ => dst[..width].copy_from_slice(&src[..width]),
                }
            }
        }
        first += count;
    }
}

/// One weight row against every activation row.
fn dot_rows(kind: BlockType, wrow: &[u8], x: &QuantRows, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma_f16c() {
        return avx2::dot_rows(kind, wrow, x, out);
    }
    portable::dot_rows(kind, wrow, x, out);
}

/// A run of blocks being quantised: the values (`x`) and their bytes (`q`), and one entry
/// per block in each of the others (two in `sum16`), as [`QuantRows`] holds them.
pub(super) struct BlockRun<'a> {
    x: &'a [f32],
    q: &'a mut [i8],
    d: &'a mut [f32],
    s: &'a mut [f32],
    sum: &'a mut [f32],
    halves: &'a mut [i32],
}

/// `QuantRows::quantize` over a run of blocks; in AVX2 with F16C where the CPU has them (the
/// same bytes and values: the hardware rounds to f16 to nearest even, as `round_f16` does).
fn fill_blocks(run: BlockRun<'_>) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma_f16c() {
        return avx2::fill_blocks(run);
    }
    fill_blocks_with(run, quantize_block, round_f16);
}

/// `fill_blocks` with a given block quantiser and f16 rounding.
#[inline(always)]
fn fill_blocks_with(
    run: BlockRun<'_>,
    quantize: impl Fn(&[f32], &mut [i8]) -> (f32, [i32; 2]),
    round: impl Fn(f32) -> f32,
) {
    let BlockRun {
        x,
        q,
        d,
        s,
        sum,
        halves: half_sums,
    } = run;
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let (amax, halves) = quantize(xb, &mut q[b * QK..(b + 1) * QK]);
        let d_b = round(amax / 127.0);
        let total = halves[0] + halves[1];
        d[b] = d_b;
        // Scales rounded through f16 as ggml's Q8_0/Q8_1 blocks store them, so results match
        // ggml-family kernels (candle's, llama.cpp's) as closely as possible.
        s[b] = round(round(total as f32) * d_b);
        sum[b] = total as f32 * d_b;
        half_sums[2 * b..2 * b + 2].copy_from_slice(&halves);
    }
}

/// One block of 32 activations to bytes: `q_i` = `x_i / d` rounded (halves away from zero)
/// and clamped to ±127, with `d` = `max |x_i| / 127` (no scaling when all are 0). Returns the
/// max and the sums of `q` over each half. The AVX2 version gives the same bytes (NaN aside).
fn quantize_block(xb: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        return avx2::quantize_block(xb, q);
    }
    quantize_block_scalar(xb, q)
}

fn quantize_block_scalar(xb: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut halves = [0i32; 2];
    for (i, (q, v)) in q.iter_mut().zip(xb).enumerate() {
        *q = round_away(v * inv).clamp(-127, 127) as i8;
        halves[i / 16] += i32::from(*q);
    }
    (amax, halves)
}

/// `x.round() as i32` (halves away from zero) without a libm call: the truncating conversion
/// is one instruction, and `x - trunc(x)` is exact for the magnitudes quantisation sees
/// (below 2^23; beyond that every float is an integer and the fraction is 0). NaN gives 0.
#[inline(always)]
fn round_away(x: f32) -> i32 {
    let t = x as i32;
    let frac = x - t as f32;
    if frac >= 0.5 {
        t.saturating_add(1)
    } else if frac <= -0.5 {
        t.saturating_sub(1)
    } else {
        t
    }
}

/// `x` rounded to the nearest IEEE half (ties to even), back as f32. Values beyond the half
/// range become infinite; activations never get there.
pub(crate) fn round_f16(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal half (or zero): shift the full mantissa into place, rounding to even.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut h = m >> shift;
        if rest > half || (rest == half && h & 1 == 1) {
            h += 1;
        }
        return sign | h as u16;
    }
    let mut h = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1; // may carry into the exponent, which is the right result
    }
    sign | h as u16
}

/// IEEE half to single precision.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}
