//! Searching a collection index: the allowed-pid set, the dense planner, fusion and hits.
//!
//! Every search first computes the *allowed* pids: committed, not tombstoned, and in a
//! document its reader may read and passing the filter. Both retrievers only ever collect allowed pids.
//!
//! Dense planner: when the allowed set is small (at most `exact_max_points`, default 20 000,
//! or at most `exact_max_fraction`, default 2 %, of the graph) it is scanned exactly, which
//! is cheap over the contiguous vectors and has perfect recall. (The fraction was 10 % while
//! collections used hnsw_rs; with hearth's graph at 1M, 10 % allowed is 4.9-13x faster through
//! the graph than scanned, at recall 0.99: BENCHMARKS.md, "Filtered search, and the graph at
//! 1M". Below ~2 % a filtered walk visits so many nodes that the scan wins.) Otherwise the HNSW graph is
//! searched with the filter applied inside the graph walk and `ef` raised as the selectivity
//! drops (capped at [`MAX_FILTERED_EF`]); if that finds fewer than `min(k, allowed)` hits the
//! exact scan runs instead. So a filter keeping 1 % of a corpus still returns `top_k` hits when
//! that many exist. HNSW candidates are rescored exactly from the stored vectors.

use std::sync::Arc;

use super::{CollectionIndex, Hit, MAX_TOP_K, SearchRequest};
use crate::access::Reader;
use crate::error::{IndexError, Result};
use crate::filter::Filter;
use crate::hybrid::{Fused, SearchMode, fuse, hybrid_candidates};
use crate::lexical::Terms;
use crate::pidset::PidSet;
use crate::vector::{VectorIndex, dot, prepare_query};

/// Upper bound of the HNSW candidate list in a filtered search (unless `k` is larger).
pub const MAX_FILTERED_EF: usize = 1024;

/// The pids a search may return.
struct Allowed {
    set: Arc<PidSet>,
    count: usize,
}

impl CollectionIndex {
    /// Runs one search; hits are sorted by score, descending, ties by chunk id.
    ///
    /// Dense and hybrid mode need `vector` ([`IndexError::InvalidInput`] otherwise); BM25 mode
    /// with text that has no terms returns no hits; hybrid mode then uses the dense ranking
    /// only. `top_k` must be 1–1000.
    pub fn search(&self, req: &SearchRequest<'_>) -> Result<Vec<Hit>> {
        if !(1..=MAX_TOP_K).contains(&req.top_k) {
            return Err(IndexError::InvalidInput(format!(
                "top_k must be between 1 and {MAX_TOP_K}, got {}",
                req.top_k
            )));
        }
        req.fusion.validate()?;
        if let Some(f) = req.filter {
            f.validate()?;
        }
        let query = match (req.mode, req.vector) {
            (SearchMode::Bm25, _) => None,
            (SearchMode::Dense | SearchMode::Hybrid, Some(v)) => {
                Some(prepare_query(v, self.params.dim)?)
            }
            (mode @ (SearchMode::Dense | SearchMode::Hybrid), None) => {
                return Err(IndexError::InvalidInput(format!(
                    "{mode} search needs a query vector"
                )));
            }
        };
        let terms = match req.mode {
            SearchMode::Dense => Terms::default(),
            SearchMode::Bm25 | SearchMode::Hybrid => self.lexical.terms(req.text),
        };
        if req.mode == SearchMode::Bm25 && terms.is_empty() {
            return Ok(Vec::new());
        }

        let allowed = self.allowed(req.filter, req.reader);
        let k = match req.mode {
            SearchMode::Hybrid => hybrid_candidates(req.top_k),
            SearchMode::Dense | SearchMode::Bm25 => req.top_k,
        };
        // The two retrievers are independent: in hybrid mode they run side by side.
        let (dense, bm25) = rayon::join(
            || match &query {
                Some(q) => self.dense(q, k, &allowed),
                None => Vec::new(),
            },
            || self.bm25(&terms, k, &allowed),
        );
        let bm25 = bm25?;
        let fused: Vec<Fused> = match req.mode {
            SearchMode::Dense => single(&dense, true),
            SearchMode::Bm25 => single(&bm25, false),
            SearchMode::Hybrid => fuse(&dense, &bm25, req.fusion),
        };

        let mut ranked: Vec<_> = fused
            .into_iter()
            .filter(|f| allowed.set.contains(f.id))
            .map(|f| (self.chunks.chunk_id(f.id), f))
            .collect();
        ranked.sort_by(|(ia, a), (ib, b)| b.score.total_cmp(&a.score).then(ia.cmp(ib)));
        ranked.truncate(req.top_k);
        Ok(ranked
            .into_iter()
            .filter_map(|(_, f)| self.hit(f))
            .collect())
    }

