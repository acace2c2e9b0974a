//! Reranking (`ask.rerank`): the candidates of hybrid retrieval re-scored by a second, stronger
//! embedding model before they are quoted or shown to the generator. No cross-encoder or
//! entailment weights can be had as a package (BENCHMARKS.md, "The generator as a judge"), and
//! the generators that fit two cores judge relevance no better than chance; a multilingual
//! embedder several times MiniLM's size (EmbeddingGemma-300M) reads the passage and the question
//! well enough to reorder the first stage's top `rerank_depth` candidates.
//!
//! The reranker's vectors of the candidates are kept in a bounded cache: a collection's hot
//! passages are embedded once. The key is the collection, the document (whose id is the digest
//! of its bytes), the chunk's place in it and its text, so that a question's latency tells
//! nothing about another collection's passages (another tenant's), nor about a document of the
//! same collection its asker may not read, short of uploading that very document's bytes. The
//! cache is emptied when a collection is deleted, so one made again under the name starts cold.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hearth_engine::{Priority, Role};
use hearth_index::Hit;
use lru::LruCache;
use sha2::{Digest, Sha256};

use super::ingest::embedding_text;
use super::{Collection, NamedEmbedder, Service};
use crate::error::Result;

/// Rank offset of the reciprocal-rank fusion of the two orders (the usual 60).
const FUSION_K: f32 = 60.0;

/// Passage vectors the cache holds: ~60 MB for a 768-wide model.
const CACHE_ENTRIES: usize = 20_000;

/// The second stage: which model, how deep, how much it weighs.
pub(crate) struct Reranker {
    /// The model's place in the service's embedders.
    model: usize,
    /// Candidates of the first stage it re-scores.
    depth: usize,
    /// Weight of its order against the first stage's in the fusion (1: its order alone).
    weight: f32,
    /// Candidate vectors by SHA-256 of (collection, document, ordinal, text).
    cache: Mutex<LruCache<[u8; 32], Arc<[f32]>>>,
}

impl Reranker {
    pub(crate) fn new(model: usize, depth: usize, weight: f32) -> Self {
        Self {
            model,
            depth,
            weight,
            // invariant: CACHE_ENTRIES is not zero.
            cache: Mutex::new(LruCache::new(NonZeroUsize::new(CACHE_ENTRIES).unwrap())),
        }
    }
}

