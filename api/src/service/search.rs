//! Search: the question is embedded (at query priority, ahead of any bulk embedding) and run
//! against the collection's dense and lexical indexes.

use std::sync::Arc;
use std::time::Instant;

use hearth_engine::{Priority, Role};
use hearth_index::{Filter, Fusion, Hit, MAX_TOP_K, Reader, SearchMode, SearchRequest};
use serde::{Deserialize, Serialize};

use super::answer::SearchHit;
use super::collection::{blocking, read};
use super::ingest::embedding_text;
use super::{Collection, Service};
use crate::error::{Result, ServiceError};

/// Longest accepted query, in characters (the embedder sees at most 256 word pieces anyway).
const MAX_QUERY_CHARS: usize = 4096;

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
    /// Who is searching: only documents this reader may read are searched.
    pub reader: Reader,
}

/// Hits and where the time went, as every surface shows them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResults {
    /// Best first, ranked from 1.
    pub hits: Vec<SearchHit>,
    /// Where the time went.
    pub timings: SearchTimings,
}

/// Where a search's time went, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchTimings {
    /// Embedding the query.
    pub embed_ms: f64,
    /// In the indexes (search, filter, fusion).
    pub search_ms: f64,
}

/// Hits as the index returns them, for the service's own use.
pub(crate) struct Retrieved {
    pub(crate) hits: Vec<Hit>,
    pub(crate) embed_ms: f64,
    pub(crate) search_ms: f64,
}

impl Service {
    /// Searches a collection.
    pub async fn search(&self, col: &Arc<Collection>, q: SearchQuery) -> Result<SearchResults> {
        let r = self.retrieve(col, q).await?;
        Ok(SearchResults {
            hits: SearchHit::ranked(&r.hits),
            timings: SearchTimings {
                embed_ms: r.embed_ms,
                search_ms: r.search_ms,
            },
        })
    }

    /// Embeds the query and runs it against the collection's indexes.
    pub(crate) async fn retrieve(
        &self,
        col: &Arc<Collection>,
        q: SearchQuery,
    ) -> Result<Retrieved> {
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
        // The query is embedded with the collection's model, then searched under the index's
        // read lock if the model is still the index's: a re-embedding switches both under the
        // write lock, and a search that met the switch embeds again with the new model.
        let mut attempts = 0;
        let (hits, embed_ms, search_ms) = loop {
            attempts += 1;
            let model = col.model().embedder;
            // The model's own weight: a re-embedding to another model changes it.
            let fusion = q
                .fusion
                .unwrap_or_else(|| self.index.fusion(&self.embedders[model].name));
            let started = Instant::now();
            let vector = if q.mode == SearchMode::Bm25 {
                None
            } else {
                let v = self.embedders[model]
                    .embedder
                    .embed(vec![text.clone()], Role::Query, Priority::Query)
                    .await?;
                Some(v.row(0).to_vec())
            };
            let embed_ms = started.elapsed().as_secs_f64() * 1e3;
            let (col, text, q) = (col.clone(), text.clone(), q.clone());
            let started = Instant::now();
            let hits = blocking(move || {
                let index = read(&col.index);
                if vector.is_some() && col.model().embedder != model {
                    return Ok(None);
                }
                index
                    .search(&SearchRequest {
                        text: &text,
                        vector: vector.as_deref(),
                        mode: q.mode,
                        top_k: q.top_k,
                        filter: q.filter.as_ref(),
                        reader: &q.reader,
                        fusion,
                    })
                    .map(Some)
            })
            .await?;
            match hits {
                Some(hits) => break (hits, embed_ms, started.elapsed().as_secs_f64() * 1e3),
                // invariant: a switch happens once per re-embedding, which takes minutes.
                None if attempts < 4 => continue,
                None => {
                    return Err(ServiceError::Internal(
                        "the collection's embedding model kept changing during the search".into(),
                    ));
                }
            }
        };
        Ok(Retrieved {
            hits,
            embed_ms,
            search_ms,
        })
    }
}

/// Vectors of texts (`/v1/embeddings`), and the tokens they took.
#[derive(Clone, Debug)]
pub struct Embedded {
    /// One L2-normalised vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Word pieces of all the texts together (what the model was given, before truncation).
    pub tokens: usize,
}

/// Most texts an embeddings request may hold and still run at query priority: a client
/// embedding its users' questions sends one or a few.
const QUERY_SIZED_EMBEDDINGS: usize = 16;

impl Service {
    /// Embeds texts, as they are (no normalisation), as an embeddings endpoint promises. A
    /// request of at most 16 texts (`QUERY_SIZED_EMBEDDINGS`) runs at query priority, as a search
    /// does; a larger one at bulk priority, beside ingestion, so that one caller's batch job
    /// holds up other callers' searches by one batch at most, not by the whole job. Texts are
    /// embedded as queries: a model with a query prefix (multilingual-e5) recommends it for
    /// embeddings used as features, and a search compares queries with passages.
    ///
    /// `model` names one of the node's embedding models ([`Service::embedders`]); `None` is the
    /// default.
    pub async fn embed(&self, texts: Vec<String>, model: Option<&str>) -> Result<Embedded> {
        let named = match model {
            None => &self.embedders[0],
            Some(m) => self.embedder_named(m)?,
        };
        let tokens = texts
            .iter()
            .map(|t| named.tokenizer.count(t).unwrap_or(0))
            .sum();
        let priority = if texts.len() <= QUERY_SIZED_EMBEDDINGS {
            Priority::Query
        } else {
            Priority::Bulk
        };
        let v = named.embedder.embed(texts, Role::Query, priority).await?;
        Ok(Embedded {
            vectors: v.iter().map(<[f32]>::to_vec).collect(),
            tokens,
        })
    }
}
