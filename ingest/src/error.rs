//! The error type of hearth-ingest.

use hearth_index::IndexError;

/// Everything that can go wrong while ingesting.
///
/// A document that cannot be read is not an error of this type: it is a document in state
/// `failed` with a reason. These errors are about the request or the system.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The caller passed something malformed (a bad setting, a bad metadata key).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The document was refused before it was stored: too large, empty, or of a format hearth
    /// does not read. Nothing was stored.
    #[error("{0}")]
    Rejected(Rejection),
    /// The named document or collection does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Storage failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A bug or broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a document was refused at submission.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Larger than `ingest.max_document_bytes`.
    #[error("document is too large: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the document in bytes.
        size: u64,
        /// The configured limit in bytes.
        limit: u64,
    },
    /// Zero bytes.
    #[error("document is empty (0 bytes)")]
    Empty,
    /// An image larger than OCR reads in bounded memory.
    #[error("{0}")]
    ImageTooLarge(String),
    /// A format hearth does not read.
    #[error("unsupported format: {0}")]
    Unsupported(String),
}

/// The result type of hearth-ingest.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;
