//! Attention over the paged KV cache, on the CPU.
//!
//! One step's query rows belong to several sequences; each row attends to its own sequence's
//! cached keys up to and including its own position (and no further back than the layer's
//! sliding window). Rows are independent, so they run in parallel, and a row's result does not
//! depend on which other rows share the step.

use rayon::prelude::*;

use crate::simd::dot;

use super::kv::LayerKv;
use super::step::StepSeq;

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

thread_local! {
    /// Each worker thread's score buffer, grown once and reused by every call.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
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
                        attend_dispatch(
                            shape,
                            kv,
                            s.blocks,
                            s.start_pos + (a - start),
                            &q[a * width..b * width],
                            &mut tile[(a - lo) * width..(b - lo) * width],
                            scores,
                        );
                    });
                }
                if end >= hi {
                    break;
                }
                start = end;
            }
        });
}

/// [`attend`] compiled for AVX2 and FMA when the CPU has them (8-wide float arithmetic
/// instead of the baseline's 4), else as is.
fn attend_dispatch(
    shape: &AttentionShape,
    kv: LayerKv<'_>,
    blocks: &[u32],
    pos: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe {
            return attend_avx2(shape, kv, blocks, pos, q, out, scores);
        }
    }
    attend(shape, kv, blocks, pos, q, out, scores);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(
    shape: &AttentionShape,
    kv: LayerKv<'_>,
    blocks: &[u32],
    pos: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    attend(shape, kv, blocks, pos, q, out, scores);
}

/// A tile of query rows at positions `pos0..pos0 + R` (`q` and `out` hold `R` rows). The
/// query heads that share a key/value head (grouped-query attention) and the tile's rows are
/// done together, so each cached key and value is read once per tile, block by block. A row's
/// result is the same in any tile: positions outside its own range score -inf, which adds
/// exact zeros.
#[inline(always)]
fn attend(
    shape: &AttentionShape,
    kv: LayerKv<'_>,
    blocks: &[u32],
    pos0: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let hd = shape.head_dim;
    let bs = shape.block_size;
    let group = shape.heads / shape.kv_heads;
    let width = shape.heads * hd;
    let rows = q.len() / width;
    let last = pos0 + rows - 1;
    let first_of = |p: usize| shape.window.map_or(0, |w| (p + 1).saturating_sub(w));
    let lo = first_of(pos0);
    let n = last + 1 - lo;
    // scores[(r * group + j) * n + i]: row r, head j of the group, position lo + i.
    scores.clear();
    scores.resize(rows * group * n, f32::NEG_INFINITY);
    // The positions lo..=last as (block, first slot, slots) runs.
    let runs = || {
        let mut p = lo;
        std::iter::from_fn(move || {
            (p <= last).then(|| {
                let (b, slot) = (p / bs, p % bs);
                let len = (bs - slot).min(last + 1 - p);
                p += len;
                (blocks[b], slot, len)
            })
        })
    };
    for g in 0..shape.kv_heads {
        let heads = g * group * hd..(g + 1) * group * hd;
        let mut i = 0;
        for (block, slot, len) in runs() {
            let keys = &kv.keys(block, g)[slot * hd..(slot + len) * hd];
            for k in keys.chunks_exact(hd) {
                let p = lo + i;
                for r in 0..rows {
                    let own = pos0 + r;
                    if p > own || p < first_of(own) {
                        continue;
                    }
                    let qg = &q[r * width..(r + 1) * width][heads.clone()];
                    for (j, qh) in qg.chunks_exact(hd).enumerate() {
                        scores[(r * group + j) * n + i] = dot(qh, k) * shape.scale;
                    }
                }
                i += 1;
            }
        }
        let live = rows * group * n;
        for w in scores[..live].chunks_exact_mut(n) {
            let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in w.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            w.iter_mut().for_each(|s| *s *= inv);
        }
        for r in 0..rows {
            out[r * width..(r + 1) * width][heads.clone()].fill(0.0);
        }
        let mut i = 0;
        for (block, slot, len) in runs() {
            let values = &kv.values(block, g)[slot * hd..(slot + len) * hd];
            for v in values.chunks_exact(hd) {
                for r in 0..rows {
                    let og = &mut out[r * width..(r + 1) * width][heads.clone()];
                    for (j, o) in og.chunks_exact_mut(hd).enumerate() {
                        let w = scores[(r * group + j) * n + i];
                        if w == 0.0 {
                            continue;
                        }
                        for (o, v) in o.iter_mut().zip(v) {
                            *o += w * v;
                        }
                    }
                }
                i += 1;
            }
        }
        // The next group starts from -inf again.
        scores[..live].fill(f32::NEG_INFINITY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::kv::KvStore;

    /// A sequence's rows give bit-identical results whether they are attended in tiles or one
    /// row at a time, with full and sliding-window attention.
    #[test]
    fn tiles_match_single_rows() {
        let (heads, kv_heads, hd, bs) = (6, 2, 16, 4);
        let mut kv = KvStore::new(1, 8, bs, kv_heads, hd);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2001) as f32 / 1000.0 - 1.0
        };
        // Blocks out of order, as a real block table is.
        let blocks = [5u32, 2, 7, 0, 3, 6];
        let len = 22;
        for p in 0..len {
            let k: Vec<f32> = (0..kv_heads * hd).map(|_| next()).collect();
            let v: Vec<f32> = (0..kv_heads * hd).map(|_| next()).collect();
            kv.write(0, blocks[p / bs], p % bs, &k, &v);
        }
        let width = heads * hd;
        let rows = 9;
        let start = len - rows;
        let q: Vec<f32> = (0..rows * width).map(|_| next()).collect();
        for window in [None, Some(5)] {
            let shape = AttentionShape {
                heads,
                kv_heads,
                head_dim: hd,
                block_size: bs,
                scale: 0.25,
                window,
            };
            let step = |tokens: &'static [u32], start_pos: usize| StepSeq {
                tokens,
                start_pos,
                blocks: &blocks,
                logits: false,
                adapter: None,
            };
            const TOKENS: [u32; 9] = [0; 9];
            let mut tiled = vec![0f32; rows * width];
            paged_attention(&shape, kv.layer(0), &[step(&TOKENS, start)], &q, &mut tiled);
            // One sequence per row; and the rows split 3 + 6, so tiles start off the grid.
            let singles: Vec<StepSeq<'_>> =
                (0..rows).map(|r| step(&TOKENS[..1], start + r)).collect();
            let mut single = vec![0f32; rows * width];
            paged_attention(&shape, kv.layer(0), &singles, &q, &mut single);
            let split = [step(&TOKENS[..3], start), step(&TOKENS[..6], start + 3)];
            let mut offset = vec![0f32; rows * width];
            paged_attention(&shape, kv.layer(0), &split, &q, &mut offset);
            assert_eq!(tiled, offset, "window {window:?}");
            assert_eq!(tiled, single, "window {window:?}");
            assert!(tiled.iter().any(|v| *v != 0.0));
        }
    }
}
