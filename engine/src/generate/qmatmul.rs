//! CPU matmuls straight over the memory-mapped GGUF bytes for the block types small models are
//! made of (Q4_0, Q4_1, Q8_0); everything else goes through candle's `QMatMul`.
//!
//! Why our own: candle's Q4_1 dot product is scalar on x86, and its weights live in a copy of
//! the file. Here the weights stay in the page cache (zero-copy, shared between processes,
//! nothing to load), and the dot products are AVX2 integer dot products: each activation row
//! is quantised once per matmul to 8-bit blocks of 32 (a scale and the block's sum, as ggml's
//! `Q8_1`), a weight block's nibbles or bytes are multiplied with it exactly in integers, and
//! only the per-block result is scaled in f32.
//!
//! Layout of the GGUF blocks (32 weights each, little-endian):
//! - Q4_0: f16 scale `d`, 16 bytes of nibbles; weight `i` = `d · (q_i − 8)`.
//! - Q4_1: f16 `d`, f16 `m`, 16 bytes of nibbles; weight `i` = `d · q_i + m`.
//! - Q8_0: f16 `d`, 32 signed bytes; weight `i` = `d · q_i`.
//!
//! with nibble `i < 16` the low half of byte `i` and nibble `i + 16` its high half.

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

/// Weights per block.
pub(crate) const QK: usize = 32;

/// The block types with a kernel here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockType {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl BlockType {
    pub(crate) fn bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// A `rows × cols` weight matrix (one output per row) in the mapped file.
pub(crate) struct MappedMatrix {
    map: Arc<Mmap>,
    range: Range<usize>,
    pub(crate) kind: BlockType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// Activation rows quantised to 8-bit blocks: values, per-block scale, per-block
/// `scale · Σ values`.
#[derive(Default)]
pub(crate) struct QuantRows {
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    cols: usize,
}

impl QuantRows {
    /// Quantises `x` (`rows × cols`, `cols` a multiple of 32), reusing the buffers.
    pub(crate) fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert_eq!(cols % QK, 0);
        let blocks = x.len() / QK;
        self.cols = cols;
        self.q.resize(x.len(), 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in self.q[b * QK..(b + 1) * QK].iter_mut().zip(xb) {
                *q = round_away(v * inv).clamp(-127, 127) as i8;
                sum += i32::from(*q);
            }
            // Scales rounded through f16 as ggml's Q8_0/Q8_1 blocks store them, so results match
            // ggml-family kernels (candle's, llama.cpp's) as closely as possible.
            let d = round_f16(d);
            self.d[b] = d;
            self.s[b] = round_f16(round_f16(sum as f32) * d);
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
        let ok = cols.is_multiple_of(QK) && range.len() == rows * cols / QK * kind.bytes();
        ok.then_some(Self {
            map,
            range,
            kind,
            rows,
            cols,
        })
    }

    fn bytes(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }

    /// Row `j` as f32 (an embedding lookup).
    pub(crate) fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let bb = self.kind.bytes();
        let row_bytes = self.cols / QK * bb;
        let row = &self.bytes()[j * row_bytes..(j + 1) * row_bytes];
        for (blk, o) in row.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
            let d = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
            match self.kind {
                BlockType::Q4_0 | BlockType::Q4_1 => {
                    let (qs, bias, m) = if self.kind == BlockType::Q4_0 {
                        (&blk[2..18], 8.0, 0.0)
                    } else {
                        (
                            &blk[4..20],
                            0.0,
                            f16_to_f32(u16::from_le_bytes([blk[2], blk[3]])),
                        )
                    };
                    for i in 0..16 {
                        o[i] = d * (f32::from(qs[i] & 0x0f) - bias) + m;
                        o[i + 16] = d * (f32::from(qs[i] >> 4) - bias) + m;
                    }
                }
                BlockType::Q8_0 => {
                    for i in 0..QK {
                        o[i] = d * f32::from(blk[2 + i] as i8);
                    }
                }
            }
        }
    }

    /// `out (x.rows × self.rows) = x · selfᵀ`.
    #[cfg(test)]
    pub(crate) fn matmul(&self, x: &QuantRows, out: &mut Vec<f32>, scratch: &mut Vec<f32>) {
        matmul_many(&[self], x, &mut [out], scratch);
    }

    fn row_bytes(&self) -> usize {
        self.cols / QK * self.kind.bytes()
    }
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

/// One weight row against every activation row.
fn dot_rows(kind: BlockType, wrow: &[u8], x: &QuantRows, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma_f16c() {
        return avx2::dot_rows(kind, wrow, x, out);
    }
    portable_dot_rows(kind, wrow, x, out);
}

