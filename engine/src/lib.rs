//! # hearth-engine: inference
//!
//! Owns model loading, tokenizers, the embedder, the generator and device selection. It is
//! the only crate that touches candle or CUDA, and it depends on no other workspace crate:
//! callers hand it text and get back vectors or streamed, generated text. No candle type
//! appears in its public API.
//!
//! ## What is here
//!
//! - [`Tokenizer`]: the embedding model's `tokenizer.json`, with the file's own padding and
//!   truncation switched off. Ingestion uses it to cut chunks that the embedder will see whole
//!   ([`Tokenizer::count`] counts special tokens too); the embedder uses
//!   [`Tokenizer::encode_ids`].
//! - [`Embedder`]: the sentence embedder (all-MiniLM-L6-v2 by default). A small BERT encoder
//!   written directly over candle ops (`embed/bert.rs`), mean pooling and L2 normalisation, so
//!   its vectors match sentence-transformers' for the same model (cosine ≥ 0.9999, checked
//!   against committed reference vectors). Texts are cut to [`Embedder::max_tokens`] word
//!   pieces (256).
//! - [`Generator`]: a GGUF decoder (llama family; qwen2/qwen3 and gemma3 by the same code,
//!   driven by the file's metadata) behind one scheduler thread with iteration-level continuous
//!   batching, chunked prefill, a paged KV cache with prefix sharing, admission control and
//!   preemption by recompute. [`Generator::submit`] takes a [`Prompt`] (a chat rendered with
//!   the model's own Jinja template, or raw text) and [`SamplingParams`] and returns a
//!   [`Generation`] stream of text pieces ending in a [`Completion`] with usage and timings.
//!   The tokenizer is built from the GGUF file's own vocabulary. See `generate/mod.rs`.
//! - [`EngineConfig`]: where the models are, which device runs them, and the embedder's
//!   threads, batch size, batch wait and queue bound; `validate()` checks them all.
//!
//! ## The embedder's threading and batching
//!
//! An [`Embedder`] is a cheap-to-clone handle; all clones share one model and **one worker OS
//! thread**, which runs every forward pass inside a dedicated rayon pool of
//! `engine.embed_threads` threads (candle's CPU matmul runs on the current rayon pool). Requests
//! reach the worker through a bounded queue (`engine.embed_queue` texts per priority class): a
//! full queue fails fast with [`EngineError::Overloaded`] instead of blocking. The worker is a
//! dynamic batcher: it gathers queued texts up to `engine.embed_batch_size` (or until
//! `engine.embed_batch_wait_ms` has passed), sorts them by token length, runs them in
//! sub-batches (on the CPU packed back to back with no padding at all, elsewhere padded only to
//! the longest member), and sends each caller its rows. On the CPU the element-wise work
//! between matmuls runs in fused, in-place kernels.
//! [`Priority::Query`] requests always go before [`Priority::Bulk`] ones and never share a
//! batch with them, so a search never waits behind indexing for more than the one batch
//! already running. A model error or panic fails only the requests of that batch, on their
//! own reply channels; the worker carries on. Dropping the last handle stops the worker.
//!
//! Invariants: the batch composition never changes a text's vector beyond float noise (packed
//! sequences never see each other; padding, where there is any, is masked out of attention and
//! pooling); rows come back in input order; every accepted request gets exactly one answer.
//!
//! ## Devices
//!
//! `engine.device` is `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`. The `cuda` feature is the only
//! thing that changes between CPU and GPU builds, and `device.rs` is the only file that looks at
//! it; asking for CUDA in a CPU build is a startup error that says how to rebuild.
#![warn(missing_docs)]

mod config;
mod device;
mod embed;
mod error;
mod generate;
mod simd;
mod tokenizer;
mod unigram;

pub use config::{EmbedPrecision, EngineConfig, KvPrecision};
pub use embed::{Embedder, Embeddings, Priority, Role};
pub use error::{EngineError, Result};
pub use generate::{
    AdapterInfo, ChatMessage, Completion, FinishReason, Generation, GenerationEvent, Generator,
    GeneratorInfo, GeneratorStats, MAX_LOGPROBS, Prompt, SamplingParams, Timings, TokenLogprob,
    TokenLogprobs, Usage,
};
pub use tokenizer::Tokenizer;
