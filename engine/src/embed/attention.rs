//! CPU self-attention and mean pooling over packed sequences, straight on the activations.
//!
//! Through candle, attention over packed sequences costs a narrow, a permute + copy, two
//! batched matmuls, a transpose + copy and a concatenation per sequence and layer, and every
//! candle matmul also asks the OS for the CPU count (a read of `/proc/cpuinfo`, 13 per forward
//! pass). Here one rayon task per sequence reads Q, K and V from the fused
//! `(tokens, 3 × hidden)` rows, runs both products of each head through the panel matmul of
//! `panels.rs` (packing Kᵀ and V as it goes) and writes its own rows of the `(tokens, hidden)`
//! output. The query scale is already folded into the weights.

use rayon::prelude::*;

use super::kernels;
use super::panels::{self, Packed};

/// Self-attention for back-to-back sequences of `lens` tokens. `qkv` is `(tokens, 3 × hidden)`
/// (Q, K, V side by side, heads `head_dim` wide), the result `(tokens, hidden)`, written over
/// all of `out`.
///
/// # Panics
/// When the slice lengths do not match `lens`, `heads` and `head_dim` (a caller bug).
pub(crate) fn packed_attention(
    qkv: &[f32],
    lens: &[usize],
    heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let hidden = heads * head_dim;
    let tokens: usize = lens.iter().sum();
    assert_eq!(
        qkv.len(),
        tokens * 3 * hidden,
        "attention: qkv has the wrong size"
    );
    assert_eq!(
        out.len(),
        tokens * hidden,
        "attention: out has the wrong size"
    );
    // Split both buffers at sequence boundaries so each task owns its rows.
    let mut parts = Vec::with_capacity(lens.len());
    let (mut rest_in, mut rest_out) = (qkv, out);
    for &len in lens {
        let (a, b) = rest_in.split_at(len * 3 * hidden);
        let (c, d) = rest_out.split_at_mut(len * hidden);
        parts.push((a, c, len));
        (rest_in, rest_out) = (b, d);
    }
    let row = 3 * hidden;
    parts.into_par_iter().for_each(|(rows, out, len)| {
        if len == 0 {
            return;
        }
        let mut q = vec![0.0f32; len * head_dim];
        let mut scores = vec![0.0f32; len * len];
        let mut ctx = vec![0.0f32; len * head_dim];
        let (mut kt, mut v) = (Packed::empty(), Packed::empty());
        for h in 0..heads {
            let (q0, k0, v0) = (
                h * head_dim,
                hidden + h * head_dim,
                2 * hidden + h * head_dim,
            );
            for (t, dst) in q.chunks_exact_mut(head_dim).enumerate() {
                dst.copy_from_slice(&rows[t * row + q0..][..head_dim]);
            }
            // scores = Q · Kᵀ, (len, len); then row-wise softmax; then ctx = P · V.
            kt.set_transposed(&rows[k0..], row, head_dim, len);
            panels::matmul(&q, &kt, &mut scores, len);
            kernels::softmax_rows(&mut scores, len);
            v.set_rows(&rows[v0..], row, len, head_dim);
            panels::matmul(&scores, &v, &mut ctx, len);
            for (t, src) in ctx.chunks_exact(head_dim).enumerate() {
                out[t * hidden + h * head_dim..][..head_dim].copy_from_slice(src);
            }
        }
    });
}

/// Mean of each sequence's rows of `hidden` (`(tokens, dim)`, sequences back to back),
/// L2-normalised (a zero mean stays zero), flat.
pub(crate) fn packed_mean_normalize(hidden: &[f32], lens: &[usize], dim: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; lens.len() * dim];
    let mut at = 0;
    for (&len, mean) in lens.iter().zip(out.chunks_exact_mut(dim)) {
        for row in hidden[at * dim..(at + len) * dim].chunks_exact(dim) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x;
            }
        }
        at += len;
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt() / len.max(1) as f32;
        // The same clamp sentence-transformers applies (F.normalize's eps).
        let scale = 1.0 / (len.max(1) as f32 * norm.max(1e-12));
        for m in mean.iter_mut() {
            *m *= scale;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Tensor};

    use super::*;

    #[test]
    fn matches_candle_attention_per_sequence() {
        let dev = Device::Cpu;
        let (heads, hd) = (3, 8);
        let h = heads * hd;
        let lens = [5usize, 1, 0, 9];
        let tokens: usize = lens.iter().sum();
        let qkv = Tensor::randn(0f32, 1.0, (tokens, 3 * h), &dev).unwrap();
        let mut got = vec![f32::NAN; tokens * h];
        packed_attention(
            &qkv.flatten_all().unwrap().to_vec1().unwrap(),
            &lens,
            heads,
            hd,
            &mut got,
        );
        let mut at = 0;
        for &len in &lens {
            if len == 0 {
                continue; // an empty sequence owns no rows
            }
            let s = qkv
                .narrow(0, at, len)
                .unwrap()
                .reshape((len, 3, heads, hd))
                .unwrap()
                .permute((1, 2, 0, 3))
                .unwrap()
                .contiguous()
                .unwrap();
            let (q, k, v) = (s.get(0).unwrap(), s.get(1).unwrap(), s.get(2).unwrap());
            let p =
                candle_nn::ops::softmax(&q.matmul(&k.t().unwrap()).unwrap(), D::Minus1).unwrap();
            let want: Vec<f32> = p
                .matmul(&v)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (i, (a, b)) in got[at * h..(at + len) * h].iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() < 1e-5,
                    "sequence at {at}, element {i}: {a} vs {b}"
                );
            }
            at += len;
        }
    }

    #[test]
    fn mean_pooling_normalises_each_sequence() {
        let hidden = [1.0f32, 0.0, 3.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        let out = packed_mean_normalize(&hidden, &[2, 1, 1], 2);
        assert_eq!(out, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    }
}
