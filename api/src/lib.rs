//! # hearth-api: the service layer
//!
//! Transport-neutral orchestration of the other crates ([`Service`]): ingestion (bytes →
//! stored chunks, cut with the embedding model's tokenizer), embedding (vectors written back
//! into the chunk files), indexing (a hybrid dense + BM25 index per collection, kept in line
//! with the object store) and search. The CLI calls it directly; the HTTP routes will call the
//! same methods. Nothing depends on this crate but the `hearth` binary.
#![warn(missing_docs)]

pub mod audit;
mod error;
pub mod http;
pub mod keys;
pub mod residency;
mod service;

pub use error::{Result, ServiceError};
pub use service::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, AnswerSource, Answering, AskConfig, AskRequest, Citation,
    Collection, CompactReport, MAX_HISTORY, MAX_TOP_K, NOTHING_RELEVANT, Processed, SearchQuery,
    SearchResults, Service, ServiceParts, SyncReport, check_adapter_name, cite, cited,
};