fn portable_dot_rows(kind: BlockType, wrow: &[u8], x: &QuantRows, out: &mut [f32]) {
    let nb = x.cols / QK;
    let bb = kind.bytes();
    for (r, o) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for b in 0..nb {
            let blk = &wrow[b * bb..(b + 1) * bb];
            let xi = r * nb + b;
            let xq = &x.q[xi * QK..(xi + 1) * QK];
            let d = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
            match kind {
                BlockType::Q4_0 | BlockType::Q4_1 => {
                    let qs = if kind == BlockType::Q4_0 {
                        &blk[2..18]
                    } else {
                        &blk[4..20]
                    };
                    let bias = if kind == BlockType::Q4_0 { 8 } else { 0 };
                    let mut dot = 0i32;
                    for i in 0..16 {
                        let lo = i32::from(qs[i] & 0x0f) - bias;
                        let hi = i32::from(qs[i] >> 4) - bias;
                        dot += lo * i32::from(xq[i]) + hi * i32::from(xq[i + 16]);
                    }
                    acc += d * x.d[xi] * dot as f32;
                    if kind == BlockType::Q4_1 {
                        let m = f16_to_f32(u16::from_le_bytes([blk[2], blk[3]]));
                        acc += m * x.s[xi];
                    }
                }
                BlockType::Q8_0 => {
                    let mut dot = 0i32;
                    for i in 0..QK {
                        dot += i32::from(blk[2 + i] as i8) * i32::from(xq[i]);
                    }
                    acc += d * x.d[xi] * dot as f32;
                }
            }
        }
        *o = acc;
    }
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

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockType, QK, QuantRows};

    const Q4_0: u8 = 0;
    const Q4_1: u8 = 1;
    const Q8_0: u8 = 2;

    /// Same contract as `portable_dot_rows`; the caller has checked
    /// [`crate::simd::avx2_fma_f16c`].
    pub(super) fn dot_rows(kind: BlockType, wrow: &[u8], x: &QuantRows, out: &mut [f32]) {
        let nb = x.cols / QK;
        assert!(wrow.len() >= nb * kind.bytes() && x.q.len() >= out.len() * x.cols);
        assert!(x.d.len() >= out.len() * nb && x.s.len() >= out.len() * nb);
        // SAFETY: AVX2, FMA and F16C are present (checked by the one caller, `super::dot_rows`),
        // and every load below stays inside `wrow` and `x`'s buffers, whose lengths the asserts
        // above check against the loop bounds.
        unsafe {
            match kind {
                BlockType::Q4_0 => rows::<Q4_0>(wrow, x, out, nb),
                BlockType::Q4_1 => rows::<Q4_1>(wrow, x, out, nb),
                BlockType::Q8_0 => rows::<Q8_0>(wrow, x, out, nb),
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

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn tile<const R: usize, const K: u8>(
        wrow: &[u8],
        x: &QuantRows,
        r0: usize,
        nb: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as in `dot_rows`: `wrow` holds `nb` blocks, `x` holds rows `r0..r0 + R`.
        unsafe {
            let bb = match K {
                Q4_0 => 18,
                Q4_1 => 20,
                _ => 34,
            };
            let ones = _mm256_set1_epi16(1);
            let low = _mm256_set1_epi8(0x0f);
            let eight = _mm256_set1_epi8(8);
            let mut acc = [_mm256_setzero_ps(); R];
            let mut macc = [0f32; R];
            let xq = x.q.as_ptr();
            let xd = x.d.as_ptr();
            let xs = x.s.as_ptr();
            for b in 0..nb {
                let blk = wrow.as_ptr().add(b * bb);
                // d (and, for Q4_1, m right after it) converted by F16C.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                    blk.cast::<i32>(),
                )));
                let d = _mm_cvtss_f32(dm);
                // The weight block as 32 bytes: unsigned nibbles (Q4_1), else signed values.
                let w = match K {
                    Q8_0 => _mm256_loadu_si256(blk.add(2).cast()),
                    _ => {
                        let qs = _mm_loadu_si128(blk.add(if K == Q4_1 { 4 } else { 2 }).cast());
                        let nib =
                            _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), low);
                        if K == Q4_0 {
                            _mm256_sub_epi8(nib, eight)
                        } else {
                            nib
                        }
                    }
                };
                // maddubs multiplies unsigned by signed bytes: a signed weight lends its sign to
                // the activation.
                let wabs = if K == Q4_1 { w } else { _mm256_sign_epi8(w, w) };
                for r in 0..R {
                    let xi = (r0 + r) * nb + b;
                    let a = _mm256_loadu_si256(xq.add(xi * QK).cast());
                    let a = if K == Q4_1 { a } else { _mm256_sign_epi8(a, w) };
                    let sum32 = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, a), ones);
                    let scale = _mm256_set1_ps(d * *xd.add(xi));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum32), scale, acc[r]);
                    if K == Q4_1 {
                        macc[r] += _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)) * *xs.add(xi);
                    }
                }
            }
            for r in 0..R {
                out[r] = hsum(acc[r]) + macc[r];
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_covers_every_class() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        // Rounding to half: exact values survive, ties go to even, tiny values go subnormal.
        for h in [0x3c00u16, 0xc000, 0x0001, 0x03ff, 0x7bff, 0x3555] {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h);
        }
        assert_eq!(
            f32_to_f16(1.0 + 2f32.powi(-11)),
            0x3c00,
            "tie to even (down)"
        );
        assert_eq!(
            f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)),
            0x3c02,
            "tie to even (up)"
        );
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "overflow");
        assert_eq!(
            f32_to_f16(2f32.powi(-25)),
            0x0000,
            "half the smallest subnormal, to even"
        );
        assert_eq!(f32_to_f16(3.0 * 2f32.powi(-25)), 0x0002);
    }

    /// Random blocks of each type: the dispatched kernel (AVX2 here) and the portable one
    /// agree (integer sums are exact; only the f32 accumulation order differs).
    #[test]
    fn dispatched_and_portable_kernels_agree() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let cols = 256;
        for kind in [BlockType::Q4_0, BlockType::Q4_1, BlockType::Q8_0] {
            let mut random_row = || {
                let mut row = Vec::new();
                for _ in 0..cols / QK {
                    // Scales between 2^-8 and 2^-5 as f16, then random payload bytes.
                    let d: u16 = 0x1c00 + (next() % 0x0c00) as u16;
                    row.extend_from_slice(&d.to_le_bytes());
                    if kind == BlockType::Q4_1 {
                        let m: u16 = 0x9c00 + (next() % 0x0c00) as u16;
                        row.extend_from_slice(&m.to_le_bytes());
                    }
                    let payload = kind.bytes() - row.len() % kind.bytes();
                    row.extend((0..payload).map(|_| next() as u8));
                }
                assert_eq!(row.len(), cols / QK * kind.bytes());
                row
            };
            let (w0, w1) = (random_row(), random_row());
            let x: Vec<f32> = (0..7 * cols)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut q = QuantRows::default();
            q.quantize(&x, cols);
            let run = |f: &dyn Fn(&mut [f32], &mut [f32])| {
                let (mut a, mut b) = (vec![0f32; 7], vec![0f32; 7]);
                f(&mut a, &mut b);
                (a, b)
            };
            let portable = run(&|a, b| {
                portable_dot_rows(kind, &w0, &q, a);
                portable_dot_rows(kind, &w1, &q, b);
            });
            let one_by_one = run(&|a, b| {
                dot_rows(kind, &w0, &q, a);
                dot_rows(kind, &w1, &q, b);
            });
            let got = &one_by_one;
            for (x, y) in got
                .0
                .iter()
                .chain(&got.1)
                .zip(portable.0.iter().chain(&portable.1))
            {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "{kind:?}: {got:?} vs {portable:?}"
                );
            }
        }
    }

    #[test]
    fn rounding_takes_halves_away_from_zero() {
        for x in [
            0.0f32, 0.49999997, 0.5, 1.5, 2.5, -0.5, -1.5, -2.4999998, 126.5, -127.49, 3e9, -3e9,
            1e-30,
        ] {
            assert_eq!(round_away(x), x.round() as i32, "{x}");
        }
        assert_eq!(round_away(f32::NAN), 0);
        let mut state = 0x1234_5678_9abc_def1u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f32::from_bits(state as u32 & 0x7fff_ffff) % 256.0 - 128.0;
            if x.is_finite() {
                assert_eq!(round_away(x), x.round() as i32, "{x}");
            }
        }
    }

    #[test]
    fn quantisation_keeps_values_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
            .collect();
        let mut q = QuantRows::default();
        q.quantize(&x, 64);
        for (b, xb) in x.chunks(QK).enumerate() {
            let mut sum = 0.0;
            for (i, v) in xb.iter().enumerate() {
                let back = f32::from(q.q[b * QK + i]) * q.d[b];
                // Half a step, plus the f16 rounding of the scale (2^-11 relative) times 127.
                assert!(
                    (back - v).abs() <= q.d[b] * (0.5 + 127.0 / 2048.0),
                    "{back} vs {v}"
                );
                sum += f32::from(q.q[b * QK + i]);
            }
            assert!((q.s[b] - q.d[b] * sum).abs() <= (q.d[b] * sum).abs() / 512.0 + 1e-6);
        }
    }
}
