//! The per-collection retrieval index: chunks, vectors, HNSW, BM25 and their persistence.
//!
//! A [`CollectionIndex`] owns, for one collection:
//! - every chunk (text, pages, headings) and its normalised vector, addressed by a dense `u32`
//!   point id (*pid*) assigned in insertion order; hits are built from this memory;
//! - an approximate index over the vectors (ids = pids): hearth's graph, or `hnsw_rs` with
//!   `index.ann = "hnsw_rs"` ([`AnnKind`]); and a tantivy BM25 index (a `pid` field);
//! - the live documents with their pid ranges and user metadata (for filters and hits);
//! - a tombstone set: the pids of deleted or replaced documents.
//!
//! Visibility: a deletion hides a document from every result at once; added chunks become
//! searchable at the next [`CollectionIndex::commit`] (when tantivy publishes them, so dense and
//! BM25 always see the same chunks). [`CollectionIndex::contains`] and
//! [`CollectionIndex::doc_ids`] include uncommitted additions.
//!
//! The directory is a cache: the object store is the source of truth, and the layer above
//! re-adds documents when the cache is missing or stale. The on-disk layout and recovery rules
//! are in `persist.rs`.
//!
//! Threading: `search` takes `&self` and may run concurrently; mutations take `&mut self`
//! (callers wrap the index in a `RwLock`). HNSW batch inserts use the rayon global pool.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::access::{Access, Reader};
use crate::chunks::Chunk;
use crate::crypto::CacheSealer;
use crate::error::{IndexError, Result};
use crate::filter::Filter;
use crate::hybrid::{Fusion, SearchMode};
use crate::ids::DocId;
use crate::lexical::{Analyzer, TantivyIndex};
use crate::meta::Metadata;
use crate::pidset::PidSet;
use crate::vector::{Ann, AnnKind, FlatIndex, HnswParams, normalized};

mod commit;
mod open;
mod persist;
mod publish;
mod scrub;
mod search;
mod store;

use persist::AnnRef;
pub(crate) use persist::SegmentRef;
pub use publish::{Install, InstallFile, Snapshot, cache_is_empty};
pub(crate) use publish::{
    check_name as check_snapshot_name, manifest_documents, rewritten_in_place,
};
pub use scrub::Verification;

/// Largest `top_k` a search accepts.
pub const MAX_TOP_K: usize = 1000;

/// Parameters of a collection index. `dim`, `hnsw_m`, `ef_construction` and `analyzer` are
/// written to the manifest at creation and must match on every open; `ef_search` may change,
/// and so may `ann` (the graph of the other kind is then built at the next open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexParams {
    /// Embedding width, 1–65 536.
    pub dim: usize,
    /// HNSW neighbours per node, 2–256.
    pub hnsw_m: usize,
    /// HNSW candidate list size while building, 1–10 000.
    pub ef_construction: usize,
    /// HNSW candidate list size while searching, 1–10 000.
    pub ef_search: usize,
    /// BM25 text analyzer.
    pub analyzer: Analyzer,
    /// Which approximate index dense searches use.
    pub ann: AnnKind,
}

impl IndexParams {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<()> {
        if !(1..=65_536).contains(&self.dim) {
            return Err(IndexError::InvalidInput(format!(
                "dim must be between 1 and 65536, got {}",
                self.dim
            )));
        }
        self.hnsw().validate()
    }

    pub(crate) fn hnsw(&self) -> HnswParams {
        HnswParams {
            m: self.hnsw_m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
        }
    }
}

/// Runtime search tuning; none of it affects the stored format.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchParams {
    /// HNSW candidate list size for an unfiltered search (raised for selective filters).
    pub ef_search: usize,
    /// A dense search over at most this many allowed chunks is an exact scan. Default 20 000.
    pub exact_max_points: usize,
    /// A dense search whose allowed chunks are at most this fraction of the graph is an exact
    /// scan. Default 0.02.
    pub exact_max_fraction: f64,
}

/// A document as the index records it, next to its chunks.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedDoc {
    /// The document.
    pub doc_id: DocId,
    /// Source name (file name or URL) shown with hits.
    pub source: String,
    /// Title, when the document has one.
    pub title: Option<String>,
    /// User metadata, used by filters and returned with hits.
    pub metadata: Metadata,
    /// Who may read it.
    pub access: Access,
}

