//! Search: the question is embedded (at query priority, ahead of any bulk embedding) and run
//! against the collection's dense and lexical indexes.

use std::sync::Arc;
use std::time::Instant;

use hearth_engine::Priority;
use hearth_index::{Filter, Fusion, Hit, SearchMode, SearchRequest};

use super::collection::{blocking, read};
use super::ingest::embedding_text;
use super::{Collection, Service};
use crate::error::{Result, ServiceError};

/// Longest accepted query, in characters (the embedder sees at most 256 word pieces anyway).
const MAX_QUERY_CHARS: usize = 4096;
/// Most hits one search may return.
pub const MAX_TOP_K: usize = 1000;

/// A search request.
#[derive(Clone, Debug)]
pub struct SearchQuery {
    /// The user's words.
    pub text: String,
    /// Dense, BM25 or both.
    pub mode: SearchMode,
    /// Hits wanted, 1..=1000.
    pub top_k: usize,
    /// Only chunks of documents that match.
    pub filter: Option<Filter>,
    /// How hybrid mode combines the two rankings; `None` uses the configured default.
    pub fusion: Option<Fusion>,
}

/// Hits and where the time went.
#[derive(Clone, Debug)]
pub struct SearchResults {
    /// Best first.
    pub hits: Vec<Hit>,
    /// Time spent embedding the query, in milliseconds.
    pub embed_ms: f64,
    /// Time spent in the indexes (search, filter, fusion), in milliseconds.
    pub search_ms: f64,
}

impl Service {
    /// Searches a collection.
    pub async fn search(&self, col: &Arc<Collection>, q: SearchQuery) -> Result<SearchResults> {
        if q.text.trim().is_empty() {
            return Err(ServiceError::InvalidInput("the query is empty".into()));
        }
        if q.text.chars().count() > MAX_QUERY_CHARS {
            return Err(ServiceError::InvalidInput(format!(
                "the query is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        if !(1..=MAX_TOP_K).contains(&q.top_k) {
            return Err(ServiceError::InvalidInput(format!(
                "top_k must be between 1 and {MAX_TOP_K}, got {}",
                q.top_k
            )));
        }
        let text = embedding_text(&q.text);
        let started = Instant::now();
        let vector = if q.mode == SearchMode::Bm25 {
            None
        } else {
            let v = self
                .embedder
                .embed(vec![text.clone()], Priority::Query)
                .await?;
            Some(v.row(0).to_vec())
        };
        let embed_ms = started.elapsed().as_secs_f64() * 1e3;
        let fusion = q.fusion.unwrap_or_else(|| self.index.fusion());
        let col = col.clone();
        let started = Instant::now();
        let hits = blocking(move || {
            read(&col.index).search(&SearchRequest {
                text: &text,
                vector: vector.as_deref(),
                mode: q.mode,
                top_k: q.top_k,
                filter: q.filter.as_ref(),
                fusion,
            })
        })
        .await?;
        Ok(SearchResults {
            hits,
            embed_ms,
            search_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}
