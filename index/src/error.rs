//! The error type of hearth-index.

/// Everything that can go wrong in persistence and retrieval.
///
/// Variants say who is at fault: the caller (`InvalidInput`, `NotFound`, `Conflict`) or the
/// system (`Store`, `Io`, `Corrupt`, `Internal`).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The caller passed something malformed (a bad name, an out-of-range setting).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with existing state (e.g. a collection created with other settings).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The object store failed (network, permissions, disk).
    #[error("object store error at `{key}`: {source}")]
    Store {
        /// The key being accessed.
        key: String,
        /// The underlying error, kept opaque.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A local file operation failed (the retrieval index's cache directory).
    #[error("I/O error at `{}`: {source}", path.display())]
    Io {
        /// The file or directory being accessed.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data could not be decoded.
    #[error("corrupt data at `{key}`: {detail}")]
    Corrupt {
        /// The key of the object that failed to decode.
        key: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A bug or broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The result type of hearth-index.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;
