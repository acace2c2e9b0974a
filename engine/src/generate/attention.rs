//! Attention over the paged KV cache, on the CPU.
//!
//! One step's query rows belong to several sequences; each row attends to its own sequence's
//! cached keys up to and including its own position (and no further back than the layer's
//! sliding window). Rows are independent, so they run in parallel, and a row's result does not
//! depend on which other rows share the step.

use rayon::prelude::*;

use super::kv::LayerKv;

/// Where one sequence's rows lie in the step and where its cache lives.
pub(crate) struct SeqRows<'a> {
    /// The sequence's rows in the step's activations.
    pub(crate) rows: std::ops::Range<usize>,
    /// Position of the first of those rows.
    pub(crate) start_pos: usize,
    /// The sequence's blocks, in position order.
    pub(crate) blocks: &'a [u32],
}

pub(crate) struct AttentionShape {
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) block_size: usize,
    pub(crate) scale: f32,
    pub(crate) window: Option<usize>,
}

/// `out[r] = softmax(q[r]·Kᵀ·scale) V` per head, for every row of every sequence.
pub(crate) fn paged_attention(
    shape: &AttentionShape,
    kv: LayerKv<'_>,
    seqs: &[SeqRows<'_>],
    q: &[f32],
    out: &mut [f32],
) {
    let width = shape.heads * shape.head_dim;
    debug_assert_eq!(q.len(), out.len());
    // (sequence, row) for every row of the step, so rows can be split across threads.
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for (s, seq) in seqs.iter().enumerate() {
        jobs.extend(seq.rows.clone().map(|r| (s, r)));
    }
    let mut outs: Vec<&mut [f32]> = out.chunks_mut(width).collect();
    // Pair each job with its output row.
    let mut work: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(jobs.len());
    for &(s, r) in &jobs {
        let row = std::mem::take(&mut outs[r]);
        work.push((s, r, row));
    }
    work.par_iter_mut()
        .for_each_init(Vec::new, |scores, (s, r, row)| {
            let seq = &seqs[*s];
            let pos = seq.start_pos + (*r - seq.rows.start);
            attend_row(
                shape,
                kv,
                seq.blocks,
                pos,
                &q[*r * width..(*r + 1) * width],
                row,
                scores,
            );
        });
}

fn attend_row(
    shape: &AttentionShape,
    kv: LayerKv<'_>,
    blocks: &[u32],
    pos: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let hd = shape.head_dim;
    let bs = shape.block_size;
    let group = shape.heads / shape.kv_heads;
    let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let n = pos + 1 - first;
    scores.clear();
    scores.resize(n, 0.0);
    for h in 0..shape.heads {
        let g = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        // Scores, block by block.
        let mut max = f32::NEG_INFINITY;
        for (i, p) in (first..=pos).enumerate() {
            let keys = kv.keys(blocks[p / bs], g);
            let k = &keys[(p % bs) * hd..(p % bs + 1) * hd];
            let s = dot(qh, k) * shape.scale;
            scores[i] = s;
            max = max.max(s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        let o = &mut out[h * hd..(h + 1) * hd];
        o.fill(0.0);
        for (i, p) in (first..=pos).enumerate() {
            let values = kv.values(blocks[p / bs], g);
            let v = &values[(p % bs) * hd..(p % bs + 1) * hd];
            let w = scores[i] * inv;
            for (o, v) in o.iter_mut().zip(v) {
                *o += w * v;
            }
        }
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators so the compiler can vectorise without reassociating.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}
