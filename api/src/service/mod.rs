//! Orchestration: one [`Service`] ties the ingestion pipeline (`hearth-ingest`), the embedder
//! (`hearth-engine`) and the per-collection indexes (`hearth-index`) together. The CLI calls it
//! directly; the HTTP routes will call the same methods.
//!
//! A document moves through `queued → extracting → chunked` inside the pipeline, then here:
//! its chunks are embedded and written back into their Arrow file (`embedded`), added to the
//! collection's local index, and once that index is committed the record says `indexed`.
//!
//! The object store is the source of truth. The local index of a collection is a cache that is
//! brought in line with the store's records whenever a collection is opened ([`Service::open`]):
//! documents the store has and the index lacks are added from their chunk files (no
//! re-embedding), documents the index has and the store no longer has are removed. Wiping the
//! local cache therefore only costs a rebuild.

mod access;
mod adapters;
mod answer;
mod ask;
mod cite;
mod cluster;
mod collection;
mod conversation;
mod eval;
mod ingest;
mod judge;
mod language;
mod named;
mod published;
mod quote;
mod reembed;
mod rerank;
mod search;
mod text;
mod verify;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use hearth_engine::{Embedder, EngineConfig, Generator, Tokenizer};
use hearth_index::{BlobStore, CollectionName, IndexConfig};
use hearth_ingest::{
    EmbedderSpec, ExtractorCommand, IngestConfig, Pipeline, PipelineParts, Registry, TokenCounter,
};
use sha2::Digest;

use crate::store::Store;

pub use adapters::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_name};
pub use answer::{
    Answer, AnswerEnd, AnswerEvent, AnswerMode, AnswerSentence, AnswerStream, AnswerTimings,
    AnswerUsage, Bm25Match, Citation, DenseMatch, NOT_SUPPORTED, PassagesShown, SearchHit, Support,
    TextPiece,
};
pub use ask::{AskConfig, AskRequest, MAX_HISTORY, NOTHING_RELEVANT};
pub use cluster::ClusterConfig;
pub use collection::{Collection, CompactReport, SyncReport};
pub use conversation::{Conversation, Turn, WITHHELD};
pub use eval::{
    CitationCheck, EvalOptions, EvalQuestion, EvalReport, EvalSummary, Fact, MAX_EVAL_QUESTIONS,
    Mean, Percentiles, QuestionResult, RetrievalScore, parse_questions,
};
pub use ingest::Processed;
pub use quote::NOT_FOUND;
pub use reembed::{ReembedReport, ReembedStatus};
pub use search::{Embedded, SearchQuery, SearchResults, SearchTimings};

use crate::error::{Result, ServiceError};

/// What the service is built from.
pub struct ServiceParts {
    /// The object store.
    pub store: Store,
    /// Local data directory; the collection indexes live under `{data_dir}/index/`.
    pub data_dir: PathBuf,
    /// Models and the embedder's settings.
    pub engine: EngineConfig,
    /// Ingestion settings.
    pub ingest: IngestConfig,
    /// Index settings.
    pub index: IndexConfig,
    /// How to start extraction processes.
    pub extractor: ExtractorCommand,
    /// Whether to load the generator (needed by [`Service::ask`]).
    pub generator: bool,
    /// Grounded-answer settings.
    pub ask: AskConfig,
    /// Most documents that may wait for background ingestion ([`Service::enqueue`]).
    pub backlog_limit: usize,
    /// Replicas over one store (`hearth serve`).
    pub cluster: ClusterConfig,
}

