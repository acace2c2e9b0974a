//! # hearth-engine: inference
//!
//! Owns model loading, tokenizers, chat templates, the embedder and the generator, and device
//! selection. It is the only crate that touches candle or CUDA, and it depends on no other
//! workspace crate: callers hand it text and get back tokens, vectors or generated text.
//!
//! Today it provides the embedding model's [`Tokenizer`] (used by ingestion to cut chunks that
//! the embedder will see whole) and the model [`EngineConfig`]; the embedder and the generator
//! build on these.
#![warn(missing_docs)]

mod config;
mod error;
mod tokenizer;

pub use config::{EmbeddingModelInfo, EngineConfig};
pub use error::{EngineError, Result};
pub use tokenizer::Tokenizer;
