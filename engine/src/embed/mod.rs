//! The sentence embedder: all-MiniLM-L6-v2-style BERT models behind a dynamic batcher.
//!
//! [`Embedder`] is a cheap-to-clone handle. Behind it one OS thread owns the model and a
//! dedicated rayon pool (`engine.embed_threads` threads) that runs the forward pass; requests
//! reach it through a bounded queue (see `batcher.rs` for the scheduling rules). The output of a
//! text is what sentence-transformers computes for the model: the text's first
//! [`Embedder::max_tokens`] word pieces (`[CLS]` and `[SEP]` included) through BERT, mean-pooled
//! over the real tokens and L2-normalised.

mod attention;
mod batcher;
mod bert;
mod e5s;
mod encoder;
mod int8;
mod kernels;
mod panels;
mod pooling;

use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::oneshot;

use self::batcher::{BatchModel, BatchParams, Queue, Reply};
pub(crate) use self::e5s::{MAGIC as E5S_MAGIC, read_tokenizer as e5s_tokenizer};
use self::encoder::SentenceEncoder;
use crate::config::{EmbedPrecision, EngineConfig};
use crate::device;
use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;

/// Most word pieces of a text the embedder looks at, `[CLS]` and `[SEP]` included: the
/// `max_seq_length` of all-MiniLM-L6-v2's sentence-transformers configuration (capped by the
/// model's `max_position_embeddings`). Longer texts are truncated.
const MAX_TOKENS: usize = 256;

/// How urgent an embedding request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Interactive: a search query someone is waiting for. Served before any bulk work.
    Query = 0,
    /// Background: indexing. Served when no query is waiting.
    Bulk = 1,
}

/// What a text is to the model. Some models (multilingual-e5) embed a question and the passage
/// that answers it with different prefixes; for the others the two are the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Something to search with: a question, a search query.
    Query = 0,
    /// Something to be found: a chunk of a document.
    Passage = 1,
}

/// Embedding vectors, one row per input text, in input order.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    dim: usize,
    /// Row-major, `len() * dim` values.
    data: Vec<f32>,
}