/// Ingestion, embedding, indexing and search, ready to use. Share it behind an `Arc`.
pub struct Service {
    store: BlobStore,
    registry: Registry,
    pipeline: Arc<Pipeline>,
    /// The embedding models, the default first, in the pipeline's order.
    embedders: Vec<NamedEmbedder>,
    generator: Option<Generator>,
    ask: AskConfig,
    backlog: worker::Backlog,
    /// Serialises adapter installs and deletes.
    adapter_lock: tokio::sync::Mutex<()>,
    /// Local copies of the registered adapters' files, by name.
    adapter_dirs: tokio::sync::Mutex<HashMap<String, PathBuf>>,
    index: IndexConfig,
    data_dir: PathBuf,
    open: tokio::sync::Mutex<HashMap<CollectionName, Arc<Collection>>>,
    /// Handles of deleted collections that work under way may still hold: a collection of the
    /// same name is not created again until they are gone (see [`Service::open`]).
    dying: std::sync::Mutex<HashMap<CollectionName, std::sync::Weak<Collection>>>,
    /// Seals the local index caches (`index.encrypt_cache`); `None` when they are plaintext.
    cache_sealer: Option<hearth_index::CacheSealer>,
    /// Documents and original bytes stored per collection, for tenants' quotas: counted from
    /// the records when first asked and at most a minute later again (attachments and
    /// replacements change it beside uploads), kept up to date by uploads, counted again after
    /// deletes.
    usage: std::sync::Mutex<HashMap<CollectionName, (u64, u64, std::time::Instant)>>,
    /// Conversation records are read, changed and written back one at a time.
    conversation_writes: tokio::sync::Mutex<()>,
    /// This process's part as one of several replicas; `None` on a single node.
    cluster: Option<cluster::Cluster>,
    /// The second stage of retrieval for answers (`ask.rerank`).
    reranker: Option<rerank::Reranker>,
}

struct ModelTokens(Arc<Tokenizer>);

impl TokenCounter for ModelTokens {
    fn token_ends(&self, text: &str) -> std::result::Result<Vec<usize>, String> {
        self.0.token_ends(text).map_err(|e| e.to_string())
    }

    fn special_tokens(&self) -> usize {
        self.0.special_tokens_per_sequence()
    }
}

/// One embedding model a collection may use.
pub(crate) struct NamedEmbedder {
    pub(crate) name: String,
    path: PathBuf,
    pub(crate) embedder: Embedder,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) dim: usize,
}

/// SHA-256 of a model's weights (`model.safetensors` in a directory, else the file), computed
/// once, when first asked for: hashing ~90 MB at every start would cost each CLI command a
/// tenth of a second for collections that record no model hash.
fn model_hash(path: PathBuf) -> Arc<dyn Fn() -> std::result::Result<String, String> + Send + Sync> {
    let once = Arc::new(std::sync::OnceLock::<std::result::Result<String, String>>::new());
    Arc::new(move || {
        once.get_or_init(|| {
            let file = if path.is_dir() {
                path.join("model.safetensors")
            } else {
                path.clone()
            };
            let mut f =
                std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut f, &mut buf)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(hex::encode(h.finalize()))
        })
        .clone()
    })
}

