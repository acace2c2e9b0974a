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
    /// The embedder's queue is full; retry later. Capacity, not a fault in the request.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A bug or an unexpected failure inside the engine (a model error or panic, a worker that
    /// stopped). The request may be retried; the engine keeps serving others.
    #[error("internal error: {0}")]
    Internal(String),
    /// A model uses something this engine does not implement (an architecture, a tensor
    /// type, a tokenizer model, an adapter option); the message names it.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A LoRA adapter does not fit the base model or is malformed; nothing was registered.
    #[error("invalid adapter {name:?}: {detail}")]
    InvalidAdapter {
        /// The name it was to be registered under.
        name: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A request named an adapter that is not registered.
    #[error("no adapter named {0:?} is registered")]
    UnknownAdapter(String),
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
