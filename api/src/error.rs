//! The error type of the service layer.

use hearth_engine::EngineError;
use hearth_index::IndexError;
use hearth_ingest::IngestError;

/// An error from any layer below the API, kept with its origin.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// From ingestion.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// From storage.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// From the engine (models, tokenizers).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The result type of the service layer.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