impl Service {
    /// Loads the tokenizers and the embedding models and builds the pipeline.
    pub fn new(parts: ServiceParts) -> Result<Self> {
        parts.index.validate()?;
        parts.ask.validate()?;
        parts.engine.validate()?;
        parts.cluster.validate()?;
        if parts.cluster.enabled && !parts.index.publish {
            return Err(ServiceError::InvalidInput(
                "cluster.enabled needs index.publish: replicas load what the indexer publishes"
                    .into(),
            ));
        }
        let store = parts.store.blob;
        let cache_sealer = match (parts.index.encrypt_cache, store.cache_sealer()) {
            (false, _) => None,
            (true, Some(sealer)) => Some(sealer),
            (true, None) => {
                return Err(ServiceError::InvalidInput(
                    "index.encrypt_cache needs an encrypted store (storage.encryption): the local index cache is sealed with the store's data keys".into(),
                ));
            }
        };
        // Each model is loaded once: its tokenizer, from the loaded embedder, counts chunk
        // tokens too.
        let embedders = parts
            .engine
            .embedder_models()
            .into_iter()
            .map(|(name, path)| {
                let embedder = Embedder::load_model(&parts.engine, &path)?;
                Ok(NamedEmbedder {
                    tokenizer: embedder.tokenizer().clone(),
                    dim: embedder.dim(),
                    embedder,
                    name,
                    path,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let pipeline = Pipeline::new(PipelineParts {
            store: store.clone(),
            embedders: embedders
                .iter()
                .map(|e| EmbedderSpec {
                    name: e.name.clone(),
                    tokenizer: Arc::new(ModelTokens(e.tokenizer.clone())),
                    tokenizer_sha256: e.tokenizer.sha256().to_owned(),
                    model_sha256: model_hash(e.path.clone()),
                    dim: e.dim,
                    max_tokens: e.embedder.max_tokens(),
                })
                .collect(),
            extractor: parts.extractor,
            config: parts.ingest,
        })?;
        let reranker = match &parts.ask.rerank {
            None => None,
            Some(name) => Some(rerank::Reranker::new(
                pipeline
                    .embedder_index(name)
                    .map_err(|e| ServiceError::InvalidInput(format!("ask.rerank: {e}")))?,
                parts.ask.rerank_depth,
                parts.ask.rerank_weight,
            )),
        };
        // Uploads spooled by a process that was killed are gone with it.
        match std::fs::remove_dir_all(parts.data_dir.join("uploads")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "cannot empty the upload spool"),
        }
        // Index directories of collections deleted just before a stop.
        if let Ok(entries) = std::fs::read_dir(parts.data_dir.join("index")) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(collection::DELETED_PREFIX)
                {
                    collection::remove_trash(&e.path());
                }
            }
        }
        let generator = if parts.generator {
            Some(Generator::load(&parts.engine)?)
        } else {
            None
        };
        Ok(Self {
            generator,
            reranker,
            ask: parts.ask,
            usage: std::sync::Mutex::new(HashMap::new()),
            conversation_writes: tokio::sync::Mutex::new(()),
            backlog: worker::Backlog::new(parts.backlog_limit),
            adapter_lock: tokio::sync::Mutex::new(()),
            adapter_dirs: tokio::sync::Mutex::new(HashMap::new()),
            registry: pipeline.registry().clone(),
            store,
            pipeline: Arc::new(pipeline),
            embedders,
            index: parts.index,
            data_dir: parts.data_dir,
            open: tokio::sync::Mutex::new(HashMap::new()),
            dying: std::sync::Mutex::new(HashMap::new()),
            cache_sealer,
            cluster: cluster::Cluster::new(&parts.cluster),
        })
    }

    /// The object store, for what needs no model (keys, audit log, document records).
    pub fn storage(&self) -> Store {
        Store {
            blob: self.store.clone(),
            data_dir: Some(self.data_dir.clone()),
            registry: self.registry.clone(),
        }
    }

    /// Where uploads too large for memory (a mailbox) are written while they are split:
    /// `{data_dir}/uploads`, emptied when the service starts.
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }

    /// How many documents ingestion processes at once (`ingest.workers`).
    pub fn ingest_workers(&self) -> usize {
        self.pipeline.workers()
    }

    /// Width of the default embedding model's vectors.
    pub fn dim(&self) -> usize {
        self.embedders[0].dim
    }

    /// The embedding models this node loads, by name, with the width of their vectors; the
    /// default first.
    pub fn embedders(&self) -> Vec<(String, usize)> {
        self.embedders
            .iter()
            .map(|e| (e.name.clone(), e.dim))
            .collect()
    }

    /// The name of the embedding model a collection was made with.
    pub fn embedder_name(&self, col: &Collection) -> &str {
        &self.embedders[col.model().embedder].name
    }

    /// The embedding model of this name, or invalid input naming the node's models (the
    /// pipeline's lookup: its models are this node's, in the same order).
    pub(crate) fn embedder_named(&self, name: &str) -> Result<&NamedEmbedder> {
        Ok(&self.embedders[self.pipeline.embedder_index(name)?])
    }

    /// The embedding model a collection was made with.
    pub(crate) fn embedder_of(&self, col: &Collection) -> &NamedEmbedder {
        &self.embedders[col.model().embedder]
    }
}