/// One search.
#[derive(Clone, Copy, Debug)]
pub struct SearchRequest<'a> {
    /// Query text for BM25 (ignored in dense mode).
    pub text: &'a str,
    /// Query embedding, required in dense and hybrid mode; any norm (it is normalised).
    pub vector: Option<&'a [f32]>,
    /// Which retrieval runs.
    pub mode: SearchMode,
    /// Number of hits wanted, 1–1000.
    pub top_k: usize,
    /// Only chunks of documents passing this filter are returned.
    pub filter: Option<&'a Filter>,
    /// Who the search runs for: only chunks of documents this reader may read are returned.
    pub reader: &'a Reader,
    /// How hybrid mode fuses the two rankings.
    pub fusion: Fusion,
}

/// One retrieved chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// The chunk (its `embedding` is `None`).
    pub chunk: Chunk,
    /// The document's source name.
    pub source: String,
    /// The document's title.
    pub title: Option<String>,
    /// The document's user metadata.
    pub metadata: Metadata,
    /// The score the hits are sorted by: cosine (dense), BM25 (bm25) or the fused score.
    pub score: f32,
    /// Rank (from 1) and cosine similarity in the dense ranking, when the chunk was in it.
    pub dense: Option<(u32, f32)>,
    /// Rank (from 1) and BM25 score in the lexical ranking, when the chunk was in it.
    pub bm25: Option<(u32, f32)>,
}

/// Counts describing an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexStats {
    /// Live documents (uncommitted additions included).
    pub docs: usize,
    /// Chunks of live documents.
    pub live_chunks: usize,
    /// Chunks of deleted or replaced documents still held until compaction.
    pub tombstoned_chunks: usize,
    /// Chunks added since the last commit (not yet searchable).
    pub pending_chunks: usize,
    /// Bytes the index directory takes on disk.
    pub disk_bytes: u64,
    /// Generation of the last commit.
    pub generation: u64,
}

/// What a compaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactStats {
    /// Tombstoned chunks dropped.
    pub removed_chunks: usize,
    /// Chunks kept.
    pub live_chunks: usize,
    /// Disk bytes before.
    pub disk_bytes_before: u64,
    /// Disk bytes after.
    pub disk_bytes_after: u64,
}

/// A live document's record.
#[derive(Clone, Debug)]
pub(crate) struct DocEntry {
    pub(crate) source: String,
    pub(crate) title: Option<String>,
    pub(crate) metadata: Metadata,
    pub(crate) access: Access,
    /// `access` as ids of [`CollectionIndex::principals`]; `None` for everyone.
    pub(crate) readers: Option<Box<[u32]>>,
    pub(crate) pids: Range<u32>,
}

/// The retrieval index of one collection. See the module documentation.
pub struct CollectionIndex {
    dir: PathBuf,
    params: IndexParams,
    search: SearchParams,
    /// Held for the lifetime of the index: one `CollectionIndex` per directory.
    _lock: File,
    /// By pid, committed ones read in place from their segments (`store.rs`); no
    /// embeddings (the vectors live in `vectors`).
    chunks: store::ChunkStore,
    /// Normalised vectors by pid.
    vectors: FlatIndex,
    /// The file `vectors` lives in (`None` on the heap: a sealed cache).
    vectors_file: Option<String>,
    /// The vectors file as the last commit left it: what the manifest records.
    vectors_ref: Option<persist::VectorsRef>,
    docs: HashMap<DocId, DocEntry>,
    tombstones: PidSet,
    ann: Ann,
    lexical: TantivyIndex,
    /// Last generation used by a commit attempt; the manifest holds the last successful one.
    generation: u64,
    /// Committed chunk files, in pid order.
    segments: Vec<SegmentRef>,
    /// Pids below this are committed (in segments and tantivy) and searchable.
    committed_pids: u32,
    /// The graph file (or `hnsw_rs` dump) the manifest points to.
    ann_dump: Option<AnnRef>,
    /// Deletions (or a failed manifest write) since the last successful commit.
    dirty: bool,
    /// Seals the files when the cache is encrypted (see `persist.rs`).
    sealer: Option<CacheSealer>,
    /// Every principal an access list names, numbered: a search turns its reader into a
    /// bitset over these once, and each document's check is a few bit tests (hash lookups of
    /// the names cost 2.5 ms per search at 10,000 documents: BENCHMARKS.md, "Access lists").
    principals: HashMap<String, u32>,
    /// The background check of the files an open did not read, until its verdict is taken
    /// (`scrub.rs`).
    scrub: Option<scrub::Scrub>,
}