impl Service {
    /// Empties the reranker's cache (a collection was deleted).
    pub(crate) fn forget_reranked(&self) {
        if let Some(r) = &self.reranker {
            r.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// How many candidates the first stage must return for an answer that wants `top_k`.
    pub(crate) fn rerank_depth(&self, col: &Collection, top_k: usize) -> usize {
        match self.reranker_for(col) {
            Some(r) => top_k.max(r.depth),
            None => top_k,
        }
    }

    /// The model that scores quote candidates against the question: the reranker's when there
    /// is one (the stronger reader of the two), else the collection's own.
    pub(crate) fn quote_embedder(&self, col: &Collection) -> &NamedEmbedder {
        match self.reranker_for(col) {
            Some(r) => &self.embedders[r.model],
            None => self.embedder_of(col),
        }
    }

    /// The reranker, unless there is none or it is the collection's own model (its vectors are
    /// the ones the first stage already compared).
    fn reranker_for(&self, col: &Collection) -> Option<&Reranker> {
        self.reranker
            .as_ref()
            .filter(|r| r.model != col.model().embedder)
    }

    /// The first `top_k` of `hits` in the reranked order, each with its fused score; the time it
    /// took in milliseconds. A candidate's cosine is the mean of its cosines with `queries` (a
    /// follow-up: alone and after the previous turn). Without a reranker for the collection,
    /// `hits` cut to `top_k`.
    pub(crate) async fn rerank(
        &self,
        col: &Collection,
        queries: &[&str],
        mut hits: Vec<Hit>,
        top_k: usize,
    ) -> Result<(Vec<Hit>, f64)> {
        let Some(r) = self.reranker_for(col).filter(|_| hits.len() > 1) else {
            hits.truncate(top_k);
            return Ok((hits, 0.0));
        };
        let started = Instant::now();
        let keys: Vec<[u8; 32]> = hits
            .iter()
            .map(|h| {
                let mut k = Sha256::new();
                k.update(col.name().as_str().as_bytes());
                k.update([0]);
                k.update(h.chunk.doc_id.as_bytes());
                k.update(h.chunk.ordinal.to_le_bytes());
                k.update(h.chunk.text.as_bytes());
                k.finalize().into()
            })
            .collect();
        let mut vectors: Vec<Option<Arc<[f32]>>> = {
            let mut cache = r.cache.lock().unwrap_or_else(|e| e.into_inner());
            keys.iter().map(|k| cache.get(k).cloned()).collect()
        };
        let missing: Vec<usize> = (0..hits.len()).filter(|&i| vectors[i].is_none()).collect();
        let texts = missing
            .iter()
            .map(|&i| embedding_text(&hits[i].chunk.text))
            .collect();
        let embedder = &self.embedders[r.model].embedder;
        // Both at query priority: someone is waiting; the batcher runs them together.
        let (q, v) = futures::try_join!(
            embedder.embed(
                queries.iter().map(|q| embedding_text(q.trim())).collect(),
                Role::Query,
                Priority::Query
            ),
            async {
                if missing.is_empty() {
                    Ok(None)
                } else {
                    embedder
                        .embed(texts, Role::Passage, Priority::Query)
                        .await
                        .map(Some)
                }
            },
        )?;
        if let Some(v) = v {
            let mut cache = r.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (row, &i) in v.iter().zip(&missing) {
                let row: Arc<[f32]> = row.into();
                cache.put(keys[i], row.clone());
                vectors[i] = Some(row);
            }
        }
        // invariant: every candidate has its vector now, from the cache or just embedded.
        let cosines: Vec<f32> = vectors
            .into_iter()
            .flatten()
            .map(|v| {
                q.iter()
                    .map(|q| v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
                    .sum::<f32>()
                    / q.len() as f32
            })
            .collect();
        let order = fuse(&cosines, r.weight);
        let mut slots: Vec<Option<Hit>> = hits.into_iter().map(Some).collect();
        let reranked = order
            .into_iter()
            .take(top_k)
            .filter_map(|(i, score)| slots[i].take().map(|h| Hit { score, ..h }))
            .collect();
        Ok((reranked, started.elapsed().as_secs_f64() * 1e3))
    }
}

/// The candidates (given in the first stage's order) in the fused order, with their fused
/// scores: `weight / (K + rank by cosine) + (1 - weight) / (K + first-stage rank)`, ranks from
/// 1. Ties keep the first stage's order.
fn fuse(cosines: &[f32], weight: f32) -> Vec<(usize, f32)> {
    let mut by_cosine: Vec<usize> = (0..cosines.len()).collect();
    by_cosine.sort_by(|&a, &b| cosines[b].total_cmp(&cosines[a]).then(a.cmp(&b)));
    let mut score = vec![0.0f32; cosines.len()];
    for (rank, &i) in by_cosine.iter().enumerate() {
        score[i] =
            weight / (FUSION_K + rank as f32 + 1.0) + (1.0 - weight) / (FUSION_K + i as f32 + 1.0);
    }
    let mut out: Vec<(usize, f32)> = score.into_iter().enumerate().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::fuse;

    fn order(cosines: &[f32], weight: f32) -> Vec<usize> {
        fuse(cosines, weight).into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn the_reranker_alone_orders_by_its_cosine() {
        assert_eq!(order(&[0.2, 0.9, 0.5, 0.7], 1.0), [1, 3, 2, 0]);
    }

    #[test]
    fn without_weight_the_first_stage_order_stands() {
        assert_eq!(order(&[0.2, 0.9, 0.5, 0.7], 0.0), [0, 1, 2, 3]);
    }

    #[test]
    fn a_blend_moves_a_candidate_only_as_far_as_the_reranker_outweighs() {
        // The reranker's favourite was tenth; at 0.7 it rises to third: above the first
        // stage's third to ninth, below its first (the reranker's second) and second.
        let mut cos = vec![0.1f32; 10];
        cos[9] = 0.9;
        cos[0] = 0.8;
        let o = order(&cos, 0.7);
        assert_eq!(o, [0, 1, 9, 2, 3, 4, 5, 6, 7, 8]);
    }
}
