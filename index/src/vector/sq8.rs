//! Scalar quantisation of unit vectors to 7-bit codes, one byte per dimension (issue 21): a
//! quarter of the bytes of f32 per distance, which is what a graph traversal spends its time
//! fetching.
//!
//! - **Codes**: per dimension `d`, `x ≈ lo[d] + step[d] * c` with `c` in `0..=127`, `lo` and
//!   `step` from the dimension's minimum and maximum over the vectors quantised. Seven bits,
//!   not eight, so that AVX2's `vpmaddubsw` (unsigned byte times signed byte, pairs summed into
//!   a saturating i16) cannot saturate: `2 * 127 * 127 < 32767`.
//! - **Queries**: `dot(q, x) ≈ Σ q[d]·lo[d] + Σ (q[d]·step[d])·c[d]`; the second sum's
//!   weights are rounded to signed bytes with one scale per query, so the whole estimate is an
//!   integer dot product, one `vpdpbusd` per 64 dimensions on AVX-512 VNNI, and an offset.
//! - **Layout**: each vector's codes start on a 64-byte line and fill whole lines (zero
//!   padded), so a kernel's loads are aligned and a vector of 384 dimensions is six lines.
//!
//! The estimate ranks candidates during traversal only; the graph rescores its final
//! candidates with the exact f32 vectors.

use super::mapped::Grow;

/// Largest code (7 bits).
const MAX_CODE: f32 = 127.0;

/// One cache line of codes.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [u8; 64]);

/// One cache line of a query's signed weights.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct QueryLine(pub [i8; 64]);

/// The integer dot product of a query's weights and a vector's codes, compiled for this CPU.
type DotFn = fn(&[QueryLine], &[Line]) -> i32;

/// The per-dimension ranges and the codes of every vector.
pub(crate) struct Sq8 {
    dim: usize,
    lines: usize,
    lo: Vec<f32>,
    step: Vec<f32>,
    codes: Grow<Line>,
    fitted: usize,
    dot: DotFn,
}

/// A query prepared for [`Sq8::estimate`].
pub(crate) struct Sq8Query {
    weights: Vec<QueryLine>,
    scale: f32,
    offset: f32,
}

impl Sq8 {
    /// Quantises the row-major unit vectors `rows` (`dim` wide).
    pub(crate) fn build(rows: &[f32], dim: usize) -> Self {
        let mut lo = vec![f32::INFINITY; dim];
        let mut hi = vec![f32::NEG_INFINITY; dim];
        for row in rows.chunks_exact(dim) {
            for ((l, h), &x) in lo.iter_mut().zip(&mut hi).zip(row) {
                *l = l.min(x);
                *h = h.max(x);
            }
        }
        let step: Vec<f32> = lo
            .iter()
            .zip(&hi)
            .map(|(&l, &h)| if h > l { (h - l) / MAX_CODE } else { 0.0 })
            .collect();
        let lines = dim.div_ceil(64);
        let mut sq = Self {
            dim,
            lines,
            lo,
            step,
            codes: Vec::with_capacity(rows.len() / dim.max(1) * lines).into(),
            fitted: rows.len() / dim.max(1),
            dot: pick_dot(),
        };
        sq.extend(rows);
        sq
    }

    /// Appends the codes of more unit vectors, clamped to the ranges fitted at build.
    pub(crate) fn extend(&mut self, rows: &[f32]) {
        for row in rows.chunks_exact(self.dim) {
            self.push(row);
        }
    }

    /// Appends the codes of one unit vector (clamped to the ranges fitted at build).
    fn push(&mut self, row: &[f32]) {
        let start = self.codes.len();
        self.codes
            .extend(std::iter::repeat_n(Line([0; 64]), self.lines));
        let out = self.codes.tail_mut(start);
        for (d, &x) in row.iter().enumerate() {
            let c = if self.step[d] > 0.0 {
                ((x - self.lo[d]) / self.step[d])
                    .round()
                    .clamp(0.0, MAX_CODE)
            } else {
                0.0
            };
            out[d / 64].0[d % 64] = c as u8;
        }
    }

    /// Number of vectors the ranges were fitted on.
    pub(crate) fn fitted(&self) -> usize {
        self.fitted
    }

    /// Vector `i`'s codes.
    #[inline]
    pub(crate) fn row(&self, i: u32) -> &[Line] {
        let at = i as usize * self.lines;
        self.codes.get(at..at + self.lines)
    }

