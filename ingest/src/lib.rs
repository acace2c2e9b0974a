//! # hearth-ingest: from uploaded bytes to stored chunks
//!
//! Owns format sniffing ([`sniff`]), extraction of PDF, HTML, Markdown and plain text in
//! isolated processes, normalisation, token-aware chunking and the document registry with its
//! state machine ([`DocState`]). The [`Pipeline`] ties them together:
//!
//! 1. [`Pipeline::submit`] checks the bytes (size, format), stores them under their content hash
//!    and records the document as `queued`. Re-submitting the same bytes is a no-op.
//! 2. [`Pipeline::process`] extracts text in a child process (time and memory limited), cuts
//!    chunks that fit the embedding model, writes them as one Arrow IPC file, and moves the
//!    record to `chunked`, or to `failed` with a reason.
//!
//! Depends on `hearth-index` only (storage, ids, the chunk schema). It owns no tokio runtime and
//! knows nothing of models: the tokenizer arrives as a [`TokenCounter`].
#![warn(missing_docs)]

mod chunk;
mod config;
mod error;
mod extract;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod mailbox;
mod normalize;
mod parse;
mod pipeline;
mod redact;
mod registry;
mod sniff;

pub use chunk::{ChunkParams, TokenCounter};
pub use config::IngestConfig;
pub use error::{IngestError, Rejection, Result};
pub use extract::{ExtractorCommand, extract_worker_main};
pub use parse::OcrSummary;
pub use pipeline::{
    CollectionModel, EmbedderSpec, MailboxSubmitted, Pipeline, PipelineParts, ReembedPlan,
    Submission, Submitted,
};
pub use redact::KINDS as REDACTION_KINDS;
pub use registry::{
    DocRecord, DocState, JournalTiming, ListStats, MetaValue, Metadata, Registry, validate_metadata,
};
pub use sniff::{DocKind, sniff};
