//! Exact cosine search over one contiguous matrix of normalised vectors.
//!
//! The matrix is a `Vec<f32>`, or (for a collection whose cache is not sealed) a file-backed
//! mapping of an anonymous file in the cache directory ([`FlatIndex::in_file`]): the vectors
//! then live in the OS page cache, which writes them back and evicts them under memory
//! pressure, instead of the heap. The file has no name (it is gone with the process, even
//! after `kill -9`) and is refilled from the segments at every open, so nothing in it is ever
//! trusted across processes.

use std::fs::File;
use std::path::Path;

use memmap2::MmapMut;
use tracing::warn;

use super::{TopK, VectorIndex, dot, normalized, prepare_query};
use crate::error::{IndexError, Result};

/// Exact nearest-neighbour search: a row-major matrix of L2-normalised vectors, scanned in
/// full (or over a subset of ids) for every query. Vector `i` has id `i`.
///
/// This is the ground truth for [`super::HnswIndex`] and the collection index's vector store.
#[derive(Debug, Default)]
pub struct FlatIndex {
    dim: usize,
    data: Vec<f32>,
    /// When set, the vectors are here instead of `data`.
    file: Option<InFile>,
}

/// Vectors in a shared mapping of an unnamed file, grown by doubling.
#[derive(Debug)]
struct InFile {
    file: File,
    map: MmapMut,
    /// Floats written.
    len: usize,
}

/// Bytes of the first mapping of a vectors file.
const FIRST_MAP: usize = 1 << 20;

impl Clone for FlatIndex {
    /// A copy on the heap.
    fn clone(&self) -> Self {
        Self {
            dim: self.dim,
            data: self.rows().to_vec(),
            file: None,
        }
    }
}

impl InFile {
    fn new(dir: &Path) -> std::io::Result<Self> {
        let file = tempfile::tempfile_in(dir)?;
        file.set_len(FIRST_MAP as u64)?;
        let map = Self::map(&file)?;
        Ok(Self { file, map, len: 0 })
    }

    #[allow(unsafe_code)]
    fn map(file: &File) -> std::io::Result<MmapMut> {
        // SAFETY: the file has no name and no other handle: nothing but this mapping
        // changes it while it is mapped.
        unsafe { MmapMut::map_mut(file) }
    }

    /// Appends `v`, doubling the file (and mapping it again) when full.
    fn push(&mut self, v: &[f32]) -> std::io::Result<()> {
        let need = (self.len + v.len()) * size_of::<f32>();
        if need > self.map.len() {
            let bytes = need.max(self.map.len() * 2);
            self.file.set_len(bytes as u64)?;
            self.map = Self::map(&self.file)?;
        }
        let at = self.len * size_of::<f32>();
        for (slot, x) in self.map[at..need].chunks_exact_mut(4).zip(v) {
            slot.copy_from_slice(&x.to_ne_bytes());
        }
        self.len += v.len();
        Ok(())
    }

    #[allow(unsafe_code)]
    fn rows(&self) -> &[f32] {
        // SAFETY: the mapping starts on a page boundary (aligned for f32) and holds `len`
        // floats written by `push`; every bit pattern is an f32.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<f32>(), self.len) }
    }
}

impl FlatIndex {
    /// An empty index of vectors of width `dim`.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            data: Vec::new(),
            file: None,
        }
    }

    /// An empty index whose vectors live in an unnamed file in `dir`, mapped (see the module
    /// documentation); on the heap if the file cannot be made.
    pub(crate) fn in_file(dim: usize, dir: &Path) -> Self {
        let file = InFile::new(dir)
            .inspect_err(|e| {
                warn!(dir = %dir.display(), error = %e, "cannot keep the vectors in a file; they stay on the heap");
            })
            .ok();
        Self {
            dim,
            data: Vec::new(),
            file,
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

    /// Appends an already normalised vector; it gets the next id. If the vectors' file
    /// cannot grow (a full disk), they all move to the heap and stay there.
    pub(crate) fn push_normalized(&mut self, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        if let Some(file) = &mut self.file {
            match file.push(v) {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, "the vectors' file cannot grow; moving them to the heap");
                    self.data = file.rows().to_vec();
                    self.file = None;
                }
            }
        }
        self.data.extend_from_slice(v);
    }

    /// Every vector, row-major.
    pub(crate) fn rows(&self) -> &[f32] {
        match &self.file {
            Some(f) => f.rows(),
            None => &self.data,
        }
    }

    /// The normalised vector with id `id`.
    ///
    /// # Panics
    /// If `id` is out of range.
    pub fn vector(&self, id: u32) -> &[f32] {
        let start = id as usize * self.dim;
        &self.rows()[start..start + self.dim]
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

    /// Bytes of vector data on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.data.capacity() * size_of::<f32>()
    }

    /// Bytes of vector data in the mapped file.
    pub(crate) fn file_bytes(&self) -> usize {
        self.file.as_ref().map_or(0, |f| f.len * size_of::<f32>())
    }
}

impl VectorIndex for FlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.rows().len().checked_div(self.dim).unwrap_or(0)
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

    #[test]
    fn vectors_in_a_file_grow_past_its_first_mapping_and_answer_as_on_the_heap() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 100;
        let mut s = 3u64;
        let rows: Vec<f32> = (0..6000 * dim)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let heap = FlatIndex::build(&rows, dim).unwrap();
        let mut file = FlatIndex::in_file(dim, dir.path());
        for i in 0..6000 {
            file.push_normalized(heap.vector(i));
        }
        assert!(file.file_bytes() == 6000 * dim * 4 && file.heap_bytes() == 0);
        assert!(6000 * dim * 4 > FIRST_MAP * 2, "grew more than once");
        assert_eq!(file.rows(), heap.rows());
        let q = &rows[7 * dim..8 * dim];
        assert_eq!(file.search(q, 5).unwrap(), heap.search(q, 5).unwrap());
        assert_eq!(file.clone().rows(), heap.rows());
        // The file has no name: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
