//! Ingestion: the pipeline from `hearth-ingest`, fed with the embedding model's tokenizer from
//! `hearth-engine`, over the object store from `hearth-index`.

use std::sync::Arc;

use hearth_engine::{EngineConfig, Tokenizer};
use hearth_index::BlobStore;
use hearth_ingest::{ExtractorCommand, IngestConfig, Pipeline, PipelineParts, TokenCounter};

use crate::error::Result;

/// What the ingestion service is built from.
pub struct IngestServiceParts {
    /// The object store.
    pub store: BlobStore,
    /// Which models to use (the embedding model's tokenizer cuts chunks).
    pub engine: EngineConfig,
    /// Ingestion settings.
    pub ingest: IngestConfig,
    /// How to start extraction processes.
    pub extractor: ExtractorCommand,
}

/// Ingestion, ready to use.
pub struct IngestService {
    pipeline: Arc<Pipeline>,
}

struct ModelTokens(Tokenizer);

impl TokenCounter for ModelTokens {
    fn token_ends(&self, text: &str) -> std::result::Result<Vec<usize>, String> {
        self.0.token_ends(text).map_err(|e| e.to_string())
    }

    fn special_tokens(&self) -> usize {
        self.0.special_tokens_per_sequence()
    }
}

impl IngestService {
    /// Loads the tokenizer and builds the pipeline.
    pub fn new(parts: IngestServiceParts) -> Result<Self> {
        let info = parts.engine.embedding_model_info()?;
        let tokenizer = Tokenizer::from_file(&info.tokenizer)?;
        let tokenizer_sha256 = tokenizer.sha256().to_owned();
        let pipeline = Pipeline::new(PipelineParts {
            store: parts.store,
            tokenizer: Arc::new(ModelTokens(tokenizer)),
            tokenizer_sha256,
            embedding_dim: info.dim,
            extractor: parts.extractor,
            config: parts.ingest,
        })?;
        Ok(Self {
            pipeline: Arc::new(pipeline),
        })
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }
}
