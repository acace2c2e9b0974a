//! # hearth-api: the service layer
//!
//! Transport-neutral orchestration of the other crates: ingestion (bytes → stored chunks, with
//! the embedding model's tokenizer cutting the chunks), and later retrieval and generation. The
//! CLI calls it directly; the HTTP routes will call the same functions. Nothing depends on this
//! crate but the `hearth` binary.
#![warn(missing_docs)]

mod error;
mod service;

pub use error::{Result, ServiceError};
pub use service::ingest::{IngestService, IngestServiceParts};
