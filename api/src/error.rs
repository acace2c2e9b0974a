//! The error type of the service layer.

use hearth_engine::EngineError;
use hearth_index::IndexError;
use hearth_ingest::IngestError;

/// An error from any layer below the API, kept with its origin.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller passed something malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The named collection, document or adapter does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Too much work is already waiting; try again later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// This process cannot serve the request (a model it did not load).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// From ingestion.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// From storage and the indexes.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// From the engine (models, tokenizers, the embedder).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A bug or broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The result type of the service layer.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

impl ServiceError {
    /// Whether the caller's input caused the error (a malformed request, a document that is
    /// empty, too large or unreadable), rather than the node.
    pub fn is_users_fault(&self) -> bool {
        matches!(
            self,
            Self::InvalidInput(_)
                | Self::Ingest(IngestError::Rejected(_) | IngestError::InvalidInput(_))
        )
    }
}
