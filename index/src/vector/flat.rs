//! Exact cosine search over one contiguous matrix of normalised vectors.
//!
//! The matrix is a `Vec<f32>`, or (for a collection whose cache is not sealed) a shared
//! mapping of a vectors file in the cache directory ([`FlatIndex::create_file`],
//! [`FlatIndex::open_file`]): the vectors then live in the OS page cache, which writes them
//! back and evicts them under memory pressure, instead of the heap, and a later open maps the
//! file instead of reading every vector again.
//!
//! The file is a 64-byte header (`HVECAPP1`, then the width as a little-endian u32) and the
//! rows as f32 in the machine's order, appended in place and grown by a quarter at a time, its
//! blocks reserved first so that a full disk is an error rather than a fault in the mapping
//! (its length past the rows is zeros). It is append-only: [`FlatIndex::sync`] makes the rows so far
//! durable and returns the CRC-32 of all of them, which the collection's manifest records with
//! the row count. An open checks the count against the file's length (rows a crash left past
//! the count are ignored, and overwritten by the next appends); the CRC is checked by
//! [`check_rows`], off the open path (the collection's background check), and a damaged file
//! is rebuilt by the caller.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use memmap2::MmapMut;
use tracing::warn;

use super::{TopK, VectorIndex, dot, normalized, prepare_query};
use crate::error::{IndexError, Result};
use crate::ids::read_blocks;

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

/// Vectors in a shared mapping of a vectors file, grown a quarter at a time.
#[derive(Debug)]
struct InFile {
    file: File,
    map: MmapMut,
    /// Floats written.
    len: usize,
    /// Floats made durable by `sync`, and the CRC-32 of their bytes.
    synced: usize,
    crc: u32,
}

/// Bytes of a vectors file's first rows area.
const FIRST_MAP: usize = 1 << 20;
/// Bytes before the rows.
const HEADER: usize = 64;
const MAGIC: &[u8; 8] = b"HVECAPP1";

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
    /// A new, empty vectors file at `path` (replacing any file there).
    fn create(path: &Path, dim: usize) -> std::io::Result<Self> {
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&(dim as u32).to_le_bytes());
        file.write_all(&header)?;
        reserve(&file, (HEADER + FIRST_MAP) as u64)?;
        let map = Self::map(&file)?;
        Ok(Self {
            file,
            map,
            len: 0,
            synced: 0,
            crc: 0,
        })
    }

    /// The file at `path` holding `rows` rows of width `dim`, whose CRC-32 is `crc` (not
    /// checked here: the rows are not read; that is `check_rows`' job).
    fn open(path: &Path, dim: usize, rows: usize, crc: u32) -> Result<Self, String> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        let map = Self::map(&file).map_err(|e| e.to_string())?;
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err("not a vectors file".into());
        }
        if map[8..12] != (dim as u32).to_le_bytes() {
            return Err("vectors of another width".into());
        }
        let len = rows
            .checked_mul(dim)
            .filter(|&f| HEADER + f * size_of::<f32>() <= map.len())
            .ok_or("truncated")?;
        Ok(Self {
            file,
            map,
            len,
            synced: len,
            crc,
        })
    }

    #[allow(unsafe_code)]
    fn map(file: &File) -> std::io::Result<MmapMut> {
        // SAFETY: a vectors file is written only through this mapping, by the one process
        // holding the collection's lock; rows below `len` are never rewritten.
        unsafe { MmapMut::map_mut(file) }
    }

    /// Appends `v`, growing the file by a quarter (and mapping it again) when full.
    fn push(&mut self, v: &[f32]) -> std::io::Result<()> {
        let at = HEADER + self.len * size_of::<f32>();
        let need = at + size_of_val(v);
        if need > self.map.len() {
            let rows_area = self.map.len() - HEADER;
            let bytes = need.max(HEADER + rows_area + (rows_area / 4).max(FIRST_MAP));
            reserve(&self.file, bytes as u64)?;
            self.map = Self::map(&self.file)?;
        }
        for (slot, x) in self.map[at..need].chunks_exact_mut(4).zip(v) {
            slot.copy_from_slice(&x.to_ne_bytes());
        }
        self.len += v.len();
        Ok(())
    }

    /// Makes the rows appended since the last call durable; returns the CRC-32 of all rows.
    fn sync(&mut self) -> std::io::Result<u32> {
        if self.synced < self.len {
            let from = HEADER + self.synced * size_of::<f32>();
            let to = HEADER + self.len * size_of::<f32>();
            self.map.flush_range(from, to - from)?;
            self.file.sync_data()?;
            let mut hasher = crc32fast::Hasher::new_with_initial(self.crc);
            hasher.update(&self.map[from..to]);
            self.crc = hasher.finalize();
            self.synced = self.len;
        }
        Ok(self.crc)
    }

    #[allow(unsafe_code)]
    fn rows(&self) -> &[f32] {
        // SAFETY: the mapping starts on a page boundary, so `HEADER` bytes in is aligned for
        // f32, and it holds `len` floats after the header (`push`, `open`); every bit pattern
        // is an f32.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(HEADER).cast::<f32>(), self.len) }
    }
}

/// Extends `file` to `bytes` with its blocks reserved (`posix_fallocate`), so that a write
/// through the mapping never meets a full disk: that would be a `SIGBUS` there, and is an
/// error here, which moves the vectors to the heap (`push_normalized`). Elsewhere the file is
/// only extended.
fn reserve(file: &File, bytes: u64) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        let len = i64::try_from(bytes).map_err(std::io::Error::other)?;
        nix::fcntl::posix_fallocate(file, 0, len).map_err(std::io::Error::from)?;
    }
    file.set_len(bytes)
}

