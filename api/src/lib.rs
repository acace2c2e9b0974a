//! # hearth-api: the one door into hearth
//!
//! Everything the `hearth` binary does goes through this crate; it depends on no other
//! workspace crate (`scripts/check-deps.sh` enforces it).
//!
//! - [`Service`]: the transport-neutral orchestration of the other crates. Ingestion
//!   ([`Service::submit`], [`Service::process`]: bytes → stored chunks cut with the embedding
//!   model's tokenizer → vectors → a hybrid dense + BM25 index per collection, kept in line
//!   with the object store), search ([`Service::search`] → [`SearchResults`] of
//!   [`SearchHit`]s) and grounded answers ([`Service::ask`] → an [`AnswerStream`] of
//!   [`AnswerEvent`]s ending with a finished [`Answer`] and its [`Citation`]s). The HTTP
//!   routes ([`http`]) and the CLI call the same methods and render the same types.
//! - [`Store`]: the object store alone, for what needs no model: document records, API keys
//!   ([`keys`]), the audit log ([`audit`]), the residency report ([`residency`]), key rotation.
//! - [`config`]: every section of the configuration file, and the domain types a caller
//!   names in requests ([`CollectionName`], [`DocId`], [`Filter`], [`SearchMode`], ...),
//!   re-exported from the crates that own them.
//!
//! Nothing depends on this crate but the `hearth` binary.
#![warn(missing_docs)]

pub mod audit;
mod error;
pub mod http;
pub mod keys;
pub mod oidc;
pub mod residency;
mod service;
mod store;
pub mod tenants;

pub use error::{Result, ServiceError};
pub use service::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, Answer, AnswerEnd, AnswerEvent, AnswerMode, AnswerSentence,
    AnswerStream, AnswerTimings, AnswerUsage, AskConfig, AskRequest, Bm25Match, Citation,
    CitationCheck, Collection, CompactReport, Conversation, DenseMatch, Embedded, EvalOptions,
    EvalQuestion, EvalReport, EvalSummary, Fact, MAX_EVAL_QUESTIONS, MAX_HISTORY, Mean, NOT_FOUND,
    NOT_SUPPORTED, NOTHING_RELEVANT, PassagesShown, Percentiles, Processed, QuestionResult,
    ReembedReport, ReembedStatus, RetrievalScore, SearchHit, SearchQuery, SearchResults,
    SearchTimings, Service, ServiceParts, Support, SyncReport, TextPiece, Turn, WITHHELD,
    check_adapter_name, parse_questions,
};
pub use store::Store;

// The domain types of requests and records, owned by the crates below.
pub use hearth_engine::{ChatMessage, SamplingParams};
pub use hearth_index::{
    Access, CollectionName, Condition, DocId, Filter, MAX_TOP_K, MetaValue, Metadata, Reader,
    Redaction, RedactionPattern, SearchMode, WriteCheck, WriteChecks, WriteOutcome,
};
pub use hearth_ingest::{
    DocKind, DocRecord, DocState, ExtractorCommand, MailboxSubmitted, REDACTION_KINDS, Submission,
    Submitted, extract_worker_main, sniff, validate_metadata,
};

/// The sections of the configuration, owned by the crates that read them.
pub mod config {
    pub use hearth_engine::{EmbedPrecision, EngineConfig, KvPrecision};
    pub use hearth_index::{EncryptionConfig, IndexConfig, StorageConfig};
    pub use hearth_ingest::IngestConfig;

    pub use crate::AskConfig;
    pub use crate::http::ServerConfig;
    pub use crate::residency::ResidencyConfig;
    pub use crate::service::ClusterConfig;
}
