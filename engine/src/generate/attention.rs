//! Attention over the paged KV cache, on the CPU.
//!
//! One step's query rows belong to several sequences; each row attends to its own sequence's
//! cached keys up to and including its own position (and no further back than the layer's
//! sliding window). Rows are independent, so they run in parallel, and a row's result does not
//! depend on which other rows share the step.

use rayon::prelude::*;

use crate::simd::exp;

use super::kv::LayerKv;
use super::step::StepSeq;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vector;

#[derive(Clone, Copy)]
pub(crate) struct AttentionShape {
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) block_size: usize,
    pub(crate) scale: f32,
    pub(crate) window: Option<usize>,
}

/// Query rows of one sequence at consecutive positions that share each read of the cache.
const TILE: usize = 4;

/// Query vectors (rows × heads of a group) scored and weighted together, sharing each load of
/// a key or value vector.
const QV: usize = 4;

/// Positions per vector of scores, and value dimensions per vector.
const LANES: usize = 16;

thread_local! {
    /// Each worker thread's score buffer, grown once and reused by every call.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker thread's transposed queries for the vector kernels.
    static QT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[r] = softmax(q[r]·Kᵀ·scale) V` per head, for every row of every sequence (rows in
/// `seqs` order, as the step lays them out).
pub(crate) fn paged_attention(
    shape: &AttentionShape,
    kv: LayerKv<'_>,
    seqs: &[StepSeq<'_>],
    q: &[f32],
    out: &mut [f32],
) {
    let width = shape.heads * shape.head_dim;
    debug_assert_eq!(q.len(), out.len());
    // Tiles of TILE rows of the step, split where a tile spans two sequences.
    out.par_chunks_mut(TILE * width)
        .enumerate()
        .for_each(|(t, tile)| {
            let (lo, hi) = (t * TILE, t * TILE + tile.len() / width);
            let mut start = 0;
            for s in seqs {
                let end = start + s.tokens.len();
                let (a, b) = (lo.max(start), hi.min(end));
                if a < b {
                    SCORES.with_borrow_mut(|scores| {
                        let rows = Rows {
                            shape,
                            kv,
                            blocks: s.blocks,
                            pos0: s.start_pos + (a - start),
                            q: &q[a * width..b * width],
                        };
                        let out = &mut tile[(a - lo) * width..(b - lo) * width];
                        attend_dispatch(rows, out, scores);
                    });
                }
                if end >= hi {
                    break;
                }
                start = end;
            }
        });
}

/// One sequence's query rows at consecutive positions from `pos0` (`q`), and where its keys
/// and values are.
#[derive(Clone, Copy)]
struct Rows<'a> {
    shape: &'a AttentionShape,
    kv: LayerKv<'a>,
    blocks: &'a [u32],
    pos0: usize,
    q: &'a [f32],
}

/// The intrinsics kernels (`vector.rs`) where the CPU and the shape allow them; else
/// [`attend`] compiled for AVX-512 or for AVX2 and FMA when the CPU has them (16- or 8-wide
/// float arithmetic instead of the baseline's 4), else as is. All give the same floats for
/// the same instruction set.
fn attend_dispatch(rows: Rows<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if vector::fits(rows.shape) {
        if crate::simd::avx512f() {
            #[allow(unsafe_code)]
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return QT
                .with_borrow_mut(|qt| unsafe { vector::attend_avx512(rows, out, scores, qt) });
        }
        if crate::simd::avx2_fma_f16c() {
            #[allow(unsafe_code)]
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
            return QT.with_borrow_mut(|qt| unsafe { vector::attend_avx2(rows, out, scores, qt) });
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512f() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX-512F and FMA (checked just above).
        unsafe {
            return attend_avx512(rows, out, scores);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe {
            return attend_avx2(rows, out, scores);
        }
    }
    attend::<Separate>(rows, out, scores);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn attend_avx512(rows: Rows<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    attend::<Fused>(rows, out, scores);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(rows: Rows<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    attend::<Fused>(rows, out, scores);
}

/// A tile of query rows at positions `pos0..pos0 + R` (`q` and `out` hold `R` rows). The
/// query heads that share a key/value head (grouped-query attention) and the tile's rows are
/// done together, [`QV`] query vectors at a time, so each cached key and value vector is read
/// once per four of them. Scores are vectors of 16 positions: the keys are stored transposed
/// (`kv.rs`), so a position's score is a sum of vertical multiply-adds, one per key dimension.
/// A row's result is the same in any tile: positions outside its own range score -inf, which
/// adds exact zeros, and every sum runs in the same order.
#[inline(always)]
fn attend<M: MulAdd>(rows: Rows<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    let Rows {
        shape,
        kv,
        blocks,
        pos0,
        q,
    } = rows;
    let hd = shape.head_dim;
    let bs = shape.block_size;
    let group = shape.heads / shape.kv_heads;
    let width = shape.heads * hd;
    let rows = q.len() / width;
    let last = pos0 + rows - 1;
    let first_of = |p: usize| shape.window.map_or(0, |w| (p + 1).saturating_sub(w));
    // Scores start at a multiple of 16 and run to one, so that a position always falls in the
    // same lane of the softmax's sums, whatever the tile: a row's result does not depend on
    // which rows share its step. The positions before the first visible one and after the
    // last stay -inf.
    let first = first_of(pos0);
    let lo = first / LANES * LANES;
    let n = (last + 1 - lo).next_multiple_of(LANES);
    let nv = rows * group;
    // scores[v * n + i]: query vector v (row v / group, head v % group of the group),
    // position lo + i.
    scores.clear();
    scores.resize(nv * n, f32::NEG_INFINITY);
    let runs = || block_runs(blocks, bs, first, last);
    // A block's keys or values in f32, where the cache holds f16.
    let mut buf = Vec::new();
    for g in 0..shape.kv_heads {
        // Query vector v of this group (past the last, the last again: a set of QV is always
        // full, and the extra results are dropped).
        let query = |v: usize| -> &[f32] {
            let v = v.min(nv - 1);
            let (r, j) = (v / group, v % group);
            &q[r * width + (g * group + j) * hd..][..hd]
        };
        let mut i0 = first - lo;
        for (block, slot, len, _) in runs() {
            let keys = kv.keys_f32(block, g, &mut buf);
            let stride = keys.len() / hd;
            for v0 in (0..nv).step_by(QV) {
                let qs: [&[f32]; QV] = std::array::from_fn(|k| query(v0 + k));
                let mut c0 = slot - slot % LANES;
                while c0 < slot + len {
                    let acc = if c0 + LANES <= stride {
                        score_lanes::<M>(&qs, keys, stride, |krow| {
                            *<&[f32; LANES]>::try_from(&krow[c0..c0 + LANES])
                                .unwrap_or(&[0.0; LANES])
                        })
                    } else {
                        // A block narrower than 16 positions, or its last lanes.
                        score_lanes::<M>(&qs, keys, stride, |krow| {
                            let mut k = [0f32; LANES];
                            k[..stride - c0].copy_from_slice(&krow[c0..]);
                            k
                        })
                    };
                    // Slot c of the block is position p0 + c.
                    let p0 = lo + i0 - slot;
                    for (k, a) in acc.iter().enumerate().take(nv.saturating_sub(v0)) {
                        let v = v0 + k;
                        let own = pos0 + v / group;
                        let Some((from, to)) = visible(c0, slot, len, p0, first_of(own), own)
                        else {
                            continue;
                        };
                        // Slot c's score (c ≥ slot here) is dst[c - slot].
                        let dst = &mut scores[v * n + i0..];
                        if from == c0 && to == c0 + LANES {
                            if let Some(d) = dst[c0 - slot..].first_chunk_mut::<LANES>() {
                                for l in 0..LANES {
                                    d[l] = a[l] * shape.scale;
                                }
                            }
                        } else {
                            for c in from..to {
                                dst[c - slot] = a[c - c0] * shape.scale;
                            }
                        }
                    }
                    c0 += LANES;
                }
            }
            i0 += len;
        }
        for w in scores[..nv * n].chunks_exact_mut(n) {
            softmax_in_place(w);
        }
        for r in 0..rows {
            out[r * width..(r + 1) * width][g * group * hd..(g + 1) * group * hd].fill(0.0);
        }
        let mut i0 = first - lo;
        for (block, slot, len, _) in runs() {
            let values = &kv.values_f32(block, g, &mut buf)[slot * hd..(slot + len) * hd];
            for v0 in (0..nv).step_by(QV) {
                let count = QV.min(nv - v0);
                for c in (0..hd).step_by(LANES) {
                    let lanes = LANES.min(hd - c);
                    let mut acc = [[0f32; LANES]; QV];
                    for (k, a) in acc.iter_mut().enumerate().take(count) {
                        let (r, j) = ((v0 + k) / group, (v0 + k) % group);
                        *a = lanes_at(&out[r * width + (g * group + j) * hd + c..], lanes);
                    }
                    for (i, vrow) in values.chunks_exact(hd).enumerate() {
                        let x = lanes_at(&vrow[c..], lanes);
                        for (k, a) in acc.iter_mut().enumerate() {
                            let w = if k < count {
                                scores[(v0 + k) * n + i0 + i]
                            } else {
                                0.0
                            };
                            for l in 0..LANES {
                                a[l] = M::mul_add(w, x[l], a[l]);
                            }
                        }
                    }
                    for (k, a) in acc.iter().enumerate().take(count) {
                        let (r, j) = ((v0 + k) / group, (v0 + k) % group);
                        let o = &mut out[r * width + (g * group + j) * hd + c..];
                        if lanes == LANES {
                            // A fixed-size copy: a runtime length would call memmove.
                            if let Some(o) = o.first_chunk_mut::<LANES>() {
                                *o = *a;
                            }
                        } else {
                            o[..lanes].copy_from_slice(&a[..lanes]);
                        }
                    }
                }
            }
            i0 += len;
        }
        // The next group starts from -inf again.
        scores[..nv * n].fill(f32::NEG_INFINITY);
    }
}

/// The positions `first..=last` of a sequence whose KV blocks of `bs` slots are `blocks`, as
/// runs within one block: (block, first slot, slots, first position).
fn block_runs(
    blocks: &[u32],
    bs: usize,
    first: usize,
    last: usize,
) -> impl Iterator<Item = (u32, usize, usize, usize)> + '_ {
    let mut p = first;
    std::iter::from_fn(move || {
        (p <= last).then(|| {
            let (b, slot) = (p / bs, p % bs);
            let len = (bs - slot).min(last + 1 - p);
            let at = p;
            p += len;
            (blocks[b], slot, len, at)
        })
    })
}

/// The slots `from..to` of the 16 starting at slot `c0` of a block (slot `c` is position
/// `p0 + c`) that are in the run `slot..slot + len` and that a row at position `own` sees
/// (positions `first..=own`); `None` when there are none.
#[inline(always)]
fn visible(
    c0: usize,
    slot: usize,
    len: usize,
    p0: usize,
    first: usize,
    own: usize,
) -> Option<(usize, usize)> {
    let from = c0.max(slot).max(first.saturating_sub(p0));
    let to = (c0 + LANES)
        .min(slot + len)
        .min((own + 1).saturating_sub(p0));
    (from < to).then_some((from, to))
}

/// `a · b + c`, fused (one rounding) where the kernel is compiled with FMA, else as two
/// operations (a fused multiply-add without the instruction is a libm call).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The first `lanes` (at most 16) values of `x`, zeros after them; a fixed-size copy when all
/// 16 are there (a runtime length would call memmove).
#[inline(always)]
fn lanes_at(x: &[f32], lanes: usize) -> [f32; LANES] {
    match x.first_chunk::<LANES>() {
        Some(v) if lanes == LANES => *v,
        _ => {
            let mut v = [0f32; LANES];
            v[..lanes].copy_from_slice(&x[..lanes]);
            v
        }
    }
}

/// The scores (unscaled) of [`QV`] query vectors against 16 positions of a block's transposed
/// keys, `lanes` giving the 16 values of one key dimension's row.
#[inline(always)]
fn score_lanes<M: MulAdd>(
    qs: &[&[f32]; QV],
    keys: &[f32],
    stride: usize,
    lanes: impl Fn(&[f32]) -> [f32; LANES],
) -> [[f32; LANES]; QV] {
    let mut acc = [[0f32; LANES]; QV];
    for (d, krow) in keys.chunks_exact(stride).enumerate() {
        let k = lanes(krow);
        for (a, qv) in acc.iter_mut().zip(qs) {
            let x = qv[d];
            for l in 0..LANES {
                a[l] = M::mul_add(x, k[l], a[l]);
            }
        }
    }
    acc
}

/// `w` ← softmax(`w`), -inf entries giving exact zeros; sums and maxima in 16 lanes (`attend`
/// passes rows of a multiple of 16, so entry `i` is always summed in lane `i mod 16`).
#[inline(always)]
fn softmax_in_place(w: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = w.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut sums = [0f32; LANES];
    let mut chunks = w.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = exp(c[l] - max);
            sums[l] += c[l];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    w.iter_mut().for_each(|s| *s *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::kv::{KvPrecision, KvStore};

    /// A cache of `len` positions of random keys and values in blocks out of order (as a real
    /// block table is), and `rows` random query rows.
    struct Filled {
        kv: KvStore,
        blocks: Vec<u32>,
        q: Vec<f32>,
    }

    fn filled(shape: &AttentionShape, len: usize, rows: usize, precision: KvPrecision) -> Filled {
        let (kv_heads, hd, bs) = (shape.kv_heads, shape.head_dim, shape.block_size);
        let nblocks = len.div_ceil(bs) + 2;
        let mut kv = KvStore::new(1, nblocks, bs, kv_heads, hd, precision);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2001) as f32 / 1000.0 - 1.0
        };
        // Even blocks from the top, then odd ones from the bottom.
        let n = nblocks as u32;
        let blocks: Vec<u32> = (0..n)
            .rev()
            .filter(|b| b % 2 == 0)
            .chain((0..n).filter(|b| b % 2 == 1))
            .collect();
        for p in 0..len {
            let k: Vec<f32> = (0..kv_heads * hd).map(|_| next()).collect();
            let v: Vec<f32> = (0..kv_heads * hd).map(|_| next()).collect();
            kv.write(0, blocks[p / bs], p % bs, &k, &v);
        }
        let q = (0..rows * shape.heads * hd).map(|_| next()).collect();
        Filled { kv, blocks, q }
    }

    fn shape(heads: usize, kv_heads: usize, head_dim: usize, block_size: usize) -> AttentionShape {
        AttentionShape {
            heads,
            kv_heads,
            head_dim,
            block_size,
            scale: 0.25,
            window: None,
        }
    }

    fn step<'a>(tokens: &'a [u32], start_pos: usize, blocks: &'a [u32]) -> StepSeq<'a> {
        StepSeq {
            tokens,
            start_pos,
            blocks,
            logits: false,
            adapter: None,
        }
    }

    /// A sequence's rows give bit-identical results whether they are attended in tiles or one
    /// row at a time, with full and sliding-window attention, with both cache precisions: on
    /// the portable kernel (a head dimension of 16 and blocks of 4 do not fit the vector ones)
    /// and, where the CPU has AVX-512 or AVX2, on a vector kernel (Qwen2.5-0.5B's and
    /// SmolLM2's shapes, blocks of 16 and 32).
    #[test]
    fn tiles_match_single_rows() {
        let shapes = [
            shape(6, 2, 16, 4),
            shape(14, 2, 64, 16),
            shape(9, 3, 64, 32),
        ];
        for (base, precision) in shapes
            .into_iter()
            .flat_map(|s| [(s, KvPrecision::F32), (s, KvPrecision::F16)])
        {
            let len = 22 + 3 * base.block_size;
            let rows = 9;
            let start = len - rows;
            let Filled { kv, blocks, q } = filled(&base, len, rows, precision);
            let width = base.heads * base.head_dim;
            for window in [None, Some(5), Some(2 * base.block_size + 3)] {
                let shape = AttentionShape { window, ..base };
                let tokens = [0u32; 9];
                let mut tiled = vec![0f32; rows * width];
                paged_attention(
                    &shape,
                    kv.layer(0),
                    &[step(&tokens, start, &blocks)],
                    &q,
                    &mut tiled,
                );
                // One sequence per row; and the rows split 3 + 6, so tiles start off the grid.
                let singles: Vec<StepSeq<'_>> = (0..rows)
                    .map(|r| step(&tokens[..1], start + r, &blocks))
                    .collect();
                let mut single = vec![0f32; rows * width];
                paged_attention(&shape, kv.layer(0), &singles, &q, &mut single);
                let split = [
                    step(&tokens[..3], start, &blocks),
                    step(&tokens[..6], start + 3, &blocks),
                ];
                let mut offset = vec![0f32; rows * width];
                paged_attention(&shape, kv.layer(0), &split, &q, &mut offset);
                let what = format!(
                    "head_dim {} window {window:?} {precision:?}",
                    shape.head_dim
                );
                assert_eq!(tiled, offset, "{what}");
                assert_eq!(tiled, single, "{what}");
                assert!(tiled.iter().any(|v| *v != 0.0));
            }
        }
    }

    /// An f16 cache gives the f32 cache's outputs to within f16's rounding of the keys and
    /// values (11 significant bits), on both kernels' shapes.
    #[test]
    fn f16_cache_stays_within_its_rounding() {
        for base in [shape(6, 2, 16, 4), shape(9, 3, 64, 16)] {
            let (len, rows) = (70, 70);
            let width = base.heads * base.head_dim;
            let tokens = [0u32; 70];
            let out = |precision| {
                let Filled { kv, blocks, q } = filled(&base, len, rows, precision);
                let mut out = vec![0f32; rows * width];
                paged_attention(
                    &base,
                    kv.layer(0),
                    &[step(&tokens, 0, &blocks)],
                    &q,
                    &mut out,
                );
                out
            };
            let (full, half) = (out(KvPrecision::F32), out(KvPrecision::F16));
            let worst = full
                .iter()
                .zip(&half)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!(
                "head_dim {}: f16 cache off by at most {worst}",
                base.head_dim
            );
            assert!(worst < 2e-3, "{worst}");
        }
    }

    /// The vector kernels give the portable kernel's floats (compiled for the same
    /// instruction set) to the bit: a prefill from position 0 (every tile causal), a chunk
    /// further on and a decode row, with and without a sliding window, for set sizes from 1 to
    /// 8 (6 on AVX2), with both cache precisions. Each instruction set the CPU lacks is
    /// skipped, and said so.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_kernels_match_the_portable_kernel() {
        let (avx512, avx2) = (crate::simd::avx512f(), crate::simd::avx2_fma_f16c());
        if !avx512 {
            eprintln!("AVX-512: skipped, this CPU has no AVX-512F");
        }
        if !avx2 {
            eprintln!("AVX2: skipped, this CPU has no AVX2, FMA and F16C");
        }
        let shapes = [(14, 2), (9, 3), (4, 1), (8, 8), (16, 2), (2, 1)];
        for ((heads, kv_heads), precision) in shapes
            .into_iter()
            .flat_map(|s| [(s, KvPrecision::F32), (s, KvPrecision::F16)])
        {
            let base = shape(heads, kv_heads, 64, 16);
            let len = 150;
            let Filled { kv, blocks, q } = filled(&base, len, len, precision);
            let width = heads * 64;
            for window in [None, Some(37)] {
                let shape = AttentionShape { window, ..base };
                for (start, rows) in [(0, len), (100, 50), (149, 1), (17, 3)] {
                    let q = &q[..rows * width];
                    let (mut fast, mut portable) = (vec![0f32; q.len()], vec![0f32; q.len()]);
                    let rows = Rows {
                        shape: &shape,
                        kv: kv.layer(0),
                        blocks: &blocks,
                        pos0: start,
                        q,
                    };
                    let (mut scores, mut qt) = (Vec::new(), Vec::new());
                    let what = format!(
                        "{heads}/{kv_heads} heads at {start}, window {window:?}, {precision:?}"
                    );
                    #[allow(unsafe_code)]
                    // SAFETY: each kernel runs only where the CPU has its instruction set
                    // (checked above).
                    unsafe {
                        if avx512 {
                            vector::attend_avx512(rows, &mut fast, &mut scores, &mut qt);
                            attend_avx512(rows, &mut portable, &mut scores);
                            assert!(fast == portable, "AVX-512: {what}");
                        }
                        if avx2 {
                            vector::attend_avx2(rows, &mut fast, &mut scores, &mut qt);
                            attend_avx2(rows, &mut portable, &mut scores);
                            assert!(fast == portable, "AVX2: {what}");
                        }
                    }
                }
            }
        }
    }
}
