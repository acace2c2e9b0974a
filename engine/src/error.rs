//! The error type of hearth-engine.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The caller passed something malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A model file is missing.
    #[error("model file {path} not found: {hint}")]
    ModelMissing {
        /// The file that was looked for.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A model or tokenizer file is malformed.
    #[error("corrupt model file {path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// The result type of hearth-engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