    /// Prepares a unit query: its weights `q[d]·step[d]` as signed bytes with one scale.
    pub(crate) fn query(&self, q: &[f32]) -> Sq8Query {
        debug_assert_eq!(q.len(), self.dim);
        let offset: f32 = q.iter().zip(&self.lo).map(|(a, b)| a * b).sum();
        let widest = q
            .iter()
            .zip(&self.step)
            .map(|(a, s)| (a * s).abs())
            .fold(0f32, f32::max);
        let scale = if widest > 0.0 { widest / 127.0 } else { 1.0 };
        let mut weights = vec![QueryLine([0; 64]); self.lines];
        for (d, (a, s)) in q.iter().zip(&self.step).enumerate() {
            weights[d / 64].0[d % 64] = (a * s / scale).round().clamp(-127.0, 127.0) as i8;
        }
        Sq8Query {
            weights,
            scale,
            offset,
        }
    }

    /// The estimated dot product of a prepared query and vector `i`.
    #[inline]
    pub(crate) fn estimate(&self, q: &Sq8Query, i: u32) -> f32 {
        q.offset + q.scale * (self.dot)(&q.weights, self.row(i)) as f32
    }

    /// The ranges (`lo`, `step`), the number of vectors they were fitted on, and the codes:
    /// what a graph file stores.
    pub(crate) fn parts(&self) -> (&[f32], &[f32], usize, impl Iterator<Item = &Line>) {
        (&self.lo, &self.step, self.fitted, self.codes.iter())
    }

    /// Codes read back from a graph file: `lo` and `step` of width `dim`, `codes` whole rows of
    /// `dim.div_ceil(64)` lines. Fails (naming the fault) on finite-ness, widths or (with
    /// `check_codes`) a code above 127, which the AVX2 kernel's saturation bound relies on.
    pub(crate) fn from_parts(
        dim: usize,
        lo: Vec<f32>,
        step: Vec<f32>,
        fitted: usize,
        codes: Grow<Line>,
        check_codes: bool,
    ) -> Result<Self, String> {
        let lines = dim.div_ceil(64);
        if lo.len() != dim || step.len() != dim || lines == 0 || !codes.len().is_multiple_of(lines)
        {
            return Err("code ranges or rows have the wrong width".into());
        }
        if !lo.iter().chain(&step).all(|x| x.is_finite()) || step.iter().any(|&s| s < 0.0) {
            return Err("code ranges are not finite".into());
        }
        if check_codes
            && codes
                .iter()
                .any(|l| l.0.iter().any(|&c| c > MAX_CODE as u8))
        {
            return Err("a code is above 127".into());
        }
        Ok(Self {
            dim,
            lines,
            lo,
            step,
            codes,
            fitted,
            dot: pick_dot(),
        })
    }

    /// Replaces the codes by the same codes read in place (see `Graph::adopt_mapped`).
    pub(crate) fn adopt_codes(&mut self, codes: Grow<Line>) -> Result<(), String> {
        if codes.len() != self.codes.len() {
            return Err("the file holds other codes".into());
        }
        self.codes = codes;
        Ok(())
    }

    /// Bytes on the heap: the ranges and the codes not in a mapped file.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.codes.heap_bytes() + (self.lo.len() + self.step.len()) * 4
    }

    /// Bytes of codes read in place from a mapped file.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.codes.mapped_bytes()
    }
}

/// The integer dot product for this CPU: AVX-512 VNNI, else AVX2, else the portable loop.
fn pick_dot() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
            return dot_vnni;
        }
        if has!("avx2") {
            return dot_avx2;
        }
    }
    dot_portable
}

