//! Exact cosine search over one contiguous matrix of normalised vectors.

use super::{TopK, VectorIndex, dot, normalized, prepare_query};
use crate::error::{IndexError, Result};

/// Exact nearest-neighbour search: a row-major `Vec<f32>` of L2-normalised vectors, scanned in
/// full (or over a subset of ids) for every query. Vector `i` has id `i`.
///
/// This is the ground truth for [`super::HnswIndex`] and the collection index's vector store.
#[derive(Clone, Debug, Default)]
pub struct FlatIndex {
    dim: usize,
    data: Vec<f32>,
}

impl FlatIndex {
    /// An empty index of vectors of width `dim`.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            data: Vec::new(),
        }
    }

    /// Builds an index from a row-major matrix (`vectors.len()` must be a multiple of `dim`);
    /// row `i` gets id `i`. Rows are normalised; a zero or non-finite row is
    /// [`IndexError::InvalidInput`].
    pub fn build(vectors: &[f32], dim: usize) -> Result<Self> {
        check_matrix(vectors, dim)?;
        let mut index = Self::new(dim);
        index.data.reserve(vectors.len());
        for row in vectors.chunks_exact(dim) {
            index.data.extend_from_slice(&normalized(row)?);
        }
        Ok(index)
    }

    /// Appends an already normalised vector; it gets the next id.
    pub(crate) fn push_normalized(&mut self, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        self.data.extend_from_slice(v);
    }

    /// Every vector, row-major.
    pub(crate) fn rows(&self) -> &[f32] {
        &self.data
    }

    /// The normalised vector with id `id`.
    ///
    /// # Panics
    /// If `id` is out of range.
    pub fn vector(&self, id: u32) -> &[f32] {
        let start = id as usize * self.dim;
        &self.data[start..start + self.dim]
    }

    /// The `k` most similar vectors to `query` as `(id, cosine)`, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u32, f32)>> {
        let q = prepare_query(query, self.dim)?;
        Ok(self.scan(&q, k, 0..self.len() as u32))
    }

    /// Exact top-`k` of an already normalised query over the given ids.
    pub(crate) fn scan(
        &self,
        query: &[f32],
        k: usize,
        ids: impl IntoIterator<Item = u32>,
    ) -> Vec<(u32, f32)> {
        let mut top = TopK::new(k);
        for id in ids {
            top.push(id, dot(query, self.vector(id)));
        }
        top.into_sorted()
    }

    /// Bytes of vector data held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.data.capacity() * size_of::<f32>()
    }
}

impl VectorIndex for FlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    fn nearest(
        &self,
        query: &[f32],
        k: usize,
        keep: Option<&(dyn Fn(u32) -> bool + Sync)>,
    ) -> Result<Vec<(u32, f32)>> {
        let q = prepare_query(query, self.dim)?;
        let all = 0..self.len() as u32;
        Ok(match keep {
            Some(keep) => self.scan(&q, k, all.filter(|&id| keep(id))),
            None => self.scan(&q, k, all),
        })
    }
}

/// Checks that a row-major matrix has a positive width and whole rows.
pub(super) fn check_matrix(vectors: &[f32], dim: usize) -> Result<()> {
    if dim == 0 || !vectors.len().is_multiple_of(dim) {
        return Err(IndexError::InvalidInput(format!(
            "a matrix of {} floats does not hold whole rows of width {dim}",
            vectors.len()
        )));
    }
    if vectors.len() / dim > u32::MAX as usize {
        return Err(IndexError::InvalidInput(
            "too many vectors for u32 ids".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_search_orders_by_cosine() {
        let m = [1.0, 0.0, 0.0, 2.0, 1.0, 1.0, -1.0, 0.0];
        let idx = FlatIndex::build(&m, 2).unwrap();
        assert_eq!(idx.len(), 4);
        let hits = idx.search(&[1.0, 0.1], 4).unwrap();
        let ids: Vec<u32> = hits.iter().map(|h| h.0).collect();
        assert_eq!(ids, vec![0, 2, 1, 3]);
        assert!((hits[0].1 - 0.995_037).abs() < 1e-5);
        assert!((hits[3].1 + 0.995_037).abs() < 1e-5);
        let kept = idx
            .nearest(&[1.0, 0.1], 2, Some(&|id| id % 2 == 1))
            .unwrap();
        assert_eq!(kept.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!(idx.search(&[1.0], 1).is_err());
        assert!(FlatIndex::build(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(FlatIndex::build(&[0.0, 0.0], 2).is_err());
    }
}