impl std::fmt::Debug for CollectionIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectionIndex")
            .field("dir", &self.dir)
            .field("params", &self.params)
            .field("docs", &self.docs.len())
            .field("points", &self.chunks.len())
            .field("generation", &self.generation)
            .finish()
    }
}

impl CollectionIndex {
    /// Opens the index in `dir`, creating it if missing. See `persist.rs` for recovery.
    ///
    /// Fails with [`IndexError::Conflict`] when the stored format-affecting parameters differ
    /// from `params` (each difference is named) or another `CollectionIndex` holds the
    /// directory, and with [`IndexError::InvalidInput`] for out-of-range parameters.
    pub fn open(dir: &Path, params: IndexParams) -> Result<Self> {
        Self::open_sealed(dir, params, None)
    }

    /// Opens the index like [`CollectionIndex::open`], its files sealed by `sealer` when given
    /// (`index.encrypt_cache`): nothing of a document is written to `dir` in plaintext, at the
    /// cost of rebuilding BM25 and the HNSW graph in memory at every open.
    pub fn open_sealed(
        dir: &Path,
        params: IndexParams,
        sealer: Option<CacheSealer>,
    ) -> Result<Self> {
        params.validate()?;
        open::open(dir, params, sealer)
    }

    /// The directory the index lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parameters the index was opened with.
    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    /// Whether the document is live in the index (uncommitted additions included).
    pub fn contains(&self, doc: &DocId) -> bool {
        self.docs.contains_key(doc)
    }