fn dot_portable(q: &[QueryLine], c: &[Line]) -> i32 {
    q.iter()
        .zip(c)
        .map(|(q, c)| {
            q.0.iter()
                .zip(&c.0)
                .map(|(&w, &x)| i32::from(w) * i32::from(x))
                .sum::<i32>()
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn dot_vnni(q: &[QueryLine], c: &[Line]) -> i32 {
    // SAFETY: chosen by `pick_dot` only where the CPU has AVX-512F, BW and VNNI.
    unsafe { dot_vnni_impl(q, c) }
}

/// One `vpdpbusd` per line (64 unsigned codes times 64 signed weights, summed in fours into
/// sixteen i32 lanes), two accumulators to halve the dependency chain.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(unsafe_code)]
unsafe fn dot_vnni_impl(q: &[QueryLine], c: &[Line]) -> i32 {
    use std::arch::x86_64::*;
    let n = q.len().min(c.len());
    let mut acc = [_mm512_setzero_si512(), _mm512_setzero_si512()];
    for i in 0..n {
        // SAFETY: both lines are 64 bytes, 64-byte aligned, and in bounds (i < n).
        let (w, x) = unsafe {
            (
                _mm512_load_si512(q.as_ptr().add(i).cast()),
                _mm512_load_si512(c.as_ptr().add(i).cast()),
            )
        };
        acc[i & 1] = _mm512_dpbusd_epi32(acc[i & 1], x, w);
    }
    _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]))
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn dot_avx2(q: &[QueryLine], c: &[Line]) -> i32 {
    // SAFETY: chosen by `pick_dot` only where the CPU has AVX2.
    unsafe { dot_avx2_impl(q, c) }
}

/// Per half line, `vpmaddubsw` (codes times weights, adjacent pairs summed into i16: at most
/// `2 * 127 * 127`, so no saturation) then `vpmaddwd` by ones into eight i32 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn dot_avx2_impl(q: &[QueryLine], c: &[Line]) -> i32 {
    use std::arch::x86_64::*;
    let n = q.len().min(c.len());
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(), _mm256_setzero_si256()];
    for i in 0..n {
        for (half, sum) in acc.iter_mut().enumerate() {
            // SAFETY: each half of a 64-byte aligned line is 32 bytes, 32-byte aligned, and in
            // bounds (i < n).
            let (w, x) = unsafe {
                (
                    _mm256_load_si256(q.as_ptr().add(i).cast::<__m256i>().add(half)),
                    _mm256_load_si256(c.as_ptr().add(i).cast::<__m256i>().add(half)),
                )
            };
            let pairs = _mm256_maddubs_epi16(x, w);
            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
        }
    }
    let s = _mm256_add_epi32(acc[0], acc[1]);
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::normalized;

    /// A query's estimate for vector `i`, through a normalised copy of the query.
    fn estimate_of(sq: &Sq8, q: &[f32], i: u32) -> f32 {
        let q = normalized(q).unwrap();
        sq.estimate(&sq.query(&q), i)
    }

    fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let row: Vec<f32> = (0..dim)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect();
            out.extend(normalized(&row).unwrap());
        }
        out
    }

    #[test]
    fn every_kernel_gives_the_portable_sum_to_the_integer() {
        let mut q = vec![QueryLine([0; 64]); 7];
        let mut c = vec![Line([0; 64]); 7];
        for i in 0..7 * 64 {
            q[i / 64].0[i % 64] = ((i * 37 % 255) as i32 - 127) as i8;
            c[i / 64].0[i % 64] = (i * 91 % 128) as u8;
        }
        // The extremes: every product at its largest, both signs.
        q[6].0 = [-127; 64];
        c[6].0 = [127; 64];
        let want = dot_portable(&q, &c);
        assert_eq!(pick_dot()(&q, &c), want);
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") {
                assert_eq!(dot_avx2(&q, &c), want);
            }
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                assert_eq!(dot_vnni(&q, &c), want);
            }
        }
    }

    #[test]
    fn estimates_are_close_to_exact_dot_products() {
        for dim in [384, 100, 3] {
            let rows = unit_rows(500, dim, 11);
            let sq = Sq8::build(&rows, dim);
            let queries = unit_rows(20, dim, 12);
            let mut worst = 0f32;
            for q in queries.chunks_exact(dim) {
                for i in 0..500u32 {
                    let row = &rows[i as usize * dim..(i as usize + 1) * dim];
                    let exact: f32 = q.iter().zip(row).map(|(a, b)| a * b).sum();
                    worst = worst.max((estimate_of(&sq, q, i) - exact).abs());
                }
            }
            // Uniform noise spreads each dimension over its full range, the worst case for a
            // per-dimension step: measured 0.0035 at 384 dimensions.
            assert!(worst < 0.02, "dim {dim}: worst error {worst}");
        }
    }

    #[test]
    fn a_constant_dimension_and_a_single_vector_quantise_without_division_by_zero() {
        let rows = [0.6, 0.8, 0.0, 0.6, 0.0, 0.8];
        let sq = Sq8::build(&rows, 3);
        let e = estimate_of(&sq, &[0.6, 0.8, 0.0], 0);
        assert!((e - 1.0).abs() < 0.02, "{e}");
        let one = Sq8::build(&[0.0, 1.0], 2);
        assert!((estimate_of(&one, &[0.0, 1.0], 0) - 1.0).abs() < 1e-6);
    }
}