/// Checks that the first `rows` rows of width `dim` in the vectors file open as `file` have
/// CRC-32 `crc`, reading them with `read` rather than through a mapping (the pages pass
/// through the page cache once; nothing stays on the heap). Gives up (with an error) once
/// `wanted` says no.
pub(crate) fn check_rows(
    file: &File,
    dim: usize,
    rows: usize,
    crc: u32,
    wanted: &dyn Fn() -> bool,
) -> std::result::Result<(), String> {
    let len = rows
        .checked_mul(dim * size_of::<f32>())
        .ok_or("too many rows")?;
    let mut hasher = crc32fast::Hasher::new();
    read_blocks(file, HEADER as u64, Some(len as u64), wanted, |b| {
        hasher.update(b)
    })
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "truncated".to_owned()
        } else {
            e.to_string()
        }
    })?;
    if hasher.finalize() == crc {
        Ok(())
    } else {
        Err("checksum mismatch".into())
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

    /// An empty index whose vectors live in a new vectors file at `path`, mapped (see the
    /// module documentation); on the heap if the file cannot be made.
    pub(crate) fn create_file(dim: usize, path: &Path) -> Self {
        let file = InFile::create(path, dim)
            .inspect_err(|e| {
                warn!(path = %path.display(), error = %e, "cannot keep the vectors in a file; they stay on the heap");
            })
            .ok();
        Self {
            dim,
            data: Vec::new(),
            file,
        }
    }

    /// Opens the vectors file at `path` holding `rows` rows of width `dim` with CRC-32 `crc`
    /// (what the manifest records), mapped, without reading the rows: only the header and the
    /// length are checked here, the CRC by [`check_rows`] (in the background: reading 1.5 GB
    /// at 1M rows was most of a cold open). Rows past `rows` are ignored and overwritten.
    pub(crate) fn open_file(
        dim: usize,
        path: &Path,
        rows: usize,
        crc: u32,
    ) -> std::result::Result<Self, String> {
        Ok(Self {
            dim,
            data: Vec::new(),
            file: Some(InFile::open(path, dim, rows, crc)?),
        })
    }

    /// Whether the vectors are in a file.
    pub(crate) fn in_file(&self) -> bool {
        self.file.is_some()
    }

    /// Makes the rows so far durable in the vectors file and returns their CRC-32 (`None`
    /// for vectors on the heap).
    pub(crate) fn sync(&mut self) -> std::io::Result<Option<u32>> {
        self.file.as_mut().map(InFile::sync).transpose()
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

    /// Opens a vectors file and checks its rows, as an open and its background check do.
    fn checked(
        dim: usize,
        path: &Path,
        rows: usize,
        crc: u32,
    ) -> std::result::Result<FlatIndex, String> {
        let index = FlatIndex::open_file(dim, path, rows, crc)?;
        check_rows(&File::open(path).unwrap(), dim, rows, crc, &|| true)?;
        Ok(index)
    }

    #[test]
    fn vectors_in_a_file_grow_answer_as_on_the_heap_and_reopen_only_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.hvec");
        let dim = 100;
        let mut s = 3u64;
        let rows: Vec<f32> = (0..6000 * dim)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let heap = FlatIndex::build(&rows, dim).unwrap();
        let mut file = FlatIndex::create_file(dim, &path);
        assert!(file.in_file());
        for i in 0..4000 {
            file.push_normalized(heap.vector(i));
        }
        let crc = file.sync().unwrap().unwrap();
        for i in 4000..6000 {
            file.push_normalized(heap.vector(i));
        }
        assert!(file.file_bytes() == 6000 * dim * 4 && file.heap_bytes() == 0);
        assert!(6000 * dim * 4 > FIRST_MAP * 2, "grew more than once");
        assert_eq!(file.rows(), heap.rows());
        let q = &rows[7 * dim..8 * dim];
        assert_eq!(file.search(q, 5).unwrap(), heap.search(q, 5).unwrap());
        assert_eq!(file.clone().rows(), heap.rows());
        let all = file.sync().unwrap().unwrap();
        drop(file);

        // Reopened at either synced count: the rows, no more; rows past a count are ignored
        // and overwritten by the next appends.
        let back = checked(dim, &path, 6000, all).unwrap();
        assert_eq!(back.rows(), heap.rows());
        drop(back);
        let mut back = checked(dim, &path, 4000, crc).unwrap();
        assert_eq!(back.rows(), &heap.rows()[..4000 * dim]);
        back.push_normalized(heap.vector(5999));
        assert_eq!(back.vector(4000), heap.vector(5999));
        drop(back);
        // Another count, checksum or width, a flipped bit, a truncation: refused.
        assert!(checked(dim, &path, 4001, crc).is_err());
        assert!(checked(dim, &path, 4000, crc ^ 1).is_err());
        assert!(checked(dim + 1, &path, 4000, crc).is_err());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 4 * 1234] ^= 0x08;
        std::fs::write(&path, &bytes).unwrap();
        assert!(checked(dim, &path, 4000, crc).is_err());
        std::fs::write(&path, &bytes[..HEADER + 100]).unwrap();
        assert!(checked(dim, &path, 4000, crc).is_err());
        // Heap vectors have nothing to sync.
        assert_eq!(heap.clone().sync().unwrap(), None);
    }
}