    /// Committed pids of live documents the reader may read and passing the filter.
    fn allowed(&self, filter: Option<&Filter>, reader: &Reader) -> Allowed {
        let limit = self.committed_pids;
        let mut set = PidSet::new(limit);
        // The reader's principals as a bitset over the numbered ones (`None`: reads all).
        let bits: Option<Vec<u64>> = match reader {
            Reader::Everything => None,
            Reader::Principals(names) => {
                let mut bits = vec![0u64; self.principals.len().div_ceil(64)];
                for n in names {
                    if let Some(&id) = self.principals.get(n) {
                        bits[id as usize / 64] |= 1 << (id % 64);
                    }
                }
                Some(bits)
            }
        };
        let may_read = |readers: &Option<Box<[u32]>>| match (&bits, readers) {
            (None, _) | (_, None) => true,
            (Some(bits), Some(ids)) => ids
                .iter()
                .any(|&id| bits[id as usize / 64] >> (id % 64) & 1 == 1),
        };
        for (id, doc) in &self.docs {
            if doc.pids.end <= limit
                && may_read(&doc.readers)
                && filter.is_none_or(|f| f.matches(id, &doc.metadata))
            {
                set.insert_range(doc.pids.clone());
            }
        }
        Allowed {
            count: set.len(),
            set: Arc::new(set),
        }
    }

    /// The `k` allowed chunks most similar to the normalised query, best first.
    fn dense(&self, query: &[f32], k: usize, allowed: &Allowed) -> Vec<(u32, f32)> {
        if allowed.count == 0 {
            return Vec::new();
        }
        let exact = || self.vectors.scan(query, k, allowed.set.iter());
        let points = self.ann.len();
        if allowed.count <= self.search.exact_max_points
            || (allowed.count as f64) <= self.search.exact_max_fraction * points as f64
        {
            return exact();
        }
        let selectivity = (allowed.count as f64 / points.max(1) as f64).min(1.0);
        let base = self.search.ef_search.max(k);
        let ef = ((base as f64 / selectivity).ceil() as usize).clamp(base, MAX_FILTERED_EF.max(k));
        let set = &allowed.set;
        let keep = |pid: u32| set.contains(pid);
        // Every graph point is allowed: search without a filter (it stops earlier).
        let filter: Option<&(dyn Fn(u32) -> bool + Sync)> = if allowed.count == points {
            None
        } else {
            Some(&keep)
        };
        let found = self.ann.search(&self.vectors, query, k, ef, filter);
        let n = self.vectors.len() as u32;
        let mut hits: Vec<(u32, f32)> = found
            .into_iter()
            .filter(|&(pid, _)| pid < n && set.contains(pid))
            .map(|(pid, _)| (pid, dot(query, self.vectors.vector(pid))))
            .collect();
        if hits.len() < k.min(allowed.count) {
            return exact();
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits
    }

    /// The `k` best allowed chunks for the analysed terms by BM25, best first.
    fn bm25(&self, terms: &Terms, k: usize, allowed: &Allowed) -> Result<Vec<(u32, f32)>> {
        if terms.is_empty() || allowed.count == 0 {
            return Ok(Vec::new());
        }
        // Tantivy's live documents are a superset of the allowed pids (deletions are hidden
        // at once, but tantivy drops them at commit); equal counts mean equal sets.
        let filter = (allowed.count as u64 != self.lexical.num_docs()).then(|| allowed.set.clone());
        self.lexical.search(terms, k, filter)
    }

    fn hit(&self, f: Fused) -> Option<Hit> {
        let chunk = self.chunks.get(f.id)?;
        let doc = self.docs.get(&chunk.doc_id)?;
        Some(Hit {
            chunk,
            source: doc.source.clone(),
            title: doc.title.clone(),
            metadata: doc.metadata.clone(),
            score: f.score,
            dense: f.dense,
            bm25: f.bm25,
        })
    }
}

/// One ranking as fused candidates: the score is the list's own score.
fn single(list: &[(u32, f32)], dense: bool) -> Vec<Fused> {
    list.iter()
        .enumerate()
        .map(|(i, &(id, score))| {
            let entry = Some((i as u32 + 1, score));
            Fused {
                id,
                score,
                dense: if dense { entry } else { None },
                bm25: if dense { None } else { entry },
            }
        })
        .collect()
}