impl Embeddings {
    /// `data` holds whole rows of `dim` (> 0) values.
    pub(crate) fn new(dim: usize, data: Vec<f32>) -> Self {
        debug_assert!(dim > 0 && data.len().is_multiple_of(dim));
        Self { dim, data }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Width of each row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`, unit length. Panics if `i >= len()`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows in order.
    pub fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.dim)
    }

    /// All rows, flat and row-major.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

impl<'a> IntoIterator for &'a Embeddings {
    type Item = &'a [f32];
    type IntoIter = std::slice::ChunksExact<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A handle to the sentence embedder. Clones share one model and one worker thread; the
/// worker stops when the last handle is dropped (dropping it waits for the batch in progress).
///
/// Thread-safe: call it from any number of threads or tasks at once; concurrent requests are
/// batched together.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dim", &self.inner.dim)
            .field("max_tokens", &self.inner.max_tokens)
            .field("device", &self.inner.device)
            .finish_non_exhaustive()
    }
}

struct Inner {
    queue: Arc<Queue>,
    worker: Option<JoinHandle<()>>,
    dim: usize,
    max_tokens: usize,
    device: String,
    precision: EmbedPrecision,
    /// The prefixes of a query and of a passage.
    prompts: [String; 2],
    tokenizer: Arc<Tokenizer>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(worker) = self.worker.take() {
            // The worker catches model panics, so joining only fails on a bug in the batcher;
            // there is nothing left to clean up either way.
            let _ = worker.join();
        }
    }
}

impl Embedder {
    /// Loads the embedding model named by `cfg` (`config.json`, `tokenizer.json` and
    /// `model.safetensors` in [`EngineConfig::embedding_model_dir`]) onto the configured device
    /// and starts the worker thread and its rayon pool.
    pub fn load(cfg: &EngineConfig) -> Result<Self> {
        Self::load_model(cfg, &cfg.embedding_model_dir())
    }

    /// Like [`Embedder::load`], for the model at `dir` (a directory or an E5S1 file, as
    /// [`EngineConfig::embedder_models`] lists them) with `cfg`'s device and batching settings.
    pub fn load_model(cfg: &EngineConfig, dir: &std::path::Path) -> Result<Self> {
        cfg.validate()?;
        let device = device::select(&cfg.device)?;
        let dir = dir.to_owned();
        let started = std::time::Instant::now();
        // EmbeddingGemma runs on the CPU whatever the device, and its Q8_0 kernels beat dense
        // f32 on every x86 CPU (AVX2 or not), so there `auto` means int8.
        let int8 = if dir.is_dir() && crate::generate::is_gemma_dir(&dir) {
            cfg.embed_precision != EmbedPrecision::F32
        } else {
            device.is_cpu() && cfg.embed_precision.int8()
        };
        let encoder = SentenceEncoder::load(&dir, device, MAX_TOKENS, int8)?;
        let threads = cfg.resolved_embed_threads();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hearth-embed-{i}"))
            .build()
            .map_err(|e| EngineError::Internal(format!("starting the embedder's threads: {e}")))?;
        let (dim, max_tokens) = (encoder.dim(), encoder.max_tokens());
        let prompts = [
            encoder.prompt(Role::Query).to_owned(),
            encoder.prompt(Role::Passage).to_owned(),
        ];
        let tokenizer = encoder.tokenizer().clone();
        let device = device::label(encoder.device());
        let queue = Arc::new(Queue::new(BatchParams {
            batch_size: cfg.embed_batch_size,
            batch_wait: Duration::from_millis(cfg.embed_batch_wait_ms),
            capacity: cfg.embed_queue,
        }));
        let worker_queue = Arc::clone(&queue);
        let worker = std::thread::Builder::new()
            .name("hearth-embed".to_owned())
            .spawn(move || batcher::run(&worker_queue, &encoder, &pool))
            .map_err(|e| EngineError::Internal(format!("starting the embedder's worker: {e}")))?;
        tracing::info!(
            model = %dir.display(),
            device = %device,
            threads,
            batch_size = cfg.embed_batch_size,
            precision = if int8 { "int8" } else { "f32" },
            dim,
            load_ms = started.elapsed().as_millis() as u64,
            "embedder loaded"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                worker: Some(worker),
                dim,
                max_tokens,
                device,
                precision: if int8 {
                    EmbedPrecision::Int8
                } else {
                    EmbedPrecision::F32
                },
                prompts,
                tokenizer,
            }),
        })
    }

    /// The model's tokenizer (what chunk sizes are counted in).
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.inner.tokenizer
    }

    /// Width of the embeddings (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.inner.dim
    }

    /// The arithmetic the dense layers run in: `engine.embed_precision` resolved for this CPU
    /// and device ([`EmbedPrecision::F32`] or [`EmbedPrecision::Int8`], never `Auto`).
    pub fn precision(&self) -> EmbedPrecision {
        self.inner.precision
    }

    /// Where the model runs: `cpu` or `cuda:N`.
    pub fn device(&self) -> &str {
        &self.inner.device
    }

    /// Most word pieces of a text the model sees, special tokens included (256); the rest of
    /// a longer text is ignored.
    pub fn max_tokens(&self) -> usize {
        self.inner.max_tokens
    }

    /// Embeds `texts` in `role`, one unit-length row each, in order.
    ///
    /// Does not block: it queues the request and awaits the worker. Fails at once with
    /// [`EngineError::Overloaded`] when the queue for `priority` is full. Dropping the future
    /// withdraws the texts not yet running.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        role: Role,
        priority: Priority,
    ) -> Result<Embeddings> {
        if texts.is_empty() {
            return Ok(Embeddings::new(self.dim(), Vec::new()));
        }
        let (tx, rx) = oneshot::channel();
        let texts = self.prompted(texts, role);
        self.inner.queue.submit(texts, priority, Reply::Async(tx))?;
        rx.await.map_err(|_| worker_gone())?
    }

    /// Like [`Embedder::embed`], but blocks the calling thread until the rows are ready. Do not
    /// call it from an async task.
    pub fn embed_blocking(
        &self,
        texts: Vec<String>,
        role: Role,
        priority: Priority,
    ) -> Result<Embeddings> {
        if texts.is_empty() {
            return Ok(Embeddings::new(self.dim(), Vec::new()));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let texts = self.prompted(texts, role);
        self.inner
            .queue
            .submit(texts, priority, Reply::Blocking(tx))?;
        rx.recv().map_err(|_| worker_gone())?
    }

    /// `texts` with the model's prefix for `role`, if it has one.
    fn prompted(&self, mut texts: Vec<String>, role: Role) -> Vec<String> {
        let prompt = &self.inner.prompts[role as usize];
        if !prompt.is_empty() {
            for t in &mut texts {
                t.insert_str(0, prompt);
            }
        }
        texts
    }
}

fn worker_gone() -> EngineError {
    EngineError::Internal("the embedder's worker stopped before answering".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_rows() {
        let e = Embeddings::new(2, vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8]);
        assert_eq!((e.len(), e.dim(), e.is_empty()), (3, 2, false));
        assert_eq!(e.row(2), &[0.6, 0.8]);
        let rows: Vec<&[f32]> = e.iter().collect();
        assert_eq!(rows, vec![&[1.0, 0.0][..], &[0.0, 1.0], &[0.6, 0.8]]);
        assert_eq!((&e).into_iter().count(), 3);
        assert_eq!(e.into_vec().len(), 6);
        let empty = Embeddings::new(384, Vec::new());
        assert_eq!((empty.len(), empty.dim(), empty.is_empty()), (0, 384, true));
        assert_eq!(empty.iter().count(), 0);
    }
}