    /// The live documents (uncommitted additions included), sorted.
    pub fn doc_ids(&self) -> Vec<DocId> {
        let mut ids: Vec<DocId> = self.docs.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Adds a document's chunks; they become searchable at the next commit. Re-adding a
    /// document replaces it (its old chunks are tombstoned at once).
    ///
    /// Every chunk must belong to `doc` and carry a finite, non-zero embedding of width `dim`
    /// ([`IndexError::InvalidInput`] otherwise, with nothing changed).
    pub fn add(&mut self, doc: IndexedDoc, chunks: &[Chunk]) -> Result<()> {
        let dim = self.params.dim;
        let start = self.next_pid();
        let end = u32::try_from(chunks.len())
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&end| end < u32::MAX)
            .ok_or_else(|| {
                IndexError::InvalidInput(
                    "the collection index has run out of point ids; compact it".into(),
                )
            })?;
        let mut vectors = Vec::with_capacity(chunks.len());
        for c in chunks {
            if c.doc_id != doc.doc_id {
                return Err(IndexError::InvalidInput(format!(
                    "chunk {} belongs to document {}, not {}",
                    c.ordinal, c.doc_id, doc.doc_id
                )));
            }
            let v = match &c.embedding {
                Some(v) if v.len() == dim => normalized(v).map_err(|_| {
                    IndexError::InvalidInput(format!(
                        "chunk {} has a zero or non-finite embedding",
                        c.ordinal
                    ))
                })?,
                Some(v) => {
                    return Err(IndexError::InvalidInput(format!(
                        "chunk {} has an embedding of width {}, the index uses {dim}",
                        c.ordinal,
                        v.len()
                    )));
                }
                None => {
                    return Err(IndexError::InvalidInput(format!(
                        "chunk {} has no embedding",
                        c.ordinal
                    )));
                }
            };
            vectors.push(v);
        }

        self.delete(&doc.doc_id)?;
        for (c, v) in chunks.iter().zip(&vectors) {
            self.chunks.push(c);
            self.vectors.push_normalized(v);
        }
        self.tombstones.grow(end);
        let doc_id = doc.doc_id;
        let readers = self.intern(&doc.access);
        self.docs.insert(
            doc_id,
            DocEntry {
                source: doc.source,
                title: doc.title,
                metadata: doc.metadata,
                access: doc.access,
                readers,
                pids: start..end,
            },
        );
        self.ann.insert(&self.vectors, start..end, &self.tombstones);
        for (pid, c) in (start..end).zip(chunks) {
            if let Err(e) = self.lexical.add(pid, &c.text) {
                // Keep memory and tantivy consistent: the document is dropped as a whole.
                let _ = self.delete(&doc_id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes a document: its chunks disappear from every result at once and are durably
    /// gone after the next commit. Returns whether it was present.
    pub fn delete(&mut self, doc: &DocId) -> Result<bool> {
        let Some(entry) = self.docs.remove(doc) else {
            return Ok(false);
        };
        self.tombstones.insert_range(entry.pids.clone());
        self.dirty = true;
        // The text of uncommitted chunks is no longer needed: free it now.
        self.chunks.forget(entry.pids.clone());
        self.lexical.delete(entry.pids)?;
        Ok(true)
    }

    /// Who may read a live document (uncommitted additions included).
    pub fn access(&self, doc: &DocId) -> Option<&Access> {
        self.docs.get(doc).map(|d| &d.access)
    }

    /// Changes who may read a live document: searches see the change at once, a fresh
    /// process after the next commit. Returns whether the document was present.
    pub fn set_access(&mut self, doc: &DocId, access: Access) -> bool {
        match self.docs.get(doc) {
            Some(d) if d.access != access => {
                let readers = self.intern(&access);
                if let Some(d) = self.docs.get_mut(doc) {
                    d.access = access;
                    d.readers = readers;
                }
                self.dirty = true;
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Numbers an access list's principals (new ones get the next ids).
    fn intern(&mut self, access: &Access) -> Option<Box<[u32]>> {
        if access.is_everyone() {
            return None;
        }
        Some(
            access
                .entries()
                .iter()
                .map(|e| {
                    let next = u32::try_from(self.principals.len()).unwrap_or(u32::MAX);
                    *self.principals.entry(e.clone()).or_insert(next)
                })
                .collect(),
        )
    }

    /// Numbers the principals of every document (after an open).
    pub(super) fn intern_all(&mut self) {
        let mut docs = std::mem::take(&mut self.docs);
        for d in docs.values_mut() {
            d.readers = self.intern(&d.access);
        }
        self.docs = docs;
    }

    /// The current search tuning.
    pub fn search_params(&self) -> SearchParams {
        self.search
    }

    /// Changes the search tuning (nothing on disk changes).
    pub fn set_search_params(&mut self, params: SearchParams) -> Result<()> {
        if !(1..=10_000).contains(&params.ef_search) {
            return Err(IndexError::InvalidInput(format!(
                "ef_search must be between 1 and 10000, got {}",
                params.ef_search
            )));
        }
        if !(0.0..=1.0).contains(&params.exact_max_fraction) {
            return Err(IndexError::InvalidInput(format!(
                "exact_max_fraction must be between 0 and 1, got {}",
                params.exact_max_fraction
            )));
        }
        self.search = params;
        self.params.ef_search = params.ef_search;
        self.ann.set_ef(params.ef_search);
        Ok(())
    }

    /// Counts of documents and chunks, and the directory's size on disk.
    pub fn stats(&self) -> IndexStats {
        let live_chunks: usize = self.docs.values().map(|d| d.pids.len()).sum();
        let points = self.chunks.len();
        IndexStats {
            docs: self.docs.len(),
            live_chunks,
            tombstoned_chunks: points - live_chunks,
            pending_chunks: points - self.committed_pids as usize,
            disk_bytes: persist::disk_bytes(&self.dir),
            generation: self.generation,
        }
    }

    /// Live documents and chunks that `reader` may read (what a reader is told a collection
    /// holds: the documents it may not read are not counted either).
    pub fn readable_counts(&self, reader: &Reader) -> (usize, usize) {
        self.docs
            .values()
            .filter(|d| reader.may_read(&d.access))
            .fold((0, 0), |(docs, chunks), d| {
                (docs + 1, chunks + d.pids.len())
            })
    }

    fn next_pid(&self) -> u32 {
        // invariant: `add` keeps the number of points below u32::MAX.
        u32::try_from(self.chunks.len()).expect("pids fit in u32")
    }

    /// Bytes of vectors held on the heap (a sealed cache's), and in the mapped file the page
    /// cache holds (a plaintext cache's), for diagnostics.
    pub fn vector_bytes(&self) -> (usize, usize) {
        (self.vectors.heap_bytes(), self.vectors.file_bytes())
    }

    /// Bytes of hearth's graph (lists and codes): on the heap, and read in place from its
    /// mapped file (held by the OS page cache); `None` for `hnsw_rs`, which keeps its own.
    pub fn graph_bytes(&self) -> Option<(usize, usize)> {
        self.ann.graph_bytes()
    }

    /// Number of points in the approximate index (live and tombstoned).
    pub fn graph_points(&self) -> usize {
        self.ann.len()
    }

    /// Which approximate index dense searches use.
    pub fn ann_kind(&self) -> AnnKind {
        self.ann.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_index_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CollectionIndex>();
    }
}
