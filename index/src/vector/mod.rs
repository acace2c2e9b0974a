//! Dense vector search: cosine similarity over L2-normalised embeddings.
//!
//! - [`FlatIndex`] (`flat.rs`): exact search over one contiguous `Vec<f32>`. The collection
//!   index keeps every vector in one, so exact scans over a filtered subset are cheap, and it is
//!   the oracle that measures HNSW recall in tests.
//! - [`HnswIndex`] (`hnsw.rs`): approximate search with `hnsw_rs`, wrapped so no `hnsw_rs` type
//!   leaves this module.
//! - [`GraphIndex`] (`graph/`): hearth's own HNSW over flat arrays, traversed on 7-bit codes
//!   (`sq8.rs`); collections use its graph by default (`ann.rs` chooses between the two by
//!   `index.ann`).
//!
//! Scores are cosine similarities (dot products of normalised vectors): higher is better, ties
//! go to the smaller id.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::error::{IndexError, Result};

mod ann;
mod dedup;
mod flat;
mod graph;
mod hnsw;
mod mapped;
mod sq8;

pub use ann::AnnKind;
pub(crate) use ann::{Ann, GONE};
pub use flat::FlatIndex;
pub(crate) use flat::check_rows;
pub(crate) use graph::Graph;
pub use graph::GraphIndex;
pub(crate) use hnsw::HnswDump;
pub use hnsw::{HnswIndex, HnswParams};
pub(crate) use mapped::Mapping;

/// Nearest-neighbour search by cosine similarity over vectors identified by `u32` ids.
pub trait VectorIndex {
    /// Width of the vectors.
    fn dim(&self) -> usize;

    /// Number of vectors held.
    fn len(&self) -> usize;

    /// Whether no vector is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The (at most) `k` vectors most similar to `query` (any norm; it is normalised), among
    /// those for which `keep` returns true (all when `None`), as `(id, cosine)`, best first.
    ///
    /// Fails with [`IndexError::InvalidInput`] if the query has the wrong width or no direction.
    fn nearest(
        &self,
        query: &[f32],
        k: usize,
        keep: Option<&(dyn Fn(u32) -> bool + Sync)>,
    ) -> Result<Vec<(u32, f32)>>;
}

/// L2-normalises `v` (computing the norm in f64). Fails when `v` has a zero, infinite or NaN
/// norm, since such a vector has no direction to compare.
pub(crate) fn normalized(v: &[f32]) -> Result<Vec<f32>> {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(IndexError::InvalidInput(
            "vector has a zero or non-finite norm".into(),
        ));
    }
    Ok(v.iter().map(|&x| (f64::from(x) / norm) as f32).collect())
}

/// Checks a query vector's width and returns it normalised.
pub(crate) fn prepare_query(query: &[f32], dim: usize) -> Result<Vec<f32>> {
    if query.len() != dim {
        return Err(IndexError::InvalidInput(format!(
            "query vector has width {}, the index uses {dim}",
            query.len()
        )));
    }
    normalized(query)
}

/// Dot product, written with eight independent accumulators so the compiler vectorises it.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// One scored candidate; `Ord` puts the *worse* candidate first (lower score, then larger id),
/// so a `BinaryHeap` of them has the worst on top.
#[derive(Clone, Copy, Debug)]
struct Scored {
    score: f32,
    id: u32,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.id.cmp(&other.id))
    }
}

/// Keeps the `k` best `(id, score)` pairs seen (higher score first, then smaller id).
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(4096)),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, id: u32, score: f32) {
        if self.k == 0 {
            return;
        }
        let item = Scored { score, id };
        if self.heap.len() < self.k {
            self.heap.push(item);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && item < *worst
        {
            *worst = item;
        }
    }

    /// The kept pairs, best first.
    pub(crate) fn into_sorted(self) -> Vec<(u32, f32)> {
        // `into_sorted_vec` is ascending by `Ord`, i.e. best first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|s| (s.id, s.score))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_best_and_breaks_ties_by_id() {
        let mut t = TopK::new(3);
        for (id, s) in [(5, 0.5), (1, 0.9), (7, 0.5), (2, 0.1), (3, 0.5), (9, 0.95)] {
            t.push(id, s);
        }
        assert_eq!(t.into_sorted(), vec![(9, 0.95), (1, 0.9), (3, 0.5)]);
        let mut empty = TopK::new(0);
        empty.push(1, 1.0);
        assert!(empty.into_sorted().is_empty());
    }

    #[test]
    fn dot_matches_naive_sum_for_odd_widths() {
        let a: Vec<f32> = (0..13).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..13).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn normalisation_rejects_zero_and_nan() {
        assert!(normalized(&[0.0, 0.0]).is_err());
        assert!(normalized(&[f32::NAN, 1.0]).is_err());
        let v = normalized(&[3.0, 4.0]).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
    }
}
