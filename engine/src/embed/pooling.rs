//! Sentence-transformers' `Pooling(mean)` + `Normalize`, over `(tokens, dim)` hidden states.

use candle_core::{D, Tensor};

/// Mean of each sequence's token vectors, then L2-normalised: what sentence-transformers'
/// `Pooling(mean)` + `Normalize` compute.
///
/// - `hidden`: `(tokens, dim)`.
/// - `weights`: `(batch, tokens)`, row `b` holding `1 / len_b` at the real tokens of sequence
///   `b` and 0 elsewhere (see [`pooling_weights`]).
///
/// Returns `(batch, dim)`. As in sentence-transformers the norm is clamped to 1e-12, so an
/// all-zero row comes out as zeros, not NaN.
pub(crate) fn mean_pool_normalize(
    hidden: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let mean = weights.matmul(hidden)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    mean.broadcast_div(&norm)
}

/// The `(batch, tokens)` weights for [`mean_pool_normalize`], flat: sequence `b` has `lens[b]`
/// real tokens starting at token `starts[b]`. A zero length gives an all-zero row.
pub(crate) fn pooling_weights(lens: &[usize], starts: &[usize], tokens: usize) -> Vec<f32> {
    let mut w = vec![0f32; lens.len() * tokens];
    for (b, (&len, &start)) in lens.iter().zip(starts).enumerate() {
        if len > 0 {
            w[b * tokens + start..b * tokens + start + len].fill(1.0 / len as f32);
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    fn pool(hidden: Vec<f32>, dim: usize, lens: &[usize], starts: &[usize]) -> Vec<Vec<f32>> {
        let dev = Device::Cpu;
        let tokens = hidden.len() / dim;
        let hidden = Tensor::from_vec(hidden, (tokens, dim), &dev).unwrap();
        let w = pooling_weights(lens, starts, tokens);
        let w = Tensor::from_vec(w, (lens.len(), tokens), &dev).unwrap();
        mean_pool_normalize(&hidden, &w).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn mean_pooling_ignores_padding_and_normalises() {
        // Two sequences padded to 3 tokens of dim 2; the second has one padded position
        // holding junk.
        let hidden = vec![
            1.0f32, 0.0, 3.0, 0.0, 5.0, 0.0, //
            0.0, 2.0, 0.0, 4.0, 100.0, 100.0,
        ];
        let out = pool(hidden, 2, &[3, 2], &[0, 3]);
        // Means (3, 0) and (0, 3), normalised to unit length.
        assert!(close(&out[0], &[1.0, 0.0]), "{out:?}");
        assert!(close(&out[1], &[0.0, 1.0]), "{out:?}");
    }

    #[test]
    fn mean_pooling_of_packed_sequences_matches_hand_computation() {
        // Sequences of 2 and 1 tokens back to back.
        let out = pool(vec![1.0f32, 2.0, 3.0, 4.0, -7.0, 9.0], 2, &[2, 1], &[0, 2]);
        let (mx, my) = (2.0f32, 3.0f32);
        let n = (mx * mx + my * my).sqrt();
        assert!(close(&out[0], &[mx / n, my / n]), "{out:?}");
        let n = (49.0f32 + 81.0).sqrt();
        assert!(close(&out[1], &[-7.0 / n, 9.0 / n]), "{out:?}");
    }

    #[test]
    fn empty_or_zero_rows_give_zeros_not_nan() {
        let out = pool(vec![0.0f32, 0.0, 5.0, 5.0], 2, &[1, 0], &[0, 1]);
        assert_eq!(out, vec![vec![0.0, 0.0], vec![0.0, 0.0]]);
    }
}
